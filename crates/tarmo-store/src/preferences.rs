//! The person's own pages, behind signed links: the preference page (what
//! they allow, changeable without a login), Global Privacy Control seen on
//! it, the requests for access or erasure it offers, and the download of
//! their data. Each use case here owns its transaction through
//! [`Services`]; the HTTP crate only renders.

use serde_json::{Map, Value};
use tarmo_core::codes::Code;
use tarmo_core::consent::{
    Channel, ConsentDecision, ConsentState, LegalBasis, Method, ProfileFlags, PurposeId, decide,
};

use crate::conn::{ProfileId, RequestId};
use crate::consent::{self as ledger, CatalogEntry, NewEntry};
use crate::doi::current_profile;
use crate::links::{self, RequestLink, SignedLink};
use crate::processors::ProcessorView;
use crate::requests::{self, NewRequest, RequestKind};
use crate::service::Services;
use crate::{Error, Result, now_ms};

/// The preference page's link kind; marketing messages made in the store
/// carry the same links.
pub use crate::automations::PREFERENCES_LINK;
use crate::automations::{preferences_language, preferences_scope};

/// How long a preference link works.
pub const PREFERENCES_TTL_MS: i64 = 90 * 86_400_000;

/// A signed preference link's token for `profile`, naming the person's own
/// language when known (the page then opens in it).
pub fn preference_token(svc: &Services, profile: ProfileId, language: Option<&str>) -> String {
    links::sign_link(
        svc.store.vault(),
        PREFERENCES_LINK,
        &SignedLink {
            profile_id: profile,
            scope: preferences_scope(language),
            issued_ms: now_ms(),
        },
    )
}

/// A preference link's profile and the person's own language, when the link
/// names one; `None` for a link that is not valid (forged, of another kind,
/// or older than [`PREFERENCES_TTL_MS`]).
pub fn open_preferences(svc: &Services, token: &str) -> Option<(ProfileId, Option<String>)> {
    links::open_link(svc.store.vault(), PREFERENCES_LINK, token)
        .filter(|l| now_ms() - l.issued_ms < PREFERENCES_TTL_MS)
        .and_then(|l| {
            let own = preferences_language(&l.scope)?.map(str::to_owned);
            Some((l.profile_id, own))
        })
}

/// How the page offers a purpose: consent is given and withdrawn with a
/// box; legitimate interests (and direct marketing on any basis other than
/// consent) are objected to (Art. 21), never "consented"; a contract or a
/// legal duty is only explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Consent,
    Objection,
    Necessary,
}

pub fn group(c: &CatalogEntry) -> Group {
    if c.rule.basis == LegalBasis::Consent {
        Group::Consent
    } else if c.rule.basis.objectionable() || c.rule.direct_marketing {
        Group::Objection
    } else {
        Group::Necessary
    }
}

/// The value of one channel's box: `purpose:channel`.
pub fn channel_value(purpose: &str, c: Channel) -> String {
    format!("{purpose}:{}", c.as_str())
}

/// Record a `Sec-GPC: 1` seen on the preference page as an opt-out of sale
/// and sharing; the number of entries written (none for a person no longer
/// held).
pub fn record_gpc(
    svc: &Services,
    profile: ProfileId,
    evidence: Map<String, Value>,
) -> Result<usize> {
    svc.write(move |ctx| {
        let Some(p) = current_profile(ctx.conn, profile)? else {
            return Ok(0);
        };
        ledger::record_gpc(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            p,
            "Sec-GPC header, preference page",
            &evidence,
            ctx.now_ms,
        )
    })
}

/// What the page shows of a person now.
pub struct PersonNow {
    pub states: Vec<(PurposeId, ConsentState)>,
    pub flags: ProfileFlags,
    pub processors: Vec<ProcessorView>,
}

impl PersonNow {
    pub fn state_of(&self, c: &CatalogEntry) -> Option<&ConsentState> {
        self.states
            .iter()
            .find(|(p, _)| p == c.id.as_str())
            .map(|x| &x.1)
    }
}

/// The person's states and flags, and the processors (for who receives
/// what); `None` when the person is no longer held.
pub fn person_now(svc: &Services, profile: ProfileId) -> Result<Option<PersonNow>> {
    svc.read(|conn, _| {
        let Some(p) = current_profile(conn, profile)? else {
            return Ok(None);
        };
        Ok(Some(PersonNow {
            states: ledger::states(conn, p)?,
            flags: ledger::flags(conn, p)?,
            processors: crate::processors::list(conn)?,
        }))
    })
}

