//! The console's segments: the list with live counts, and a builder that
//! makes the JSON rule tree from form controls (no script: each press of
//! a button posts the whole form), counts it through the API's preview and
//! saves it through the API's create.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Form, Staff, error_page, render, see_other};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    saved: String,
}

/// Every segment the session may see, with its count.
pub async fn list(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/segments") {
        return *r;
    }
    let saved = q.map(|Query(q)| q.saved).unwrap_or_default();
    match crate::segments::list(State(s.clone()), staff.p.clone()).await {
        Ok(Json(l)) => render(
            StatusCode::OK,
            Some(&staff),
            "segments.html",
            "Segments",
            context! {
                segments => l.segments,
                may_build => staff.may(&Method::POST, "/api/v1/segments"),
                flash => (!saved.is_empty()).then(|| format!("Segment {saved} saved.")),
            },
        ),
        Err(e) => error_page(Some(&staff), e),
    }
}

/// One condition row of the builder, as the form holds it.
#[derive(Debug, Default, Clone, Serialize)]
struct Row {
    kind: String,
    name: String,
    op: String,
    value: String,
    within: String,
    negate: bool,
}

/// The most condition rows the builder shows.
const MAX_ROWS: usize = 12;

/// The condition kinds the builder offers, and what each row's fields mean.
const KINDS: [(&str, &str); 6] = [
    ("trait", "Trait"),
    ("event", "Event count"),
    ("consent", "Consent"),
    ("lifecycle", "Lifecycle stage"),
    ("identifier", "Has identifier"),
    ("segment", "In segment"),
];
const TRAIT_OPS: [&str; 9] = [
    "eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists", "in",
];
const COUNT_OPS: [&str; 5] = ["gte", "gt", "eq", "lte", "lt"];

fn rows_of(f: &Form) -> Vec<Row> {
    let n: usize = f
        .get("rows")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, MAX_ROWS);
    (0..n)
        .map(|i| Row {
            kind: f.get(&format!("kind_{i}")).unwrap_or("trait").to_owned(),
            name: f.get(&format!("name_{i}")).unwrap_or("").trim().to_owned(),
            op: f.get(&format!("op_{i}")).unwrap_or("eq").to_owned(),
            value: f.get(&format!("value_{i}")).unwrap_or("").trim().to_owned(),
            within: f
                .get(&format!("within_{i}"))
                .unwrap_or("")
                .trim()
                .to_owned(),
            negate: f.get(&format!("not_{i}")).is_some(),
        })
        .collect()
}

/// A value as typed: a number when it reads as one, else text.
fn typed(v: &str) -> Value {
    v.parse::<i64>()
        .map(Value::from)
        .or_else(|_| v.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::String(v.to_owned()))
}

/// The rule tree of the rows; the core's parser checks it (and names the
/// place at fault) when it is counted or saved.
fn rule_of(combine: &str, rows: &[Row]) -> Result<Value, ApiError> {
    let bad = |i: usize, m: &str| {
        ApiError::bad_request("invalid_segment", format!("condition {}: {m}", i + 1))
    };
    let mut conds = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.name.is_empty() && r.value.is_empty() {
            continue;
        }
        let c = match r.kind.as_str() {
            "trait" => {
                let mut m = Map::new();
                m.insert("trait".into(), json!(r.name));
                m.insert("op".into(), json!(r.op));
                if r.op == "in" {
                    let items: Vec<Value> = r.value.split(',').map(|v| typed(v.trim())).collect();
                    m.insert("value".into(), Value::Array(items));
                } else if r.op != "exists" {
                    m.insert("value".into(), typed(&r.value));
                }
                Value::Object(m)
            }
            "event" => {
                let n: f64 = r
                    .value
                    .parse()
                    .map_err(|_| bad(i, "the count is a number"))?;
                if !COUNT_OPS.contains(&r.op.as_str()) {
                    return Err(bad(i, "compare a count with gte, gt, eq, lte or lt"));
                }
                let mut count = Map::new();
                count.insert(r.op.clone(), json!(n));
                let within = if r.within.is_empty() {
                    "365d"
                } else {
                    &r.within
                };
                json!({"event": r.name, "within": within, "count": count})
            }
            "consent" => json!({"consent": r.name}),
            "lifecycle" => {
                json!({"lifecycle": if r.value.is_empty() { &r.name } else { &r.value }})
            }
            "identifier" => json!({"identifier": r.name}),
            "segment" => json!({"segment": r.name}),
            _ => return Err(bad(i, "unknown kind of condition")),
        };
        conds.push(if r.negate { json!({"not": c}) } else { c });
    }
    if conds.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_segment",
            "add at least one condition",
        ));
    }
    Ok(match combine {
        "any" => json!({"any": conds}),
        _ => json!({"all": conds}),
    })
}

