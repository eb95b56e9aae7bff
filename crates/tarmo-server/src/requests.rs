//! Data subject requests for staff: create, list, read, verify, refuse,
//! extend, lift a restriction, and download the access bundle (JSON, plus a
//! CSV per table, in a zip).

use std::io::Write;
use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::RequestId;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tarmo_store::bundle::Bundle;
use tarmo_store::requests::{self, Filter, NewRequest, RequestKind, RequestStatus, RequestView};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::subject::SubjectRef;
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// access, portability, erasure, rectification, restriction or objection.
    #[serde(rename = "type")]
    pub kind: String,
    /// The person, by an identifier: `{"type": "email", "value": "..."}`.
    pub subject: SubjectRef,
    /// Rectification: the corrected traits, e.g. `{"lastName": "Virtanen"}`.
    #[schema(value_type = Option<Object>, required = false)]
    pub corrected: Option<Map<String, Value>>,
    /// Objection: the purposes objected to (all that allow objection when absent).
    pub purposes: Option<Vec<String>>,
    /// The person's language, for the verification message.
    pub language: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub request: RequestView,
    /// Erasure: the processors told, and how that went.
    pub processors: Vec<tarmo_store::processors::NotificationView>,
}

fn id_of(raw: &str) -> Result<RequestId, ApiError> {
    raw.parse::<RequestId>()
        .ok()
        .filter(|v| v.0 > 0)
        .ok_or_else(|| ApiError::new(Code::InvalidRequestId, "a request id is a positive integer"))
}

async fn detail(s: &AppState, id: RequestId) -> Result<RequestDetail, ApiError> {
    let (request, processors) = blocking({
        let svc = s.svc.clone();
        move || requests::detail(&svc, id)
    })
    .await?;
    Ok(RequestDetail {
        request,
        processors,
    })
}

/// Record a data subject request. If the person is known and has an email
/// address or phone number, a verification link is sent to it.
#[utoipa::path(post, path = "/api/v1/requests", tag = "requests", operation_id = "create_request",
    request_body = RequestInput,
    security(("admin_key" = [])),
    responses((status = 201, body = RequestDetail), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "An open request of the same type for the same person")))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RequestDetail>), ApiError> {
    let b: RequestInput = crate::body::json(
        &body,
        Code::InvalidRequest,
        "{\"type\", \"subject\": {...}}",
    )?;
    let key = p.key.clone();
    let kind = RequestKind::parse(&b.kind)?;
    let (kind_name, value) = match (&b.subject.kind, &b.subject.value, b.subject.profile) {
        (Some(k), Some(v), None) => (k.clone(), v.clone()),
        _ => {
            return Err(ApiError::new(
                Code::InvalidSubject,
                "name the person by an identifier: {\"type\": \"email\", \"value\": \"...\"}",
            ));
        }
    };
    let ident = s
        .identity
        .identifier(s.identity.kind(&kind_name)?, &value)?;
    let language = b.language.unwrap_or_else(|| "en".into());
    if !tarmo_core::consent::purpose::valid_language(&language) {
        return Err(ApiError::new(
            Code::InvalidLanguage,
            "`language` is a tag like en, fi or pt-BR",
        ));
    }
    let req = NewRequest {
        kind,
        subject: s.store.prepare_identifier(&ident),
        corrected: b.corrected,
        purposes: b.purposes,
        language,
        origin: "staff",
        actor: format!("key {} ({})", key.id, key.name),
    };
    let ttl = s.config.token_ttl.as_millis() as i64;
    let id = blocking({
        let svc = s.svc.clone();
        move || requests::open_request(&svc, req, ttl)
    })
    .await?;
    s.outbox_wake();
    Ok((StatusCode::CREATED, Json(detail(&s, id).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Only requests due before this date-time (RFC 3339).
    pub due_before: Option<String>,
    /// Only open requests past their deadline.
    #[serde(default)]
    pub overdue: bool,
    /// 1 to 1000; 100 when absent.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
}

/// Requests, soonest due first.
#[utoipa::path(get, path = "/api/v1/requests", tag = "requests", operation_id = "list_requests", params(ListQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = RequestList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RequestList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(Code::InvalidQuery, e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "`limit` must be 1 to 1000",
        ));
    }
    let f = Filter {
        status: q.status.as_deref().map(RequestStatus::parse).transpose()?,
        kind: q.kind.as_deref().map(RequestKind::parse).transpose()?,
        due_before_ms: q
            .due_before
            .as_deref()
            .map(|d| {
                tarmo_core::segment::parse_timestamp_ms(d).ok_or_else(|| {
                    ApiError::new(Code::InvalidQuery, "`due_before` is an RFC 3339 date-time")
                })
            })
            .transpose()?,
        overdue: q.overdue,
        limit,
    };
    let requests = blocking({
        let svc = s.svc.clone();
        move || requests::find(&svc, &f)
    })
    .await?;
    Ok(Json(RequestList { requests }))
}

