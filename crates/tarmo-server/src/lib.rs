//! Tarmo's HTTP server: the Segment-compatible tracking API, the staff API
//! (consent, processors, the record of processing), health, metrics and the
//! OpenAPI document, and the workers that send messages to people and
//! erasure notices to processors.
//!
//! Handlers parse input into domain types at the edge, call one store
//! operation and map every error to one JSON shape. A handler must never log a
//! personal value, and must never answer 200 to ingestion before the events
//! are durably committed.

pub mod auth;
mod automations;
mod body;
mod consent;
mod console;
mod error;
mod form;
mod imports;
mod ingest;
pub mod mail;
mod metrics;
pub mod notices;
mod pages;
mod processors;
mod profiles;
mod requests;
mod ropa;
mod routes;
pub mod scheduler;
mod segments;
pub mod serve;
pub mod settings;
pub mod signals;
mod staff;
pub mod startup;
mod subject;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarmo_core::codes::Code;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use tarmo_core::identity::IdentityConfig;
use tarmo_store::Store;
use tarmo_store::access_log::AccessLogger;
use tarmo_store::segments::engine::SegmentEngine;
use tarmo_store::writer::WriterHandle;
use utoipa::OpenApi;

pub use error::{ApiError, ErrorBody};
pub use routes::openapi;

/// What the operator configures beyond the store.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where people reach this server: the base of the links in messages
    /// (confirmation, unsubscribe, preferences). No trailing slash.
    pub public_url: String,
    /// How long a confirmation link works.
    pub token_ttl: Duration,
    /// The controller's name, as people see it in messages and pages.
    pub organisation: String,
    /// Built-in and configured roles.
    pub roles: auth::Roles,
    pub limits: auth::RateLimits,
    /// How CMP strings (TCF, GPP) map to the catalog's purposes.
    pub consent_signals: tarmo_core::consent::SignalMap,
    /// The controller's contact details, for the record of processing.
    pub controller_contact: Option<String>,
    /// The data protection officer's contact details, where one is designated.
    pub dpo_contact: Option<String>,
    /// Categories of data subjects for the record of processing; derived
    /// from the purposes when empty.
    pub data_subject_categories: Vec<String>,
    /// What processors' erasure webhooks may point at (`allow_private_webhooks`).
    pub webhook_targets: tarmo_notify::WebhookTargets,
    /// Birthdays and quiet hours of people without a `timezone` trait, and
    /// cron schedules (`default_timezone`).
    pub default_timezone: tarmo_core::automations::clock::TimeZone,
    /// Marketing messages per person and channel across all automations
    /// and campaigns (`[frequency_caps]`).
    pub frequency_caps: tarmo_core::automations::FrequencyCaps,
    /// The SMS provider's bearer token for `POST /v1/sms/inbound`; without
    /// one the route refuses every call (401).
    pub sms_inbound_token: Option<String>,
}

impl ServerConfig {
    /// What automations and campaigns send with.
    pub fn send_config(&self) -> tarmo_store::automations::SendConfig {
        tarmo_store::automations::SendConfig {
            public_url: self.public_url.clone(),
            organisation: self.organisation.clone(),
            default_tz: self.default_timezone.clone(),
            frequency_caps: self.frequency_caps,
            cursors: Default::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            token_ttl: Duration::from_secs(48 * 3600),
            organisation: "Tarmo".into(),
            roles: auth::Roles::default(),
            limits: auth::RateLimits::default(),
            consent_signals: Default::default(),
            controller_contact: None,
            dpo_contact: None,
            data_subject_categories: Vec::new(),
            webhook_targets: tarmo_notify::WebhookTargets::Public,
            default_timezone: tarmo_core::automations::clock::TimeZone::UTC,
            frequency_caps: Default::default(),
            sms_inbound_token: None,
        }
    }
}

/// Everything a request needs.
pub struct AppState {
    pub store: Arc<Store>,
    pub writer: WriterHandle,
    /// The use cases' entry: handlers call `tarmo_store::<use case>::f(&s.svc, ..)`
    /// through [`blocking`], never a transaction or a connection of their own.
    pub svc: tarmo_store::Services,
    pub identity: IdentityConfig,
    pub config: ServerConfig,
    pub metrics: metrics::HttpMetrics,
    /// Rung when a message is queued, so the mail worker sends at once.
    pub outbox: Arc<mail::OutboxSignal>,
    /// Rung when erasure notifications are queued, so the notice worker
    /// delivers them at once.
    pub notices: Arc<mail::OutboxSignal>,
    keys: Mutex<auth::KeyCache>,
    key_hasher: std::hash::RandomState,
    pub roles: auth::Roles,
    pub limits: auth::RateLimits,
    buckets: auth::Buckets,
    /// The access log: reads of people's data, durably; decisions, counted.
    pub access: AccessLogger,
    /// Live segment membership, lifecycle and RFM.
    pub segments: Arc<SegmentEngine>,
}

