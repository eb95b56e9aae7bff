//! The register of processors and the exports to them.

use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::consent::PurposeId;
use tarmo_core::ids::ProcessorId;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tarmo_core::processor::ProcessorInput;
use tarmo_store::now_ms;
use tarmo_store::processors::{self as register, ExportView, ProcessorView, SubjectKey};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::consent::{Lookup, SubjectRef, subject_ref_lookup};
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessorList {
    pub processors: Vec<ProcessorView>,
}

fn parse_input(
    body: &[u8],
    targets: tarmo_notify::WebhookTargets,
) -> Result<tarmo_core::processor::ProcessorSpec, ApiError> {
    let input: ProcessorInput = crate::body::json(
        body,
        Code::InvalidProcessor,
        "{\"name\", \"role\", \"country\", \"dpa_reference\", \"dpa_signed_on\", \"purposes\", \"data_categories\"}",
    )?;
    let spec = input
        .parse(now_ms())
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    // A webhook into the internal network would make the notification's
    // outcome a probe of it (see tarmo_notify::webhook).
    if let Some(url) = &spec.erasure_webhook {
        tarmo_notify::WebhookUrl::parse_for(url, targets)
            .map_err(|e| ApiError::new(webhook_code(&e), e.to_string()))?;
    }
    Ok(spec)
}

fn processor_id(raw: &str) -> Result<ProcessorId, ApiError> {
    raw.parse::<ProcessorId>()
        .ok()
        .filter(|v| v.0 > 0)
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidProcessorId,
                "a processor id is a positive integer",
            )
        })
}

/// Register a processor.
#[utoipa::path(post, path = "/api/v1/processors", tag = "processors",
    request_body = ProcessorInput,
    security(("admin_key" = [])),
    responses((status = 201, body = ProcessorView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "The name is taken")))]
pub async fn register_processor(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ProcessorView>), ApiError> {
    let spec = parse_input(&body, s.config.webhook_targets)?;
    let svc = s.svc.clone();
    let view = blocking(move || register::add(&svc, spec)).await?;
    tracing::info!(processor_id = view.id.0, "processor registered");
    Ok((StatusCode::CREATED, Json(view)))
}

/// The register of processors.
#[utoipa::path(get, path = "/api/v1/processors", tag = "processors",
    security(("admin_key" = [])),
    responses((status = 200, body = ProcessorList), (status = 401, body = ErrorBody)))]
pub async fn list_processors(
    State(s): State<Arc<AppState>>,
    _p: Principal,
) -> Result<Json<ProcessorList>, ApiError> {
    let svc = s.svc.clone();
    let processors = blocking(move || register::all(&svc)).await?;
    Ok(Json(ProcessorList { processors }))
}

