//! Readiness: which of this node's long-running parts work, and how much
//! work waits in each queue.
//!
//! Every long-running thread (the access log, the segment engine, the mail
//! and notice workers, the retention sweep, the queue watch) runs under
//! [`supervise`]; the writer has the same loop of its own. A panic marks the
//! part down in the [`Health`] registry, and it is started again after a
//! backoff; `/readyz` is ready only while every registered part is up.
//! Other faults (a database that went away) register as parts of their own
//! with [`Health::down`] and [`Health::up`].
//!
//! Queues are read from the store ([`queue_states`]): their depth, the age
//! of their oldest item, and whether something drains them (the worker that
//! takes from a queue says so with [`Health::set_consumer`]). A queue that
//! grows with nothing to drain it is warned about in the log, again at every
//! look while it keeps growing ([`QueueWatch`]).
//!
//! This module must never hold personal data: names of parts and queues,
//! reasons in words, counts and ages.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conn::Conn;
use crate::{Result, rfc3339};

#[derive(Debug, Clone)]
struct Component {
    up: bool,
    restarts: u64,
    reason: Option<String>,
    since_ms: i64,
}

/// The registry of this node's parts and queue consumers.
#[derive(Default)]
pub struct Health {
    components: Mutex<BTreeMap<&'static str, Component>>,
    consumers: Mutex<BTreeMap<&'static str, bool>>,
    /// When a write last failed for want of space (ms), 0 when the last
    /// write went through.
    storage_full_since: AtomicI64,
}

