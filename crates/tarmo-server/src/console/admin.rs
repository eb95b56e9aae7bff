//! The console's pages for automations and campaigns (counters, dry-run),
//! processors and the record of processing, and keys and users (admin),
//! each through the API handler it stands for; staff accounts (made, given
//! other roles, disabled) through the store's `staff` use cases, each one writer
//! transaction with its access-log record, with the same permission as keys (admin).

use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use minijinja::context;
use serde_json::{Value, json};

use super::{Staff, error_page, render};
use crate::{ApiError, AppState, blocking};

/// Automations and campaigns with their counters.
pub async fn automations(staff: Staff, State(s): State<Arc<AppState>>) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/automations") {
        return *r;
    }
    let go = async {
        let svc = s.svc.clone();
        let all = blocking(move || tarmo_store::automations::list_flows(&svc)).await?;
        let mut automations = Vec::new();
        let mut campaigns = Vec::new();
        for f in all {
            if !crate::automations::visible(&staff.p, &f) {
                continue;
            }
            let v = crate::automations::flow_view(&s, f).await?;
            if v.kind == "campaign" {
                campaigns.push(v);
            } else {
                automations.push(v);
            }
        }
        Ok::<_, ApiError>((automations, campaigns))
    };
    match go.await {
        Ok((automations, campaigns)) => render(
            StatusCode::OK,
            Some(&staff),
            "automations.html",
            "Automations and campaigns",
            context! {
                automations, campaigns,
                may_dry_run => staff.may(&Method::POST, "/api/v1/automations/{id}/dry-run"),
            },
        ),
        Err(e) => error_page(Some(&staff), e),
    }
}

/// Who an automation would send to now, and who not and why; sends nothing.
pub async fn dry_run(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/automations/{id}/dry-run") {
        return *r;
    }
    if let Err(r) = staff.form(&body) {
        return *r;
    }
    match crate::automations::dry_run(State(s.clone()), staff.p.clone(), Path(id.clone())).await {
        Ok(Json(d)) => render(
            StatusCode::OK,
            Some(&staff),
            "dry_run.html",
            &format!("Dry run of {id}"),
            context! { run => d, id },
        ),
        Err(e) => error_page(Some(&staff), e),
    }
}

/// Processors and the record of processing (Art. 30).
pub async fn processors(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/processors") {
        return *r;
    }
    let go = async {
        let Json(list) =
            crate::processors::list_processors(State(s.clone()), staff.p.clone()).await?;
        let record = if staff.may(&Method::GET, "/api/v1/records-of-processing") {
            let resp = crate::ropa::records_of_processing(
                State(s.clone()),
                headers,
                staff.p.clone(),
                Ok(Query(crate::ropa::RecordQuery {
                    format: Some("json".into()),
                })),
            )
            .await?;
            let bytes = axum::body::to_bytes(resp.into_body(), 4 * 1024 * 1024)
                .await
                .map_err(|_| ApiError::from(tarmo_store::Error::Busy("record too large".into())))?;
            Some(
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| ApiError::from(tarmo_store::Error::Corrupt(e.to_string())))?,
            )
        } else {
            None
        };
        Ok::<_, ApiError>((list.processors, record))
    };
    match go.await {
        Ok((processors, record)) => {
            let sections: Vec<Value> = record
                .as_ref()
                .map(|r| {
                    [
                        ("purposes", "Purposes"),
                        ("data_categories", "Categories of personal data"),
                        ("data_subject_categories", "Categories of data subjects"),
                        ("recipients", "Recipients"),
                        ("transfers", "Transfers outside the EEA"),
                        ("retention", "Retention"),
                    ]
                    .iter()
                    .map(|(k, title)| table(title, &r[*k]))
                    .collect()
                })
                .unwrap_or_default();
            render(
                StatusCode::OK,
                Some(&staff),
                "processors.html",
                "Processors and the record of processing",
                context! {
                    processors, sections,
                    controller => record.as_ref().map(|r| r["controller"].clone()),
                    measures => record.as_ref().map(|r| r["security_measures"].clone()),
                    generated_at => record.as_ref().map(|r| r["generated_at"].clone()),
                },
            )
        }
        Err(e) => error_page(Some(&staff), e),
    }
}

