//! The automation scheduler: once a second (at once while work is left),
//! a writer transaction makes sends due from what committed (segment
//! entries and exits, events, birthdays, cron firings, campaigns), and
//! another takes the due sends and carries them out — decision, caps,
//! quiet hours, the outbox row — then wakes the mail worker.
//!
//! Each step is a use case of the store (`automations::follow_committed`,
//! `automations::send_due_now`) that owns its transaction.
//!
//! It logs counts, never a person's data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tarmo_store::automations::{self, SendConfig};
use tarmo_store::writer::WriterHandle;

use crate::mail::{OutboxSignal, Running};

pub struct Scheduler {
    pub writer: WriterHandle,
    pub config: SendConfig,
    /// Rung after sends are queued.
    pub outbox: Arc<OutboxSignal>,
    /// How long to sleep when nothing is left: the resolution of due times.
    pub tick: Duration,
    /// Sends carried out per transaction.
    pub batch: i64,
    /// Where the scheduler says it drains the `automation_sends` queue.
    pub health: Arc<tarmo_store::health::Health>,
}

pub fn spawn(s: Scheduler) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(OutboxSignal::default());
    s.health.set_consumer("automation_sends", true);
    let (st, sig) = (stop.clone(), signal.clone());
    let join = std::thread::Builder::new()
        .name("tarmo-automations".into())
        .spawn(move || run(s, st, sig))
        .expect("spawn the automation scheduler");
    Running { stop, signal, join }
}

fn run(s: Scheduler, stop: Arc<AtomicBool>, signal: Arc<OutboxSignal>) {
    while !stop.load(Ordering::SeqCst) {
        let followed = automations::follow_committed(&s.writer, s.config.clone());
        let mut more = match followed {
            Ok(f) => f.more,
            Err(e) => {
                tracing::error!(error = %e, "automations: following what committed failed");
                false
            }
        };
        let sent = automations::send_due_now(&s.writer, s.config.clone(), s.batch);
        match sent {
            Ok(r) => {
                if r.sent > 0 {
                    s.outbox.ring();
                }
                if r.sent + r.skipped > 0 {
                    tracing::debug!(
                        sent = r.sent,
                        skipped = r.skipped,
                        waiting = r.waiting,
                        "automation sends"
                    );
                }
                more |= r.more;
            }
            Err(e) => tracing::error!(error = %e, "automations: sending what is due failed"),
        }
        if !more {
            signal.wait(s.tick);
        }
    }
}
