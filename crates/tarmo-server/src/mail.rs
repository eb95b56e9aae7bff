//! The mail worker: sends what the outbox holds, over SMTP (email), the
//! SMS webhook and processors' webhooks (push and call lists of webhook
//! automations), and records each outcome through the writer. A marketing
//! message is checked against the policy again when it is sent, so a
//! withdrawal between queueing and sending stops it.
//!
//! It logs outbox ids and profile ids, never an address or a message body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tarmo_core::consent::{Channel, PurposeId, decide};
use tarmo_core::ids::ProfileId;
use tarmo_notify::templates::{self, ConfirmationContext};
use tarmo_notify::{Deliver, DeliverSms, Email, Mailbox, MessageId, SendError};
use tarmo_store::consent::Subject;
use tarmo_store::outbox::{self, Claimed, OutboxMessage, SendOutcome};
use tarmo_store::writer::WriterHandle;
use tarmo_store::{Services, Store, now_ms};

use crate::ServerConfig;

/// Wakes the worker when something was queued.
#[derive(Default)]
pub struct OutboxSignal {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl OutboxSignal {
    pub fn ring(&self) {
        *self.rung.lock().expect("outbox signal") = true;
        self.cv.notify_one();
    }

    pub(crate) fn wait(&self, timeout: Duration) {
        let g = self.rung.lock().expect("outbox signal");
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |rung| !*rung)
            .expect("outbox signal");
        *g = false;
    }
}

/// What the worker delivers with. A channel without a deliverer keeps its
/// messages in the outbox until one is configured.
pub struct MailWorker {
    pub store: Arc<Store>,
    pub writer: WriterHandle,
    pub config: ServerConfig,
    pub email: Option<Box<dyn Deliver>>,
    pub sms: Option<Box<dyn DeliverSms>>,
    /// Push and call lists to processors' webhooks.
    pub webhook: Option<tarmo_notify::WebhookClient>,
    pub from: Mailbox,
    pub signal: Arc<OutboxSignal>,
    /// How often the outbox is looked at when nobody rings.
    pub poll: Duration,
    /// This node, and how long its claims on messages last.
    pub claimant: tarmo_store::lease::Claimant,
}

/// A running worker; stop it before the writer.
pub struct Running {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) signal: Arc<OutboxSignal>,
    pub(crate) join: JoinHandle<()>,
}

impl Running {
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal.ring();
        let _ = self.join.join();
    }
}

/// After this many attempts a message is given up.
const MAX_ATTEMPTS: i64 = 12;

/// Start the worker; restarted after a backoff should it panic (a message
/// it was sending is sent again, with the same Message-ID).
pub fn spawn(w: MailWorker) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = w.signal.clone();
    let health = w.store.health.clone();
    // What this node drains: the readiness body and the queue watch say
    // which queues wait for nothing.
    health.set_consumer("outbox_email", w.email.is_some());
    health.set_consumer("outbox_sms", w.sms.is_some());
    health.set_consumer("outbox_webhook", w.webhook.is_some());
    let (s, cut_short) = (stop.clone(), stop.clone());
    let join = tarmo_store::health::supervise(
        health,
        "mail",
        move || cut_short.load(Ordering::SeqCst),
        move || {
            let svc = Services::new(w.store.clone(), w.writer.clone());
            run(&w, &svc, &s)
        },
    )
    .expect("spawn the mail worker");
    Running { stop, signal, join }
}

fn run(w: &MailWorker, svc: &Services, stop: &AtomicBool) {
    match outbox::recover_claims(svc, &w.claimant) {
        Ok(n) if n > 0 => tracing::warn!(
            messages = n,
            "messages interrupted mid-send are sent again, with the same Message-ID"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "outbox recovery failed"),
    }
    let mut channels = Vec::new();
    if w.email.is_some() {
        channels.push("email");
    }
    if w.sms.is_some() {
        channels.push("sms");
    }
    if w.webhook.is_some() {
        channels.push("webhook");
    }
    while !stop.load(Ordering::SeqCst) {
        let mut worked = false;
        for &channel in &channels {
            let claimed = outbox::claim(svc, &w.claimant, channel, 20);
            match claimed {
                Ok(list) => {
                    worked |= !list.is_empty();
                    let subjects = match subjects_of(svc, &list) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the decisions' inputs failed");
                            Subjects::new()
                        }
                    };
                    let mut leased = std::time::Instant::now();
                    let mut held: Vec<i64> = list.iter().map(|m| m.id).collect();
                    for m in list {
                        // Half the lease gone: extend it for what is left,
                        // and skip what another node has taken over.
                        if leased.elapsed() > w.claimant.lease / 2 {
                            match outbox::renew_claims(svc, &w.claimant, held.clone()) {
                                Ok(h) => held = h,
                                Err(e) => {
                                    tracing::error!(error = %e, "renewing outbox claims failed");
                                    break;
                                }
                            }
                            leased = std::time::Instant::now();
                        }
                        if held.contains(&m.id) {
                            deliver(w, svc, m, &subjects);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "claiming outbox messages failed"),
            }
        }
        if !worked {
            w.signal.wait(w.poll);
        }
    }
}

