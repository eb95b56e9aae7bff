//! The retention sweep: deletes what has outlived every purpose it was kept
//! for, records lapsed consent in the ledger, and counts what it did (never
//! values).
//!
//! The rules:
//! - **events** are kept for the longest retention of the purposes that use
//!   event data (data categories `behaviour`, `purchase_history`, `events`),
//!   counted from when Tarmo received them; with no such purpose, for the
//!   longest retention of any purpose;
//! - **consent** that outlived its purpose's `consent_lifetime_days` gets an
//!   `expired` ledger entry (the decision already reads `expired`; the entry
//!   makes it part of the record);
//! - **people** with no events left, no consent standing and no activity
//!   within the longest retention of any purpose are erased (crypto-shredded,
//!   not suppressed: they may come back as new customers).
//!
//! Work goes through the writer in bounded transactions, so ingestion keeps
//! flowing during a sweep.

use serde::Serialize;
use tarmo_core::consent::{ConsentDecision, Method};

use crate::conn::{P, ProfileId};
use crate::consent::{Catalog, NewEntry};
use crate::writer::WriterHandle;
use crate::{Result, rfc3339};

const DAY_MS: i64 = 86_400_000;
const EVENT_CATEGORIES: [&str; 3] = ["behaviour", "purchase_history", "events"];
const CHUNK: i64 = 20_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Events received before this were due for deletion.
    pub event_cutoff: Option<String>,
    pub events_deleted: u64,
    pub consents_expired: u64,
    pub profiles_erased: u64,
    pub millis: u64,
}

/// The longest retention of purposes using event data, and of any purpose, in days.
pub fn retention_days(catalog: &Catalog) -> (Option<u32>, Option<u32>) {
    let entries = catalog.entries();
    let events = entries
        .iter()
        .filter(|c| {
            c.spec
                .data_categories
                .iter()
                .any(|d| EVENT_CATEGORIES.contains(&d.as_str()))
        })
        .map(|c| c.spec.retention_days)
        .max();
    let any = entries.iter().map(|c| c.spec.retention_days).max();
    (events.or(any), any)
}

/// Take this node's turn to sweep (a lease held for `hold_ms`): `false`
/// when another node sweeps this turn.
pub fn take_turn(writer: &WriterHandle, node: &str, hold_ms: i64) -> Result<bool> {
    let me = node.to_owned();
    writer.transact_blocking(move |ctx| {
        crate::lease::take_job(ctx.conn, "retention", &me, ctx.now_ms, ctx.now_ms + hold_ms)
    })
}

