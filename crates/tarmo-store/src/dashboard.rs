//! The consent dashboard's aggregates: ledger entries per day, purpose,
//! method and decision, and the change per day of how many people are in
//! each decision per purpose. Both are kept current in the transaction of
//! every write to the ledger or the materialised state (migration 16
//! filled them from what was there), so the dashboard reads a few hundred
//! rows whatever the size of the ledger.
//!
//! What it must keep: counts only, never a profile id; every change to
//! `consent_state` is matched by a change here, or the totals drift.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tarmo_core::consent::ConsentDecision;

use crate::Result;
use crate::conn::{Conn, P};

const DAY_MS: i64 = 86_400_000;

/// The UTC day number of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Ledger entries written in one transaction, counted per
/// (day, purpose, method, decision).
#[derive(Debug, Default)]
pub struct EntryCounts(HashMap<(i64, String, &'static str, &'static str), i64>);

impl EntryCounts {
    pub fn add(&mut self, at_ms: i64, purpose: &str, method: &'static str, decision: &'static str) {
        *self
            .0
            .entry((day_of(at_ms), purpose.to_owned(), method, decision))
            .or_default() += 1;
    }

    pub fn write(&self, conn: &mut dyn Conn) -> Result<()> {
        for ((day, purpose, method, decision), n) in &self.0 {
            conn.exec(
                "INSERT INTO consent_daily_entries (day, purpose_id, method, decision, n)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (day, purpose_id, method, decision) DO UPDATE
                 SET n = consent_daily_entries.n + excluded.n",
                &[
                    P::Int(*day),
                    P::Text(purpose),
                    P::Text(method),
                    P::Text(decision),
                    P::Int(*n),
                ],
            )?;
        }
        Ok(())
    }
}

