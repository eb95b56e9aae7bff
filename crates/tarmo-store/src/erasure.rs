//! Erasure (Art. 17): crypto-shredding plus deletion.
//!
//! In one transaction: every row of the person (their profile and every
//! profile merged into it, identifiers, events, consent state, CMP strings
//! seen, flags, tokens, messages waiting, merges, disclosures) is deleted; their
//! data keys are destroyed, so any copy of a sealed value anywhere (a backup,
//! a ledger entry) can no longer be opened; the blind index of each identifier
//! goes on the suppression list, so imports and ingestion do not bring them
//! back; processors that received their data are queued a notification.
//!
//! On SQLite the keys live in a file of their own (`keyring.db`): after the
//! commit, once it is durable, the keys are deleted there and the keyring's
//! log is folded into its file (`secure_delete` zeroes freed space) and
//! truncated before the answer; the data's log, whose frames from before
//! the erasure hold sealed values that no key opens any more, is folded
//! and truncated by the checkpointer in the background. On PostgreSQL the
//! keys (schema `keyring`) go in the erasure's own transaction.
//!
//! The consent ledger keeps its entries — sealed bytes nobody can open any
//! more — so the chain still verifies.
//!
//! The notice worker's transactions (claiming, renewing and recording the
//! notifications to processors) are at the end, under "notices".

use serde::Serialize;

use crate::Result;
use crate::conn::{P, ProfileId, RequestId};
use crate::crypto::person;
use crate::vault::BlindIndex;
use crate::writer::TxCtx;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErasureReport {
    /// The profile and those merged into it.
    pub profiles: u64,
    pub identifiers: u64,
    pub events: u64,
    pub keys_destroyed: u64,
    /// Processors queued a notification.
    pub processors_notified: u64,
}

/// Erase the person whose current profile is `profile`, for request
/// `request_id`. Suppression (keeping the blind indexes so they are not
/// recreated) is for a person's own request; the retention sweep, which
/// erases people nothing keeps any more, does not suppress.
pub fn erase_profile(
    ctx: &mut TxCtx<'_>,
    profile: ProfileId,
    request_id: Option<RequestId>,
    suppress: bool,
) -> Result<ErasureReport> {
    let now = ctx.now_ms;
    let mut ids = vec![profile];
    for r in ctx.conn.query(
        "SELECT id FROM profiles WHERE merged_into = $1",
        &[P::Int(profile.0)],
    )? {
        ids.push(ProfileId(r.int(0)?));
    }
    let mut report = ErasureReport {
        profiles: ids.len() as u64,
        ..Default::default()
    };

    // The identifiers, opened while the keys still exist: their blind
    // indexes go on the suppression list, their values to the processors.
    // Values are opened only for the processors' notifications (a request);
    // suppression needs nothing but the blind indexes, so a person whose
    // keys are already gone (a restore from a keyring without them) can
    // still be erased.
    let mut identifiers = Vec::new();
    let rows = ctx.conn.identifiers_of(profile)?;
    report.identifiers = rows.len() as u64;
    // What the writer's identity cache may hold of them.
    let mut blind: Vec<BlindIndex> = rows.iter().map(|r| r.bidx).collect();
    if ids.len() > 1 {
        blind.extend(
            ctx.conn
                .identifiers_of_many(&ids[1..])?
                .into_iter()
                .map(|(_, r)| r.bidx),
        );
    }
    for row in rows {
        if suppress {
            ctx.conn.exec(
                "INSERT INTO suppression (bidx, kind, at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[P::Blob(&row.bidx.0), P::Text(&row.kind), P::Int(now)],
            )?;
        }
        if request_id.is_none() {
            continue;
        }
        let sight = person::Sight::duty(person::Duty::PersonsRequest);
        if let Some(value) = person::identifier(ctx.conn, ctx.vault, &sight, &row)? {
            identifiers.push((row.kind, value));
        }
    }
    if let Some(request_id) = request_id {
        // Before the disclosures go: they say who received the person's data.
        report.processors_notified = crate::processors::enqueue_erasure_notifications(
            ctx.conn,
            ctx.vault,
            request_id,
            &ids,
            &identifiers,
            now,
        )? as u64;
    }
    drop(identifiers);

    let owners = ctx.conn.data_key_owners(&ids)?;
    for &id in &ids {
        let one = [P::Int(id.0)];
        // The erased person's states leave the dashboard's totals.
        crate::dashboard::states_removed(
            ctx.conn,
            "profile_id = $1",
            &one,
            crate::dashboard::day_of(ctx.now_ms),
        )?;
        report.events += ctx
            .conn
            .exec("DELETE FROM events WHERE profile_id = $1", &one)?;
        for sql in [
            "DELETE FROM identifiers WHERE profile_id = $1",
            "DELETE FROM consent_state WHERE profile_id = $1",
            "DELETE FROM consent_signals WHERE profile_id = $1",
            "DELETE FROM profile_flags WHERE profile_id = $1",
            "DELETE FROM tokens WHERE profile_id = $1",
            "DELETE FROM outbox WHERE profile_id = $1",
            "DELETE FROM disclosures WHERE profile_id = $1",
            "DELETE FROM merges WHERE into_profile = $1 OR from_profile = $1",
            // The person's other requests keep their record, not their details.
            "UPDATE requests SET payload = NULL WHERE profile_id = $1",
        ] {
            ctx.conn.exec(sql, &one)?;
        }
    }
    report.keys_destroyed = ctx.conn.data_keys_destroy(&owners)?;
    for &id in &ids {
        ctx.conn
            .exec("DELETE FROM profiles WHERE id = $1", &[P::Int(id.0)])?;
        ctx.conn.exec(
            "DELETE FROM profile_counts WHERE profile_id = $1",
            &[P::Int(id.0)],
        )?;
        // Ids and a time, never a value: what a restore of an older backup
        // replays so that it does not bring the person back.
        ctx.conn.exec(
            "INSERT INTO erasure_log (profile_id, request_id, at_ms) VALUES ($1, $2, $3)",
            &[P::Int(id.0), P::from(request_id), P::Int(now)],
        )?;
        // Out of every segment, history and all; the touch tells the
        // segment engine (on any node) to forget them.
        crate::segments::erase(ctx.conn, id)?;
        crate::imports::erase(ctx.conn, id)?;
        crate::automations::erase(ctx.conn, id)?;
        crate::segments::audiences::erased(ctx.conn, id)?;
        crate::segments::touch(ctx.conn, id, now)?;
    }
    for o in owners {
        ctx.vault.forget(o);
    }
    tracing::info!(
        profile = profile.0,
        request_id = request_id.map_or(0, |r| r.0),
        profiles = report.profiles,
        events = report.events,
        "person erased"
    );
    ctx.people_erased(&ids, &blind);
    ctx.checkpoint_after_commit();
    Ok(report)
}

