//! The access log: who read or exported whose data, with which key, for
//! which purpose, through which route, and when. Hash-chained like the
//! consent ledger, with a signed head, so that an edited, removed or
//! truncated record is found by `tarmo audit verify`. It holds profile ids
//! and counts, never a value.
//!
//! Reads of one person's data (a profile, events, consents, a bundle, an
//! export) are logged durably before the data is returned. Policy decisions,
//! which services ask at thousands a second, are logged as counts per key,
//! route and purpose, flushed every few seconds: the issue's "which profile
//! ids or how many".

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::conn::{Conn, KeyId, P, ProfileId, TxLock};
use crate::crypto::chain::{Chain, Link, VerifyReport};
use crate::vault::Vault;
use crate::writer::WriterHandle;
use crate::{Error, Result, rfc3339};

#[doc(hidden)]
pub mod journal;

pub use journal::{DEFAULT_BYTES as JOURNAL_BYTES, FILE as JOURNAL_FILE};

/// One access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    pub at_ms: i64,
    pub key_id: KeyId,
    pub user_id: Option<i64>,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    /// The route template (`/api/v1/profiles/{id}`), never the raw path.
    pub route: String,
    /// `read`, `export`, `decisions` (a count), or `users` (a change to a
    /// staff account made in the console: no profiles, a count of one).
    pub action: &'static str,
    /// The people whose data was read; empty for a count.
    pub profiles: Vec<ProfileId>,
    /// How many people (or decisions, for a count).
    pub count: i64,
}

/// The access log's chain: its bytes hashed are [`AccessLink`]'s.
const CHAIN: Chain = Chain {
    table: "access_log",
    lock: TxLock::AccessLog,
    head_key: "access_log_head",
    head_mac: "access log head",
    bad_hash: "an access log hash is not 32 bytes",
    record: "record",
    records: "records",
    whole: "log",
};

/// What one record commits to: its number, the record, its roles and
/// purposes as stored (JSON), and its people, sorted.
struct AccessLink<'a> {
    seq: i64,
    record: &'a AccessRecord,
    roles: &'a str,
    purposes: &'a str,
    profiles: &'a [ProfileId],
}

impl Link for AccessLink<'_> {
    fn link_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let r = self.record;
        let mut h = Sha256::new();
        h.update(b"tarmo access log v1\0");
        h.update(prev);
        for n in [
            self.seq,
            r.at_ms,
            r.key_id.0,
            r.user_id.unwrap_or(-1),
            r.count,
            self.profiles.len() as i64,
        ] {
            h.update(n.to_le_bytes());
        }
        for s in [self.roles, self.purposes, &r.route, r.action] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        for p in self.profiles {
            h.update(p.0.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// Append records, in order, in the caller's transaction.
pub fn append<'a>(
    conn: &mut dyn Conn,
    vault: &Vault,
    records: impl IntoIterator<Item = &'a AccessRecord>,
) -> Result<()> {
    let mut records = records.into_iter().peekable();
    if records.peek().is_none() {
        return Ok(());
    }
    let mut tip = CHAIN.tip(conn)?;
    for r in records {
        let mut profiles = r.profiles.clone();
        profiles.sort_unstable();
        profiles.dedup();
        let roles = serde_json::to_string(&r.roles).expect("serialises");
        let purposes = serde_json::to_string(&r.purposes).expect("serialises");
        let link = tip.link(|seq| AccessLink {
            seq,
            record: r,
            roles: &roles,
            purposes: &purposes,
            profiles: &profiles,
        });
        conn.exec(
            "INSERT INTO access_log (seq, at_ms, key_id, user_id, roles, purposes, route, action, subjects, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                P::Int(link.seq),
                P::Int(r.at_ms),
                P::from(r.key_id),
                P::from(r.user_id),
                P::Text(&roles),
                P::Text(&purposes),
                P::Text(&r.route),
                P::Text(r.action),
                P::Int(r.count),
                P::Blob(&link.prev_hash),
                P::Blob(&link.hash),
            ],
        )?;
        for p in &profiles {
            conn.exec(
                "INSERT INTO access_log_subjects (profile_id, seq) VALUES ($1, $2)",
                &[P::Int(p.0), P::Int(link.seq)],
            )?;
        }
    }
    CHAIN.sign_head(conn, vault, &tip)
}

