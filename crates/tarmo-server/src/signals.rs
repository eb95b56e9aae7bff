//! CMP strings into the consent ledger: IAB TCF TC strings and GPP strings
//! that arrive with events or through `POST /api/v1/consents/signals`.
//!
//! Strings are decoded and mapped to purposes (through the operator's
//! [`SignalMap`]) on the request's own thread; the writer only checks whether
//! the person's ledger already holds the string (by its SHA-256) and, the
//! first time, appends its entries. On ingestion an undecodable string is
//! counted and dropped, never the event: SDKs do not retry a 400, so failing
//! the batch would lose the events.

use std::collections::HashMap;
use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tarmo_core::consent::{PurposeRule, SignalMap, SignalReading};
use tarmo_store::conn::ProfileId;
use tarmo_store::consent::{self as ledger, Catalog, ConsentSignal, SignalOutcome};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::subject::{SubjectRef, subject_ref_lookup};
use crate::{ApiError, AppState, ErrorBody, blocking};

/// Longer strings are refused: real TC and GPP strings are a few hundred
/// bytes, a few KB with long vendor lists.
pub const MAX_STRING_BYTES: usize = 16 * 1024;

/// The two kinds of CMP string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tcf,
    Gpp,
}

impl Kind {
    /// The evidence key and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tcf => "tc_string",
            Kind::Gpp => "gpp_string",
        }
    }

    fn error_code(self) -> Code {
        match self {
            Kind::Tcf => Code::InvalidTcString,
            Kind::Gpp => Code::InvalidGppString,
        }
    }
}

/// Decode a string and read it through the mapping: pure, no I/O.
pub fn read(
    kind: Kind,
    text: &str,
    map: &SignalMap,
    catalog: &Catalog,
    source: &str,
) -> Result<ConsentSignal, String> {
    if text.len() > MAX_STRING_BYTES {
        return Err(format!(
            "the string is longer than {} KB",
            MAX_STRING_BYTES / 1024
        ));
    }
    let rule_of = |p: &str| -> Option<PurposeRule> { catalog.get(p).map(|c| c.rule) };
    let (reading, sections) = match kind {
        Kind::Tcf => {
            let tc = tarmo_tcf::decode(text).map_err(|e| e.to_string())?;
            (map.read_tcf(&tc, rule_of), None)
        }
        Kind::Gpp => {
            let gpp = tarmo_tcf::gpp::decode(text).map_err(|e| e.to_string())?;
            let names: Vec<Value> = gpp
                .section_ids()
                .map(|id| match tarmo_tcf::gpp::section_name(id) {
                    Some(n) => Value::from(n),
                    None => Value::from(id),
                })
                .collect();
            (map.read_gpp(&gpp, rule_of), Some(names))
        }
    };
    Ok(signal(kind, text, reading, sections, source))
}

fn signal(
    kind: Kind,
    text: &str,
    r: SignalReading,
    sections: Option<Vec<Value>>,
    source: &str,
) -> ConsentSignal {
    let mut evidence = Map::new();
    evidence.insert(kind.label().into(), Value::from(text));
    evidence.insert("policy_version".into(), json!(r.policy_version));
    evidence.insert("outdated".into(), Value::Bool(r.outdated));
    evidence.insert("cmp_id".into(), json!(r.cmp_id));
    if let Some(s) = sections {
        evidence.insert("sections".into(), Value::Array(s));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    ConsentSignal {
        hash,
        method: r.method,
        entries: r.entries,
        source: source.to_owned(),
        evidence,
    }
}

/// Whether a read signal is outdated, and its TCF policy version.
fn facts(signal: &ConsentSignal) -> (bool, Option<u8>) {
    (
        signal.evidence.get("outdated") == Some(&Value::Bool(true)),
        signal
            .evidence
            .get("policy_version")
            .and_then(Value::as_u64)
            .and_then(|v| u8::try_from(v).ok()),
    )
}

// ---------------------------------------------------------------- ingestion

/// Where a message's TC string was found, in precedence order: the first
/// place that has one gives the message's TC string.
const TC_PLACES: [(&str, &str); 2] = [
    ("/context/consent/tcString", "context.consent.tcString"),
    ("/context/cookies/euconsent-v2", "euconsent-v2 cookie"),
];
const GPP_PLACE: (&str, &str) = ("/context/consent/gppString", "context.consent.gppString");

/// The `euconsent-v2` cookie of the request's `Cookie` headers, if any: a
/// browser posting to Tarmo through the site's own origin (a first-party
/// proxy) sends it along.
pub fn cookie_tc_string(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "euconsent-v2")
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// What a string field holds: nothing (absent, null or empty), a string, or
/// something that is not a string.
enum Field<'a> {
    Absent,
    Text(&'a str),
    NotText,
}

fn field<'a>(body: &'a Value, pointer: &str) -> Field<'a> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Field::Absent,
        Some(Value::String(s)) if s.trim().is_empty() => Field::Absent,
        Some(Value::String(s)) => Field::Text(s.trim()),
        Some(_) => Field::NotText,
    }
}

