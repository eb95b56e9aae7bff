//! The Segment HTTP tracking API, as the public Segment and RudderStack SDKs
//! call it. The write key comes from Basic auth (RudderStack, analytics.js) or
//! from `writeKey` in the body (current Segment Python SDKs). A 200 is sent
//! only after the events' transaction committed.

use std::io::Read;
use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tarmo_core::segment::{
    BatchDefaults, MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES, MessageKind,
    parse_message,
};
use tarmo_store::resolve::{EventConsent, Outcome};
use utoipa::ToSchema;

use crate::{ApiError, AppState, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub success: bool,
}

/// Inflate a gzip body, refusing to grow it past `limit`.
/// The body, decompressed; over `limit` bytes answers `too_large` (the
/// error for this route: a batch or a single message).
fn body_bytes(
    headers: &HeaderMap,
    body: Bytes,
    limit: usize,
    too_large: impl Fn() -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => {
            if body.len() > limit {
                return Err(too_large());
            }
            Ok(body.to_vec())
        }
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| ApiError::new(Code::InvalidGzip, "the body is not valid gzip"))?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out)
        }
        other => Err(ApiError::new(
            Code::UnsupportedContentEncoding,
            format!("Content-Encoding `{other}` is not supported (use gzip or none)"),
        )),
    }
}

/// The write key from `Authorization: Basic base64(key:)`.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split_once(':').map(|(u, _)| u).unwrap_or(&s);
    (!user.is_empty()).then(|| user.to_owned())
}

#[derive(Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
    context: Option<Value>,
    integrations: Option<Value>,
    #[serde(rename = "sentAt")]
    sent_at: Option<Value>,
}

fn json_error(e: serde_json::Error) -> ApiError {
    ApiError::new(
        Code::InvalidJson,
        format!("the body is not valid JSON: {e}"),
    )
}

async fn source_of(
    s: &AppState,
    headers: &HeaderMap,
    body_key: Option<&str>,
) -> Result<(tarmo_core::ids::KeyId, tarmo_core::identity::Trust), ApiError> {
    let key = basic_user(headers).or_else(|| body_key.map(str::to_owned)).ok_or_else(|| {
        ApiError::new(
            Code::MissingWriteKey,
            "a write key is required: Basic auth with the write key as user name, or `writeKey` in the body",
        )
    })?;
    let row = s
        .key_for(&key)
        .await?
        .filter(|(_, g)| g.may(tarmo_core::access::Permission::Ingest))
        .map(|(k, _)| k)
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidWriteKey,
                "the write key is unknown, revoked, or not a write key",
            )
        })?;
    s.limit_key(row.id)?;
    Ok((row.id, row.source_trust()))
}

