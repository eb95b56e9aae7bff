//! The outbox: messages to people are written in the same transaction as the
//! ledger entry that calls for them, and sent afterwards by a worker. A crash
//! before the send leaves the row to be sent after restart; a crash during
//! the send (after the mail server accepted it, before the row was marked)
//! sends it again with the same Message-ID, which mail systems use to
//! recognise a duplicate. The payload is sealed under the person's key and
//! cleared once sent.
//!
//! The functions at the end (under "use cases") own their transactions
//! through [`Services`]: queueing a marketing email, and what the mail
//! worker records; the others run inside the caller's.

use serde::{Deserialize, Serialize};
use tarmo_core::consent::PurposeId;

use crate::conn::{Conn, P, ProcessorId, ProfileId, RequestId};
use crate::consent::{self, Catalog, Judged, Lookup, Subject};
use crate::crypto::person::{self, Opened};
use crate::lease::Claimant;
use crate::service::Services;
use crate::vault::{Place, Sealed, Vault};
use crate::{Error, Result};

/// What to send. Personal data: only ever stored sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxMessage {
    /// The double opt-in confirmation message.
    Confirmation {
        /// Email address or E.164 phone number.
        to: String,
        language: String,
        /// The single-use token's secret, for the link.
        token: String,
        /// Purpose id and the notice version the person is agreeing to.
        purposes: Vec<(String, String)>,
        expires_ms: i64,
    },
    /// The link that verifies a data subject request came from the person.
    RequestVerification {
        to: String,
        language: String,
        token: String,
        request_type: String,
        request_id: RequestId,
    },
    /// A marketing email, sent only while the purpose allows it; it carries
    /// a one-click unsubscribe link for that purpose.
    Marketing {
        to: String,
        purpose: PurposeId,
        subject: String,
        text: String,
        html: Option<String>,
        /// Signed unsubscribe link token for `purpose`.
        unsubscribe: String,
    },
    /// A marketing SMS (automations, campaigns), sent only while the
    /// purpose allows it over SMS; its text ends with the opt-out line.
    MarketingSms {
        to: String,
        purpose: PurposeId,
        text: String,
    },
    /// A push or call-list entry for a processor (a webhook automation or
    /// campaign), POSTed to the processor's webhook only while the purpose
    /// allows it over the list's channel. Its disclosure was recorded with
    /// the row.
    ProcessorList {
        processor_id: ProcessorId,
        purpose: PurposeId,
        /// `push` or `call`.
        list: String,
        /// What the processor receives, without the delivery id.
        payload: serde_json::Value,
    },
}

impl OutboxMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Confirmation { .. } => "confirmation",
            Self::RequestVerification { .. } => "request_verification",
            Self::Marketing { .. } => "marketing",
            Self::MarketingSms { .. } => "marketing_sms",
            Self::ProcessorList { .. } => "processor_list",
        }
    }
}

/// Queue a message for `profile` (its current id; its own data key seals it).
pub fn enqueue(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    channel: &str,
    msg: &OutboxMessage,
    now_ms: i64,
) -> Result<i64> {
    let plain = serde_json::to_vec(msg).expect("serialises");
    let sealed = person::seal(conn, vault, profile, Place::OutboxPayload, &plain)?;
    let r = conn
        .query_opt(
            "INSERT INTO outbox (profile_id, key_owner, channel, kind, payload, created_ms, next_attempt_ms, attempts, status)
             VALUES ($1, $1, $2, $3, $4, $5, $5, 0, 'pending') RETURNING id",
            &[
                P::Int(profile.0),
                P::Text(channel),
                P::Text(msg.kind()),
                P::from(&sealed),
                P::Int(now_ms),
            ],
        )?
        .ok_or_else(|| Error::Backend("INSERT ... RETURNING gave no row".into()))?;
    r.int(0)
}

/// A message claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub profile_id: ProfileId,
    pub channel: String,
    pub attempts: i64,
    pub created_ms: i64,
    pub message: OutboxMessage,
}

