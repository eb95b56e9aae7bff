//! The outbox: messages to people are written in the same transaction as the
//! ledger entry that calls for them, and sent afterwards by a worker. A crash
//! before the send leaves the row to be sent after restart; a crash during
//! the send (after the mail server accepted it, before the row was marked)
//! sends it again with the same Message-ID, which mail systems use to
//! recognise a duplicate. The payload is sealed under the person's key and
//! cleared once sent.

use serde::{Deserialize, Serialize};

use crate::conn::{Conn, P, ProfileId};
use crate::vault::{Place, Vault};
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
        request_id: i64,
    },
    /// A marketing email, sent only while the purpose allows it; it carries
    /// a one-click unsubscribe link for that purpose.
    Marketing {
        to: String,
        purpose: String,
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
        purpose: String,
        text: String,
    },
}

impl OutboxMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Confirmation { .. } => "confirmation",
            Self::RequestVerification { .. } => "request_verification",
            Self::Marketing { .. } => "marketing",
            Self::MarketingSms { .. } => "marketing_sms",
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
    let key = vault
        .data_key(profile, || conn.data_key_get(profile))?
        .ok_or_else(|| Error::Corrupt(format!("profile {profile} has no data key")))?;
    let plain = serde_json::to_vec(msg).expect("serialises");
    let sealed = vault.seal(&key, Place::OutboxPayload, profile, &plain)?;
    let r = conn
        .query_opt(
            "INSERT INTO outbox (profile_id, key_owner, channel, kind, payload, created_ms, next_attempt_ms, attempts, status)
             VALUES ($1, $1, $2, $3, $4, $5, $5, 0, 'pending') RETURNING id",
            &[
                P::Int(profile),
                P::Text(channel),
                P::Text(msg.kind()),
                P::Blob(&sealed),
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

/// Claim up to `limit` due messages of a channel (`email`, `sms`): mark
/// them `sending` and open them.
pub fn claim_due(
    conn: &mut dyn Conn,
    vault: &Vault,
    channel: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let rows = conn.query(
        "SELECT id, profile_id, key_owner, channel, attempts, payload, created_ms FROM outbox
         WHERE status = 'pending' AND channel = $3 AND next_attempt_ms <= $1
         ORDER BY next_attempt_ms, id LIMIT $2",
        &[P::Int(now_ms), P::Int(limit), P::Text(channel)],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, owner) = (r.int(0)?, r.int(2)?);
        conn.exec(
            "UPDATE outbox SET status = 'sending', attempts = attempts + 1 WHERE id = $1",
            &[P::Int(id)],
        )?;
        let Some(sealed) = r.opt_blob(5)? else {
            continue;
        };
        let key = vault
            .data_key(owner, || conn.data_key_get(owner))?
            .ok_or_else(|| Error::Corrupt(format!("no data key for profile {owner}")))?;
        let plain = vault.open(&key, Place::OutboxPayload, owner, &sealed)?;
        out.push(Claimed {
            id,
            profile_id: r.int(1)?,
            channel: r.text(3)?,
            attempts: r.int(4)? + 1,
            created_ms: r.int(6)?,
            message: serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?,
        });
    }
    Ok(out)
}

/// Sent: the payload (addresses, tokens) is wiped.
pub fn mark_sent(conn: &mut dyn Conn, id: i64, now_ms: i64) -> Result<()> {
    conn.exec(
        "UPDATE outbox SET status = 'sent', sent_ms = $2, payload = NULL, last_error = NULL WHERE id = $1",
        &[P::Int(id), P::Int(now_ms)],
    )?;
    Ok(())
}

/// Try again at `next_ms`. `error` must hold no personal data.
pub fn mark_retry(conn: &mut dyn Conn, id: i64, next_ms: i64, error: &str) -> Result<()> {
    conn.exec(
        "UPDATE outbox SET status = 'pending', next_attempt_ms = $2, last_error = $3 WHERE id = $1",
        &[P::Int(id), P::Int(next_ms), P::Text(error)],
    )?;
    Ok(())
}

/// Given up (a permanent refusal, too many attempts, or the purpose no
/// longer allows it): the payload is wiped. `error` holds no personal data.
pub fn mark_failed(conn: &mut dyn Conn, id: i64, error: &str) -> Result<()> {
    conn.exec(
        "UPDATE outbox SET status = 'failed', payload = NULL, last_error = $2 WHERE id = $1",
        &[P::Int(id), P::Text(error)],
    )?;
    Ok(())
}

/// After a crash: messages that were being sent are due again (with the same
/// Message-ID). The number of messages recovered.
pub fn recover(conn: &mut dyn Conn) -> Result<u64> {
    conn.exec(
        "UPDATE outbox SET status = 'pending' WHERE status = 'sending'",
        &[],
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
