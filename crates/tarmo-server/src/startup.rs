//! The composition root: [`Application::build`] opens the store, starts the
//! writer, the workers and the listener from [`Settings`]; `tarmo serve`
//! and the in-process tests run it alike.
//!
//! What it must keep: shutdown stops the workers before the writer (they
//! hold writer handles), and the writer drains its queue before the store
//! is checkpointed; nothing is answered before it is durable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tarmo_store::Store;
use tarmo_store::writer::WriterConfig;

use crate::settings::{Settings, apply_purposes, open_store, server_config};

/// A built application: bound, its store open and its workers running;
/// [`Application::run_until_stopped`] serves, in a tokio runtime, until the
/// shutdown future ends.
pub struct Application {
    addr: SocketAddr,
    scheme: &'static str,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<crate::AppState>,
    workers: Workers,
}

/// What runs beside the HTTP server, stopped in order once it is done.
struct Workers {
    store: Arc<Store>,
    writer: std::thread::JoinHandle<()>,
    access: tarmo_store::access_log::LoggerThread,
    segments: Arc<tarmo_store::segments::engine::SegmentEngine>,
    segments_thread: std::thread::JoinHandle<()>,
    scheduler: crate::mail::Running,
    mailer: crate::mail::Running,
    sweeper: Sweeper,
    notices: crate::mail::Running,
    queues_stop: Arc<std::sync::atomic::AtomicBool>,
    queue_watch: std::thread::JoinHandle<()>,
}

impl Application {
    /// Open the store (applying `tarmo.toml`'s purposes), bind `s.listen`,
    /// start the writer and every worker. It blocks (the PostgreSQL client
    /// runs a runtime of its own): call it outside async code, or through
    /// `spawn_blocking`.
    pub fn build(s: Settings) -> anyhow::Result<Self> {
        let store = Arc::new(open_store(&s)?);
        apply_purposes(&store, &s)?;
        let listener = std::net::TcpListener::bind(&s.listen)
            .with_context(|| format!("cannot listen on {}", s.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let config = server_config(&s, addr)?;
        if !config.public_url.starts_with("https://") {
            tracing::warn!(public_url = %config.public_url, "links in messages are not https; set --public-url to the https address people reach");
        }
        let tls = match (&s.serve.tls_cert, &s.serve.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k).map_err(anyhow::Error::msg)?),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let node = match &s.serve.node_id {
            Some(n) => n.clone(),
            None => tarmo_store::lease::node_id_of(&s.data_dir)
                .with_context(|| format!("keeping the node id in {}", s.data_dir.display()))?,
        };
        let claimant = tarmo_store::lease::Claimant::new(
            node.clone(),
            std::time::Duration::from_secs(s.serve.work_lease_seconds.unwrap_or(60).max(1)),
        );
        let (writer, join) = store.start_writer(WriterConfig {
            pipelined: !s.serve.sync_in_commit,
            ..WriterConfig::default()
        })?;
        let (access, access_thread) = access_logger(&s, &store, &writer);
        let segments = tarmo_store::segments::engine::SegmentEngine::start(
            store.clone(),
            writer.clone(),
            s.commerce.clone(),
        )?;
        let segments_thread = {
            let (engine, watched) = (segments.clone(), segments.clone());
            tarmo_store::health::supervise(
                store.health.clone(),
                "segments",
                move || watched.is_stopped(),
                move || engine.run(),
            )?
        };
        let queues_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let queue_watch = tarmo_store::health::watch_queues(
            store.clone(),
            std::time::Duration::from_secs(s.serve.queue_watch_seconds.unwrap_or(60).max(1)),
            queues_stop.clone(),
        )?;
        let state = crate::AppState::new(
            store.clone(),
            writer.clone(),
            s.identity.clone(),
            config.clone(),
            access,
            segments.clone(),
        );
        let writer_for_sweeps = writer.clone();
        let notices = crate::notices::spawn(crate::notices::NoticeWorker {
            writer: writer.clone(),
            client: tarmo_notify::WebhookClient::new(
                std::time::Duration::from_secs(10),
                crate::settings::webhook_targets(&s),
            ),
            signal: state.notices.clone(),
            poll: std::time::Duration::from_secs(2),
            retry: Default::default(),
            claimant: claimant.clone(),
        });
        let scheduler = crate::scheduler::spawn(crate::scheduler::Scheduler {
            writer: writer.clone(),
            config: config.send_config(),
            outbox: state.outbox.clone(),
            tick: std::time::Duration::from_secs(1),
            batch: 200,
            health: store.health.clone(),
        });
        let mailer = crate::mail::spawn(mail_worker(
            &s,
            store.clone(),
            writer,
            config,
            state.outbox.clone(),
            claimant,
        )?);
        let sweeper = retention_thread(writer_for_sweeps, s.serve.retention_interval_minutes, node);
        Ok(Self {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            listener,
            tls,
            state,
            workers: Workers {
                store,
                writer: join,
                access: access_thread,
                segments,
                segments_thread,
                scheduler,
                mailer,
                sweeper,
                notices,
                queues_stop,
                queue_watch,
            },
        })
    }

    /// The address it is bound to (the port chosen, for `127.0.0.1:0`).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Serve until `shutdown` ends, then stop the workers, the writer (which
    /// drains its queue) and checkpoint the store.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            addr,
            scheme,
            listener,
            tls,
            state,
            workers,
        } = self;
        tracing::info!(%addr, store = workers.store.backend_name(), scheme, "tarmo is serving");
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = crate::app(state);
        crate::serve::run(listener, tls, app, shutdown, Default::default()).await;
        // Joining threads blocks: off the async workers.
        tokio::task::spawn_blocking(move || workers.stop())
            .await
            .map_err(|_| anyhow::anyhow!("stopping the workers panicked"))?
    }
}

