//! The one interface both backends implement. It speaks only in ids, blind
//! indexes and sealed bytes: no method ever receives a personal value in
//! plaintext, which is what keeps plaintext out of every database file.

use crate::Result;
use crate::vault::{BlindIndex, Sealed};

pub use tarmo_core::ids::{KeyId, ProcessorId, ProfileId, RequestId};

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub profile_id: ProfileId,
    /// The profile whose data key sealed the body (kept through merges).
    pub key_owner: ProfileId,
    /// Where it came from.
    pub source_id: Source,
    pub kind: &'static str,
    pub timestamp_ms: i64,
    pub received_ms: i64,
    pub sealed: Sealed,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub key_owner: ProfileId,
    pub kind: String,
    pub timestamp_ms: i64,
    pub received_ms: i64,
    pub sealed: Sealed,
}

#[derive(Debug, Clone)]
pub struct IdentifierRow {
    pub kind: String,
    pub bidx: BlindIndex,
    pub key_owner: ProfileId,
    pub sealed: Sealed,
    pub first_seen_ms: i64,
    /// When the identifier was shown to be the person's (a trusted source,
    /// a confirmation link used, staff); `None`: a claim.
    pub verified_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ProfileRow {
    pub id: ProfileId,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub event_count: i64,
    pub traits: Option<Sealed>,
}

/// A recorded identity decision: a merge that happened, or one refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRow {
    pub into_profile: ProfileId,
    pub from_profile: ProfileId,
    /// The kind of identifier the two profiles shared.
    pub identifier_kind: String,
    pub at_ms: i64,
    pub refused: bool,
    /// Why a merge was refused, in words that carry no personal data.
    pub reason: Option<String>,
}

/// A parameter of a backend-neutral statement.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for P<'_> {
    fn from(v: i64) -> Self {
        P::Int(v)
    }
}

// Ids bind as the integers they are; the core's id types know no database.
macro_rules! id_param {
    ($($t:ty),*) => {$(
        impl From<$t> for P<'_> {
            fn from(v: $t) -> Self {
                P::Int(v.0)
            }
        }
    )*};
}
id_param!(ProfileId, KeyId, RequestId, ProcessorId);

/// Where an event came from: a write key, or an import. One column holds
/// both: a key's id, or minus the import's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Key(KeyId),
    Import(i64),
}

impl Source {
    /// The value of the `source_id` column.
    pub fn column(self) -> i64 {
        match self {
            Self::Key(k) => k.0,
            Self::Import(id) => -id,
        }
    }

    /// The source a `source_id` column names.
    pub fn of_column(v: i64) -> Self {
        if v < 0 {
            Self::Import(-v)
        } else {
            Self::Key(KeyId(v))
        }
    }
}

impl From<Source> for P<'_> {
    fn from(s: Source) -> Self {
        P::Int(s.column())
    }
}

impl From<bool> for P<'_> {
    fn from(v: bool) -> Self {
        P::Int(v as i64)
    }
}

impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::Text(v)
    }
}

impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::Text(v)
    }
}

impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for P<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        P::Blob(v)
    }
}

impl<'a> From<&'a Sealed> for P<'a> {
    fn from(v: &'a Sealed) -> Self {
        P::Blob(v.as_bytes())
    }
}

impl<'a, T: Into<P<'a>>> From<Option<T>> for P<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(P::Null, Into::into)
    }
}