/// Walk the whole log; report the first broken link.
pub fn verify(
    conn: &mut dyn Conn,
    vault: &Vault,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    let mut walk = CHAIN.walk();
    loop {
        let rows = conn.query(
            "SELECT seq, at_ms, key_id, user_id, roles, purposes, route, action, subjects, prev_hash, hash
             FROM access_log WHERE seq > $1 ORDER BY seq LIMIT 5000",
            &[P::Int(walk.last())],
        )?;
        if rows.is_empty() {
            break;
        }
        let (lo, hi) = (rows[0].int(0)?, rows[rows.len() - 1].int(0)?);
        let mut subjects: HashMap<i64, Vec<ProfileId>> = HashMap::new();
        for s in conn.query(
            "SELECT seq, profile_id FROM access_log_subjects WHERE seq >= $1 AND seq <= $2",
            &[P::Int(lo), P::Int(hi)],
        )? {
            subjects
                .entry(s.int(0)?)
                .or_default()
                .push(ProfileId(s.int(1)?));
        }
        for r in &rows {
            let seq = r.int(0)?;
            let action = r.text(7)?;
            let rec = AccessRecord {
                at_ms: r.int(1)?,
                key_id: KeyId(r.int(2)?),
                user_id: r.opt_int(3)?,
                roles: Vec::new(),
                purposes: Vec::new(),
                route: r.text(6)?,
                action: journal::action(&action),
                profiles: Vec::new(),
                count: r.int(8)?,
            };
            let mut profiles = subjects.remove(&seq).unwrap_or_default();
            profiles.sort_unstable();
            let (roles, purposes) = (r.text(4)?, r.text(5)?);
            let link = AccessLink {
                seq,
                record: &rec,
                roles: &roles,
                purposes: &purposes,
                profiles: &profiles,
            };
            let well_formed = rec.action != "unknown";
            if let Err(report) = walk.check(seq, &r.blob(9)?, &r.blob(10)?, &link, well_formed) {
                return Ok(report);
            }
        }
        progress(walk.checked());
    }
    walk.finish(conn, vault)
}

/// One record, as the DPO reads it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessView {
    pub seq: i64,
    pub at: String,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub key_id: KeyId,
    pub user_id: Option<i64>,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    pub route: String,
    pub action: String,
    /// How many people (or decisions) the access covered.
    pub count: i64,
}

fn view(r: &crate::conn::Row) -> Result<AccessView> {
    Ok(AccessView {
        seq: r.int(0)?,
        at: rfc3339(r.int(1)?),
        key_id: KeyId(r.int(2)?),
        user_id: r.opt_int(3)?,
        roles: serde_json::from_str(&r.text(4)?).unwrap_or_default(),
        purposes: serde_json::from_str(&r.text(5)?).unwrap_or_default(),
        route: r.text(6)?,
        action: r.text(7)?,
        count: r.int(8)?,
    })
}

/// Who looked at this person: the newest first.
pub fn for_profile(conn: &mut dyn Conn, profile: ProfileId, limit: i64) -> Result<Vec<AccessView>> {
    conn.query(
        "SELECT l.seq, l.at_ms, l.key_id, l.user_id, l.roles, l.purposes, l.route, l.action, l.subjects
         FROM access_log_subjects s JOIN access_log l ON l.seq = s.seq
         WHERE s.profile_id = $1 ORDER BY l.seq DESC LIMIT $2",
        &[P::Int(profile.0), P::Int(limit)],
    )?
    .iter()
    .map(view)
    .collect()
}

/// The newest records of any kind.
pub fn recent(conn: &mut dyn Conn, limit: i64) -> Result<Vec<AccessView>> {
    conn.query(
        "SELECT seq, at_ms, key_id, user_id, roles, purposes, route, action, subjects
         FROM access_log ORDER BY seq DESC LIMIT $1",
        &[P::Int(limit)],
    )?
    .iter()
    .map(view)
    .collect()
}

// -------------------------------------------------------------- the logger

type Done = Sender<Result<()>>;