/// A list of flat objects as a table: the columns of its first row; a
/// nested value is written as text.
fn table(title: &str, rows: &Value) -> Value {
    let rows = rows.as_array().cloned().unwrap_or_default();
    let columns: Vec<String> = rows
        .first()
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| match &r[c] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    Value::Array(a) => a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    v => v.to_string(),
                })
                .collect()
        })
        .collect();
    json!({"title": title, "columns": columns.iter().map(|c| c.replace('_', " ")).collect::<Vec<_>>(), "rows": cells})
}

/// Keys (never a secret) and staff accounts.
pub async fn keys(staff: Staff, State(s): State<Arc<AppState>>) -> Response {
    keys_page(&staff, &s, StatusCode::OK, None, None).await
}

async fn keys_page(
    staff: &Staff,
    s: &Arc<AppState>,
    status: StatusCode,
    new_key: Option<Value>,
    flash: Option<String>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/keys") {
        return *r;
    }
    let go = async {
        let Json(list) = crate::staff::list_keys(State(s.clone()), staff.p.clone()).await?;
        let svc = s.svc.clone();
        let users = blocking(move || tarmo_store::staff::users(&svc)).await?;
        Ok::<_, ApiError>((list.keys, users))
    };
    match go.await {
        Ok((keys, users)) => {
            let mut roles: Vec<&String> = s.roles.0.keys().collect();
            roles.sort();
            let keys: Vec<Value> = keys
                .into_iter()
                .map(|k| {
                    json!({"id": k.id, "name": k.name, "roles": k.roles, "purposes": k.purposes,
                        "session": k.user_id.is_some(),
                        "created_at": tarmo_store::rfc3339(k.created_ms),
                        "revoked_at": k.revoked_ms.map(tarmo_store::rfc3339),
                        "expires_at": k.expires_ms.map(tarmo_store::rfc3339)})
                })
                .collect();
            render(
                status,
                Some(staff),
                "keys.html",
                "Keys and users",
                context! {
                    keys, users, roles, new_key, flash,
                    me => staff.p.key.user_id,
                    min_password => tarmo_store::keys::MIN_PASSWORD,
                },
            )
        }
        Err(e) => error_page(Some(staff), e),
    }
}

/// Make a key (its secret shown once) through the API's own route.
pub async fn create_key(staff: Staff, State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/keys") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let input = json!({
        "roles": [form.get("role").unwrap_or("")],
        "name": form.get("name").unwrap_or("").trim(),
    });
    match crate::staff::create_key(
        State(s.clone()),
        staff.p.clone(),
        Bytes::from(input.to_string()),
    )
    .await
    {
        Ok((_, Json(k))) => {
            let shown = json!({"id": k.id, "key": k.key, "roles": k.roles});
            keys_page(&staff, &s, StatusCode::CREATED, Some(shown), None).await
        }
        Err(e) => error_page(Some(&staff), e),
    }
}

/// Revoke a key; it stops working on its next request.
pub async fn revoke_key(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/keys/{id}/revoke") {
        return *r;
    }
    if let Err(r) = staff.form(&body) {
        return *r;
    }
    match crate::staff::revoke_key(State(s.clone()), staff.p.clone(), Path(id.clone())).await {
        Ok(_) => {
            keys_page(
                &staff,
                &s,
                StatusCode::OK,
                None,
                Some(format!("Key {id} revoked.")),
            )
            .await
        }
        Err(e) => error_page(Some(&staff), e),
    }
}

