//! The consent dashboard: opt-in rate per purpose over time, grants and
//! withdrawals per day by method, pending confirmations and consents about
//! to expire — read from the daily aggregates the ledger's writes keep
//! current (`tarmo_store::dashboard`), drawn as SVG on the server. Counts
//! only, never a person, so it opens to whoever may read the API's stats.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use minijinja::{Value as Tpl, context};
use serde_json::json;
use tarmo_store::dashboard::{self, Dashboard};

use super::{Staff, error_page, render};
use crate::{AppState, blocking};

/// Days the charts cover.
const DAYS: i64 = 90;
/// How far ahead "expiring" looks.
const EXPIRY_WINDOW_MS: i64 = 30 * 86_400_000;
/// Colours with at least 3:1 contrast on white (WCAG 1.4.11).
const PALETTE: [&str; 8] = [
    "#0b5cad", "#a3161b", "#1f6b34", "#7a4b00", "#6a1b9a", "#00695c", "#37474f", "#ad1457",
];
const GRANTS: [&str; 1] = ["granted"];
const WITHDRAWALS: [&str; 4] = ["withdrawn", "denied", "objected", "expired"];

pub async fn page(staff: Staff, State(s): State<Arc<AppState>>) -> Response {
    if let Err(r) = staff.require(&Method::GET, "/api/v1/stats") {
        return *r;
    }
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return error_page(Some(&staff), e),
    };
    let lifetimes: Vec<(String, u32)> = catalog
        .entries()
        .into_iter()
        .filter_map(|p| p.spec.consent_lifetime_days.map(|d| (p.id.to_string(), d)))
        .collect();
    let svc = s.svc.clone();
    let read = blocking(move || dashboard::read(&svc, DAYS, lifetimes, EXPIRY_WINDOW_MS)).await;
    let (d, expiring) = match read {
        Ok(r) => r,
        Err(e) => return error_page(Some(&staff), e),
    };
    let expiring: Vec<(String, u32, i64)> = expiring
        .into_iter()
        .map(|e| (e.purpose, e.lifetime_days, e.people))
        .collect();
    let pending: Vec<(String, i64)> = d
        .now
        .iter()
        .map(|(p, m)| {
            (
                p.clone(),
                m.get("pending_confirmation").copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let current: Vec<serde_json::Value> = d
        .now
        .iter()
        .map(|(p, m)| {
            let total: i64 = m.values().sum();
            let granted = m.get("granted").copied().unwrap_or(0);
            json!({"purpose": p, "granted": granted, "total": total,
                "rate": if total > 0 { format!("{:.1} %", 100.0 * granted as f64 / total as f64) } else { "–".into() }})
        })
        .collect();
    render(
        StatusCode::OK,
        Some(&staff),
        "dashboard.html",
        "Consent dashboard",
        context! {
            rate_chart => Tpl::from_safe_string(rate_chart(&d)),
            grants_chart => Tpl::from_safe_string(flow_chart(&d, &GRANTS, "grants-title", "Grants per day by method")),
            withdrawals_chart => Tpl::from_safe_string(flow_chart(&d, &WITHDRAWALS, "withdrawals-title", "Withdrawals, denials, objections and expiries per day by method")),
            current, pending, expiring,
            days => DAYS,
        },
    )
}

const W: f64 = 720.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

fn date(day: i64) -> String {
    tarmo_store::rfc3339(day * 86_400_000)[..10].to_owned()
}

fn frame(out: &mut String, id: &str, title: &str, d: &Dashboard, max: f64, unit: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{id}"><title id="{id}">{title}</title>"#
    );
    let plot_h = H - BOTTOM - TOP;
    for i in 0..=4 {
        let y = TOP + plot_h * f64::from(i) / 4.0;
        let v = max * f64::from(4 - i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{W}" y1="{y:.1}" y2="{y:.1}" stroke="#c9ced6" stroke-width="1"/><text x="{x:.1}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#1b1f24">{v:.0}{unit}</text>"##,
            x = LEFT - 4.0,
            ty = y + 4.0,
        );
    }
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{y}" font-size="11" fill="#1b1f24">{a}</text><text x="{W}" y="{y}" font-size="11" text-anchor="end" fill="#1b1f24">{b}</text>"##,
        y = H - 6.0,
        a = date(d.first_day),
        b = date(d.last_day),
    );
}

fn x_of(d: &Dashboard, day: i64) -> f64 {
    let span = (d.last_day - d.first_day).max(1) as f64;
    LEFT + (W - LEFT - 4.0) * (day - d.first_day) as f64 / span
}

fn legend(out: &mut String, names: &[String]) {
    out.push_str(r#"<ul class="legend">"#);
    for (i, n) in names.iter().enumerate() {
        let _ = write!(
            out,
            r#"<li><span class="swatch" data-c="{i}" aria-hidden="true"></span>{}</li>"#,
            n.replace('_', " ")
        );
    }
    out.push_str("</ul>");
}

/// Opt-in rate (granted / anyone with a decision) per purpose, a line each.
fn rate_chart(d: &Dashboard) -> String {
    let mut out = String::new();
    frame(
        &mut out,
        "rate-title",
        "Opt-in rate per purpose, per day",
        d,
        100.0,
        " %",
    );
    let plot_h = H - BOTTOM - TOP;
    let names: Vec<String> = d.rates.keys().cloned().collect();
    for (i, (_, points)) in d.rates.iter().enumerate() {
        // Days before anyone had a decision draw nothing, not a 0 % rate.
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.total > 0)
            .map(|p| {
                let rate = if p.total > 0 {
                    p.granted as f64 / p.total as f64
                } else {
                    0.0
                };
                format!("{:.1},{:.1}", x_of(d, p.day), TOP + plot_h * (1.0 - rate))
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            PALETTE[i % PALETTE.len()],
            pts.join(" ")
        );
    }
    out.push_str("</svg>");
    legend(&mut out, &names);
    out
}

/// Entries of the given decisions per day, stacked by method.
fn flow_chart(d: &Dashboard, decisions: &[&str], id: &str, title: &str) -> String {
    let mut methods: Vec<String> = d
        .entries
        .iter()
        .filter(|e| decisions.contains(&e.decision.as_str()))
        .map(|e| e.method.clone())
        .collect();
    methods.sort();
    methods.dedup();
    let days = (d.last_day - d.first_day + 1) as usize;
    let mut stacks = vec![vec![0i64; methods.len()]; days];
    for e in &d.entries {
        if !decisions.contains(&e.decision.as_str()) || e.day < d.first_day || e.day > d.last_day {
            continue;
        }
        if let Some(m) = methods.iter().position(|m| *m == e.method) {
            stacks[(e.day - d.first_day) as usize][m] += e.n;
        }
    }
    let max = stacks
        .iter()
        .map(|s| s.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(4) as f64;
    let mut out = String::new();
    frame(&mut out, id, title, d, max, "");
    let plot_h = H - BOTTOM - TOP;
    let bar = ((W - LEFT - 4.0) / days as f64 - 1.0).max(1.0);
    for (i, s) in stacks.iter().enumerate() {
        let x = x_of(d, d.first_day + i as i64) - bar / 2.0;
        let mut y = TOP + plot_h;
        for (m, n) in s.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let h = plot_h * *n as f64 / max;
            y -= h;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}" fill="{}"/>"#,
                PALETTE[m % PALETTE.len()]
            );
        }
    }
    out.push_str("</svg>");
    legend(&mut out, &methods);
    out
}