/// Save the page's form (`purpose=`, `object=`, `channels_shown=` and
/// `channel=` fields, checked against the catalog by the caller): each
/// change is a ledger entry (method `preference_center`), in one
/// transaction. Lifting an objection is not offered: it would be a consent
/// in all but name. A purpose switched off keeps its channels as they were.
pub fn save(
    svc: &Services,
    profile: ProfileId,
    fields: Vec<(String, String)>,
    evidence: Map<String, Value>,
) -> Result<()> {
    svc.write(move |ctx| {
        let Some(p) = current_profile(ctx.conn, profile)? else {
            return Ok(());
        };
        let flags = ledger::flags(ctx.conn, p)?;
        let named = |k: &str, id: &str| fields.iter().any(|(fk, v)| fk == k && v == id);
        let entry = |channel, purpose: &CatalogEntry, decision| NewEntry {
            channel,
            profile_id: p,
            purpose: purpose.id.clone(),
            decision,
            method: Method::PreferenceCenter,
            notice_version: None,
            at_ms: None,
            source: "preference page".into(),
            evidence: evidence.clone(),
        };
        let mut entries = Vec::new();
        for c in ctx.catalog.entries() {
            let st = ledger::state(ctx.conn, p, &c.id)?;
            let on = decide(&c.rule, None, st.as_ref(), flags, ctx.now_ms).allowed;
            let decision = match group(c) {
                Group::Consent => match (on, named("purpose", c.id.as_str())) {
                    (false, true) => ConsentDecision::Granted,
                    (true, false) => ConsentDecision::Withdrawn,
                    _ => continue,
                },
                Group::Objection if on && named("object", c.id.as_str()) => {
                    ConsentDecision::Objected
                }
                _ => continue,
            };
            entries.push(entry(None, c, decision));
        }
        // The channels of each purpose kept (or given) on this save: a box
        // unticked switches its channel off, one ticked again back on.
        for c in ctx.catalog.entries() {
            if group(c) != Group::Consent
                || c.spec.channels.len() < 2
                || !named("purpose", c.id.as_str())
                || !named("channels_shown", c.id.as_str())
            {
                continue;
            }
            let st = ledger::state(ctx.conn, p, &c.id)?;
            for &ch in &c.spec.channels {
                let off = st.is_some_and(|s| s.channel_off(ch));
                let want = named("channel", &channel_value(c.id.as_str(), ch));
                let decision = match (off, want) {
                    (true, true) => ConsentDecision::Granted,
                    (false, false) => ConsentDecision::Withdrawn,
                    _ => continue,
                };
                entries.push(entry(Some(ch), c, decision));
            }
        }
        ledger::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
        Ok(())
    })
}

/// A request for access or erasure from the person's own page: a link to
/// confirm it goes to their verified address on record. Nothing tells
/// whether anything was done: a person no longer held, one without such an
/// address, and an open request of the same kind (whose earlier link still
/// works) all answer the same.
pub fn request_from_page(
    svc: &Services,
    profile: ProfileId,
    kind: RequestKind,
    language: String,
    token_ttl_ms: i64,
) -> Result<()> {
    svc.write(move |ctx| {
        let Some(p) = current_profile(ctx.conn, profile)? else {
            return Ok(());
        };
        let Some((kind_name, value)) = requests::contact_of(ctx.conn, ctx.vault, p)? else {
            return Ok(());
        };
        let bidx = ctx.vault.blind_index(&kind_name, &value);
        let kind_id = if kind_name == "email" {
            tarmo_core::identity::IdentifierKind::Email
        } else {
            tarmo_core::identity::IdentifierKind::Phone
        };
        let req = NewRequest {
            kind,
            subject: crate::resolve::PreparedIdentifier {
                kind: kind_id,
                bidx,
                value,
            },
            corrected: None,
            purposes: None,
            language,
            origin: "self_service",
            actor: "the person, from their preference page".into(),
        };
        match requests::create(ctx, req, token_ttl_ms) {
            Err(Error::Rejected {
                code: Code::DuplicateRequest,
                ..
            }) => Ok(()),
            r => r.map(|_| ()),
        }
    })
}

/// The link kind of the download of a person's own data.
pub const DOWNLOAD_LINK: &str = "request download";
/// How long the download link of a person's own data works.
pub const DOWNLOAD_TTL_MS: i64 = 7 * 86_400_000;

/// A signed link's token to download the bundle of request `request`.
pub fn download_token(svc: &Services, request: RequestId) -> String {
    links::sign_request_link(
        svc.store.vault(),
        DOWNLOAD_LINK,
        &RequestLink {
            request,
            scope: "bundle".into(),
            issued_ms: now_ms(),
        },
    )
}

/// The request a download link is for, while the link is valid.
pub fn open_download(svc: &Services, token: &str) -> Option<RequestId> {
    links::open_request_link(svc.store.vault(), DOWNLOAD_LINK, token)
        .filter(|l| l.scope == "bundle" && now_ms() - l.issued_ms < DOWNLOAD_TTL_MS)
        .map(|l| l.request)
}
