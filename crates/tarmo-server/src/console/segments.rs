//! The console's segments: the list with live counts, and a builder that
//! makes the JSON rule tree from form controls (each press of a button
//! posts the whole form; with script, each edit posts it to the live
//! count), counts it through the API's preview and saves it through the
//! API's create.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
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

/// One property filter of an event row (`where`).
#[derive(Debug, Default, Clone, Serialize)]
struct Filter {
    prop: String,
    op: String,
    value: String,
}

/// One RFM score's comparison in an RFM row; an empty value leaves the
/// score out.
#[derive(Debug, Default, Clone, Serialize)]
struct Score {
    key: &'static str,
    label: &'static str,
    op: String,
    value: String,
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
    /// Event rows: property filters (`where`), all of which an event meets.
    filters: Vec<Filter>,
    /// Event rows: `count`, or `sum` of the property `sum_prop`.
    measure: String,
    sum_prop: String,
    /// Consent rows: the one channel asked about; empty for the purpose.
    channel: String,
    /// RFM rows: the R, F and M comparisons.
    scores: Vec<Score>,
    /// The nested group the row belongs to (`a`, `b`, `c`); empty for the
    /// top level.
    group: String,
}

/// The most condition rows the builder shows.
const MAX_ROWS: usize = 12;
/// The most property filters one event row shows.
const MAX_FILTERS: usize = 4;
/// The nested groups a row may belong to.
const GROUPS: [(&str, &str); 3] = [("a", "Group A"), ("b", "Group B"), ("c", "Group C")];
const SCORES: [(&str, &str); 3] = [
    ("r", "Recency (R)"),
    ("f", "Frequency (F)"),
    ("m", "Monetary (M)"),
];
const SCORE_OPS: [&str; 5] = ["gte", "gt", "eq", "lte", "lt"];

/// The condition kinds the builder offers, and what each row's fields mean.
const KINDS: [(&str, &str); 9] = [
    ("trait", "Trait"),
    ("event", "Event (count or sum)"),
    ("consent", "Consent"),
    ("rfm", "RFM scores"),
    ("lifecycle", "Lifecycle stage"),
    ("birthday", "Birthday within"),
    ("in_stock", "Viewed product in stock at their store"),
    ("identifier", "Has identifier"),
    ("segment", "In segment"),
];
const TRAIT_OPS: [&str; 9] = [
    "eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists", "in",
];
const COUNT_OPS: [&str; 5] = ["gte", "gt", "eq", "lte", "lt"];
const FILTER_OPS: [&str; 8] = ["eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists"];

/// The form's fields of filter `j` of row `i`: the first keeps the names
/// the builder always had.
fn filter_names(i: usize, j: usize) -> [String; 3] {
    if j == 0 {
        [
            format!("wprop_{i}"),
            format!("wop_{i}"),
            format!("wvalue_{i}"),
        ]
    } else {
        [
            format!("wprop_{i}_{j}"),
            format!("wop_{i}_{j}"),
            format!("wvalue_{i}_{j}"),
        ]
    }
}

