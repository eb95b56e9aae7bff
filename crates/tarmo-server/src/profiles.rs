//! The staff read API: one profile by any identifier or id, and its events.

use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::ProfileId;

use axum::extract::{Path, Query, State};
use serde::Deserialize;
use tarmo_core::access::DataKind;
use tarmo_store::{EventsPage, ProfileView};
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// Identifier type: user_id, email, phone, anonymous_id, device_id, or a configured custom type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The identifier, in any form that normalises to the stored one.
    pub value: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// 1 to 1000; 50 when absent.
    pub limit: Option<u32>,
    /// An event id: only older events are returned (from `next_before`).
    pub before: Option<i64>,
}

fn not_found() -> ApiError {
    ApiError::new(Code::ProfileNotFound, "no profile matches")
}

pub(crate) fn profile_id(raw: &str) -> Result<ProfileId, ApiError> {
    raw.parse::<ProfileId>()
        .ok()
        .filter(|v| v.0 > 0)
        .ok_or_else(|| ApiError::new(Code::InvalidProfileId, "a profile id is a positive integer"))
}

/// Find a profile by any identifier.
#[utoipa::path(get, path = "/api/v1/profiles/lookup", tag = "profiles", params(LookupQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = ProfileView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn lookup(
    State(s): State<Arc<AppState>>,
    p: Principal,
    q: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<ProfileView>, ApiError> {
    let Query(q) =
        q.map_err(|_| ApiError::new(Code::InvalidQuery, "`type` and `value` are required"))?;
    let kind = s
        .identity
        .kind(&q.kind)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let id = s
        .identity
        .identifier(kind, &q.value)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    // Looking a person up by an identifier the key may not see would tell
    // it that the person exists: such a lookup finds nobody.
    let needed = if matches!(id.kind().as_str(), "email" | "phone") {
        DataKind::Contact
    } else {
        DataKind::Identifiers
    };
    if !p.grant.data.contains(&needed) {
        return Err(not_found());
    }
    let store = s.store.clone();
    let grant = p.grant.clone();
    // The same holds for the kinds a purpose-bound key sees of this person:
    // a purpose that does not use contact data does not find people by
    // their address.
    let view = blocking(move || match store.find_profile(&id)? {
        Some(pid) => match store.visible_kinds(&grant, pid)? {
            Some((_, kinds)) if kinds.contains(&needed) => store.profile_view_for(&grant, pid),
            _ => Ok(None),
        },
        None => Ok(None),
    })
    .await?
    .ok_or_else(not_found)?;
    let view = with_segments(&s, &p, view).await?;
    s.log_access(&p, "read", vec![view.id]).await?;
    Ok(axum::Json(view))
}

/// Add what the segment engine knows: the person's segments (of the key's
/// purposes, for a bound key) and, where the key sees behaviour, their
/// lifecycle stage and scores.
async fn with_segments(
    s: &AppState,
    p: &Principal,
    mut view: ProfileView,
) -> Result<ProfileView, ApiError> {
    let id = view.id;
    let (segments, lifecycle) =
        crate::segments::engine(s, move |e| (e.of_profile(id), e.lifecycle_of(id))).await?;
    view.segments = segments
        .into_iter()
        .filter(|(_, purpose, _)| p.grant.serves(purpose.as_str()))
        .map(|(id, _, since)| tarmo_store::MembershipView {
            id,
            since: tarmo_store::rfc3339(since),
        })
        .collect();
    // A bound key sees behaviour only where its purposes allow; the view's
    // event count is zeroed then, and so is this.
    let behaviour =
        p.grant.data.contains(&DataKind::Behaviour) && (!p.grant.bound() || view.event_count > 0);
    if behaviour && let Some(l) = lifecycle {
        view.lifecycle = Some(tarmo_store::LifecycleView {
            stage: l.stage.map(|x| x.as_str().to_owned()),
            r: l.rfm.map(|x| x.r),
            f: l.rfm.map(|x| x.f),
            m: l.rfm.map(|x| x.m),
            orders: l.orders,
            revenue: l.revenue,
            last_order_at: l.last_order_ms.map(tarmo_store::rfc3339),
        });
    }
    Ok(view)
}

/// A profile by id (a merged profile's id leads to the profile it joined).
#[utoipa::path(get, path = "/api/v1/profiles/{id}", tag = "profiles",
    params(("id" = i64, Path, description = "Profile id")),
    security(("admin_key" = [])),
    responses((status = 200, body = ProfileView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_profile(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
) -> Result<axum::Json<ProfileView>, ApiError> {
    let id = profile_id(&raw)?;
    let store = s.store.clone();
    let grant = p.grant.clone();
    let view = blocking(move || store.profile_view_for(&grant, id))
        .await?
        .ok_or_else(not_found)?;
    let view = with_segments(&s, &p, view).await?;
    s.log_access(&p, "read", vec![view.id]).await?;
    Ok(axum::Json(view))
}

/// A profile's events, newest first.
#[utoipa::path(get, path = "/api/v1/profiles/{id}/events", tag = "profiles",
    params(("id" = i64, Path, description = "Profile id"), EventsQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<EventsPage>, ApiError> {
    let id = profile_id(&raw)?;
    let Query(q) =
        q.map_err(|_| ApiError::new(Code::InvalidQuery, "`limit` and `before` must be integers"))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "`limit` must be 1 to 1000",
        ));
    }
    let store = s.store.clone();
    let grant = p.grant.clone();
    let page = blocking(move || store.events_page_for(&grant, id, q.before, limit))
        .await?
        .ok_or_else(not_found)?;
    if !page.events.is_empty() {
        s.log_access(&p, "read", vec![page.profile_id]).await?;
    }
    Ok(axum::Json(page))
}