/// Claim up to `limit` due messages of a channel (`email`, `sms`) for
/// `who`: mark them `sending` under a lease and open them. Due are pending
/// messages whose time came, and messages whose sender's lease ran out (a
/// node that died mid-send): those are sent again, with the same
/// Message-ID.
pub fn claim_due(
    conn: &mut dyn Conn,
    vault: &Vault,
    who: &Claimant,
    channel: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let sql = format!(
        "SELECT id, profile_id, key_owner, channel, attempts, payload, created_ms FROM outbox
         WHERE channel = $3 AND ((status = 'pending' AND next_attempt_ms <= $1)
             OR (status = 'sending' AND lease_until <= $1))
         ORDER BY next_attempt_ms, id LIMIT $2{}",
        conn.skip_locked("outbox")
    );
    let rows = conn.query(&sql, &[P::Int(now_ms), P::Int(limit), P::Text(channel)])?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, owner) = (r.int(0)?, ProfileId(r.int(2)?));
        // Another node may have claimed it since the read: only one wins.
        let won = conn.exec(
            "UPDATE outbox SET status = 'sending', attempts = attempts + 1,
                 claimed_by = $2, lease_until = $3
             WHERE id = $1 AND (status = 'pending' OR (status = 'sending' AND lease_until <= $4))",
            &[
                P::Int(id),
                P::Text(&who.node),
                P::Int(who.until(now_ms)),
                P::Int(now_ms),
            ],
        )? == 1;
        if !won {
            continue;
        }
        let message = match open_payload(conn, vault, owner, r.opt_sealed(5)?)? {
            Ok(m) => m,
            Err(why) => {
                // One message that cannot be sent must not hold up those
                // behind it: it is parked with its reason for staff to see.
                tracing::error!(
                    outbox_id = id,
                    reason = why,
                    "an outbox message is parked as failed"
                );
                mark_failed(conn, who, id, why)?;
                continue;
            }
        };
        out.push(Claimed {
            id,
            profile_id: ProfileId(r.int(1)?),
            channel: r.text(3)?,
            attempts: r.int(4)? + 1,
            created_ms: r.int(6)?,
            message,
        });
    }
    Ok(out)
}

/// Open and read a message's sealed payload, or say in words (no personal
/// data) why it cannot be (the inner error). A store fault while reading
/// the key is no reason to park the message (the outer error): only what
/// is wrong with this row is.
fn open_payload(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    sealed: Option<Sealed>,
) -> Result<Result<OutboxMessage, &'static str>> {
    let Some(sealed) = sealed else {
        return Ok(Err("the payload is missing"));
    };
    let sight = person::Sight::duty(person::Duty::Delivery);
    let plain = match person::try_open(conn, vault, &sight, owner, Place::OutboxPayload, &sealed)? {
        Opened::Plain(plain) => plain,
        Opened::KeyGone => return Ok(Err("the person's data key is gone")),
        Opened::KeyBroken => return Ok(Err("the person's data key does not open")),
        Opened::DoesNotOpen => return Ok(Err("the sealed payload does not open")),
    };
    Ok(serde_json::from_slice(&plain)
        .map_err(|_| "the payload is not a message this version reads"))
}

/// Extend `who`'s leases on these messages; the ids it still holds (a
/// message whose lease ran out and that another node took is not sent).
pub fn renew(conn: &mut dyn Conn, who: &Claimant, ids: &[i64], now_ms: i64) -> Result<Vec<i64>> {
    let mut held = Vec::with_capacity(ids.len());
    for &id in ids {
        let n = conn.exec(
            "UPDATE outbox SET lease_until = $3
             WHERE id = $1 AND status = 'sending' AND claimed_by = $2",
            &[P::Int(id), P::Text(&who.node), P::Int(who.until(now_ms))],
        )?;
        if n == 1 {
            held.push(id);
        }
    }
    Ok(held)
}

