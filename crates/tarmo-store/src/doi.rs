//! Double opt-in: a subscription records `pending_confirmation`, a single-use
//! token and the confirmation message in one transaction; the person's press
//! of the button (a POST) uses the token and records the grant, with the
//! token's id as evidence. One-click unsubscribe withdraws through a signed
//! link. Each runs as a writer transaction job; the use cases at the end
//! (under "use cases") start theirs through [`Services`].

use serde_json::{Map, Value};
use tarmo_core::codes::Code;
use tarmo_core::consent::{ConsentDecision, Method, PurposeId, check_entry};

use crate::conn::{Conn, P, ProfileId};
use crate::consent::{self, NewEntry};
use crate::links::{self, ConfirmationData};
use crate::outbox::{self, OutboxMessage};
use crate::resolve::PreparedIdentifier;
use crate::service::Services;
use crate::writer::TxCtx;
use crate::{Error, Result};

pub const CONFIRM_TOKEN: &str = "confirm";

/// A request to subscribe someone, pending their confirmation.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// The email address or phone number the confirmation goes to.
    pub identifier: PreparedIdentifier,
    /// The address itself, for the message.
    pub address: String,
    /// `email` or `sms`.
    pub channel: &'static str,
    pub purposes: Vec<String>,
    pub language: String,
    pub source: String,
    /// IP address and user agent of the person's request.
    pub evidence: Map<String, Value>,
    pub token_ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub profile_id: ProfileId,
    /// Purposes now waiting for the confirmation.
    pub pending: Vec<PurposeId>,
    /// Purposes the person had already agreed to: nothing is asked again.
    pub already_granted: Vec<PurposeId>,
    pub expires_ms: Option<i64>,
    /// The identifier is on the suppression list (its person was erased):
    /// nothing was stored or sent.
    pub suppressed: bool,
}

/// The profile a (possibly merged-away) id now belongs to, if it exists.
pub fn current_profile(conn: &mut dyn Conn, id: ProfileId) -> Result<Option<ProfileId>> {
    conn.query_opt(
        "SELECT COALESCE(merged_into, id) FROM profiles WHERE id = $1",
        &[P::Int(id.0)],
    )?
    .map(|r| r.int(0).map(ProfileId))
    .transpose()
}