/// Appends records, many to a transaction. `record` waits until the record
/// is durable: in the journal on the embedded store
/// ([`AccessLogger::spawn_journaled`]), otherwise in the table through the
/// writer. `count` adds to an in-memory tally flushed every few seconds and
/// at shutdown.
#[derive(Clone)]
pub struct AccessLogger {
    tx: SyncSender<(AccessRecord, Option<Done>)>,
    tally: Arc<Mutex<Tally>>,
    /// With a journal: how far it and the table are.
    progress: Option<Arc<Progress>>,
}

/// Decision counts by key id, then route; with the key's user, roles and
/// purposes for the record. Looked up without allocating once present.
#[derive(Default)]
struct Tally {
    counts: HashMap<KeyId, HashMap<String, TallyEntry>>,
}

struct TallyEntry {
    user_id: Option<i64>,
    roles: Vec<String>,
    purposes: Vec<String>,
    n: i64,
}

/// How often decision counts are written.
pub const TALLY_FLUSH: Duration = Duration::from_secs(5);

/// How long the copier gathers journaled records before it copies them, so
/// that reads one after another on a quiet store cost the writer a
/// transaction (and a flush of its log) every so often, not one each. A
/// reader of the log, a read waiting for room and a shutdown do not wait
/// for it.
const COPY_GATHER: Duration = Duration::from_millis(50);

/// How long a read waits for room in a full journal before it is refused.
const ROOM_WAIT: Duration = Duration::from_secs(5);

/// The meta key holding the number of the last journal record the table
/// holds.
const JOURNAL_MARK: &str = "access_journal_copied";

pub struct LoggerThread {
    join: JoinHandle<()>,
    copier: Option<JoinHandle<()>>,
}

impl LoggerThread {
    /// Waits until every record sent before the last `AccessLogger` was
    /// dropped is written (with a journal: is in the table, unless the
    /// database refused it; then it waits in the journal for the next
    /// start).
    pub fn join(self) {
        let _ = self.join.join();
        if let Some(c) = self.copier {
            let _ = c.join();
        }
    }
}

/// How far the journal and the table are.
#[derive(Default)]
struct Progress {
    marks: Mutex<Marks>,
    moved: Condvar,
}

#[derive(Default)]
struct Marks {
    /// The last record number made durable in the journal.
    journaled: u64,
    /// The last record number the table holds.
    copied: u64,
    /// Why the last copy failed, while it fails.
    failing: Option<Error>,
    /// The record number someone waits to see in the table (a reader of
    /// the log, a read waiting for room in a full journal, or a shutdown):
    /// the copier copies at once instead of gathering for [`COPY_GATHER`].
    wanted: u64,
}

impl Progress {
    fn copied(&self) -> u64 {
        self.marks.lock().expect("marks").copied
    }

    /// Waits until the table holds more than `copied`, or `deadline`.
    fn wait_past(&self, copied: u64, deadline: Instant) -> bool {
        self.want_journaled();
        self.wait_until(deadline, |m| m.copied != copied)
    }

    /// Asks the copier to copy what the journal holds now without waiting
    /// for more; the mark asked for.
    fn want_journaled(&self) -> u64 {
        let mut m = self.marks.lock().expect("marks");
        m.wanted = m.wanted.max(m.journaled);
        let target = m.wanted;
        drop(m);
        self.moved.notify_all();
        target
    }

    /// Waits until `done` holds of the marks, or `deadline`; whether it holds.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&Marks) -> bool) -> bool {
        let mut m = self.marks.lock().expect("marks");
        while !done(&m) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            m = self.moved.wait_timeout(m, left).expect("marks").0;
        }
        true
    }

    /// Why a full journal refuses a read.
    fn why_full(&self) -> Error {
        let why = "its journal is full and the database has not taken its records yet";
        match &self.marks.lock().expect("marks").failing {
            Some(Error::StorageFull(e)) => Error::StorageFull(format!("{why} ({e})")),
            Some(e) => Error::Unavailable(format!("{why} ({e})")),
            None => Error::Unavailable(why.to_owned()),
        }
    }
}

impl AccessLogger {
    /// Records go to the table through the writer, a transaction per batch.
    pub fn spawn(writer: WriterHandle) -> (Self, LoggerThread) {
        let (tx, rx) = sync_channel(10_000);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t = tally.clone();
        // Restarted should it panic; the queue outlives each run. It ends
        // once every logger is dropped.
        let health = writer.health().clone();
        let join = crate::health::supervise(
            health,
            "access-log",
            || false,
            move || {
                run(&rx, &t, &mut |records, waiters| {
                    write(&writer, &t, records, waiters)
                })
            },
        )
        .expect("spawn the access log thread");
        let logger = Self {
            tx,
            tally,
            progress: None,
        };
        (logger, LoggerThread { join, copier: None })
    }