/// The decision's inputs for a claimed page's marketing messages, by
/// (purpose, profile), read at once: one read a page instead of one a
/// message. The page is sent within moments of the read; the decision
/// that let each message into the outbox was taken in the transaction
/// that wrote it.
type Subjects = HashMap<(PurposeId, ProfileId), Subject>;

fn subjects_of(svc: &Services, list: &[Claimed]) -> Result<Subjects, tarmo_store::Error> {
    let mut by_purpose: HashMap<&PurposeId, Vec<ProfileId>> = HashMap::new();
    for m in list {
        if let OutboxMessage::Marketing { purpose, .. }
        | OutboxMessage::MarketingSms { purpose, .. }
        | OutboxMessage::ProcessorList { purpose, .. } = &m.message
        {
            by_purpose.entry(purpose).or_default().push(m.profile_id);
        }
    }
    outbox::subjects_of(svc, &by_purpose)
}

/// The person's decision inputs: from the page's read, else read now.
fn subject_now(
    svc: &Services,
    subjects: &Subjects,
    profile: ProfileId,
    purpose: &PurposeId,
) -> Result<Subject, tarmo_store::Error> {
    match subjects.get(&(purpose.clone(), profile)) {
        Some(s) => Ok(*s),
        None => outbox::subject_now(svc, profile, purpose),
    }
}

enum Outcome {
    Sent,
    Retry(String),
    Failed(String),
}

fn classify(e: &SendError, attempts: i64) -> Outcome {
    // Wrong credentials are the operator's to fix, not the recipient's
    // fault: keep the message and keep trying.
    let config_fault = matches!(e, SendError::Auth { .. });
    let what = match e.code() {
        Some(c) => format!("{} (reply {c})", kind_name(e)),
        None => kind_name(e).to_owned(),
    };
    if (e.is_permanent() && !config_fault) || attempts >= MAX_ATTEMPTS {
        Outcome::Failed(what)
    } else {
        Outcome::Retry(what)
    }
}

fn kind_name(e: &SendError) -> &'static str {
    match e {
        SendError::Rejected { .. } => "rejected",
        SendError::Auth { .. } => "authentication refused",
        SendError::Deferred { .. } => "deferred",
        SendError::Unreachable { .. } => "unreachable",
        SendError::Protocol { .. } => "protocol error",
        SendError::InvalidMessage { .. } => "invalid message",
        _ => "delivery error",
    }
}

fn deliver(w: &MailWorker, svc: &Services, m: Claimed, subjects: &Subjects) {
    let id = m.id;
    let outcome = match build_and_send(w, svc, &m, subjects) {
        Ok(()) => Outcome::Sent,
        Err(Stop::NotAllowed(reason)) => {
            Outcome::Failed(format!("{}{reason}", tarmo_store::automations::NOT_ALLOWED))
        }
        Err(Stop::Send(e)) => classify(&e, m.attempts),
        Err(Stop::Store(e)) => Outcome::Retry(format!("store: {e}")),
    };
    let attempts = m.attempts;
    let record = match outcome {
        Outcome::Sent => {
            tracing::info!(outbox_id = id, profile_id = m.profile_id.0, "message sent");
            SendOutcome::Sent
        }
        Outcome::Retry(why) => {
            let delay = 30_000i64.saturating_mul(1 << attempts.clamp(0, 7));
            tracing::warn!(outbox_id = id, attempts, error = %why, "sending failed; will retry");
            SendOutcome::Retry {
                delay_ms: delay.min(3_600_000),
                why,
            }
        }
        Outcome::Failed(why) => {
            tracing::warn!(outbox_id = id, error = %why, "message given up");
            SendOutcome::Failed(why)
        }
    };
    let r = outbox::record_outcome(svc, &w.claimant, id, record);
    match r {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            outbox_id = id,
            "the claim on this message ran out and another node took it over"
        ),
        Err(e) => tracing::error!(outbox_id = id, error = %e, "recording a send outcome failed"),
    }
}

