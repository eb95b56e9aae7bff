//! The console's search and customer 360: one person found by an exact
//! identifier, shown through the API's own handlers and store views (so
//! the key's roles and purposes decide what is visible, and each read is in
//! the access log), and a consent change support records on the person's
//! request.

use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::ProfileId;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tarmo_core::access::DataKind;
use tarmo_core::consent::PurposeId;

use super::{Staff, error_page, render, see_other};
use crate::{ApiError, AppState, blocking};

/// The identifier kinds the search tries, in this order, when none is
/// chosen: what an address or a number looks like first.
pub(super) fn search_kinds(s: &AppState) -> Vec<String> {
    let mut kinds: Vec<String> = ["email", "phone", "user_id"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    kinds.extend(
        s.identity
            .custom_kinds()
            .iter()
            .map(|k| k.as_str().to_owned()),
    );
    kinds
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    kind: String,
}

/// Find one person by an exact identifier. As the API's lookup, a kind of
/// data the session may not see cannot be searched by (an analyst cannot
/// learn whether an address belongs to a customer).
pub async fn search(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/profiles/lookup") {
        return *r;
    }
    let Ok(Query(q)) = q else {
        return error_page(
            Some(&staff),
            ApiError::new(Code::InvalidQuery, "`q` is the identifier to search for"),
        );
    };
    let value = q.q.trim().to_owned();
    let kinds = search_kinds(&s);
    let not_found = |msg: &str| {
        render(
            StatusCode::NOT_FOUND,
            Some(&staff),
            "home.html",
            "Tarmo console",
            context! { search => true, kinds => kinds.clone(), q => value.clone(), kind => q.kind.clone(), error => msg },
        )
    };
    if value.is_empty() || value.len() > 320 {
        return not_found(
            "Enter an email address, a phone number, a user id, a loyalty card or a social handle.",
        );
    }
    let tried: Vec<String> = if q.kind.is_empty() {
        kinds.clone()
    } else if kinds.contains(&q.kind) {
        vec![q.kind.clone()]
    } else {
        return not_found("Unknown kind of identifier.");
    };
    for kind in tried {
        let Ok(k) = s.identity.kind(&kind) else {
            continue;
        };
        // A value that is not an address, a number... of this kind is
        // simply not one: try the next kind.
        let Ok(id) = s.identity.identifier(k, &value) else {
            continue;
        };
        let needed = if matches!(kind.as_str(), "email" | "phone") {
            DataKind::Contact
        } else {
            DataKind::Identifiers
        };
        if !staff.p.grant.data.contains(&needed) {
            continue;
        }
        let store = s.store.clone();
        let grant = staff.p.grant.clone();
        let found = blocking(move || match store.find_profile(&id)? {
            Some(pid) => Ok(match store.visible_kinds(&grant, pid)? {
                Some((current, kinds)) if kinds.contains(&needed) => Some(current),
                _ => None,
            }),
            None => Ok(None),
        })
        .await;
        match found {
            Ok(Some(pid)) => return see_other(&format!("/console/people/{pid}")),
            Ok(None) => {}
            Err(e) => return error_page(Some(&staff), e),
        }
    }
    not_found("No one has that identifier (or your roles do not let you search by it).")
}

#[derive(Debug, Deserialize)]
pub struct CustomerQuery {
    /// Only events of this name (`event` of a track, `name` of a page).
    #[serde(default)]
    event: String,
    /// An event id: older events only (the next page).
    before: Option<i64>,
    /// What was just done, to say so.
    #[serde(default)]
    done: String,
}

/// Events on one timeline page.
const TIMELINE_PAGE: usize = 50;
/// The most events read to fill one filtered page: a rare event name
/// costs a few reads, never the whole history.
const FILTER_SCAN: usize = 5_000;

#[derive(Serialize)]
struct TimelineEvent {
    id: i64,
    kind: String,
    name: String,
    timestamp: String,
    properties: String,
}

