//! Data subject requests (GDPR Art. 15-21): access, portability, erasure,
//! rectification, restriction and objection, each a small state machine with
//! its transitions recorded and the one-month deadline (extendable once by
//! two months with a recorded reason).
//!
//! received -> awaiting_verification (a link went to the person's address)
//!          -> in_progress (identity verified: by the link, or by staff with a
//!             recorded reason) -> completed
//! and, from any open state, -> refused (with the legal reason).
//!
//! A request names its subject by an identifier's blind index and keeps the
//! details (the identifier's value, corrected values) sealed, wiped once the
//! request closes: the record of a request outlives the person it was about,
//! and holds nothing that identifies them.
//!
//! The use cases at the end (under "use cases") own their transactions
//! through [`Services`]; the other functions run inside the caller's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tarmo_core::codes::Code;
use tarmo_core::consent::{ConsentDecision, LegalBasis, Method, PurposeId};
use tarmo_core::profile::TraitSet;

use crate::conn::{Conn, P, ProfileId, RequestId, Row};
use crate::consent::{self, NewEntry};
use crate::crypto::person;
use crate::doi::current_profile;
use crate::links;
use crate::outbox::{self, OutboxMessage};
use crate::resolve::PreparedIdentifier;
use crate::service::Services;
use crate::vault::{Place, Sealed, Vault};
use crate::writer::TxCtx;
use crate::{Error, Result, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Access,
    Portability,
    Erasure,
    Rectification,
    Restriction,
    Objection,
}

impl RequestKind {
    pub const ALL: [Self; 6] = [
        Self::Access,
        Self::Portability,
        Self::Erasure,
        Self::Rectification,
        Self::Restriction,
        Self::Objection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Portability => "portability",
            Self::Erasure => "erasure",
            Self::Rectification => "rectification",
            Self::Restriction => "restriction",
            Self::Objection => "objection",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            Error::rejected(
                Code::UnknownRequestType,
                "`type` is one of access, portability, erasure, rectification, restriction, objection",
            )
        })
    }

    /// Access and portability end in a bundle to download.
    pub fn has_bundle(self) -> bool {
        matches!(self, Self::Access | Self::Portability)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Received,
    AwaitingVerification,
    InProgress,
    Completed,
    Refused,
}

impl RequestStatus {
    pub const ALL: [Self; 5] = [
        Self::Received,
        Self::AwaitingVerification,
        Self::InProgress,
        Self::Completed,
        Self::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::AwaitingVerification => "awaiting_verification",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            Error::rejected(
                Code::UnknownStatus,
                "`status` is one of received, awaiting_verification, in_progress, completed, refused",
            )
        })
    }

    pub fn is_open(self) -> bool {
        !matches!(self, Self::Completed | Self::Refused)
    }
}

/// The sealed details of a request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Details {
    /// The identifier the request named, normalised.
    pub subject_value: String,
    /// Rectification: the corrected traits.
    #[serde(default)]
    pub corrected: Option<Map<String, Value>>,
    /// Objection: the purposes objected to (all that allow objection when absent).
    #[serde(default)]
    pub purposes: Option<Vec<String>>,
    pub language: String,
}

/// A request as staff see it. Holds no personal value: the subject is named
/// by the identifier's type only.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestView {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub id: RequestId,
    #[serde(rename = "type")]
    pub kind: RequestKind,
    pub status: RequestStatus,
    /// The identifier type the request named the person by.
    pub subject_type: String,
    /// Whether the identifier named a known person when the request came.
    pub subject_found: bool,
    pub profile_id: Option<ProfileId>,
    /// `staff` or `self_service`.
    pub origin: String,
    pub received_at: String,
    pub due_at: String,
    pub overdue: bool,
    pub extended: bool,
    pub verified_at: Option<String>,
    pub completed_at: Option<String>,
    /// What was done, or the legal reason for a refusal.
    pub outcome: Option<String>,
    pub history: Vec<Transition>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Transition {
    pub at: String,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub note: Option<String>,
}

