//! Group commit: one thread owns the write connection; requests queue their
//! events, and every transaction takes all that is waiting, so concurrent
//! requests share one fsync. A request is answered only after its events'
//! transaction committed.
//!
//! Every other write that may touch identities or the consent ledger (a
//! subscription, a confirmation, an erasure) comes as a transaction job
//! ([`WriterHandle::transact`]) and runs on the same thread in a transaction
//! of its own, so that on SQLite there is one writer and its identity cache
//! stays true. Writes by another process (a `tarmo import` next to a running
//! server) are noticed through SQLite's `data_version`, and the cache is
//! dropped.
//!
//! Pipelined commit (SQLite): the writer's commits write the log without
//! waiting for the disk, and a second thread, the flusher, makes them
//! durable with one fdatasync for every commit written meanwhile, and only
//! then answers their requests. So the writer resolves group N+1 while the
//! disk flushes group N, and no request hears "done" before its events are
//! on stable storage.
//!
//! Faults: every job runs under `catch_unwind`. A job that panics is rolled
//! back and answered [`Error::Panicked`], and the writer goes on with the
//! next; a panic outside a job marks the writer down in [`Health`] and the
//! loop starts again after a backoff, keeping its queue. A full disk fails
//! the transaction with [`Error::StorageFull`] (SQLite rolled it back); the
//! writer answers so, and writes again once there is space.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::{Conn, Flusher, ProfileId};
use crate::consent::{Catalog, CatalogCache};
use crate::health::{Backoff, Health};
use crate::metrics::WriterMetrics;
use crate::resolve::{Outcome, PreparedEvent, PreparedIdentifier, Resolver};
use crate::vault::BlindIndex;
use crate::vault::Vault;
use crate::{Error, Result, now_ms};

pub type Reply = Box<dyn FnOnce(Result<Vec<Outcome>>) + Send>;

struct Job {
    events: Vec<PreparedEvent>,
    reply: Reply,
}

/// What a transaction job sees: the writer's connection inside an open
/// transaction, the vault, the catalog, and identity resolution with the
/// writer's cache.
pub struct TxCtx<'a> {
    pub conn: &'a mut dyn Conn,
    pub vault: &'a Vault,
    pub catalog: Arc<Catalog>,
    pub now_ms: i64,
    resolver: &'a mut Resolver,
    checkpoint: bool,
}

/// Entries each identity cache (blind index → profile, profile → facts)
/// may hold while an import applies records: a customer file of a million
/// people names two million identifiers, and an orders file then reads
/// each of those people again. About 160 MB at most, for the import's
/// duration only; outside it the writer keeps `WriterConfig::cache_capacity`.
pub const BULK_IDENTITY_CACHE: usize = 2_000_000;

impl TxCtx<'_> {
    /// The profile these identifiers name, created, attached or merged by
    /// the identity rules.
    pub fn resolve(&mut self, identifiers: &[PreparedIdentifier]) -> Result<ProfileId> {
        self.resolver
            .resolve_identifiers(self.conn, self.vault, identifiers, self.now_ms)
    }

    /// The profiles several identifier sets name, in order, resolved in
    /// one pass (one lookup, one write of each kind for all of them), as
    /// [`TxCtx::resolve`] one after the other would.
    pub fn resolve_many(&mut self, subjects: &[&[PreparedIdentifier]]) -> Result<Vec<ProfileId>> {
        self.resolver
            .resolve_subjects(self.conn, self.vault, subjects, self.now_ms)
    }

    /// Store events by the same rules as ingestion (resolution, merges,
    /// sealing, counters, traits), inside this transaction; with `want_ids`,
    /// each stored event's id beside its outcome (else `None`s). Imports
    /// use it.
    pub fn apply_events(
        &mut self,
        events: &[&PreparedEvent],
        want_ids: bool,
    ) -> Result<(Vec<Outcome>, Vec<Option<i64>>)> {
        if !want_ids {
            let (outcomes, _) =
                self.resolver
                    .apply(self.conn, self.vault, &self.catalog, events, self.now_ms)?;
            let none = vec![None; outcomes.len()];
            return Ok((outcomes, none));
        }
        let (outcomes, ids, _) = self.resolver.apply_returning_ids(
            self.conn,
            self.vault,
            &self.catalog,
            events,
            self.now_ms,
        )?;
        Ok((outcomes, ids))
    }

    /// A bulk load (an import) starts (`true`) or ends on this writer: the
    /// connection's page cache and the identity caches grow for it
    /// ([`BULK_IDENTITY_CACHE`] entries) and come back after. The caller
    /// counts overlapping loads and calls this for the first and the last.
    pub fn bulk_load(&mut self, on: bool) -> Result<()> {
        self.conn.bulk_load(on)?;
        self.resolver.bulk_caches(on.then_some(BULK_IDENTITY_CACHE));
        Ok(())
    }

    /// How many entries each identity cache may hold now.
    pub fn identity_cache_capacity(&self) -> usize {
        self.resolver.cache_capacity()
    }

    /// Identity facts may have changed in ways the cache cannot follow (an
    /// erasure deleted identifiers): drop it after this transaction.
    pub fn identities_changed(&mut self) {
        self.resolver.clear_after_commit();
    }

    /// These profiles, which held these identifiers, are erased: what the
    /// writer's caches hold of them goes once the transaction commits.
    pub fn people_erased(&mut self, ids: &[ProfileId], identifiers: &[BlindIndex]) {
        self.resolver.erased_after_commit(ids, identifiers);
    }

    /// Fold the write-ahead log into the database file once this commits
    /// (after an erasure, so that no copy of deleted values stays behind).
    pub fn checkpoint_after_commit(&mut self) {
        self.checkpoint = true;
    }
}

