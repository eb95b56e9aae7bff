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
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

/// An import request. The whole request is at most 1 MB; larger files go
/// in several requests, or through `tarmo import`.
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
    request_body = ImportInput,
    security(("admin_key" = [])),
    responses((status = 202, body = ImportQueued),
        (status = 400, body = ErrorBody,
            description = "invalid_import, invalid_import_kind, invalid_import_format, invalid_mapping, invalid_import_source, invalid_import_documentation, invalid_file"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<ImportQueued>), ApiError> {
    if raw.is_empty() {
        return Err(ApiError::new(
            Code::InvalidImport,
            "a JSON body is needed: {\"kind\", \"source\", \"content\", ...}",
        ));
    }
    let input: ImportInput = crate::body::json(
        &raw,
        Code::InvalidImport,
        "{\"kind\", \"content\", \"source\"}",
    )?;
    let (spec, content) = spec_of(input)?;
    // Parse now: a file or mapping that cannot work is refused before
    // anything is recorded; row errors are the import's outcome.
    // The same file again after an interruption resumes that import.
    let (svc, identity) = (s.svc.clone(), s.identity.clone());
    let bytes = content.into_bytes();
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
