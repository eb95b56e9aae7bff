//! The record of processing activities (GDPR Art. 30(1)), built from what
//! Tarmo knows: the controller from the configuration, the purposes and
//! their legal bases, categories and retention from the catalog, the
//! recipients and transfers from the register of processors, and the
//! security measures Tarmo itself applies. As JSON, or as a page to print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tarmo_core::consent::{Channel, LegalBasis, PurposeId};
use tarmo_store::processors::{self as register, ProcessorView};
use tarmo_store::{now_ms, rfc3339};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::pages::esc;
use crate::{ApiError, AppState, ErrorBody, blocking};

#[derive(Debug, Serialize, ToSchema)]
pub struct Controller {
    pub name: String,
    pub contact: Option<String>,
    /// The data protection officer, where one is designated.
    pub dpo_contact: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeRecord {
    pub id: String,
    pub name: String,
    pub legal_basis: &'static str,
    /// Where the GDPR sets the basis out: "Art. 6(1)(a)".
    pub legal_basis_article: &'static str,
    /// The balancing test of a legitimate interest.
    pub balancing_note: Option<String>,
    pub data_categories: Vec<String>,
    /// Special categories (Art. 9) among them, processed only on explicit
    /// consent (Art. 9(2)(a)).
    pub special_categories: Vec<String>,
    pub channels: Vec<&'static str>,
    pub retention_days: u32,
    pub consent_lifetime_days: Option<u32>,
    /// Processors registered to receive data for this purpose.
    pub recipients: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryRecord {
    pub name: String,
    /// A special category of personal data (Art. 9(1)).
    pub special: bool,
    #[schema(value_type = Vec<String>)]
    pub purposes: Vec<PurposeId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectCategory {
    pub name: String,
    /// The purposes it was derived from; empty when configured.
    #[schema(value_type = Vec<String>)]
    pub purposes: Vec<PurposeId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recipient {
    pub name: String,
    pub role: String,
    pub country: String,
    pub in_eea: bool,
    pub dpa_reference: String,
    pub dpa_signed_on: String,
    #[schema(value_type = Vec<String>)]
    pub purposes: Vec<PurposeId>,
    pub data_categories: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transfer {
    pub recipient: String,
    pub country: String,
    /// The Chapter V safeguard: SCCs, an adequacy decision, ...
    pub safeguard: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionRecord {
    #[schema(value_type = String)]
    pub purpose: PurposeId,
    /// Data kept for the purpose is kept at most this long.
    pub retention_days: u32,
    /// A consent counts this long before it is asked again.
    pub consent_lifetime_days: Option<u32>,
}

/// The record of processing activities (GDPR Art. 30(1)).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordOfProcessing {
    pub generated_at: String,
    pub controller: Controller,
    pub purposes: Vec<PurposeRecord>,
    pub data_categories: Vec<CategoryRecord>,
    pub data_subject_categories: Vec<SubjectCategory>,
    pub recipients: Vec<Recipient>,
    /// Transfers to countries outside the EEA, with their safeguards.
    pub transfers: Vec<Transfer>,
    pub retention: Vec<RetentionRecord>,
    /// The technical and organisational measures (Art. 32) Tarmo applies.
    pub security_measures: Vec<&'static str>,
}

/// What Tarmo does to keep the data secure; each line is true of the code.
const SECURITY_MEASURES: &[&str] = &[
    "Encryption at rest: every personal value (identifiers, traits, event bodies, consent evidence, queued messages) is sealed with AES-256-GCM under the person's own data key before it reaches the database; the associated data binds table, field and profile, so a ciphertext cannot be moved.",
    "Key management: data keys are stored only wrapped by the installation's wrapping key, which is stored only wrapped (AES-256-GCM) by a master key kept outside the database (a 0600 file, the environment or a secrets manager's command); a wrong master key is refused at start, and the master key can be rotated while Tarmo serves.",
    "Pseudonymous lookup: identifiers are found by a keyed HMAC-SHA256 blind index, never by their plaintext.",
    "Erasure by crypto-shredding: destroying a person's data key makes every sealed value of theirs unreadable, backups included; only a blind index stays on a suppression list so that a re-import does not bring them back.",
    "Integrity of consent records: the consent ledger is append-only and hash-chained (SHA-256), its head is signed with the installation's signing key, and `tarmo ledger verify` detects an edited, removed or cut-off entry.",
    "Access control: API keys are 160-bit random secrets stored only as SHA-256 hashes, separated into admin and ingestion roles, and revocable with immediate effect.",
    "Purpose limitation enforced in code: every consent-dependent use and every export names a purpose and is decided by the policy; exports to processors are limited to the purpose's and the processor's data categories and recorded as disclosures.",
    "Data minimisation in transit: messages and processor notifications are queued sealed and their payloads wiped once delivered; webhook tokens are stored sealed and never shown.",
    "No personal data in logs: logs carry profile, request and message ids only.",
    "Durability: the embedded database fsyncs every commit (SQLite WAL, synchronous=FULL) and overwrites deleted content (secure_delete); the data directory is created 0700.",
    "Links sent to people are signed (HMAC) and single-use or expiring; their pages send no referrer, are not cached and cannot be framed.",
];

fn article(b: LegalBasis) -> &'static str {
    match b {
        LegalBasis::Consent => "Art. 6(1)(a)",
        LegalBasis::Contract => "Art. 6(1)(b)",
        LegalBasis::LegalObligation => "Art. 6(1)(c)",
        LegalBasis::VitalInterests => "Art. 6(1)(d)",
        LegalBasis::PublicTask => "Art. 6(1)(e)",
        LegalBasis::LegitimateInterests => "Art. 6(1)(f)",
    }
}

/// The people a purpose concerns, by what it is: customers for a contract,
/// subscribers for direct marketing, visitors for the web and apps, people
/// reached by ads; everyone else a purpose reaches are contacts.
fn subject_categories_of(spec: &tarmo_core::consent::PurposeSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    if spec.legal_basis == LegalBasis::Contract {
        out.push("customers");
    }
    if spec.direct_marketing {
        out.push("subscribers to marketing");
    }
    if spec
        .channels
        .iter()
        .any(|c| matches!(c, Channel::Web | Channel::Push))
    {
        out.push("website and app visitors");
    }
    if spec.channels.contains(&Channel::Ads) {
        out.push("people reached by advertising");
    }
    if out.is_empty() {
        out.push("contacts");
    }
    out
}

pub fn build(
    s: &AppState,
    catalog: &tarmo_store::consent::Catalog,
    processors: &[ProcessorView],
) -> RecordOfProcessing {
    let entries = catalog.entries();
    let mut categories: BTreeMap<String, BTreeSet<PurposeId>> = BTreeMap::new();
    let mut subjects: BTreeMap<&'static str, Vec<PurposeId>> = BTreeMap::new();
    let purposes = entries
        .iter()
        .map(|c| {
            let spec = &c.spec;
            for cat in &spec.data_categories {
                categories
                    .entry(cat.as_str().to_owned())
                    .or_default()
                    .insert(c.id.clone());
            }
            for sc in subject_categories_of(spec) {
                subjects.entry(sc).or_default().push(c.id.clone());
            }
            PurposeRecord {
                id: c.id.to_string(),
                name: spec.name.clone(),
                legal_basis: spec.legal_basis.as_str(),
                legal_basis_article: article(spec.legal_basis),
                balancing_note: spec.balancing_note.clone(),
                data_categories: spec
                    .data_categories
                    .iter()
                    .map(|d| d.as_str().to_owned())
                    .collect(),
                special_categories: spec
                    .data_categories
                    .iter()
                    .filter(|d| d.is_special())
                    .map(|d| d.as_str().to_owned())
                    .collect(),
                channels: spec.channels.iter().map(|c| c.as_str()).collect(),
                retention_days: spec.retention_days,
                consent_lifetime_days: spec.consent_lifetime_days,
                recipients: processors
                    .iter()
                    .filter(|p| p.purposes.iter().any(|x| x == c.id.as_str()))
                    .map(|p| p.name.clone())
                    .collect(),
            }
        })
        .collect();
    let data_subject_categories = if s.config.data_subject_categories.is_empty() {
        subjects
            .into_iter()
            .map(|(name, purposes)| SubjectCategory {
                name: name.into(),
                purposes,
            })
            .collect()
    } else {
        s.config
            .data_subject_categories
            .iter()
            .map(|n| SubjectCategory {
                name: n.clone(),
                purposes: vec![],
            })
            .collect()
    };
    RecordOfProcessing {
        generated_at: rfc3339(now_ms()),
        controller: Controller {
            name: s.config.organisation.clone(),
            contact: s.config.controller_contact.clone(),
            dpo_contact: s.config.dpo_contact.clone(),
        },
        purposes,
        data_categories: categories
            .into_iter()
            .map(|(name, purposes)| CategoryRecord {
                special: tarmo_core::consent::purpose::SPECIAL_CATEGORIES.contains(&name.as_str()),
                name,
                purposes: purposes.into_iter().collect(),
            })
            .collect(),
        data_subject_categories,
        recipients: processors
            .iter()
            .map(|p| Recipient {
                name: p.name.clone(),
                role: p.role.clone(),
                country: p.country.clone(),
                in_eea: p.in_eea,
                dpa_reference: p.dpa_reference.clone(),
                dpa_signed_on: p.dpa_signed_on.clone(),
                purposes: p.purposes.clone(),
                data_categories: p.data_categories.clone(),
            })
            .collect(),
        transfers: processors
            .iter()
            .filter(|p| !p.in_eea)
            .map(|p| Transfer {
                recipient: p.name.clone(),
                country: p.country.clone(),
                safeguard: p.transfer_safeguard.clone().unwrap_or_default(),
            })
            .collect(),
        retention: entries
            .iter()
            .map(|c| RetentionRecord {
                purpose: c.id.clone(),
                retention_days: c.spec.retention_days,
                consent_lifetime_days: c.spec.consent_lifetime_days,
            })
            .collect(),
        security_measures: SECURITY_MEASURES.to_vec(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordQuery {
    /// `json` or `html`; without it, `Accept: text/html` gives the page.
    pub format: Option<String>,
}

/// The record of processing activities (GDPR Art. 30): the controller,
/// purposes with their legal bases, categories of data (Art. 9 flagged) and
/// of data subjects, recipients, transfers outside the EEA with their
/// safeguards, retention, and security measures. JSON, or a readable page
/// with `Accept: text/html` or `?format=html`.
#[utoipa::path(get, path = "/api/v1/records-of-processing", tag = "processors",
    params(RecordQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = RecordOfProcessing,
            description = "JSON; or text/html with Accept: text/html or ?format=html"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn records_of_processing(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    _p: Principal,
    q: Result<Query<RecordQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::new(Code::InvalidQuery, "`format` is json or html"))?;
    let html = match q.format.as_deref() {
        Some("html") => true,
        Some("json") => false,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "`format` is json or html",
            ));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html")),
    };
    let catalog = s.catalog().await?;
    let processors = blocking({
        let svc = s.svc.clone();
        move || register::registered(&svc)
    })
    .await?;
    let record = build(&s, &catalog, &processors);
    if !html {
        return Ok(axum::Json(record).into_response());
    }
    let mut r = (StatusCode::OK, render(&record)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    crate::pages::secure_headers(h);
    Ok(r)
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        return "—".into();
    }
    let words: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    esc(&words.join(", "))
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "—".into(), esc)
}

/// The record as a page: every value escaped, no scripts.
pub fn render(r: &RecordOfProcessing) -> String {
    let mut b = String::with_capacity(16 * 1024);
    let c = &r.controller;
    let _ = write!(
        b,
        "<h2>Controller</h2><table><tr><th>Name</th><td>{}</td></tr>\
<tr><th>Contact</th><td>{}</td></tr><tr><th>Data protection officer</th><td>{}</td></tr></table>",
        esc(&c.name),
        opt(&c.contact),
        opt(&c.dpo_contact)
    );
    b.push_str(
        "<h2>Purposes of the processing</h2><table><tr><th>Purpose</th><th>Legal basis</th>\
<th>Data categories</th><th>Channels</th><th>Retention</th><th>Recipients</th></tr>",
    );
    for p in &r.purposes {
        let mut basis = format!("{} ({})", esc(p.legal_basis), esc(p.legal_basis_article));
        if let Some(n) = &p.balancing_note {
            let _ = write!(
                basis,
                "<div class=\"muted\">Balancing test: {}</div>",
                esc(n)
            );
        }
        let mut cats = list(&p.data_categories);
        if !p.special_categories.is_empty() {
            let _ = write!(
                cats,
                "<div class=\"special\">Special categories (Art. 9), on explicit consent only: {}</div>",
                list(&p.special_categories)
            );
        }
        let channels: Vec<String> = p.channels.iter().map(|c| c.to_string()).collect();
        let _ = write!(
            b,
            "<tr><td><b>{}</b><div class=\"muted\">{}</div></td><td>{basis}</td><td>{cats}</td>\
<td>{}</td><td>{} days{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.id),
            list(&channels),
            p.retention_days,
            p.consent_lifetime_days
                .map(|d| format!("<div class=\"muted\">consent asked again after {d} days</div>"))
                .unwrap_or_default(),
            list(&p.recipients),
        );
    }
    b.push_str("</table><h2>Categories of personal data</h2><table><tr><th>Category</th><th>Purposes</th></tr>");
    for d in &r.data_categories {
        let _ = write!(
            b,
            "<tr><td>{}{}</td><td>{}</td></tr>",
            esc(&d.name),
            if d.special {
                " <span class=\"special\">(special category, Art. 9)</span>"
            } else {
                ""
            },
            list(&d.purposes)
        );
    }
    b.push_str("</table><h2>Categories of data subjects</h2><ul>");
    for sc in &r.data_subject_categories {
        let _ = write!(b, "<li>{}", esc(&sc.name));
        if !sc.purposes.is_empty() {
            let _ = write!(b, " <span class=\"muted\">({})</span>", list(&sc.purposes));
        }
        b.push_str("</li>");
    }
    b.push_str(
        "</ul><h2>Recipients (processors)</h2><table><tr><th>Processor</th><th>Role</th>\
<th>Country</th><th>Data processing agreement</th><th>Purposes</th><th>Data categories</th></tr>",
    );
    if r.recipients.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No processors are registered.</td></tr>");
    }
    for p in &r.recipients {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}, signed {}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.role),
            esc(&p.country),
            if p.in_eea { "" } else { " (outside the EEA)" },
            esc(&p.dpa_reference),
            esc(&p.dpa_signed_on),
            list(&p.purposes),
            list(&p.data_categories)
        );
    }
    b.push_str("</table><h2>Transfers to third countries</h2>");
    if r.transfers.is_empty() {
        b.push_str("<p>None: every processor is in the EEA.</p>");
    } else {
        b.push_str("<table><tr><th>Recipient</th><th>Country</th><th>Safeguard</th></tr>");
        for t in &r.transfers {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.recipient),
                esc(&t.country),
                esc(&t.safeguard)
            );
        }
        b.push_str("</table>");
    }
    b.push_str("<h2>Time limits for erasure</h2><table><tr><th>Purpose</th><th>Kept at most</th><th>Consent valid for</th></tr>");
    for t in &r.retention {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{} days</td><td>{}</td></tr>",
            esc(t.purpose.as_str()),
            t.retention_days,
            t.consent_lifetime_days
                .map_or_else(|| "—".into(), |d| format!("{d} days"))
        );
    }
    b.push_str("</table><h2>Technical and organisational security measures</h2><ul>");
    for m in &r.security_measures {
        let _ = write!(b, "<li>{}</li>", esc(m));
    }
    b.push_str("</ul>");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>Record of processing activities — {org}</title>\