#[derive(Serialize)]
struct LedgerRow {
    seq: i64,
    purpose: String,
    decision: String,
    method: String,
    at: String,
    source: String,
    notice_version: String,
    evidence: String,
    /// The one channel an entry is about; empty for the whole purpose.
    channel: String,
}

fn event_name(m: &Value) -> String {
    m.get("event")
        .or_else(|| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The customer 360.
pub async fn customer(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(raw): Path<String>,
    q: Result<Query<CustomerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/profiles/{id}") {
        return *r;
    }
    match customer_page(&staff, &s, &raw, q.ok().map(|Query(q)| q)).await {
        Ok(r) => r,
        Err(e) => error_page(Some(&staff), e),
    }
}

async fn customer_page(
    staff: &Staff,
    s: &Arc<AppState>,
    raw: &str,
    q: Option<CustomerQuery>,
) -> Result<Response, ApiError> {
    let q = q.ok_or_else(|| ApiError::new(Code::InvalidQuery, "`before` is an event id"))?;
    // The API's own handler: same view, same grant, same access log entry.
    let Json(view) =
        crate::profiles::get_profile(State(s.clone()), staff.p.clone(), Path(raw.to_owned()))
            .await?;
    let id = view.id;
    let event_filter = q.event.trim().to_owned();
    let (timeline, next_before) = timeline(staff, s, id, q.before, &event_filter).await?;

    let may_consents = staff.may(&Method::GET, "/api/v1/profiles/{id}/consents");
    let may_record = staff.may(&Method::POST, "/api/v1/consents");
    let may_requests = staff.may(&Method::GET, "/api/v1/requests");
    let catalog = s.catalog().await?;
    let (states, ledger, notices) = if may_consents {
        let Json(c) = crate::consent::profile_consents(
            State(s.clone()),
            staff.p.clone(),
            Path(id.to_string()),
        )
        .await?;
        let pairs: Vec<(PurposeId, String)> = c
            .ledger
            .iter()
            .filter(|e| !e.notice_version.is_empty())
            .map(|e| (e.purpose.clone(), e.notice_version.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let svc = s.svc.clone();
        let notices: Vec<Value> =
            blocking(move || tarmo_store::consent::notices_shown(&svc, pairs))
                .await?
                .into_iter()
                .map(|(purpose, version, lang, text)| {
                    json!({"purpose": purpose, "version": version, "lang": lang, "text": text})
                })
                .collect();
        let ledger: Vec<LedgerRow> = c
            .ledger
            .into_iter()
            .rev()
            .map(|e| LedgerRow {
                seq: e.seq,
                purpose: e.purpose.to_string(),
                decision: e.decision,
                method: e.method,
                at: e.at,
                source: e.source,
                notice_version: e.notice_version,
                channel: e.channel.unwrap_or_default(),
                evidence: if e.evidence.is_null() {
                    "(not visible to your roles)".into()
                } else {
                    e.evidence.to_string()
                },
            })
            .collect();
        let states: Vec<Value> = c
            .states
            .into_iter()
            .map(|st| {
                let basis = catalog
                    .get(st.purpose.as_str())
                    .and_then(|p| serde_json::to_value(p.spec.legal_basis).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                // Each channel the purpose reaches, and whether the person
                // switched it off while keeping the purpose.
                let channels: Vec<Value> = catalog
                    .get(st.purpose.as_str())
                    .map(|p| p.spec.channels.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| json!({"name": c.as_str(), "off": st.channels_off.contains(&c.as_str())}))
                    .collect();
                json!({"purpose": st.purpose, "decision": st.decision, "method": st.method,
                    "since": st.since, "allowed": st.allowed, "reason": st.reason, "basis": basis,
                    "channels": channels})
            })
            .collect();
        (states, ledger, notices)
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let purposes: Vec<Value> = catalog
        .entries()
        .into_iter()
        .filter(|p| !staff.p.grant.bound() || staff.p.grant.purposes.contains(&p.id.to_string()))
        .map(|p| json!({"id": p.id.to_string(), "name": p.spec.name}))
        .collect();
    let requests = if may_requests {
        let svc = s.svc.clone();
        blocking(move || tarmo_store::requests::of_profile(&svc, id)).await?
    } else {
        Vec::new()
    };
    let svc = s.svc.clone();
    let disclosures = blocking(move || tarmo_store::processors::disclosures(&svc, id)).await?;
    let traits: Vec<(String, String)> = view
        .traits
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                },
            )
        })
        .collect();
    let done = match q.done.as_str() {
        "consent" => Some("The consent change is recorded in the ledger."),
        _ => None,
    };
    Ok(render(
        StatusCode::OK,
        Some(staff),
        "customer.html",
        &format!("Customer {id}"),
        context! {
            profile => view,
            traits,
            timeline,
            next_before,
            event_filter,
            may_consents,
            may_record,
            may_requests,
            states,
            ledger,
            notices,
            purposes,
            channels => tarmo_core::consent::Channel::ALL.map(|c| c.as_str()),
            requests,
            disclosures,
            flash => done,
        },
    ))
}

/// One page of the timeline, newest first, optionally of one event name,
/// read through the grant-bound store view and logged as a read.
async fn timeline(
    staff: &Staff,
    s: &Arc<AppState>,
    id: ProfileId,
    before: Option<i64>,
    name: &str,
) -> Result<(Vec<TimelineEvent>, Option<i64>), ApiError> {
    let store = s.store.clone();
    let grant = staff.p.grant.clone();
    let name = name.to_owned();
    let (events, next, read_any) = blocking(move || {
        let mut out = Vec::new();
        let mut cursor = before;
        let mut scanned = 0;
        let mut read_any = false;
        loop {
            let batch = if name.is_empty() {
                TIMELINE_PAGE as u32
            } else {
                500
            };
            let Some(page) = store.events_page_for(&grant, id, cursor, batch)? else {
                return Ok((out, None, read_any));
            };
            read_any |= !page.events.is_empty();
            for e in page.events {
                scanned += 1;
                cursor = Some(e.id);
                let n = event_name(&e.message);
                if name.is_empty() || n == name {
                    let properties = e
                        .message
                        .get("properties")
                        .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
                        .map(Value::to_string)
                        .unwrap_or_default();
                    out.push(TimelineEvent {
                        id: e.id,
                        kind: e.kind,
                        name: n,
                        timestamp: e.timestamp,
                        properties,
                    });
                    if out.len() == TIMELINE_PAGE {
                        return Ok((out, page.next_before.and(cursor), read_any));
                    }
                }
            }
            match page.next_before {
                Some(_) if scanned < FILTER_SCAN => {}
                Some(_) => return Ok((out, cursor, read_any)),
                None => return Ok((out, None, read_any)),
            }
        }
    })
    .await?;
    if read_any {
        s.log_access(&staff.p, "read", vec![id]).await?;
    }
    Ok((events, next))
}

/// Record a consent change the person asked for by phone or at the desk:
/// method `staff`, with the reason in the sealed evidence, through the
/// API's own consent route.
pub async fn record_consent(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/consents") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let go = async {
        let id = crate::profiles::profile_id(&raw)?;
        let purpose = form.text("purpose", 100)?;
        let decision = form.text("decision", 40)?;
        let reason = form.text("reason", 500)?;
        // "" (the default choice) is the whole purpose.
        // The consent route checks the name (unknown_channel, channel_not_covered).
        let channel = form
            .get("channel")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.chars().take(40).collect::<String>());
        let mut input = json!({
            "subject": {"profile": id},
            "purpose": purpose,
            "decision": decision,
            "method": "staff",
            "source": "staff console",
            "evidence": {
                "reason": reason,
                "staff": staff.p.key.name,
                "key_id": staff.p.key.id,
            },
        });
        if let Some(c) = channel {
            input["channel"] = json!(c);
        }
        let body = Bytes::from(input.to_string());
        let Json(_) = crate::consent::record(State(s.clone()), staff.p.clone(), body).await?;
        Ok::<_, ApiError>(id)
    };
    match go.await {
        Ok(id) => see_other(&format!("/console/people/{id}?done=consent#consents")),
        Err(e) => error_page(Some(&staff), e),
    }
}