/// Calendar months after `ms`, the day clamped to the month's end
/// (31 January + 1 month = 28 or 29 February).
pub fn add_months(ms: i64, months: u8) -> i64 {
    use time::{Month, OffsetDateTime};
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let total = t.month() as i32 - 1 + months as i32;
    let year = t.year() + total / 12;
    let month = Month::try_from((total % 12 + 1) as u8).unwrap_or(Month::January);
    let last = time::util::days_in_month(month, year);
    let date = time::Date::from_calendar_date(year, month, t.day().min(last)).unwrap_or(t.date());
    let t2 = t.replace_date(date);
    (t2.unix_timestamp_nanos() / 1_000_000) as i64
}

fn seal_details(vault: &Vault, d: &Details) -> Result<Sealed> {
    vault.seal_system(
        Place::RequestPayload,
        &serde_json::to_vec(d).expect("serialises"),
    )
}

pub fn open_details(vault: &Vault, sealed: &Sealed) -> Result<Details> {
    let plain = vault.open_system(Place::RequestPayload, sealed)?;
    serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A step in a request's history. The note is free text staff type (the
/// reason for a verification or a refusal may name the person or their
/// papers), so it is stored sealed; `note` stays empty for new steps.
#[allow(clippy::too_many_arguments)]
fn record_transition(
    conn: &mut dyn Conn,
    vault: &Vault,
    id: RequestId,
    from: Option<RequestStatus>,
    to: RequestStatus,
    actor: &str,
    note: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let sealed = note
        .map(|n| vault.seal_system(Place::RequestNote, n.as_bytes()))
        .transpose()?;
    conn.exec(
        "INSERT INTO request_events (request_id, at_ms, from_status, to_status, actor, note_sealed) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            P::from(id),
            P::Int(now_ms),
            P::from(from.map(|f| f.as_str())),
            P::Text(to.as_str()),
            P::Text(actor),
            P::from(sealed.as_ref()),
        ],
    )?;
    conn.exec(
        "UPDATE requests SET status = $2, updated_ms = $3 WHERE id = $1",
        &[P::from(id), P::Text(to.as_str()), P::Int(now_ms)],
    )?;
    Ok(())
}

/// A new request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub kind: RequestKind,
    pub subject: PreparedIdentifier,
    pub corrected: Option<Map<String, Value>>,
    pub purposes: Option<Vec<String>>,
    pub language: String,
    /// `staff` or `self_service`.
    pub origin: &'static str,
    /// Who made it (an API key's name, "the person").
    pub actor: String,
}

pub const VERIFY_TOKEN: &str = "verify_request";