/// One request with its history.
#[utoipa::path(get, path = "/api/v1/requests/{id}", tag = "requests", operation_id = "get_request",
    params(("id" = i64, Path, description = "Request id")),
    security(("admin_key" = [])),
    responses((status = 200, body = RequestDetail), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(raw): Path<String>,
) -> Result<Json<RequestDetail>, ApiError> {
    Ok(Json(detail(&s, id_of(&raw)?).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonInput {
    /// How the identity was verified, why the deadline is extended, or the
    /// legal reason for a refusal.
    pub reason: String,
}

async fn reason_of(body: &[u8]) -> Result<String, ApiError> {
    let r: ReasonInput = crate::body::json(body, Code::InvalidRequest, "{\"reason\": \"...\"}")?;
    if r.reason.len() > 2000 {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "`reason` is at most 2,000 characters",
        ));
    }
    Ok(r.reason)
}

macro_rules! action {
    ($name:ident, $path:literal, $doc:literal, $f:path) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "requests", operation_id = concat!(stringify!($name), "_request"),
            params(("id" = i64, Path, description = "Request id")),
            request_body = ReasonInput,
            security(("admin_key" = [])),
            responses((status = 200, body = RequestDetail), (status = 400, body = ErrorBody),
                (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
                (status = 409, body = ErrorBody, description = "Not possible in the request's state")))]
        pub async fn $name(
            State(s): State<Arc<AppState>>,
            p: Principal,
            Path(raw): Path<String>,
            body: axum::body::Bytes,
        ) -> Result<Json<RequestDetail>, ApiError> {
                    let id = id_of(&raw)?;
            let reason = reason_of(&body).await?;
            let actor = format!("key {} ({})", p.key.id, p.key.name);
            blocking({
                let svc = s.svc.clone();
                move || $f(&svc, id, reason, actor)
            })
            .await?;
            s.outbox_wake();
            s.notices_wake();
            Ok(Json(detail(&s, id).await?))
        }
    };
}

action!(
    verify,
    "/api/v1/requests/{id}/verify",
    "Staff verified the person's identity (say how): the request is carried out.",
    requests::verify_by_staff
);
action!(
    refuse,
    "/api/v1/requests/{id}/refuse",
    "Refuse, with the legal reason (e.g. an Art. 17(3) exception).",
    requests::refuse_request
);
action!(
    extend,
    "/api/v1/requests/{id}/extend",
    "Extend the deadline by two months (once), with the reason.",
    requests::extend_request
);