/// One processor.
#[utoipa::path(get, path = "/api/v1/processors/{id}", tag = "processors",
    params(("id" = i64, Path, description = "Processor id")),
    security(("admin_key" = [])),
    responses((status = 200, body = ProcessorView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_processor(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(raw): Path<String>,
) -> Result<Json<ProcessorView>, ApiError> {
    let id = processor_id(&raw)?;
    let svc = s.svc.clone();
    blocking(move || register::find(&svc, id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(Code::ProcessorNotFound, "no processor with that id"))
}

/// Change a processor: send its whole definition. The webhook token stays
/// unless `webhook_token` is given (a string sets it, null removes it).
#[utoipa::path(put, path = "/api/v1/processors/{id}", tag = "processors",
    params(("id" = i64, Path, description = "Processor id")),
    request_body = ProcessorInput,
    security(("admin_key" = [])),
    responses((status = 200, body = ProcessorView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_processor(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ProcessorView>, ApiError> {
    let id = processor_id(&raw)?;
    let spec = parse_input(&body, s.config.webhook_targets)?;
    let svc = s.svc.clone();
    let view = blocking(move || register::change(&svc, id, spec)).await?;
    tracing::info!(processor_id = id.0, "processor changed");
    Ok(Json(view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportInput {
    /// The purpose the processor receives the data for.
    pub purpose: String,
    /// Up to 10,000 people, each `{"profile": 42}` or `{"type": "email", "value": "..."}`.
    pub subjects: Vec<SubjectRef>,
}

/// Export people's data to a processor for one of its purposes.
///
/// Refused with 403 `purpose_not_permitted` when the processor is not
/// registered for the purpose, and with 403 `no_common_data_categories` when
/// the purpose and the processor share no data category. The data exported
/// is limited to the categories both name, mapped to data so:
///
/// - `contact`: the email and phone identifiers;
/// - `identifiers`: every identifier;
/// - `profile` or `traits`: the traits (a trait repeating an identifier,
///   such as `email`, only where that identifier goes);
/// - `address`: the `address` trait;
/// - `behaviour`: `track`, `page` and `screen` events, the most recent 1,000;
/// - `purchase_history`: `track` events, the most recent 1,000.
///
/// Events carry their type, name, properties and timestamp, never the
/// context (IP address, user agent, device). Any other category stands for
/// no data Tarmo exports. A person is included only if the policy allows the
/// purpose for them now; the others are listed in `excluded` by position,
/// with the reason, and nothing else about them. Each person exported gets a
/// disclosure record in the same transaction.
#[utoipa::path(post, path = "/api/v1/processors/{id}/exports", tag = "processors",
    params(("id" = i64, Path, description = "Processor id")),
    request_body = ExportInput,
    security(("admin_key" = [])),
    responses((status = 200, body = ExportView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Outside the processor's purposes or categories"),
        (status = 404, body = ErrorBody)))]
pub async fn export(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ExportView>, ApiError> {
    let id = processor_id(&raw)?;
    let b: ExportInput = crate::body::json(
        &body,
        Code::InvalidExport,
        "{\"purpose\", \"subjects\": [...]}",
    )?;
    if b.subjects.len() > register::EXPORT_MAX_SUBJECTS {
        return Err(ApiError::new(
            Code::TooManySubjects,
            "at most 10,000 people an export",
        ));
    }
    let subjects = b
        .subjects
        .iter()
        .enumerate()
        .map(|(i, r)| {
            subject_ref_lookup(&s, r)
                .map(|(l, _)| match l {
                    Lookup::Id(p) => SubjectKey::Profile(p),
                    Lookup::Identifier(b) => SubjectKey::Identifier(b),
                })
                .map_err(|e| ApiError {
                    message: format!("subject {i}: {}", e.message),
                    ..e
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    p.may_act_for(&b.purpose)?;
    // A purpose that is not even well formed is none the processor is
    // registered for: the same refusal as any other.
    let purpose = PurposeId::parse(&b.purpose).map_err(|_| {
        ApiError::new(
            Code::PurposeNotPermitted,
            format!(
                "processor {id} is not registered for purpose `{}`",
                b.purpose.chars().take(64).collect::<String>()
            ),
        )
    })?;
    let kinds = p.grant.data.clone();
    let svc = s.svc.clone();
    let view = blocking(move || register::export_to(&svc, id, purpose, subjects, kinds)).await?;
    tracing::info!(
        processor_id = id.0,
        purpose = %view.purpose,
        exported = view.exported.len(),
        excluded = view.excluded.len(),
        "export to a processor"
    );
    s.log_access(
        &p,
        "export",
        view.exported.iter().map(|x| x.profile_id).collect(),
    )
    .await?;
    Ok(Json(view))
}

/// The code a refused webhook address answers with.
fn webhook_code(e: &tarmo_notify::Error) -> Code {
    match e {
        tarmo_notify::Error::WebhookNotHttps => Code::WebhookUrlNotHttps,
        tarmo_notify::Error::WebhookTargetPrivate => Code::WebhookTargetPrivate,
        tarmo_notify::Error::WebhookUrl(_) => Code::InvalidWebhookUrl,
        _ => Code::InvalidConfiguration,
    }
}