/// Whether a message has a place for a CMP string filled in.
pub fn carries_string(body: &Value) -> bool {
    TC_PLACES
        .iter()
        .chain([&GPP_PLACE])
        .any(|(pointer, _)| !matches!(field(body, pointer), Field::Absent))
}

/// Reads the CMP strings of one request's messages, decoding each distinct
/// string once.
pub struct IngestReader<'a> {
    map: &'a SignalMap,
    catalog: &'a Catalog,
    cookie: Option<String>,
    seen: HashMap<(Kind, String), Option<ConsentSignal>>,
    /// Undecodable strings, by kind.
    pub invalid: HashMap<Kind, u64>,
}

impl<'a> IngestReader<'a> {
    pub fn new(map: &'a SignalMap, catalog: &'a Catalog, cookie: Option<String>) -> Self {
        Self {
            map,
            catalog,
            cookie,
            seen: HashMap::new(),
            invalid: HashMap::new(),
        }
    }

    /// The message's signals: at most one TC string (`context.consent.tcString`,
    /// else `context.cookies["euconsent-v2"]`, else the request's cookie) and
    /// one GPP string (`context.consent.gppString`).
    pub fn signals(&mut self, body: &Value) -> Vec<ConsentSignal> {
        let mut out = Vec::new();
        let mut tc = None;
        for (pointer, place) in TC_PLACES {
            match field(body, pointer) {
                Field::Absent => continue,
                Field::Text(t) => tc = Some((t.to_owned(), place)),
                Field::NotText => self.count_invalid(Kind::Tcf),
            }
            break;
        }
        let tc = tc.or_else(|| self.cookie.clone().map(|c| (c, "euconsent-v2 cookie")));
        if let Some((text, place)) = tc {
            out.extend(self.read_one(Kind::Tcf, text, place));
        }
        match field(body, GPP_PLACE.0) {
            Field::Absent => {}
            Field::Text(t) => out.extend(self.read_one(Kind::Gpp, t.to_owned(), GPP_PLACE.1)),
            Field::NotText => self.count_invalid(Kind::Gpp),
        }
        out
    }

    fn read_one(&mut self, kind: Kind, text: String, place: &str) -> Option<ConsentSignal> {
        let key = (kind, text);
        if let Some(done) = self.seen.get(&key).cloned() {
            if done.is_none() {
                self.count_invalid(kind);
            }
            return done;
        }
        let source = format!("{place} on ingestion");
        let got = match read(kind, &key.1, self.map, self.catalog, &source) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(kind = kind.label(), error = %e, "an undecodable CMP string was dropped; the event is kept");
                self.count_invalid(kind);
                None
            }
        };
        self.seen.insert(key, got.clone());
        got
    }

    fn count_invalid(&mut self, kind: Kind) {
        *self.invalid.entry(kind).or_default() += 1;
    }
}

// -------------------------------------------------------------------- route

/// A CMP string to record for one person.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    /// The person: `{"type": "email", "value": "..."}` or `{"profile": 42}`.
    /// An identifier nobody has yet makes a new profile.
    pub subject: SubjectRef,
    /// An IAB TCF v2 TC string; or give `gpp_string`.
    pub tc_string: Option<String>,
    /// An IAB GPP string.
    pub gpp_string: Option<String>,
    /// The collection point, e.g. "CMP on the checkout page".
    pub source: String,
    /// IP address, user agent, and anything else that proves the decision;
    /// sealed with the string itself.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub evidence: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignalEntry {
    #[schema(value_type = String)]
    pub purpose: tarmo_core::consent::PurposeId,
    /// granted, denied or objected.
    pub decision: &'static str,
    /// The ledger entry's number.
    pub seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignalRecorded {
    /// The person's current profile; null when erased (suppressed).
    pub profile_id: Option<ProfileId>,
    /// `tcf` or `gpp`: the method the entries are recorded with.
    pub method: &'static str,
    /// The entries this call wrote (none for a repeat).
    pub entries: Vec<SignalEntry>,
    /// The person's ledger already held this string: nothing was written.
    pub duplicate: bool,
    /// Made under a TCF policy version before TCF 2.2 (below 4): recorded,
    /// and flagged so in the evidence.
    pub outdated: bool,
    /// The TCF policy version (of a GPP string's TCF section; null without one).
    pub policy_version: Option<u8>,
    /// The person was erased: nothing is recorded about them.
    pub suppressed: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidSignal, message)
}