/// Record a request. If the person is known and has a verified email address
/// or phone number, a verification link goes to it (to the address the
/// request names if that one is verified); otherwise staff verify. An
/// address anyone can claim through a public write key never receives a
/// link: the person's data would follow it.
pub fn create(ctx: &mut TxCtx<'_>, req: NewRequest, token_ttl_ms: i64) -> Result<RequestId> {
    let now = ctx.now_ms;
    if req.kind == RequestKind::Rectification && req.corrected.as_ref().is_none_or(|c| c.is_empty())
    {
        return Err(Error::rejected(
            Code::MissingCorrections,
            "a rectification names the corrected values: {\"corrected\": {\"trait\": value}}",
        ));
    }
    if let Some(ps) = &req.purposes {
        for p in ps {
            let c = ctx.catalog.require(p)?;
            tarmo_core::consent::check_entry(p, &c.rule, ConsentDecision::Objected, Method::Staff)?;
        }
    }
    let profile = match ctx
        .conn
        .identifiers_lookup(&[req.subject.bidx])?
        .pop()
        .flatten()
    {
        Some(p) => current_profile(ctx.conn, p)?,
        None => None,
    };
    // The same request for the same person, still open: by the identifier
    // named, or by the person it names.
    if let Some(dup) = ctx.conn.query_opt(
        "SELECT id FROM requests WHERE kind = $2
           AND (subject_bidx = $1 OR profile_id = $3)
           AND status IN ('received', 'awaiting_verification', 'in_progress')",
        &[
            P::Blob(&req.subject.bidx.0),
            P::Text(req.kind.as_str()),
            P::Int(profile.map_or(-1, |p| p.0)),
        ],
    )? {
        return Err(Error::Rejected {
            code: Code::DuplicateRequest,
            message: format!(
                "request {} of the same type for the same person is still open",
                dup.int(0)?
            ),
        });
    }
    let details = Details {
        subject_value: req.subject.value.clone(),
        corrected: req.corrected.clone(),
        purposes: req.purposes.clone(),
        language: req.language.clone(),
    };
    let sealed = seal_details(ctx.vault, &details)?;
    let due = add_months(now, 1);
    let id = ctx
        .conn
        .query_opt(
            "INSERT INTO requests (kind, status, subject_kind, subject_bidx, profile_id, payload, origin,
                 received_ms, due_ms, updated_ms)
             VALUES ($1, 'received', $2, $3, $4, $5, $6, $7, $8, $7) RETURNING id",
            &[
                P::Text(req.kind.as_str()),
                P::Text(req.subject.kind.as_str()),
                P::Blob(&req.subject.bidx.0),
                P::from(profile),
                P::from(&sealed),
                P::Text(req.origin),
                P::Int(now),
                P::Int(due),
            ],
        )?
        .ok_or_else(|| Error::Backend("INSERT ... RETURNING gave no row".into()))?
        .int(0)
        .map(RequestId)?;
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        None,
        RequestStatus::Received,
        &req.actor,
        None,
        now,
    )?;
    // Where to send the verification link: the identifier itself when it is
    // a verified address, else the person's verified email or phone on
    // record; none of them: staff verify.
    let contact = match profile {
        None => None,
        Some(p) => {
            let kind = req.subject.kind.as_str();
            if (kind == "email" || kind == "phone")
                && identifier_verified(ctx.conn, &req.subject.bidx)?
            {
                Some((kind.to_owned(), req.subject.value.clone()))
            } else {
                contact_of(ctx.conn, ctx.vault, p)?
            }
        }
    };
    if let (Some(p), Some((kind, address))) = (profile, contact) {
        let token = links::new_token(ctx.vault)?;
        links::store_token(
            ctx.conn,
            &token,
            VERIFY_TOKEN,
            p,
            &links::ConfirmationData {
                purposes: vec![("request".into(), id.to_string())],
                channel: if kind == "phone" { "sms" } else { "email" }.into(),
                language: req.language.clone(),
                source: req.kind.as_str().into(),
                verifies: None,
            },
            now,
            now + token_ttl_ms,
        )?;
        outbox::enqueue(
            ctx.conn,
            ctx.vault,
            p,
            if kind == "phone" { "sms" } else { "email" },
            &OutboxMessage::RequestVerification {
                to: address,
                language: req.language.clone(),
                token: token.secret,
                request_type: req.kind.as_str().into(),
                request_id: id,
            },
            now,
        )?;
        record_transition(
            ctx.conn,
            ctx.vault,
            id,
            Some(RequestStatus::Received),
            RequestStatus::AwaitingVerification,
            "tarmo",
            Some(&format!("verification link sent by {kind}")),
            now,
        )?;
    }
    Ok(id)
}

/// Whether the identifier with this blind index is verified (see
/// `IdentifierRow::verified_ms`).
pub fn identifier_verified(conn: &mut dyn Conn, bidx: &crate::vault::BlindIndex) -> Result<bool> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM identifiers WHERE bidx = $1 AND verified_ms IS NOT NULL",
            &[P::Blob(&bidx.0)],
        )?
        .is_some())
}

/// The person's first verified email address, else verified phone number,
/// opened: where links that open their data may go.
pub fn contact_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
) -> Result<Option<(String, String)>> {
    let rows = conn.identifiers_of(profile)?;
    for kind in ["email", "phone"] {
        if let Some(row) = rows
            .iter()
            .find(|r| r.kind == kind && r.verified_ms.is_some())
        {
            let sight = person::Sight::duty(person::Duty::Delivery);
            if let Some(v) = person::identifier(conn, vault, &sight, row)? {
                return Ok(Some((kind.into(), v)));
            }
        }
    }
    Ok(None)
}