impl AppState {
    pub fn new(
        store: Arc<Store>,
        writer: WriterHandle,
        identity: IdentityConfig,
        config: ServerConfig,
        access: AccessLogger,
        segments: Arc<SegmentEngine>,
    ) -> Arc<Self> {
        Arc::new(Self {
            svc: tarmo_store::Services::new(store.clone(), writer.clone()),
            store,
            writer,
            identity,
            roles: config.roles.clone(),
            limits: config.limits,
            config,
            metrics: metrics::HttpMetrics::default(),
            outbox: Arc::new(mail::OutboxSignal::default()),
            notices: Arc::new(mail::OutboxSignal::default()),
            keys: Mutex::new(auth::KeyCache::default()),
            key_hasher: std::hash::RandomState::new(),
            buckets: auth::Buckets::default(),
            access,
            segments,
        })
    }

    /// Log a read of people's data through `p`; returns once durable.
    pub async fn log_access(
        &self,
        p: &auth::Principal,
        action: &'static str,
        profiles: Vec<tarmo_store::conn::ProfileId>,
    ) -> Result<(), ApiError> {
        if profiles.is_empty() {
            return Ok(());
        }
        let logger = self.access.clone();
        let record = p.access(action, profiles);
        tokio::task::spawn_blocking(move || logger.record(record))
            .await
            .map_err(|_| ApiError::from(tarmo_store::Error::WriterGone))??;
        Ok(())
    }

    /// The person's current id as `p` may be told it: a purpose-bound key
    /// learns ids only of people it may see; anyone else reads as absent.
    pub(crate) async fn visible_id(
        &self,
        p: &auth::Principal,
        id: tarmo_store::conn::ProfileId,
    ) -> Result<Option<tarmo_store::conn::ProfileId>, ApiError> {
        if !p.grant.bound() {
            return Ok(Some(id));
        }
        let store = self.store.clone();
        let grant = p.grant.clone();
        Ok(blocking(move || store.visible_kinds(&grant, id))
            .await?
            .map(|(current, _)| current))
    }

    /// The purpose catalog; its reload, when due, is one small query.
    pub async fn catalog(&self) -> Result<Arc<tarmo_store::consent::Catalog>, ApiError> {
        if let Some(c) = self.store.catalog_fresh() {
            return Ok(c);
        }
        let store = self.store.clone();
        blocking(move || store.catalog()).await
    }

    /// Tell the mail worker a message is waiting.
    pub fn outbox_wake(&self) {
        self.outbox.ring();
    }

    /// What automations and campaigns send with.
    pub fn send_config(&self) -> tarmo_store::automations::SendConfig {
        self.config.send_config()
    }

