//! The console's requests queue (data subject requests by deadline, with
//! verify / refuse / extend and the reason) and the access log ("who looked
//! at this person"), through the API's handlers.

use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use minijinja::context;
use serde::Deserialize;
use serde_json::json;

use super::{Staff, error_page, render, see_other};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub struct QueueQuery {
    /// `open` (the default: not completed or refused), or any request status.
    #[serde(default)]
    status: String,
    #[serde(default)]
    done: String,
}

/// The queue, overdue first, then soonest due.
pub async fn requests(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    q: Result<Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/requests") {
        return *r;
    }
    let q = q.map(|Query(q)| q).unwrap_or(QueueQuery {
        status: String::new(),
        done: String::new(),
    });
    let status = if q.status.is_empty() {
        "open"
    } else {
        q.status.as_str()
    };
    let go = async {
        let mut rows = Vec::new();
        let statuses: Vec<&str> = if status == "open" {
            vec!["received", "awaiting_verification", "in_progress"]
        } else {
            vec![status]
        };
        for st in statuses {
            let query = crate::requests::ListQuery {
                status: Some(st.to_owned()),
                kind: None,
                due_before: None,
                overdue: false,
                limit: Some(1000),
            };
            let Json(list) =
                crate::requests::list(State(s.clone()), staff.p.clone(), Ok(Query(query))).await?;
            rows.extend(list.requests);
        }
        // Overdue first; then by deadline (RFC 3339 in UTC sorts as time).
        rows.sort_by(|a, b| b.overdue.cmp(&a.overdue).then(a.due_at.cmp(&b.due_at)));
        Ok::<_, ApiError>(rows)
    };
    let rows = match go.await {
        Ok(r) => r,
        Err(e) => return error_page(Some(&staff), e),
    };
    let done = match q.done.as_str() {
        "verify" => Some("The request is verified and carried out."),
        "refuse" => Some("The request is refused; the reason is in its history."),
        "extend" => Some("The deadline is extended by two months."),
        _ => None,
    };
    let may_act = staff.may(&Method::POST, "/api/v1/requests/{id}/verify");
    render(
        StatusCode::OK,
        Some(&staff),
        "requests.html",
        "Requests",
        context! { requests => rows, status, may_act, flash => done,
        statuses => ["open", "received", "awaiting_verification", "in_progress", "completed", "refused"] },
    )
}

/// Verify, refuse or extend one request, with the reason.
pub async fn act(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path((raw, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let route = match action.as_str() {
        "verify" => "/api/v1/requests/{id}/verify",
        "refuse" => "/api/v1/requests/{id}/refuse",
        "extend" => "/api/v1/requests/{id}/extend",
        _ => {
            return error_page(
                Some(&staff),
                ApiError::new(Code::RouteNotFound, "no such action on a request"),
            );
        }
    };
    if let Err(r) = staff.require(&Method::POST, route) {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let go = async {
        let reason = form.text("reason", 2000)?;
        let body = Bytes::from(json!({ "reason": reason }).to_string());
        let (st, p, path) = (State(s.clone()), staff.p.clone(), Path(raw.clone()));
        let Json(_) = match action.as_str() {
            "verify" => crate::requests::verify(st, p, path, body).await?,
            "refuse" => crate::requests::refuse(st, p, path, body).await?,
            _ => crate::requests::extend(st, p, path, body).await?,
        };
        Ok::<_, ApiError>(())
    };
    match go.await {
        Ok(()) => see_other(&format!("/console/requests?done={action}")),
        Err(e) => error_page(Some(&staff), e),
    }
}

#[derive(Debug, Deserialize)]
pub struct AccessQuery {
    /// A profile id: who looked at this person.
    #[serde(default)]
    profile: String,
}

/// The access log, newest first; for one person when a profile is given.
pub async fn access_log(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    q: Result<Query<AccessQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/audit") {
        return *r;
    }
    let raw = q.map(|Query(q)| q.profile).unwrap_or_default();
    let raw = raw.trim().to_owned();
    let go = async {
        let profile = if raw.is_empty() {
            None
        } else {
            Some(crate::profiles::profile_id(&raw)?)
        };
        let query = crate::staff::AuditQuery {
            profile: profile.map(|v| v.0),
            limit: Some(200),
        };
        let Json(list) =
            crate::staff::audit(State(s.clone()), staff.p.clone(), Ok(Query(query))).await?;
        Ok::<_, ApiError>(list.records)
    };
    match go.await {
        Ok(records) => render(
            StatusCode::OK,
            Some(&staff),
            "access_log.html",
            "Access log",
            context! { records, profile => raw },
        ),
        Err(e) => error_page(Some(&staff), e),
    }
}
