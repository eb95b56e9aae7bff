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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::{Conn, ProfileId};
use crate::consent::{Catalog, CatalogCache};
use crate::metrics::WriterMetrics;
use crate::resolve::{Outcome, PreparedEvent, PreparedIdentifier, Resolver};
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

impl TxCtx<'_> {
    /// The profile these identifiers name, created, attached or merged by
    /// the identity rules.
    pub fn resolve(&mut self, identifiers: &[PreparedIdentifier]) -> Result<ProfileId> {
        self.resolver
            .resolve_identifiers(self.conn, self.vault, identifiers, self.now_ms)
    }

    /// Identity facts may have changed in ways the cache cannot follow (an
    /// erasure deleted identifiers): drop it after this transaction.
    pub fn identities_changed(&mut self) {
        self.resolver.clear_after_commit();
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
    Tx(Box<dyn TxJob>),
}

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
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_group_events: 10_000,
            cache_capacity: Some(500_000),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The queue side. Cloneable; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Work>,
}

impl WriterHandle {
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
            Work::Tx(_) => unreachable!("an events job comes back as one"),
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

    /// Run `f` in a transaction of its own on the writer thread; `reply`
    /// gets its result once the transaction committed, or the error. Waits
    /// for room in the queue: these jobs are few and must not be shed.
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
        if let Err(e) = self.tx.send(Work::Tx(job))
            && let Work::Tx(j) = e.0
        {
            j.finish(Err(Error::WriterGone));
        }
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

/// Start the writer thread on `conn`.
pub fn spawn(
    conn: Box<dyn Conn>,
    vault: Arc<Vault>,
    catalog: Arc<CatalogCache>,
    metrics: Arc<WriterMetrics>,
    cfg: WriterConfig,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
    let join = std::thread::Builder::new()
        .name("tarmo-writer".into())
        .spawn(move || run(conn, vault, catalog, metrics, cfg, rx))
        .expect("spawn the writer thread");
    (WriterHandle { tx }, join)
}

fn run(
    mut conn: Box<dyn Conn>,
    vault: Arc<Vault>,
    catalog: Arc<CatalogCache>,
    metrics: Arc<WriterMetrics>,
    cfg: WriterConfig,
    rx: Receiver<Work>,
) {
    let mut resolver = Resolver::new(cfg.cache_capacity);
    let mut last_purge = Instant::now();
    let mut seen_version = conn.data_version().unwrap_or(0);
    let mut pending: Option<Work> = None;
    loop {
        let first = match pending.take() {
            Some(w) => w,
            None => match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    purge(&mut *conn, &cfg, &mut last_purge);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
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
            Work::Tx(job) => {
                run_tx(&mut *conn, &vault, &catalog, &mut resolver, job);
            }
            Work::Events(first) => {
                let mut n = first.events.len();
                let mut jobs = vec![first];
                while n < cfg.max_group_events {
                    match rx.try_recv() {
                        Ok(Work::Events(j)) => {
                            n += j.events.len();
                            jobs.push(j);
                        }
                        Ok(tx) => {
                            pending = Some(tx);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                process(&mut *conn, &vault, &catalog, &metrics, &mut resolver, jobs);
            }
        }
        if let Ok(v) = conn.data_version() {
            seen_version = v;
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            purge(&mut *conn, &cfg, &mut last_purge);
        }
    }
}

fn run_tx(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    resolver: &mut Resolver,
    mut job: Box<dyn TxJob>,
) {
    let mut checkpoint = false;
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
        job.run(&mut ctx)?;
        checkpoint = ctx.checkpoint;
        conn.commit()
    })();
    if result.is_ok()
        && checkpoint
        && let Err(e) = conn.checkpoint()
    {
        tracing::error!(error = %e, "checkpoint after erasure failed");
    }
    match &result {
        Ok(()) => resolver.keep(),
        Err(e) => {
            if !matches!(e, Error::Rejected { .. }) {
                tracing::warn!(error = %e, "a write transaction failed");
            }
            if let Err(re) = conn.rollback() {
                tracing::error!(error = %re, "rollback failed");
            }
            resolver.abandon(vault);
        }
    }
    job.finish(result);
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
/// any other failure fall back to one transaction per job so that one bad
/// request cannot fail its neighbours.
fn process(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &CatalogCache,
    metrics: &WriterMetrics,
    resolver: &mut Resolver,
    jobs: Vec<Job>,
) {
    let mut attempt = 0;
    loop {
        match commit_group(conn, vault, catalog, metrics, resolver, &jobs) {
            Ok(outcomes) => {
                let mut it = outcomes.into_iter();
                for j in jobs {
                    let mine: Vec<Outcome> = it.by_ref().take(j.events.len()).collect();
                    (j.reply)(Ok(mine));
                }
                return;
            }
            Err(e) if e.is_transient() && attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "group commit retried");
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
                    process(conn, vault, catalog, metrics, resolver, vec![j]);
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
    let result = catalog
        .get(conn)
        .and_then(|catalog| resolver.apply(conn, vault, &catalog, &events, now_ms()))
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
            Err(e)
        }
    }
}