async fn commit(
    s: &AppState,
    events: Vec<tarmo_store::resolve::PreparedEvent>,
) -> Result<Vec<Outcome>, ApiError> {
    // While the writer has no connection, say so at once rather than queue.
    if !s.store.writer_ready() {
        return Err(ApiError::database_unavailable());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply: tarmo_store::writer::Reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    // A full queue is retried briefly before the client is told to back off,
    // so a short burst does not turn into a wave of 429s.
    let mut job = (events, reply);
    let mut attempts = 0;
    loop {
        match s.writer.submit(job.0, job.1) {
            Ok(()) => break,
            Err((tarmo_store::Error::Overloaded, ev, rp)) if attempts < 25 => {
                attempts += 1;
                job = (ev, rp);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err((tarmo_store::Error::Overloaded, _, _)) => return Err(ApiError::overloaded()),
            Err((e, _, _)) => return Err(e.into()),
        }
    }
    let result = rx
        .await
        .map_err(|_| ApiError::from(tarmo_store::Error::WriterGone))?;
    Ok(result?)
}

async fn ingest(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    route_kind: Option<MessageKind>,
) -> Result<axum::Json<Accepted>, ApiError> {
    let limit = if route_kind.is_some() {
        MAX_MESSAGE_BYTES
    } else {
        MAX_BATCH_BYTES
    };
    let raw = body_bytes(&headers, body, limit, || match route_kind {
        Some(_) => ApiError::new(Code::MessageTooLarge, "message 0 is larger than 32 KB"),
        None => ApiError::new(
            Code::BatchTooLarge,
            format!("the request body is larger than {} KB", limit / 1024),
        ),
    })?;
    let now = tarmo_store::now_ms();
    let ((source, trust), messages) = if let Some(kind) = route_kind {
        let v: Value = serde_json::from_slice(&raw).map_err(json_error)?;
        let key = v.get("writeKey").and_then(Value::as_str).map(str::to_owned);
        let source = source_of(&s, &headers, key.as_deref()).await?;
        let m = parse_message(v, 0, Some(kind), BatchDefaults::default(), now, &s.identity)
            .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
        (source, vec![m])
    } else {
        let env: BatchEnvelope<'_> = serde_json::from_slice(&raw).map_err(json_error)?;
        let source = source_of(&s, &headers, env.write_key.as_deref()).await?;
        let items = env
            .batch
            .ok_or_else(|| ApiError::new(Code::MissingBatch, "the body needs a `batch` array"))?;
        if items.len() > MAX_BATCH_MESSAGES {
            return Err(ApiError::new(
                Code::BatchTooLarge,
                format!(
                    "{} messages in one batch; at most {MAX_BATCH_MESSAGES}",
                    items.len()
                ),
            ));
        }
        let defaults = BatchDefaults {
            context: env.context.as_ref(),
            integrations: env.integrations.as_ref(),
            sent_at: env.sent_at.as_ref(),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if item.get().len() > MAX_MESSAGE_BYTES {
                return Err(ApiError::new(
                    Code::MessageTooLarge,
                    format!("message {i} is larger than 32 KB"),
                ));
            }
            let v: Value = serde_json::from_str(item.get()).map_err(json_error)?;
            let m = parse_message(v, i, None, defaults, now, &s.identity)
                .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
            out.push(m);
        }
        (source, out)
    };
    let rejected: usize = messages.iter().map(|m| m.rejected_identifiers).sum();
    s.metrics.identifiers_rejected(rejected as u64);
    let gpc = headers
        .get("sec-gpc")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1");
    let cookie = crate::signals::cookie_tc_string(&headers);
    let any_signal = cookie.is_some()
        || messages
            .iter()
            .any(|m| crate::signals::carries_string(&m.body));
    // The catalog is needed only to map CMP strings; most batches have none.
    let catalog = if any_signal {
        s.catalog().await?
    } else {
        Default::default()
    };
    let mut reader = crate::signals::IngestReader::new(&s.config.consent_signals, &catalog, cookie);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let events = messages
        .into_iter()
        .map(|m| {
            let signals = reader.signals(&m.body);
            let ip = (gpc || !signals.is_empty())
                .then(|| m.body.pointer("/context/ip").and_then(Value::as_str))
                .flatten()
                .map(str::to_owned);
            let mut e = s.store.prepare(m, source);
            e.trust = trust;
            if gpc || !signals.is_empty() {
                // The browser's Global Privacy Control signal (an opt-out of
                // sale and sharing, recorded once per person) and CMP strings
                // (recorded the first time each arrives for the person).
                e.consent = Some(Box::new(EventConsent {
                    gpc,
                    signals,
                    source: "Sec-GPC header on ingestion".into(),
                    evidence: crate::subject::evidence_of(ip, user_agent.clone()),
                }));
            }
            e
        })
        .collect();
    for (kind, n) in reader.invalid {
        s.metrics.signals_invalid(kind, n);
    }
    commit(&s, events).await?;
    Ok(axum::Json(Accepted { success: true }))
}

macro_rules! single_route {
    ($name:ident, $path:literal, $kind:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "tracking",
            request_body(content = Object, description = "One Segment message; `writeKey` may be in the body"),
            security(("write_key" = [])),
            responses(
                (status = 200, body = Accepted, description = "Durably committed"),
                (status = 400, body = ErrorBody, description = "Bad input; nothing stored"),
                (status = 401, body = ErrorBody),
                (status = 429, body = ErrorBody, description = "Back off for Retry-After seconds"),
                (status = 503, body = ErrorBody, description = "Transient fault; retry")))]
        pub async fn $name(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Result<axum::Json<Accepted>, ApiError> {
            ingest(s, headers, body, Some($kind)).await
        }
    };
}

single_route!(
    identify,
    "/v1/identify",
    MessageKind::Identify,
    "Who the person is, and their traits."
);
single_route!(
    track,
    "/v1/track",
    MessageKind::Track,
    "Something the person did."
);
single_route!(
    page,
    "/v1/page",
    MessageKind::Page,
    "A web page the person viewed."
);
single_route!(
    screen,
    "/v1/screen",
    MessageKind::Screen,
    "An app screen the person viewed."
);
single_route!(
    group,
    "/v1/group",
    MessageKind::Group,
    "An account or company the person belongs to."
);
single_route!(
    alias,
    "/v1/alias",
    MessageKind::Alias,
    "Link a previous id (before login) to a user id."
);

/// Many messages at once (at most 2,500 and 500 KB; 32 KB each).
#[utoipa::path(post, path = "/v1/batch", tag = "tracking",
    request_body(content = Object, description = "`{\"batch\": [...], \"context\": {...}, \"writeKey\": \"...\"}`"),
    security(("write_key" = [])),
    responses(
        (status = 200, body = Accepted, description = "Durably committed"),
        (status = 400, body = ErrorBody, description = "Bad input, naming the message; nothing stored"),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Accepted>, ApiError> {
    ingest(s, headers, body, None).await
}

/// The same as `/v1/batch`, under the name older SDKs use.
#[utoipa::path(post, path = "/v1/import", tag = "tracking",
    request_body(content = Object),
    security(("write_key" = [])),
    responses((status = 200, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn import(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Accepted>, ApiError> {
    ingest(s, headers, body, None).await
}