/// Sent: the payload (addresses, tokens) is wiped. Only while `who` holds
/// the claim; `false` when it no longer did.
pub fn mark_sent(conn: &mut dyn Conn, who: &Claimant, id: i64, now_ms: i64) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE outbox SET status = 'sent', sent_ms = $2, payload = NULL, last_error = NULL,
             lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $3",
        &[P::Int(id), P::Int(now_ms), P::Text(&who.node)],
    )? == 1)
}

/// Try again at `next_ms`. `error` must hold no personal data. Only while
/// `who` holds the claim.
pub fn mark_retry(
    conn: &mut dyn Conn,
    who: &Claimant,
    id: i64,
    next_ms: i64,
    error: &str,
) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE outbox SET status = 'pending', next_attempt_ms = $2, last_error = $3,
             claimed_by = NULL, lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $4",
        &[
            P::Int(id),
            P::Int(next_ms),
            P::Text(error),
            P::Text(&who.node),
        ],
    )? == 1)
}

/// Given up (a permanent refusal, too many attempts, or the purpose no
/// longer allows it): the payload is wiped. `error` holds no personal data.
/// Only while `who` holds the claim.
pub fn mark_failed(conn: &mut dyn Conn, who: &Claimant, id: i64, error: &str) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE outbox SET status = 'failed', payload = NULL, last_error = $2, lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $3",
        &[P::Int(id), P::Text(error), P::Text(&who.node)],
    )? == 1)
}

/// After a restart: the messages this node was sending are due again (with
/// the same Message-ID); other nodes' claims are theirs until their leases
/// run out. Claims from before leases (no node named) are taken back too.
/// The number of messages recovered.
pub fn recover(conn: &mut dyn Conn, who: &Claimant) -> Result<u64> {
    conn.exec(
        "UPDATE outbox SET status = 'pending', claimed_by = NULL, lease_until = NULL
         WHERE status = 'sending' AND (claimed_by = $1 OR claimed_by IS NULL)",
        &[P::Text(&who.node)],
    )
}

