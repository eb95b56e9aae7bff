//! Staff routes that are about access itself: logging in, the access log,
//! and aggregates for those who may see no person.

use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::{KeyId, ProfileId};

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use tarmo_store::access_log::AccessView;
use tarmo_store::staff;
use tarmo_store::{now_ms, rfc3339};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// A key with the account's roles and purposes; use it as a Bearer key.
    pub key: String,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    pub expires_at: String,
}

/// How long a login lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

/// Log in with a staff account: a key that expires in 12 hours and holds
/// the account's roles as they are at each request (a change of roles, or a
/// disabled account, bites on live sessions). Wrong names and wrong
/// passwords get the same answer, after the same work. Limited per address
/// (the /64 for IPv6) and per account.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "access",
    request_body = LoginInput,
    responses((status = 200, body = Session), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(s): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<Session>, ApiError> {
    let b: LoginInput = crate::body::json(&body, Code::InvalidLogin, "{\"name\", \"password\"}")?;
    if b.name.len() > 200 || b.password.len() > 1000 {
        return Err(ApiError::new(
            Code::InvalidLogin,
            "name or password too long",
        ));
    }
    s.limit_login_account(&b.name)?;
    let store = s.store.clone();
    // On the blocking pool, and Argon2 outside any transaction.
    let r = blocking(move || store.login(&b.name, &b.password, SESSION_TTL_MS)).await?;
    let Some((secret, key)) = r else {
        return Err(ApiError::unauthorized("wrong name or password"));
    };
    Ok(Json(Session {
        key: secret,
        roles: key.roles,
        purposes: key.purposes,
        expires_at: key.expires_ms.map(rfc3339).unwrap_or_default(),
    }))
}

/// Sign out: the session key this request carries stops working at once
/// (here at once, within a second on other nodes). Other keys are revoked
/// with `POST /api/v1/keys/{id}/revoke`, which also ends anyone's session.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "access", operation_id = "sign_out",
    security(("admin_key" = [])),
    responses((status = 204, description = "Signed out"), (status = 400, body = ErrorBody,
        description = "The key is not a session (`not_a_session`)"), (status = 401, body = ErrorBody)))]
pub async fn sign_out(
    State(s): State<Arc<AppState>>,
    p: Principal,
) -> Result<axum::http::StatusCode, ApiError> {
    // Only sessions: a service's long-lived key is not ended by a stray call.
    if p.key.user_id.is_none() {
        return Err(ApiError::new(
            Code::NotASession,
            "this key is not a login session; revoke keys with POST /api/v1/keys/{id}/revoke",
        ));
    }
    let store = s.store.clone();
    let id = p.key.id;
    blocking(move || store.revoke_api_key(id)).await?;
    s.keys_changed();
    tracing::info!(key_id = id.0, "signed out");
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Who looked at this person (a profile id); absent: the newest records.
    pub profile: Option<i64>,
    /// 1 to 1000; 100 when absent.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub records: Vec<AccessView>,
}

