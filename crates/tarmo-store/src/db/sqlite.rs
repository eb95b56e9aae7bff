//! The embedded backend: one SQLite file in WAL mode with full fsync on
//! commit, so that a transaction Tarmo acknowledged survives kill -9 and power
//! loss alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::conn::*;
use crate::vault::{BlindIndex, Sealed};
use crate::{Error, Result};

/// Make the database file (created empty if absent) readable by its owner
/// only, and tighten the log files an older version left. SQLite creates
/// its `-wal` and `-shm` files with the database file's permissions, so
/// they follow. The data directory is 0700 too; this keeps the files
/// closed should it be opened up or the file copied elsewhere.
fn owner_only(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Open a database through a VFS of our own where there is one (see
/// `super::paced`), else through SQLite's default.
fn open_through(path: &Path, vfs: Option<&'static str>) -> Result<Connection> {
    Ok(match vfs {
        Some(vfs) => {
            Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?
        }
        None => Connection::open(path)?,
    })
}

pub struct SqliteBackend {
    path: PathBuf,
    keyring: PathBuf,
}

/// The people's wrapped data keys live in a file of their own beside the
/// database: `keyring.db` beside `tarmo.db` (`NAME-keyring.db` beside any
/// other name). Its log holds nothing but keys, so an erasure truncates it
/// in milliseconds however busy ingestion is, and a copy of the data file
/// without it opens nothing.
pub fn keyring_path(db: &Path) -> PathBuf {
    match db.file_name().and_then(|n| n.to_str()) {
        Some("tarmo.db") | None => db.with_file_name("keyring.db"),
        Some(name) => db.with_file_name(format!("{name}-keyring.db")),
    }
}

/// The keyring file's one table: a key per owner (the profile that made
/// it). Which person a key belongs to now (after merges) is the data's
/// business (`profiles.merged_into`): nothing in the keyring changes
/// when people merge, so the keyring is written only when a profile is
/// made and when a person is erased.
pub const KEYRING_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS data_keys (owner_id INTEGER PRIMARY KEY, wrapped BLOB NOT NULL)";

/// Open a keyring file for use: WAL, a synced commit, deleted keys zeroed.
fn open_keyring(path: &Path) -> Result<Connection> {
    let k = Connection::open(path)?;
    k.busy_timeout(std::time::Duration::from_secs(10))?;
    k.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a key is on stable storage before the data that needs it is
    // committed (see `SqliteConn::commit`).
    k.pragma_update(None, "synchronous", "FULL")?;
    k.pragma_update(None, "secure_delete", "ON")?;
    k.set_prepared_statement_cache_capacity(16);
    Ok(k)
}

impl SqliteBackend {
    /// Open (creating if needed) the database file and its keyring, bring
    /// the schema up to date, and drop keys nobody owns.
    pub fn open(path: &Path) -> Result<Self> {
        owner_only(path)?;
        let keyring = keyring_path(path);
        owner_only(&keyring)?;
        let b = Self {
            path: path.to_owned(),
            keyring,
        };
        let mut c = b.connect()?;
        c.migrate()?;
        let dropped = c.drop_orphan_keys()?;
        if dropped > 0 {
            tracing::info!(
                keys = dropped,
                "dropped data keys whose profile is gone (a write rolled back, or an erasure cut short)"
            );
        }
        Ok(b)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keyring file beside the database.
    pub fn keyring(&self) -> &Path {
        &self.keyring
    }

    pub fn connect(&self) -> Result<SqliteConn> {
        // Each commit's log frames gathered into one write (see
        // `super::paced`).
        let c = open_through(&self.path, super::paced::log_name())?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit, so an acknowledged
        // write survives power loss, not only a crash of the process.
        c.pragma_update(None, "synchronous", "FULL")?;
        c.pragma_update(None, "secure_delete", "ON")?;
        c.pragma_update(None, "temp_store", "MEMORY")?;
        // The writer's hot statements (ingestion, the ledger's rows in
        // their six batch sizes, identity resolution) must all stay
        // prepared.
        c.set_prepared_statement_cache_capacity(128);
        Ok(SqliteConn {
            c,
            k: open_keyring(&self.keyring)?,
            doomed: Vec::new(),
            truncate: None,
            slots: HashMap::new(),
            recent: None,
            counts: None,
        })
    }
}

pub struct SqliteConn {
    c: Connection,
    /// The keyring file. Keys written in a transaction go into a write
    /// transaction of its own, committed (and synced) just before the
    /// data's: a profile is never durable without its key. A key whose
    /// profile then rolls back is dropped at the next start (or replaced,
    /// should its id be handed out again).
    k: Connection,
    /// Owners whose keys go once the erasure that removed them is durable
    /// (at [`Conn::checkpoint`]).
    doomed: Vec<i64>,
    /// The writer's: ask the checkpointer to fold and truncate the data's
    /// log in the background (set by [`Conn::defer_sync`]).
    truncate: Option<TruncateAsk>,
    /// Each statement text's parameter numbers, by slot (see [`bind`]).
    slots: HashMap<String, Box<[usize]>>,
    /// The writer's: recent messageId digests, appended and folded into
    /// `dedup` a sorted slice at a time (see [`super::recent`]).
    recent: Option<super::recent::Recent>,
    /// The writer's: when to fold the newest events' counts into
    /// `profile_counts` (see [`FOLD_COUNTS_EVERY`]).
    counts: Option<CountsFold>,
}

/// The writer's side of the checkpointer thread: asking it for a
/// truncating checkpoint, and hearing from it that the log should start
/// again.
struct TruncateAsk {
    wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by the checkpointer: the log is long and mostly copied; the
    /// writer copies the rest between groups, and the log restarts.
    restart_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Fold a log into its database file and truncate it, trying a few
/// times when readers on an older snapshot hold it off.
fn truncate_log(c: &Connection, what: &str) -> Result<()> {
    // TRUNCATE waits for readers still on an older snapshot and then
    // answers busy = 1 rather than an error: look at the answer, and try
    // again a few times, each wait short so that a long read does not hold
    // the writer (the busy timeout would be 10 s).
    c.busy_timeout(CHECKPOINT_WAIT)?;
    let r = (|| {
        for attempt in 0..CHECKPOINT_ATTEMPTS {
            let (busy, log, done): (i64, i64, i64) =
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            if busy == 0 {
                return Ok(());
            }
            tracing::debug!(attempt, log, done, what, "checkpoint held off by readers");
            std::thread::sleep(CHECKPOINT_WAIT * (attempt + 1));
        }
        Err(Error::Busy(format!(
            "the {what} write-ahead log could not be truncated: readers held it through {CHECKPOINT_ATTEMPTS} attempts"
        )))
    })();
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    r
}

/// Flushes a database's write-ahead log: after `flush` returns, every
/// transaction committed to it before the call survives power loss.
struct WalFlusher {
    wal: std::fs::File,
    checkpointer: Checkpointer,
}

impl Flusher for WalFlusher {
    fn flush(&mut self) -> Result<()> {
        self.wal.sync_data()?;
        self.checkpointer.nudge();
        Ok(())
    }
}

/// The writer's page cache (negative: KiB), and while a bulk load runs:
/// an import of 1M customers dirties ~27k random index pages a chunk
/// (two identifiers and a row hash each), which spilled out of 64 MiB
/// mid-transaction and were read back in.
const WRITER_CACHE_KIB: i64 = -65_536;
const BULK_CACHE_KIB: i64 = -524_288;
/// The data's log: once a background checkpoint finds this many frames
/// in it (64 MiB), the writer folds the rest between two groups so that
/// the log starts again from its beginning; at 1 GiB the writer folds it
/// at its next commit whatever the cost (the brake); at a lull a log file
/// larger than 64 MiB is truncated. The file is never cut back while the
/// writer writes: cut to 64 MiB after every restart under heavy ingestion,
/// it grew into new blocks again (allocated and zeroed by the kernel) and
/// the group that cut it and the next took 40-90 ms instead of 10-20,
/// every 0.7 s (measured: `erasure_load`, BENCHMARKS.md).
const WAL_RESTART_FRAMES: i64 = 16_384;
const WAL_BRAKE_FRAMES: i64 = 262_144;
const WAL_KEEP_BYTES: u64 = 64 << 20;

/// A truncating checkpoint (after an erasure) waits this long for readers
/// at each of its attempts.
const CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const CHECKPOINT_ATTEMPTS: u32 = 5;

/// At most one checkpoint in this time: a page that many groups wrote
/// meanwhile is copied into the database once.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Checkpoints on a thread and connection of its own, so that the writer
/// seldom stops to copy pages into the database file: it appends to the
/// log. A passive checkpoint runs beside the writer; once it has copied the
/// whole log, the writer's next transaction starts the log from the
/// beginning again. Under continuous ingestion it never has (the writer
/// appends while it copies), so once the log holds 64 MiB it tells the
/// writer (`restart_due`), which copies the frames written since between
/// two groups, when no transaction job waits ([`Conn::between_groups`]):
/// 16-60 ms under the erasure bench's load (more as the database grows),
/// where its own checkpoint at 256 MiB, inside a group's commit, took
/// 30-80 ms. Should the writer still fall behind, its own checkpoint at
/// 1 GiB of log is the brake.
///
/// After an erasure the writer asks it (`wanted`) for a truncating
/// checkpoint at the next lull: the log's frames from before the erasure
/// hold the person's sealed values, noise once their key is gone, and are
/// removed too, without the erasure's answer waiting for it.
struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    restart_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(db: &str) -> Result<Self> {
        use std::sync::atomic::Ordering;
        // Its checkpoints write the database file behind, a few MiB at a
        // time (see `super::paced`), so that flushes beside one are not
        // queued behind all of it.
        let c = open_through(Path::new(db), super::paced::name())?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let wanted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let truncate = wanted.clone();
        let restart_due = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = restart_due.clone();
        let wal_path = format!("{db}-wal");
        let wal_len = move || std::fs::metadata(&wal_path).map_or(0, |m| m.len());
        let join = std::thread::Builder::new()
            .name("tarmo-checkpointer".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                // Woken by a flush (something was written), or now and then
                // to finish a checkpoint the writer held back.
                let mut asked = false;
                // The last change another connection committed, as this
                // connection's `data_version` shows it, and when it was
                // first seen.
                let version = |c: &Connection| {
                    c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                        .ok()
                };
                let mut seen = version(&c);
                let mut changed_at = std::time::Instant::now();
                let mut held_off = false;
                loop {
                    // Quiet: nothing was committed for a while, which is
                    // when a truncation asked for is made: it holds the
                    // writer off while it runs, 60 ms to over a second
                    // under heavy ingestion (measured), so it waits for a
                    // lull. Under continuous load the log's old frames are
                    // written over as it starts again from the beginning
                    // (see `restart_due`); a log file grown larger than
                    // 64 MiB is truncated at the next lull.
                    //
                    // Every flush nudges, but a flush is not a change: the
                    // workers that poll for due messages (the outbox, the
                    // erasure notices) each run a write transaction every
                    // two seconds that mostly changes nothing, and a lull counted in
                    // flushes never came on a running server (the log of
                    // an ingest burst stayed at 164 MB, measured). So a
                    // lull is counted from the last change committed.
                    let wait = if truncate.load(Ordering::Acquire) {
                        std::time::Duration::from_secs(1)
                    } else {
                        std::time::Duration::from_secs(5)
                    };
                    let mut timed_out = false;
                    if !asked {
                        match rx.recv_timeout(wait) {
                            Ok(()) => {}
                            Err(RecvTimeoutError::Timeout) => timed_out = true,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    asked = false;
                    let now_seen = version(&c);
                    let changed = now_seen != seen;
                    if changed {
                        seen = now_seen;
                        changed_at = std::time::Instant::now();
                    }
                    let quiet = (timed_out && !changed) || changed_at.elapsed() >= wait;
                    // With nothing new in the log this returns at once.
                    let passive =
                        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
                    match passive {
                        Err(e) => {
                            tracing::warn!(error = %e, "checkpoint failed; trying again later")
                        }
                        // A lull: what an erasure asked for, or a log grown
                        // large under load, is truncated now.
                        Ok(_)
                            if quiet
                                && (truncate.load(Ordering::Acquire)
                                    || wal_len() > WAL_KEEP_BYTES) =>
                        {
                            match truncate_log(&c, "data") {
                                Ok(()) => {
                                    truncate.store(false, Ordering::Release);
                                    held_off = false;
                                }
                                // Said once a streak: a long read (an
                                // export) may hold it for many lulls.
                                Err(e) if !held_off => {
                                    held_off = true;
                                    tracing::warn!(error = %e, "the log was not truncated at a lull; trying again at the next");
                                }
                                Err(e) => tracing::debug!(error = %e, "the log is still held"),
                            }
                        }
                        Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                            due.store(true, Ordering::Release);
                        }
                        Ok(_) => {}
                    }
                    let rest = std::time::Instant::now() + CHECKPOINT_EVERY;
                    loop {
                        let left = rest.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(()) => asked = true,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            })?;
        Ok(Self {
            nudge: Some(tx),
            wanted,
            restart_due,
            join: Some(join),
        })
    }

    /// The flag that asks for a truncating checkpoint, made at the next
    /// lull (two seconds without a commit). It holds no sender, so the
    /// thread still ends when the flusher goes.
    fn asker(&self) -> TruncateAsk {
        TruncateAsk {
            wanted: self.wanted.clone(),
            restart_due: self.restart_due.clone(),
        }
    }

    fn nudge(&self) {
        if let Some(tx) = &self.nudge {
            // Full: a checkpoint is already asked for.
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudge.take();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl SqliteConn {
    /// Deduplicate through recent tables folded into `dedup` in chunks of
    /// `chunk` digests (the writer's connection, the only one that claims).
    pub(crate) fn recent_dedup(&mut self, chunk: usize, floor: usize) -> Result<()> {
        self.recent = Some(super::recent::Recent::load(&self.c, chunk, floor)?);
        Ok(())
    }

    /// Fold the newest events' counts into `profile_counts` at the first
    /// commit after `every` events were stored (the writer's connection;
    /// any connection's reads count the events not folded yet).
    pub(crate) fn fold_counts_every(&mut self, every: u64) -> Result<()> {
        let pending: i64 = self.c.query_row(
            "SELECT COALESCE((SELECT max(id) FROM events), 0) - through FROM events_counted",
            [],
            |r| r.get(0),
        )?;
        self.counts = Some(CountsFold {
            every: every.max(1),
            pending: pending.max(0) as u64,
            folded: false,
        });
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        self.c.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )?;
        self.k.execute_batch(KEYRING_SCHEMA)?;
        let all: Vec<(i64, String)> = crate::migrations::sqlite();
        for (version, sql) in &all {
            let tx = self
                .c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let done: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    [version],
                    |r| r.get(0),
                )
                .optional()?;
            if done.is_none() {
                if *version == KEYRING_FILE_MIGRATION {
                    move_keys_out(&self.k, &tx)?;
                }
                if *version == EVENTS_COUNTED_MIGRATION {
                    event_ids_never_reused(&tx)?;
                }
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                    params![version, crate::now_ms()],
                )?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Drop the keys whose profile is gone: a key written for a profile
    /// whose transaction then rolled back (the keyring commits first), or
    /// one whose erasure was cut short between the data's commit and the
    /// key's destruction. Run under the data's write lock, so that no
    /// writer (of this process or another) is between its keyring commit
    /// and its data commit.
    fn drop_orphan_keys(&mut self) -> Result<u64> {
        self.c.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| {
            attach_data(&self.k, &self.c)?;
            let n = self.k.execute(
                "DELETE FROM main.data_keys
                 WHERE NOT EXISTS (SELECT 1 FROM d.profiles WHERE d.profiles.id = owner_id)",
                [],
            );
            self.k.execute_batch("DETACH d")?;
            Ok(n? as u64)
        })();
        self.c.execute_batch("ROLLBACK")?;
        r
    }

    /// Open a write transaction on the keyring if the data has one and the
    /// keyring does not yet.
    fn keyring_write(&mut self) -> Result<()> {
        if !self.c.is_autocommit() && self.k.is_autocommit() {
            self.k.execute_batch("BEGIN IMMEDIATE")?;
        }
        Ok(())
    }

    /// Make every commit of the data so far durable (the writer defers
    /// the flush of its commits: see [`Conn::defer_sync`]).
    fn sync_data_log(&self) -> Result<()> {
        let mut wal = self.c.path().unwrap_or_default().to_owned();
        if wal.is_empty() {
            return Ok(());
        }
        wal.push_str("-wal");
        match std::fs::File::open(&wal) {
            Ok(f) => Ok(f.sync_data()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Destroy the keys of erased people, now that their erasure is
    /// durable: only those whose profile row is gone, so that a job rolled
    /// back to its savepoint keeps its person's key (profile ids are never
    /// handed out again once committed: AUTOINCREMENT).
    fn destroy_doomed(&mut self, sync_first: bool) -> Result<()> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        if sync_first {
            self.sync_data_log()?;
        }
        let mut gone = Vec::with_capacity(self.doomed.len());
        {
            let mut st = self
                .c
                .prepare_cached("SELECT 1 FROM profiles WHERE id = ?1")?;
            for &o in &self.doomed {
                if !st.exists([o])? {
                    gone.push(o);
                }
            }
        }
        self.k.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| {
            let mut st = self
                .k
                .prepare_cached("DELETE FROM data_keys WHERE owner_id = ?1")?;
            for &o in &gone {
                st.execute([o])?;
            }
            Ok::<_, Error>(())
        })();
        match r.and_then(|()| Ok(self.k.execute_batch("COMMIT")?)) {
            Ok(()) => {
                self.doomed.clear();
                Ok(())
            }
            Err(e) => {
                let _ = self.k.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The migration that moves the data keys out into the keyring file.
const KEYRING_FILE_MIGRATION: i64 = 22;

/// The migration that counts the newest events from the events table (see
/// [`FOLD_COUNTS_EVERY`]) and numbers events so that an id never comes back.
const EVENTS_COUNTED_MIGRATION: i64 = 27;

/// Migration 27: the events' ids become `AUTOINCREMENT`. SQLite numbers a
/// plain `INTEGER PRIMARY KEY` as the largest id plus one, so after the
/// erasure of whoever sent the newest events the next events took their
/// ids again, and whatever follows events by id (the segment engine, the
/// automations, the counters' mark) would never see them. Only the
/// table's declaration changes, not its pages: the declaration is edited
/// in place (`writable_schema`, then the schema version one up, so that
/// every connection reads it again), SQLite's documented way for a change
/// that leaves the stored format as it is, instead of copying every event
/// into a new table at start. Safe to run again: a declaration that says
/// `AUTOINCREMENT` already is left alone.
fn event_ids_never_reused(tx: &Connection) -> Result<()> {
    const PLAIN: &str = "id INTEGER PRIMARY KEY";
    let sql: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if !sql.contains("AUTOINCREMENT") {
        let Some(at) = sql.find(PLAIN) else {
            return Err(Error::Corrupt(format!(
                "the events table's declaration has no `{PLAIN}`: {sql}"
            )));
        };
        let at = at + PLAIN.len();
        let declared = format!("{} AUTOINCREMENT{}", &sql[..at], &sql[at..]);
        let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        tx.execute_batch("PRAGMA writable_schema = ON")?;
        let edited = tx.execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = 'events'",
            [&declared],
        );
        // Off again whatever happened: no other statement may write the schema.
        let bumped = tx.execute_batch(&format!("PRAGMA schema_version = {}", version + 1));
        tx.execute_batch("PRAGMA writable_schema = OFF")?;
        edited?;
        bumped?;
    }
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq)
             SELECT 'events', COALESCE((SELECT max(id) FROM events), 0)
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')",
        [],
    )?;
    Ok(())
}

/// Events the writer's connection stores before it folds the newest
/// events' counts into `profile_counts` (one statement over them, in
/// profile order, at a commit). Until then a profile's count is what
/// `profile_counts` holds plus its events after `events_counted.through`,
/// read through the events-by-profile index. A counter written with every
/// group dirtied a page of `profile_counts` at a random place per event
/// (at 1M customers, ~690 pages for a group of 765 events); a fold of
/// 65,536 events dirties each of its pages once.
pub(crate) const FOLD_COUNTS_EVERY: u64 = 1 << 16;

/// A profile (the one it was merged into, if so), its counted events
/// plus those after the counters' mark, found through the events-by-profile
/// index.
const PROFILE_GET: &str = "SELECT p.id, p.created_ms,
        max(p.updated_ms, COALESCE(c.last_ms, 0), COALESCE(t.last_ms, 0)),
        COALESCE(c.events, 0) + t.events, p.traits
 FROM profiles p LEFT JOIN profile_counts c ON c.profile_id = p.id,
      (SELECT count(*) AS events, max(e.received_ms) AS last_ms
       FROM events e
       WHERE e.profile_id = (SELECT COALESCE(merged_into, id) FROM profiles WHERE id = ?1)
         AND e.id > (SELECT through FROM events_counted)) t
 WHERE p.id = (SELECT COALESCE(merged_into, id) FROM profiles WHERE id = ?1)";

/// The writer's side of the counters' fold.
struct CountsFold {
    /// Fold once this many events were stored since the last fold.
    every: u64,
    /// Events stored since the last fold (about: a rolled-back job's
    /// events stay counted here, which only brings the fold forward).
    pending: u64,
    /// The fold ran in the transaction now open.
    folded: bool,
}

/// Fold the counts of the events after `events_counted.through` into
/// `profile_counts`, in profile order, and move the mark to the newest.
fn fold_counts(c: &Connection) -> Result<()> {
    let (through, newest): (i64, Option<i64>) = c.query_row(
        "SELECT through, (SELECT max(id) FROM events) FROM events_counted",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(newest) = newest.filter(|&n| n > through) else {
        return Ok(());
    };
    c.prepare_cached(
        "INSERT INTO profile_counts (profile_id, events, last_ms)
             SELECT profile_id, count(*), max(received_ms) FROM events
             WHERE id > ?1 AND id <= ?2 GROUP BY profile_id ORDER BY profile_id
         ON CONFLICT (profile_id) DO UPDATE SET events = events + excluded.events,
             last_ms = max(last_ms, excluded.last_ms)",
    )?
    .execute([through, newest])?;
    c.prepare_cached("UPDATE events_counted SET through = ?1")?
        .execute([newest])?;
    Ok(())
}

/// Attach the data file (read by the keyring's connection) as `d`.
fn attach_data(k: &Connection, c: &Connection) -> Result<()> {
    let path = c.path().unwrap_or_default();
    k.execute("ATTACH ?1 AS d", [path])?;
    Ok(())
}

/// Copy the data keys from the database file (releases before migration
/// 22 kept them there) into the keyring, synced, before the migration
/// drops them from the database. A key left empty (a restore of an older
/// backup that could not put it back) is not copied: its person is
/// erased by the restore. Safe to run again after a crash.
fn move_keys_out(k: &Connection, c: &Connection) -> Result<()> {
    let there: bool = c
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'data_keys'")?
        .exists([])?;
    if !there {
        return Ok(());
    }
    attach_data(k, c)?;
    // Deferred: IMMEDIATE would take the write lock of `d` too, which the
    // migration's own transaction holds.
    let r = k.execute_batch(
        "BEGIN;
         INSERT OR IGNORE INTO main.data_keys (owner_id, wrapped)
             SELECT owner_id, wrapped FROM d.data_keys WHERE length(wrapped) > 0;
         COMMIT;",
    );
    if r.is_err() && !k.is_autocommit() {
        let _ = k.execute_batch("ROLLBACK");
    }
    k.execute_batch("DETACH d")?;
    Ok(r?)
}

fn to_sql<'a>(p: &'a P<'a>) -> rusqlite::types::ToSqlOutput<'a> {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};
    match p {
        P::Null => ToSqlOutput::Owned(Value::Null),
        P::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
        P::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        P::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
    }
}

/// Bind `$1, $2, ...` as written for both backends. SQLite reads `$1` as a
/// parameter named "$1", numbered in order of first appearance, so each
/// slot is bound by the number in its name (a statement may use `$2`
/// before `$1`, or `$1` twice). A slot's name costs a walk of the
/// statement's list of names (`sqlite3_bind_parameter_name`), so naming
/// every slot of a 500-row insert on every run was quadratic: the numbers
/// are worked out once per statement text and kept in `slots`.
fn bind(
    slots: &mut HashMap<String, Box<[usize]>>,
    sql: &str,
    st: &mut rusqlite::Statement<'_>,
    params: &[P<'_>],
) -> Result<()> {
    if !slots.contains_key(sql) {
        let mut numbers = Vec::with_capacity(st.parameter_count());
        for slot in 1..=st.parameter_count() {
            numbers.push(
                st.parameter_name(slot)
                    .and_then(|name| name.strip_prefix('$'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0),
            );
        }
        // Statement texts are few (IN lists of up to 500 are the most); a
        // bound keeps a caller that builds texts freely from growing it.
        if slots.len() >= MAX_SLOT_MAPS {
            slots.clear();
        }
        slots.insert(sql.to_owned(), numbers.into_boxed_slice());
    }
    let numbers = &slots[sql];
    for (i, &n) in numbers.iter().enumerate() {
        if n == 0 || n > params.len() {
            return Err(Error::Backend(format!(
                "statement parameter {} is not one of $1..${}",
                i + 1,
                params.len()
            )));
        }
        st.raw_bind_parameter(i + 1, to_sql(&params[n - 1]))?;
    }
    Ok(())
}

/// How many statement texts' parameter numbers a connection keeps.
const MAX_SLOT_MAPS: usize = 4096;

fn bidx_of(b: Vec<u8>) -> Result<BlindIndex> {
    BlindIndex::from_slice(&b)
}

impl Conn for SqliteConn {
    fn bulk_load(&mut self, on: bool) -> Result<()> {
        // Shrinking frees the pages over the new size at once.
        let kib = if on { BULK_CACHE_KIB } else { WRITER_CACHE_KIB };
        self.c.pragma_update(None, "cache_size", kib)?;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn begin(&mut self) -> Result<()> {
        self.c.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let step = match &mut self.recent {
            Some(r) if !self.c.is_autocommit() => Some(r.before_commit(&self.c)?),
            _ => None,
        };
        if let Some(f) = &mut self.counts
            && f.pending >= f.every
            && !self.c.is_autocommit()
        {
            fold_counts(&self.c)?;
            f.folded = true;
        }
        // The keys first, synced: a profile is never durable without its
        // key. Should the data's commit then fail, the keys are orphans,
        // dropped at the next start.
        if !self.k.is_autocommit() {
            self.k.execute_batch("COMMIT")?;
        }
        self.c.execute_batch("COMMIT")?;
        if let (Some(r), Some(step)) = (&mut self.recent, step) {
            r.after_commit(step);
        }
        if let Some(f) = &mut self.counts
            && std::mem::take(&mut f.folded)
        {
            f.pending = 0;
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        if let Some(r) = &mut self.recent {
            r.abandon();
        }
        if let Some(f) = &mut self.counts {
            f.folded = false;
        }
        self.doomed.clear();
        if !self.k.is_autocommit() {
            self.k.execute_batch("ROLLBACK")?;
        }
        if !self.c.is_autocommit() {
            self.c.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64> {
        let mut st = self.c.prepare_cached(sql)?;
        bind(&mut self.slots, sql, &mut st, params)?;
        Ok(st.raw_execute()? as u64)
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut st = self.c.prepare_cached(sql)?;
        bind(&mut self.slots, sql, &mut st, params)?;
        let n = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                cells.push(match r.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Int(v as i64),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                });
            }
            out.push(Row(cells));
        }
        Ok(out)
    }

    fn checkpoint(&mut self) -> Result<()> {
        // Every commit so far is made durable first (so the writer may
        // answer without waiting for its flusher); then the erased people's
        // keys go, now that their erasure is durable, and
        // the keyring's log, which held them, is folded and truncated
        // (`secure_delete` zeroes the freed space). The keyring's log holds
        // keys only, so this takes milliseconds however busy ingestion is.
        self.sync_data_log()?;
        self.destroy_doomed(false)?;
        truncate_log(&self.k, "keyring")?;
        // The data's log still holds the erased person's sealed values from
        // before the erasure, noise without their key: the writer's
        // checkpointer folds and truncates it at the next lull, in the
        // background (and every start truncates it).
        match &self.truncate {
            Some(ask) => {
                ask.wanted.store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            None => truncate_log(&self.c, "data"),
        }
    }

    fn defer_sync(&mut self) -> Result<Option<Box<dyn Flusher>>> {
        // Make sure the write-ahead log exists (a first read opens it), and
        // open it ourselves: fdatasync on any descriptor of the file flushes
        // all of its written pages. The file stays the same while this
        // connection is open (SQLite removes it only when the last
        // connection closes; a checkpoint truncates or rewrites it in place).
        let _: i64 = self
            .c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let Some(db) = self.c.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let wal = match std::fs::File::open(format!("{db}-wal")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // NORMAL in WAL mode: a commit writes its frames to the log without
        // fsync; SQLite still syncs the log before a checkpoint copies it and
        // the database after, so only the flush below is deferred.
        self.c.pragma_update(None, "synchronous", "NORMAL")?;
        // The writer touches random pages of several indexes (dedup hashes,
        // events by profile, identifiers): a 64 MiB page cache. No memory
        // map: a map of the database counts in the process's RSS for every
        // page the writer ever touched (up to the map's size: 1 GiB of a
        // 1,171 MB RSS at 1M people once ingestion had run), and it earned
        // little — 5M events through the writer took 145 s with a 1 GiB
        // map and 153 s without (500k people, one run each, same machine).
        self.c.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        self.c.pragma_update(None, "mmap_size", 0)?;
        // Checkpoints move to a thread of their own (see `Checkpointer`;
        // the writer checkpoints by itself only 1 GiB behind). The log is
        // never cut back when it starts again from the beginning
        // (`journal_size_limit` -1): a log cut back grows into new blocks
        // again, which the kernel allocates and zeroes — 6 % of the writer
        // over a 10M-line import (`perf`), a 40-90 ms group every 0.7 s
        // under heavy ingestion. The checkpointer truncates it at a lull.
        // What an earlier run left in the log (before a crash, say) is
        // folded in and truncated now, while nothing else writes.
        if let Err(e) = truncate_log(&self.c, "data") {
            tracing::warn!(error = %e, "the data's log could not be truncated at start");
        }
        let checkpointer = Checkpointer::spawn(db)?;
        self.truncate = Some(checkpointer.asker());
        self.recent_dedup(super::recent::CHUNK, super::recent::FOLD_FLOOR)?;
        self.fold_counts_every(FOLD_COUNTS_EVERY)?;
        self.c
            .pragma_update(None, "wal_autocheckpoint", WAL_BRAKE_FRAMES)?;
        self.c.pragma_update(None, "journal_size_limit", -1)?;
        Ok(Some(Box::new(WalFlusher { wal, checkpointer })))
    }

    fn between_groups(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Some(ask) = &self.truncate else {
            return Ok(());
        };
        if ask.restart_due.swap(false, Ordering::AcqRel) {
            // Nothing else writes now: once this has copied what the
            // checkpointer left, the next commit starts the log again.
            self.c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")?;
        }
        Ok(())
    }

    fn data_version(&mut self) -> Result<i64> {
        Ok(self.c.query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    fn lock(&mut self, _lock: TxLock) -> Result<()> {
        // BEGIN IMMEDIATE already holds the database's only write lock.
        Ok(())
    }

    fn meta_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .c
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn meta_set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.c
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
            .execute(params![key, value])?;
        Ok(())
    }

    fn dedup_claim(&mut self, hashes: &[i64], now_ms: i64) -> Result<Vec<bool>> {
        if let Some(r) = &mut self.recent
            && !self.c.is_autocommit()
        {
            return r.claim(&self.c, hashes, now_ms);
        }
        let mut st = self
            .c
            .prepare_cached("INSERT OR IGNORE INTO dedup (h, seen_ms) VALUES (?1, ?2)")?;
        hashes
            .iter()
            .map(|h| Ok(st.execute(params![h, now_ms])? == 1))
            .collect()
    }

    fn dedup_purge(&mut self, older_than_ms: i64) -> Result<u64> {
        Ok(self
            .c
            .execute("DELETE FROM dedup WHERE seen_ms < ?1", [older_than_ms])? as u64)
    }

    fn profile_create(&mut self, now_ms: i64) -> Result<ProfileId> {
        self.c
            .prepare_cached("INSERT INTO profiles (created_ms, updated_ms) VALUES (?1, ?1)")?
            .execute([now_ms])?;
        Ok(ProfileId(self.c.last_insert_rowid()))
    }

    fn data_key_insert(
        &mut self,
        owner: ProfileId,
        _profile: ProfileId,
        wrapped: &[u8],
    ) -> Result<()> {
        self.keyring_write()?;
        // REPLACE: a key left by a profile whose write rolled back, whose
        // id is now handed out again.
        self.k
            .prepare_cached("INSERT OR REPLACE INTO data_keys (owner_id, wrapped) VALUES (?1, ?2)")?
            .execute(params![owner.0, wrapped])?;
        Ok(())
    }

    fn data_keys_insert(&mut self, rows: &[(ProfileId, ProfileId, Vec<u8>)]) -> Result<()> {
        self.keyring_write()?;
        let mut st = self.k.prepare_cached(
            "INSERT OR REPLACE INTO data_keys (owner_id, wrapped) VALUES (?1, ?2)",
        )?;
        for (owner, _, wrapped) in rows {
            st.execute(params![owner.0, wrapped])?;
        }
        Ok(())
    }

    fn data_key_get(&mut self, owner: ProfileId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .k
            .prepare_cached("SELECT wrapped FROM data_keys WHERE owner_id = ?1")?
            .query_row([owner.0], |r| r.get(0))
            .optional()?)
    }

    fn data_keys_get(&mut self, owners: &[ProfileId]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found: HashMap<i64, Vec<u8>> = HashMap::with_capacity(owners.len());
        // Pages of 500 stay under SQLite's limit on parameters.
        for page in owners.chunks(500) {
            let marks = vec!["?"; page.len()].join(", ");
            let mut st = self.k.prepare_cached(&format!(
                "SELECT owner_id, wrapped FROM data_keys WHERE owner_id IN ({marks})"
            ))?;
            let rows = st.query_map(rusqlite::params_from_iter(page.iter().map(|p| p.0)), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            for r in rows {
                let (owner, wrapped) = r?;
                found.insert(owner, wrapped);
            }
        }
        // An owner asked twice gets its key twice.
        Ok(owners.iter().map(|o| found.get(&o.0).cloned()).collect())
    }

    fn data_key_owners(&mut self, profiles: &[ProfileId]) -> Result<Vec<ProfileId>> {
        // Each profile owns the key it made; the profiles merged into a
        // person are in `profiles`.
        Ok(profiles
            .iter()
            .zip(self.data_keys_get(profiles)?)
            .filter_map(|(&p, k)| k.map(|_| p))
            .collect())
    }

    fn data_keys_destroy(&mut self, owners: &[ProfileId]) -> Result<u64> {
        let held = self.data_keys_get(owners)?.iter().flatten().count();
        // Destroyed once the erasure is durable (see `checkpoint`): a key
        // destroyed before a power cut that then undid the erasure would
        // leave a person nobody can read.
        self.doomed.extend(owners.iter().map(|o| o.0));
        if self.c.is_autocommit() {
            self.destroy_doomed(true)?;
        }
        Ok(held as u64)
    }

    fn data_keys_after(&mut self, after: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut st = self.k.prepare_cached(
            "SELECT owner_id, wrapped FROM data_keys WHERE owner_id > ?1 ORDER BY owner_id LIMIT ?2",
        )?;
        let rows = st.query_map([after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn profile_get(&mut self, id: ProfileId) -> Result<Option<ProfileRow>> {
        Ok(self
            .c
            .prepare_cached(PROFILE_GET)?
            .query_row([id.0], |r| {
                Ok(ProfileRow {
                    id: ProfileId(r.get(0)?),
                    created_ms: r.get(1)?,
                    updated_ms: r.get(2)?,
                    event_count: r.get(3)?,
                    traits: r.get::<_, Option<Vec<u8>>>(4)?.map(Sealed::from_db),
                })
            })
            .optional()?)
    }

    fn profile_set_traits(&mut self, id: ProfileId, sealed: &Sealed, now_ms: i64) -> Result<()> {
        self.c
            .prepare_cached("UPDATE profiles SET traits = ?2, updated_ms = ?3 WHERE id = ?1")?
            .execute(params![id.0, sealed.as_bytes(), now_ms])?;
        Ok(())
    }

    /// Nothing to write: the events after `events_counted.through` are
    /// counted when read, and the writer folds them in every
    /// [`FOLD_COUNTS_EVERY`] events.
    fn profiles_add_events(&mut self, rows: &[(ProfileId, i64)], _now_ms: i64) -> Result<()> {
        if let Some(f) = &mut self.counts {
            f.pending += rows.iter().map(|r| r.1.max(0) as u64).sum::<u64>();
        }
        Ok(())
    }

    fn counted_through(&mut self) -> Result<i64> {
        Ok(self
            .c
            .query_row("SELECT through FROM events_counted", [], |r| r.get(0))?)
    }

    fn profile_merge(
        &mut self,
        from: ProfileId,
        into: ProfileId,
        cause_kind: &str,
        now_ms: i64,
    ) -> Result<()> {
        let c = &self.c;
        c.execute(
            "UPDATE identifiers SET profile_id = ?2 WHERE profile_id = ?1",
            [from.0, into.0],
        )?;
        c.execute(
            "UPDATE events SET profile_id = ?2 WHERE profile_id = ?1",
            [from.0, into.0],
        )?;
        c.execute(
            "UPDATE profiles SET merged_into = ?2 WHERE merged_into = ?1",
            [from.0, into.0],
        )?;
        c.execute(
            "INSERT INTO profile_counts (profile_id, events, last_ms)
                 SELECT ?2, events, last_ms FROM profile_counts WHERE profile_id = ?1
             ON CONFLICT (profile_id) DO UPDATE SET events = events + excluded.events,
                 last_ms = max(last_ms, excluded.last_ms)",
            [from.0, into.0],
        )?;
        c.execute("DELETE FROM profile_counts WHERE profile_id = ?1", [from.0])?;
        c.execute(
            "UPDATE profiles SET updated_ms = ?2 WHERE id = ?1",
            params![into.0, now_ms],
        )?;
        c.execute(
            "UPDATE profiles SET merged_into = ?2, traits = NULL, updated_ms = ?3 WHERE id = ?1",
            params![from.0, into.0, now_ms],
        )?;
        self.merge_record(&MergeRow {
            into_profile: into,
            from_profile: from,
            identifier_kind: cause_kind.to_owned(),
            at_ms: now_ms,
            refused: false,
            reason: None,
        })
    }

    fn merge_record(&mut self, m: &MergeRow) -> Result<()> {
        self.c
            .prepare_cached(
                "INSERT INTO merges (into_profile, from_profile, identifier_kind, at_ms, refused, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                m.into_profile.0,
                m.from_profile.0,
                m.identifier_kind,
                m.at_ms,
                m.refused,
                m.reason
            ])?;
        Ok(())
    }

    fn merges_of(&mut self, profile: ProfileId) -> Result<Vec<MergeRow>> {
        let mut st = self.c.prepare_cached(
            "SELECT into_profile, from_profile, identifier_kind, at_ms, refused, reason FROM merges
             WHERE into_profile = ?1 OR from_profile = ?1
                OR into_profile IN (SELECT id FROM profiles WHERE merged_into = ?1)
             ORDER BY at_ms, id",
        )?;
        let rows = st.query_map([profile.0], |r| {
            Ok(MergeRow {
                into_profile: ProfileId(r.get(0)?),
                from_profile: ProfileId(r.get(1)?),
                identifier_kind: r.get(2)?,
                at_ms: r.get(3)?,
                refused: r.get(4)?,
                reason: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn identifiers_lookup(&mut self, keys: &[BlindIndex]) -> Result<Vec<Option<ProfileId>>> {
        let mut st = self
            .c
            .prepare_cached("SELECT profile_id FROM identifiers WHERE bidx = ?1")?;
        keys.iter()
            .map(|k| {
                Ok(st
                    .query_row([&k.0[..]], |r| r.get(0).map(ProfileId))
                    .optional()?)
            })
            .collect()
    }

    fn identifier_insert(&mut self, row: &IdentifierRow, profile: ProfileId) -> Result<()> {
        self.c
            .prepare_cached(
                "INSERT INTO identifiers (bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                &row.bidx.0[..],
                row.kind,
                profile.0,
                row.key_owner.0,
                row.sealed.as_bytes(),
                row.first_seen_ms,
                row.verified_ms
            ])?;
        Ok(())
    }

    fn identifiers_of(&mut self, profile: ProfileId) -> Result<Vec<IdentifierRow>> {
        let mut st = self.c.prepare_cached(
            "SELECT kind, bidx, key_owner, sealed, first_seen_ms, verified_ms FROM identifiers
             WHERE profile_id = ?1 ORDER BY first_seen_ms, kind",
        )?;
        let rows = st.query_map([profile.0], |r| identifier_row(r, 0))?;
        rows.map(|r| r?).collect()
    }

    fn identifiers_of_many(
        &mut self,
        profiles: &[ProfileId],
    ) -> Result<Vec<(ProfileId, IdentifierRow)>> {
        let mut out = Vec::new();
        // Pages of 500 stay under SQLite's limit on parameters.
        for page in profiles.chunks(500) {
            let marks = vec!["?"; page.len()].join(", ");
            let mut st = self.c.prepare_cached(&format!(
                "SELECT profile_id, kind, bidx, key_owner, sealed, first_seen_ms, verified_ms FROM identifiers
                 WHERE profile_id IN ({marks}) ORDER BY profile_id, first_seen_ms, kind"
            ))?;
            let rows = st.query_map(rusqlite::params_from_iter(page.iter().map(|p| p.0)), |r| {
                Ok((ProfileId(r.get(0)?), identifier_row(r, 1)?))
            })?;
            for r in rows {
                let (p, row) = r?;
                out.push((p, row?));
            }
        }
        Ok(out)
    }

    fn events_insert(&mut self, rows: &[NewEvent]) -> Result<()> {
        let mut st = self.c.prepare_cached(
            "INSERT INTO events (profile_id, key_owner, kind, ts_ms, received_ms, body, source_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in rows {
            st.execute(params![
                e.profile_id.0,
                e.key_owner.0,
                e.kind,
                e.timestamp_ms,
                e.received_ms,
                e.sealed.as_bytes(),
                e.source_id.column()
            ])?;
        }
        Ok(())
    }

    fn events_page(
        &mut self,
        profile: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let mut st = self.c.prepare_cached(
            "SELECT id, key_owner, kind, ts_ms, received_ms, body FROM events
             WHERE profile_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![profile.0, before.unwrap_or(i64::MAX), limit], |r| {
            Ok(EventRow {
                id: r.get(0)?,
                key_owner: ProfileId(r.get(1)?),
                kind: r.get(2)?,
                timestamp_ms: r.get(3)?,
                received_ms: r.get(4)?,
                sealed: Sealed::from_db(r.get(5)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn counts(&mut self) -> Result<StoreCounts> {
        Ok(self.c.query_row(
            "SELECT (SELECT count(*) FROM profiles WHERE merged_into IS NULL),
                    (SELECT count(*) FROM events), (SELECT count(*) FROM identifiers)",
            [],
            |r| {
                Ok(StoreCounts {
                    profiles: r.get(0)?,
                    events: r.get(1)?,
                    identifiers: r.get(2)?,
                })
            },
        )?)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::ConstraintViolation
        {
            return Error::Conflict(e.to_string());
        }
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        {
            return Error::Busy(e.to_string());
        }
        // SQLITE_FULL: a write of the log or the database found no space
        // (ENOSPC, or the file-size quota). SQLite rolled the write back.
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return Error::StorageFull(e.to_string());
        }
        Error::Backend(e.to_string())
    }
}

/// An identifier row from the columns `kind, bidx, key_owner, sealed,
/// first_seen_ms, verified_ms` starting at `at`. The outer result is
/// SQLite's; the inner one a blind index of the wrong length.
fn identifier_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Result<IdentifierRow>> {
    let b: Vec<u8> = r.get(at + 1)?;
    let (kind, key_owner, sealed, first_seen_ms, verified_ms) = (
        r.get(at)?,
        ProfileId(r.get(at + 2)?),
        r.get(at + 3)?,
        r.get(at + 4)?,
        r.get(at + 5)?,
    );
    Ok(bidx_of(b).map(|bidx| IdentifierRow {
        kind,
        bidx,
        key_owner,
        sealed: Sealed::from_db(sealed),
        first_seen_ms,
        verified_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recent messageId digests are appended, folded into `dedup` a sorted
    /// slice at each commit, and never forgotten: across many folds, a
    /// transaction and a savepoint rolled back (whose claims are not
    /// remembered), and a restart in the middle of a fold.
    #[test]
    fn recent_digests_fold_into_dedup_and_are_never_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
        let mut w = b.connect().unwrap();
        w.recent_dedup(100, 10).unwrap();
        let count = |w: &SqliteConn, t: &str| -> i64 {
            w.c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        let digest = |n: i64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64);
        let claim = |w: &mut SqliteConn, hs: &[i64]| -> Vec<bool> {
            w.begin().unwrap();
            let r = w.dedup_claim(hs, 1).unwrap();
            w.commit().unwrap();
            r
        };
        let mut claimed: Vec<i64> = Vec::new();
        let mut n = 0i64;
        let mut folds_seen = 0;
        let mut restarted = false;
        for g in 0..80 {
            let mut ask: Vec<i64> = (0..37).map(|i| digest(n + i)).collect();
            n += 37;
            // Some claimed before, by earlier groups, and one twice here.
            let again: Vec<i64> = claimed.iter().rev().step_by(41).take(4).copied().collect();
            ask.extend(&again);
            let fresh = claim(&mut w, &ask);
            assert!(
                fresh[..37].iter().all(|f| *f),
                "group {g}: new digests are fresh"
            );
            assert!(
                fresh[37..].iter().all(|f| !*f),
                "group {g}: old digests are known"
            );
            claimed.extend(&ask[..37]);
            let (held, folding) = w.recent.as_ref().unwrap().state();
            assert!(held <= 3 * 100 + 2 * 37, "group {g}: {held} digests held");
            if folding {
                folds_seen += 1;
                if folds_seen == 3 && !restarted {
                    // A restart in the middle of a fold: it starts again.
                    drop(w);
                    w = b.connect().unwrap();
                    w.recent_dedup(100, 10).unwrap();
                    assert!(w.recent.as_ref().unwrap().state().1, "the fold goes on");
                    restarted = true;
                }
            }
        }
        assert!(restarted && folds_seen > 10, "{folds_seen} commits folded");
        // Most digests live in `dedup` now; the recent tables hold a few
        // chunks at most.
        let recent = count(&w, "dedup_recent_a") + count(&w, "dedup_recent_b");
        assert!(recent <= 300, "{recent} rows in the recent tables");
        assert!(count(&w, "dedup") + recent >= claimed.len() as i64);
        assert!(count(&w, "dedup") >= claimed.len() as i64 - 300);
        assert!(
            claim(&mut w, &claimed).iter().all(|f| !*f),
            "every digest is known"
        );

        // A transaction rolled back leaves nothing behind.
        let x = digest(-1);
        w.begin().unwrap();
        assert_eq!(w.dedup_claim(&[x], 1).unwrap(), vec![true]);
        w.rollback().unwrap();
        // So does a job rolled back to its savepoint.
        let (y, z) = (digest(-2), digest(-3));
        w.begin().unwrap();
        w.exec("SAVEPOINT tx_job", &[]).unwrap();
        assert_eq!(w.dedup_claim(&[y], 1).unwrap(), vec![true]);
        w.exec("ROLLBACK TO SAVEPOINT tx_job", &[]).unwrap();
        w.exec("RELEASE SAVEPOINT tx_job", &[]).unwrap();
        assert_eq!(w.dedup_claim(&[z], 1).unwrap(), vec![true]);
        w.commit().unwrap();
        assert_eq!(claim(&mut w, &[x, y, z]), vec![true, true, false]);

        // And a new start knows everything.
        drop(w);
        let mut w = b.connect().unwrap();
        w.recent_dedup(100, 10).unwrap();
        claimed.extend([x, y, z]);
        assert!(
            claim(&mut w, &claimed).iter().all(|f| !*f),
            "every digest is known after a restart"
        );
    }

    #[test]
    fn a_checkpoint_held_off_by_a_reader_says_so_then_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let b = SqliteBackend::open(&path).unwrap();
        let mut w = b.connect().unwrap();
        let r = b.connect().unwrap();
        w.meta_set("a", b"1").unwrap();
        // A reader on the snapshot before the next commit.
        r.c.execute_batch("BEGIN").unwrap();
        let _: i64 =
            r.c.query_row("SELECT count(*) FROM meta", [], |x| x.get(0))
                .unwrap();
        w.meta_set("b", &[7u8; 8192]).unwrap();
        let t = std::time::Instant::now();
        let e = w.checkpoint().expect_err("a reader holds the log");
        assert!(matches!(e, Error::Busy(_)), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        r.c.execute_batch("COMMIT").unwrap();
        w.checkpoint().unwrap();
        let wal = std::fs::metadata(dir.path().join("t.db-wal")).unwrap();
        assert_eq!(wal.len(), 0, "truncated");
    }

    /// Many keys at once answer as one at a time would: in the order
    /// asked, `None` for an owner without one, twice for an owner asked
    /// twice, past a page of 500; and a statement's `$n` bind by number
    /// however often the same text runs.
    #[test]
    fn data_keys_in_bulk_answer_as_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
        let mut c = b.connect().unwrap();
        for o in 1..=700i64 {
            c.data_key_insert(ProfileId(o), ProfileId(o), &o.to_be_bytes())
                .unwrap();
        }
        let mut asked: Vec<ProfileId> = (1..=700).rev().map(ProfileId).collect();
        asked.extend([ProfileId(5), ProfileId(9999), ProfileId(5)]);
        let one: Vec<_> = asked.iter().map(|o| c.data_key_get(*o).unwrap()).collect();
        assert_eq!(c.data_keys_get(&asked).unwrap(), one);
        assert_eq!(one[700], Some(5i64.to_be_bytes().to_vec()));
        assert_eq!(one[701], None);
        for _ in 0..2 {
            let r = c
                .query("SELECT $2 - $1, $1", &[P::Int(1), P::Int(10)])
                .unwrap();
            assert_eq!((r[0].int(0).unwrap(), r[0].int(1).unwrap()), (9, 1));
        }
    }

    /// A new `tarmo.db` as a release before migration `version` left it
    /// (every earlier migration applied and recorded), holding `rows`.
    fn migrated_before(version: i64, rows: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarmo.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for (v, sql) in crate::migrations::sqlite()
            .into_iter()
            .filter(|(v, _)| *v < version)
        {
            c.execute_batch(&sql).unwrap();
            c.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [v])
                .unwrap();
        }
        c.execute_batch(rows).unwrap();
        (dir, path)
    }

    /// A database made before migration 21 keeps each profile's event
    /// count and last event time, now in the narrow `profile_counts` table
    /// (a counter write no longer rewrites the profile's wide row); new
    /// events and a merge add to them.
    #[test]
    fn migration_21_moves_event_counts_and_merges_add_them_up() {
        let (_dir, path) = migrated_before(
            21,
            "INSERT INTO profiles (id, created_ms, updated_ms, event_count, traits)
                     VALUES (1, 1, 50, 7, x'01'), (2, 2, 60, 0, NULL), (3, 3, 70, 2, NULL);",
        );
        let b = SqliteBackend::open(&path).unwrap();
        let mut c = b.connect().unwrap();
        let seen = |c: &mut SqliteConn, id: i64| {
            let r = c.profile_get(ProfileId(id)).unwrap().unwrap();
            (r.id.0, r.event_count, r.updated_ms)
        };
        assert_eq!(seen(&mut c, 1), (1, 7, 50));
        assert_eq!(seen(&mut c, 2), (2, 0, 60));
        let moved: i64 =
            c.c.query_row("SELECT count(*) FROM profile_counts", [], |r| r.get(0))
                .unwrap();
        assert_eq!(moved, 2, "a profile without events needs no row");
        // New events count from the events table until the writer folds
        // them in.
        stored(&mut c, &[(1, 80), (1, 80), (1, 80), (2, 80)]);
        assert_eq!(seen(&mut c, 1), (1, 10, 80));
        assert_eq!(seen(&mut c, 2), (2, 1, 80));
        c.profile_merge(ProfileId(3), ProfileId(1), "email", 90)
            .unwrap();
        assert_eq!(seen(&mut c, 1), (1, 12, 90));
        assert_eq!(
            seen(&mut c, 3),
            (1, 12, 90),
            "3 reads as the profile it joined"
        );
        let left: i64 =
            c.c.query_row(
                "SELECT count(*) FROM profile_counts WHERE profile_id = 3",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Store one event for each `(profile, received_ms)`, as the writer
    /// does, and give their ids.
    fn stored(c: &mut SqliteConn, events: &[(i64, i64)]) -> Vec<i64> {
        let rows: Vec<NewEvent> = events
            .iter()
            .map(|&(p, at)| NewEvent {
                profile_id: ProfileId(p),
                key_owner: ProfileId(p),
                source_id: crate::conn::Source::Import(1),
                kind: "track",
                timestamp_ms: at,
                received_ms: at,
                sealed: Sealed::from_db(vec![0; 40]),
            })
            .collect();
        let ids = c.events_insert_returning_ids(&rows).unwrap();
        let mut counts: Vec<(ProfileId, i64)> = Vec::new();
        for &(p, _) in events {
            counts.push((ProfileId(p), 1));
        }
        c.profiles_add_events(&counts, 0).unwrap();
        ids
    }

    /// Migration 27 on a database whose newest events were deleted: the
    /// events' ids become `AUTOINCREMENT` in place, so the next event takes
    /// a new id, not the deleted one's; the counters written before it
    /// stand as they were.
    #[test]
    fn migration_27_never_gives_an_event_id_twice_and_keeps_the_counts() {
        let (_dir, path) = migrated_before(
            27,
            "INSERT INTO profiles (id, created_ms, updated_ms) VALUES (1, 1, 10), (2, 2, 20);
             INSERT INTO events (id, profile_id, key_owner, kind, ts_ms, received_ms, body)
                 VALUES (1, 1, 1, 'track', 5, 30, x'00'), (2, 1, 1, 'track', 5, 40, x'00'),
                        (3, 2, 2, 'track', 5, 50, x'00'), (4, 2, 2, 'track', 5, 60, x'00');
             INSERT INTO profile_counts (profile_id, events, last_ms) VALUES (1, 2, 40), (2, 1, 60);
             DELETE FROM events WHERE id = 4;",
        );
        let b = SqliteBackend::open(&path).unwrap();
        let mut c = b.connect().unwrap();
        let declared: String =
            c.c.query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            declared.contains("id INTEGER PRIMARY KEY AUTOINCREMENT"),
            "{declared}"
        );
        assert!(
            declared.contains("source_id"),
            "the added column stays: {declared}"
        );
        let check: String =
            c.c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
        assert_eq!(check, "ok");
        let seen = |c: &mut SqliteConn, id: i64| {
            let r = c.profile_get(ProfileId(id)).unwrap().unwrap();
            (r.event_count, r.updated_ms)
        };
        assert_eq!((seen(&mut c, 1), seen(&mut c, 2)), ((2, 40), (1, 60)));

        // Erase the newest event again, and the one before: ids still go up.
        c.c.execute("DELETE FROM events WHERE id = 3", []).unwrap();
        let ids = stored(&mut c, &[(2, 70)]);
        assert_eq!(ids, vec![4], "after the largest id ever given (3)");
        c.c.execute("DELETE FROM events WHERE id = 4", []).unwrap();
        let ids = stored(&mut c, &[(1, 80)]);
        assert_eq!(ids, vec![5], "id 4 is not given again");
        // Reopened, the declaration holds for a new connection too.
        drop(c);
        let b = SqliteBackend::open(&path).unwrap();
        let mut c = b.connect().unwrap();
        c.c.execute("DELETE FROM events WHERE id = 5", []).unwrap();
        assert_eq!(stored(&mut c, &[(1, 90)]), vec![6]);
        assert_eq!(
            seen(&mut c, 1),
            (3, 90),
            "2 counted before, 6 after the mark"
        );
    }

    /// The writer folds the newest events' counts into `profile_counts`
    /// once enough were stored, at a commit; before and after, a profile
    /// counts every event it has (the counted ones plus those after the
    /// mark); a deleted event comes off the count whether it was folded or
    /// not; a rolled-back event is never counted; and a merge carries both
    /// kinds to the profile joined.
    #[test]
    fn event_counts_fold_in_batches_and_read_the_same_throughout() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("tarmo.db")).unwrap();
        let mut c = b.connect().unwrap();
        c.fold_counts_every(4).unwrap();
        c.c.execute_batch(
            "INSERT INTO profiles (id, created_ms, updated_ms) VALUES (1, 1, 1), (2, 2, 2), (3, 3, 3)",
        )
        .unwrap();
        let mark = |c: &SqliteConn| -> i64 {
            c.c.query_row("SELECT through FROM events_counted", [], |r| r.get(0))
                .unwrap()
        };
        let rows = |c: &SqliteConn| -> i64 {
            c.c.query_row("SELECT count(*) FROM profile_counts", [], |r| r.get(0))
                .unwrap()
        };
        let seen = |c: &mut SqliteConn, id: i64| {
            let r = c.profile_get(ProfileId(id)).unwrap().unwrap();
            (r.event_count, r.updated_ms)
        };

        c.begin().unwrap();
        let first = stored(&mut c, &[(1, 10), (2, 11), (1, 12)]);
        c.commit().unwrap();
        assert_eq!((mark(&c), rows(&c)), (0, 0), "three events: not yet");
        assert_eq!((seen(&mut c, 1), seen(&mut c, 2)), ((2, 12), (1, 11)));

        // A fourth event would bring the fold; rolled back, it is never
        // counted.
        c.begin().unwrap();
        stored(&mut c, &[(3, 13)]);
        c.rollback().unwrap();
        assert_eq!((mark(&c), rows(&c)), (0, 0));
        assert_eq!(seen(&mut c, 3), (0, 3));

        c.begin().unwrap();
        let second = stored(&mut c, &[(3, 14), (1, 15)]);
        c.commit().unwrap();
        assert_eq!(mark(&c), second[1], "folded through the newest");
        assert_eq!(rows(&c), 3);
        assert_eq!(
            (seen(&mut c, 1), seen(&mut c, 2), seen(&mut c, 3)),
            ((3, 15), (1, 11), (1, 14))
        );

        // After the mark again, then deletions on both sides of it.
        c.begin().unwrap();
        let third = stored(&mut c, &[(2, 20), (2, 21)]);
        c.commit().unwrap();
        assert_eq!(mark(&c), second[1], "two events: not yet");
        assert_eq!(seen(&mut c, 2), (3, 21));
        c.begin().unwrap();
        for id in [first[1], third[0]] {
            c.c.execute("DELETE FROM events WHERE id = ?1", [id])
                .unwrap();
        }
        c.events_removed(&[(ProfileId(2), first[1]), (ProfileId(2), third[0])])
            .unwrap();
        c.commit().unwrap();
        assert_eq!(
            seen(&mut c, 2).0,
            1,
            "one counted, one after the mark, both gone"
        );

        // A merge carries the counted events and those after the mark.
        c.profile_merge(ProfileId(2), ProfileId(1), "email", 30)
            .unwrap();
        assert_eq!(seen(&mut c, 1), (4, 30));
        assert_eq!(seen(&mut c, 2), (4, 30), "2 reads as the profile it joined");

        // Another connection reads the same, and a writer's connection
        // opened later knows how many wait to be folded.
        let mut other = b.connect().unwrap();
        assert_eq!(seen(&mut other, 1), (4, 30));
        let plan: Vec<String> = {
            let mut st = other
                .c
                .prepare(&format!("EXPLAIN QUERY PLAN {PROFILE_GET}"))
                .unwrap();
            st.query_map([1], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert!(
            plan.iter()
                .any(|l| l.contains("events_profile (profile_id=? AND id>?)")),
            "the events after the mark are found through the index: {plan:?}"
        );
        other.fold_counts_every(1).unwrap();
        other.begin().unwrap();
        other.commit().unwrap();
        assert_eq!(mark(&other), third[1], "folded at its first commit");
        assert_eq!(seen(&mut other, 1), (4, 30));
        assert_eq!(seen(&mut c, 3), (1, 14));
    }

    /// A database made before migration 22 kept the data keys in its own
    /// file: they move to the keyring file (a key a restore left empty
    /// does not), the table leaves the database, and the values open.
    #[test]
    fn migration_22_moves_the_data_keys_into_the_keyring_file() {
        let (dir, path) = migrated_before(
            22,
            "INSERT INTO profiles (id, created_ms, updated_ms) VALUES (1, 1, 1), (2, 2, 2), (3, 3, 3);
                 INSERT INTO data_keys (owner_id, profile_id, wrapped)
                     VALUES (1, 1, x'0a0b0c'), (2, 1, x'0d0e0f'), (3, 3, x'');",
        );
        let b = SqliteBackend::open(&path).unwrap();
        assert_eq!(b.keyring(), dir.path().join("keyring.db"));
        let mut c = b.connect().unwrap();
        let ids = [ProfileId(1), ProfileId(2), ProfileId(3)];
        assert_eq!(
            c.data_keys_get(&ids).unwrap(),
            vec![Some(vec![10, 11, 12]), Some(vec![13, 14, 15]), None]
        );
        let left: bool =
            c.c.prepare("SELECT 1 FROM sqlite_master WHERE name = 'data_keys'")
                .unwrap()
                .exists([])
                .unwrap();
        assert!(!left, "the data file holds no key table any more");
        drop(c);
        // Opening again moves nothing twice and loses nothing.
        let mut c = SqliteBackend::open(&path).unwrap().connect().unwrap();
        assert_eq!(c.data_keys_after(0, 10).unwrap().len(), 2);
    }

    /// A database made before migration 23 kept the identifiers in a table
    /// ordered by blind index: they move, every column kept, into a table
    /// numbered in arrival order with a unique index of blind indexes, and
    /// they are found, listed, merged and refused twice as before.
    #[test]
    fn migration_23_appends_identifiers_and_keeps_them_unique() {
        let (_dir, path) = migrated_before(
            23,
            "INSERT INTO profiles (id, created_ms, updated_ms) VALUES (1, 1, 1), (2, 2, 2);
             INSERT INTO identifiers (bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms)
                 VALUES (x'0f000000000000000000000000000000', 'email', 1, 1, x'aa', 10, 11),
                        (x'01000000000000000000000000000000', 'phone', 1, 1, x'bb', 12, NULL),
                        (x'07000000000000000000000000000000', 'email', 2, 2, x'cc', 13, NULL);",
        );
        let b = SqliteBackend::open(&path).unwrap();
        let mut c = b.connect().unwrap();
        let bidx = |first: u8| {
            let mut k = [0u8; crate::crypto::vault::BIDX_LEN];
            k[0] = first;
            BlindIndex(k)
        };
        let table: String =
            c.c.query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'identifiers'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!table.contains("WITHOUT ROWID"), "{table}");
        assert_eq!(
            c.identifiers_lookup(&[bidx(0x0f), bidx(0x07), bidx(0x02)])
                .unwrap(),
            vec![Some(ProfileId(1)), Some(ProfileId(2)), None]
        );
        let of_1 = c.identifiers_of(ProfileId(1)).unwrap();
        let seen: Vec<_> = of_1
            .iter()
            .map(|r| {
                (
                    r.kind.as_str(),
                    r.bidx,
                    r.sealed.as_bytes().to_vec(),
                    r.first_seen_ms,
                    r.verified_ms,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("email", bidx(0x0f), vec![0xaa], 10, Some(11)),
                ("phone", bidx(0x01), vec![0xbb], 12, None)
            ]
        );
        // The blind index stays unique: a second row for it is refused.
        let again = IdentifierRow {
            kind: "email".into(),
            bidx: bidx(0x07),
            key_owner: ProfileId(1),
            sealed: of_1[0].sealed.clone(),
            first_seen_ms: 20,
            verified_ms: None,
        };
        assert!(c.identifier_insert(&again, ProfileId(1)).is_err());
        c.profile_merge(ProfileId(2), ProfileId(1), "email", 30)
            .unwrap();
        assert_eq!(c.identifiers_of(ProfileId(1)).unwrap().len(), 3);
        let plan: String =
            c.c.query_row(
                "EXPLAIN QUERY PLAN SELECT profile_id FROM identifiers WHERE bidx = x'00'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("identifiers_bidx"), "{plan}");
        // The consent lifetimes' questions use the index of granted states.
        for q in [
            "SELECT profile_id FROM consent_state
             WHERE purpose_id = 'p' AND decision = 'granted' AND at_ms <= 5 LIMIT 1000",
            "SELECT count(*) FROM consent_state WHERE purpose_id = 'p' AND decision = 'granted'
             AND at_ms > 1 AND at_ms <= 5",
        ] {
            let plan: String =
                c.c.query_row(&format!("EXPLAIN QUERY PLAN {q}"), [], |r| r.get(3))
                    .unwrap();
            assert!(plan.contains("consent_state_expiry"), "{plan}");
        }
        drop(c);
        // Opening again moves nothing twice.
        let mut c = SqliteBackend::open(&path).unwrap().connect().unwrap();
        assert_eq!(c.identifiers_of(ProfileId(1)).unwrap().len(), 3);
    }

    /// A key is committed, synced, before the data that needs it: a
    /// transaction rolled back takes its keys with it; a key whose data
    /// then failed to commit is an orphan, dropped at the next start.
    #[test]
    fn keys_commit_before_the_data_and_orphans_go_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarmo.db");
        let b = SqliteBackend::open(&path).unwrap();
        let mut w = b.connect().unwrap();
        let mut r = b.connect().unwrap();
        w.begin().unwrap();
        let p = w.profile_create(1).unwrap();
        w.data_key_insert(p, p, b"key-1").unwrap();
        // Inside the transaction the writer reads its own key; no one else does.
        assert_eq!(w.data_key_get(p).unwrap(), Some(b"key-1".to_vec()));
        assert_eq!(r.data_key_get(p).unwrap(), None);
        w.commit().unwrap();
        assert_eq!(r.data_key_get(p).unwrap(), Some(b"key-1".to_vec()));

        w.begin().unwrap();
        let q = w.profile_create(2).unwrap();
        w.data_key_insert(q, q, b"key-2").unwrap();
        w.rollback().unwrap();
        assert_eq!(
            r.data_key_get(q).unwrap(),
            None,
            "rolled back with the data"
        );

        // The keyring committed, the data not (a crash between the two).
        w.begin().unwrap();
        let o = w.profile_create(3).unwrap();
        w.data_key_insert(o, o, b"key-3").unwrap();
        w.k.execute_batch("COMMIT").unwrap();
        w.c.execute_batch("ROLLBACK").unwrap();
        assert_eq!(r.data_key_get(o).unwrap(), Some(b"key-3".to_vec()));
        drop((w, r));
        let b = SqliteBackend::open(&path).unwrap();
        let mut r = b.connect().unwrap();
        assert_eq!(r.data_key_get(o).unwrap(), None, "the orphan is dropped");
        assert_eq!(r.data_key_get(p).unwrap(), Some(b"key-1".to_vec()));
        // Its id is handed out again, with a new key.
        let mut w = b.connect().unwrap();
        w.begin().unwrap();
        let again = w.profile_create(4).unwrap();
        w.data_key_insert(again, again, b"key-4").unwrap();
        w.commit().unwrap();
        assert_eq!(r.data_key_get(again).unwrap(), Some(b"key-4".to_vec()));
    }

    /// No file in `dir` holds `bytes`.
    fn no_file_holds(dir: &std::path::Path, bytes: &[u8]) {
        for f in std::fs::read_dir(dir).unwrap() {
            let f = f.unwrap().path();
            let held = std::fs::read(&f).unwrap();
            assert!(
                !held.windows(bytes.len()).any(|w| w == bytes),
                "{} still holds the erased bytes",
                f.display()
            );
        }
    }

    /// An erasure's keys go only once its commit is durable, at the
    /// checkpoint; a key whose profile is still there (its job rolled back
    /// to a savepoint) stays; the keyring's log is truncated and its file
    /// no longer holds the key's bytes.
    #[test]
    fn an_erasures_keys_go_after_its_commit_and_leave_no_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarmo.db");
        let b = SqliteBackend::open(&path).unwrap();
        let mut w = b.connect().unwrap();
        let key = b"wrapped-key-bytes-0123456789abcdef".to_vec();
        w.begin().unwrap();
        let (p, q) = (w.profile_create(1).unwrap(), w.profile_create(1).unwrap());
        w.data_key_insert(p, p, &key).unwrap();
        w.data_key_insert(q, q, b"the other").unwrap();
        w.commit().unwrap();

        w.begin().unwrap();
        w.exec("DELETE FROM profiles WHERE id = $1", &[P::Int(p.0)])
            .unwrap();
        assert_eq!(w.data_key_owners(&[p, q]).unwrap(), vec![p, q]);
        assert_eq!(w.data_keys_destroy(&[p, q]).unwrap(), 2);
        // Not yet: the erasure is not durable.
        assert_eq!(w.data_key_get(p).unwrap(), Some(key.clone()));
        w.commit().unwrap();
        w.checkpoint().unwrap();
        assert_eq!(w.data_key_get(p).unwrap(), None);
        assert_eq!(
            w.data_key_get(q).unwrap(),
            Some(b"the other".to_vec()),
            "q's profile is still there"
        );
        let wal = std::fs::metadata(dir.path().join("keyring.db-wal")).unwrap();
        assert_eq!(wal.len(), 0, "the keyring's log is truncated");
        no_file_holds(dir.path(), &key);

        // A rollback forgets what it doomed.
        w.begin().unwrap();
        w.data_keys_destroy(&[q]).unwrap();
        w.rollback().unwrap();
        w.checkpoint().unwrap();
        assert!(w.data_key_get(q).unwrap().is_some());
    }

    /// The writer's erasure answers without truncating the data's log;
    /// the checkpointer truncates it at the next lull, and the erased
    /// bytes are then in no file.
    #[test]
    fn the_data_log_is_truncated_at_the_next_lull_after_an_erasure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarmo.db");
        let b = SqliteBackend::open(&path).unwrap();
        let mut w = b.connect().unwrap();
        let mut flusher = w.defer_sync().unwrap().expect("a log to flush");
        let marker = b"sealed-bytes-of-an-erased-person-7d1f".to_vec();
        w.begin().unwrap();
        let p = w.profile_create(1).unwrap();
        w.data_key_insert(p, p, b"its key").unwrap();
        w.meta_set("erased-person", &marker).unwrap();
        w.commit().unwrap();
        flusher.flush().unwrap();

        w.begin().unwrap();
        w.exec("DELETE FROM profiles WHERE id = $1", &[P::Int(p.0)])
            .unwrap();
        w.exec("DELETE FROM meta WHERE key = 'erased-person'", &[])
            .unwrap();
        w.data_keys_destroy(&[p]).unwrap();
        w.commit().unwrap();
        w.checkpoint().unwrap();
        flusher.flush().unwrap();
        assert_eq!(w.data_key_get(p).unwrap(), None);
        let wal = dir.path().join("tarmo.db-wal");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&wal).unwrap().len() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the data's log was not truncated within 10 s of quiet"
            );
            // As on a running server: the workers that poll for due
            // messages commit and flush a transaction that changes nothing.
            poll_for_nothing(&mut w, &mut *flusher);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        no_file_holds(dir.path(), &marker);
    }

    /// What a worker polling for due work commits when there is none: a
    /// write transaction that changes nothing, flushed.
    fn poll_for_nothing(w: &mut SqliteConn, flusher: &mut dyn Flusher) {
        w.begin().unwrap();
        w.exec(
            "UPDATE meta SET value = value WHERE key = 'no such key'",
            &[],
        )
        .unwrap();
        w.commit().unwrap();
        flusher.flush().unwrap();
    }

    /// The log's frames: (in the log, copied into the database).
    fn log_frames(c: &Connection) -> (i64, i64) {
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    /// Under load the log never empties by itself: once a background
    /// checkpoint finds 64 MiB in it, the writer copies the rest between two
    /// groups and the next commit starts the log again, in the same file
    /// (never cut back while the writer writes); at a lull the grown file is
    /// truncated.
    #[test]
    fn a_long_log_starts_again_between_groups_and_is_cut_back_at_a_lull() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarmo.db");
        let b = SqliteBackend::open(&path).unwrap();
        let mut w = b.connect().unwrap();
        let mut flusher = w.defer_sync().unwrap().expect("a log to flush");
        let due = w.truncate.as_ref().unwrap().restart_due.clone();
        let wal = dir.path().join("tarmo.db-wal");
        // Nothing to do while the log is short.
        w.between_groups().unwrap();
        // 72 MiB of log in 1 MiB rows, committed and flushed (which wakes
        // the checkpointer) one by one.
        w.exec("CREATE TABLE bulk (b BLOB)", &[]).unwrap();
        let row = vec![7u8; 1 << 20];
        for _ in 0..72 {
            w.begin().unwrap();
            w.exec("INSERT INTO bulk (b) VALUES ($1)", &[P::Blob(&row)])
                .unwrap();
            w.commit().unwrap();
            flusher.flush().unwrap();
        }
        let mut small = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !due.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpointer did not find the long log within 10 s"
            );
            // Each flush wakes it; a small commit keeps it waking.
            w.begin().unwrap();
            w.exec("INSERT INTO bulk (b) VALUES (x'01')", &[]).unwrap();
            w.commit().unwrap();
            small += 1;
            flusher.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let (before, _) = log_frames(&w.c);
        assert!(before >= WAL_RESTART_FRAMES, "{before} frames");
        let grown = std::fs::metadata(&wal).unwrap().len();
        w.between_groups().unwrap();
        assert!(!due.load(Ordering::Acquire), "the restart was taken");
        let (frames, copied) = log_frames(&w.c);
        assert_eq!(frames, copied, "everything copied into the database");
        w.begin().unwrap();
        w.exec("INSERT INTO bulk (b) VALUES (x'02')", &[]).unwrap();
        w.commit().unwrap();
        flusher.flush().unwrap();
        let (after, _) = log_frames(&w.c);
        assert!(after < 10, "the log started again: {after} frames");
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            grown,
            "not cut back while the writer writes"
        );
        // A lull (5 s without a change, though pollers still flush): the
        // file is truncated.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::fs::metadata(&wal).unwrap().len() > WAL_KEEP_BYTES {
            assert!(
                std::time::Instant::now() < deadline,
                "the grown log was not truncated at a lull"
            );
            poll_for_nothing(&mut w, &mut *flusher);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let n: i64 =
            w.c.query_row("SELECT count(*) FROM bulk", [], |r| r.get(0))
                .unwrap();
        assert_eq!(n, 72 + small + 1, "nothing lost");
    }

    /// A database made before migration 5, whose newest profile was erased:
    /// after the upgrade, its id is not given again, and nothing is lost.
    #[test]
    fn migration_5_keeps_rows_and_never_gives_an_erased_id_again() {
        let (_dir, path) = migrated_before(
            5,
            "INSERT INTO profiles (id, created_ms, updated_ms, traits) VALUES (1, 1, 1, x'01'), (2, 2, 2, NULL), (3, 3, 3, NULL);
                 INSERT INTO consent_ledger (seq, profile_id, key_owner, purpose_id, decision, method, notice_version,
                     notice_seq, at_ms, recorded_ms, source, evidence, prev_hash, hash)
                     VALUES (1, 3, 3, 'p', 'granted', 'api', 'v', 1, 3, 3, 's', x'00', x'00', x'00');
                 INSERT INTO outbox (id, profile_id, key_owner, channel, kind, created_ms, next_attempt_ms, status)
                     VALUES (7, 3, 3, 'email', 'confirmation', 3, 3, 'sent');
                 DELETE FROM profiles WHERE id = 3;
                 DELETE FROM outbox WHERE id = 7;",
        );
        let b = SqliteBackend::open(&path).unwrap();
        let mut c = b.connect().unwrap();
        assert_eq!(
            c.profile_create(10).unwrap(),
            ProfileId(4),
            "3 was erased; it stays gone"
        );
        let kept: Vec<(i64, Option<Vec<u8>>)> =
            c.c.prepare("SELECT id, traits FROM profiles ORDER BY id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
        assert_eq!(kept, [(1, Some(vec![1])), (2, None), (4, None)]);
        c.c.execute("DELETE FROM profiles WHERE id = 4", [])
            .unwrap();
        assert_eq!(c.profile_create(11).unwrap(), ProfileId(5));
        c.c.execute_batch(
            "INSERT INTO outbox (profile_id, key_owner, channel, kind, created_ms, next_attempt_ms, status)
                 VALUES (5, 5, 'email', 'confirmation', 11, 11, 'pending')",
        )
        .unwrap();
        let outbox_id: i64 =
            c.c.query_row("SELECT max(id) FROM outbox", [], |r| r.get(0))
                .unwrap();
        assert!(outbox_id >= 1);
        c.c.execute("DELETE FROM outbox", []).unwrap();
        c.c.execute_batch(
            "INSERT INTO outbox (profile_id, key_owner, channel, kind, created_ms, next_attempt_ms, status)
                 VALUES (5, 5, 'email', 'confirmation', 12, 12, 'pending')",
        )
        .unwrap();
        let next: i64 =
            c.c.query_row("SELECT max(id) FROM outbox", [], |r| r.get(0))
                .unwrap();
        assert_eq!(next, outbox_id + 1, "a message id is never given twice");
    }
}