/// A value read back from a backend-neutral query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row of a backend-neutral query, read by column index.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell> {
        self.0
            .get(i)
            .ok_or_else(|| crate::Error::Corrupt(format!("row has no column {i}")))
    }

    fn wrong(i: usize, want: &str) -> crate::Error {
        crate::Error::Corrupt(format!("column {i} is not {want}"))
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| Self::wrong(i, "an integer"))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            _ => Err(Self::wrong(i, "an integer")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| Self::wrong(i, "text"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            _ => Err(Self::wrong(i, "text")),
        }
    }

    pub fn blob(&self, i: usize) -> Result<Vec<u8>> {
        self.opt_blob(i)?.ok_or_else(|| Self::wrong(i, "bytes"))
    }

    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Blob(v) => Ok(Some(v.clone())),
            _ => Err(Self::wrong(i, "bytes")),
        }
    }

    /// A sealed column: carried as it is, opened only by the vault.
    pub fn sealed(&self, i: usize) -> Result<Sealed> {
        self.blob(i).map(Sealed::from_db)
    }

    pub fn opt_sealed(&self, i: usize) -> Result<Option<Sealed>> {
        Ok(self.opt_blob(i)?.map(Sealed::from_db))
    }
}

/// Locks that serialise writers across nodes (PostgreSQL) for the length of
/// a transaction. On SQLite the write transaction itself is exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxLock {
    /// The consent ledger's hash chain: one appender at a time.
    ConsentLedger,
    /// The access log's hash chain.
    AccessLog,
}

/// Makes the commits already written by a connection durable; see
/// [`Conn::defer_sync`].
pub trait Flusher: Send {
    fn flush(&mut self) -> Result<()>;
}

/// One connection to a store. Transactions are explicit so that group commit
/// can put many requests into one.
///
/// Besides the typed methods, `exec` and `query` run backend-neutral SQL:
/// placeholders are written `$1, $2, ...`, integers are 64-bit, booleans are
/// integers 0/1, and only syntax both SQLite and PostgreSQL accept is used
/// (`ON CONFLICT`, `RETURNING`, `COALESCE`, `CAST(x AS BIGINT)`).
pub trait Conn: Send {
    fn backend_name(&self) -> &'static str;
    /// The connection is lost (the server went away): it must not be used
    /// again, and the pool or the writer opens a new one.
    fn is_broken(&self) -> bool {
        false
    }
    /// One round trip, to find out whether a connection that sat idle still
    /// works (a no-op where there is no server).
    fn ping(&mut self) -> Result<()> {
        Ok(())
    }
    /// What ends a `SELECT` of queued rows to claim, so that two nodes
    /// skip each other's rows instead of waiting on them: `FOR UPDATE OF
    /// table SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose one writer
    /// never meets another.
    fn skip_locked(&self, _table: &str) -> String {
        String::new()
    }
    fn begin(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self) -> Result<()>;