/// Changes of decision made in one transaction, summed per (day, purpose,
/// decision) and written once: a batch of ledger entries moves a handful of
/// totals, not one row per entry.
#[derive(Debug, Default)]
pub struct StateDeltas(HashMap<(i64, String, &'static str), i64>);

impl StateDeltas {
    /// A person's decision for a purpose went from `old` (none: no state
    /// yet) to `new` on `day`.
    pub fn changed(
        &mut self,
        day: i64,
        purpose: &str,
        old: Option<ConsentDecision>,
        new: ConsentDecision,
    ) {
        if old == Some(new) {
            return;
        }
        if let Some(old) = old {
            *self
                .0
                .entry((day, purpose.to_owned(), old.as_str()))
                .or_default() -= 1;
        }
        *self
            .0
            .entry((day, purpose.to_owned(), new.as_str()))
            .or_default() += 1;
    }

    pub fn write(&self, conn: &mut dyn Conn) -> Result<()> {
        for ((day, purpose, decision), delta) in &self.0 {
            add_state(conn, *day, purpose, decision, *delta)?;
        }
        Ok(())
    }
}

fn add_state(
    conn: &mut dyn Conn,
    day: i64,
    purpose: &str,
    decision: &str,
    delta: i64,
) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    conn.exec(
        "INSERT INTO consent_daily_states (day, purpose_id, decision, delta) VALUES ($1, $2, $3, $4)
         ON CONFLICT (day, purpose_id, decision) DO UPDATE
         SET delta = consent_daily_states.delta + excluded.delta",
        &[P::Int(day), P::Text(purpose), P::Text(decision), P::Int(delta)],
    )?;
    Ok(())
}

/// The states a `DELETE FROM consent_state WHERE <filter>` is about to
/// remove leave the totals on `day`. Call it just before the delete.
pub fn states_removed(conn: &mut dyn Conn, filter: &str, params: &[P<'_>], day: i64) -> Result<()> {
    let rows = conn.query(
        &format!(
            "SELECT purpose_id, decision, count(*) FROM consent_state WHERE {filter}
             GROUP BY purpose_id, decision"
        ),
        params,
    )?;
    for r in &rows {
        add_state(conn, day, &r.text(0)?, &r.text(1)?, -r.int(2)?)?;
    }
    Ok(())
}

/// One day of the dashboard for one purpose.
#[derive(Debug, Clone, Serialize)]
pub struct PurposeDay {
    pub day: i64,
    /// People whose decision is `granted` at the end of the day.
    pub granted: i64,
    /// People with any decision recorded for the purpose.
    pub total: i64,
}

/// Entries of one day, by method and decision.
#[derive(Debug, Clone, Serialize)]
pub struct EntryDay {
    pub day: i64,
    pub method: String,
    pub decision: String,
    pub n: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub first_day: i64,
    pub last_day: i64,
    /// Per purpose, one point per day from `first_day` to `last_day`.
    pub rates: BTreeMap<String, Vec<PurposeDay>>,
    /// People in each decision now, per purpose.
    pub now: BTreeMap<String, BTreeMap<String, i64>>,
    pub entries: Vec<EntryDay>,
}

/// The dashboard over the `days` days up to `now_ms`.
pub fn dashboard(conn: &mut dyn Conn, now_ms: i64, days: i64) -> Result<Dashboard> {
    let last = day_of(now_ms);
    let first = last - days + 1;
    let mut now: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut rates: BTreeMap<String, Vec<PurposeDay>> = BTreeMap::new();
    // Everything before the window folds into the starting totals; the
    // table holds a row per day, purpose and decision that changed.
    let rows = conn.query(
        "SELECT day, purpose_id, decision, delta FROM consent_daily_states
         WHERE day >= $1 ORDER BY day",
        &[P::Int(first)],
    )?;
    let before = conn.query(
        "SELECT purpose_id, decision, CAST(sum(delta) AS BIGINT) FROM consent_daily_states WHERE day < $1
         GROUP BY purpose_id, decision",
        &[P::Int(first)],
    )?;
    for r in &before {
        *now.entry(r.text(0)?)
            .or_default()
            .entry(r.text(1)?)
            .or_default() += r.int(2)?;
    }
    let mut by_day: BTreeMap<i64, Vec<(String, String, i64)>> = BTreeMap::new();
    for r in &rows {
        by_day
            .entry(r.int(0)?)
            .or_default()
            .push((r.text(1)?, r.text(2)?, r.int(3)?));
    }
    for day in first..=last {
        if let Some(changes) = by_day.get(&day) {
            for (p, d, n) in changes {
                *now.entry(p.clone())
                    .or_default()
                    .entry(d.clone())
                    .or_default() += n;
            }
        }
        for (p, m) in &now {
            rates.entry(p.clone()).or_default().push(PurposeDay {
                day,
                granted: m.get("granted").copied().unwrap_or(0),
                total: m.values().sum(),
            });
        }
    }
    let entries = conn
        .query(
            "SELECT day, method, decision, CAST(sum(n) AS BIGINT) FROM consent_daily_entries WHERE day >= $1
             GROUP BY day, method, decision ORDER BY day",
            &[P::Int(first)],
        )?
        .iter()
        .map(|r| {
            Ok(EntryDay {
                day: r.int(0)?,
                method: r.text(1)?,
                decision: r.text(2)?,
                n: r.int(3)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dashboard {
        first_day: first,
        last_day: last,
        rates,
        now,
        entries,
    })
}

/// People whose consent to `purpose` ends within `window_ms` (their grant
/// is older than the purpose's lifetime less the window): one range count
/// over the state's (purpose, decision, at) index.
pub fn expiring(
    conn: &mut dyn Conn,
    purpose: &str,
    lifetime_days: u32,
    now_ms: i64,
    window_ms: i64,
) -> Result<i64> {
    let lifetime = i64::from(lifetime_days) * DAY_MS;
    let r = conn.query_opt(
        "SELECT count(*) FROM consent_state WHERE purpose_id = $1 AND decision = 'granted'
         AND at_ms > $2 AND at_ms <= $3",
        &[
            P::Text(purpose),
            P::Int(now_ms - lifetime),
            P::Int(now_ms - lifetime + window_ms),
        ],
    )?;
    Ok(match r {
        Some(r) => r.int(0)?,
        None => 0,
    })
}

/// A purpose whose consents expire, with how many people's expire soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    pub purpose: String,
    pub lifetime_days: u32,
    pub people: i64,
}

/// The dashboard over the `days` days up to now, and for each purpose of
/// `lifetimes` (purpose, consent lifetime in days) the people whose consent
/// ends within `window_ms`: one read on the pool.
pub fn read(
    svc: &crate::Services,
    days: i64,
    lifetimes: Vec<(String, u32)>,
    window_ms: i64,
) -> Result<(Dashboard, Vec<Expiring>)> {
    let now = crate::now_ms();
    svc.read(|conn, _| {
        let d = dashboard(conn, now, days)?;
        let mut soon = Vec::with_capacity(lifetimes.len());
        for (purpose, lifetime_days) in lifetimes {
            let people = expiring(conn, &purpose, lifetime_days, now, window_ms)?;
            soon.push(Expiring {
                purpose,
                lifetime_days,
                people,
            });
        }
        Ok((d, soon))
    })
}