/// Counts by status, for metrics.
pub fn counts(conn: &mut dyn Conn) -> Result<Vec<(String, i64)>> {
    conn.query(
        "SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}

// ---------------------------------------------------------------- use cases

/// A marketing email to queue for one person.
#[derive(Debug, Clone)]
pub struct MarketingEmail {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Queue a marketing email for the person `lookup` names, if and only if
/// `purpose` allows the email channel now: decided and queued in one
/// transaction. The message carries a one-click unsubscribe link for the
/// purpose. The decision, and whether a message was queued.
pub fn queue_marketing_email(
    svc: &Services,
    lookup: Lookup,
    purpose: PurposeId,
    rule: tarmo_core::consent::PurposeRule,
    email: MarketingEmail,
) -> Result<(Judged, bool)> {
    svc.write(move |ctx| {
        let subject = consent::read_subject(ctx.conn, lookup, &purpose)?;
        let judged = consent::judge(
            &rule,
            Some(tarmo_core::consent::Channel::Email),
            subject,
            ctx.now_ms,
        );
        let Some(profile) = judged.profile.filter(|_| judged.verdict.allowed) else {
            return Ok((judged, false));
        };
        let Some(to) = consent::contact(ctx.conn, ctx.vault, profile, "email")? else {
            return Err(Error::rejected(
                tarmo_core::codes::Code::NoEmailAddress,
                "the person has no email address on record",
            ));
        };
        let unsubscribe = crate::links::sign_link(
            ctx.vault,
            crate::doi::UNSUBSCRIBE_LINK,
            &crate::links::SignedLink {
                profile_id: profile,
                scope: purpose.to_string(),
                issued_ms: ctx.now_ms,
            },
        );
        enqueue(
            ctx.conn,
            ctx.vault,
            profile,
            "email",
            &OutboxMessage::Marketing {
                to,
                purpose,
                subject: email.subject,
                text: email.text,
                html: email.html,
                unsubscribe,
            },
            ctx.now_ms,
        )?;
        Ok((judged, true))
    })
}

/// Take back this node's claims after a restart (see [`recover`]).
pub fn recover_claims(svc: &Services, who: &Claimant) -> Result<u64> {
    let who = who.clone();
    svc.write(move |ctx| recover(ctx.conn, &who))
}

/// Claim up to `limit` due messages of `channel` (see [`claim_due`]).
pub fn claim(
    svc: &Services,
    who: &Claimant,
    channel: &'static str,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let who = who.clone();
    svc.write(move |ctx| claim_due(ctx.conn, ctx.vault, &who, channel, ctx.now_ms, limit))
}

/// Extend the claims on `ids`; the ids still held (see [`renew`]).
pub fn renew_claims(svc: &Services, who: &Claimant, ids: Vec<i64>) -> Result<Vec<i64>> {
    let who = who.clone();
    svc.write(move |ctx| renew(ctx.conn, &who, &ids, ctx.now_ms))
}

/// How sending a message went, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// Try again after `delay_ms`, for this reason.
    Retry {
        delay_ms: i64,
        why: String,
    },
    Failed(String),
}

/// Record how sending message `id` went; `false` when the claim ran out and
/// another node took the message over.
pub fn record_outcome(
    svc: &Services,
    who: &Claimant,
    id: i64,
    outcome: SendOutcome,
) -> Result<bool> {
    let who = who.clone();
    svc.write(move |ctx| match outcome {
        SendOutcome::Sent => mark_sent(ctx.conn, &who, id, ctx.now_ms),
        SendOutcome::Retry { delay_ms, why } => {
            mark_retry(ctx.conn, &who, id, ctx.now_ms + delay_ms, &why)
        }
        SendOutcome::Failed(why) => mark_failed(ctx.conn, &who, id, &why),
    })
}

/// The decision's inputs for each (purpose, profile) of `wanted`, in one
/// read a purpose.
pub fn subjects_of(
    svc: &Services,
    wanted: &std::collections::HashMap<&PurposeId, Vec<ProfileId>>,
) -> Result<std::collections::HashMap<(PurposeId, ProfileId), Subject>> {
    let mut out = std::collections::HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    svc.read(|conn, _| {
        for (purpose, ids) in wanted {
            for (p, s) in consent::subjects_by_id(conn, ids, purpose)? {
                out.insert(((*purpose).clone(), p), s);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// One person's decision inputs for `purpose`, read now.
pub fn subject_now(svc: &Services, profile: ProfileId, purpose: &PurposeId) -> Result<Subject> {
    svc.read(|conn, _| consent::subject_by_id(conn, profile, purpose))
}

/// The name and notice text of each purpose a confirmation asks about, in
/// `language` (the notice as the person will agree to it, at its version).
pub fn confirmation_purposes(
    svc: &Services,
    catalog: &Catalog,
    purposes: &[(String, String)],
    language: &str,
    name_language: &str,
) -> Result<Vec<(String, String)>> {
    svc.read(|conn, _| {
        let mut list = Vec::with_capacity(purposes.len());
        for (p, version) in purposes {
            let texts = consent::notice_texts(conn, p, version)?.unwrap_or_default();
            let notice = tarmo_core::consent::purpose::notice_text(&texts, language)
                .map(|(_, t)| t.to_owned())
                .unwrap_or_default();
            let name = catalog
                .get(p)
                .map_or(p.clone(), |c| c.spec.name_in(name_language).1.to_owned());
            list.push((name, notice));
        }
        Ok(list)
    })
}

/// A processor's webhook URL and bearer token, opened, for a push or call
/// list; `None` when it has none.
pub fn processor_webhook(
    svc: &Services,
    processor: ProcessorId,
) -> Result<Option<(String, Option<String>)>> {
    svc.read(|conn, vault| crate::processors::webhook_of(conn, vault, processor))
}