/// The access log: who read or exported whose data, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "access", params(AuditQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(Code::InvalidQuery, e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "`limit` must be 1 to 1000",
        ));
    }
    let (svc, access) = (s.svc.clone(), s.access.clone());
    let records = blocking(move || {
        // The reads just answered are in the journal; the log shows them.
        access.settle(std::time::Duration::from_secs(5));
        staff::audit(&svc, q.profile.map(ProfileId), limit)
    })
    .await?;
    Ok(Json(AuditList { records }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeCount {
    #[schema(value_type = String)]
    pub purpose: tarmo_core::consent::PurposeId,
    pub decision: String,
    pub people: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub profiles: i64,
    pub events: i64,
    pub identifiers: i64,
    /// People by their recorded decision, per purpose.
    pub consents: Vec<PurposeCount>,
}

/// Aggregates: counts, no person.
#[utoipa::path(get, path = "/api/v1/stats", tag = "access",
    security(("admin_key" = [])),
    responses((status = 200, body = Stats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn stats(State(s): State<Arc<AppState>>, _p: Principal) -> Result<Json<Stats>, ApiError> {
    let svc = s.svc.clone();
    let st = blocking(move || staff::stats(&svc)).await?;
    Ok(Json(Stats {
        profiles: st.profiles,
        events: st.events,
        identifiers: st.identifiers,
        consents: st
            .consents
            .into_iter()
            .map(|c| PurposeCount {
                purpose: c.purpose,
                decision: c.decision,
                people: c.people,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// Roles: admin, dpo, marketer, support, analyst, ingest, or configured ones.
    pub roles: Vec<String>,
    /// Purposes the key acts for (empty: not bound).
    #[serde(default)]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub name: String,
    /// The key stops working after this many hours.
    pub expires_in_hours: Option<u64>,
    /// Write keys only: `client` (the default; shipped in a web page or an
    /// app, its identifiers are claims) or `server` (a back end).
    #[schema(example = "server")]
    pub trust: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    /// The secret: shown once, stored only as a hash.
    pub key: String,
    #[schema(value_type = i64)]
    pub id: KeyId,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    /// A write key's trust level.
    pub trust: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<tarmo_store::keys::ApiKey>,
}

/// Make a key (its secret is in the answer, once).
#[utoipa::path(post, path = "/api/v1/keys", tag = "access", operation_id = "create_key",
    request_body = KeyInput,
    security(("admin_key" = [])),
    responses((status = 201, body = NewKey), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_key(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<NewKey>), ApiError> {
    let b: KeyInput = crate::body::json(
        &body,
        Code::InvalidKey,
        "{\"name\", \"roles\", \"purposes\"}",
    )?;
    if b.roles.is_empty() {
        return Err(ApiError::new(
            Code::InvalidRole,
            "a key needs at least one role",
        ));
    }
    for r in &b.roles {
        if !s.roles.0.contains_key(r) {
            return Err(ApiError::new(
                Code::InvalidRole,
                format!("unknown role `{r}`"),
            ));
        }
    }
    let trust =
        match b.trust.as_deref() {
            None => None,
            Some(t) => Some(tarmo_core::identity::Trust::parse(t).ok_or_else(|| {
                ApiError::new(Code::InvalidTrust, "trust is `client` or `server`")
            })?),
        };
    let catalog = s.catalog().await?;
    for p in &b.purposes {
        catalog.require(p)?;
    }
    let spec = tarmo_store::keys::KeySpec {
        trust,
        roles: b.roles.clone(),
        purposes: b.purposes.clone(),
        name: b.name.chars().take(200).collect(),
        user_id: None,
        expires_ms: b
            .expires_in_hours
            .map(|h| tarmo_store::keys::expiry(now_ms(), h))
            .transpose()?,
    };
    let store = s.store.clone();
    let (key, id) = blocking(move || store.create_api_key(&spec)).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(NewKey {
            key,
            id,
            trust: b
                .roles
                .iter()
                .all(|r| r == "ingest")
                .then(|| trust.unwrap_or_default().as_str().to_owned()),
            roles: b.roles,
            purposes: b.purposes,
        }),
    ))
}

/// Every key (never a secret).
#[utoipa::path(get, path = "/api/v1/keys", tag = "access", operation_id = "list_keys",
    security(("admin_key" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_keys(
    State(s): State<Arc<AppState>>,
    _p: Principal,
) -> Result<Json<KeyList>, ApiError> {
    let store = s.store.clone();
    Ok(Json(KeyList {
        keys: blocking(move || store.api_keys()).await?,
    }))
}

/// Revoke a key; it stops working on the next request.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "access", operation_id = "revoke_key",
    params(("id" = i64, Path, description = "Key id")),
    security(("admin_key" = [])),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    let id: KeyId = raw
        .parse()
        .map_err(|_| ApiError::new(Code::InvalidKeyId, "a key id is an integer"))?;
    let store = s.store.clone();
    if !blocking(move || store.revoke_api_key(id)).await? {
        return Err(ApiError::new(
            Code::KeyNotFound,
            "no active key with that id",
        ));
    }
    s.keys_changed();
    list_keys(State(s), _p).await
}