enum Stop {
    NotAllowed(&'static str),
    Send(SendError),
    Store(tarmo_store::Error),
}

impl From<tarmo_store::Error> for Stop {
    fn from(e: tarmo_store::Error) -> Self {
        Stop::Store(e)
    }
}

fn message_id(id: i64) -> MessageId {
    MessageId::new(&format!("tarmo-outbox-{id}")).expect("a plain id is a valid Message-ID")
}

/// The message asking the person to confirm a request about their data.
fn verification_text(
    language: &str,
    org: &str,
    kind: &str,
    id: tarmo_core::ids::RequestId,
    url: &str,
) -> (String, String) {
    match language.split('-').next().unwrap_or("en") {
        "fi" => {
            let what = match kind {
                "access" | "portability" => "saada kopion tiedoistasi",
                "erasure" => "poistaa tietosi",
                "rectification" => "korjata tietojasi",
                "restriction" => "rajoittaa tietojesi käsittelyä",
                _ => "vastustaa tietojesi käsittelyä",
            };
            (
                format!("Vahvista pyyntösi ({org})"),
                format!(
                    "Hei,\n\n{org} sai pyynnön {what} (pyyntö {id}). Jos pyysit tätä itse, vahvista se tästä:\n\n{url}\n\nJos et pyytänyt, voit jättää viestin huomiotta: mitään ei tapahdu.\n"
                ),
            )
        }
        "de" => {
            let what = match kind {
                "access" | "portability" => "eine Kopie Ihrer Daten zu erhalten",
                "erasure" => "Ihre Daten zu löschen",
                "rectification" => "Ihre Daten zu berichtigen",
                "restriction" => "die Verarbeitung Ihrer Daten einzuschränken",
                _ => "der Verarbeitung Ihrer Daten zu widersprechen",
            };
            (
                format!("Bitte bestätigen Sie Ihre Anfrage ({org})"),
                format!(
                    "Hallo,\n\n{org} hat eine Anfrage erhalten, {what} (Anfrage {id}). Wenn Sie das waren, bestätigen Sie hier:\n\n{url}\n\nWenn nicht, ignorieren Sie diese Nachricht: Es passiert nichts.\n"
                ),
            )
        }
        _ => {
            let what = match kind {
                "access" | "portability" => "send you a copy of your data",
                "erasure" => "erase your data",
                "rectification" => "correct your data",
                "restriction" => "restrict the use of your data",
                _ => "stop using your data as you objected",
            };
            (
                format!("Please confirm your request ({org})"),
                format!(
                    "Hello,\n\n{org} was asked to {what} (request {id}). If that was you, confirm here:\n\n{url}\n\nIf it was not you, ignore this message: nothing will happen.\n"
                ),
            )
        }
    }
}

fn build_and_send(
    w: &MailWorker,
    svc: &Services,
    m: &Claimed,
    subjects: &Subjects,
) -> Result<(), Stop> {
    let catalog = w.store.catalog()?;
    match &m.message {
        OutboxMessage::Confirmation {
            to,
            language,
            token,
            purposes,
            expires_ms,
        } => {
            let lang = tarmo_notify::templates::Lang::negotiate(language).code();
            let list = outbox::confirmation_purposes(svc, &catalog, purposes, language, lang)?
                .into_iter()
                .map(|(name, notice)| templates::Purpose { name, notice })
                .collect();
            let ctx = ConfirmationContext {
                organisation: w.config.organisation.clone(),
                purposes: list,
                confirm_url: format!("{}/c/{token}", w.config.public_url),
                expires_in_hours: ((expires_ms - m.created_ms).max(0) / 3_600_000) as u32,
            };
            if m.channel == "sms" {
                let body = templates::confirmation_sms(language, &ctx);
                let sms = w.sms.as_ref().expect("claimed only with a deliverer");
                sms.send_sms(to, &body, message_id(m.id).as_str())
                    .map_err(Stop::Send)
            } else {
                let c = templates::confirmation_email(language, &ctx);
                let email = Email {
                    from: w.from.clone(),
                    to: to.clone(),
                    subject: c.subject,
                    text: c.text,
                    html: c.html,
                    message_id: message_id(m.id),
                    list_unsubscribe: None,
                };
                let d = w.email.as_ref().expect("claimed only with a deliverer");
                d.send_email(&email).map_err(Stop::Send)
            }
        }
        OutboxMessage::RequestVerification {
            to,
            language,
            token,
            request_type,
            request_id,
        } => {
            let url = format!("{}/r/{token}", w.config.public_url);
            let (subject, text) = verification_text(
                language,
                &w.config.organisation,
                request_type,
                *request_id,
                &url,
            );
            if m.channel == "sms" {
                let sms = w.sms.as_ref().expect("claimed only with a deliverer");
                sms.send_sms(to, &text, message_id(m.id).as_str())
                    .map_err(Stop::Send)
            } else {
                let html = format!(
                    "<!doctype html><html><body><pre style=\"font:inherit;white-space:pre-wrap\">{}</pre></body></html>",
                    crate::pages::esc(&text)
                );
                let email = Email {
                    from: w.from.clone(),
                    to: to.clone(),
                    subject,
                    text,
                    html,
                    message_id: message_id(m.id),
                    list_unsubscribe: None,
                };
                let d = w.email.as_ref().expect("claimed only with a deliverer");
                d.send_email(&email).map_err(Stop::Send)
            }
        }
        OutboxMessage::Marketing {
            to,
            purpose,
            subject,
            text,
            html,
            unsubscribe,
        } => {
            let Some(c) = catalog.get(purpose.as_str()) else {
                return Err(Stop::NotAllowed("unknown_purpose"));
            };
            let Subject::Known(_, st, flags) = subject_now(svc, subjects, m.profile_id, purpose)?
            else {
                return Err(Stop::NotAllowed("unknown_profile"));
            };
            let v = decide(&c.rule, Some(Channel::Email), st.as_ref(), flags, now_ms());
            if !v.allowed {
                return Err(Stop::NotAllowed(v.reason.as_str()));
            }
            let html = html.clone().unwrap_or_else(|| {
                format!(
                    "<!doctype html><html><body><pre style=\"font:inherit;white-space:pre-wrap\">{}</pre></body></html>",
                    crate::pages::esc(text)
                )
            });
            let email = Email {
                from: w.from.clone(),
                to: to.clone(),
                subject: subject.clone(),
                text: text.clone(),
                html,
                message_id: message_id(m.id),
                list_unsubscribe: Some(format!("{}/u/{unsubscribe}", w.config.public_url)),
            };
            let d = w.email.as_ref().expect("claimed only with a deliverer");
            d.send_email(&email).map_err(Stop::Send)
        }
        OutboxMessage::ProcessorList {
            processor_id,
            purpose,
            list,
            payload,
        } => {
            let Some(c) = catalog.get(purpose.as_str()) else {
                return Err(Stop::NotAllowed("unknown_purpose"));
            };
            let Subject::Known(_, st, flags) = subject_now(svc, subjects, m.profile_id, purpose)?
            else {
                return Err(Stop::NotAllowed("unknown_profile"));
            };
            let channel = if list == "call" {
                Channel::Phone
            } else {
                Channel::Push
            };
            let v = decide(&c.rule, Some(channel), st.as_ref(), flags, now_ms());
            if !v.allowed {
                return Err(Stop::NotAllowed(v.reason.as_str()));
            }
            let Some((url, token)) = outbox::processor_webhook(svc, *processor_id)? else {
                return Err(Stop::NotAllowed("processor_without_webhook"));
            };
            let url = tarmo_notify::WebhookUrl::parse(&url).map_err(|e| {
                Stop::Send(SendError::TargetRefused {
                    detail: e.to_string(),
                })
            })?;
            // The processor deduplicates by `id`: a send repeated after a
            // crash carries the same one.
            let mut body = payload.clone();
            if let Some(o) = body.as_object_mut() {
                o.insert("id".into(), message_id(m.id).as_str().into());
            }
            let client = w.webhook.as_ref().expect("claimed only with a deliverer");
            client
                .post_json(&url, &body, token.as_deref())
                .map_err(Stop::Send)
        }
        OutboxMessage::MarketingSms { to, purpose, text } => {
            let Some(c) = catalog.get(purpose.as_str()) else {
                return Err(Stop::NotAllowed("unknown_purpose"));
            };
            let Subject::Known(_, st, flags) = subject_now(svc, subjects, m.profile_id, purpose)?
            else {
                return Err(Stop::NotAllowed("unknown_profile"));
            };
            let v = decide(&c.rule, Some(Channel::Sms), st.as_ref(), flags, now_ms());
            if !v.allowed {
                return Err(Stop::NotAllowed(v.reason.as_str()));
            }
            let sms = w.sms.as_ref().expect("claimed only with a deliverer");
            sms.send_sms(to, text, message_id(m.id).as_str())
                .map_err(Stop::Send)
        }
    }
}