/// The roles a form names, each one of the known roles, at least one.
fn chosen_roles(s: &AppState, form: &super::Form) -> Result<Vec<String>, ApiError> {
    let roles = form.all("role");
    if roles.is_empty() {
        return Err(ApiError::new(Code::InvalidRole, "choose at least one role"));
    }
    for r in &roles {
        if !s.roles.0.contains_key(r) {
            return Err(ApiError::new(
                Code::InvalidRole,
                format!("unknown role `{r}`"),
            ));
        }
    }
    Ok(roles)
}

/// A staff account id from the path.
fn user_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(Code::InvalidUserId, "a user id is an integer"))
}

/// The access log record of a change to staff accounts (what `tarmo audit`
/// reads): who changed, through which route; never a password.
fn account_change(staff: &Staff) -> tarmo_store::access_log::AccessRecord {
    let mut r = staff.p.access("users", Vec::new());
    r.count = 1;
    r
}

/// Make a staff account (admin only, as keys are): the same rules as
/// `tarmo users create`, in one writer transaction with its audit record.
pub async fn create_user(staff: Staff, State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/keys") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let go = async {
        let name = form.text("name", 100)?;
        let roles = chosen_roles(&s, &form)?;
        // Not trimmed: a password is what was typed.
        let password = form.get("password").unwrap_or("").to_owned();
        let record = account_change(&staff);
        let (svc, n, r) = (s.svc.clone(), name.clone(), roles.clone());
        blocking(move || tarmo_store::staff::create_user(&svc, n, password, r, record)).await?;
        Ok::<_, ApiError>((name, roles))
    };
    match go.await {
        Ok((name, roles)) => {
            let flash = format!("Staff account {name} ({}) made.", roles.join(", "));
            keys_page(&staff, &s, StatusCode::CREATED, None, Some(flash)).await
        }
        Err(e) => error_page(Some(&staff), e),
    }
}

/// Give a staff account other roles; its live sessions follow at once.
pub async fn user_roles(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/keys") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let go = async {
        let id = user_id(&raw)?;
        let roles = chosen_roles(&s, &form)?;
        let record = account_change(&staff);
        let (svc, r) = (s.svc.clone(), roles.clone());
        // The account keeps the purposes it is bound to.
        let changed = blocking(move || tarmo_store::staff::set_roles(&svc, id, r, record)).await?;
        if !changed {
            return Err(ApiError::new(
                Code::UserNotFound,
                "no active staff account with that id",
            ));
        }
        s.keys_changed();
        Ok::<_, ApiError>((id, roles))
    };
    match go.await {
        Ok((id, roles)) => {
            let flash = format!("Staff account {id} now has roles {}.", roles.join(", "));
            keys_page(&staff, &s, StatusCode::OK, None, Some(flash)).await
        }
        Err(e) => error_page(Some(&staff), e),
    }
}

/// Disable a staff account; every session it holds ends at once. Not your
/// own.
pub async fn disable_user(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/keys") {
        return *r;
    }
    if let Err(r) = staff.form(&body) {
        return *r;
    }
    let go = async {
        let id = user_id(&raw)?;
        if staff.p.key.user_id == Some(id) {
            return Err(ApiError::new(
                Code::DisableSelf,
                "you cannot disable your own account; ask another admin",
            ));
        }
        let record = account_change(&staff);
        let svc = s.svc.clone();
        let disabled = blocking(move || tarmo_store::staff::disable_user(&svc, id, record)).await?;
        if !disabled {
            return Err(ApiError::new(
                Code::UserNotFound,
                "no active staff account with that id",
            ));
        }
        s.keys_changed();
        Ok::<_, ApiError>(id)
    };
    match go.await {
        Ok(id) => {
            let flash = format!("Staff account {id} disabled; its sessions have ended.");
            keys_page(&staff, &s, StatusCode::OK, None, Some(flash)).await
        }
        Err(e) => error_page(Some(&staff), e),
    }
}