impl Workers {
    fn stop(self) -> anyhow::Result<()> {
        // The access log's last counts are written once every request is done.
        self.access.join();
        // The workers hold writer handles: stop them first. Then every handle
        // is gone, so the writer drains its queue and stops.
        self.segments.stop();
        let _ = self.segments_thread.join();
        drop(self.segments);
        self.scheduler.stop();
        self.mailer.stop();
        self.sweeper.stop();
        self.notices.stop();
        self.queues_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.queue_watch.join();
        self.writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        self.store.checkpoint()?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn mail_worker(
    s: &Settings,
    store: Arc<Store>,
    writer: tarmo_store::writer::WriterHandle,
    config: crate::ServerConfig,
    signal: Arc<crate::mail::OutboxSignal>,
    claimant: tarmo_store::lease::Claimant,
) -> anyhow::Result<crate::mail::MailWorker> {
    let email: Option<Box<dyn tarmo_notify::Deliver>> = match &s.serve.smtp_url {
        None => {
            tracing::warn!(
                "no --smtp-url: confirmation and marketing email wait in the outbox until one is set"
            );
            None
        }
        Some(url) => {
            let mut cfg = tarmo_notify::SmtpConfig::parse(url)?;
            if let Some(ca) = &s.serve.smtp_ca {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                cfg = cfg.with_root_certificate(&pem)?;
            }
            Some(Box::new(tarmo_notify::SmtpMailer::new(&cfg)?))
        }
    };
    let sms: Option<Box<dyn tarmo_notify::DeliverSms>> = match &s.serve.sms_webhook_url {
        None => None,
        Some(url) => {
            let mut w = tarmo_notify::SmsWebhook::new(url, crate::settings::webhook_targets(s))
                .context("--sms-webhook-url")?;
            if let Some(t) = &s.serve.sms_webhook_token {
                w = w.with_bearer_token(t);
            }
            Some(Box::new(w))
        }
    };
    let from = crate::settings::mailbox(
        s.serve.mail_from.as_deref().unwrap_or("tarmo@localhost"),
        &config.organisation,
    );
    Ok(crate::mail::MailWorker {
        store,
        writer,
        config,
        email,
        sms,
        webhook: Some(tarmo_notify::WebhookClient::new(
            std::time::Duration::from_secs(10),
            crate::settings::webhook_targets(s),
        )),
        from,
        signal,
        poll: std::time::Duration::from_secs(2),
        claimant,
    })
}

/// The retention sweep, every `minutes` (0: never; `tarmo retention run`
/// then does it on demand).
struct Sweeper {
    stop: Option<std::sync::mpsc::Sender<()>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    fn stop(mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.stop.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Several nodes on one store sweep in turn: each turn, the node that takes
/// the `retention` lease sweeps, and the others skip.
fn retention_thread(
    writer: tarmo_store::writer::WriterHandle,
    minutes: Option<u64>,
    node: String,
) -> Sweeper {
    let minutes = minutes.unwrap_or(60);
    if minutes == 0 {
        return Sweeper {
            stop: None,
            stopped: Arc::default(),
            join: None,
        };
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut_short = stopped.clone();
    let health = writer.health().clone();
    let every = std::time::Duration::from_secs(minutes * 60);
    // Restarted after a backoff should a sweep panic.
    let join = tarmo_store::health::supervise(
        health,
        "retention",
        move || cut_short.load(std::sync::atomic::Ordering::SeqCst),
        move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                // Held until just before this node's next turn.
                let hold = every.as_millis() as i64 - 1000;
                match tarmo_store::retention::take_turn(&writer, &node, hold) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("another node sweeps this turn");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "taking the retention lease failed");
                        continue;
                    }
                }
                match tarmo_store::retention::sweep(&writer, tarmo_store::now_ms(), false) {
                    Ok(r) => tracing::info!(
                        events_deleted = r.events_deleted,
                        consents_expired = r.consents_expired,
                        profiles_erased = r.profiles_erased,
                        millis = r.millis,
                        "retention sweep"
                    ),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
        },
    )
    .expect("spawn the retention thread");
    Sweeper {
        stop: Some(tx),
        stopped,
        join: Some(join),
    }
}

/// On SQLite, the access log's records are made durable in a journal of
/// their own (a read waits for one flush of pre-written space, not for the
/// writer's turn behind ingestion). On PostgreSQL they go to the database:
/// a node's own file would hold the records of a node that died.
fn access_logger(
    s: &Settings,
    store: &Store,
    writer: &tarmo_store::writer::WriterHandle,
) -> (
    tarmo_store::access_log::AccessLogger,
    tarmo_store::access_log::LoggerThread,
) {
    use tarmo_store::access_log::{AccessLogger, JOURNAL_BYTES, JOURNAL_FILE};
    if store.backend_name() != "sqlite" {
        return AccessLogger::spawn(writer.clone());
    }
    let path = s.data_dir.join(JOURNAL_FILE);
    let bytes = s
        .serve
        .access_journal_kib
        .map_or(JOURNAL_BYTES, |k| k << 10);
    match AccessLogger::spawn_journaled(writer.clone(), &path, bytes) {
        Ok(x) => x,
        Err(e) => {
            // What the old journal held stays there until a start that can
            // copy it; reads are logged through the writer meanwhile.
            tracing::warn!(error = %e, journal = %path.display(), "the access journal cannot be used; reads are logged through the writer");
            AccessLogger::spawn(writer.clone())
        }
    }
}