    /// Records are made durable in a journal of their own at `path`, `bytes`
    /// long, and copied into the table through the writer afterwards. What a
    /// journal left there holds that the table lacks (a crash came between
    /// the two) is copied first.
    pub fn spawn_journaled(
        writer: WriterHandle,
        path: &Path,
        bytes: u64,
    ) -> Result<(Self, LoggerThread)> {
        let found = journal::scan(path)?;
        let seen = found.last().map_or(0, |(n, _)| *n);
        let (copied, n) = writer.transact_blocking(move |ctx| {
            let before = copied_mark(ctx.conn)?;
            let copied = copy(ctx.conn, ctx.vault, &found)?;
            Ok((copied, found.iter().filter(|(n, _)| *n > before).count()))
        })?;
        if n > 0 {
            tracing::info!(
                records = n,
                "access records copied from the journal a crash left"
            );
        }
        let mut jl = journal::Journal::open(path, bytes, copied.max(seen) + 1)?;
        let progress = Arc::new(Progress::default());
        {
            let mut m = progress.marks.lock().expect("marks");
            m.copied = jl.next() - 1;
            m.journaled = jl.next() - 1;
        }
        let (tx, rx) = sync_channel(10_000);
        let (to_copier, copier_rx) = std::sync::mpsc::channel();
        let copier = {
            let (writer, progress) = (writer.clone(), progress.clone());
            std::thread::Builder::new()
                .name("tarmo-access-copy".into())
                .spawn(move || copier(&writer, &copier_rx, &progress))?
        };
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (t, p) = (tally.clone(), progress.clone());
        let health = writer.health().clone();
        let join = crate::health::supervise(
            health,
            "access-log",
            || false,
            move || {
                let to = Copier {
                    writer: &writer,
                    progress: &p,
                    tx: &to_copier,
                };
                run(&rx, &t, &mut |records, waiters| {
                    write_journaled(&mut jl, &to, &t, records, waiters)
                });
                // Every logger is gone: the copier copies what is left now.
                p.want_journaled();
            },
        )?;
        let logger = Self {
            tx,
            tally,
            progress: Some(progress),
        };
        Ok((
            logger,
            LoggerThread {
                join,
                copier: Some(copier),
            },
        ))
    }

    /// Log a read of people's data; returns once it is durable.
    pub fn record(&self, r: AccessRecord) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send((r, Some(tx))).map_err(|_| Error::WriterGone)?;
        rx.recv().map_err(|_| Error::WriterGone)?
    }

    /// Wait (up to `within`) until the table holds every record made durable
    /// so far, so that the log as read shows the reads just answered.
    pub fn settle(&self, within: Duration) {
        let Some(p) = &self.progress else { return };
        let target = p.want_journaled();
        p.wait_until(Instant::now() + within, |m| m.copied >= target);
    }

    /// Count policy decisions made for a key through a route.
    pub fn count(
        &self,
        key_id: KeyId,
        user_id: Option<i64>,
        roles: &[String],
        purposes: &[String],
        route: &str,
        n: i64,
    ) {
        let mut t = self.tally.lock().expect("tally");
        let by_route = t.counts.entry(key_id).or_default();
        match by_route.get_mut(route) {
            Some(e) => e.n += n,
            None => {
                by_route.insert(
                    route.to_owned(),
                    TallyEntry {
                        user_id,
                        roles: roles.to_vec(),
                        purposes: purposes.to_vec(),
                        n,
                    },
                );
            }
        }
    }
}

fn drain_tally(tally: &Mutex<Tally>) -> Vec<AccessRecord> {
    let counts = std::mem::take(&mut tally.lock().expect("tally").counts);
    let now = crate::now_ms();
    counts
        .into_iter()
        .flat_map(|(key_id, by_route)| {
            by_route.into_iter().map(move |(route, e)| AccessRecord {
                at_ms: now,
                key_id,
                user_id: e.user_id,
                roles: e.roles,
                purposes: e.purposes,
                route,
                action: "decisions",
                profiles: Vec::new(),
                count: e.n,
            })
        })
        .collect()
}