fn purposes(staff: &Staff, catalog: &tarmo_store::consent::Catalog) -> Vec<Value> {
    catalog
        .entries()
        .into_iter()
        .filter(|p| !staff.p.grant.bound() || staff.p.grant.purposes.contains(&p.id.to_string()))
        .map(|p| json!({"id": p.id.to_string(), "name": p.spec.name}))
        .collect()
}

/// The empty builder.
pub async fn builder(staff: Staff, State(s): State<Arc<AppState>>) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/segments/preview") {
        return *r;
    }
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return error_page(Some(&staff), e),
    };
    let form = BuilderForm {
        id: String::new(),
        name: String::new(),
        purpose: String::new(),
        combine: "all".into(),
        rows: vec![Row {
            kind: "trait".into(),
            op: "eq".into(),
            ..Row::default()
        }],
    };
    show(&staff, &catalog, StatusCode::OK, &form, None, None, None)
}

struct BuilderForm {
    id: String,
    name: String,
    purpose: String,
    combine: String,
    rows: Vec<Row>,
}

#[allow(clippy::too_many_arguments)]
fn show(
    staff: &Staff,
    catalog: &tarmo_store::consent::Catalog,
    status: StatusCode,
    f: &BuilderForm,
    rule: Option<&Value>,
    count: Option<usize>,
    error: Option<String>,
) -> Response {
    render(
        status,
        Some(staff),
        "segment_builder.html",
        "Build a segment",
        context! {
            id => f.id, name => f.name, purpose => f.purpose, combine => f.combine,
            rows => f.rows, nrows => f.rows.len(),
            kinds => KINDS.iter().map(|(k, l)| json!({"id": k, "label": l})).collect::<Vec<_>>(),
            trait_ops => TRAIT_OPS, count_ops => COUNT_OPS,
            purposes => purposes(staff, catalog),
            rule => rule.map(|r| serde_json::to_string_pretty(r).unwrap_or_default()),
            count, error,
            may_save => staff.may(&Method::POST, "/api/v1/segments"),
        },
    )
}

/// A press of one of the builder's buttons: add a row, count, or save.
pub async fn build(staff: Staff, State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/segments/preview") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return error_page(Some(&staff), e),
    };
    let mut f = BuilderForm {
        id: form.get("id").unwrap_or("").trim().to_owned(),
        name: form.get("name").unwrap_or("").trim().to_owned(),
        purpose: form.get("purpose").unwrap_or("").to_owned(),
        combine: form.get("combine").unwrap_or("all").to_owned(),
        rows: rows_of(&form),
    };
    let action = form.get("action").unwrap_or("count");
    if action == "add" {
        if f.rows.len() < MAX_ROWS {
            f.rows.push(Row {
                kind: "trait".into(),
                op: "eq".into(),
                ..Row::default()
            });
        }
        return show(&staff, &catalog, StatusCode::OK, &f, None, None, None);
    }
    let rule = match rule_of(&f.combine, &f.rows) {
        Ok(r) => r,
        Err(e) => {
            return show(&staff, &catalog, e.status, &f, None, None, Some(e.message));
        }
    };
    // Counted by the API's preview: the same checks of the purpose's data
    // kinds, the same access log entry for the sample it reads.
    let preview = json!({"purpose": f.purpose, "rule": rule});
    let counted = crate::segments::preview(
        State(s.clone()),
        staff.p.clone(),
        Bytes::from(preview.to_string()),
    )
    .await;
    let count = match counted {
        Ok(Json(p)) => p.count,
        Err(e) => {
            return show(
                &staff,
                &catalog,
                e.status,
                &f,
                Some(&rule),
                None,
                Some(e.message),
            );
        }
    };
    if action != "save" {
        return show(
            &staff,
            &catalog,
            StatusCode::OK,
            &f,
            Some(&rule),
            Some(count),
            None,
        );
    }
    if let Err(r) = staff.require(&Method::POST, "/api/v1/segments") {
        return *r;
    }
    let input = json!({"id": f.id, "name": f.name, "purpose": f.purpose, "rule": rule});
    match crate::segments::create(
        State(s.clone()),
        staff.p.clone(),
        Bytes::from(input.to_string()),
    )
    .await
    {
        Ok(_) => see_other(&format!("/console/segments?saved={}", f.id)),
        Err(e) => show(
            &staff,
            &catalog,
            e.status,
            &f,
            Some(&rule),
            Some(count),
            Some(e.message),
        ),
    }
}