struct Stored {
    kind: RequestKind,
    status: RequestStatus,
    profile: Option<ProfileId>,
    payload: Option<Sealed>,
    due_ms: i64,
    extended: bool,
}

fn load(conn: &mut dyn Conn, id: RequestId) -> Result<Stored> {
    let r = conn
        .query_opt(
            "SELECT kind, status, profile_id, payload, due_ms, extended_ms FROM requests WHERE id = $1",
            &[P::from(id)],
        )?
        .ok_or_else(|| Error::rejected(Code::RequestNotFound, "no such request"))?;
    Ok(Stored {
        kind: RequestKind::parse(&r.text(0)?)?,
        status: RequestStatus::parse(&r.text(1)?)?,
        profile: r.opt_int(2)?.map(ProfileId),
        payload: r.opt_sealed(3)?,
        due_ms: r.int(4)?,
        extended: r.opt_int(5)?.is_some(),
    })
}

fn not_open(id: RequestId, status: RequestStatus) -> Error {
    Error::Rejected {
        code: Code::RequestClosed,
        message: format!("request {id} is {}", status.as_str()),
    }
}

/// Identity verified by staff (`note` says how): the request goes in
/// progress and is carried out in the same transaction. Staff having
/// verified the person, the identifier the request names is verified too.
pub fn verify(ctx: &mut TxCtx<'_>, id: RequestId, actor: &str, note: &str) -> Result<()> {
    verify_as(ctx, id, actor, note, true)
}

fn verify_as(
    ctx: &mut TxCtx<'_>,
    id: RequestId,
    actor: &str,
    note: &str,
    by_staff: bool,
) -> Result<()> {
    let r = load(ctx.conn, id)?;
    if !matches!(
        r.status,
        RequestStatus::Received | RequestStatus::AwaitingVerification
    ) {
        return Err(Error::Rejected {
            code: Code::AlreadyVerified,
            message: format!("request {id} is {}", r.status.as_str()),
        });
    }
    if note.trim().is_empty() {
        return Err(Error::rejected(
            Code::MissingReason,
            "say how the person's identity was verified",
        ));
    }
    let now = ctx.now_ms;
    ctx.conn.exec(
        "UPDATE requests SET verified_ms = $2 WHERE id = $1",
        &[P::from(id), P::Int(now)],
    )?;
    if by_staff {
        ctx.conn.exec(
            "UPDATE identifiers SET verified_ms = $2
             WHERE bidx = (SELECT subject_bidx FROM requests WHERE id = $1) AND verified_ms IS NULL",
            &[P::from(id), P::Int(now)],
        )?;
    }
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        Some(r.status),
        RequestStatus::InProgress,
        actor,
        Some(note),
        now,
    )?;
    // The verification link, if any, is spent.
    execute(ctx, id, r)
}

/// The person followed the verification link.
pub fn verify_by_link(ctx: &mut TxCtx<'_>, secret: &str) -> Result<(RequestId, RequestKind)> {
    let t = links::find_token(ctx.conn, secret, VERIFY_TOKEN, ctx.now_ms)?;
    links::use_token(ctx.conn, &t.hash, ctx.now_ms)?;
    let id: RequestId = t
        .data
        .purposes
        .first()
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| Error::Corrupt("verification token without a request".into()))?;
    let kind = load(ctx.conn, id)?.kind;
    verify_as(
        ctx,
        id,
        "the person",
        &format!(
            "verification link (token {}) followed",
            links::token_id(&t.hash)
        ),
        false,
    )?;
    Ok((id, kind))
}

