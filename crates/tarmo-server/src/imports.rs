//! Imports over HTTP, for a CRM or a till that syncs nightly: the file, its
//! kind and mapping in one request, answered 202 with the import's id; the
//! import runs as a background job (the use case is
//! `tarmo_store::imports`, shared with `tarmo import`), and
//! `GET /api/v1/imports/{id}` tells its progress and outcome, with the
//! errors by line number.

use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tarmo_store::imports::{self, Format, ImportKind, ImportSpec, ImportView, Mapping, Status};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

/// The largest import file over HTTP (the whole request): 32 MiB. The
/// request is held whole, and every row is checked before anything is
/// written (its records kept until the end: ~1.3 KB a customer), so
/// larger files go through `tarmo import`, or in several requests.
pub const MAX_FILE: usize = 32 * 1024 * 1024;

/// How long an import's file may take to arrive: 32 MiB at 110 KB/s.
const FILE_READ: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether a request's handler reads its body itself, past the wire
/// limit (`serve` does not buffer it).
pub(crate) fn reads_its_own_body(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST && path == "/api/v1/imports"
}

/// An import request as JSON, the file in `content`; or the file itself
/// as the body (`text/csv`, or `application/x-ndjson` for JSON Lines) with
/// the rest in the query ([`ImportQuery`]). At most [`MAX_FILE`].
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportInput {
    /// customers, orders, products, stores or stock.
    pub kind: String,
    /// csv (default) or jsonl.
    #[serde(default)]
    pub format: Option<String>,
    /// The file's content.
    pub content: String,
    /// The file's name, kept with the provenance.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Where the file comes from ("CRM nightly sync"), 1-200 characters.
    pub source: String,
    /// Where the proof of lawful collection is kept (customers and orders).
    #[serde(default)]
    pub documentation: Option<String>,
    /// The mapping: a JSON object, or TOML text (see the README).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub mapping: Option<Value>,
    /// Import the valid rows and report the others.
    #[serde(default)]
    pub skip_invalid: bool,
    /// Check and count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// With the file as the body: what the JSON form's other fields say.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// customers, orders, products, stores or stock.
    pub kind: Option<String>,
    /// Where the file comes from ("CRM nightly sync").
    pub source: Option<String>,
    /// Where the proof of lawful collection is kept (customers and orders).
    pub documentation: Option<String>,
    /// The file's name, kept with the provenance.
    pub file_name: Option<String>,
    /// The mapping: a JSON object or TOML text.
    pub mapping: Option<String>,
    /// Import the valid rows and report the others.
    pub skip_invalid: Option<bool>,
    /// Check and count only.
    pub dry_run: Option<bool>,
}

/// The request's file format when the body is the file itself.
fn raw_format(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "text/csv" => Some("csv"),
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => Some("jsonl"),
        _ => None,
    }
}

/// Read an import's body: at most [`MAX_FILE`], within [`FILE_READ`].
async fn read_file(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(FILE_READ, axum::body::to_bytes(body, MAX_FILE)).await {
        Err(_) => Err(ApiError::new(
            Code::BodyTimeout,
            "the import file did not arrive in time",
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    Code::BodyTooLarge,
                    "an import over HTTP is at most 32 MiB; split the file, or use `tarmo import`",
                )
            } else {
                ApiError::new(Code::InvalidRequest, "the request body could not be read")
            })
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportQueued {
    pub id: i64,
    pub status: Status,
    /// Where to follow it.
    pub location: String,
}

fn spec_of(input: ImportInput) -> Result<(ImportSpec, String), ApiError> {
    let kind = ImportKind::parse(&input.kind).ok_or_else(|| {
        ApiError::new(
            Code::InvalidImportKind,
            "`kind` is customers, orders, products, stores or stock",
        )
    })?;
    let format = match input.format.as_deref() {
        None => Format::of_file_name(input.file_name.as_deref().unwrap_or("")),
        Some(f) => Format::parse(f)
            .ok_or_else(|| ApiError::new(Code::InvalidImportFormat, "`format` is csv or jsonl"))?,
    };
    let mapping = match input.mapping {
        None | Some(Value::Null) => Mapping::default(),
        Some(Value::String(t)) => {
            Mapping::parse(&t).map_err(|e| ApiError::new(Code::InvalidMapping, e))?
        }
        Some(v @ Value::Object(_)) => serde_json::from_value(v)
            .map_err(|e| ApiError::new(Code::InvalidMapping, format!("mapping: {e}")))?,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidMapping,
                "`mapping` is a JSON object or TOML text",
            ));
        }
    };
    let spec = ImportSpec {
        kind,
        format,
        mapping,
        source: input.source,
        documentation: input.documentation.unwrap_or_default(),
        file_name: input.file_name.unwrap_or_default(),
        skip_invalid: input.skip_invalid,
        dry_run: input.dry_run,
    };
    spec.check()?;
    Ok((spec, input.content))
}