    /// Tell the notice worker erasure notifications are waiting.
    pub fn notices_wake(&self) {
        self.notices.ring();
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tarmo",
        description = "Privacy-first customer data platform: Segment-compatible ingestion and the staff API."
    ),
    components(schemas(ErrorBody, Readiness, tarmo_store::health::ComponentView,
        tarmo_store::health::QueueView, ingest::Accepted, tarmo_store::ProfileView, tarmo_store::MembershipView,
        tarmo_store::LifecycleView, tarmo_store::bundle::BundleSegment, tarmo_store::EventsPage,
        consent::PurposeView, consent::PurposeList, consent::ConsentInput, consent::RecordedList,
        consent::ProfileConsents, consent::DecisionView, consent::BatchDecisionInput,
        consent::BatchDecisions, consent::SubscriptionInput, consent::SubscriptionView,
        consent::EmailInput, consent::EmailQueued, consent::PreferenceLink, signals::SignalInput,
        signals::SignalEntry, signals::SignalRecorded, requests::RequestInput,
        requests::RequestDetail, requests::RequestList, requests::ReasonInput,
        tarmo_core::processor::ProcessorInput,
        processors::ProcessorList, processors::ExportInput, tarmo_store::processors::ProcessorView,
        tarmo_store::processors::ExportView, tarmo_store::processors::ExportedPerson,
        tarmo_store::processors::ExportedIdentifier, tarmo_store::processors::ExcludedSubject,
        tarmo_store::processors::NotificationView, ropa::RecordOfProcessing, staff::LoginInput,
        staff::Session, staff::AuditList, staff::Stats, tarmo_store::access_log::AccessView,
        staff::KeyInput, staff::NewKey, staff::KeyList, tarmo_store::keys::ApiKey,
        segments::SegmentInput, segments::PreviewInput, segments::SegmentView, segments::SegmentList,
        segments::Member, segments::MemberPage, segments::Preview, segments::Membership,
        segments::ProfileSegments, segments::ScoreCounts, segments::LifecycleOverview,
        segments::AudienceInput, segments::AudienceView, segments::AudienceList, segments::SyncSummary,
        segments::SyncResult, imports::ImportInput, imports::ImportQueued,
        tarmo_store::imports::ImportView, tarmo_store::imports::ImportReport,
        tarmo_store::imports::RowError, tarmo_store::imports::Progress,
        tarmo_store::imports::Status, tarmo_store::imports::ImportKind,
        tarmo_store::bundle::BundleImport, automations::TemplateView, automations::TemplateList,
        automations::FlowView, automations::FlowList, automations::CountersView,
        automations::DryRunView, automations::DryRunRow, automations::InboundSms,
        automations::InboundResult)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "write_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        c.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Largest request body accepted on the wire (gzip bodies are checked again
/// after inflating).
pub(crate) const MAX_WIRE_BODY: usize = 1024 * 1024;

/// The application: every route of the one table (`routes::ROUTES`), then
/// from the inside out: axum's own rejections in the common error shape,
/// the body limit, the access check (what each route needs, from the same
/// table), per-route counts and latencies, and panics as an opaque 500.
pub fn app(state: Arc<AppState>) -> Router {
    routes::router()
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_WIRE_BODY))
        .layer(auth::GuardLayer(state.clone()))
        .layer(metrics::TrackLayer(state.clone()))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// Rejections made by axum itself (a body over the limit, a method a route
/// does not have, a malformed path) in the common error shape.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json")
        || ctype.starts_with("text/html")
        || resp.status().is_success()
    {
        return resp;
    }
    let (code, message) = match resp.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            (Code::BodyTooLarge, "the request body is larger than 1 MB")
        }
        StatusCode::METHOD_NOT_ALLOWED => (
            Code::MethodNotAllowed,
            "this route does not take that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (Code::UnsupportedMediaType, "send application/json"),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            (Code::InvalidRequest, "the request could not be read")
        }
        _ => return resp,
    };
    // axum's own 422 (a body its extractor could not map) keeps its status.
    ApiError {
        status: resp.status(),
        ..ApiError::new(code, message)
    }
    .into_response()
}

/// Run blocking store work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tarmo_store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::from(tarmo_store::Error::Busy("worker gone".into())))?
        .map_err(ApiError::from)
}

/// A use case's `*_then` form awaited on the async worker itself: the
/// writer answers through a one-shot channel, and no blocking thread
/// waits for the flush.
pub(crate) async fn replied<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(tarmo_store::Result<T>) + Send>),
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await
        .map_err(|_| ApiError::from(tarmo_store::Error::WriterGone))?
        .map_err(ApiError::from)
}

/// Panics become an opaque 500 in the common error shape, never a dropped
/// connection or a stack trace.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a handler panicked");
    ApiError::new(Code::InternalError, "internal error; it has been logged").into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(Code::RouteNotFound, "no such route; see /api/openapi.json")
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    store: &'static str,
}

/// Liveness: the process serves HTTP. It does not ask the database (a
/// restart of Tarmo would not bring PostgreSQL back); `/readyz` does.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz(State(s): State<Arc<AppState>>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        store: s.store.backend_name(),
    })
}

/// Whether this node should get traffic, and the state of its parts and
/// queues. Public like `/healthz`: it holds names, counts and ages only.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// `not_ready` when not ready (with `message`, as in every error).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    store: &'static str,
    /// `up` when the writer and the read pool reach the database, else `down`.
    database: &'static str,
    /// The writer and the workers: each up, or down with its reason.
    components: Vec<tarmo_store::health::ComponentView>,
    /// Work waiting: depth, the oldest item's age, and whether anything
    /// drains it. A stuck queue does not make the node unready (taking it
    /// out of a load balancer would not drain it); it is warned about in
    /// the log.
    queues: Vec<tarmo_store::health::QueueView>,
    /// Since when writes fail for want of space (RFC 3339), if they do.
    /// Reads still work, so this does not make the node unready.
    storage_full_since: Option<String>,
}

/// Readiness: 200 while the store answers and every part (the writer, the
/// access log, the segment engine, the workers) is up; 503 while one is
/// down (it is being restarted) or the store does not answer.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Readiness),
    (status = 503, body = Readiness, description = "Not ready: `code` is `not_ready`, `message` says which part")))]