    /// Run a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64>;
    /// Run a query; every row.
    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>>;
    /// Take a transaction-scoped lock (no-op where the transaction already is one).
    fn lock(&mut self, lock: TxLock) -> Result<()>;
    /// After an erasure: make every commit so far durable, destroy the
    /// keys it doomed and leave no copy of them in a log (SQLite: the
    /// keyring's log is folded and truncated now, the data's at the next
    /// lull); a no-op on PostgreSQL, whose commits are durable and whose
    /// keys went in the transaction. Once it returns `Ok`, the writer may
    /// answer without waiting for its flush.
    fn checkpoint(&mut self) -> Result<()>;
    /// Housekeeping the writer does between two groups when no
    /// transaction job waits: on SQLite, copying into the database what a
    /// background checkpoint left of a long log, so that the log starts
    /// again from its beginning.
    fn between_groups(&mut self) -> Result<()> {
        Ok(())
    }
    /// A number that changes when another connection commits (SQLite's
    /// `data_version`); constant where caches are not kept (PostgreSQL).
    fn data_version(&mut self) -> Result<i64>;
    /// Pipelined commit: from now on this connection's commits are written
    /// but not flushed to stable storage, and the returned flusher makes
    /// every commit so far durable (from any thread). `None` where a commit
    /// is durable by itself (the default; PostgreSQL).
    fn defer_sync(&mut self) -> Result<Option<Box<dyn Flusher>>> {
        Ok(None)
    }
    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[P<'_>]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn meta_get(&mut self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The table of the keyring's own records (the installation keys,
    /// wrapped by the master key): `meta` on SQLite (one file; `tarmo
    /// backup` splits it out), `keyring.meta` on PostgreSQL, beside the
    /// data keys (migration 20).
    fn keyring_meta(&self) -> &'static str {
        "meta"
    }
    fn meta_set(&mut self, key: &str, value: &[u8]) -> Result<()>;

    /// Claim each hash; `true` where it was not seen before.
    fn dedup_claim(&mut self, hashes: &[i64], now_ms: i64) -> Result<Vec<bool>>;
    fn dedup_purge(&mut self, older_than_ms: i64) -> Result<u64>;

    fn profile_create(&mut self, now_ms: i64) -> Result<ProfileId>;
    fn data_key_insert(
        &mut self,
        owner: ProfileId,
        profile: ProfileId,
        wrapped: &[u8],
    ) -> Result<()>;
    fn data_key_get(&mut self, owner: ProfileId) -> Result<Option<Vec<u8>>>;
    /// The profile, following a merge to the profile it was merged into.
    fn profile_get(&mut self, id: ProfileId) -> Result<Option<ProfileRow>>;
    fn profile_set_traits(&mut self, id: ProfileId, sealed: &Sealed, now_ms: i64) -> Result<()>;
    /// Move everything of `from` to `into` and record the merge.
    fn profile_merge(
        &mut self,
        from: ProfileId,
        into: ProfileId,
        cause_kind: &str,
        now_ms: i64,
    ) -> Result<()>;
    fn merge_record(&mut self, m: &MergeRow) -> Result<()>;
    fn merges_of(&mut self, profile: ProfileId) -> Result<Vec<MergeRow>>;

    fn identifiers_lookup(&mut self, keys: &[BlindIndex]) -> Result<Vec<Option<ProfileId>>>;
    fn identifier_insert(&mut self, row: &IdentifierRow, profile: ProfileId) -> Result<()>;
    fn identifiers_of(&mut self, profile: ProfileId) -> Result<Vec<IdentifierRow>>;

    fn events_insert(&mut self, rows: &[NewEvent]) -> Result<()>;
    /// As [`Conn::events_insert`], giving each row's id (an import keeps
    /// the id of the event an order became, to replace it when the order
    /// changes). One statement per row: imports are not the hot path.
    fn events_insert_returning_ids(&mut self, rows: &[NewEvent]) -> Result<Vec<i64>> {
        rows.iter()
            .map(|e| {
                let r = self.query_opt(
                    "INSERT INTO events (profile_id, key_owner, kind, ts_ms, received_ms, body, source_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        P::Int(e.profile_id.0),
                        P::Int(e.key_owner.0),
                        P::Text(e.kind),
                        P::Int(e.timestamp_ms),
                        P::Int(e.received_ms),
                        P::Blob(e.sealed.as_bytes()),
                        P::from(e.source_id),
                    ],
                )?;
                r.ok_or_else(|| crate::Error::Backend("INSERT ... RETURNING gave no row".into()))?
                    .int(0)
            })
            .collect()
    }

    // ----------------------------------------------------------- batches
    //
    // Where every statement is a network round trip (PostgreSQL), a group
    // reads what it needs up front and writes its new profiles, keys and
    // identifiers with one statement each. The defaults loop over the
    // single-row methods: in-process (SQLite) a call costs next to nothing,
    // and the group never buffers there (`batch_writes` is false).

