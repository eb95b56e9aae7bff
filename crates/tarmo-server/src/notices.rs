//! The erasure-notice worker: tells each processor that received an erased
//! person's data (GDPR Art. 17(2) and 19), by POSTing the sealed
//! notification to the processor's erasure webhook with its bearer token.
//! Transient failures are retried with exponential backoff; after a bounded
//! number of attempts, or on a permanent refusal, the notification is given
//! up and its payload wiped, and the request shows it as `failed` so that
//! someone tells the processor another way. Every outcome is recorded.
//!
//! It logs notification, request and processor ids, never an identifier,
//! and records errors in words that carry no personal data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tarmo_notify::{SendError, WebhookClient, WebhookUrl};
use tarmo_store::erasure::notices::{self, Delivery};
use tarmo_store::processors::ClaimedNotification;
use tarmo_store::writer::WriterHandle;

use crate::mail::{OutboxSignal, Running};

/// When to try again and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; it doubles with each one.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Attempts before a notification is given up.
    pub max_attempts: i64,
}

impl Default for RetryPolicy {
    /// About a day of trying: 1, 2, 4, ... minutes, at most 6 hours apart,
    /// 12 attempts.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(6 * 3600),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts.
    pub fn delay(&self, attempts: i64) -> Duration {
        let doublings = attempts.clamp(1, 30) as u32 - 1;
        self.first_delay
            .saturating_mul(1u32 << doublings.min(20))
            .min(self.max_delay)
    }
}

pub struct NoticeWorker {
    pub writer: WriterHandle,
    pub client: WebhookClient,
    /// Rung when notifications are queued, so they go at once.
    pub signal: Arc<OutboxSignal>,
    /// How often due notifications are looked for when nobody rings.
    pub poll: Duration,
    pub retry: RetryPolicy,
    /// This node, and how long its claims on notifications last.
    pub claimant: tarmo_store::lease::Claimant,
}

/// Start the worker; restarted after a backoff should it panic.
pub fn spawn(w: NoticeWorker) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = w.signal.clone();
    let health = w.writer.health().clone();
    health.set_consumer("processor_notifications", true);
    let (s, cut_short) = (stop.clone(), stop.clone());
    let join = tarmo_store::health::supervise(
        health,
        "notices",
        move || cut_short.load(Ordering::SeqCst),
        move || run(&w, &s),
    )
    .expect("spawn the erasure-notice worker");
    Running { stop, signal, join }
}