async fn readyz(State(s): State<Arc<AppState>>) -> (StatusCode, axum::Json<Readiness>) {
    // Ask the database only when the last word was bad, or every probe
    // would cost a round trip; the writer checks its own connection.
    let database_up = s.store.database_ready() || {
        let store = s.store.clone();
        tokio::task::spawn_blocking(move || store.probe_database())
            .await
            .unwrap_or(false)
    };
    let svc = s.svc.clone();
    let queues =
        tokio::task::spawn_blocking(move || tarmo_store::service::probes::queues(&svc)).await;
    let health = &s.store.health;
    let components = health.components();
    let mut problems: Vec<String> = components
        .iter()
        .filter(|c| !c.up)
        .map(|c| format!("{}: {}", c.name, c.reason.as_deref().unwrap_or("down")))
        .collect();
    if !database_up {
        problems.push("database: cannot be reached".into());
    }
    let queues = match queues {
        Ok(Ok(q)) => q,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            problems.push("store: does not answer".into());
            Vec::new()
        }
        Err(_) => {
            problems.push("store: the check did not finish".into());
            Vec::new()
        }
    };
    let ready = problems.is_empty();
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        code: (!ready).then_some(Code::NotReady.as_str()),
        message: (!ready).then(|| problems.join("; ")),
        store: s.store.backend_name(),
        database: if database_up { "up" } else { "down" },
        components,
        queues,
        storage_full_since: health.storage_full_since().map(tarmo_store::rfc3339),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// Prometheus text: requests, latencies, events ingested, store timings.
#[utoipa::path(get, path = "/metrics", security(("admin_key" = [])),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn metrics_route(State(s): State<Arc<AppState>>, _p: auth::Principal) -> impl IntoResponse {
    let mut out = String::with_capacity(8192);
    s.metrics.render(&mut out);
    s.store.metrics.render(&mut out);
    s.segments.render_metrics(&mut out);
    let svc = s.svc.clone();
    let (counts, overdue) =
        match blocking(move || tarmo_store::service::probes::backlog(&svc)).await {
            Ok((c, o)) => (Ok(c), o),
            Err(e) => (Err(e), 0),
        };
    out.push_str(&format!(
        "# HELP tarmo_requests_overdue Open data subject requests past their deadline.\n# TYPE tarmo_requests_overdue gauge\ntarmo_requests_overdue {overdue}\n"
    ));
    out.push_str(
        "# HELP tarmo_outbox_messages Messages to people in the outbox, by status.\n# TYPE tarmo_outbox_messages gauge\n",
    );
    for status in ["pending", "sending", "sent", "failed"] {
        let n = counts
            .as_ref()
            .ok()
            .and_then(|c| c.iter().find(|(s, _)| s == status).map(|x| x.1))
            .unwrap_or(0);
        out.push_str(&format!(
            "tarmo_outbox_messages{{status=\"{status}\"}} {n}\n"
        ));
    }
    let svc = s.svc.clone();
    let queues = blocking(move || tarmo_store::service::probes::queues(&svc))
        .await
        .unwrap_or_default();
    metrics::render_health(&mut out, &s.store.health, &queues);
    let svc = s.svc.clone();
    let notices = blocking(move || tarmo_store::service::probes::notifications(&svc)).await;
    out.push_str(
        "# HELP tarmo_processor_notifications Erasure notifications to processors, by status.\n# TYPE tarmo_processor_notifications gauge\n",
    );
    for status in ["pending", "sending", "delivered", "failed", "manual"] {
        let n = notices
            .as_ref()
            .ok()
            .and_then(|c| c.iter().find(|(s, _)| s == status).map(|x| x.1))
            .unwrap_or(0);
        out.push_str(&format!(
            "tarmo_processor_notifications{{status=\"{status}\"}} {n}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    axum::Json(routes::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_is_503_naming_the_part_while_one_is_down_and_200_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let backend = tarmo_store::Backend::open(dir.path(), None).unwrap();
        let master = tarmo_store::vault::MasterKey::generate().unwrap();
        let store = Arc::new(Store::open(backend, &master, 100).unwrap());
        let (writer, join) = store.start_writer(Default::default()).unwrap();
        let (access, access_thread) = AccessLogger::spawn(writer.clone());
        let segments =
            SegmentEngine::start(store.clone(), writer.clone(), Default::default()).unwrap();
        let state = AppState::new(
            store.clone(),
            writer,
            IdentityConfig::new(None, &[]).unwrap(),
            ServerConfig::default(),
            access,
            segments,
        );
        let (status, body) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::OK, "{:?}", body.0.message);
        assert_eq!((body.0.status, body.0.code), ("ready", None));
        let names: Vec<_> = body.0.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["access-log", "writer"]);
        assert_eq!(body.0.queues.len(), tarmo_store::health::QUEUES.len());

        store.health.down("mail", "panicked; restarting");
        let (status, body) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (body.0.status, body.0.code),
            ("not_ready", Some("not_ready"))
        );
        assert_eq!(
            body.0.message.as_deref(),
            Some("mail: panicked; restarting")
        );

        store.health.up("mail");
        assert_eq!(readyz(State(state.clone())).await.0, StatusCode::OK);
        drop(state);
        access_thread.join();
        join.join().unwrap();
    }
}