// ------------------------------------------------------------------ notices

/// What the erasure-notice worker writes, each in a writer transaction of
/// its own (the worker holds only the writer).
pub mod notices {
    use crate::Result;
    use crate::lease::Claimant;
    use crate::processors::{self, ClaimedNotification};
    use crate::writer::WriterHandle;

    /// Take back this node's claims after a restart; how many.
    pub fn recover(writer: &WriterHandle, who: &Claimant) -> Result<u64> {
        let who = who.clone();
        writer.transact_blocking(move |ctx| processors::recover_notifications(ctx.conn, &who))
    }

    /// Claim up to `limit` due notifications, opened.
    pub fn claim(
        writer: &WriterHandle,
        who: &Claimant,
        limit: i64,
    ) -> Result<Vec<ClaimedNotification>> {
        let who = who.clone();
        writer.transact_blocking(move |ctx| {
            processors::claim_due_notifications(ctx.conn, ctx.vault, &who, ctx.now_ms, limit)
        })
    }

    /// Extend the claims on `ids`; the ids still held.
    pub fn renew(writer: &WriterHandle, who: &Claimant, ids: Vec<i64>) -> Result<Vec<i64>> {
        let who = who.clone();
        writer.transact_blocking(move |ctx| {
            processors::renew_notifications(ctx.conn, &who, &ids, ctx.now_ms)
        })
    }

    /// How delivering a notification went, to record.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Delivery {
        Delivered,
        /// Try again after `delay_ms`, for this reason.
        Retry {
            delay_ms: i64,
            why: String,
        },
        Failed(String),
    }

    /// Record how delivering notification `id` went; `false` when the claim
    /// ran out and another node took it over.
    pub fn record(writer: &WriterHandle, who: &Claimant, id: i64, d: Delivery) -> Result<bool> {
        let who = who.clone();
        writer.transact_blocking(move |ctx| match d {
            Delivery::Delivered => processors::mark_delivered(ctx.conn, &who, id, ctx.now_ms),
            Delivery::Retry { delay_ms, why } => {
                processors::mark_retry(ctx.conn, &who, id, ctx.now_ms + delay_ms, &why)
            }
            Delivery::Failed(why) => processors::mark_failed(ctx.conn, &who, id, &why),
        })
    }
}