/// Start an import. Every row is checked before anything is written; the
/// outcome (and the errors by line) is read with `GET /api/v1/imports/{id}`.
#[utoipa::path(post, path = "/api/v1/imports", tag = "imports", operation_id = "create_import",
    request_body(description = "The request as JSON (the file in `content`), or the file itself as text/csv or application/x-ndjson with the rest in the query; at most 32 MiB",
        content(
        (ImportInput = "application/json"),
        (String = "text/csv"),
        (String = "application/x-ndjson"))),
    params(ImportQuery),
    security(("admin_key" = [])),
    responses((status = 202, body = ImportQueued),
        (status = 400, body = ErrorBody,
            description = "invalid_import, invalid_import_kind, invalid_import_format, invalid_mapping, invalid_import_source, invalid_import_documentation, invalid_file"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody, description = "body_timeout"),
        (status = 413, body = ErrorBody, description = "body_too_large: over 32 MiB")))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    p: Principal,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ImportQuery>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<ImportQueued>), ApiError> {
    let raw = read_file(body).await?;
    let (spec, bytes) = match raw_format(&headers) {
        Some(format) => {
            let mapping = match q.mapping {
                None => None,
                // JSON text is an object; anything else is read as TOML.
                Some(t) if t.trim_start().starts_with('{') => {
                    Some(serde_json::from_str::<Value>(&t).map_err(|e| {
                        ApiError::new(Code::InvalidMapping, format!("mapping: {e}"))
                    })?)
                }
                Some(t) => Some(Value::String(t)),
            };
            let input = ImportInput {
                kind: q.kind.unwrap_or_default(),
                format: Some(format.into()),
                content: String::new(),
                file_name: q.file_name,
                source: q.source.unwrap_or_default(),
                documentation: q.documentation,
                mapping,
                skip_invalid: q.skip_invalid.unwrap_or(false),
                dry_run: q.dry_run.unwrap_or(false),
            };
            (spec_of(input)?.0, raw.to_vec())
        }
        None => {
            if raw.is_empty() {
                return Err(ApiError::new(
                    Code::InvalidImport,
                    "a JSON body is needed: {\"kind\", \"source\", \"content\", ...}, or the file itself as text/csv or application/x-ndjson",
                ));
            }
            let input: ImportInput = crate::body::json(
                &raw,
                Code::InvalidImport,
                "{\"kind\", \"content\", \"source\"}",
            )?;
            drop(raw);
            let (spec, content) = spec_of(input)?;
            (spec, content.into_bytes())
        }
    };
    // Parse now: a file or mapping that cannot work is refused before
    // anything is recorded; row errors are the import's outcome.
    // The same file again after an interruption resumes that import.
    let (svc, identity) = (s.svc.clone(), s.identity.clone());
    let accepted = blocking(move || imports::accept(&svc, spec, &bytes, &identity)).await?;
    let id = accepted.id;
    log(&s, &p, "import_started").await?;
    let svc = s.svc.clone();
    std::thread::Builder::new()
        .name(format!("tarmo-import-{id}"))
        .spawn(move || match imports::run_accepted(&svc, accepted) {
            Ok(done) => tracing::info!(
                import = id,
                status = done.status.as_str(),
                "import finished"
            ),
            Err(e) => tracing::warn!(import = id, error = %e, "import failed"),
        })
        .map_err(|e| ApiError::from(tarmo_store::Error::Io(e)))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ImportQueued {
            id,
            status: Status::Queued,
            location: format!("/api/v1/imports/{id}"),
        }),
    ))
}

/// An import's progress (while it runs on this node) and outcome.
#[utoipa::path(get, path = "/api/v1/imports/{id}", tag = "imports", operation_id = "get_import",
    params(("id" = i64, Path, description = "Import id")),
    security(("admin_key" = [])),
    responses((status = 200, body = ImportView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "import_not_found")))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<ImportView>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::new(Code::InvalidImportId, "an import id is a number"))?;
    let svc = s.svc.clone();
    let view = blocking(move || imports::view(&svc, id))
        .await?
        .ok_or_else(|| ApiError::new(Code::ImportNotFound, format!("no import {id}")))?;
    // The report may quote a value from the file.
    log(&s, &p, "import_read").await?;
    Ok(Json(view))
}

/// Imports name no profile up front; the record says who started or read one.
async fn log(s: &AppState, p: &Principal, action: &'static str) -> Result<(), ApiError> {
    let logger = s.access.clone();
    let record = p.access(action, Vec::new());
    tokio::task::spawn_blocking(move || logger.record(record))
        .await
        .map_err(|_| ApiError::from(tarmo_store::Error::WriterGone))??;
    Ok(())
}