fn rows_of(f: &Form) -> Vec<Row> {
    let n: usize = f
        .get("rows")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, MAX_ROWS);
    let text = |k: String| f.get(&k).unwrap_or("").trim().to_owned();
    (0..n)
        .map(|i| {
            let nf: usize = f
                .get(&format!("filters_{i}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .clamp(1, MAX_FILTERS);
            Row {
                kind: f.get(&format!("kind_{i}")).unwrap_or("trait").to_owned(),
                name: text(format!("name_{i}")),
                op: f.get(&format!("op_{i}")).unwrap_or("eq").to_owned(),
                value: text(format!("value_{i}")),
                within: text(format!("within_{i}")),
                negate: f.get(&format!("not_{i}")).is_some(),
                filters: (0..nf)
                    .map(|j| {
                        let [p, o, v] = filter_names(i, j);
                        Filter {
                            prop: text(p),
                            op: f.get(&o).unwrap_or("eq").to_owned(),
                            value: text(v),
                        }
                    })
                    .collect(),
                measure: f.get(&format!("measure_{i}")).unwrap_or("count").to_owned(),
                sum_prop: text(format!("sumprop_{i}")),
                channel: text(format!("channel_{i}")),
                scores: SCORES
                    .iter()
                    .map(|&(key, label)| Score {
                        key,
                        label,
                        op: f.get(&format!("{key}op_{i}")).unwrap_or("gte").to_owned(),
                        value: text(format!("{key}_{i}")),
                    })
                    .collect(),
                group: f
                    .get(&format!("group_{i}"))
                    .filter(|g| GROUPS.iter().any(|(id, _)| id == g))
                    .unwrap_or("")
                    .to_owned(),
            }
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
fn rule_of(combine: &str, group_combine: &[String], rows: &[Row]) -> Result<Value, ApiError> {
    let bad = |i: usize, m: &str| {
        ApiError::bad_request("invalid_segment", format!("condition {}: {m}", i + 1))
    };
    let mut conds = Vec::new();
    let mut groups: Vec<Vec<Value>> = vec![Vec::new(); GROUPS.len()];
    for (i, r) in rows.iter().enumerate() {
        let scored = r.scores.iter().any(|s| !s.value.is_empty());
        if r.kind != "in_stock"
            && !(r.kind == "rfm" && scored)
            && r.name.is_empty()
            && r.value.is_empty()
        {
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
                // Checked as a number, kept as typed (500, not 500.0).
                let n = typed(&r.value);
                if !n.is_number() {
                    return Err(bad(i, "the count or sum is a number"));
                }
                if !COUNT_OPS.contains(&r.op.as_str()) {
                    return Err(bad(i, "compare with gte, gt, eq, lte or lt"));
                }
                let within = if r.within.is_empty() {
                    "365d"
                } else {
                    &r.within
                };
                let mut m = Map::new();
                m.insert("event".into(), json!(r.name));
                m.insert("within".into(), json!(within));
                let wheres: Vec<Value> = r
                    .filters
                    .iter()
                    .filter(|w| !w.prop.is_empty())
                    .map(|w| {
                        let mut o = Map::new();
                        o.insert("property".into(), json!(w.prop));
                        o.insert("op".into(), json!(w.op));
                        if w.op != "exists" {
                            o.insert("value".into(), typed(&w.value));
                        }
                        Value::Object(o)
                    })
                    .collect();
                if !wheres.is_empty() {
                    m.insert("where".into(), Value::Array(wheres));
                }
                let mut cmp = Map::new();
                if r.measure == "sum" {
                    if r.sum_prop.is_empty() {
                        return Err(bad(i, "name the property to sum, e.g. revenue"));
                    }
                    cmp.insert("property".into(), json!(r.sum_prop));
                    cmp.insert(r.op.clone(), n);
                    m.insert("sum".into(), Value::Object(cmp));
                } else {
                    cmp.insert(r.op.clone(), n);
                    m.insert("count".into(), Value::Object(cmp));
                }
                Value::Object(m)
            }
            "birthday" => {
                json!({"birthday_within": if r.value.is_empty() { &r.name } else { &r.value }})
            }
            "in_stock" => json!({"in_stock": {"product": "viewed", "store": "preferred"}}),
            "consent" if r.channel.is_empty() => json!({"consent": r.name}),
            "consent" => json!({"consent": r.name, "channel": r.channel}),
            "rfm" => {
                let mut o = Map::new();
                for sc in r.scores.iter().filter(|s| !s.value.is_empty()) {
                    let n = typed(&sc.value);
                    if !n.is_number() {
                        return Err(bad(i, "an RFM score is a number from 1 to 5"));
                    }
                    if !SCORE_OPS.contains(&sc.op.as_str()) {
                        return Err(bad(i, "compare a score with gte, gt, eq, lte or lt"));
                    }
                    let mut cmp = Map::new();
                    cmp.insert(sc.op.clone(), n);
                    o.insert(sc.key.into(), Value::Object(cmp));
                }
                if o.is_empty() {
                    return Err(bad(i, "give at least one of the R, F and M scores"));
                }
                json!({"rfm": Value::Object(o)})
            }
            "lifecycle" => {
                json!({"lifecycle": if r.value.is_empty() { &r.name } else { &r.value }})
            }
            "identifier" => json!({"identifier": r.name}),
            "segment" => json!({"segment": r.name}),
            _ => return Err(bad(i, "unknown kind of condition")),
        };
        let c = if r.negate { json!({"not": c}) } else { c };
        match GROUPS.iter().position(|(g, _)| *g == r.group) {
            Some(g) => groups[g].push(c),
            None => conds.push(c),
        }
    }
    for (g, inner) in groups.into_iter().enumerate() {
        if inner.is_empty() {
            continue;
        }
        conds.push(match group_combine.get(g).map(String::as_str) {
            Some("all") => json!({"all": inner}),
            _ => json!({"any": inner}),
        });
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
        group_combine: vec!["any".into(); GROUPS.len()],
        rows: vec![new_row()],
    };
    show(&staff, &catalog, StatusCode::OK, &form, None, None, None)
}

struct BuilderForm {
    id: String,
    name: String,
    purpose: String,
    combine: String,
    /// Per nested group (in [`GROUPS`] order): `any` or `all`.
    group_combine: Vec<String>,
    rows: Vec<Row>,
}

fn new_filter() -> Filter {
    Filter {
        op: "eq".into(),
        ..Filter::default()
    }
}

fn new_row() -> Row {
    Row {
        kind: "trait".into(),
        op: "eq".into(),
        filters: vec![new_filter()],
        measure: "count".into(),
        scores: SCORES
            .iter()
            .map(|&(key, label)| Score {
                key,
                label,
                op: "gte".into(),
                value: String::new(),
            })
            .collect(),
        ..Row::default()
    }
}

fn form_of(form: &Form) -> BuilderForm {
    BuilderForm {
        id: form.get("id").unwrap_or("").trim().to_owned(),
        name: form.get("name").unwrap_or("").trim().to_owned(),
        purpose: form.get("purpose").unwrap_or("").to_owned(),
        combine: form.get("combine").unwrap_or("all").to_owned(),
        group_combine: GROUPS
            .iter()
            .map(|(g, _)| {
                form.get(&format!("combine_{g}"))
                    .unwrap_or("any")
                    .to_owned()
            })
            .collect(),
        rows: rows_of(form),
    }
}

/// The form's rule tree and its count, by the API's preview: the same
/// checks of the purpose's data kinds, the same access log entry for the
/// sample it reads. The rule comes back even when counting fails.
async fn count_of(
    s: &Arc<AppState>,
    staff: &Staff,
    f: &BuilderForm,
) -> Result<(Value, usize), (Option<Value>, ApiError)> {
    let rule = rule_of(&f.combine, &f.group_combine, &f.rows).map_err(|e| (None, e))?;
    let preview = json!({"purpose": f.purpose, "rule": rule});
    match crate::segments::preview(
        State(s.clone()),
        staff.p.clone(),
        Bytes::from(preview.to_string()),
    )
    .await
    {
        Ok(Json(p)) => Ok((rule, p.count)),
        Err(e) => Err((Some(rule), e)),
    }
}

/// The live count: the builder's form, posted by its script as one edits
/// (same permission and CSRF check as Count); the count and rule as JSON.
pub async fn live_count(staff: Staff, State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    if let Err(r) = staff.require(&Method::POST, "/api/v1/segments/preview") {
        return *r;
    }
    let form = match staff.form(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut r = match count_of(&s, &staff, &form_of(&form)).await {
        Ok((rule, count)) => Json(json!({"count": count, "rule": rule})).into_response(),
        Err((rule, e)) => (
            e.status,
            Json(json!({"error": e.message, "code": e.code, "rule": rule})),
        )
            .into_response(),
    };
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
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
            groups => GROUPS.iter().zip(&f.group_combine)
                .map(|((g, l), c)| json!({"id": g, "label": l, "combine": c}))
                .collect::<Vec<_>>(),
            filter_ops => FILTER_OPS, score_ops => SCORE_OPS, max_filters => MAX_FILTERS,
            channels => tarmo_core::consent::Channel::ALL.map(|c| c.as_str()),
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
    let mut f = form_of(&form);
    let action = form.get("action").unwrap_or("count");
    if action == "add" {
        if f.rows.len() < MAX_ROWS {
            f.rows.push(new_row());
        }
        return show(&staff, &catalog, StatusCode::OK, &f, None, None, None);
    }
    // "filter_3": one more property filter on condition 4.
    if let Some(i) = action
        .strip_prefix("filter_")
        .and_then(|i| i.parse::<usize>().ok())
    {
        if let Some(r) = f.rows.get_mut(i)
            && r.filters.len() < MAX_FILTERS
        {
            r.filters.push(new_filter());
        }
        return show(&staff, &catalog, StatusCode::OK, &f, None, None, None);
    }
    let (rule, count) = match count_of(&s, &staff, &f).await {
        Ok(rc) => rc,
        Err((rule, e)) => {
            return show(
                &staff,
                &catalog,
                e.status,
                &f,
                rule.as_ref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, name: &str, value: &str) -> Row {
        Row {
            kind: kind.into(),
            name: name.into(),
            value: value.into(),
            ..new_row()
        }
    }

    #[test]
    fn the_rows_make_a_tree_the_core_accepts_with_one_nested_group() {
        let mut viewed = row("event", "Product Viewed", "1");
        viewed.op = "gte".into();
        viewed.within = "2d".into();
        viewed.filters = vec![Filter {
            prop: "category".into(),
            op: "eq".into(),
            value: "shoes".into(),
        }];
        let mut stock = row("in_stock", "", "");
        stock.group = "a".into();
        let mut birthday = row("birthday", "", "7d");
        birthday.group = "a".into();
        let rows = [viewed, row("lifecycle", "", "at_risk"), stock, birthday];
        let rule = rule_of("all", &["any".to_owned()], &rows).unwrap();
        assert_eq!(
            rule,
            json!({"all": [
                {"event": "Product Viewed", "within": "2d",
                 "where": [{"property": "category", "op": "eq", "value": "shoes"}],
                 "count": {"gte": 1}},
                {"lifecycle": "at_risk"},
                {"any": [
                    {"in_stock": {"product": "viewed", "store": "preferred"}},
                    {"birthday_within": "7d"}]}]})
        );
        tarmo_core::segments::Rule::from_json(&rule).unwrap();
    }

    #[test]
    fn a_sum_needs_its_property() {
        let mut r = row("event", "Order Completed", "500");
        r.op = "gt".into();
        r.measure = "sum".into();
        assert!(rule_of("all", &[], &[r]).is_err());
    }

    #[test]
    fn rfm_a_consent_channel_several_filters_and_groups_make_a_tree_the_core_accepts() {
        let mut rfm = row("rfm", "", "");
        rfm.scores[0].value = "4".into();
        rfm.scores[2].op = "lte".into();
        rfm.scores[2].value = "2".into();
        let mut consent = row("consent", "email_marketing", "");
        consent.channel = "email".into();
        let mut viewed = row("event", "Product Viewed", "2");
        viewed.op = "gte".into();
        viewed.within = "30d".into();
        viewed.filters = vec![
            Filter {
                prop: "category".into(),
                op: "eq".into(),
                value: "shoes".into(),
            },
            Filter {
                prop: "price".into(),
                op: "gte".into(),
                value: "50".into(),
            },
            new_filter(),
        ];
        viewed.group = "a".into();
        let mut lapsed = row("lifecycle", "", "lapsed");
        lapsed.group = "a".into();
        let mut birthday = row("birthday", "", "7d");
        birthday.group = "b".into();
        let mut loyal = row("lifecycle", "", "loyal");
        loyal.group = "b".into();
        let rows = [rfm, consent, viewed, lapsed, birthday, loyal];
        let rule = rule_of("all", &["any".to_owned(), "all".to_owned()], &rows).unwrap();
        assert_eq!(
            rule,
            json!({"all": [
                {"rfm": {"r": {"gte": 4}, "m": {"lte": 2}}},
                {"consent": "email_marketing", "channel": "email"},
                {"any": [
                    {"event": "Product Viewed", "within": "30d",
                     "where": [{"property": "category", "op": "eq", "value": "shoes"},
                               {"property": "price", "op": "gte", "value": 50}],
                     "count": {"gte": 2}},
                    {"lifecycle": "lapsed"}]},
                {"all": [{"birthday_within": "7d"}, {"lifecycle": "loyal"}]}]})
        );
        tarmo_core::segments::Rule::from_json(&rule).unwrap();
        // An RFM row with no score, or a score that is not a number, is refused.
        assert!(rule_of("all", &[], &[row("rfm", "x", "")]).is_err());
        let mut bad = row("rfm", "", "");
        bad.scores[1].value = "high".into();
        assert!(rule_of("all", &[], &[bad]).is_err());
    }
}