<style>body{{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}}\
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}}th,td{{border:1px solid #ccc;padding:.35rem .5rem;text-align:left;vertical-align:top}}\
th{{background:#f4f4f4}}.muted{{color:#666;font-size:.85rem}}.special{{color:#8a1c1c;font-size:.9rem}}\
@media print{{body{{margin:0;max-width:none}}}}</style></head>\
<body><main><h1>Record of processing activities</h1>\
<p class=\"muted\">GDPR Article 30(1) — {org} — generated {at}</p>{b}</main></body></html>",
        org = esc(&r.controller.name),
        at = esc(&r.generated_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> RecordOfProcessing {
        RecordOfProcessing {
            generated_at: "2025-01-01T00:00:00Z".into(),
            controller: Controller {
                name: name.into(),
                contact: Some("dpo@example.com".into()),
                dpo_contact: None,
            },
            purposes: vec![PurposeRecord {
                id: "analytics".into(),
                name: "Stats <b>".into(),
                legal_basis: "legitimate_interests",
                legal_basis_article: "Art. 6(1)(f)",
                balancing_note: Some("note & \"quoted\"".into()),
                data_categories: vec!["behaviour".into(), "health".into()],
                special_categories: vec!["health".into()],
                channels: vec!["web"],
                retention_days: 400,
                consent_lifetime_days: None,
                recipients: vec!["<img src=x>".into()],
            }],
            data_categories: vec![],
            data_subject_categories: vec![],
            recipients: vec![],
            transfers: vec![],
            retention: vec![],
            security_measures: SECURITY_MEASURES.to_vec(),
        }
    }

    #[test]
    fn the_page_escapes_every_value() {
        let html = render(&record("Acme <script>alert(1)</script>"));
        assert!(
            !html.contains("<script>") && !html.contains("<img") && !html.contains("Stats <b>")
        );
        assert!(html.contains("Stats &lt;b&gt;"));
        assert!(html.contains("Acme &lt;script&gt;"));
        assert!(html.contains("note &amp; &quot;quoted&quot;"));
        assert!(html.contains("Special categories (Art. 9)"));
        assert!(html.contains("None: every processor is in the EEA."));
    }

    #[test]
    fn subject_categories_follow_what_purposes_are() {
        let catalog = tarmo_store::consent::default_purposes();
        let get = |id: &str| {
            subject_categories_of(&catalog.iter().find(|(p, _)| p.as_str() == id).unwrap().1)
        };
        assert_eq!(get("order_fulfilment"), ["customers"]);
        assert_eq!(get("sms_marketing"), ["subscribers to marketing"]);
        assert_eq!(get("analytics"), ["website and app visitors"]);
        assert_eq!(
            get("ad_audiences"),
            ["subscribers to marketing", "people reached by advertising"]
        );
    }
}