/// End the restriction a completed restriction request put in place.
#[utoipa::path(post, path = "/api/v1/requests/{id}/lift", tag = "requests", operation_id = "lift_restriction",
    params(("id" = i64, Path, description = "Request id")),
    security(("admin_key" = [])),
    responses((status = 200, body = RequestDetail), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn lift(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
) -> Result<Json<RequestDetail>, ApiError> {
    let id = id_of(&raw)?;
    let actor = format!("key {} ({})", p.key.id, p.key.name);
    blocking({
        let svc = s.svc.clone();
        move || requests::lift_restriction(&svc, id, actor)
    })
    .await?;
    Ok(Json(detail(&s, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `zip` (JSON plus a CSV per table; the default) or `json`.
    pub format: Option<String>,
}

/// The bundle of a completed access or portability request.
pub(crate) async fn bundle_for(s: &AppState, id: RequestId) -> Result<Bundle, ApiError> {
    blocking({
        let svc = s.svc.clone();
        move || requests::bundle_of(&svc, id)
    })
    .await
}

/// The data of a completed access or portability request: JSON, plus a
/// CSV per table, in a zip.
#[utoipa::path(get, path = "/api/v1/requests/{id}/export", tag = "requests", operation_id = "export_request_bundle",
    params(("id" = i64, Path, description = "Request id"), ExportQuery),
    security(("admin_key" = [])),
    responses((status = 200, content_type = "application/zip", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn export(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(&raw)?;
    let Query(q) = q.map_err(|e| ApiError::new(Code::InvalidQuery, e.body_text()))?;
    let bundle = bundle_for(&s, id).await?;
    s.log_access(&p, "export", vec![bundle.profile_id]).await?;
    bundle_response(&bundle, id, q.format.as_deref())
}

pub(crate) fn bundle_response(
    b: &Bundle,
    id: RequestId,
    format: Option<&str>,
) -> Result<Response, ApiError> {
    let (bytes, ctype, ext) = match format.unwrap_or("zip") {
        "json" => (
            serde_json::to_vec_pretty(b).expect("serialises"),
            "application/json",
            "json",
        ),
        "zip" => (
            zip_bundle(b).map_err(|e| {
                tracing::error!(error = %e, "building a bundle zip failed");
                ApiError::new(Code::InternalError, "internal error; it has been logged")
            })?,
            "application/zip",
            "zip",
        ),
        _ => {
            return Err(ApiError::new(Code::InvalidQuery, "`format` is zip or json"));
        }
    };
    let mut r = (StatusCode::OK, bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"tarmo-request-{id}.{ext}\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

fn csv_of(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(header);
    for row in rows {
        let _ = w.write_record(row.iter().map(|c| defused(c)));
    }
    w.into_inner().unwrap_or_default()
}

/// A cell a spreadsheet will not run as a formula (OWASP's CSV injection
/// advice): the person's own values, typed in a web form by anyone, could
/// otherwise start with `=HYPERLINK(...)` and run when staff or the person
/// open the file. A leading single quote makes the cell text.
fn defused(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn zip_bundle(b: &Bundle) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut file = |name: &str, bytes: &[u8]| -> Result<(), Box<dyn std::error::Error>> {
        z.start_file(name, opts)?;
        z.write_all(bytes)?;
        Ok(())
    };
    file("bundle.json", &serde_json::to_vec_pretty(b)?)?;
    let readme = format!(
        "Everything held about you (profile {}), generated {}.\n\
         bundle.json has it all; each CSV file holds one part of it.\n\
         segments.csv lists the segments (groups for a purpose) you are in.\n",
        b.profile_id, b.generated_at
    );
    file("README.txt", readme.as_bytes())?;
    let identifiers = b
        .identifiers
        .iter()
        .map(|i| vec![i.kind.clone(), i.value.clone(), i.first_seen.clone()]);
    file(
        "identifiers.csv",
        &csv_of(&["type", "value", "first_seen"], identifiers),
    )?;
    let traits = b.traits.iter().map(|(k, v)| vec![k.clone(), s(v)]);
    file("traits.csv", &csv_of(&["trait", "value"], traits))?;
    let segments = b.segments.iter().map(|g| {
        vec![
            g.id.clone(),
            g.name.clone(),
            g.purpose.to_string(),
            g.since.clone(),
        ]
    });
    file(
        "segments.csv",
        &csv_of(&["segment", "name", "purpose", "since"], segments),
    )?;
    let events = b.events.iter().map(|e| {
        vec![
            e.id.to_string(),
            e.kind.clone(),
            e.timestamp.clone(),
            e.received_at.clone(),
            e.source_id.map(|x| x.to_string()).unwrap_or_default(),
            e.message.to_string(),
        ]
    });
    file(
        "events.csv",
        &csv_of(
            &[
                "id",
                "type",
                "timestamp",
                "received_at",
                "source_id",
                "message",
            ],
            events,
        ),
    )?;
    let consents = b.consents.iter().map(|c| {
        vec![
            c.entry.seq.to_string(),
            c.entry.purpose.to_string(),
            c.entry.decision.clone(),
            c.entry.method.clone(),
            c.entry.at.clone(),
            c.entry.recorded_at.clone(),
            c.entry.source.clone(),
            c.entry.notice_version.clone(),
            c.notice_text.to_string(),
            c.entry.evidence.to_string(),
        ]
    });
    file(
        "consents.csv",
        &csv_of(
            &[
                "seq",
                "purpose",
                "decision",
                "method",
                "at",
                "recorded_at",
                "source",
                "notice_version",
                "notice_text",
                "evidence",
            ],
            consents,
        ),
    )?;
    let merges = b.merges.iter().map(|m| {
        vec![
            m.into_profile.to_string(),
            m.from_profile.to_string(),
            m.identifier_type.clone(),
            m.at.clone(),
            m.outcome.clone(),
        ]
    });
    file(
        "merges.csv",
        &csv_of(
            &[
                "into_profile",
                "from_profile",
                "identifier_type",
                "at",
                "outcome",
            ],
            merges,
        ),
    )?;
    let purposes = b.purposes.iter().map(|p| {
        vec![
            p.id.clone(),
            p.name.clone(),
            p.legal_basis.clone(),
            p.balancing_note.clone().unwrap_or_default(),
            p.data_categories.join(" "),
            p.retention_days.to_string(),
            p.your_decision.clone().unwrap_or_default(),
        ]
    });
    file(
        "purposes.csv",
        &csv_of(
            &[
                "purpose",
                "name",
                "legal_basis",
                "balancing_note",
                "data_categories",
                "retention_days",
                "your_decision",
            ],
            purposes,
        ),
    )?;
    let sources = b.sources.iter().map(|x| {
        vec![
            x.source_id.to_string(),
            x.name.clone(),
            x.events.to_string(),
            x.first_received.clone(),
            x.last_received.clone(),
        ]
    });
    file(
        "sources.csv",
        &csv_of(
            &[
                "source_id",
                "name",
                "events",
                "first_received",
                "last_received",
            ],
            sources,
        ),
    )?;
    let imports = b.imports.iter().map(|x| {
        vec![
            x.import_id.to_string(),
            x.kind.clone(),
            x.source.clone(),
            x.documentation.clone(),
            x.file.clone(),
            x.events.to_string(),
            x.imported_at.clone(),
        ]
    });
    file(
        "imports.csv",
        &csv_of(
            &[
                "import_id",
                "kind",
                "source",
                "documentation",
                "file",
                "events",
                "imported_at",
            ],
            imports,
        ),
    )?;
    let recipients = b.recipients.iter().map(|r| {
        vec![
            r.processor.clone(),
            r.role.clone(),
            r.country.clone(),
            r.purpose.to_string(),
            r.data_categories.to_string(),
            r.at.clone(),
        ]
    });
    file(
        "recipients.csv",
        &csv_of(
            &[
                "processor",
                "role",
                "country",
                "purpose",
                "data_categories",
                "at",
            ],
            recipients,
        ),
    )?;
    Ok(z.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_made_text() {
        let out = csv_of(
            &["a", "b"],
            [
                vec!["=HYPERLINK(\"http://x\")".into(), "+1".into()],
                vec!["-2".into(), "@SUM(A1)".into()],
                vec!["\tx".into(), "\ry".into()],
                vec!["plain".into(), "a=b".into()],
            ],
        );
        let text = String::from_utf8(out).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let cells: Vec<String> = r
            .records()
            .flat_map(|r| r.unwrap().iter().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        assert_eq!(
            cells,
            [
                "'=HYPERLINK(\"http://x\")",
                "'+1",
                "'-2",
                "'@SUM(A1)",
                "'\tx",
                "'\ry",
                "plain",
                "a=b"
            ]
        );
    }
}