/// One part, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComponentView {
    pub name: String,
    pub up: bool,
    /// Times it was started again after a panic.
    pub restarts: u64,
    /// Why it is down, in words.
    pub reason: Option<String>,
    /// Since when it is in this state (RFC 3339).
    pub since: String,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Component>> {
        // A panic elsewhere while holding it leaves nothing half-done: each
        // update is one insert.
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `name` works (again).
    pub fn up(&self, name: &'static str) {
        let mut c = self.lock();
        let e = c.entry(name).or_insert(Component {
            up: false,
            restarts: 0,
            reason: None,
            since_ms: 0,
        });
        if !e.up {
            e.up = true;
            e.reason = None;
            e.since_ms = crate::now_ms();
        }
    }

    /// `name` does not work; `reason` says why, in words without personal data.
    pub fn down(&self, name: &'static str, reason: impl Into<String>) {
        let mut c = self.lock();
        let e = c.entry(name).or_insert(Component {
            up: true,
            restarts: 0,
            reason: None,
            since_ms: 0,
        });
        if e.up {
            e.since_ms = crate::now_ms();
        }
        e.up = false;
        e.reason = Some(reason.into());
    }

    /// `name` was started again after a panic.
    pub(crate) fn restarted(&self, name: &'static str) {
        if let Some(e) = self.lock().get_mut(name) {
            e.restarts += 1;
        }
    }

    /// `name` stopped on purpose (shutdown): it no longer counts.
    pub fn stopped(&self, name: &'static str) {
        self.lock().remove(name);
    }

    /// True while every registered part is up.
    pub fn ready(&self) -> bool {
        self.lock().values().all(|c| c.up)
    }

    pub fn components(&self) -> Vec<ComponentView> {
        self.lock()
            .iter()
            .map(|(name, c)| ComponentView {
                name: (*name).to_owned(),
                up: c.up,
                restarts: c.restarts,
                reason: c.reason.clone(),
                since: rfc3339(c.since_ms),
            })
            .collect()
    }

    /// Whether something drains `queue` on this node (see [`QUEUES`]).
    pub fn set_consumer(&self, queue: &'static str, drained: bool) {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue, drained);
    }

    pub fn consumer(&self, queue: &str) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(false)
    }

    /// A write failed for want of space (`true`) or went through (`false`).
    pub fn storage_full(&self, full: bool) {
        if full {
            let _ = self.storage_full_since.compare_exchange(
                0,
                crate::now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else if self.storage_full_since.load(Ordering::Relaxed) != 0 {
            self.storage_full_since.store(0, Ordering::Relaxed);
            tracing::info!("writes go through again: the store has space");
        }
    }

    /// Since when writes fail for want of space (ms), if they do.
    pub fn storage_full_since(&self) -> Option<i64> {
        match self.storage_full_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
}

/// Restarts after a panic wait this long at first, doubling up to
/// [`MAX_BACKOFF`]; a part that ran [`STEADY`] before it panicked starts
/// from the first wait again.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const STEADY: Duration = Duration::from_secs(60);

/// The wait before the next restart.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait after a run that lasted `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= STEADY {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Sleep `wait` in short slices; true if `stopped` said so meanwhile.
pub fn sleep_unless(wait: Duration, stopped: &dyn Fn() -> bool) -> bool {
    let until = Instant::now() + wait;
    loop {
        if stopped() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Run `body` on a thread `tarmo-{name}` until it returns; should it panic,
/// mark `name` down, wait (with backoff) and run it again. `stopped` cuts a
/// wait short at shutdown. `body` must pick up where it left off: what it
/// needs to keep (a queue's receiving end) lives outside the call.
pub fn supervise<F>(
    health: Arc<Health>,
    name: &'static str,
    stopped: impl Fn() -> bool + Send + 'static,
    mut body: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut() + Send + 'static,
{
    // Known to readiness before its thread first runs: a probe right after
    // start must name every part, not only those whose threads were
    // scheduled already.
    health.up(name);
    std::thread::Builder::new()
        .name(format!("tarmo-{name}"))
        .spawn(move || {
            let mut backoff = Backoff::default();
            loop {
                health.up(name);
                let began = Instant::now();
                match catch_unwind(AssertUnwindSafe(&mut body)) {
                    Ok(()) => {
                        health.stopped(name);
                        return;
                    }
                    Err(_) => {
                        let wait = backoff.after(began.elapsed());
                        // The panic's own message went to the log through
                        // the panic hook.
                        tracing::error!(
                            component = name,
                            restart_in_ms = wait.as_millis() as u64,
                            "a worker panicked; it is started again"
                        );
                        health.down(name, "panicked; restarting");
                        if sleep_unless(wait, &stopped) {
                            health.stopped(name);
                            return;
                        }
                        health.restarted(name);
                    }
                }
            }
        })
}

// ------------------------------------------------------------------ queues

/// The queues of work waiting in the store: name, the query giving their
/// depth and the time (ms) their oldest item has waited since, given now
/// as `$1`, and what drains them. Each queue's worker calls
/// [`Health::set_consumer`] with its name. Automations' sends wait from
/// their due time: a greeting due next year is not yet work.
pub const QUEUES: &[(&str, &str, &str)] = &[
    (
        "outbox_email",
        "SELECT count(*), min(created_ms) FROM outbox
         WHERE status IN ('pending', 'sending') AND channel = 'email' AND created_ms <= $1",
        "email is sent only with --smtp-url",
    ),
    (
        "outbox_sms",
        "SELECT count(*), min(created_ms) FROM outbox
         WHERE status IN ('pending', 'sending') AND channel = 'sms' AND created_ms <= $1",
        "SMS is sent only with --sms-webhook-url",
    ),
    (
        "outbox_webhook",
        "SELECT count(*), min(created_ms) FROM outbox
         WHERE status IN ('pending', 'sending') AND channel = 'webhook' AND created_ms <= $1",
        "push and call lists go to processors from the mail worker of `tarmo serve`",
    ),
    (
        "processor_notifications",
        "SELECT count(*), min(created_ms) FROM processor_notifications
         WHERE status IN ('pending', 'sending') AND created_ms <= $1",
        "erasure notifications are sent by the notice worker of `tarmo serve`",
    ),
    (
        "automation_sends",
        "SELECT count(*), min(due_ms) FROM sends WHERE status = 'due' AND due_ms <= $1",
        "automations and campaigns are sent by the scheduler of `tarmo serve`",
    ),
];

/// One queue, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueView {
    pub name: &'static str,
    /// Items waiting or being worked on.
    pub depth: i64,
    /// Age of the oldest of them, in seconds.
    pub oldest_age_seconds: Option<i64>,
    /// Whether something on this node drains the queue.
    pub consumer: bool,
    /// `empty`, `draining` (items, and a consumer), or `stuck` (items and
    /// nothing to take them).
    pub state: &'static str,
}

/// Every queue's state now.
pub fn queue_states(conn: &mut dyn Conn, health: &Health, now_ms: i64) -> Result<Vec<QueueView>> {
    let mut out = Vec::with_capacity(QUEUES.len());
    for (name, sql, _) in QUEUES {
        let (depth, oldest) = match conn.query_opt(sql, &[crate::conn::P::Int(now_ms)])? {
            Some(r) => (r.int(0)?, r.opt_int(1)?),
            None => (0, None),
        };
        let consumer = health.consumer(name);
        out.push(QueueView {
            name,
            depth,
            oldest_age_seconds: oldest.map(|ms| (now_ms - ms).max(0) / 1000),
            consumer,
            state: match (depth, consumer) {
                (0, _) => "empty",
                (_, true) => "draining",
                (_, false) => "stuck",
            },
        });
    }
    Ok(out)
}

/// Remembers each queue's depth at the last look, to tell which grow.
#[derive(Debug, Default)]
pub struct QueueWatch {
    last: BTreeMap<&'static str, i64>,
}

impl QueueWatch {
    /// The queues that grew since the last look with nothing to drain them.
    pub fn growing_stuck<'a>(&mut self, now: &'a [QueueView]) -> Vec<&'a QueueView> {
        let mut out = Vec::new();
        for q in now {
            let before = self.last.insert(q.name, q.depth).unwrap_or(0);
            if q.state == "stuck" && q.depth > before {
                out.push(q);
            }
        }
        out
    }
}

/// Look at the queues every `every` and warn about each that grows with
/// nothing to drain it. Runs under [`supervise`] until `stopped`.
pub fn watch_queues(
    store: Arc<crate::Store>,
    every: Duration,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let health = store.health.clone();
    let s = stopped.clone();
    let mut watch = QueueWatch::default();
    supervise(
        health.clone(),
        "queue-watch",
        move || s.load(Ordering::Relaxed),
        move || {
            loop {
                let states = store
                    .conn()
                    .and_then(|mut c| queue_states(&mut *c, &health, crate::now_ms()));
                match states {
                    Ok(states) => {
                        for q in watch.growing_stuck(&states) {
                            let hint = QUEUES
                                .iter()
                                .find(|(n, _, _)| *n == q.name)
                                .map_or("", |(_, _, h)| *h);
                            tracing::warn!(
                                queue = q.name,
                                depth = q.depth,
                                oldest_age_seconds = q.oldest_age_seconds.unwrap_or(0),
                                "work piles up and nothing drains it: {hint}"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the queues failed"),
                }
                if sleep_unless(every, &|| stopped.load(Ordering::Relaxed)) {
                    return;
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32};

    #[test]
    fn a_panicking_worker_is_down_then_restarted() {
        let health = Arc::new(Health::default());
        let runs = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, s2) = (runs.clone(), stop.clone(), stop.clone());
        let join = supervise(
            health.clone(),
            "test-worker",
            move || s.load(Ordering::SeqCst),
            move || {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first run fails");
                }
                while !s2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            },
        )
        .unwrap();
        // Down during the backoff.
        let deadline = Instant::now() + Duration::from_secs(5);
        while health.ready() {
            assert!(Instant::now() < deadline, "never marked down");
            std::thread::sleep(Duration::from_millis(2));
        }
        let c = &health.components()[0];
        assert_eq!((c.name.as_str(), c.up), ("test-worker", false));
        assert_eq!(c.reason.as_deref(), Some("panicked; restarting"));
        // Up again after it.
        while runs.load(Ordering::SeqCst) < 2 || !health.ready() {
            assert!(Instant::now() < deadline, "never restarted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(health.components()[0].restarts, 1);
        stop.store(true, Ordering::SeqCst);
        join.join().unwrap();
        assert!(health.components().is_empty(), "a clean stop unregisters");
    }

    #[test]
    fn backoff_doubles_up_to_a_bound_and_resets_after_a_steady_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(1);
        assert_eq!(b.after(quick), FIRST_BACKOFF);
        assert_eq!(b.after(quick), FIRST_BACKOFF * 2);
        for _ in 0..20 {
            b.after(quick);
        }
        assert_eq!(b.after(quick), MAX_BACKOFF);
        assert_eq!(b.after(STEADY), FIRST_BACKOFF);
    }

    fn q(name: &'static str, depth: i64, consumer: bool) -> QueueView {
        QueueView {
            name,
            depth,
            oldest_age_seconds: Some(1),
            consumer,
            state: match (depth, consumer) {
                (0, _) => "empty",
                (_, true) => "draining",
                (_, false) => "stuck",
            },
        }
    }

    #[test]
    fn only_a_stuck_queue_that_grows_is_warned_about_and_again_while_it_grows() {
        let mut w = QueueWatch::default();
        let names = |v: Vec<&QueueView>| v.iter().map(|q| q.name).collect::<Vec<_>>();
        let first = [
            q("outbox_email", 3, false),
            q("processor_notifications", 5, true),
        ];
        assert_eq!(names(w.growing_stuck(&first)), ["outbox_email"]);
        // Not grown: no repeat.
        let same = [
            q("outbox_email", 3, false),
            q("processor_notifications", 9, true),
        ];
        assert!(w.growing_stuck(&same).is_empty());
        let more = [q("outbox_email", 4, false)];
        assert_eq!(names(w.growing_stuck(&more)), ["outbox_email"]);
        let drained = [q("outbox_email", 8, true)];
        assert!(w.growing_stuck(&drained).is_empty());
    }
}