fn run(w: &NoticeWorker, stop: &AtomicBool) {
    match notices::recover(&w.writer, &w.claimant) {
        Ok(n) if n > 0 => tracing::warn!(
            notifications = n,
            "erasure notifications interrupted mid-delivery are sent again"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "recovering erasure notifications failed"),
    }
    while !stop.load(Ordering::SeqCst) {
        let claimed = notices::claim(&w.writer, &w.claimant, 20);
        let worked = match claimed {
            Ok(list) => {
                let any = !list.is_empty();
                let mut leased = std::time::Instant::now();
                let mut held: Vec<i64> = list.iter().map(|n| n.id).collect();
                for n in list {
                    // Half the lease gone: extend it for what is left, and
                    // skip what another node has taken over meanwhile.
                    if leased.elapsed() > w.claimant.lease / 2 {
                        match notices::renew(&w.writer, &w.claimant, held.clone()) {
                            Ok(h) => held = h,
                            Err(e) => {
                                tracing::error!(error = %e, "renewing notification claims failed");
                                break;
                            }
                        }
                        leased = std::time::Instant::now();
                    }
                    if !held.contains(&n.id) {
                        continue;
                    }
                    deliver(w, n);
                }
                any
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming erasure notifications failed");
                false
            }
        };
        if !worked {
            w.signal.wait(w.poll);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retry(String),
    Failed(String),
}

/// What went wrong, from the class and status only: a server's own words
/// might echo the person.
fn describe(e: &SendError) -> String {
    match e {
        SendError::Rejected { code, .. } => format!("refused with HTTP {code}"),
        SendError::Deferred { code, .. } => format!("HTTP {code}: try again later"),
        SendError::Unreachable { .. } => "the webhook could not be reached".into(),
        SendError::Protocol { .. } => "the webhook did not answer HTTP as expected".into(),
        SendError::TargetRefused { .. } => {
            "refused: the webhook is not https or points at a private address (allow_private_webhooks)"
                .into()
        }
        _ => "delivery error".into(),
    }
}

fn classify(e: &SendError, attempts: i64, policy: &RetryPolicy) -> Outcome {
    // A refused token is the operator's to fix, not a reason to stop
    // telling the processor: keep trying while attempts last.
    let credentials = matches!(
        e,
        SendError::Rejected {
            code: 401 | 403,
            ..
        }
    );
    let what = describe(e);
    if e.is_permanent() && !credentials {
        Outcome::Failed(what)
    } else if attempts >= policy.max_attempts {
        Outcome::Failed(format!("{what}; given up after {attempts} attempts"))
    } else {
        Outcome::Retry(what)
    }
}

fn attempt(w: &NoticeWorker, n: &ClaimedNotification) -> Outcome {
    let Some(url) = &n.webhook else {
        return Outcome::Failed("the processor has no erasure webhook any more".into());
    };
    let Ok(url) = WebhookUrl::parse(url) else {
        return Outcome::Failed("the processor's erasure webhook is not a valid URL".into());
    };
    match w
        .client
        .post_json(&url, &n.payload, n.token.as_ref().map(|t| t.expose()))
    {
        Ok(()) => Outcome::Delivered,
        Err(e) => classify(&e, n.attempts, &w.retry),
    }
}

fn deliver(w: &NoticeWorker, n: ClaimedNotification) {
    let (id, attempts) = (n.id, n.attempts);
    let outcome = attempt(w, &n);
    let ids = (n.request_id.0, n.processor_id.0);
    drop(n);
    let delivery = match outcome {
        Outcome::Delivered => {
            tracing::info!(
                notification_id = id,
                request_id = ids.0,
                processor_id = ids.1,
                attempts,
                "erasure notification delivered"
            );
            Delivery::Delivered
        }
        Outcome::Retry(why) => {
            let delay = w.retry.delay(attempts).as_millis() as i64;
            tracing::warn!(
                notification_id = id,
                request_id = ids.0,
                processor_id = ids.1,
                attempts,
                error = %why,
                "erasure notification not delivered; will retry"
            );
            Delivery::Retry {
                delay_ms: delay,
                why,
            }
        }
        Outcome::Failed(why) => {
            tracing::warn!(
                notification_id = id,
                request_id = ids.0,
                processor_id = ids.1,
                attempts,
                error = %why,
                "erasure notification given up: the processor must be told another way"
            );
            Delivery::Failed(why)
        }
    };
    let r = notices::record(&w.writer, &w.claimant, id, delivery);
    match r {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            notification_id = id,
            "the claim on this notification ran out and another node took it over"
        ),
        Err(e) => {
            tracing::error!(notification_id = id, error = %e, "recording a notification outcome failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(60));
        assert_eq!(p.delay(2), Duration::from_secs(120));
        assert_eq!(p.delay(5), Duration::from_secs(960));
        assert_eq!(p.delay(11), Duration::from_secs(6 * 3600));
        assert_eq!(p.delay(1000), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn outcomes_by_error_class() {
        let p = RetryPolicy::default();
        let deferred = SendError::Deferred {
            code: 503,
            detail: "ann@example.com".into(),
        };
        assert_eq!(
            classify(&deferred, 1, &p),
            Outcome::Retry("HTTP 503: try again later".into())
        );
        assert!(matches!(classify(&deferred, 12, &p), Outcome::Failed(_)));
        let gone = SendError::Rejected {
            code: 404,
            detail: String::new(),
        };
        assert_eq!(
            classify(&gone, 1, &p),
            Outcome::Failed("refused with HTTP 404".into())
        );
        let token = SendError::Rejected {
            code: 401,
            detail: String::new(),
        };
        assert!(matches!(classify(&token, 1, &p), Outcome::Retry(_)));
    }
}
