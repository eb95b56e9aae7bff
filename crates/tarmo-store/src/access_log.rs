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
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::conn::{Conn, KeyId, P, ProfileId, TxLock};
use crate::crypto::chain::{Chain, Link, VerifyReport};
use crate::vault::Vault;
use crate::writer::WriterHandle;
use crate::{Error, Result, rfc3339};

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
pub fn append(conn: &mut dyn Conn, vault: &Vault, records: &[AccessRecord]) -> Result<()> {
    if records.is_empty() {
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
                action: match action.as_str() {
                    "read" => "read",
                    "export" => "export",
                    "decisions" => "decisions",
                    "users" => "users",
                    _ => "unknown",
                },
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

/// Appends records through the writer, many to a transaction. `record`
/// waits until the record is durable; `count` adds to an in-memory tally
/// flushed every few seconds and at shutdown.
#[derive(Clone)]
pub struct AccessLogger {
    tx: SyncSender<(AccessRecord, Option<Done>)>,
    tally: Arc<Mutex<Tally>>,
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

pub struct LoggerThread {
    join: JoinHandle<()>,
}

impl LoggerThread {
    /// Waits until every record sent before the last `AccessLogger` was
    /// dropped is written.
    pub fn join(self) {
        let _ = self.join.join();
    }
}

impl AccessLogger {
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
            move || run(&writer, &rx, &t),
        )
        .expect("spawn the access log thread");
        (Self { tx, tally }, LoggerThread { join })
    }

    /// Log a read of people's data; returns once it is durable.
    pub fn record(&self, r: AccessRecord) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send((r, Some(tx))).map_err(|_| Error::WriterGone)?;
        rx.recv().map_err(|_| Error::WriterGone)?
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

fn run(writer: &WriterHandle, rx: &Receiver<(AccessRecord, Option<Done>)>, tally: &Mutex<Tally>) {
    let mut last_flush = Instant::now();
    loop {
        let first = match rx.recv_timeout(TALLY_FLUSH) {
            Ok(x) => Some(x),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                write(writer, tally, drain_tally(tally), Vec::new());
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
        write(writer, tally, records, waiters);
    }
}

fn write(
    writer: &WriterHandle,
    tally: &Mutex<Tally>,
    records: Vec<AccessRecord>,
    waiters: Vec<Done>,
) {
    if records.is_empty() {
        return;
    }
    let n = records.len();
    // Decision counts go back to the tally should the write fail (a full
    // disk): they are written with the next batch, not lost.
    let counts: Vec<AccessRecord> = records
        .iter()
        .filter(|r| r.action == "decisions")
        .cloned()
        .collect();
    let r = writer.transact_blocking(move |ctx| append(ctx.conn, ctx.vault, &records));
    if let Err(e) = &r {
        tracing::error!(error = %e, records = n, "writing the access log failed");
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
    for w in waiters {
        // A read that could not be logged is refused: the reader hears why
        // (a full disk answers 507 like any write).
        let _ = w.send(match &r {
            Ok(()) => Ok(()),
            Err(Error::StorageFull(why)) => Err(Error::StorageFull(format!("access log: {why}"))),
            // The read is refused either way; a database that is away is
            // said as such (503, retry), not as an internal error.
            Err(Error::Unavailable(why)) => Err(Error::Unavailable(format!("access log: {why}"))),
            Err(e) => Err(Error::Backend(format!("access log: {e}"))),
        });
    }
}