/// Run one sweep at `now_ms`; with `dry_run`, count what would go and change nothing.
pub fn sweep(writer: &WriterHandle, now_ms: i64, dry_run: bool) -> Result<RetentionReport> {
    let started = std::time::Instant::now();
    let catalog = writer.transact_blocking(|ctx| Ok(ctx.catalog.clone()))?;
    let mut report = RetentionReport {
        dry_run,
        ..Default::default()
    };
    let (event_days, any_days) = retention_days(&catalog);
    let Some(event_days) = event_days else {
        return Ok(report);
    };
    let cutoff = now_ms - i64::from(event_days) * DAY_MS;
    report.event_cutoff = Some(rfc3339(cutoff));

    // Events, oldest first, a bounded chunk per transaction. Events are
    // numbered in the order they were received, so the oldest are the lowest
    // ids and the sweep stops at the first one still within its retention:
    // no index on the receipt time is needed (one more B-tree on every
    // ingested event).
    if dry_run {
        report.events_deleted = writer.transact_blocking(move |ctx| {
            ctx.conn
                .query_opt(
                    "SELECT count(*) FROM events WHERE received_ms < $1",
                    &[P::Int(cutoff)],
                )?
                .map_or(Ok(0), |r| r.int(0))
        })? as u64;
    } else {
        loop {
            let (n, done) = writer.transact_blocking(move |ctx| {
                let rows = ctx.conn.query(
                    "SELECT id, profile_id, received_ms FROM events ORDER BY id LIMIT $1",
                    &[P::Int(CHUNK)],
                )?;
                let mut removed = Vec::new();
                let mut n = 0u64;
                let mut reached_newer = rows.len() < CHUNK as usize;
                for r in &rows {
                    if r.int(2)? >= cutoff {
                        reached_newer = true;
                        break;
                    }
                    ctx.conn
                        .exec("DELETE FROM events WHERE id = $1", &[P::Int(r.int(0)?)])?;
                    removed.push((ProfileId(r.int(1)?), r.int(0)?));
                    n += 1;
                }
                ctx.conn.events_removed(&removed)?;
                Ok((n, reached_newer))
            })?;
            report.events_deleted += n;
            if done {
                break;
            }
        }
    }

    // Consent that outlived its lifetime.
    for c in catalog.entries() {
        let Some(life) = c.rule.consent_lifetime_ms else {
            continue;
        };
        let purpose = c.id.clone();
        loop {
            let p = purpose.clone();
            let n = writer.transact_blocking(move |ctx| {
                let rows = ctx.conn.query(
                    "SELECT profile_id FROM consent_state
                     WHERE purpose_id = $1 AND decision = 'granted' AND at_ms <= $2 LIMIT 1000",
                    &[P::Text(p.as_str()), P::Int(now_ms - life)],
                )?;
                if dry_run {
                    return Ok((rows.len() as u64, true));
                }
                let entries: Vec<NewEntry> = rows
                    .iter()
                    .map(|r| {
                        Ok(NewEntry {
                            channel: None,
                            profile_id: ProfileId(r.int(0)?),
                            purpose: p.clone(),
                            decision: ConsentDecision::Expired,
                            method: Method::System,
                            notice_version: None,
                            at_ms: None,
                            source: "retention sweep".into(),
                            evidence: serde_json::Map::new(),
                        })
                    })
                    .collect::<Result<_>>()?;
                let catalog = ctx.catalog.clone();
                crate::consent::append(ctx.conn, ctx.vault, &catalog, &entries, ctx.now_ms)?;
                Ok((entries.len() as u64, entries.len() < 1000))
            })?;
            report.consents_expired += n.0;
            if n.1 {
                break;
            }
        }
    }

    // People nothing keeps any more.
    if let Some(any_days) = any_days {
        let idle = now_ms - i64::from(any_days) * DAY_MS;
        loop {
            let n = writer.transact_blocking(move |ctx| {
                let rows = ctx.conn.query(
                    "SELECT p.id FROM profiles p
                     WHERE p.merged_into IS NULL AND p.updated_ms < $1
                       AND NOT EXISTS (SELECT 1 FROM profile_counts c WHERE c.profile_id = p.id
                                        AND (c.events <> 0 OR c.last_ms >= $1))
                       AND NOT EXISTS (SELECT 1 FROM events e WHERE e.profile_id = p.id)
                       AND NOT EXISTS (SELECT 1 FROM consent_state s WHERE s.profile_id = p.id
                                        AND s.decision IN ('granted', 'objected'))
                       AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.profile_id = p.id
                                        AND r.status IN ('received', 'awaiting_verification', 'in_progress'))
                     LIMIT 200",
                    &[P::Int(idle)],
                )?;
                if dry_run {
                    return Ok((rows.len() as u64, true));
                }
                for r in &rows {
                    crate::erasure::erase_profile(ctx, ProfileId(r.int(0)?), None, false)?;
                }
                Ok((rows.len() as u64, rows.len() < 200))
            })?;
            report.profiles_erased += n.0;
            if n.1 {
                break;
            }
        }
    }

    report.millis = started.elapsed().as_millis() as u64;
    let r = report.clone();
    writer.transact_blocking(move |ctx| {
        ctx.conn.exec(
            "INSERT INTO retention_runs (at_ms, dry_run, cutoff_ms, events_deleted, consents_expired, profiles_erased, millis)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                P::Int(now_ms),
                P::from(r.dry_run),
                P::Int(cutoff),
                P::Int(r.events_deleted as i64),
                P::Int(r.consents_expired as i64),
                P::Int(r.profiles_erased as i64),
                P::Int(r.millis as i64),
            ],
        )?;
        Ok(())
    })?;
    if !dry_run && (report.events_deleted > 0 || report.profiles_erased > 0) {
        writer.transact_blocking(|ctx| {
            ctx.checkpoint_after_commit();
            Ok(())
        })?;
    }
    Ok(report)
}