/// A transaction job: `run` inside the transaction, `finish` once it
/// committed (or failed), so a caller never hears "done" before it is.
trait TxJob: Send {
    fn run(&mut self, ctx: &mut TxCtx<'_>) -> Result<()>;
    fn finish(self: Box<Self>, result: Result<()>);
    /// For a job that may run merged with the jobs of its kind waiting
    /// next to it ([`WriterHandle::transact_merged`]): its kind and how
    /// many items it carries.
    fn merges(&self) -> Option<(&'static str, usize)> {
        None
    }
    /// Run this job and `others`, each of this job's kind, as one.
    fn run_merged(&mut self, _others: &mut [Box<dyn TxJob>], _ctx: &mut TxCtx<'_>) -> Result<()> {
        Err(Error::Corrupt("this job does not merge".into()))
    }
    fn as_any(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// The function a merged job's kind runs: one output for each item, in
/// order, whether the items came from one caller or from several.
pub type MergedRun<I, O> = fn(&mut TxCtx<'_>, Vec<I>) -> Result<Vec<O>>;

/// Where a merged job's caller hears its outputs.
pub type MergedReply<O> = Box<dyn FnOnce(Result<Vec<O>>) + Send>;

/// A job whose items may be run together with those of the jobs of the
/// same kind that wait next to it: one pass over many callers' items (one
/// resolution, one ledger append) instead of one each. When the merged
/// run fails, each job runs again alone, so one bad item fails its own
/// caller only.
struct MergedTx<I, O> {
    kind: &'static str,
    items: Vec<I>,
    run: MergedRun<I, O>,
    out: Option<Vec<O>>,
    reply: Option<MergedReply<O>>,
}

impl<I: Clone + Send + 'static, O: Send + 'static> TxJob for MergedTx<I, O> {
    fn run(&mut self, ctx: &mut TxCtx<'_>) -> Result<()> {
        self.out = Some((self.run)(ctx, std::mem::take(&mut self.items))?);
        Ok(())
    }

    fn finish(mut self: Box<Self>, result: Result<()>) {
        let reply = self.reply.take().expect("finished once");
        reply(result.map(|()| self.out.take().expect("ran before it committed")));
    }

    fn merges(&self) -> Option<(&'static str, usize)> {
        Some((self.kind, self.items.len()))
    }

    fn run_merged(&mut self, others: &mut [Box<dyn TxJob>], ctx: &mut TxCtx<'_>) -> Result<()> {
        // The items are copied: if the merged run fails, each job runs
        // again alone with its own.
        let mut all = self.items.clone();
        let mut rest = Vec::with_capacity(others.len());
        for o in others.iter_mut() {
            let o = o
                .as_any()
                .and_then(|a| a.downcast_mut::<Self>())
                .filter(|o| o.kind == self.kind)
                .ok_or_else(|| Error::Corrupt("jobs of two kinds merged".into()))?;
            all.extend(o.items.iter().cloned());
            rest.push(o);
        }
        let total = all.len();
        let out = (self.run)(ctx, all)?;
        if out.len() != total {
            return Err(Error::Corrupt(format!(
                "a merged {} job gave {} answers for {total} items",
                self.kind,
                out.len()
            )));
        }
        let mut it = out.into_iter();
        self.out = Some(it.by_ref().take(self.items.len()).collect());
        for o in rest {
            o.out = Some(it.by_ref().take(o.items.len()).collect());
        }
        Ok(())
    }

    fn as_any(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

struct TypedTx<T, F> {
    f: Option<F>,
    out: Option<T>,
    reply: Option<Box<dyn FnOnce(Result<T>) + Send>>,
}

impl<T: Send, F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send> TxJob for TypedTx<T, F> {
    fn run(&mut self, ctx: &mut TxCtx<'_>) -> Result<()> {
        let f = self.f.take().expect("a transaction job runs once");
        self.out = Some(f(ctx)?);
        Ok(())
    }

    fn finish(mut self: Box<Self>, result: Result<()>) {
        let reply = self.reply.take().expect("finished once");
        reply(result.map(|()| self.out.take().expect("ran before it committed")));
    }
}

enum Work {
    Events(Job),
    /// Transaction jobs are waiting in the [`Urgent`] queue.
    Wake,
    /// Transaction jobs taken from it, to run as one group.
    Txs(Vec<Box<dyn TxJob>>),
    /// Panics outside any job: tests the writer's own restart.
    #[cfg(test)]
    Crash,
}

/// Events from this source make the group that holds them panic (tests
/// only): a job that fails the writer, to show the writer survives it.
#[cfg(test)]
pub(crate) const PANIC_SOURCE: crate::conn::KeyId = crate::conn::KeyId(4242);

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Requests waiting beyond this are refused (the HTTP layer answers 429).
    pub queue_capacity: usize,
    /// Upper bound of events in one transaction.
    pub max_group_events: usize,
    /// Identifier cache entries; `None` when other nodes write too.
    pub cache_capacity: Option<usize>,
    /// How long a messageId is remembered.
    pub dedup_window: Duration,
    /// Flush the log on a thread of its own while the next group is
    /// resolved (where the backend can; see the module's documentation).
    pub pipelined: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_group_events: 10_000,
            cache_capacity: Some(500_000),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            pipelined: true,
        }
    }
}

/// Transaction jobs (consents, requests, erasures, staff changes) wait
/// apart from ingestion and go first: a person waiting on their erasure or
/// a consent form should not wait behind the events already queued. Bounded
/// like the main queue; a full queue makes `transact` wait.
struct Urgent {
    q: std::sync::Mutex<std::collections::VecDeque<Box<dyn TxJob>>>,
    room: std::sync::Condvar,
    cap: usize,
    /// Jobs the writer has taken up (transaction jobs and ingestion
    /// batches): whether anyone else used the writer between two of a
    /// caller's jobs.
    ran: std::sync::atomic::AtomicU64,
}

impl Urgent {
    fn push(&self, job: Box<dyn TxJob>) {
        let mut q = self.q.lock().expect("urgent queue");
        while q.len() >= self.cap {
            q = self.room.wait(q).expect("urgent queue");
        }
        q.push_back(job);
    }

    fn take(&self, max: usize) -> Option<Vec<Box<dyn TxJob>>> {
        let mut q = self.q.lock().expect("urgent queue");
        if q.is_empty() {
            return None;
        }
        let n = q.len().min(max);
        let jobs = q.drain(..n).collect();
        self.room.notify_all();
        Some(jobs)
    }

    fn is_empty(&self) -> bool {
        self.q.lock().expect("urgent queue").is_empty()
    }
}

/// The queue side. Cloneable; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Work>,
    urgent: Arc<Urgent>,
    health: Arc<Health>,
}

impl WriterHandle {
    /// The registry the writer reports to; workers holding this handle
    /// report there too.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Queue events; `reply` runs on the writer thread once they committed
    /// (or failed). A full queue is refused at once so the caller can shed
    /// load instead of piling up memory.
    /// On refusal the events and the reply come back, to retry or drop.
    #[allow(clippy::type_complexity)]
    pub fn submit(
        &self,
        events: Vec<PreparedEvent>,
        reply: Reply,
    ) -> Result<(), (Error, Vec<PreparedEvent>, Reply)> {
        let unpack = |w: Work| match w {
            Work::Events(j) => (j.events, j.reply),
            _ => unreachable!("an events job comes back as one"),
        };
        match self.tx.try_send(Work::Events(Job { events, reply })) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(w)) => {
                let (e, r) = unpack(w);
                Err((Error::Overloaded, e, r))
            }
            Err(TrySendError::Disconnected(w)) => {
                let (e, r) = unpack(w);
                Err((Error::WriterGone, e, r))
            }
        }
    }

    /// Run `f` in a transaction on the writer thread, ahead of queued
    /// ingestion (alone, or with other transaction jobs waiting at the same
    /// time, each in a savepoint of its own); `reply` gets its result once
    /// the transaction committed and is durable, or the error. Waits for
    /// room in the queue: these jobs are few and must not be shed.
    pub fn transact<T, F>(&self, f: F, reply: Box<dyn FnOnce(Result<T>) + Send>)
    where
        T: Send + 'static,
        F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send + 'static,
    {
        let job = Box::new(TypedTx {
            f: Some(f),
            out: None,
            reply: Some(reply),
        });
        self.urgent.push(job);
        self.wake_for_urgent();
    }

    /// [`WriterHandle::transact`] for a caller that must not wait (an async
    /// worker): when the queue has no room, `f` and `reply` come back, for
    /// the caller to queue them from a thread that may wait.
    #[allow(clippy::type_complexity)]
    pub fn try_transact<T, F>(
        &self,
        f: F,
        reply: Box<dyn FnOnce(Result<T>) + Send>,
    ) -> std::result::Result<(), (F, Box<dyn FnOnce(Result<T>) + Send>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send + 'static,
    {
        {
            let mut q = self.urgent.q.lock().expect("urgent queue");
            if q.len() >= self.urgent.cap {
                return Err((f, reply));
            }
            q.push_back(Box::new(TypedTx {
                f: Some(f),
                out: None,
                reply: Some(reply),
            }));
        }
        self.wake_for_urgent();
        Ok(())
    }

    /// Run `run` over `items` in a transaction on the writer thread, like
    /// [`WriterHandle::transact`], merged with the jobs of the same `kind`
    /// waiting next to it (in queue order, up to [`MAX_MERGED_ITEMS`]
    /// items): one call of `run` over all their items, inside one
    /// savepoint, each caller answered with its own outputs once durable.
    /// If the merged call fails, each job runs again alone in a savepoint
    /// of its own, so a bad item fails only its caller. A `kind` names one
    /// function. Never waits: when the queue is full, a thread that may
    /// wait queues the job.
    pub fn transact_merged<I, O>(
        &self,
        kind: &'static str,
        items: Vec<I>,
        run: MergedRun<I, O>,
        reply: MergedReply<O>,
    ) where
        I: Clone + Send + 'static,
        O: Send + 'static,
    {
        let job: Box<dyn TxJob> = Box::new(MergedTx {
            kind,
            items,
            run,
            out: None,
            reply: Some(reply),
        });
        let job = {
            let mut q = self.urgent.q.lock().expect("urgent queue");
            if q.len() >= self.urgent.cap {
                Some(job)
            } else {
                q.push_back(job);
                None
            }
        };
        match job {
            None => self.wake_for_urgent(),
            Some(job) => {
                let writer = self.clone();
                std::thread::Builder::new()
                    .name("tarmo-queue-wait".into())
                    .spawn(move || {
                        writer.urgent.push(job);
                        writer.wake_for_urgent();
                    })
                    .map(drop)
                    .unwrap_or_else(|e| tracing::error!(error = %e, "no thread to queue a write"));
            }
        }
    }

    /// [`WriterHandle::transact_merged`], waiting for the result.
    pub fn transact_merged_blocking<I, O>(
        &self,
        kind: &'static str,
        items: Vec<I>,
        run: MergedRun<I, O>,
    ) -> Result<Vec<O>>
    where
        I: Clone + Send + 'static,
        O: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.transact_merged(
            kind,
            items,
            run,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| Error::WriterGone)?
    }