pub fn subscribe(ctx: &mut TxCtx<'_>, req: Subscribe) -> Result<Subscribed> {
    let method = if req.channel == "sms" {
        Method::DoubleOptInSms
    } else {
        Method::DoubleOptInEmail
    };
    if req.purposes.is_empty() {
        return Err(Error::rejected(
            Code::MissingPurposes,
            "name at least one purpose to subscribe to",
        ));
    }
    let mut versions = Vec::with_capacity(req.purposes.len());
    for p in &req.purposes {
        let c = ctx.catalog.require(p)?;
        check_entry(p, &c.rule, ConsentDecision::PendingConfirmation, method)?;
        versions.push((p.clone(), c.notice_version.clone()));
    }
    if consent::suppressed(ctx.conn, &req.identifier.bidx)?.is_some() {
        return Ok(Subscribed {
            profile_id: ProfileId(0),
            pending: Vec::new(),
            already_granted: Vec::new(),
            expires_ms: None,
            suppressed: true,
        });
    }
    let profile = ctx.resolve(std::slice::from_ref(&req.identifier))?;
    let now = ctx.now_ms;
    let mut pending = Vec::new();
    let mut already = Vec::new();
    for (p, v) in versions {
        let c = ctx.catalog.require(&p)?;
        let st = consent::state(ctx.conn, profile, &c.id)?;
        let flags = consent::flags(ctx.conn, profile)?;
        let verdict = tarmo_core::consent::decide(&c.rule, None, st.as_ref(), flags, now);
        if verdict.allowed {
            already.push(c.id.clone());
        } else {
            pending.push((c.id.clone(), v));
        }
    }
    if pending.is_empty() {
        return Ok(Subscribed {
            profile_id: profile,
            pending: Vec::new(),
            already_granted: already,
            expires_ms: None,
            suppressed: false,
        });
    }
    let token = links::new_token(ctx.vault)?;
    let expires_ms = now + req.token_ttl_ms;
    let mut evidence = req.evidence.clone();
    evidence.insert(
        "confirmation_token_id".into(),
        Value::String(links::token_id(&token.hash)),
    );
    evidence.insert("channel".into(), Value::String(req.channel.into()));
    let entries: Vec<NewEntry> = pending
        .iter()
        .map(|(p, v)| NewEntry {
            channel: None,
            profile_id: profile,
            purpose: p.clone(),
            decision: ConsentDecision::PendingConfirmation,
            method,
            notice_version: Some(v.clone()),
            at_ms: None,
            source: req.source.clone(),
            evidence: evidence.clone(),
        })
        .collect();
    consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, now)?;
    // The token and the message carry (purpose, notice version) as text.
    let versions: Vec<(String, String)> = pending
        .iter()
        .map(|(p, v)| (p.to_string(), v.clone()))
        .collect();
    let data = ConfirmationData {
        verifies: Some(hex::encode(req.identifier.bidx.0)),
        purposes: versions.clone(),
        channel: req.channel.into(),
        language: req.language.clone(),
        source: req.source.clone(),
    };
    links::store_token(
        ctx.conn,
        &token,
        CONFIRM_TOKEN,
        profile,
        &data,
        now,
        expires_ms,
    )?;
    outbox::enqueue(
        ctx.conn,
        ctx.vault,
        profile,
        req.channel,
        &OutboxMessage::Confirmation {
            to: req.address,
            language: req.language,
            token: token.secret,
            purposes: versions,
            expires_ms,
        },
        now,
    )?;
    Ok(Subscribed {
        profile_id: profile,
        pending: pending.into_iter().map(|(p, _)| p).collect(),
        already_granted: already,
        expires_ms: Some(expires_ms),
        suppressed: false,
    })
}

/// What a confirmation link asks the person to agree to.
#[derive(Debug, Clone)]
pub struct Pending {
    pub profile_id: ProfileId,
    pub data: ConfirmationData,
    pub expires_ms: i64,
}

