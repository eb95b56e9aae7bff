//! Following a table by id when ids do not commit in their order.
//!
//! On PostgreSQL an id comes from a sequence at INSERT, and transactions
//! commit in another order than their ids: a reader that moved past id 8
//! may see id 7 commit afterwards. A [`Cursor`] remembers, above its
//! floor, which ids it has handled and which are missing (gaps), looks
//! for the missing ones again at each poll, and moves its floor past a gap
//! only once the gap is filled or stayed a gap for the grace period (a
//! rolled-back insert, a row deleted before it was read). Each row is
//! handed out once; the floor is what is safe to store as a persistent
//! cursor (everything at or below it was handled or given up).
//!
//! On SQLite there is one writer and ids commit in order: the grace is
//! zero and a gap is given up at once, as before.

use std::collections::BTreeMap;

use crate::Result;
use crate::conn::{Conn, P, Row};

/// How long a gap may stay a gap before it counts as rolled back.
pub const GRACE_MS: i64 = 30_000;
/// Missing ids remembered at most; beyond, the oldest are given up.
const MAX_MISSING: usize = 10_000;
/// Ranges of missing ids looked for again per poll, at most.
const MAX_RANGES: usize = 16;

/// The grace for a backend: none where ids commit in order.
pub fn grace_for(conn: &dyn Conn) -> i64 {
    if conn.backend_name() == "postgres" {
        GRACE_MS
    } else {
        0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Every id at or below was handled or given up.
    floor: i64,
    /// The highest id handled.
    high: i64,
    /// Ids in (floor, high] not seen yet → when first missed.
    missing: BTreeMap<i64, i64>,
    grace_ms: i64,
}

impl Default for Cursor {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl Cursor {
    pub fn new(at: i64, grace_ms: i64) -> Self {
        Self {
            floor: at,
            high: at,
            missing: BTreeMap::new(),
            grace_ms,
        }
    }

    /// What is safe to store: every id at or below was handled or given up.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// The highest id handled: new rows are those above.
    pub fn high(&self) -> i64 {
        self.high
    }

    /// Ids still looked for.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Another reader (another node) moved the stored cursor to `at`:
    /// everything at or below it is taken care of.
    pub fn skip_to(&mut self, at: i64) {
        if at <= self.floor {
            return;
        }
        self.missing = self.missing.split_off(&(at + 1));
        self.high = self.high.max(at);
        self.floor = at;
        self.settle_floor();
    }

    /// The row `id` was read at `now_ms`: whether to handle it (false when
    /// it was handled already or given up).
    pub fn take(&mut self, id: i64, now_ms: i64) -> bool {
        if id <= self.floor {
            return false;
        }
        if id <= self.high {
            let found = self.missing.remove(&id).is_some();
            self.settle_floor();
            return found;
        }
        // Ids skipped between the last one handled and this one may still
        // commit; remember at most MAX_MISSING of them.
        let from = (self.high + 1).max(id - MAX_MISSING as i64);
        for g in from..id {
            self.missing.insert(g, now_ms);
        }
        self.high = id;
        while self.missing.len() > MAX_MISSING {
            self.missing.pop_first();
        }
        self.settle_floor();
        true
    }

    /// Give up the gaps older than the grace period.
    pub fn settle(&mut self, now_ms: i64) {
        let grace = self.grace_ms;
        self.missing.retain(|_, at| now_ms - *at < grace);
        self.settle_floor();
    }

    fn settle_floor(&mut self) {
        self.floor = match self.missing.first_key_value() {
            Some((&id, _)) => id - 1,
            None => self.high,
        };
    }

    /// Inclusive ranges covering the missing ids, at most MAX_RANGES (the
    /// closest runs are joined; ids handled inside are filtered by `take`).
    pub fn missing_ranges(&self) -> Vec<(i64, i64)> {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &id in self.missing.keys() {
            match runs.last_mut() {
                Some(r) if r.1 + 1 == id => r.1 = id,
                _ => runs.push((id, id)),
            }
        }
        while runs.len() > MAX_RANGES {
            // Join the two neighbours with the smallest distance between.
            let i = (0..runs.len() - 1)
                .min_by_key(|&i| runs[i + 1].0 - runs[i].1)
                .unwrap_or(0);
            runs[i].1 = runs[i + 1].1;
            runs.remove(i + 1);
        }
        runs
    }

    /// Settle, then read the rows not handled yet: those filling gaps, then
    /// up to `page` new ones. `select` is `SELECT id, … FROM table` (the id
    /// first). Returns the rows to handle, in id order, and whether the page
    /// of new rows was full.
    pub fn poll(
        &mut self,
        conn: &mut dyn Conn,
        select: &str,
        page: i64,
        now_ms: i64,
    ) -> Result<(Vec<Row>, bool)> {
        self.settle(now_ms);
        let mut rows = Vec::new();
        for (lo, hi) in self.missing_ranges() {
            rows.extend(conn.query(
                &format!("{select} WHERE id >= $1 AND id <= $2 ORDER BY id"),
                &[P::Int(lo), P::Int(hi)],
            )?);
        }
        let fresh = conn.query(
            &format!("{select} WHERE id > $1 ORDER BY id LIMIT $2"),
            &[P::Int(self.high), P::Int(page)],
        )?;
        let full = fresh.len() as i64 == page;
        rows.extend(fresh);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if self.take(r.int(0)?, now_ms) {
                out.push(r);
            }
        }
        Ok((out, full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_moves_the_floor() {
        let mut c = Cursor::new(0, GRACE_MS);
        assert!(c.take(1, 0));
        assert!(c.take(2, 0));
        assert_eq!((c.floor(), c.high(), c.missing()), (2, 2, 0));
    }

    #[test]
    fn a_gap_filled_late_is_delivered_once() {
        let mut c = Cursor::new(0, GRACE_MS);
        assert!(c.take(1, 0));
        assert!(c.take(3, 0));
        // 2 is in flight: the floor waits below it.
        assert_eq!(c.floor(), 1);
        assert_eq!(c.missing_ranges(), vec![(2, 2)]);
        c.settle(1_000);
        assert_eq!(c.floor(), 1);
        // 2 commits and is read again with its neighbours: handled once.
        assert!(c.take(2, 1_000));
        assert!(!c.take(2, 1_000));
        assert!(!c.take(3, 1_000));
        assert!(!c.take(1, 1_000));
        assert_eq!((c.floor(), c.missing()), (3, 0));
    }

    #[test]
    fn a_gap_never_filled_is_given_up_after_the_grace() {
        let mut c = Cursor::new(10, GRACE_MS);
        assert!(c.take(12, 5_000));
        assert!(c.take(13, 6_000));
        c.settle(5_000 + GRACE_MS - 1);
        assert_eq!(c.floor(), 10);
        c.settle(5_000 + GRACE_MS);
        assert_eq!((c.floor(), c.missing()), (13, 0));
        // Committed after all (very late): no longer expected.
        assert!(!c.take(11, 5_000 + GRACE_MS));
    }

    #[test]
    fn without_grace_gaps_are_given_up_at_once() {
        let mut c = Cursor::new(0, 0);
        assert!(c.take(5, 0));
        c.settle(0);
        assert_eq!(c.floor(), 5);
    }

    #[test]
    fn skip_to_drops_what_another_node_took_care_of() {
        let mut c = Cursor::new(0, GRACE_MS);
        assert!(c.take(2, 0));
        assert!(c.take(6, 0));
        c.skip_to(4);
        assert_eq!((c.floor(), c.high()), (4, 6));
        assert_eq!(c.missing_ranges(), vec![(5, 5)]);
        assert!(!c.take(3, 0));
        assert!(c.take(5, 0));
        assert_eq!(c.floor(), 6);
    }

    #[test]
    fn memory_and_ranges_are_bounded() {
        let mut c = Cursor::new(0, GRACE_MS);
        assert!(c.take(1_000_000, 0));
        assert_eq!(c.missing(), MAX_MISSING);
        assert_eq!(c.floor(), 1_000_000 - MAX_MISSING as i64 - 1);
        let mut c = Cursor::new(0, GRACE_MS);
        for id in (2..200).step_by(2) {
            assert!(c.take(id, 0));
        }
        let ranges = c.missing_ranges();
        assert!(ranges.len() <= MAX_RANGES);
        assert_eq!(ranges.first().map(|r| r.0), Some(1));
        assert_eq!(ranges.last().map(|r| r.1), Some(197));
    }
}