type Write<'a> = dyn FnMut(Vec<AccessRecord>, Vec<Done>) + 'a;

/// Take what is queued, up to 5,000 records a batch, with the tally every
/// [`TALLY_FLUSH`], and hand each batch to `write`.
fn run(rx: &Receiver<(AccessRecord, Option<Done>)>, tally: &Mutex<Tally>, write: &mut Write<'_>) {
    let mut last_flush = Instant::now();
    loop {
        let first = match rx.recv_timeout(TALLY_FLUSH) {
            Ok(x) => Some(x),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                write(drain_tally(tally), Vec::new());
                return;
            }
        };
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        if let Some((r, w)) = first {
            records.push(r);
            waiters.extend(w);
            while records.len() < 5000 {
                match rx.try_recv() {
                    Ok((r, w)) => {
                        records.push(r);
                        waiters.extend(w);
                    }
                    Err(_) => break,
                }
            }
        }
        if last_flush.elapsed() >= TALLY_FLUSH {
            records.extend(drain_tally(tally));
            last_flush = Instant::now();
        }
        if !records.is_empty() {
            write(records, waiters);
        }
    }
}

/// Records through the writer into the table.
fn write(
    writer: &WriterHandle,
    tally: &Mutex<Tally>,
    records: Vec<AccessRecord>,
    waiters: Vec<Done>,
) {
    let n = records.len();
    // Decision counts go back to the tally should the write fail (a full
    // disk): they are written with the next batch, not lost.
    let counts = counts_of(&records);
    let r = writer.transact_blocking(move |ctx| append(ctx.conn, ctx.vault, &records));
    if let Err(e) = &r {
        tracing::error!(error = %e, records = n, "writing the access log failed");
        give_back(tally, counts);
    }
    answer(waiters, &r);
}

/// Records into the journal, then to the copier. A batch larger than the
/// journal takes at once is written in parts; a single record that large
/// (an export of some 250,000 people with the default size) goes through
/// the writer, as without a journal.
fn write_journaled(
    jl: &mut journal::Journal,
    to: &Copier<'_>,
    tally: &Mutex<Tally>,
    records: Vec<AccessRecord>,
    waiters: Vec<Done>,
) {
    let deadline = Instant::now() + ROOM_WAIT;
    let mut numbered: Vec<(u64, AccessRecord)> = Vec::with_capacity(records.len());
    let mut failed = Vec::new();
    let mut result = Ok(());
    let mut parts = vec![records];
    while let Some(part) = parts.pop() {
        if result.is_err() {
            failed.extend(part);
            continue;
        }
        // The first record's number; 0 when the part was split or went
        // through the writer.
        let r = loop {
            let copied = to.progress.copied();
            match jl.append(&part, copied) {
                Ok(first) => break Ok(first),
                Err(journal::Refused::Full) => {
                    if !to.progress.wait_past(copied, deadline) {
                        break Err(to.progress.why_full());
                    }
                }
                Err(journal::Refused::TooLarge) if part.len() > 1 => break Ok(0),
                Err(journal::Refused::TooLarge) => {
                    let one = part.clone();
                    break to
                        .writer
                        .transact_blocking(move |ctx| append(ctx.conn, ctx.vault, &one))
                        .map(|()| 0);
                }
                Err(journal::Refused::Io(e)) => break Err(Error::from(e)),
            }
        };
        match r {
            // Halves, the first on top.
            Ok(0) if part.len() > 1 => {
                let mut part = part;
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Ok(0) => {}
            Ok(first) => numbered.extend((first..).zip(part)),
            Err(e) => {
                result = Err(e);
                failed.extend(part);
            }
        }
    }
    if let Some((last, _)) = numbered.last() {
        let mut m = to.progress.marks.lock().expect("marks");
        m.journaled = *last;
        drop(m);
        let _ = to.tx.send(numbered);
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, records = failed.len(), "writing the access journal failed");
        give_back(tally, counts_of(&failed));
    }
    answer(waiters, &result);
}

/// Where journaled records go to be copied.
struct Copier<'a> {
    writer: &'a WriterHandle,
    progress: &'a Progress,
    tx: &'a Sender<Vec<(u64, AccessRecord)>>,
}

