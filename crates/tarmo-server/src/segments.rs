//! Segments, lifecycle and RFM over HTTP: definitions (JSON tree or text
//! form), counts, members, previews, a person's memberships. Membership is
//! computed by the store's segment engine; handlers parse, call it and map.
//!
//! A purpose-bound key works only with segments of its purposes and sees
//! only members whose decision for one of them allows it now.

use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::ProfileId;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tarmo_core::consent::PurposeId;
use tarmo_core::segments::{Rule, text, valid_segment_id};
use tarmo_store::segments::engine::SegmentEngine;
use tarmo_store::segments::{SegmentDef, audiences};
use tarmo_store::{now_ms, rfc3339};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

/// A segment as written: the rule as a JSON condition tree (`rule`) or in
/// the text form (`rule_text`), one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    /// `[a-z][a-z0-9_]{0,63}`; on PUT taken from the path.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// The purpose the segment serves; the rule may read only the kinds of
    /// data that purpose uses.
    pub purpose: String,
    /// The condition tree, e.g. `{"event": "Order Completed", "within": "365d", "count": {"gte": 3}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Value>,
    /// The same rule in text: `event "Order Completed" in 365d count >= 3`.
    #[serde(default)]
    pub rule_text: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    pub purpose: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Value>,
    #[serde(default)]
    pub rule_text: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentView {
    pub id: String,
    pub name: String,
    #[schema(value_type = String)]
    pub purpose: PurposeId,
    #[schema(value_type = Object)]
    pub rule: Value,
    pub rule_text: String,
    /// Members now.
    pub count: usize,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    pub segments: Vec<SegmentView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    #[schema(value_type = i64)]
    pub profile_id: ProfileId,
    /// When they entered.
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub members: Vec<Member>,
    /// Pass as `after` for the next page; absent on the last.
    #[schema(value_type = Option<i64>)]
    pub next: Option<ProfileId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub count: usize,
    /// Up to ten profile ids that hold.
    #[schema(value_type = Vec<i64>)]
    pub sample: Vec<ProfileId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Membership {
    pub id: String,
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileSegments {
    #[schema(value_type = i64)]
    pub profile_id: ProfileId,
    pub segments: Vec<Membership>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// 1 to 1000; 100 when absent.
    pub limit: Option<usize>,
    /// A profile id from `next`: members after it.
    pub after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreCounts {
    /// Customers with score 1, 2, 3, 4, 5.
    pub r: [u64; 5],
    pub f: [u64; 5],
    pub m: [u64; 5],
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LifecycleOverview {
    /// People per stage: new, active, loyal, at_risk, lapsed.
    #[schema(value_type = Object)]
    pub stages: Value,
    /// People with no order.
    pub without_orders: u64,
    pub scores: ScoreCounts,
    /// The quintile boundaries the scores are cut at (recency in days).
    #[schema(value_type = Object)]
    pub quintiles: Value,
}

/// Ask the segment engine, off the async workers: while it reads everyone's
/// facts again (a definition that needs new ones) it holds its lock for
/// long, and an async worker must never wait for that.
pub(crate) async fn engine<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&SegmentEngine) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let e = s.segments.clone();
    tokio::task::spawn_blocking(move || f(&e))
        .await
        .map_err(|_| ApiError::from(tarmo_store::Error::Busy("worker gone".into())))
}

/// A segment's definition and count, from the engine.
async fn segment(s: &AppState, id: &str) -> Result<Option<(SegmentDef, usize)>, ApiError> {
    let id = id.to_owned();
    engine(s, move |e| e.get(&id)).await
}

fn invalid_rule(e: tarmo_core::segments::RuleError) -> ApiError {
    ApiError::new(Code::InvalidRule, e.to_string())
}

fn parse_rule(rule: Option<Value>, text_form: Option<String>) -> Result<Rule, ApiError> {
    match (rule, text_form) {
        (Some(v), None) => Rule::from_json(&v).map_err(invalid_rule),
        (None, Some(t)) => text::parse(&t).map_err(invalid_rule),
        _ => Err(ApiError::new(
            Code::InvalidRule,
            "give the rule as `rule` (a JSON condition tree) or as `rule_text`, one of the two",
        )),
    }
}

fn body<T: serde::de::DeserializeOwned>(raw: &[u8], code: Code) -> Result<T, ApiError> {
    crate::body::json(
        raw,
        code,
        "{\"name\", \"purpose\", \"rule\" or \"rule_text\"}",
    )
}

fn view(d: &SegmentDef, count: usize) -> SegmentView {
    SegmentView {
        id: d.id.clone(),
        name: d.name.clone(),
        purpose: d.purpose.clone(),
        rule: d.rule.to_json(),
        rule_text: text::to_text(&d.rule),
        count,
        created_at: rfc3339(d.created_ms),
        updated_at: rfc3339(d.updated_ms),
    }
}

fn not_found() -> ApiError {
    ApiError::new(Code::SegmentNotFound, "no such segment")
}

/// A purpose-bound key sees only segments of its purposes.
fn visible(p: &Principal, d: &SegmentDef) -> bool {
    p.grant.serves(d.purpose.as_str())
}

/// The purpose a definition names: one that is not even well formed is
/// answered as the catalog answers any purpose it does not hold.
fn purpose_of(s: &str) -> Result<PurposeId, ApiError> {
    PurposeId::parse(s).map_err(|_| {
        ApiError::new(
            Code::UnknownPurpose,
            format!(
                "no purpose `{}` in the catalog",
                s.chars().take(64).collect::<String>()
            ),
        )
    })
}

fn define(id: String, input: SegmentInput) -> Result<SegmentDef, ApiError> {
    if !valid_segment_id(&id) {
        return Err(ApiError::new(
            Code::InvalidSegmentId,
            "a segment id is 1-64 of a-z, 0-9 and _, starting with a letter",
        ));
    }
    let rule = parse_rule(input.rule, input.rule_text)?;
    let now = now_ms();
    Ok(SegmentDef {
        id,
        name: input.name,
        purpose: purpose_of(&input.purpose)?,
        rule,
        created_ms: now,
        updated_ms: now,
    })
}

/// Define a segment; its members are computed before the answer.
#[utoipa::path(post, path = "/api/v1/segments", tag = "segments",
    request_body = SegmentInput,
    security(("admin_key" = [])),
    responses((status = 201, body = SegmentView), (status = 400, body = ErrorBody,
        description = "invalid_rule (naming the path or line and column), unknown_purpose, unknown_segment, segment_cycle, rule_data_not_permitted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<SegmentView>), ApiError> {
    let input: SegmentInput = body(&raw, Code::InvalidSegment)?;
    let Some(id) = input.id.clone() else {
        return Err(ApiError::new(Code::InvalidSegment, "`id` is required"));
    };
    p.may_act_for(&input.purpose)?;
    if segment(&s, &id).await?.is_some() {
        return Err(ApiError::new(
            Code::SegmentExists,
            format!("segment `{id}` exists; PUT /api/v1/segments/{id} changes it"),
        ));
    }
    let def = define(id, input)?;
    let engine = s.segments.clone();
    let (def, n) = blocking(move || engine.put(def)).await?;
    tracing::info!(segment = %def.id, members = n, "segment defined");
    Ok((StatusCode::CREATED, Json(view(&def, n))))
}

/// Change a segment's definition; members move at once.
#[utoipa::path(put, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id")),
    request_body = SegmentInput,
    security(("admin_key" = [])),
    responses((status = 200, body = SegmentView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Json<SegmentView>, ApiError> {
    let input: SegmentInput = body(&raw, Code::InvalidSegment)?;
    if input.id.as_ref().is_some_and(|i| *i != id) {
        return Err(ApiError::new(
            Code::InvalidSegment,
            "the body's `id` differs from the path's",
        ));
    }
    let Some((old, _)) = segment(&s, &id).await? else {
        return Err(not_found());
    };
    if !visible(&p, &old) {
        return Err(not_found());
    }
    p.may_act_for(&input.purpose)?;
    let def = define(id, input)?;
    let engine = s.segments.clone();
    let (def, n) = blocking(move || engine.put(def)).await?;
    Ok(Json(view(&def, n)))
}

/// Every segment with its count.
#[utoipa::path(get, path = "/api/v1/segments", tag = "segments",
    security(("admin_key" = [])),
    responses((status = 200, body = SegmentList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    p: Principal,
) -> Result<Json<SegmentList>, ApiError> {
    let all = engine(&s, |e| e.list()).await?;
    Ok(Json(SegmentList {
        segments: all
            .iter()
            .filter(|(d, _)| visible(&p, d))
            .map(|(d, n)| view(d, *n))
            .collect(),
    }))
}

/// One segment with its rule and count.
#[utoipa::path(get, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id")),
    security(("admin_key" = [])),
    responses((status = 200, body = SegmentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<SegmentView>, ApiError> {
    match segment(&s, &id).await? {
        Some((d, n)) if visible(&p, &d) => Ok(Json(view(&d, n))),
        _ => Err(not_found()),
    }
}

/// Delete a segment (refused while another segment names it).
#[utoipa::path(delete, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id")),
    security(("admin_key" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "segment_in_use")))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match segment(&s, &id).await? {
        Some((d, _)) if visible(&p, &d) => {}
        _ => return Err(not_found()),
    }
    let engine = s.segments.clone();
    if blocking(move || engine.delete(&id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// The members, in profile id order, a page at a time.
#[utoipa::path(get, path = "/api/v1/segments/{id}/members", tag = "segments",
    params(("id" = String, Path, description = "Segment id"), MembersQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = MemberPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn members(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<MembersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MemberPage>, ApiError> {
    let Query(q) =
        q.map_err(|_| ApiError::new(Code::InvalidQuery, "`limit` and `after` must be integers"))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(Code::InvalidQuery, "`limit` is 1 to 1000"));
    }
    match segment(&s, &id).await? {
        Some((d, _)) if visible(&p, &d) => {}
        _ => return Err(not_found()),
    }
    let engine = s.segments.clone();
    let purposes = p.grant.bound().then(|| p.grant.purposes.clone());
    let page =
        blocking(move || engine.members(&id, q.after.map(ProfileId), limit, purposes.as_deref()))
            .await?
            .ok_or_else(not_found)?;
    s.log_access(
        &p,
        "segment_members",
        page.members.iter().map(|m| m.0).collect(),
    )
    .await?;
    Ok(Json(MemberPage {
        members: page
            .members
            .into_iter()
            .map(|(profile_id, since)| Member {
                profile_id,
                since: rfc3339(since),
            })
            .collect(),
        next: page.next,
    }))
}

/// How many people a rule holds now, and a few of them, without saving it.
#[utoipa::path(post, path = "/api/v1/segments/preview", tag = "segments",
    request_body = PreviewInput,
    security(("admin_key" = [])),
    responses((status = 200, body = Preview), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn preview(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<Json<Preview>, ApiError> {
    let input: PreviewInput = body(&raw, Code::InvalidSegment)?;
    p.may_act_for(&input.purpose)?;
    let rule = parse_rule(input.rule, input.rule_text)?;
    let def = SegmentDef {
        id: "preview".into(),
        name: "preview".into(),
        purpose: purpose_of(&input.purpose)?,
        rule,
        created_ms: 0,
        updated_ms: 0,
    };
    let engine = s.segments.clone();
    let (count, sample) = blocking(move || engine.preview(&def, 10)).await?;
    s.log_access(&p, "segment_preview", sample.clone()).await?;
    Ok(Json(Preview { count, sample }))
}

/// The segments a person is in.
#[utoipa::path(get, path = "/api/v1/profiles/{id}/segments", tag = "segments",
    params(("id" = i64, Path, description = "Profile id")),
    security(("admin_key" = [])),
    responses((status = 200, body = ProfileSegments), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn of_profile(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
) -> Result<Json<ProfileSegments>, ApiError> {
    let id = crate::profiles::profile_id(&raw)?;
    let store = s.store.clone();
    let grant = p.grant.clone();
    let (current, _) = blocking(move || store.visible_kinds(&grant, id))
        .await?
        .ok_or_else(|| ApiError::new(Code::ProfileNotFound, "no profile matches"))?;
    let segments = engine(&s, move |e| e.of_profile(current))
        .await?
        .into_iter()
        .filter(|(_, purpose, _)| p.grant.serves(purpose.as_str()))
        .map(|(id, _, since)| Membership {
            id,
            since: rfc3339(since),
        })
        .collect();
    s.log_access(&p, "read", vec![current]).await?;
    Ok(Json(ProfileSegments {
        profile_id: current,
        segments,
    }))
}

/// People per lifecycle stage and the distribution of RFM scores.
#[utoipa::path(get, path = "/api/v1/lifecycle", tag = "segments",
    security(("admin_key" = [])),
    responses((status = 200, body = LifecycleOverview), (status = 401, body = ErrorBody)))]
pub async fn lifecycle(
    State(s): State<Arc<AppState>>,
    _p: Principal,
) -> Result<Json<LifecycleOverview>, ApiError> {
    let sum = engine(&s, |e| e.lifecycle_summary()).await?;
    Ok(Json(LifecycleOverview {
        stages: serde_json::to_value(&sum.stages).unwrap_or_default(),
        without_orders: sum.without_orders,
        scores: ScoreCounts {
            r: sum.r,
            f: sum.f,
            m: sum.m,
        },
        quintiles: serde_json::to_value(&sum.quintiles).unwrap_or_default(),
    }))
}

// ---------------------------------------------------------------- audiences

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AudienceInput {
    pub id: String,
    /// The segment whose members are the audience (its purpose applies).
    pub segment: String,
    /// The processor (ad platform) registered for the segment's purpose.
    #[schema(value_type = i64)]
    pub processor: tarmo_core::ids::ProcessorId,
    /// `meta_custom_audience` or `google_customer_match`.
    pub format: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncSummary {
    pub sync: i64,
    pub at: String,
    pub added: i64,
    pub removed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AudienceView {
    pub id: String,
    pub segment: String,
    #[schema(value_type = i64)]
    pub processor: tarmo_core::ids::ProcessorId,
    pub format: String,
    pub created_at: String,
    pub syncs: Vec<SyncSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AudienceList {
    pub audiences: Vec<AudienceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncResult {
    pub sync: i64,
    pub added: u64,
    pub removed: u64,
    /// Members left out, by reason: no_consent, withdrawn, missing_contact, ...
    #[schema(value_type = Object)]
    pub excluded: Value,
    /// The file was queued for the processor's webhook.
    pub pushed: bool,
}

fn audience_not_found() -> ApiError {
    ApiError::new(Code::AudienceNotFound, "no such audience")
}

async fn audience_view(
    s: &AppState,
    p: &Principal,
    def: audiences::AudienceDef,
) -> Result<Option<AudienceView>, ApiError> {
    match segment(s, &def.segment).await? {
        Some((seg, _)) if visible(p, &seg) => {}
        _ => return Ok(None),
    }
    let svc = s.svc.clone();
    let id = def.id.clone();
    let syncs = blocking(move || audiences::sync_history(&svc, &id)).await?;
    Ok(Some(AudienceView {
        id: def.id,
        segment: def.segment,
        processor: def.processor_id,
        format: def.format.as_str().into(),
        created_at: rfc3339(def.created_ms),
        syncs: syncs
            .into_iter()
            .map(|(n, at, added, removed)| SyncSummary {
                sync: n,
                at: rfc3339(at),
                added,
                removed,
            })
            .collect(),
    }))
}

/// Define an audience: a segment's members for an ad platform.
#[utoipa::path(post, path = "/api/v1/audiences", tag = "segments",
    request_body = AudienceInput,
    security(("admin_key" = [])),
    responses((status = 201, body = AudienceView), (status = 400, body = ErrorBody,
        description = "invalid_audience, invalid_audience_id, unknown_format, unknown_segment, unknown_processor, channel_not_covered"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "purpose_not_permitted"),
        (status = 409, body = ErrorBody)))]
pub async fn create_audience(
    State(s): State<Arc<AppState>>,
    p: Principal,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<AudienceView>), ApiError> {
    if raw.is_empty() {
        return Err(ApiError::new(
            Code::InvalidAudience,
            "a JSON body is needed: {\"id\", \"segment\", \"processor\", \"format\"}",
        ));
    }
    let input: AudienceInput = crate::body::json(
        &raw,
        Code::InvalidAudience,
        "{\"id\", \"segment\", \"processor\", \"format\"}",
    )?;
    let format =
        tarmo_core::segments::audience::AudienceFormat::parse(&input.format).ok_or_else(|| {
            ApiError::new(
                Code::UnknownFormat,
                "format is meta_custom_audience or google_customer_match",
            )
        })?;
    match segment(&s, &input.segment).await? {
        Some((seg, _)) if visible(&p, &seg) => p.may_act_for(seg.purpose.as_str())?,
        _ => {
            return Err(ApiError::new(
                Code::UnknownSegment,
                format!("no segment `{}`", input.segment),
            ));
        }
    }
    let def = audiences::AudienceDef {
        id: input.id,
        segment: input.segment,
        processor_id: input.processor,
        format,
        created_ms: now_ms(),
    };
    let engine = s.segments.clone();
    let saved = def.clone();
    blocking(move || engine.create_audience(saved)).await?;
    let view = audience_view(&s, &p, def)
        .await?
        .ok_or_else(audience_not_found)?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every audience with its syncs.
#[utoipa::path(get, path = "/api/v1/audiences", tag = "segments",
    security(("admin_key" = [])),
    responses((status = 200, body = AudienceList), (status = 401, body = ErrorBody)))]
pub async fn list_audiences(
    State(s): State<Arc<AppState>>,
    p: Principal,
) -> Result<Json<AudienceList>, ApiError> {
    let svc = s.svc.clone();
    let defs = blocking(move || audiences::all(&svc)).await?;
    let mut audiences = Vec::new();
    for d in defs {
        if let Some(v) = audience_view(&s, &p, d).await? {
            audiences.push(v);
        }
    }
    Ok(Json(AudienceList { audiences }))
}

async fn audience_of(s: &AppState, p: &Principal, id: &str) -> Result<AudienceView, ApiError> {
    let svc = s.svc.clone();
    let owned = id.to_owned();
    let def = blocking(move || audiences::find(&svc, &owned))
        .await?
        .ok_or_else(audience_not_found)?;
    audience_view(s, p, def)
        .await?
        .ok_or_else(audience_not_found)
}

/// One audience with its syncs.
#[utoipa::path(get, path = "/api/v1/audiences/{id}", tag = "segments",
    params(("id" = String, Path, description = "Audience id")),
    security(("admin_key" = [])),
    responses((status = 200, body = AudienceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_audience(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<AudienceView>, ApiError> {
    Ok(Json(audience_of(&s, &p, &id).await?))
}

/// Decide every member now and produce the platform file: additions of
/// people allowed now, removals of those who left, withdrew or were erased.
#[utoipa::path(post, path = "/api/v1/audiences/{id}/sync", tag = "segments",
    params(("id" = String, Path, description = "Audience id")),
    security(("admin_key" = [])),
    responses((status = 200, body = SyncResult), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sync_audience(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<SyncResult>, ApiError> {
    audience_of(&s, &p, &id).await?;
    let engine = s.segments.clone();
    let r = blocking(move || engine.sync_audience(&id))
        .await?
        .ok_or_else(audience_not_found)?;
    if r.pushed {
        s.notices_wake();
    }
    tracing::info!(
        sync = r.sync,
        added = r.added,
        removed = r.removed,
        pushed = r.pushed,
        "audience synced"
    );
    Ok(Json(SyncResult {
        sync: r.sync,
        added: r.added,
        removed: r.removed,
        excluded: serde_json::to_value(&r.excluded).unwrap_or_default(),
        pushed: r.pushed,
    }))
}

/// A sync's file for the platform (CSV: action and the hashed identifiers).
#[utoipa::path(get, path = "/api/v1/audiences/{id}/syncs/{n}/file", tag = "segments",
    params(("id" = String, Path, description = "Audience id"), ("n" = i64, Path, description = "Sync number")),
    security(("admin_key" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sync_file(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path((id, n)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let n: i64 =
        n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::new(Code::InvalidSync, "a sync number is a positive integer")
        })?;
    audience_of(&s, &p, &id).await?;
    let svc = s.svc.clone();
    let name = format!("{id}-{n}.csv");
    let file = blocking(move || audiences::sync_file(&svc, &id, n))
        .await?
        .ok_or_else(|| ApiError::new(Code::SyncNotFound, "no such sync"))?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        file,
    )
        .into_response())
}
