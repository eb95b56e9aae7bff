//! Templates, automations and campaigns over HTTP, and the SMS provider's
//! inbound callback (STOP). Handlers parse and map; the store's
//! `automations` module owns every transaction, and the scheduler
//! (`scheduler.rs`) sends.
//!
//! A purpose-bound key works only with flows of its purposes. A dry run
//! names people (profile ids) and goes to the access log.

use std::collections::BTreeMap;
use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::ProfileId;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tarmo_core::automations::template::{Template, is_stop_word};
use tarmo_core::automations::{Automation, Campaign};
use tarmo_store::automations::{self as flows, Flow, FlowRecord, TemplateRecord};
use tarmo_store::{now_ms, rfc3339};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: String,
    pub channel: String,
    /// `{"en": {"subject", "text", "html"}, ...}`; the first is the fallback.
    #[schema(value_type = Object)]
    pub languages: Value,
    /// The traits it reads.
    pub fields: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountersView {
    pub sent: i64,
    /// By reason: no_consent, withdrawn, capped, suppressed, missing_contact,
    /// converted, not_absent, cancelled, ...
    #[schema(value_type = Object)]
    pub skipped: BTreeMap<String, i64>,
    pub failed: i64,
    pub pending: i64,
    /// Sends that waited for the end of quiet hours.
    pub deferred_quiet_hours: i64,
    /// People who withdrew from the purpose after a send.
    pub unsubscribed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowView {
    pub id: String,
    /// `automation` or `campaign`.
    pub kind: String,
    /// Automations: active, disabled; campaigns: scheduled, running, done, cancelled.
    pub status: String,
    #[schema(value_type = Object)]
    pub definition: Value,
    pub next_fire_at: Option<String>,
    pub counters: CountersView,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowList {
    pub automations: Vec<FlowView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunRow {
    #[schema(value_type = i64)]
    pub profile_id: ProfileId,
    /// `send`, `skip` or `wait` (quiet hours).
    pub outcome: String,
    pub reason: Option<String>,
    pub template: String,
    pub language: Option<String>,
    pub wait_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunView {
    pub would_send: usize,
    pub would_not: usize,
    pub people: Vec<DryRunRow>,
}

fn json_body(raw: &[u8], code: Code) -> Result<Value, ApiError> {
    crate::body::json(raw, code, "the definition as a JSON object")
}

fn template_view(t: TemplateRecord) -> TemplateView {
    let fields = t.template.fields().into_iter().collect();
    let languages = serde_json::to_value(&t.template)
        .ok()
        .and_then(|v| v.get("languages").cloned())
        .unwrap_or(Value::Null);
    TemplateView {
        id: t.template.id,
        channel: t.template.channel.as_str().into(),
        languages,
        fields,
        created_at: rfc3339(t.created_ms),
        updated_at: rfc3339(t.updated_ms),
    }
}

fn parse_template(raw: &[u8], path_id: Option<&str>) -> Result<Template, ApiError> {
    let mut v = json_body(raw, Code::InvalidTemplate)?;
    if let (Some(p), Some(o)) = (path_id, v.as_object_mut()) {
        match o.get("id").and_then(Value::as_str) {
            Some(b) if b != p => {
                return Err(ApiError::new(
                    Code::InvalidTemplate,
                    "the body's `id` differs from the path's",
                ));
            }
            _ => {
                o.insert("id".into(), p.into());
            }
        }
    }
    serde_json::from_value(v).map_err(|e| ApiError::new(Code::InvalidTemplate, e.to_string()))
}

/// Save a template: `{"id", "channel": "email" | "sms", "languages": {"en": {"subject", "text", "html"}}}`.
#[utoipa::path(post, path = "/api/v1/templates", tag = "automations",
    request_body(content = Object), security(("admin_key" = [])),
    responses((status = 201, body = TemplateView), (status = 400, body = ErrorBody,
        description = "invalid_template, invalid_template_syntax"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_template(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let t = parse_template(&raw, None)?;
    let r = blocking({
        let svc = s.svc.clone();
        move || flows::create_template(&svc, t)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(template_view(r))))
}

/// Change a template; every automation and campaign using it is checked again.
#[utoipa::path(put, path = "/api/v1/templates/{id}", tag = "automations",
    params(("id" = String, Path, description = "Template id")),
    request_body(content = Object), security(("admin_key" = [])),
    responses((status = 200, body = TemplateView), (status = 400, body = ErrorBody,
        description = "template_field_not_permitted, template_channel_mismatch, invalid_template"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_template(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<TemplateView>, ApiError> {
    let t = parse_template(&raw, Some(&id))?;
    let r = blocking({
        let svc = s.svc.clone();
        move || flows::change_template(&svc, t)
    })
    .await?;
    Ok(Json(template_view(r)))
}

/// Every template.
#[utoipa::path(get, path = "/api/v1/templates", tag = "automations", security(("admin_key" = [])),
    responses((status = 200, body = TemplateList), (status = 401, body = ErrorBody)))]
pub async fn list_templates(
    State(s): State<Arc<AppState>>,
    _p: Principal,
) -> Result<Json<TemplateList>, ApiError> {
    let svc = s.svc.clone();
    let all = blocking(move || flows::list_templates(&svc)).await?;
    Ok(Json(TemplateList {
        templates: all.into_iter().map(template_view).collect(),
    }))
}

/// One template.
#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "automations",
    params(("id" = String, Path, description = "Template id")), security(("admin_key" = [])),
    responses((status = 200, body = TemplateView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_template(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(id): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    let svc = s.svc.clone();
    blocking(move || flows::template(&svc, &id))
        .await?
        .map(|t| Json(template_view(t)))
        .ok_or_else(|| ApiError::new(Code::TemplateNotFound, "no such template"))
}

/// Delete a template no automation or campaign uses.
#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "automations",
    params(("id" = String, Path, description = "Template id")), security(("admin_key" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "template_in_use")))]
pub async fn delete_template(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let svc = s.svc.clone();
    if blocking(move || flows::delete_template(&svc, &id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::TemplateNotFound, "no such template"))
    }
}

fn def_error((code, msg): (Code, String)) -> ApiError {
    ApiError::new(code, msg)
}

pub(crate) async fn flow_view(s: &AppState, f: FlowRecord) -> Result<FlowView, ApiError> {
    let svc = s.svc.clone();
    let id = f.flow.id().to_owned();
    let purpose = f.flow.sending().0.to_owned();
    let c = blocking(move || flows::flow_counters(&svc, &id, &purpose)).await?;
    let status = if f.status == "running" && c.pending == 0 {
        "done".to_owned()
    } else {
        f.status.clone()
    };
    let mut definition = match &f.flow {
        Flow::Automation(a) => a.to_json(),
        Flow::Campaign(c) => c.to_json(),
    };
    if let (Flow::Campaign(c), Some(o)) = (&f.flow, definition.as_object_mut()) {
        o.remove("send_at_ms");
        o.insert("send_at".into(), rfc3339(c.send_at_ms).into());
    }
    Ok(FlowView {
        id: f.flow.id().to_owned(),
        kind: f.flow.kind().into(),
        status,
        definition,
        next_fire_at: f.next_fire_ms.map(rfc3339),
        counters: CountersView {
            sent: c.sent,
            skipped: c.skipped,
            failed: c.failed,
            pending: c.pending,
            deferred_quiet_hours: c.deferred_quiet_hours,
            unsubscribed: c.unsubscribed,
        },
        created_at: rfc3339(f.created_ms),
        updated_at: rfc3339(f.updated_ms),
    })
}

pub(crate) fn visible(p: &Principal, f: &FlowRecord) -> bool {
    p.grant.serves(f.flow.sending().0.as_str())
}

async fn flow_of(
    s: &AppState,
    p: &Principal,
    id: String,
    kind: &'static str,
) -> Result<FlowRecord, ApiError> {
    let svc = s.svc.clone();
    let code = if kind == "campaign" {
        Code::CampaignNotFound
    } else {
        Code::AutomationNotFound
    };
    match blocking(move || flows::flow(&svc, &id)).await? {
        Some(f) if f.flow.kind() == kind && visible(p, &f) => Ok(f),
        _ => Err(ApiError::new(code, format!("no such {kind}"))),
    }
}

/// Define an automation: `{"id", "name", "purpose", "channel", "template",
/// "trigger", "caps", "quiet_hours", "enabled"}`; with the `webhook` channel,
/// `"webhook": {"processor": ID, "list": "push" | "call"}` and an `sms` template.
#[utoipa::path(post, path = "/api/v1/automations", tag = "automations",
    request_body(content = Object), security(("admin_key" = [])),
    responses((status = 201, body = FlowView), (status = 400, body = ErrorBody,
        description = "invalid_automation, invalid_trigger, invalid_cron, cron_never_fires, invalid_caps, invalid_quiet_hours, quiet_hours_whole_day, invalid_channel, channel_not_supported, unknown_purpose, channel_not_covered, unknown_template, template_channel_mismatch, template_field_not_permitted, unknown_segment"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_automation(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<FlowView>), ApiError> {
    let a = Automation::from_json(&json_body(&raw, Code::InvalidAutomation)?, None)
        .map_err(def_error)?;
    p.may_act_for(&a.purpose)?;
    let cfg = s.send_config();
    let svc = s.svc.clone();
    let f = blocking(move || flows::save_automation(&svc, cfg, a, true)).await?;
    tracing::info!(automation = %f.flow.id(), "automation defined");
    Ok((StatusCode::CREATED, Json(flow_view(&s, f).await?)))
}

/// Replace an automation's definition.
#[utoipa::path(put, path = "/api/v1/automations/{id}", tag = "automations",
    params(("id" = String, Path, description = "Automation id")),
    request_body(content = Object), security(("admin_key" = [])),
    responses((status = 200, body = FlowView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_automation(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<FlowView>, ApiError> {
    flow_of(&s, &p, id.clone(), "automation").await?;
    let a = Automation::from_json(&json_body(&raw, Code::InvalidAutomation)?, Some(&id))
        .map_err(def_error)?;
    p.may_act_for(&a.purpose)?;
    let cfg = s.send_config();
    let svc = s.svc.clone();
    let f = blocking(move || flows::save_automation(&svc, cfg, a, false)).await?;
    Ok(Json(flow_view(&s, f).await?))
}

/// Every automation with its counters.
#[utoipa::path(get, path = "/api/v1/automations", tag = "automations", security(("admin_key" = [])),
    responses((status = 200, body = FlowList), (status = 401, body = ErrorBody)))]
pub async fn list_automations(
    State(s): State<Arc<AppState>>,
    p: Principal,
) -> Result<Json<FlowList>, ApiError> {
    let svc = s.svc.clone();
    let all = blocking(move || flows::list_flows(&svc)).await?;
    let mut out = Vec::new();
    for f in all {
        if f.flow.kind() == "automation" && visible(&p, &f) {
            out.push(flow_view(&s, f).await?);
        }
    }
    Ok(Json(FlowList { automations: out }))
}

/// One automation: its definition and counters (sent, skipped by reason,
/// failed, pending, unsubscribes that followed).
#[utoipa::path(get, path = "/api/v1/automations/{id}", tag = "automations",
    params(("id" = String, Path, description = "Automation id")), security(("admin_key" = [])),
    responses((status = 200, body = FlowView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_automation(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    let f = flow_of(&s, &p, id, "automation").await?;
    Ok(Json(flow_view(&s, f).await?))
}

/// Delete an automation: what it had waiting is not sent.
#[utoipa::path(delete, path = "/api/v1/automations/{id}", tag = "automations",
    params(("id" = String, Path, description = "Automation id")), security(("admin_key" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_automation(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    flow_of(&s, &p, id.clone(), "automation").await?;
    let svc = s.svc.clone();
    blocking(move || flows::delete_automation(&svc, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who would receive what now, and who would not, with reasons. Nothing
/// is sent or saved.
#[utoipa::path(post, path = "/api/v1/automations/{id}/dry-run", tag = "automations",
    params(("id" = String, Path, description = "Automation or campaign id")), security(("admin_key" = [])),
    responses((status = 200, body = DryRunView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn dry_run(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<DryRunView>, ApiError> {
    let cfg = s.send_config();
    let f = {
        let svc = s.svc.clone();
        let id = id.clone();
        blocking(move || flows::flow(&svc, &id)).await?
    };
    let Some(f) = f.filter(|f| visible(&p, f)) else {
        return Err(ApiError::new(
            Code::AutomationNotFound,
            "no such automation",
        ));
    };
    let template = f.flow.sending().2.to_owned();
    let svc = s.svc.clone();
    let rows = blocking(move || flows::preview_sends(&svc, &cfg, &id, now_ms(), 1000))
        .await?
        .unwrap_or_default();
    s.log_access(
        &p,
        "automation_dry_run",
        rows.iter().map(|r| r.profile_id).collect(),
    )
    .await?;
    let would_send = rows.iter().filter(|r| r.outcome == "send").count();
    Ok(Json(DryRunView {
        would_send,
        would_not: rows.len() - would_send,
        people: rows
            .into_iter()
            .map(|r| DryRunRow {
                profile_id: r.profile_id,
                outcome: r.outcome.into(),
                reason: r.reason,
                template: template.clone(),
                language: r.language,
                wait_until: r.wait_until_ms.map(rfc3339),
            })
            .collect(),
    }))
}

/// A one-off send to a segment: `{"id", "segment", "template", "purpose",
/// "channel", "send_at", "per_minute"}`.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "automations",
    request_body(content = Object), security(("admin_key" = [])),
    responses((status = 201, body = FlowView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_campaign(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<FlowView>), ApiError> {
    let c = Campaign::from_json(&json_body(&raw, Code::InvalidCampaign)?, now_ms())
        .map_err(def_error)?;
    p.may_act_for(&c.purpose)?;
    let svc = s.svc.clone();
    let f = blocking(move || flows::create_campaign(&svc, c)).await?;
    Ok((StatusCode::CREATED, Json(flow_view(&s, f).await?)))
}

/// A campaign with its counters.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "automations",
    params(("id" = String, Path, description = "Campaign id")), security(("admin_key" = [])),
    responses((status = 200, body = FlowView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_campaign(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    let f = flow_of(&s, &p, id, "campaign").await?;
    Ok(Json(flow_view(&s, f).await?))
}

/// Cancel a campaign: nothing not yet handed to the outbox is sent.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/cancel", tag = "automations",
    params(("id" = String, Path, description = "Campaign id")), security(("admin_key" = [])),
    responses((status = 200, body = FlowView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cancel_campaign(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    flow_of(&s, &p, id.clone(), "campaign").await?;
    let svc = s.svc.clone();
    let f = blocking(move || flows::cancel_campaign(&svc, &id)).await?;
    Ok(Json(flow_view(&s, f).await?))
}

/// What the SMS provider posts for a reply.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InboundSms {
    /// The sender's number (E.164).
    pub from: String,
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboundResult {
    /// Whether the body was a stop word.
    pub stop: bool,
    /// How many purposes were withdrawn.
    pub withdrawn: usize,
}

/// The SMS provider's callback for replies, authenticated with its own
/// bearer token (`--sms-inbound-token`; without one, every call is 401). `STOP` and its equivalents (en, fi,
/// de, nb, he, tr) withdraw the number's SMS purposes in the ledger.
#[utoipa::path(post, path = "/v1/sms/inbound", tag = "automations", request_body = InboundSms,
    responses((status = 200, body = InboundResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn sms_inbound(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<Json<InboundResult>, ApiError> {
    // Without a configured token nothing is accepted.
    let token = s.config.sms_inbound_token.as_deref();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.is_some_and(|t| tarmo_store::vault::ct_eq(given.as_bytes(), t.as_bytes())) {
        return Err(ApiError::new(
            Code::InvalidToken,
            "the SMS provider's bearer token is missing or wrong",
        ));
    }
    let m: InboundSms = crate::body::json(&raw, Code::InvalidInboundSms, "{\"from\", \"body\"}")?;
    if !is_stop_word(&m.body) {
        return Ok(Json(InboundResult {
            stop: false,
            withdrawn: 0,
        }));
    }
    let kind = s.identity.kind("phone")?;
    let id = s.identity.identifier(kind, &m.from)?;
    let keyword: String = m.body.trim().chars().take(20).collect();
    let svc = s.svc.clone();
    let purposes = blocking(move || flows::stop_sms(&svc, &id, keyword)).await?;
    tracing::info!(withdrawn = purposes.len(), "SMS stop word received");
    Ok(Json(InboundResult {
        stop: true,
        withdrawn: purposes.len(),
    }))
}