/// Look at a confirmation link without using it (the page a link opens).
pub fn peek(conn: &mut dyn Conn, secret: &str, now_ms: i64) -> Result<Pending> {
    let t = links::find_token(conn, secret, CONFIRM_TOKEN, now_ms)?;
    Ok(Pending {
        profile_id: t.profile_id,
        data: t.data,
        expires_ms: t.expires_ms,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub profile_id: ProfileId,
    pub purposes: Vec<PurposeId>,
    pub language: String,
}

/// The person pressed the button: use the token, record the grants.
pub fn confirm(
    ctx: &mut TxCtx<'_>,
    secret: &str,
    evidence: Map<String, Value>,
) -> Result<Confirmed> {
    let now = ctx.now_ms;
    let t = links::find_token(ctx.conn, secret, CONFIRM_TOKEN, now)?;
    links::use_token(ctx.conn, &t.hash, now)?;
    let profile = current_profile(ctx.conn, t.profile_id)?
        .ok_or_else(|| Error::rejected(Code::TokenUnknown, "this link is not valid"))?;
    let method = if t.data.channel == "sms" {
        Method::DoubleOptInSms
    } else {
        Method::DoubleOptInEmail
    };
    let mut ev = evidence;
    ev.insert(
        "confirmation_token_id".into(),
        Value::String(links::token_id(&t.hash)),
    );
    ev.insert("confirmed".into(), Value::Bool(true));
    let entries: Vec<NewEntry> = t
        .data
        .purposes
        .iter()
        .filter_map(|(p, v)| ctx.catalog.get(p).map(|c| (c.id.clone(), v)))
        .map(|(p, v)| NewEntry {
            channel: None,
            profile_id: profile,
            purpose: p,
            decision: ConsentDecision::Granted,
            method,
            notice_version: Some(v.clone()),
            at_ms: None,
            source: t.data.source.clone(),
            evidence: ev.clone(),
        })
        .collect();
    consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, now)?;
    // The confirmation came through the address it was sent to: that
    // address is the person's (double opt-in is what verifies a claim).
    if let Some(bidx) = t.data.verifies.as_deref().and_then(|h| hex::decode(h).ok()) {
        ctx.conn.exec(
            "UPDATE identifiers SET verified_ms = $2 WHERE bidx = $1 AND verified_ms IS NULL",
            &[P::Blob(&bidx), P::Int(now)],
        )?;
    }
    Ok(Confirmed {
        profile_id: profile,
        purposes: entries.into_iter().map(|e| e.purpose).collect(),
        language: t.data.language,
    })
}

pub const UNSUBSCRIBE_LINK: &str = "unsubscribe";

/// Withdraw consent for the purpose a signed unsubscribe link names. An
/// erased person or a purpose since removed is nothing to do, not an error:
/// the answer to an unsubscribe is always "you are unsubscribed".
pub fn unsubscribe(
    ctx: &mut TxCtx<'_>,
    link: &links::SignedLink,
    evidence: Map<String, Value>,
) -> Result<bool> {
    let Some(profile) = current_profile(ctx.conn, link.profile_id)? else {
        return Ok(false);
    };
    let Some(c) = ctx.catalog.get(&link.scope) else {
        return Ok(false);
    };
    let decision = if c.rule.basis == tarmo_core::consent::LegalBasis::Consent {
        ConsentDecision::Withdrawn
    } else {
        ConsentDecision::Objected
    };
    if check_entry(&link.scope, &c.rule, decision, Method::OneClickUnsubscribe).is_err() {
        return Ok(false);
    }
    let st = consent::state(ctx.conn, profile, &c.id)?;
    if st.is_some_and(|s| s.decision == decision) {
        return Ok(false);
    }
    let entry = NewEntry {
        channel: None,
        profile_id: profile,
        purpose: c.id.clone(),
        decision,
        method: Method::OneClickUnsubscribe,
        notice_version: None,
        at_ms: None,
        source: "unsubscribe link".into(),
        evidence,
    };
    consent::append(ctx.conn, ctx.vault, &ctx.catalog, &[entry], ctx.now_ms)?;
    Ok(true)
}

// ---------------------------------------------------------------- use cases

/// Subscribe someone with double opt-in (see [`subscribe`]), durably.
pub fn subscribe_person(svc: &Services, req: Subscribe) -> Result<Subscribed> {
    svc.write(move |ctx| subscribe(ctx, req))
}

/// The notice texts of a purpose at a version, in every language written.
pub type NoticeTexts = std::collections::BTreeMap<String, String>;

/// What a confirmation link asks the person to agree to, with each
/// purpose's notice texts at the version they are asked about. Changes
/// nothing (the page a link opens; mail scanners fetch links).
pub fn pending_with_notices(
    svc: &Services,
    secret: &str,
) -> Result<(Pending, Vec<(String, NoticeTexts)>)> {
    svc.read(|conn, _| {
        let pending = peek(conn, secret, crate::now_ms())?;
        let notices = pending
            .data
            .purposes
            .iter()
            .map(|(p, v)| {
                Ok((
                    p.clone(),
                    consent::notice_texts(conn, p, v)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((pending, notices))
    })
}

/// The person pressed "confirm" (see [`confirm`]), durably.
pub fn confirm_link(
    svc: &Services,
    secret: String,
    evidence: Map<String, Value>,
) -> Result<Confirmed> {
    svc.write(move |ctx| confirm(ctx, &secret, evidence))
}

/// A signed unsubscribe link's contents, when its signature holds.
pub fn open_unsubscribe_link(svc: &Services, token: &str) -> Option<links::SignedLink> {
    links::open_link(svc.store.vault(), UNSUBSCRIBE_LINK, token)
}

/// Withdraw through an opened unsubscribe link (see [`unsubscribe`]), durably.
pub fn unsubscribe_link(
    svc: &Services,
    link: links::SignedLink,
    evidence: Map<String, Value>,
) -> Result<bool> {
    svc.write(move |ctx| unsubscribe(ctx, &link, evidence))
}