/// Record a CMP string (TCF TC string or GPP string) for a person. Only its
/// first arrival for the person writes entries; a repeat answers
/// `duplicate: true`.
#[utoipa::path(post, path = "/api/v1/consents/signals", tag = "consent",
    request_body = SignalInput,
    security(("admin_key" = [])),
    responses((status = 200, body = SignalRecorded),
        (status = 400, body = ErrorBody, description = "invalid_signal, invalid_tc_string, invalid_gpp_string, invalid_source, or a bad subject; nothing written"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn record_signal(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<Json<SignalRecorded>, ApiError> {
    let b: SignalInput = crate::body::json(
        &body,
        Code::InvalidSignal,
        "{\"subject\", \"tc_string\" or \"gpp_string\", \"source\", \"evidence\"}",
    )?;
    let (kind, text) = match (&b.tc_string, &b.gpp_string) {
        (Some(t), None) => (Kind::Tcf, t.trim()),
        (None, Some(g)) => (Kind::Gpp, g.trim()),
        _ => return Err(invalid("give exactly one of `tc_string` and `gpp_string`")),
    };
    if b.source.trim().is_empty() || b.source.len() > 200 {
        return Err(ApiError::new(
            Code::InvalidSource,
            "`source` names the collection point in 1 to 200 characters",
        ));
    }
    let (lookup, ident) = subject_ref_lookup(&s, &b.subject)?;
    let prepared = ident.as_ref().map(|i| s.store.prepare_identifier(i));
    let catalog = s.catalog().await?;
    let signal = read(kind, text, &s.config.consent_signals, &catalog, &b.source).map_err(|e| {
        ApiError::new(
            kind.error_code(),
            format!("undecodable {}: {e}", kind.label()),
        )
    })?;
    // A string speaks for every purpose it maps to; a purpose-bound key may
    // record it only when all of them are its own (recording part of it
    // would mark the string as seen and lose the rest for good).
    for (purpose, _) in &signal.entries {
        p.may_act_for(purpose.as_str())?;
    }
    let method = signal.method.as_str();
    let (outdated, policy_version) = facts(&signal);
    let evidence = b.evidence;
    let recorded = blocking({
        let svc = s.svc.clone();
        move || ledger::record_cmp_string(&svc, lookup, prepared, signal, evidence)
    })
    .await?;
    let (profile, outcome) = match recorded {
        Some((p, o)) => (Some(p), Some(o)),
        None => (None, None),
    };
    let (entries, duplicate) = match outcome {
        Some(SignalOutcome::Recorded(written)) => (
            written
                .into_iter()
                .map(|(purpose, d, seq)| SignalEntry {
                    purpose,
                    decision: d.as_str(),
                    seq,
                })
                .collect(),
            false,
        ),
        Some(SignalOutcome::Duplicate) => (Vec::new(), true),
        None => (Vec::new(), false),
    };
    let shown = match profile {
        Some(id) => s.visible_id(&p, id).await?,
        None => None,
    };
    Ok(Json(SignalRecorded {
        profile_id: shown,
        method,
        entries,
        duplicate,
        outdated,
        policy_version,
        suppressed: profile.is_none(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_euconsent_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; euconsent-v2=CQabc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_tc_string(&h).as_deref(), Some("CQabc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "xeuconsent-v2=no".parse().unwrap());
        h.append(header::COOKIE, "euconsent-v2=".parse().unwrap());
        assert_eq!(cookie_tc_string(&h), None);
    }

    #[test]
    fn undecodable_strings_are_counted_once_per_message_and_dropped() {
        let map = SignalMap::default();
        let catalog = Catalog::default();
        let mut r = IngestReader::new(&map, &catalog, None);
        let body = json!({"context": {"consent": {"tcString": "not a TC string", "gppString": 7}}});
        assert!(r.signals(&body).is_empty());
        assert!(r.signals(&body).is_empty());
        assert_eq!(r.invalid[&Kind::Tcf], 2);
        assert_eq!(r.invalid[&Kind::Gpp], 2);
        let empty = json!({"context": {"consent": {"tcString": "", "gppString": null}}});
        let mut r = IngestReader::new(&map, &catalog, None);
        assert!(r.signals(&empty).is_empty());
        assert!(r.invalid.is_empty());
    }
}
