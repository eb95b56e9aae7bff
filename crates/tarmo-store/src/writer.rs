//! Group commit: one thread owns the write connection; requests queue their
//! events, and every transaction takes all that is waiting, so concurrent
//! requests share one fsync. A request is answered only after its events'
//! transaction committed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::metrics::WriterMetrics;
use crate::resolve::{Outcome, PreparedEvent, Resolver};
use crate::vault::Vault;
use crate::{Error, Result, now_ms};

pub type Reply = Box<dyn FnOnce(Result<Vec<Outcome>>) + Send>;

struct Job {
    events: Vec<PreparedEvent>,
    reply: Reply,
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
    tx: SyncSender<Job>,
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
        match self.tx.try_send(Job { events, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) => Err((Error::Overloaded, j.events, j.reply)),
            Err(TrySendError::Disconnected(j)) => Err((Error::WriterGone, j.events, j.reply)),
        }
    }

    /// Submit and wait, for callers that are not async (imports, tests, bench).
    pub fn submit_blocking(&self, events: Vec<PreparedEvent>) -> Result<Vec<Outcome>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut job = Job {
            events,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
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
    metrics: Arc<WriterMetrics>,
    cfg: WriterConfig,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
    let join = std::thread::Builder::new()
        .name("tarmo-writer".into())
        .spawn(move || run(conn, vault, metrics, cfg, rx))
        .expect("spawn the writer thread");
    (WriterHandle { tx }, join)
}

fn run(
    mut conn: Box<dyn Conn>,
    vault: Arc<Vault>,
    metrics: Arc<WriterMetrics>,
    cfg: WriterConfig,
    rx: Receiver<Job>,
) {
    let mut resolver = Resolver::new(cfg.cache_capacity);
    let mut last_purge = Instant::now();
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => {
                purge(&mut *conn, &cfg, &mut last_purge);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut n = first.events.len();
        let mut jobs = vec![first];
        while n < cfg.max_group_events {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        process(&mut *conn, &vault, &metrics, &mut resolver, jobs);
        if last_purge.elapsed() > Duration::from_secs(3600) {
            purge(&mut *conn, &cfg, &mut last_purge);
        }
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
/// any other failure fall back to one transaction per job so that one bad
/// request cannot fail its neighbours.
fn process(
    conn: &mut dyn Conn,
    vault: &Vault,
    metrics: &WriterMetrics,
    resolver: &mut Resolver,
    jobs: Vec<Job>,
) {
    let mut attempt = 0;
    loop {
        match commit_group(conn, vault, metrics, resolver, &jobs) {
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
                    process(conn, vault, metrics, resolver, vec![j]);
                }
                return;
            }
        }
    }
}

fn commit_group(
    conn: &mut dyn Conn,
    vault: &Vault,
    metrics: &WriterMetrics,
    resolver: &mut Resolver,
    jobs: &[Job],
) -> Result<Vec<Outcome>> {
    let started = Instant::now();
    let events: Vec<&PreparedEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
    conn.begin()?;
    let result = resolver
        .apply(conn, vault, &events, now_ms())
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
