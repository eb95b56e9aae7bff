//! Deduplication on the embedded store without a write at a random place
//! per event (issue 17).
//!
//! Every stored message claims its messageId's keyed 64-bit digest. In a
//! table keyed by the digest (`dedup`), each claim inserts at a random
//! place: a group of 765 events dirtied ~765 pages of it, 3 MB of log for
//! 70 KB of digests, and at 1M customers / 3M events the writer committed a
//! group in 38 ms with it and in 29 ms with the claims appended instead
//! (BENCHMARKS.md). So the writer's connection keeps two levels, as a
//! log-structured store does:
//!
//! - **Recent digests** are appended, in arrival order, to one of two
//!   tables (`dedup_recent_a`, `dedup_recent_b`), and held in memory in a
//!   set: a claim asks the set, then `dedup`, and appends when neither
//!   knows it. The digests are keyed (the installation's secret), so the set
//!   hashes them as they are.
//! - **Folding.** Once the table being filled holds [`CHUNK`] digests and
//!   the other one is empty, they swap: the full one's digests, sorted, go
//!   into `dedup` a slice at a time, a slice at each commit (as many as the
//!   commit appended, plus [`FOLD_FLOOR`]), so each commit inserts a short
//!   run of neighbouring digests, a few pages, not one page each. When the
//!   last slice is in, the table is emptied in the same commit: without
//!   `secure_delete` for that one statement, so that its pages go to the
//!   free list instead of being rewritten with zeros (digests of messageIds
//!   are not personal data; everything else keeps `secure_delete`).
//!
//! Nothing here is held only in memory: both tables are written in the
//! same transaction as the events they deduplicate, and the set is rebuilt
//! from them at start (a fold cut short starts again from its beginning:
//! `INSERT OR IGNORE` makes that harmless). What the set learns, it learns
//! after the commit, from the rows the commit holds: a job rolled back to
//! its savepoint, or a transaction rolled back, leaves nothing behind.
//!
//! PostgreSQL keeps the single table (`INSERT ... ON CONFLICT`).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

/// Digests a recent table takes before it is folded into `dedup`: at most
/// about three times this many are in memory (the table being filled, the
/// one being folded), 16 bytes each in the set and as many in the rows.
/// 2^18: at 1M customers the server stays under 500 MB (2^19 held ~15 MB
/// more, BENCHMARKS.md).
pub(crate) const CHUNK: usize = 1 << 18;

/// Digests folded at every commit beyond as many as it appended, so that
/// a fold also goes on in commits that append none (consent writes,
/// imports). Without any commit it waits; the set holds its digests
/// meanwhile.
pub(crate) const FOLD_FLOOR: usize = 512;

const TABLES: [&str; 2] = ["dedup_recent_a", "dedup_recent_b"];

/// The digests are keyed and uniformly spread: they are their own hash.
#[derive(Default)]
pub(crate) struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_i64(&mut self, i: i64) {
        self.0 = i as u64;
    }
}

type Digests = HashSet<i64, BuildHasherDefault<AsIs>>;

struct Folding {
    /// The table being folded (an index into [`TABLES`]).
    table: usize,
    /// Its rows, `(digest, seen_ms)`, sorted by digest.
    rows: Vec<(i64, i64)>,
    /// Rows before this are in `dedup`.
    next: usize,
}

/// What a commit did, applied to memory once it is durable in the file.
#[derive(Default)]
pub(crate) struct Step {
    appended: Vec<(i64, i64, i64)>,
    folded_to: Option<usize>,
    emptied: bool,
}

pub(crate) struct Recent {
    chunk: usize,
    floor: usize,
    /// Every digest in either recent table.
    set: Digests,
    /// The table new digests go to, and its rows `(digest, seen_ms)` in
    /// arrival order.
    filling: usize,
    filling_rows: Vec<(i64, i64)>,
    folding: Option<Folding>,
    /// The largest `seq` committed in either table.
    last_seq: i64,
    /// The next `seq` to give, in the open transaction.
    next_seq: i64,
}