fn complete(ctx: &mut TxCtx<'_>, id: RequestId, outcome: &str) -> Result<()> {
    let now = ctx.now_ms;
    ctx.conn.exec(
        "UPDATE requests SET completed_ms = $2, outcome = $3, payload = NULL WHERE id = $1",
        &[P::from(id), P::Int(now), P::Text(outcome)],
    )?;
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        Some(RequestStatus::InProgress),
        RequestStatus::Completed,
        "tarmo",
        Some(outcome),
        now,
    )
}

fn execute(ctx: &mut TxCtx<'_>, id: RequestId, r: Stored) -> Result<()> {
    let details = match &r.payload {
        Some(p) => open_details(ctx.vault, p)?,
        None => Details::default(),
    };
    let Some(profile) = r
        .profile
        .map(|p| current_profile(ctx.conn, p))
        .transpose()?
        .flatten()
    else {
        return complete(ctx, id, "no data is held about the person");
    };
    let outcome = match r.kind {
        RequestKind::Access | RequestKind::Portability => {
            "the data is ready: GET /api/v1/requests/{id}/export".replace("{id}", &id.to_string())
        }
        RequestKind::Erasure => {
            let rep = crate::erasure::erase_profile(ctx, profile, Some(id), true)?;
            format!(
                "erased: {} profiles, {} identifiers (now suppressed), {} events, {} data keys destroyed; {} processors to notify",
                rep.profiles,
                rep.identifiers,
                rep.events,
                rep.keys_destroyed,
                rep.processors_notified
            )
        }
        RequestKind::Rectification => {
            let corrected = details.corrected.unwrap_or_default();
            rectify(ctx, profile, &corrected)?;
            format!("rectified {} traits", corrected.len())
        }
        RequestKind::Restriction => {
            ctx.conn.exec(
                "INSERT INTO profile_flags (profile_id, restricted_ms) VALUES ($1, $2)
                 ON CONFLICT (profile_id) DO UPDATE SET restricted_ms = COALESCE(profile_flags.restricted_ms, excluded.restricted_ms)",
                &[P::Int(profile.0), P::Int(ctx.now_ms)],
            )?;
            "processing restricted: every decision reads `restricted` until it is lifted".into()
        }
        RequestKind::Objection => {
            let purposes: Vec<PurposeId> = match details.purposes {
                // Checked against the catalog when the request came.
                Some(p) => p
                    .iter()
                    .map(|p| consent::purpose_id(p))
                    .collect::<Result<_>>()?,
                None => ctx
                    .catalog
                    .entries()
                    .into_iter()
                    .filter(|c| {
                        c.rule.direct_marketing
                            || matches!(
                                c.rule.basis,
                                LegalBasis::LegitimateInterests | LegalBasis::PublicTask
                            )
                    })
                    .map(|c| c.id.clone())
                    .collect(),
            };
            let entries: Vec<NewEntry> = purposes
                .iter()
                .map(|p| NewEntry {
                    channel: None,
                    profile_id: profile,
                    purpose: p.clone(),
                    decision: ConsentDecision::Objected,
                    method: Method::Staff,
                    notice_version: None,
                    at_ms: None,
                    source: format!("data subject request {id}"),
                    evidence: Map::from_iter([("request_id".to_owned(), Value::from(id.0))]),
                })
                .collect();
            let catalog = ctx.catalog.clone();
            consent::append(ctx.conn, ctx.vault, &catalog, &entries, ctx.now_ms)?;
            format!(
                "objection recorded for {}",
                purposes
                    .iter()
                    .map(PurposeId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    complete(ctx, id, &outcome)
}

/// Correct traits: the corrected values win over anything older.
fn rectify(ctx: &mut TxCtx<'_>, profile: ProfileId, corrected: &Map<String, Value>) -> Result<()> {
    let row = ctx.conn.profile_get(profile)?;
    let mut traits = match row.and_then(|r| r.traits) {
        None => TraitSet::default(),
        Some(s) => person::traits(
            ctx.conn,
            ctx.vault,
            &person::Sight::duty(person::Duty::PersonsRequest),
            profile,
            &s,
        )?,
    };
    traits.observe(corrected, ctx.now_ms);
    let sealed = person::seal(
        ctx.conn,
        ctx.vault,
        profile,
        Place::ProfileTraits,
        &traits.to_bytes(),
    )?;
    ctx.conn.profile_set_traits(profile, &sealed, ctx.now_ms)?;
    crate::segments::touch(ctx.conn, profile, ctx.now_ms)?;
    ctx.identities_changed();
    Ok(())
}

/// Refuse, with the legal reason (e.g. "Art. 17(3)(b): bookkeeping law").
pub fn refuse(ctx: &mut TxCtx<'_>, id: RequestId, legal_reason: &str, actor: &str) -> Result<()> {
    let r = load(ctx.conn, id)?;
    if !r.status.is_open() {
        return Err(not_open(id, r.status));
    }
    if legal_reason.trim().is_empty() {
        return Err(Error::rejected(
            Code::MissingReason,
            "a refusal names its legal reason",
        ));
    }
    ctx.conn.exec(
        "UPDATE requests SET completed_ms = $2, outcome = $3, payload = NULL WHERE id = $1",
        &[P::from(id), P::Int(ctx.now_ms), P::Text(legal_reason)],
    )?;
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        Some(r.status),
        RequestStatus::Refused,
        actor,
        Some(legal_reason),
        ctx.now_ms,
    )
}

/// Extend the deadline by two months (Art. 12(3)), once, with the reason.
pub fn extend(ctx: &mut TxCtx<'_>, id: RequestId, reason: &str, actor: &str) -> Result<()> {
    let r = load(ctx.conn, id)?;
    if !r.status.is_open() {
        return Err(not_open(id, r.status));
    }
    if r.extended {
        return Err(Error::Rejected {
            code: Code::AlreadyExtended,
            message: "a deadline is extended once, by at most two months".into(),
        });
    }
    if reason.trim().is_empty() {
        return Err(Error::rejected(
            Code::MissingReason,
            "an extension names its reason (the complexity or number of requests)",
        ));
    }
    ctx.conn.exec(
        "UPDATE requests SET due_ms = $2, extended_ms = $3 WHERE id = $1",
        &[
            P::from(id),
            P::Int(add_months(r.due_ms, 2)),
            P::Int(ctx.now_ms),
        ],
    )?;
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        Some(r.status),
        r.status,
        actor,
        Some(&format!("deadline extended by two months: {reason}")),
        ctx.now_ms,
    )
}

/// End a restriction the request put in place.
pub fn lift(ctx: &mut TxCtx<'_>, id: RequestId, actor: &str) -> Result<()> {
    let r = load(ctx.conn, id)?;
    if r.kind != RequestKind::Restriction || r.status != RequestStatus::Completed {
        return Err(Error::Rejected {
            code: Code::NotARestriction,
            message: "only a completed restriction request can be lifted".into(),
        });
    }
    if let Some(p) = r
        .profile
        .map(|p| current_profile(ctx.conn, p))
        .transpose()?
        .flatten()
    {
        ctx.conn.exec(
            "UPDATE profile_flags SET restricted_ms = NULL WHERE profile_id = $1",
            &[P::Int(p.0)],
        )?;
    }
    record_transition(
        ctx.conn,
        ctx.vault,
        id,
        Some(r.status),
        r.status,
        actor,
        Some("restriction lifted"),
        ctx.now_ms,
    )
}

const VIEW_COLUMNS: &str =
    "id, kind, status, subject_kind, profile_id, origin, received_ms, due_ms,
    extended_ms, verified_ms, completed_ms, outcome";

/// A request as staff see it; its history (with the notes opened) only
/// when a vault is given.
fn view_of(
    conn: &mut dyn Conn,
    r: &Row,
    now_ms: i64,
    history_with: Option<&Vault>,
) -> Result<RequestView> {
    let id = RequestId(r.int(0)?);
    let status = RequestStatus::parse(&r.text(2)?)?;
    let due = r.int(7)?;
    let history = if let Some(vault) = history_with {
        conn.query(
            "SELECT at_ms, from_status, to_status, actor, note, note_sealed FROM request_events WHERE request_id = $1 ORDER BY id",
            &[P::from(id)],
        )?
        .iter()
        .map(|e| {
            Ok(Transition {
                at: rfc3339(e.int(0)?),
                from: e.opt_text(1)?,
                to: e.text(2)?,
                actor: e.text(3)?,
                // Steps recorded before notes were sealed keep theirs in `note`.
                note: match e.opt_sealed(5)? {
                    Some(sealed) => Some(
                        String::from_utf8(vault.open_system(Place::RequestNote, &sealed)?)
                            .map_err(|e| Error::Corrupt(e.to_string()))?,
                    ),
                    None => e.opt_text(4)?,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(RequestView {
        id,
        kind: RequestKind::parse(&r.text(1)?)?,
        status,
        subject_type: r.text(3)?,
        subject_found: r.opt_int(4)?.is_some(),
        profile_id: r.opt_int(4)?.map(ProfileId),
        origin: r.text(5)?,
        received_at: rfc3339(r.int(6)?),
        due_at: rfc3339(due),
        overdue: status.is_open() && now_ms > due,
        extended: r.opt_int(8)?.is_some(),
        verified_at: r.opt_int(9)?.map(rfc3339),
        completed_at: r.opt_int(10)?.map(rfc3339),
        outcome: r.opt_text(11)?,
        history,
    })
}

pub fn get(conn: &mut dyn Conn, vault: &Vault, id: RequestId, now_ms: i64) -> Result<RequestView> {
    let r = conn
        .query_opt(
            &format!("SELECT {VIEW_COLUMNS} FROM requests WHERE id = $1"),
            &[P::from(id)],
        )?
        .ok_or_else(|| Error::rejected(Code::RequestNotFound, "no such request"))?;
    view_of(conn, &r, now_ms, Some(vault))
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<RequestStatus>,
    pub kind: Option<RequestKind>,
    pub due_before_ms: Option<i64>,
    pub overdue: bool,
    pub limit: i64,
}

pub fn list(conn: &mut dyn Conn, f: &Filter, now_ms: i64) -> Result<Vec<RequestView>> {
    let mut sql = format!("SELECT {VIEW_COLUMNS} FROM requests WHERE 1 = 1");
    let status = f.status.map(|s| s.as_str());
    let kind = f.kind.map(|k| k.as_str());
    let mut params: Vec<P<'_>> = Vec::new();
    if let Some(s) = status {
        params.push(P::Text(s));
        sql.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some(k) = kind {
        params.push(P::Text(k));
        sql.push_str(&format!(" AND kind = ${}", params.len()));
    }
    if let Some(d) = f.due_before_ms {
        params.push(P::Int(d));
        sql.push_str(&format!(" AND due_ms < ${}", params.len()));
    }
    if f.overdue {
        params.push(P::Int(now_ms));
        sql.push_str(&format!(
            " AND due_ms < ${} AND status IN ('received', 'awaiting_verification', 'in_progress')",
            params.len()
        ));
    }
    params.push(P::Int(f.limit));
    sql.push_str(&format!(" ORDER BY due_ms, id LIMIT ${}", params.len()));
    let rows = conn.query(&sql, &params)?;
    rows.iter()
        .map(|r| view_of(conn, r, now_ms, None))
        .collect()
}

/// A person's requests (their current profile id), among the 1,000 due
/// first, by due date (a read on the pool).
pub fn of_profile(svc: &crate::Services, profile: ProfileId) -> Result<Vec<RequestView>> {
    let f = Filter {
        status: None,
        kind: None,
        due_before_ms: None,
        overdue: false,
        limit: 1000,
    };
    let now = crate::now_ms();
    let all = svc.read(|conn, _| list(conn, &f, now))?;
    Ok(all
        .into_iter()
        .filter(|r| r.profile_id == Some(profile))
        .collect())
}

/// Open requests past their deadline, for metrics.
pub fn overdue_count(conn: &mut dyn Conn, now_ms: i64) -> Result<i64> {
    conn.query_opt(
        "SELECT count(*) FROM requests WHERE due_ms < $1
           AND status IN ('received', 'awaiting_verification', 'in_progress')",
        &[P::Int(now_ms)],
    )?
    .map_or(Ok(0), |r| r.int(0))
}

/// The kind of a request and the profile its bundle is about, for exports.
pub fn bundle_target(
    conn: &mut dyn Conn,
    id: RequestId,
) -> Result<(RequestKind, RequestStatus, Option<ProfileId>)> {
    let r = load(conn, id)?;
    let p = match r.profile {
        Some(p) => current_profile(conn, p)?,
        None => None,
    };
    Ok((r.kind, r.status, p))
}

// ---------------------------------------------------------------- use cases

/// Record a request (see [`create`]), durably; its id.
pub fn open_request(svc: &Services, req: NewRequest, token_ttl_ms: i64) -> Result<RequestId> {
    svc.write(move |ctx| create(ctx, req, token_ttl_ms))
}

/// One request with its history, and (for an erasure) the processors told
/// and how that went.
pub fn detail(
    svc: &Services,
    id: RequestId,
) -> Result<(RequestView, Vec<crate::processors::NotificationView>)> {
    svc.read(|conn, vault| {
        let request = get(conn, vault, id, crate::now_ms())?;
        let processors = crate::processors::notifications_for_request(conn, id)?;
        Ok((request, processors))
    })
}

/// Requests matching `f`.
pub fn find(svc: &Services, f: &Filter) -> Result<Vec<RequestView>> {
    svc.read(|conn, _| list(conn, f, crate::now_ms()))
}

/// Staff verified the person's identity (`note` says how), durably.
pub fn verify_by_staff(svc: &Services, id: RequestId, note: String, actor: String) -> Result<()> {
    svc.write(move |ctx| verify(ctx, id, &actor, &note))
}

/// Refuse a request with the legal reason, durably.
pub fn refuse_request(
    svc: &Services,
    id: RequestId,
    legal_reason: String,
    actor: String,
) -> Result<()> {
    svc.write(move |ctx| refuse(ctx, id, &legal_reason, &actor))
}

/// Extend a request's deadline (once) with the reason, durably.
pub fn extend_request(svc: &Services, id: RequestId, reason: String, actor: String) -> Result<()> {
    svc.write(move |ctx| extend(ctx, id, &reason, &actor))
}

/// End the restriction a completed restriction request put in place, durably.
pub fn lift_restriction(svc: &Services, id: RequestId, actor: String) -> Result<()> {
    svc.write(move |ctx| lift(ctx, id, &actor))
}

/// The bundle of a completed access or portability request.
pub fn bundle_of(svc: &Services, id: RequestId) -> Result<crate::bundle::Bundle> {
    let (kind, status, profile) = svc.read(|conn, _| bundle_target(conn, id))?;
    if !kind.has_bundle() {
        return Err(Error::rejected(
            Code::NoBundle,
            "only access and portability requests have a bundle",
        ));
    }
    if status != RequestStatus::Completed {
        return Err(Error::rejected(
            Code::NotReady,
            format!(
                "the request is {}; the bundle is ready once it is completed",
                status.as_str()
            ),
        ));
    }
    let no_data = || Error::rejected(Code::NoDataHeld, "no data is held about the person");
    let profile = profile.ok_or_else(no_data)?;
    svc.store.bundle(profile)?.ok_or_else(no_data)
}

/// A request's verification link, looked at without using it.
pub fn peek_verification(svc: &Services, secret: &str) -> Result<links::ConfirmationData> {
    svc.read(|conn, _| links::find_token(conn, secret, VERIFY_TOKEN, crate::now_ms()))
        .map(|t| t.data)
}

/// The person followed the verification link (see [`verify_by_link`]),
/// durably: the request and its kind.
pub fn verify_link(svc: &Services, secret: String) -> Result<(RequestId, RequestKind)> {
    svc.write(move |ctx| verify_by_link(ctx, &secret))
}