/// Copies journaled records into the table, many batches to a transaction;
/// a failed copy is tried again (the records wait in the journal) until it
/// takes, or, once the loggers are gone, a few times before it gives up to
/// the next start.
fn copier(writer: &WriterHandle, rx: &Receiver<Vec<(u64, AccessRecord)>>, progress: &Progress) {
    let mut pending: Vec<(u64, AccessRecord)> = Vec::new();
    let mut closed = false;
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(b) => pending = b,
                Err(_) => return,
            }
            // Gather more unless someone waits for records not yet copied.
            progress.wait_until(Instant::now() + COPY_GATHER, |m| m.wanted > m.copied);
        }
        while pending.len() < 20_000 && !closed {
            match rx.try_recv() {
                Ok(b) => pending.extend(b),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => closed = true,
            }
        }
        let numbered = Arc::new(std::mem::take(&mut pending));
        let r = writer.transact_blocking({
            let numbered = numbered.clone();
            move |ctx| copy(ctx.conn, ctx.vault, &numbered)
        });
        let mut m = progress.marks.lock().expect("marks");
        match r {
            Ok(copied) => {
                m.copied = m.copied.max(copied);
                m.failing = None;
                failures = 0;
                progress.moved.notify_all();
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, records = numbered.len(), "copying the access journal into the log failed; it is tried again");
                m.failing = Some(e);
                progress.moved.notify_all();
                drop(m);
                pending = Arc::try_unwrap(numbered).unwrap_or_else(|a| (*a).clone());
                if closed && failures >= 5 {
                    tracing::error!(
                        records = pending.len(),
                        "access records stay in the journal; they are copied at the next start"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(100 << failures.min(4)));
            }
        }
    }
}

/// How many records the journal at `path` holds that the table does not
/// yet: a server killed before it copied them copies them when it starts.
pub fn waiting_in_journal(conn: &mut dyn Conn, path: &Path) -> Result<usize> {
    let mark = copied_mark(conn)?;
    Ok(journal::scan(path)?
        .iter()
        .filter(|(n, _)| *n > mark)
        .count())
}

/// The journal mark as stored.
fn copied_mark(conn: &mut dyn Conn) -> Result<u64> {
    Ok(conn
        .meta_get(JOURNAL_MARK)?
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes))
}

/// Append the numbered records the table lacks, in the caller's transaction,
/// and move the mark; returns the mark.
fn copy(conn: &mut dyn Conn, vault: &Vault, numbered: &[(u64, AccessRecord)]) -> Result<u64> {
    let mark = copied_mark(conn)?;
    let Some(last) = numbered.iter().map(|(n, _)| *n).max().filter(|n| *n > mark) else {
        return Ok(mark);
    };
    let fresh = numbered.iter().filter(|(n, _)| *n > mark).map(|(_, r)| r);
    append(conn, vault, fresh)?;
    conn.meta_set(JOURNAL_MARK, &last.to_le_bytes())?;
    Ok(last)
}

fn counts_of(records: &[AccessRecord]) -> Vec<AccessRecord> {
    records
        .iter()
        .filter(|r| r.action == "decisions")
        .cloned()
        .collect()
}

/// Decision counts that could not be written go back to the tally.
fn give_back(tally: &Mutex<Tally>, counts: Vec<AccessRecord>) {
    let mut t = tally.lock().expect("tally");
    for c in counts {
        let e = t
            .counts
            .entry(c.key_id)
            .or_default()
            .entry(c.route)
            .or_insert(TallyEntry {
                user_id: c.user_id,
                roles: c.roles,
                purposes: c.purposes,
                n: 0,
            });
        e.n += c.count;
    }
}

fn answer(waiters: Vec<Done>, r: &Result<()>) {
    for w in waiters {
        // A read that could not be logged is refused: the reader hears why
        // (a full disk answers 507 like any write).
        let _ = w.send(match r {
            Ok(()) => Ok(()),
            Err(Error::StorageFull(why)) => Err(Error::StorageFull(format!("access log: {why}"))),
            // The read is refused either way; a database that is away is
            // said as such (503, retry), not as an internal error.
            Err(Error::Unavailable(why)) => Err(Error::Unavailable(format!("access log: {why}"))),
            Err(e) => Err(Error::Backend(format!("access log: {e}"))),
        });
    }
}