impl Recent {
    /// Read both recent tables: the one with the older rows, when both
    /// hold some, was being folded.
    pub(crate) fn load(c: &Connection, chunk: usize, floor: usize) -> Result<Self> {
        let mut rows: [Vec<(i64, i64, i64)>; 2] = [Vec::new(), Vec::new()];
        for (i, t) in TABLES.iter().enumerate() {
            let mut st = c.prepare(&format!("SELECT seq, h, seen_ms FROM {t} ORDER BY seq"))?;
            rows[i] = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        let last = |v: &Vec<(i64, i64, i64)>| v.last().map(|r| r.0);
        let last_seq = last(&rows[0]).max(last(&rows[1])).unwrap_or(0);
        let mut set = Digests::default();
        set.reserve(rows[0].len() + rows[1].len());
        for r in rows.iter().flatten() {
            set.insert(r.1);
        }
        let pairs = |v: Vec<(i64, i64, i64)>| v.into_iter().map(|r| (r.1, r.2)).collect::<Vec<_>>();
        let [a, b] = rows;
        let (filling, folding) = match (a.is_empty(), b.is_empty()) {
            (_, true) => (0, None),
            (true, false) => (1, None),
            (false, false) => {
                // The older table was being folded.
                let older = if a[0].0 < b[0].0 { 0 } else { 1 };
                (1 - older, Some(older))
            }
        };
        let (mut fill_rows, mut fold_rows) = if filling == 0 {
            (pairs(a), pairs(b))
        } else {
            (pairs(b), pairs(a))
        };
        let folding = folding.map(|table| {
            fold_rows.sort_unstable();
            Folding {
                table,
                rows: std::mem::take(&mut fold_rows),
                next: 0,
            }
        });
        fill_rows.shrink_to_fit();
        let mut r = Self {
            chunk: chunk.max(1),
            floor: floor.max(1),
            set,
            filling,
            filling_rows: fill_rows,
            folding,
            last_seq,
            next_seq: last_seq + 1,
        };
        r.maybe_swap();
        Ok(r)
    }

    /// Digests held in memory (both recent tables), and whether a fold is
    /// under way.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (usize, bool) {
        (self.set.len(), self.folding.is_some())
    }

    /// Claim each digest inside the open transaction: `true` where neither
    /// the recent tables nor `dedup` knew it (it is then appended).
    pub(crate) fn claim(
        &mut self,
        c: &Connection,
        hashes: &[i64],
        now_ms: i64,
    ) -> Result<Vec<bool>> {
        let mut old = c.prepare_cached("SELECT 1 FROM dedup WHERE h = ?1")?;
        let mut add = c.prepare_cached(&format!(
            "INSERT INTO {} (seq, h, seen_ms) VALUES (?1, ?2, ?3)",
            TABLES[self.filling]
        ))?;
        let mut out = Vec::with_capacity(hashes.len());
        for &h in hashes {
            if self.set.contains(&h) || old.query_row([h], |_| Ok(())).optional()?.is_some() {
                out.push(false);
                continue;
            }
            add.execute(params![self.next_seq, h, now_ms])?;
            self.next_seq += 1;
            out.push(true);
        }
        Ok(out)
    }

    /// Inside the transaction, just before it commits: read back what it
    /// appended (whatever savepoints rolled back is not there), and fold
    /// the next slice of the table being folded into `dedup`.
    pub(crate) fn before_commit(&mut self, c: &Connection) -> Result<Step> {
        let mut step = Step::default();
        if self.next_seq > self.last_seq + 1 {
            let mut st = c.prepare_cached(&format!(
                "SELECT seq, h, seen_ms FROM {} WHERE seq > ?1 ORDER BY seq",
                TABLES[self.filling]
            ))?;
            step.appended = st
                .query_map([self.last_seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        if let Some(f) = &self.folding {
            let end = (f.next + step.appended.len() + self.floor).min(f.rows.len());
            let mut ins =
                c.prepare_cached("INSERT OR IGNORE INTO dedup (h, seen_ms) VALUES (?1, ?2)")?;
            for &(h, seen) in &f.rows[f.next..end] {
                ins.execute(params![h, seen])?;
            }
            step.folded_to = Some(end);
            if end == f.rows.len() {
                // Digests, not personal data: their pages go to the free
                // list as they are, instead of being rewritten with zeros
                // (the statement that empties a whole table frees its
                // pages without reading them).
                c.pragma_update(None, "secure_delete", "OFF")?;
                let r = c.execute(&format!("DELETE FROM {}", TABLES[f.table]), []);
                c.pragma_update(None, "secure_delete", "ON")?;
                r?;
                step.emptied = true;
            }
        }
        Ok(step)
    }

    /// The transaction committed: learn what it holds.
    pub(crate) fn after_commit(&mut self, step: Step) {
        for &(seq, h, seen) in &step.appended {
            self.set.insert(h);
            self.filling_rows.push((h, seen));
            self.last_seq = self.last_seq.max(seq);
        }
        if let (Some(f), Some(to)) = (&mut self.folding, step.folded_to) {
            f.next = to;
        }
        if step.emptied
            && let Some(f) = self.folding.take()
        {
            for (h, _) in &f.rows {
                self.set.remove(h);
            }
        }
        self.next_seq = self.last_seq + 1;
        self.maybe_swap();
    }

    /// The transaction rolled back: it left nothing.
    pub(crate) fn abandon(&mut self) {
        self.next_seq = self.last_seq + 1;
    }

    /// The table being filled is full and the other one empty: fold the
    /// full one from now on, and fill the other.
    fn maybe_swap(&mut self) {
        if self.folding.is_some() || self.filling_rows.len() < self.chunk {
            return;
        }
        let mut rows = std::mem::take(&mut self.filling_rows);
        rows.sort_unstable();
        self.folding = Some(Folding {
            table: self.filling,
            rows,
            next: 0,
        });
        self.filling = 1 - self.filling;
    }
}