    fn wake_for_urgent(&self) {
        // Full: the writer is busy and looks at the urgent queue before its
        // next group. Gone: nobody will run what waits.
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(Work::Wake) {
            while let Some(jobs) = self.urgent.take(usize::MAX) {
                for j in jobs {
                    j.finish(Err(Error::WriterGone));
                }
            }
        }
    }

    /// How many jobs the writer has taken up so far: a bulk job (an
    /// import's chunks) sees whether it has the writer to itself.
    pub fn jobs_run(&self) -> u64 {
        self.urgent.ran.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`WriterHandle::transact`], waiting for the result.
    pub fn transact_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.transact(
            f,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| Error::WriterGone)?
    }

    /// Submit and wait, for callers that are not async (imports, tests, bench).
    pub fn submit_blocking(&self, events: Vec<PreparedEvent>) -> Result<Vec<Outcome>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut job = Work::Events(Job {
            events,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        loop {
            match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Disconnected(_)) => return Err(Error::WriterGone),
            }
        }
        rx.recv().map_err(|_| Error::WriterGone)?
    }
}

/// How the writer replaces a lost connection (PostgreSQL restarted, the
/// network dropped): it opens a new one with backoff, and meanwhile answers
/// every job `Error::Unavailable` at once, so that callers retry (HTTP 503)
/// instead of waiting on a queue that does not move. Nothing is answered
/// "stored" that did not commit; a commit whose answer was lost is answered
/// unavailable, and the client's retry is deduplicated by its messageId.
pub struct Reconnect {
    pub connect: Box<dyn Fn() -> Result<Box<dyn Conn>> + Send>,
    /// Where readiness is told whether the writer has a connection.
    pub health: Arc<crate::pool::DbHealth>,
}

/// Backoff between connection attempts: from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// An idle connection is checked with a round trip this often, and before
/// use after this long: a database restart is noticed before a request
/// meets it.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// Start the writer thread on `conn`.
pub fn spawn(
    conn: Box<dyn Conn>,
    vault: Arc<Vault>,
    catalog: Arc<CatalogCache>,
    metrics: Arc<WriterMetrics>,
    health: Arc<Health>,
    cfg: WriterConfig,
) -> (WriterHandle, JoinHandle<()>) {
    spawn_inner(conn, None, vault, catalog, metrics, health, cfg)
}

/// Start the writer thread on `conn`, replacing it through `reconnect`
/// whenever it is lost.
pub fn spawn_reconnecting(
    conn: Box<dyn Conn>,
    reconnect: Reconnect,
    vault: Arc<Vault>,
    catalog: Arc<CatalogCache>,
    metrics: Arc<WriterMetrics>,
    health: Arc<Health>,
    cfg: WriterConfig,
) -> (WriterHandle, JoinHandle<()>) {
    spawn_inner(conn, Some(reconnect), vault, catalog, metrics, health, cfg)
}

fn spawn_inner(
    conn: Box<dyn Conn>,
    reconnect: Option<Reconnect>,
    vault: Arc<Vault>,
    catalog: Arc<CatalogCache>,
    metrics: Arc<WriterMetrics>,
    health: Arc<Health>,
    cfg: WriterConfig,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
    let urgent = Arc::new(Urgent {
        q: Default::default(),
        room: Default::default(),
        cap: cfg.queue_capacity.max(1),
        ran: Default::default(),
    });
    let handle = WriterHandle {
        tx,
        urgent: urgent.clone(),
        health: health.clone(),
    };
    // Registered before the thread runs, so that readiness asked right
    // after the start already names the writer.
    health.up("writer");
    let join = std::thread::Builder::new()
        .name("tarmo-writer".into())
        .spawn(move || {
            let mut conn = conn;
            let deferred = if cfg.pipelined {
                conn.defer_sync()
            } else {
                Ok(None)
            };
            let flusher = match deferred {
                Ok(f) => f.map(|f| Acks::spawn(f, metrics.clone())),
                Err(e) => {
                    tracing::warn!(error = %e, "pipelined commit unavailable; every commit waits for the disk");
                    None
                }
            };
            let acks = flusher.unwrap_or(Acks::Now);
            let mut backoff = Backoff::default();
            loop {
                health.up("writer");
                let began = Instant::now();
                let ran = catch_unwind(AssertUnwindSafe(|| {
                    run(
                        &mut conn,
                        reconnect.as_ref(),
                        &vault,
                        &catalog,
                        &metrics,
                        &health,
                        &cfg,
                        &rx,
                        &urgent,
                        &acks,
                    )
                }));
                if ran.is_ok() {
                    break;
                }
                // Jobs are caught one by one: this panic came from the
                // writer's own code. The queue is kept; what was being
                // handled was answered `WriterGone` as its replies dropped.
                let wait = backoff.after(began.elapsed());
                tracing::error!(
                    restart_in_ms = wait.as_millis() as u64,
                    "the writer panicked; it is started again"
                );
                health.down("writer", "panicked; restarting");
                if let Err(e) = conn.rollback() {
                    tracing::error!(error = %e, "rollback failed");
                }
                std::thread::sleep(wait);
                health.restarted("writer");
            }
            health.stopped("writer");
            acks.finish();
        })
        .expect("spawn the writer thread");
    (handle, join)
}

/// An answer to send once what it answers is durable.
type Ack = Box<dyn FnOnce() + Send>;

/// Where the writer sends its answers after a commit.
enum Acks {
    /// The commit was durable by itself: answer at once.
    Now,
    /// Answer after the flusher thread flushed.
    Pipelined {
        tx: SyncSender<Vec<Ack>>,
        join: JoinHandle<()>,
    },
}

impl Acks {
    fn spawn(mut flusher: Box<dyn Flusher>, metrics: Arc<WriterMetrics>) -> Self {
        // Bounded: when the disk falls behind, the writer waits here rather
        // than piling up answered-in-memory work.
        let (tx, rx) = sync_channel::<Vec<Ack>>(64);
        let join = std::thread::Builder::new()
            .name("tarmo-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut acks = first;
                    while let Ok(more) = rx.try_recv() {
                        acks.extend(more);
                    }
                    let started = Instant::now();
                    if let Err(e) = flusher.flush() {
                        // After a failed fsync the kernel may have dropped the
                        // unwritten pages and marked them clean: nothing can
                        // be promised any more about what was committed. Stop
                        // (as PostgreSQL does) and let recovery read the log.
                        tracing::error!(error = %e, "flushing the write-ahead log failed; stopping");
                        std::process::abort();
                    }
                    metrics.flush_seconds.observe(started.elapsed());
                    for ack in acks {
                        // An answer's own bug must not stop the thread that
                        // makes every later commit durable.
                        if catch_unwind(AssertUnwindSafe(ack)).is_err() {
                            tracing::error!("answering a durable commit panicked");
                        }
                    }
                }
            })
            .expect("spawn the flusher thread");
        Acks::Pipelined { tx, join }
    }

    /// Send `acks` once everything committed so far is durable.
    fn after_commit(&self, acks: Vec<Ack>) {
        match self {
            Acks::Now => acks.into_iter().for_each(|a| a()),
            Acks::Pipelined { tx, .. } => {
                if tx.send(acks).is_err() {
                    // Nothing but a failed flush stops the flusher, and that
                    // aborts the process; should it be gone all the same,
                    // these commits are written but not durable, and saying
                    // "stored" would be a lie. Stop, as after a failed flush:
                    // recovery reads the log.
                    tracing::error!("the flusher has stopped; stopping");
                    std::process::abort();
                }
            }
        }
    }

    /// Wait until every answer has been sent.
    fn finish(self) {
        if let Acks::Pipelined { tx, join } = self {
            drop(tx);
            let _ = join.join();
        }
    }
}