    /// Whether a group should read ahead and buffer its writes.
    fn batch_writes(&self) -> bool {
        false
    }
    /// A bulk load (an import) is running on this connection, or is over:
    /// where the process holds the page cache (SQLite), it grows for the
    /// load's random index writes and shrinks back after.
    fn bulk_load(&mut self, on: bool) -> Result<()> {
        let _ = on;
        Ok(())
    }
    /// Reserve ids for `n` profiles to be created later with
    /// [`Conn::profiles_insert`], without creating them. Ids reserved but not
    /// used are never handed out again. Only where `batch_writes`.
    fn profile_ids_reserve(&mut self, n: usize) -> Result<Vec<ProfileId>> {
        let _ = n;
        Err(crate::Error::Backend(format!(
            "{} does not reserve profile ids",
            self.backend_name()
        )))
    }
    /// Create profiles with ids from [`Conn::profile_ids_reserve`].
    fn profiles_insert(&mut self, ids: &[ProfileId], now_ms: i64) -> Result<()> {
        let _ = (ids, now_ms);
        Err(crate::Error::Backend(format!(
            "{} does not create profiles by id",
            self.backend_name()
        )))
    }
    /// `(owner, profile, wrapped)` rows, as [`Conn::data_key_insert`].
    fn data_keys_insert(&mut self, rows: &[(ProfileId, ProfileId, Vec<u8>)]) -> Result<()> {
        for (owner, profile, wrapped) in rows {
            self.data_key_insert(*owner, *profile, wrapped)?;
        }
        Ok(())
    }
    /// As [`Conn::identifier_insert`], for each `(row, profile)`.
    fn identifiers_insert(&mut self, rows: &[(IdentifierRow, ProfileId)]) -> Result<()> {
        for (row, profile) in rows {
            self.identifier_insert(row, *profile)?;
        }
        Ok(())
    }
    /// As [`Conn::data_key_get`], for each owner.
    fn data_keys_get(&mut self, owners: &[ProfileId]) -> Result<Vec<Option<Vec<u8>>>> {
        owners.iter().map(|&o| self.data_key_get(o)).collect()
    }
    /// Which of `profiles` (a person's profile and those merged into it)
    /// own a data key, and any other key they hold.
    fn data_key_owners(&mut self, profiles: &[ProfileId]) -> Result<Vec<ProfileId>> {
        let mut owners = Vec::new();
        for p in profiles {
            for r in self.query(
                "SELECT owner_id FROM data_keys WHERE profile_id = $1 OR owner_id = $1",
                &[P::Int(p.0)],
            )? {
                let o = ProfileId(r.int(0)?);
                if !owners.contains(&o) {
                    owners.push(o);
                }
            }
        }
        Ok(owners)
    }
    /// Destroy these owners' data keys, for an erasure in this
    /// transaction; how many there were. On SQLite the keys go once the
    /// erasure is durable, at [`Conn::checkpoint`].
    fn data_keys_destroy(&mut self, owners: &[ProfileId]) -> Result<u64> {
        let mut n = 0;
        for o in owners {
            n += self.exec("DELETE FROM data_keys WHERE owner_id = $1", &[P::Int(o.0)])?;
        }
        Ok(n)
    }
    /// Up to `limit` `(owner, wrapped)` keys with owners after `after`, in
    /// order (a restore copies them from the live store page by page).
    fn data_keys_after(&mut self, after: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        self.query(
            "SELECT owner_id, wrapped FROM data_keys WHERE owner_id > $1 ORDER BY owner_id LIMIT $2",
            &[P::Int(after), P::Int(limit)],
        )?
        .iter()
        .map(|r| Ok((r.int(0)?, r.blob(1)?)))
        .collect()
    }
    /// As [`Conn::profile_get`] (following merges), for each id.
    fn profiles_get(&mut self, ids: &[ProfileId]) -> Result<Vec<Option<ProfileRow>>> {
        ids.iter().map(|&p| self.profile_get(p)).collect()
    }
    /// As [`Conn::identifiers_of`], for each profile: `(profile, row)` pairs.
    fn identifiers_of_many(
        &mut self,
        profiles: &[ProfileId],
    ) -> Result<Vec<(ProfileId, IdentifierRow)>> {
        let mut out = Vec::new();
        for &p in profiles {
            out.extend(self.identifiers_of(p)?.into_iter().map(|r| (p, r)));
        }
        Ok(out)
    }
    /// As [`Conn::profile_set_traits`], for each `(profile, sealed traits)`.
    fn profiles_set_traits(&mut self, rows: &[(ProfileId, Sealed)], now_ms: i64) -> Result<()> {
        for (p, sealed) in rows {
            self.profile_set_traits(*p, sealed, now_ms)?;
        }
        Ok(())
    }
    /// Count `n` newly stored events on each `(profile, n)`, the last at
    /// `now_ms` (what a profile shows as its events and last activity).
    /// The embedded store counts its newest events from the events table
    /// when read and folds them in by itself, so there this only tells the
    /// writer how many it has.
    fn profiles_add_events(&mut self, rows: &[(ProfileId, i64)], now_ms: i64) -> Result<()>;
    /// Events deleted one by one (retention, an import's changed order), as
    /// `(profile, event id)`: take them off their profiles' counts.
    /// Only those the counters hold count (see [`Conn::counted_through`]).
    fn events_removed(&mut self, removed: &[(ProfileId, i64)]) -> Result<()> {
        if removed.is_empty() {
            return Ok(());
        }
        let through = self.counted_through()?;
        let mut per: std::collections::BTreeMap<ProfileId, i64> = Default::default();
        for &(p, id) in removed {
            if id <= through {
                *per.entry(p).or_default() += 1;
            }
        }
        for (p, n) in per {
            self.exec(
                "UPDATE profile_counts SET events = events - $2 WHERE profile_id = $1",
                &[P::Int(p.0), P::Int(n)],
            )?;
        }
        Ok(())
    }
    /// The newest event id the counters (`profile_counts`) hold: every
    /// event on a store that counts with each group; the embedded store
    /// counts its newer events when read and folds them in later.
    fn counted_through(&mut self) -> Result<i64> {
        Ok(i64::MAX)
    }
    /// Which of these blind indexes are on the suppression list.
    fn suppressed_many(&mut self, keys: &[BlindIndex]) -> Result<Vec<bool>> {
        keys.iter()
            .map(|k| {
                let q = "SELECT 1 FROM suppression WHERE bidx = $1";
                Ok(self.query_opt(q, &[P::Blob(&k.0)])?.is_some())
            })
            .collect()
    }
    /// Newest first; `before` is an event id cursor.
    fn events_page(
        &mut self,
        profile: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<EventRow>>;

    fn counts(&mut self) -> Result<StoreCounts>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub profiles: i64,
    pub events: i64,
    pub identifiers: i64,
}

/// Rows a statement of [`exec_rows`] holds at most, then the smaller
/// sizes it falls back to: six texts a statement for the statement
/// cache, and at most six statements for a batch under 64 rows (the
/// consent recordings that wait together are a few to a few dozen).
const ROW_CHUNKS: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// Run `head VALUES (...), (...) tail` for `rows` (each the same width),
/// up to 32 rows a statement: on PostgreSQL one round trip for what was
/// one a row. `tail` may hold an `ON CONFLICT` clause; rows of one call
/// must not conflict with each other.
pub fn exec_rows(conn: &mut dyn Conn, head: &str, tail: &str, rows: &[Vec<P<'_>>]) -> Result<()> {
    use std::fmt::Write as _;
    let mut at = 0;
    while at < rows.len() {
        let left = rows.len() - at;
        let n = ROW_CHUNKS
            .into_iter()
            .find(|&n| n <= left)
            .expect("chunks end with one row");
        let width = rows[at].len();
        let mut sql = String::with_capacity(head.len() + tail.len() + n * width * 5 + 16);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut params = Vec::with_capacity(n * width);
        for (i, row) in rows[at..at + n].iter().enumerate() {
            if row.len() != width {
                return Err(crate::Error::Backend(
                    "rows of one statement differ in width".into(),
                ));
            }
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for j in 0..width {
                if j > 0 {
                    sql.push_str(", ");
                }
                let _ = write!(sql, "${}", i * width + j + 1);
            }
            sql.push(')');
            params.extend_from_slice(row);
        }
        sql.push_str(tail);
        conn.exec(&sql, &params)?;
        at += n;
    }
    Ok(())
}