/// Answer a job that could not run because the database is unavailable.
fn refuse(w: Work, why: &str) {
    let e = || Error::Unavailable(why.to_owned());
    match w {
        Work::Events(j) => (j.reply)(Err(e())),
        Work::Wake => {}
        Work::Txs(jobs) => {
            for j in jobs {
                j.finish(Err(e()));
            }
        }
        #[cfg(test)]
        Work::Crash => {}
    }
}

/// A working connection in place of `conn`, opened with backoff. Jobs that
/// arrive meanwhile are refused; `None` once every handle is dropped.
fn reconnect_with_backoff(
    r: &Reconnect,
    rx: &Receiver<Work>,
    urgent: &Urgent,
    waiting: &mut Option<Work>,
) -> Option<Box<dyn Conn>> {
    r.health.set_writer(false);
    let mut delay = RECONNECT_FIRST;
    loop {
        match (r.connect)() {
            Ok(c) => {
                r.health.set_writer(true);
                return Some(c);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the writer could not reconnect");
                let why = format!("the database cannot be reached: {e}");
                if let Some(w) = waiting.take() {
                    refuse(w, &why);
                }
                let refuse_urgent = || {
                    while let Some(jobs) = urgent.take(usize::MAX) {
                        refuse(Work::Txs(jobs), &why);
                    }
                };
                refuse_urgent();
                let until = Instant::now() + delay;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(w) => {
                            refuse(w, &why);
                            refuse_urgent();
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Whether `conn` must be replaced before it is used: it was lost, or it sat
/// idle and does not answer.
fn needs_reconnect(conn: &mut dyn Conn, idle: Duration) -> bool {
    conn.is_broken() || (idle >= IDLE_CHECK && conn.ping().is_err())
}

#[allow(clippy::too_many_arguments)]
fn run(
    conn: &mut Box<dyn Conn>,
    reconnect: Option<&Reconnect>,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    health: &Health,
    cfg: &WriterConfig,
    rx: &Receiver<Work>,
    urgent: &Urgent,
    acks: &Acks,
) {
    let mut resolver = Resolver::new(cfg.cache_capacity);
    let mut last_purge = Instant::now();
    let mut seen_version = conn.data_version().unwrap_or(0);
    let mut pending: Option<Work> = None;
    // A checkpoint after an erasure that readers held off: tried again
    // whenever the writer is idle, until it goes through.
    let mut checkpoint_owed = false;
    let mut last_used = Instant::now();
    loop {
        // Without a way to reconnect (SQLite), the idle wake-up only purges
        // and retries an owed checkpoint.
        let idle_wait = if checkpoint_owed {
            Duration::from_secs(1)
        } else if reconnect.is_some() {
            IDLE_CHECK
        } else {
            Duration::from_secs(60)
        };
        // Transaction jobs first, then what was set aside, then the queue.
        let mut first = match urgent.take(MAX_GROUP_TX) {
            Some(jobs) => Some(Work::Txs(jobs)),
            None => match pending.take() {
                Some(w) => Some(w),
                None => match rx.recv_timeout(idle_wait) {
                    Ok(w) => Some(w),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            },
        };
        if let Some(r) = reconnect
            && needs_reconnect(&mut **conn, last_used.elapsed())
        {
            match reconnect_with_backoff(r, rx, urgent, &mut first) {
                Some(c) => *conn = c,
                None => break,
            }
            // Whatever the cache knew was read on the old connection.
            resolver.clear();
        }
        last_used = Instant::now();
        let Some(first) = first else {
            // Idle: a good moment to fold an owed checkpoint and to forget
            // old messageIds.
            if checkpoint_owed {
                checkpoint_owed = !checkpoint(&mut **conn, metrics, true);
            }
            if last_purge.elapsed() >= Duration::from_secs(60) {
                purge(&mut **conn, cfg, &mut last_purge);
            }
            continue;
        };
        // Another connection committed since our last transaction: what the
        // cache knows may be stale.
        match conn.data_version() {
            Ok(v) if v != seen_version => {
                resolver.clear();
                seen_version = v;
            }
            _ => {}
        }
        match first {
            #[cfg(test)]
            Work::Crash => panic!("the writer's own code failed"),
            // The queue said transaction jobs wait: the next turn takes them.
            Work::Wake => {}
            Work::Txs(mut jobs) => {
                urgent
                    .ran
                    .fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let owed = if jobs.len() == 1 {
                    run_tx(
                        &mut **conn,
                        vault,
                        catalog,
                        metrics,
                        health,
                        &mut resolver,
                        jobs.pop().expect("one job"),
                        acks,
                    )
                } else {
                    run_tx_group(
                        &mut **conn,
                        vault,
                        catalog,
                        metrics,
                        health,
                        &mut resolver,
                        jobs,
                        acks,
                    )
                };
                checkpoint_owed |= owed;
            }
            Work::Events(first) => {
                let mut n = first.events.len();
                let mut jobs = vec![first];
                while n < cfg.max_group_events && urgent.is_empty() {
                    match rx.try_recv() {
                        Ok(Work::Events(j)) => {
                            n += j.events.len();
                            jobs.push(j);
                        }
                        // Transaction jobs wait: this group goes as it is.
                        Ok(Work::Wake) => break,
                        Ok(tx) => {
                            pending = Some(tx);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                urgent
                    .ran
                    .fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                process(
                    &mut **conn,
                    vault,
                    catalog,
                    metrics,
                    health,
                    &mut resolver,
                    jobs,
                    acks,
                );
                if urgent.is_empty()
                    && let Err(e) = conn.between_groups()
                {
                    tracing::warn!(error = %e, "checkpoint between groups failed");
                }
            }
        }
        if let Ok(v) = conn.data_version() {
            seen_version = v;
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            purge(&mut **conn, cfg, &mut last_purge);
        }
    }
}

/// Fold the log into the database and truncate it; false (said in the log
/// and the metrics) when readers held it off through every attempt.
fn checkpoint(conn: &mut dyn Conn, metrics: &WriterMetrics, retrying: bool) -> bool {
    let started = Instant::now();
    let r = conn.checkpoint();
    metrics.checkpoint_seconds.observe(started.elapsed());
    match r {
        Ok(()) => {
            if retrying {
                tracing::info!("the checkpoint after an erasure went through");
            }
            true
        }
        Err(e) => {
            if !retrying {
                metrics.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "checkpoint after an erasure failed; trying again while idle");
            }
            false
        }
    }
}

/// Note whether the store had room for the last write.
fn storage_outcome<T>(health: &Health, result: &Result<T>) {
    match result {
        Ok(_) => health.storage_full(false),
        Err(Error::StorageFull(_)) => health.storage_full(true),
        Err(_) => {}
    }
}

/// Run one transaction job; true when its checkpoint is owed (it failed).
#[allow(clippy::too_many_arguments)]
fn run_tx(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    health: &Health,
    resolver: &mut Resolver,
    mut job: Box<dyn TxJob>,
    acks: &Acks,
) -> bool {
    let mut checkpoint_asked = false;
    let mut panicked = false;
    let result = (|| {
        conn.begin()?;
        let catalog = catalog.get(conn)?;
        let mut ctx = TxCtx {
            conn: &mut *conn,
            vault,
            catalog,
            now_ms: now_ms(),
            resolver: &mut *resolver,
            checkpoint: false,
        };
        match catch_unwind(AssertUnwindSafe(|| job.run(&mut ctx))) {
            Ok(r) => r?,
            Err(_) => {
                panicked = true;
                return Err(Error::Panicked);
            }
        }
        checkpoint_asked = ctx.checkpoint;
        conn.commit()
    })();
    storage_outcome(health, &result);
    let owed = result.is_ok() && checkpoint_asked && !checkpoint(conn, metrics, false);
    match &result {
        Ok(()) => {
            resolver.keep();
            metrics.tx_commits.fetch_add(1, Ordering::Relaxed);
            metrics.tx_jobs.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            if !matches!(e, Error::Rejected { .. }) {
                tracing::warn!(error = %e, "a write transaction failed");
            }
            if let Err(re) = conn.rollback() {
                tracing::error!(error = %re, "rollback failed");
            }
            resolver.abandon(vault);
            if panicked {
                // What the job left in the cache cannot be trusted.
                resolver.clear();
            }
        }
    }
    // A checkpoint that went through made every commit so far durable.
    let durable = result.is_ok() && checkpoint_asked && !owed;
    if result.is_ok() && !durable {
        acks.after_commit(vec![Box::new(move || job.finish(result))]);
    } else {
        // Failed, or durable already (an erasure answers without queueing
        // behind the flusher).
        job.finish(result);
    }
    owed
}

/// At most this many transaction jobs share one transaction.
const MAX_GROUP_TX: usize = 256;

/// Several transaction jobs in one transaction, each inside a savepoint of
/// its own: a job that fails (an error, a panic) is rolled back to its
/// savepoint and answered alone, while the others commit together and are
/// answered after the one flush. What a failed job may have left in the
/// caches is dropped, since a rolled-back row id can be handed out again.
/// A job that changed the purpose catalog is seen by the jobs after it.
/// Returns whether an asked-for checkpoint is still owed.
#[allow(clippy::too_many_arguments)]
fn run_tx_group(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    health: &Health,
    resolver: &mut Resolver,
    jobs: Vec<Box<dyn TxJob>>,
    acks: &Acks,
) -> bool {
    let started = Instant::now();
    let mut current = match conn.begin().and_then(|()| catalog.get(conn)) {
        Ok(c) => c,
        Err(e) => {
            storage_outcome(health, &Err::<(), _>(same_error(&e)));
            let _ = conn.rollback();
            for job in jobs {
                job.finish(Err(same_error(&e)));
            }
            return false;
        }
    };
    let mut ran: Vec<Box<dyn TxJob>> = Vec::with_capacity(jobs.len());
    let mut checkpoint_asked = false;
    let mut clear_after_commit = false;
    let mut merged = 0u64;
    let mut units = merge_units(jobs);
    while let Some(mut unit) = units.pop_front() {
        let outcome = (|| {
            if let Ok(generation) = crate::consent::catalog_generation(conn)
                && generation != current.generation
            {
                current = Arc::new(crate::consent::load_catalog(conn)?);
            }
            conn.exec("SAVEPOINT tx_job", &[])?;
            let mut ctx = TxCtx {
                conn: &mut *conn,
                vault,
                catalog: current.clone(),
                now_ms: now_ms(),
                resolver: &mut *resolver,
                checkpoint: false,
            };
            let (first, rest) = unit.split_first_mut().expect("a unit holds a job");
            let r = match catch_unwind(AssertUnwindSafe(|| {
                if rest.is_empty() {
                    first.run(&mut ctx)
                } else {
                    first.run_merged(rest, &mut ctx)
                }
            })) {
                Ok(r) => r,
                Err(_) => Err(Error::Panicked),
            };
            let wants_checkpoint = ctx.checkpoint;
            match r {
                Ok(()) => {
                    conn.exec("RELEASE SAVEPOINT tx_job", &[])?;
                    Ok(wants_checkpoint)
                }
                Err(e) => {
                    if let Err(re) = conn
                        .exec("ROLLBACK TO SAVEPOINT tx_job", &[])
                        .and_then(|_| conn.exec("RELEASE SAVEPOINT tx_job", &[]))
                    {
                        tracing::error!(error = %re, "rollback to a job's savepoint failed");
                    }
                    Err(e)
                }
            }
        })();
        match outcome {
            Ok(wants_checkpoint) => {
                checkpoint_asked |= wants_checkpoint;
                if unit.len() > 1 {
                    merged += unit.len() as u64;
                }
                ran.append(&mut unit);
            }
            Err(e) => {
                // What this unit put in the caches is gone from the
                // database; whether an earlier job asked for a clear is kept.
                clear_after_commit |= resolver.take_clear_after_commit();
                resolver.abandon(vault);
                if unit.len() > 1 {
                    // Merged jobs: each runs again alone, in its place.
                    tracing::debug!(error = %e, jobs = unit.len(), "merged jobs failed; each runs alone");
                    metrics.tx_unmerged.fetch_add(1, Ordering::Relaxed);
                    for job in unit.into_iter().rev() {
                        units.push_front(vec![job]);
                    }
                    continue;
                }
                if !matches!(e, Error::Rejected { .. }) {
                    tracing::warn!(error = %e, "a write transaction failed");
                }
                let job = unit.pop().expect("one job");
                job.finish(Err(e));
            }
        }
    }
    if clear_after_commit {
        resolver.clear_after_commit();
    }
    let committed = conn.commit();
    storage_outcome(health, &committed);
    match committed {
        Ok(()) => {
            resolver.keep();
            metrics.commit_seconds.observe(started.elapsed());
            metrics.tx_commits.fetch_add(1, Ordering::Relaxed);
            metrics
                .tx_jobs
                .fetch_add(ran.len() as u64, Ordering::Relaxed);
            metrics.tx_merged.fetch_add(merged, Ordering::Relaxed);
            let owed = checkpoint_asked && !checkpoint(conn, metrics, false);
            if checkpoint_asked && !owed {
                // The checkpoint made every commit so far durable.
                for job in ran {
                    job.finish(Ok(()));
                }
            } else {
                acks.after_commit(
                    ran.into_iter()
                        .map(|job| Box::new(move || job.finish(Ok(()))) as Ack)
                        .collect(),
                );
            }
            owed
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = ran.len(), "a group of write transactions failed to commit");
            if let Err(re) = conn.rollback() {
                tracing::error!(error = %re, "rollback failed");
            }
            resolver.abandon(vault);
            for job in ran {
                job.finish(Err(same_error(&e)));
            }
            false
        }
    }
}

/// At most this many items run in one merged call
/// ([`WriterHandle::transact_merged`]); more start another.
pub const MAX_MERGED_ITEMS: usize = 4096;

/// The group's jobs in order, those of one merging kind that wait next to
/// each other (up to [`MAX_MERGED_ITEMS`] items) put together in a unit;
/// every other job is a unit of its own. Only neighbours merge, so no job
/// moves past another (a purpose's change, an erasure) that it waited
/// behind.
fn merge_units(jobs: Vec<Box<dyn TxJob>>) -> std::collections::VecDeque<Vec<Box<dyn TxJob>>> {
    let mut units: std::collections::VecDeque<Vec<Box<dyn TxJob>>> =
        std::collections::VecDeque::with_capacity(jobs.len());
    let mut open: Option<(&'static str, usize)> = None;
    for job in jobs {
        let merges = job.merges();
        match (merges, open, units.back_mut()) {
            (Some((kind, n)), Some((open_kind, items)), Some(last))
                if kind == open_kind && items + n <= MAX_MERGED_ITEMS =>
            {
                last.push(job);
                open = Some((kind, items + n));
            }
            _ => {
                units.push_back(vec![job]);
                open = merges;
            }
        }
    }
    units
}

/// The error a group's failure gives each of its jobs.
fn same_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(s) => Error::Unavailable(s.clone()),
        Error::StorageFull(s) => Error::StorageFull(s.clone()),
        Error::Busy(s) => Error::Busy(s.clone()),
        Error::Conflict(s) => Error::Conflict(s.clone()),
        Error::WriterGone => Error::WriterGone,
        other => Error::Backend(other.to_string()),
    }
}

fn purge(conn: &mut dyn Conn, cfg: &WriterConfig, last: &mut Instant) {
    *last = Instant::now();
    let cutoff = now_ms() - cfg.dedup_window.as_millis() as i64;
    match conn.dedup_purge(cutoff) {
        Ok(n) => tracing::debug!(removed = n, "old messageIds forgotten"),
        Err(e) => tracing::warn!(error = %e, "purging old messageIds failed"),
    }
}

/// One transaction for all jobs; on a transient failure try again, and on
/// any other failure (a panic included) fall back to one transaction per
/// job so that one bad request cannot fail its neighbours. A full disk
/// fails them all at once: one by one would not find room either.
#[allow(clippy::too_many_arguments)]
fn process(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    health: &Health,
    resolver: &mut Resolver,
    jobs: Vec<Job>,
    acks: &Acks,
) {
    let mut attempt = 0;
    loop {
        let result = commit_group(conn, vault, catalog, metrics, resolver, &jobs);
        storage_outcome(health, &result);
        match result {
            Ok(outcomes) => {
                let mut it = outcomes.into_iter();
                let answers: Vec<Ack> = jobs
                    .into_iter()
                    .map(|j| {
                        let mine: Vec<Outcome> = it.by_ref().take(j.events.len()).collect();
                        let reply = j.reply;
                        Box::new(move || reply(Ok(mine))) as Ack
                    })
                    .collect();
                acks.after_commit(answers);
                return;
            }
            Err(Error::Unavailable(why)) => {
                // The connection is gone: neither a retry nor committing the
                // requests one by one can succeed on it. The writer
                // reconnects before its next job; the clients retry.
                tracing::warn!(error = %why, jobs = jobs.len(), "group commit: the database is unavailable");
                for j in jobs {
                    (j.reply)(Err(Error::Unavailable(why.clone())));
                }
                return;
            }
            Err(e) if e.is_transient() && attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "group commit retried");
            }
            Err(Error::StorageFull(why)) => {
                tracing::error!(error = %why, jobs = jobs.len(), "no space left for a group commit; refused");
                for j in jobs {
                    (j.reply)(Err(Error::StorageFull(why.clone())));
                }
                return;
            }
            Err(e) => {
                if jobs.len() == 1 {
                    tracing::error!(error = %e, "group commit failed");
                    let j = jobs.into_iter().next().expect("one job");
                    (j.reply)(Err(e));
                    return;
                }
                tracing::warn!(error = %e, jobs = jobs.len(), "group commit failed; committing its requests one by one");
                for j in jobs {
                    process(
                        conn,
                        vault,
                        catalog,
                        metrics,
                        health,
                        resolver,
                        vec![j],
                        acks,
                    );
                }
                return;
            }
        }
    }
}

fn commit_group(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    resolver: &mut Resolver,
    jobs: &[Job],
) -> Result<Vec<Outcome>> {
    let started = Instant::now();
    let events: Vec<&PreparedEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
    conn.begin()?;
    let mut panicked = false;
    let result = catalog
        .get(conn)
        .and_then(|catalog| {
            catch_unwind(AssertUnwindSafe(|| {
                #[cfg(test)]
                if events
                    .iter()
                    .any(|e| e.source == crate::conn::Source::Key(PANIC_SOURCE))
                {
                    panic!("a test asked this group to fail");
                }
                resolver.apply(conn, vault, &catalog, &events, now_ms())
            }))
            .unwrap_or_else(|_| {
                panicked = true;
                Err(Error::Panicked)
            })
        })
        .and_then(|r| conn.commit().map(|_| r));
    match result {
        Ok((outcomes, stats)) => {
            resolver.keep();
            metrics.groups.fetch_add(1, Ordering::Relaxed);
            metrics
                .events_stored
                .fetch_add(stats.stored, Ordering::Relaxed);
            metrics
                .events_duplicate
                .fetch_add(stats.duplicates, Ordering::Relaxed);
            metrics
                .events_suppressed
                .fetch_add(stats.suppressed, Ordering::Relaxed);
            metrics
                .profiles_created
                .fetch_add(stats.profiles_created, Ordering::Relaxed);
            metrics.merges.fetch_add(stats.merges, Ordering::Relaxed);
            metrics
                .merges_refused
                .fetch_add(stats.merges_refused, Ordering::Relaxed);
            metrics.commit_seconds.observe(started.elapsed());
            metrics
                .group_events
                .observe(Duration::from_secs(events.len() as u64));
            Ok(outcomes)
        }
        Err(e) => {
            metrics.group_failures.fetch_add(1, Ordering::Relaxed);
            if let Err(re) = conn.rollback() {
                tracing::error!(error = %re, "rollback failed");
            }
            resolver.abandon(vault);
            if panicked {
                resolver.clear();
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::KeyId;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// A flusher that flushes only when the test lets it, and counts.
    struct Gate {
        open: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        flushes: Arc<AtomicUsize>,
    }

    impl Flusher for Gate {
        fn flush(&mut self) -> Result<()> {
            self.open.lock().unwrap().recv().unwrap();
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn no_answer_before_the_flush_and_one_flush_covers_what_waited() {
        let (open_tx, open_rx) = std::sync::mpsc::channel();
        let flushes = Arc::new(AtomicUsize::new(0));
        let acks = Acks::spawn(
            Box::new(Gate {
                open: Arc::new(Mutex::new(open_rx)),
                flushes: flushes.clone(),
            }),
            Arc::new(WriterMetrics::default()),
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel::<u32>();
        let answer = |n: u32| {
            let done = done_tx.clone();
            Box::new(move || done.send(n).unwrap()) as Ack
        };
        // The first commit's flush starts and blocks; two more commits are
        // written meanwhile.
        acks.after_commit(vec![answer(1)]);
        std::thread::sleep(Duration::from_millis(50));
        acks.after_commit(vec![answer(2), answer(3)]);
        acks.after_commit(vec![answer(4)]);
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "answered before the log was flushed"
        );
        open_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "commits written after the flush began were answered by it"
        );
        open_tx.send(()).unwrap();
        let rest: Vec<u32> = (0..3)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(rest, vec![2, 3, 4]);
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            2,
            "one flush for the three that waited"
        );
        acks.finish();
    }

    fn store() -> (tempfile::TempDir, crate::Store) {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::Backend::open(dir.path(), None).unwrap();
        let master = crate::vault::MasterKey::generate().unwrap();
        let store = crate::Store::open(backend, &master, 1000).unwrap();
        (dir, store)
    }

    fn identify(store: &crate::Store, user: &str, source: KeyId) -> PreparedEvent {
        let cfg = tarmo_core::identity::IdentityConfig::new(None, &[]).unwrap();
        let m = tarmo_core::segment::parse_message(
            serde_json::json!({"type": "identify", "userId": user, "messageId": user}),
            0,
            None,
            Default::default(),
            now_ms(),
            &cfg,
        )
        .unwrap();
        store.prepare(m, source)
    }

    /// Every job the writer takes up is counted, so a bulk job sees
    /// whether someone else used the writer between two of its own.
    #[test]
    fn the_writer_counts_the_jobs_it_takes_up() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        let before = writer.jobs_run();
        writer
            .transact_blocking(|ctx| ctx.conn.meta_set("a", b"1"))
            .unwrap();
        assert_eq!(writer.jobs_run(), before + 1);
        // Someone else's ingestion between two of ours shows.
        writer
            .submit_blocking(vec![identify(&store, "someone", KeyId(1))])
            .unwrap();
        writer
            .transact_blocking(|ctx| ctx.conn.meta_set("a", b"2"))
            .unwrap();
        assert_eq!(writer.jobs_run(), before + 3);
        drop(writer);
        join.join().unwrap();
    }

    /// Keep the writer busy in a job of its own (started when this
    /// returns) until the returned sender sends, or for 10 s.
    fn hold(writer: &WriterHandle) -> std::sync::mpsc::Sender<()> {
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        writer.transact(
            move |_| -> Result<()> {
                started_tx.send(()).unwrap();
                let _ = hold_rx.recv_timeout(Duration::from_secs(10));
                Ok(())
            },
            Box::new(|_| {}),
        );
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        hold_tx
    }

    /// A caller that must not wait gets its job back when the queue is
    /// full, queues nothing then, and the jobs it did queue all answer.
    #[test]
    fn a_full_queue_gives_a_job_back_instead_of_waiting() {
        let (_dir, store) = store();
        let cfg = WriterConfig {
            queue_capacity: 2,
            ..WriterConfig::default()
        };
        let (writer, join) = store.start_writer(cfg).unwrap();
        let hold_tx = hold(&writer);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut queued = 0;
        let mut back = None;
        for i in 0..3 {
            let done = done_tx.clone();
            match writer.try_transact(
                move |ctx| ctx.conn.meta_set(&format!("k{i}"), b"v"),
                Box::new(move |r| done.send(r.is_ok()).unwrap()),
            ) {
                Ok(()) => queued += 1,
                Err(job) => back = Some(job),
            }
        }
        assert_eq!(queued, 2, "room for two");
        let (f, reply) = back.expect("the third came back");
        hold_tx.send(()).unwrap();
        for _ in 0..2 {
            assert!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        // Queued again by a caller that may wait, it runs too.
        writer.transact(f, reply);
        assert!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap());
        let c = &mut *store.conn().unwrap();
        for i in 0..3 {
            assert_eq!(c.meta_get(&format!("k{i}")).unwrap(), Some(b"v".to_vec()));
        }
        drop(writer);
        join.join().unwrap();
    }

    #[test]
    fn a_transaction_job_goes_ahead_of_queued_ingestion() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        let hold_tx = hold(&writer);
        // While the writer is busy: ingestion queued first, then an
        // erasure-like job.
        let order = Arc::new(Mutex::new(Vec::new()));
        let cfg = WriterConfig::default();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for i in 0..30 {
            let ev = identify(&store, &format!("queued-{i}"), KeyId(1));
            let (order, done) = (order.clone(), done_tx.clone());
            writer
                .submit(
                    vec![ev],
                    Box::new(move |r| {
                        assert!(r.is_ok());
                        order.lock().unwrap().push(format!("event-{i}"));
                        done.send(()).unwrap();
                    }),
                )
                .map_err(|(e, _, _)| e)
                .unwrap();
        }
        assert!(cfg.queue_capacity > 30);
        let (order2, done) = (order.clone(), done_tx.clone());
        writer.transact(
            |ctx| ctx.conn.meta_set("urgent", b"1"),
            Box::new(move |r| {
                assert!(r.is_ok());
                order2.lock().unwrap().push("transaction".to_owned());
                done.send(()).unwrap();
            }),
        );
        hold_tx.send(()).unwrap();
        for _ in 0..31 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let order = order.lock().unwrap();
        let at = order.iter().position(|o| o == "transaction").unwrap();
        assert_eq!(at, 0, "the transaction waited behind ingestion: {order:?}");
        drop(writer);
        join.join().unwrap();
    }

    #[test]
    fn an_answer_that_panics_does_not_stop_the_flusher() {
        let (open_tx, open_rx) = std::sync::mpsc::channel();
        let flushes = Arc::new(AtomicUsize::new(0));
        let acks = Acks::spawn(
            Box::new(Gate {
                open: Arc::new(Mutex::new(open_rx)),
                flushes: flushes.clone(),
            }),
            Arc::new(WriterMetrics::default()),
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let first = done_tx.clone();
        acks.after_commit(vec![Box::new(move || {
            first.send(1).unwrap();
            panic!("a reply's bug")
        })]);
        open_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        let done = done_tx.clone();
        acks.after_commit(vec![Box::new(move || done.send(2).unwrap())]);
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "answered before its flush"
        );
        open_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
        acks.finish();
    }

    #[test]
    fn waiting_transaction_jobs_share_a_transaction_and_a_failing_one_is_rolled_back_alone() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        // Hold the writer so that the jobs below queue up behind it.
        let hold_tx = hold(&writer);
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..40u32 {
            let tx = tx.clone();
            writer.transact(
                move |ctx| -> Result<i64> {
                    let key = format!("job-{i}");
                    ctx.conn.meta_set(&key, b"written")?;
                    // A new profile in every job: ids handed out in a
                    // rolled-back savepoint must not confuse the caches.
                    let ev = [user_id(ctx, &key)];
                    let profile = ctx.resolve(&ev)?;
                    match i {
                        7 => Err(Error::rejected(
                            crate::Code::InvalidJson,
                            "job 7 is refused",
                        )),
                        13 => panic!("job 13 has a bug"),
                        _ => Ok(profile.0),
                    }
                },
                Box::new(move |r| tx.send((i, r)).unwrap()),
            );
        }
        let commits_before = store.metrics.tx_commits.load(Ordering::SeqCst);
        hold_tx.send(()).unwrap();
        let mut answers: Vec<_> = (0..40)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        answers.sort_by_key(|(i, _)| *i);
        let commits = store.metrics.tx_commits.load(Ordering::SeqCst) - commits_before;
        assert!(commits < 5, "40 waiting jobs took {commits} transactions");
        assert!(
            store.metrics.tx_jobs.load(Ordering::SeqCst) >= 38,
            "38 jobs committed"
        );
        let mut profiles = std::collections::HashSet::new();
        for (i, r) in &answers {
            let written = store
                .transact_direct(|c, _| c.meta_get(&format!("job-{i}")))
                .unwrap();
            match i {
                7 => {
                    assert!(
                        matches!(
                            r,
                            Err(Error::Rejected {
                                code: crate::Code::InvalidJson,
                                ..
                            })
                        ),
                        "{r:?}"
                    );
                    assert_eq!(written, None, "a refused job's writes were rolled back");
                }
                13 => {
                    assert!(matches!(r, Err(Error::Panicked)), "{r:?}");
                    assert_eq!(written, None, "a panicked job's writes were rolled back");
                }
                _ => {
                    let id = *r.as_ref().unwrap();
                    assert!(profiles.insert(id), "profile {id} given twice");
                    assert_eq!(written.as_deref(), Some(&b"written"[..]), "job {i}");
                }
            }
        }
        // Each stored person is found again through their identifier, with
        // the key their profile was sealed with.
        for (i, r) in &answers {
            if let Ok(id) = r {
                let key = format!("job-{i}");
                let found = writer
                    .transact_blocking(move |ctx| {
                        let id = user_id(ctx, &key);
                        ctx.resolve(&[id])
                    })
                    .unwrap();
                assert_eq!(found, ProfileId(*id), "job {i}");
            }
        }
        drop(writer);
        join.join().unwrap();
    }

    /// A user id as identity resolution takes it.
    fn user_id(ctx: &TxCtx<'_>, key: &str) -> PreparedIdentifier {
        PreparedIdentifier {
            bidx: ctx.vault.blind_index("user_id", key),
            kind: tarmo_core::identity::IdentifierKind::UserId,
            value: key.to_owned(),
        }
    }

    /// The sizes of the calls [`merged_items`] was given, in order.
    static MERGED_CALLS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    /// A merging kind for the test below: each item writes a key and makes
    /// a new person; item 13 is refused and item 21 is a bug.
    fn merged_items(ctx: &mut TxCtx<'_>, items: Vec<u32>) -> Result<Vec<i64>> {
        MERGED_CALLS.lock().unwrap().push(items.len());
        let mut out = Vec::new();
        for i in items {
            let key = format!("merged-{i}");
            ctx.conn.meta_set(&key, b"written")?;
            let id = user_id(ctx, &key);
            let profile = ctx.resolve(&[id])?;
            match i {
                13 => {
                    return Err(Error::rejected(
                        crate::Code::InvalidJson,
                        "item 13 is refused",
                    ));
                }
                21 => panic!("item 21 has a bug"),
                _ => out.push(profile.0),
            }
        }
        Ok(out)
    }

    /// Jobs of one merging kind that wait next to each other run in one
    /// call; when that call fails (a refusal, a panic), each runs again
    /// alone and only the bad one fails. A job of another kind between
    /// them keeps its place.
    #[test]
    fn waiting_jobs_of_one_kind_run_merged_and_a_bad_one_fails_alone() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        let hold_tx = hold(&writer);
        let (tx, rx) = std::sync::mpsc::channel();
        let (order_tx, order_rx) = std::sync::mpsc::channel();
        let plain = |at: &'static str| {
            let order_tx = order_tx.clone();
            writer.transact(
                move |ctx| -> Result<()> {
                    // Which merged items were written before this job ran.
                    let before: Vec<bool> = (0..39)
                        .map(|i| {
                            ctx.conn
                                .meta_get(&format!("merged-{i}"))
                                .map(|v| v.is_some())
                        })
                        .collect::<Result<_>>()?;
                    order_tx.send((at, before)).unwrap();
                    Ok(())
                },
                Box::new(|r| r.unwrap()),
            );
        };
        // Jobs 0-5 (items 0-17, job 4 refused), a plain job, jobs 6-9
        // (items 18-29, job 7 panics), a plain job, jobs 10-12 (all good).
        for j in 0..13u32 {
            if j == 6 {
                plain("after job 5");
            }
            if j == 10 {
                plain("after job 9");
            }
            let tx = tx.clone();
            writer.transact_merged(
                "test items",
                vec![3 * j, 3 * j + 1, 3 * j + 2],
                merged_items,
                Box::new(move |r| tx.send((j, r)).unwrap()),
            );
        }
        let merged_before = store.metrics.tx_merged.load(Ordering::SeqCst);
        let unmerged_before = store.metrics.tx_unmerged.load(Ordering::SeqCst);
        MERGED_CALLS.lock().unwrap().clear();
        hold_tx.send(()).unwrap();
        let mut answers: Vec<_> = (0..13)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        answers.sort_by_key(|(j, _)| *j);
        assert_eq!(
            *MERGED_CALLS.lock().unwrap(),
            [18, 3, 3, 3, 3, 3, 3, 12, 3, 3, 3, 3, 9],
            "merged calls, then each job alone after a failed one"
        );
        assert_eq!(
            store.metrics.tx_merged.load(Ordering::SeqCst) - merged_before,
            3
        );
        assert_eq!(
            store.metrics.tx_unmerged.load(Ordering::SeqCst) - unmerged_before,
            2
        );
        // The plain jobs saw exactly the jobs queued before them.
        for (at, upto) in [("after job 5", 18), ("after job 9", 30)] {
            let (seen_at, before) = order_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(seen_at, at);
            for (i, written) in before.iter().enumerate() {
                let expected = i < upto && !(12..15).contains(&i) && !(21..24).contains(&i);
                assert_eq!(*written, expected, "item {i} {at}");
            }
        }
        let mut profiles = std::collections::HashSet::new();
        for (j, r) in &answers {
            match j {
                4 => assert!(
                    matches!(
                        r,
                        Err(Error::Rejected {
                            code: crate::Code::InvalidJson,
                            ..
                        })
                    ),
                    "{r:?}"
                ),
                7 => assert!(matches!(r, Err(Error::Panicked)), "{r:?}"),
                _ => {
                    let ids = r.as_ref().unwrap();
                    assert_eq!(ids.len(), 3, "job {j}");
                    for id in ids {
                        assert!(profiles.insert(*id), "profile {id} given twice");
                    }
                }
            }
        }
        for i in 0..39u32 {
            let key = format!("merged-{i}");
            let written = store.transact_direct(|c, _| c.meta_get(&key)).unwrap();
            let bad = (12..15).contains(&i) || (21..24).contains(&i);
            assert_eq!(written.is_some(), !bad, "item {i}");
            if bad {
                continue;
            }
            // Each person is found again under the id the answer gave,
            // though ids were handed out in rolled-back merged calls.
            let (j, k) = (i / 3, (i % 3) as usize);
            let answered = answers[j as usize].1.as_ref().unwrap()[k];
            let found = writer
                .transact_blocking(move |ctx| {
                    let id = user_id(ctx, &key);
                    ctx.resolve(&[id])
                })
                .unwrap();
            assert_eq!(found, ProfileId(answered), "item {i}");
        }
        drop(writer);
        join.join().unwrap();
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_writer_goes_on() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        let r = writer.transact_blocking(|_| -> Result<()> { panic!("a job's bug") });
        assert!(matches!(r, Err(Error::Panicked)), "{r:?}");
        writer
            .transact_blocking(|ctx| ctx.conn.meta_set("after", b"panic"))
            .expect("the next transaction job runs");

        // Three requests queued together: the middle one makes its group
        // panic; the others are stored all the same.
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, source) in [(0, KeyId(1)), (1, PANIC_SOURCE), (2, KeyId(1))] {
            let tx = tx.clone();
            let ev = identify(&store, &format!("user-{i}"), source);
            writer
                .submit(vec![ev], Box::new(move |r| tx.send((i, r)).unwrap()))
                .map_err(|(e, _, _)| e)
                .unwrap();
        }
        let mut answers: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        answers.sort_by_key(|(i, _)| *i);
        assert!(matches!(answers[0].1.as_deref(), Ok([Outcome::Stored(_)])));
        assert!(matches!(answers[1].1, Err(Error::Panicked)));
        assert!(matches!(answers[2].1.as_deref(), Ok([Outcome::Stored(_)])));
        let later = writer
            .submit_blocking(vec![identify(&store, "user-3", KeyId(1))])
            .unwrap();
        assert!(matches!(later[..], [Outcome::Stored(_)]));
        assert!(store.health.ready(), "{:?}", store.health.components());
        drop(writer);
        join.join().unwrap();
    }

    #[test]
    fn a_panic_outside_any_job_restarts_the_writer_with_its_queue() {
        let (_dir, store) = store();
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        writer.tx.send(Work::Crash).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.health.ready() {
            assert!(Instant::now() < deadline, "the writer never showed down");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Queued while the writer is down: answered once it is back.
        let w = writer.clone();
        let queued =
            std::thread::spawn(move || w.transact_blocking(|ctx| ctx.conn.meta_set("k", b"v")));
        let c = store.health.components();
        assert_eq!(c[0].name, "writer");
        assert_eq!(c[0].reason.as_deref(), Some("panicked; restarting"));
        queued
            .join()
            .unwrap()
            .expect("the queue survived the restart");
        assert!(store.health.ready());
        assert_eq!(store.health.components()[0].restarts, 1);
        let stored = writer
            .submit_blocking(vec![identify(&store, "after-restart", KeyId(1))])
            .unwrap();
        assert!(matches!(stored[..], [Outcome::Stored(_)]));
        drop(writer);
        join.join().unwrap();
        assert!(store.health.components().is_empty(), "stopped, not down");
    }

    #[test]
    fn sqlite_defers_its_log_sync_to_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::sqlite::SqliteBackend::open(&dir.path().join("t.db")).unwrap();
        let mut c = b.connect().unwrap();
        let mut f = c
            .defer_sync()
            .unwrap()
            .expect("a file database has a log to flush");
        let mode = c.query_opt("PRAGMA synchronous", &[]).unwrap().unwrap();
        assert_eq!(mode.int(0).unwrap(), 1, "NORMAL: commits no longer fsync");
        c.begin().unwrap();
        c.meta_set("k", b"v").unwrap();
        c.commit().unwrap();
        f.flush().unwrap();
        // The writer no longer checkpoints (it would stop to copy pages):
        // the checkpointer thread does, once woken by a flush.
        let db = dir.path().join("t.db");
        let before = std::fs::metadata(&db).unwrap().len();
        for i in 0..64 {
            c.begin().unwrap();
            c.meta_set(&format!("blob{i}"), &vec![i as u8; 32 * 1024])
                .unwrap();
            c.commit().unwrap();
        }
        f.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&db).unwrap().len() < before + 1_000_000 {
            assert!(
                Instant::now() < deadline,
                "the log was not checkpointed into the database file"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Another connection keeps its own, durable, setting.
        let mut other = b.connect().unwrap();
        let mode = other.query_opt("PRAGMA synchronous", &[]).unwrap().unwrap();
        assert_eq!(mode.int(0).unwrap(), 2);
    }
}
