//! The consent API for staff and applications: the purpose catalog, recording
//! and reading consent, decisions, double opt-in subscriptions and
//! consent-gated marketing email.

use std::sync::Arc;
use tarmo_core::codes::Code;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tarmo_core::consent::{
    Channel, ConsentDecision, Method, PurposeId, PurposeSpec, Reason, Verdict, decide,
};
use tarmo_store::conn::ProfileId;
use tarmo_store::consent::{
    self as ledger, LedgerEntryView, NewEntry, PurposeChange, PurposeVersionView, Subject,
};
use tarmo_store::doi::{self, Subscribe};
use tarmo_store::links::{self, SignedLink};
use tarmo_store::outbox::{self, OutboxMessage};
use tarmo_store::vault::BlindIndex;
use tarmo_store::{now_ms, rfc3339};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

/// A person named in a request: by profile id or by any identifier.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectRef {
    /// Identifier type: email, phone, user_id, ... (or omit and give `profile`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
    /// A profile id.
    pub profile: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    Id(ProfileId),
    Identifier(BlindIndex),
}

impl AppState {
    /// Parse a subject into what the store looks up: an id, or a blind index.
    pub(crate) fn lookup_of(
        &self,
        profile: Option<&str>,
        kind: Option<&str>,
        value: Option<&str>,
    ) -> Result<(Lookup, Option<tarmo_core::identity::Identifier>), ApiError> {
        match (profile, kind, value) {
            (Some(p), None, None) => Ok((Lookup::Id(crate::profiles::profile_id(p)?), None)),
            (None, Some(k), Some(v)) => {
                let kind = self.identity.kind(k)?;
                let id = self.identity.identifier(kind, v)?;
                let b = self
                    .store
                    .vault()
                    .blind_index(id.kind().as_str(), id.value());
                Ok((Lookup::Identifier(b), Some(id)))
            }
            _ => Err(ApiError::new(
                Code::InvalidSubject,
                "name the person by `profile` (an id) or by `type` and `value` (an identifier), not both",
            )),
        }
    }
}

pub(crate) fn subject_ref_lookup(
    s: &AppState,
    r: &SubjectRef,
) -> Result<(Lookup, Option<tarmo_core::identity::Identifier>), ApiError> {
    let p = r.profile.map(|p| p.to_string());
    s.lookup_of(p.as_deref(), r.kind.as_deref(), r.value.as_deref())
}

// ------------------------------------------------------------------ purposes

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeView {
    pub id: String,
    #[schema(value_type = Object)]
    pub definition: PurposeSpec,
    /// The current notice's version (hash of its texts).
    pub notice_version: String,
    /// The definition's number; every change makes a new one.
    pub version: i64,
    /// Consents given under notices older than this one's number need asking again.
    pub reconsent_from_notice: u32,
    pub updated_at: String,
    /// Every definition, oldest first (on the single-purpose route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<PurposeVersionView>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeList {
    pub purposes: Vec<PurposeView>,
}

fn view(c: &ledger::CatalogEntry) -> PurposeView {
    PurposeView {
        id: c.id.to_string(),
        definition: c.spec.clone(),
        notice_version: c.notice_version.clone(),
        version: c.version,
        reconsent_from_notice: c.rule.min_notice_seq,
        updated_at: rfc3339(c.updated_ms),
        history: None,
    }
}

/// The purpose catalog.
#[utoipa::path(get, path = "/api/v1/purposes", tag = "consent",
    security(("admin_key" = [])),
    responses((status = 200, body = PurposeList), (status = 401, body = ErrorBody)))]
pub async fn list_purposes(
    State(s): State<Arc<AppState>>,
    _p: Principal,
) -> Result<Json<PurposeList>, ApiError> {
    let catalog = s.catalog().await?;
    Ok(Json(PurposeList {
        purposes: catalog.entries().into_iter().map(view).collect(),
    }))
}

/// One purpose with every earlier definition.
#[utoipa::path(get, path = "/api/v1/purposes/{id}", tag = "consent",
    params(("id" = String, Path, description = "Purpose id")),
    security(("admin_key" = [])),
    responses((status = 200, body = PurposeView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_purpose(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(id): Path<String>,
) -> Result<Json<PurposeView>, ApiError> {
    let catalog = s.catalog().await?;
    let c = catalog
        .get(&id)
        .ok_or_else(|| ApiError::purpose_not_found("no such purpose"))?;
    let mut v = view(c);
    let store = s.store.clone();
    v.history = Some(blocking(move || ledger::purpose_history(&mut *store.conn()?, &id)).await?);
    Ok(Json(v))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutPurposeQuery {
    /// The new notice text is a material change: consents given under
    /// earlier notices stop counting until the person agrees again.
    #[serde(default)]
    pub requires_reconsent: bool,
}

/// Create or change a purpose. A change never rewrites history.
#[utoipa::path(put, path = "/api/v1/purposes/{id}", tag = "consent",
    params(("id" = String, Path, description = "Purpose id"), PutPurposeQuery),
    request_body(content = Object, description = "The purpose: name, legal_basis, balancing_note, channels, data_categories, retention_days, consent_lifetime_days, gpc_opt_out, direct_marketing, notice"),
    security(("admin_key" = [])),
    responses((status = 200, body = PurposeChange), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn put_purpose(
    State(s): State<Arc<AppState>>,
    _p: Principal,
    Path(id): Path<String>,
    q: Result<Query<PutPurposeQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<PurposeChange>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(Code::InvalidQuery, e.body_text()))?;
    let id = PurposeId::parse(&id)?;
    let spec: PurposeSpec = crate::body::json(
        &body,
        Code::InvalidPurpose,
        "the purpose's definition (name, legal basis, channels, data categories, notice)",
    )?;
    spec.validate()?;
    let change = s
        .transact(move |ctx| {
            ledger::upsert_purpose(ctx.conn, &id, &spec, q.requires_reconsent, ctx.now_ms)
        })
        .await?;
    s.store.catalog_changed();
    Ok(Json(change))
}

// ------------------------------------------------------------------ consents

/// One consent decision to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    /// The person: `{"type": "email", "value": "..."}` or `{"profile": 42}`.
    /// An identifier nobody has yet makes a new profile (a form filled in by
    /// a new customer).
    pub subject: SubjectRef,
    pub purpose: String,
    /// granted, denied, withdrawn or objected.
    pub decision: String,
    /// web_form, api, staff (on the customer's request) or import.
    #[serde(default = "default_method")]
    pub method: String,
    /// The collection point, e.g. "checkout form v3".
    pub source: String,
    /// The notice version the person saw (the current one when absent).
    pub notice_version: Option<String>,
    /// IP address, user agent, and anything else that proves the decision.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub evidence: Map<String, Value>,
    /// One channel of the purpose (email, sms, ...): the decision is about
    /// that channel only (granted, denied or withdrawn), e.g. keep email
    /// but stop SMS. The person must already have a record for the purpose.
    pub channel: Option<String>,
}

fn default_method() -> String {
    "api".into()
}

/// One consent entry, or up to 1,000 as `{"entries": [...]}`.
// The body's shape for the API document only: `record` tells the two apart
// by the `entries` key, so that an error names the field at fault.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ConsentBody {
    Many { entries: Vec<ConsentInput> },
    One(Box<ConsentInput>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    pub profile_id: Option<ProfileId>,
    /// The ledger entry's number; absent for an erased (suppressed) person,
    /// for whom nothing is recorded.
    pub seq: Option<i64>,
    pub suppressed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordedList {
    pub recorded: Vec<Recorded>,
}

/// Methods a caller may claim. Double opt-in, GPC, CMP strings, unsubscribe
/// links and expiry are recorded by Tarmo itself when they happen.
const CALLER_METHODS: [Method; 4] = [Method::WebForm, Method::Api, Method::Staff, Method::Import];

/// Record consent decisions (one, or `{"entries": [...]}` up to 1,000 in one
/// durable transaction).
#[utoipa::path(post, path = "/api/v1/consents", tag = "consent",
    request_body(content = ConsentBody, description = "One entry, or {\"entries\": [...]}"),
    security(("admin_key" = [])),
    responses((status = 200, body = RecordedList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn record(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<Json<RecordedList>, ApiError> {
    // One entry, or {"entries": [...]}: told apart by the key, so that an
    // error names the field at fault in the shape the client meant.
    let v: serde_json::Value = crate::body::json(
        &body,
        Code::InvalidConsent,
        "a consent entry or {\"entries\": [...]}",
    )?;
    let inputs: Vec<ConsentInput> = if v.get("entries").is_some() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Many {
            entries: Vec<ConsentInput>,
        }
        crate::body::from_value::<Many>(v, Code::InvalidConsent)?.entries
    } else {
        vec![crate::body::from_value(v, Code::InvalidConsent)?]
    };
    if inputs.is_empty() || inputs.len() > 1000 {
        return Err(ApiError::new(
            Code::InvalidConsent,
            "give 1 to 1,000 entries",
        ));
    }
    let catalog = s.catalog().await?;
    let mut parsed = Vec::with_capacity(inputs.len());
    for (i, e) in inputs.into_iter().enumerate() {
        let at = |err: ApiError| ApiError {
            message: format!("entry {i}: {}", err.message),
            ..err
        };
        let decision = ConsentDecision::parse(&e.decision).map_err(|x| at(x.into()))?;
        if matches!(
            decision,
            ConsentDecision::PendingConfirmation | ConsentDecision::Expired
        ) {
            return Err(at(ApiError::new(
                Code::UnknownDecision,
                "pending_confirmation comes from POST /api/v1/subscriptions and expired from Tarmo itself",
            )));
        }
        let method = Method::parse(&e.method).map_err(|x| at(x.into()))?;
        if !CALLER_METHODS.contains(&method) {
            return Err(at(ApiError::new(
                Code::UnknownMethod,
                "a caller may record web_form, api, staff or import",
            )));
        }
        let c = catalog.require(&e.purpose).map_err(|x| at(x.into()))?;
        p.may_act_for(&e.purpose).map_err(at)?;
        tarmo_core::consent::check_entry(&e.purpose, &c.rule, decision, method)
            .map_err(|x| at(x.into()))?;
        let channel = e
            .channel
            .as_deref()
            .map(Channel::parse)
            .transpose()
            .map_err(|x| at(x.into()))?;
        if let Some(ch) = channel {
            tarmo_core::consent::check_channel_entry(&e.purpose, &c.rule, ch, decision)
                .map_err(|x| at(x.into()))?;
        }
        if e.source.trim().is_empty() {
            return Err(at(ApiError::new(
                Code::InvalidSource,
                "`source` names where the decision was collected",
            )));
        }
        let (lookup, ident) = subject_ref_lookup(&s, &e.subject).map_err(at)?;
        let prepared = ident.as_ref().map(|i| s.store.prepare_identifier(i));
        parsed.push((lookup, prepared, e, decision, method, channel));
    }
    let recorded = s
        .transact(move |ctx| {
            let mut out = Vec::with_capacity(parsed.len());
            let mut entries = Vec::with_capacity(parsed.len());
            let mut slots = Vec::with_capacity(parsed.len());
            for (lookup, prepared, e, decision, method, channel) in parsed {
                let profile = match (lookup, prepared) {
                    (Lookup::Id(p), _) => doi::current_profile(ctx.conn, p)?.ok_or_else(|| {
                        tarmo_store::Error::rejected(
                            Code::ProfileNotFound,
                            "no profile with that id",
                        )
                    })?,
                    (Lookup::Identifier(b), Some(id)) => {
                        if ledger::suppressed(ctx.conn, &b)?.is_some() {
                            out.push(Recorded {
                                profile_id: None,
                                seq: None,
                                suppressed: true,
                            });
                            slots.push(None);
                            continue;
                        }
                        ctx.resolve(std::slice::from_ref(&id))?
                    }
                    (Lookup::Identifier(_), None) => unreachable!("identifiers come prepared"),
                };
                slots.push(Some(entries.len()));
                out.push(Recorded {
                    profile_id: Some(profile),
                    seq: None,
                    suppressed: false,
                });
                entries.push(NewEntry {
                    channel,
                    profile_id: profile,
                    purpose: e.purpose,
                    decision,
                    method,
                    notice_version: e.notice_version,
                    at_ms: None,
                    source: e.source,
                    evidence: e.evidence,
                });
            }
            let seqs = ledger::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
            for (r, slot) in out.iter_mut().zip(slots) {
                r.seq = slot.map(|i| seqs[i]);
            }
            Ok(out)
        })
        .await?;
    let mut recorded = recorded;
    for r in &mut recorded {
        if let Some(id) = r.profile_id {
            r.profile_id = s.visible_id(&p, id).await?;
        }
    }
    Ok(Json(RecordedList { recorded }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentStateView {
    pub purpose: String,
    pub decision: String,
    pub method: String,
    pub since: String,
    /// What the decision route answers now, for any channel.
    pub allowed: bool,
    pub reason: String,
    /// Channels of the purpose the person switched off while keeping it
    /// (the decision for those answers `channel_withdrawn`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels_off: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileConsents {
    pub profile_id: ProfileId,
    /// The current state, one per purpose the person has a record for.
    pub states: Vec<ConsentStateView>,
    /// Every ledger entry, oldest first, evidence opened (null for a key
    /// whose data kinds do not include consent). A purpose-bound key gets
    /// the states and entries of its purposes only.
    pub ledger: Vec<LedgerEntryView>,
}

/// A person's consents: current state and the ledger behind it.
#[utoipa::path(get, path = "/api/v1/profiles/{id}/consents", tag = "consent",
    params(("id" = i64, Path, description = "Profile id")),
    security(("admin_key" = [])),
    responses((status = 200, body = ProfileConsents), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn profile_consents(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
) -> Result<Json<ProfileConsents>, ApiError> {
    let id = crate::profiles::profile_id(&raw)?;
    let catalog = s.catalog().await?;
    let store = s.store.clone();
    let grant = p.grant.clone();
    let (profile, states, flags, entries) = blocking(move || {
        // A person the key may not see reads as absent, as on the profile
        // routes; a purpose-bound key sees its purposes' entries only, and
        // the evidence (IP address, user agent, CMP strings) only where its
        // data kinds, narrowed by its purposes, include consent.
        let (profile, kinds) = store.visible_kinds(&grant, id)?.ok_or_else(|| {
            tarmo_store::Error::rejected(Code::ProfileNotFound, "no profile matches")
        })?;
        let ours = |purpose: &str| !grant.bound() || grant.purposes.iter().any(|p| p == purpose);
        let mut c = store.conn()?;
        let mut states = ledger::states(&mut *c, profile)?;
        states.retain(|(purpose, _)| ours(purpose));
        let flags = ledger::flags(&mut *c, profile)?;
        let mut entries = ledger::history(&mut *c, store.vault(), profile)?;
        entries.retain(|e| ours(&e.purpose));
        if !kinds.contains(&tarmo_core::access::DataKind::Consent) {
            for e in &mut entries {
                e.evidence = Value::Null;
            }
        }
        Ok((profile, states, flags, entries))
    })
    .await?;
    s.log_access(&p, "read", vec![profile]).await?;
    let now = now_ms();
    let states = states
        .into_iter()
        .map(|(purpose, st)| {
            let v = catalog
                .get(&purpose)
                .map(|c| decide(&c.rule, None, Some(&st), flags, now));
            ConsentStateView {
                decision: st.decision.as_str().into(),
                method: st.method.as_str().into(),
                since: rfc3339(st.at_ms),
                allowed: v.is_some_and(|v| v.allowed),
                reason: v.map_or("unknown_purpose", |v| v.reason.as_str()).into(),
                channels_off: Channel::in_set(st.channels_off)
                    .map(Channel::as_str)
                    .collect(),
                purpose,
            }
        })
        .collect();
    Ok(Json(ProfileConsents {
        profile_id: profile,
        states,
        ledger: entries,
    }))
}

// ----------------------------------------------------------------- decisions

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    /// The purpose the data would be used for.
    pub purpose: String,
    /// The channel it would be used over (email, sms, push, phone, post, web, ads).
    pub channel: Option<String>,
    /// A profile id; or give `type` and `value`.
    pub profile: Option<String>,
    /// Identifier type, with `value`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionView {
    pub allowed: bool,
    /// The purpose's legal basis.
    pub basis: &'static str,
    /// Why: consent_granted, withdrawn, expired, restricted, ...
    pub reason: &'static str,
    /// Since when the answer holds, when a recorded event decides it.
    pub since: Option<String>,
    pub purpose: String,
    /// The person's current profile id; null when unknown or erased.
    pub profile_id: Option<ProfileId>,
}

fn verdict_view(purpose: &str, profile: Option<ProfileId>, v: Verdict) -> DecisionView {
    DecisionView {
        allowed: v.allowed,
        basis: v.basis.as_str(),
        reason: v.reason.as_str(),
        since: v.since_ms.map(rfc3339),
        purpose: purpose.to_owned(),
        profile_id: profile,
    }
}

/// The person's id as `p` may be told it: a purpose-bound key sees a
/// person only while a decision for its purposes allows them, so it learns
/// the id of an identifier (or that an id is in use) only then. `allowed`
/// is the purpose's decision on any channel (the route checked that the key
/// acts for the purpose). A person allowed only through another of the
/// key's purposes stays hidden here: cheaper, and it errs on the side of
/// telling less.
fn shown_id(p: &Principal, profile: Option<ProfileId>, allowed: bool) -> Option<ProfileId> {
    profile.filter(|_| !p.grant.bound() || allowed)
}

/// The decision, the person's id, and whether the purpose is allowed on
/// any channel (see [`shown_id`]).
fn judge(
    rule: &tarmo_core::consent::PurposeRule,
    channel: Option<Channel>,
    subject: Subject,
    now: i64,
) -> (Option<ProfileId>, Verdict, bool) {
    match subject {
        Subject::Known(p, st, flags) => {
            let v = decide(rule, channel, st.as_ref(), flags, now);
            let any = match channel {
                None => v.allowed,
                Some(_) => decide(rule, None, st.as_ref(), flags, now).allowed,
            };
            (Some(p), v, any)
        }
        Subject::Suppressed(at) => {
            let flags = tarmo_core::consent::ProfileFlags {
                suppressed_since: Some(at),
                ..Default::default()
            };
            (None, decide(rule, channel, None, flags, now), false)
        }
        Subject::Unknown => (
            None,
            Verdict {
                allowed: false,
                basis: rule.basis,
                reason: Reason::UnknownProfile,
                since_ms: None,
            },
            false,
        ),
    }
}

fn read_subject(
    conn: &mut dyn tarmo_store::conn::Conn,
    lookup: Lookup,
    purpose: &str,
) -> tarmo_store::Result<Subject> {
    match lookup {
        Lookup::Id(p) => ledger::subject_by_id(conn, p, purpose),
        Lookup::Identifier(b) => ledger::subject_by_identifier(conn, &b, purpose),
    }
}

/// May this person's data be used for this purpose, over this channel, now?
#[utoipa::path(get, path = "/api/v1/decisions", tag = "consent", params(DecisionQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = DecisionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn decision(
    State(s): State<Arc<AppState>>,
    p: Principal,
    q: Result<Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DecisionView>, ApiError> {
    let Query(q) = q.map_err(|_| {
        ApiError::new(
            Code::InvalidQuery,
            "`purpose` is required, with `profile` or `type` and `value`",
        )
    })?;
    let catalog = s.catalog().await?;
    let c = catalog.require(&q.purpose)?;
    p.may_act_for(&q.purpose)?;
    let channel = q.channel.as_deref().map(Channel::parse).transpose()?;
    let (lookup, _) = s.lookup_of(q.profile.as_deref(), q.kind.as_deref(), q.value.as_deref())?;
    let rule = c.rule;
    let purpose = q.purpose;
    // A point read, but still off the async workers: a database that does
    // not answer must stall this request, not the runtime.
    let store = s.store.clone();
    let (subject, purpose) = crate::blocking(move || {
        let subject = read_subject(&mut *store.conn()?, lookup, &purpose)?;
        Ok((subject, purpose))
    })
    .await?;
    let (profile, v, any) = judge(&rule, channel, subject, now_ms());
    let profile = shown_id(&p, profile, any);
    s.access.count(
        p.key.id,
        p.key.user_id,
        &p.key.roles,
        &p.key.purposes,
        p.route.as_str(),
        1,
    );
    Ok(Json(verdict_view(&purpose, profile, v)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDecisionInput {
    pub purpose: String,
    pub channel: Option<String>,
    /// Up to 10,000 people, each `{"profile": 42}` or `{"type": "email", "value": "..."}`.
    pub subjects: Vec<SubjectRef>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchDecisions {
    /// In the order asked.
    pub decisions: Vec<DecisionView>,
}

/// Decisions for many people at once, for one purpose and channel.
#[utoipa::path(post, path = "/api/v1/decisions", tag = "consent",
    request_body = BatchDecisionInput,
    security(("admin_key" = [])),
    responses((status = 200, body = BatchDecisions), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn decisions_batch(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<Json<BatchDecisions>, ApiError> {
    let b: BatchDecisionInput = crate::body::json(
        &body,
        Code::InvalidJson,
        "{\"purpose\", \"subjects\": [...]}",
    )?;
    if b.subjects.len() > 10_000 {
        return Err(ApiError::new(
            Code::TooManySubjects,
            "at most 10,000 people a request",
        ));
    }
    let catalog = s.catalog().await?;
    let rule = catalog.require(&b.purpose)?.rule;
    p.may_act_for(&b.purpose)?;
    let channel = b.channel.as_deref().map(Channel::parse).transpose()?;
    let lookups = b
        .subjects
        .iter()
        .enumerate()
        .map(|(i, r)| {
            subject_ref_lookup(&s, r)
                .map(|l| l.0)
                .map_err(|e| ApiError {
                    message: format!("subject {i}: {}", e.message),
                    ..e
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let store = s.store.clone();
    let purpose = b.purpose.clone();
    let subjects = blocking(move || {
        let mut c = store.conn()?;
        lookups
            .into_iter()
            .map(|l| read_subject(&mut *c, l, &purpose))
            .collect::<tarmo_store::Result<Vec<_>>>()
    })
    .await?;
    let now = now_ms();
    s.access.count(
        p.key.id,
        p.key.user_id,
        &p.key.roles,
        &p.key.purposes,
        p.route.as_str(),
        subjects.len() as i64,
    );
    Ok(Json(BatchDecisions {
        decisions: subjects
            .into_iter()
            .map(|sub| {
                let (id, v, any) = judge(&rule, channel, sub, now);
                verdict_view(&b.purpose, shown_id(&p, id, any), v)
            })
            .collect(),
    }))
}

// ------------------------------------------------------------ subscriptions

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// The address to confirm by email; or give `phone` to confirm by SMS.
    pub email: Option<String>,
    pub phone: Option<String>,
    pub purposes: Vec<String>,
    /// The person's language (en, fi, de, nb, he, tr, ...): the confirmation
    /// message and page use it.
    #[serde(default = "default_language")]
    pub language: String,
    /// The collection point, e.g. "newsletter form in the footer".
    pub source: String,
    /// The person's IP address and user agent, as evidence.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

fn default_language() -> String {
    "en".into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// `pending_confirmation` (a message is on its way), `already_granted`,
    /// or `suppressed` (the person was erased; nothing stored or sent).
    pub status: &'static str,
    pub profile_id: Option<ProfileId>,
    pub pending: Vec<String>,
    pub already_granted: Vec<String>,
    pub expires_at: Option<String>,
}

pub(crate) fn evidence_of(ip: Option<String>, user_agent: Option<String>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(ip) = ip {
        m.insert("ip".into(), Value::String(ip.chars().take(100).collect()));
    }
    if let Some(ua) = user_agent {
        m.insert(
            "user_agent".into(),
            Value::String(ua.chars().take(500).collect()),
        );
    }
    m
}

/// Subscribe someone with double opt-in: records `pending_confirmation` and
/// sends a confirmation message whose link confirms on a button press.
#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "consent",
    request_body = SubscriptionInput,
    security(("admin_key" = [])),
    responses((status = 202, body = SubscriptionView), (status = 200, body = SubscriptionView, description = "Nothing to confirm"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn subscribe(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let b: SubscriptionInput = crate::body::json(
        &body,
        Code::InvalidSubscription,
        "{\"email\" or \"phone\", \"purposes\", \"language\", \"source\"}",
    )?;
    for purpose in &b.purposes {
        p.may_act_for(purpose)?;
    }
    let (kind, raw, channel) = match (&b.email, &b.phone) {
        (Some(e), None) => ("email", e, "email"),
        (None, Some(p)) => ("phone", p, "sms"),
        _ => {
            return Err(ApiError::new(
                Code::InvalidSubscription,
                "give exactly one of `email` and `phone`",
            ));
        }
    };
    if !tarmo_core::consent::purpose::valid_language(&b.language) {
        return Err(ApiError::new(
            Code::InvalidLanguage,
            "`language` is a tag like en, fi or pt-BR",
        ));
    }
    if b.source.trim().is_empty() || b.source.len() > 200 {
        return Err(ApiError::new(
            Code::InvalidSource,
            "`source` names the collection point in 1 to 200 characters",
        ));
    }
    let id = s.identity.identifier(s.identity.kind(kind)?, raw)?;
    let req = Subscribe {
        identifier: s.store.prepare_identifier(&id),
        address: id.value().to_owned(),
        channel,
        purposes: b.purposes,
        language: b.language,
        source: b.source,
        evidence: evidence_of(b.ip, b.user_agent),
        token_ttl_ms: s.config.token_ttl.as_millis() as i64,
    };
    let r = s.transact(move |ctx| doi::subscribe(ctx, req)).await?;
    s.outbox_wake();
    let shown = if r.suppressed {
        None
    } else {
        s.visible_id(&p, r.profile_id).await?
    };
    let status = if r.suppressed {
        "suppressed"
    } else if r.pending.is_empty() {
        "already_granted"
    } else {
        "pending_confirmation"
    };
    let code = if r.pending.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        code,
        Json(SubscriptionView {
            status,
            profile_id: shown,
            pending: r.pending,
            already_granted: r.already_granted,
            expires_at: r.expires_ms.map(rfc3339),
        }),
    ))
}

// ------------------------------------------------------- marketing messages

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailInput {
    /// The person: `{"profile": 42}` or `{"type": "email", "value": "..."}`.
    pub recipient: SubjectRef,
    /// The purpose the message serves; it must allow the email channel.
    pub purpose: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailQueued {
    pub queued: bool,
    pub decision: DecisionView,
}

/// Send one marketing email, if and only if the purpose allows it now. The
/// message carries a one-click unsubscribe link (RFC 8058) for the purpose,
/// and the decision is checked again when it is sent.
#[utoipa::path(post, path = "/api/v1/messages/email", tag = "consent",
    request_body = EmailInput,
    security(("admin_key" = [])),
    responses((status = 202, body = EmailQueued), (status = 200, body = EmailQueued, description = "Not allowed: nothing queued"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn send_email(
    State(s): State<Arc<AppState>>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<EmailQueued>), ApiError> {
    let b: EmailInput = crate::body::json(
        &body,
        Code::InvalidMessage,
        "{\"recipient\", \"purpose\", \"subject\", \"text\"}",
    )?;
    if b.subject.trim().is_empty() || b.subject.len() > 400 || b.text.len() > 200_000 {
        return Err(ApiError::new(
            Code::InvalidMessage,
            "a subject of 1 to 400 characters and a text of at most 200 KB",
        ));
    }
    let catalog = s.catalog().await?;
    let rule = catalog.require(&b.purpose)?.rule;
    p.may_act_for(&b.purpose)?;
    let (lookup, _) = subject_ref_lookup(&s, &b.recipient)?;
    let purpose = b.purpose.clone();
    let principal = p.clone();
    let (decision, queued) = s
        .transact(move |ctx| {
            let subject = read_subject(ctx.conn, lookup, &purpose)?;
            let (profile, v, any) = judge(&rule, Some(Channel::Email), subject, ctx.now_ms);
            let view = verdict_view(&purpose, shown_id(&principal, profile, any), v);
            let Some(profile) = profile.filter(|_| v.allowed) else {
                return Ok((view, false));
            };
            let Some(to) = ledger_contact(ctx.conn, ctx.vault, profile, "email")? else {
                return Err(tarmo_store::Error::rejected(
                    Code::NoEmailAddress,
                    "the person has no email address on record",
                ));
            };
            let unsubscribe = links::sign_link(
                ctx.vault,
                doi::UNSUBSCRIBE_LINK,
                &SignedLink {
                    profile_id: profile,
                    scope: purpose.clone(),
                    issued_ms: ctx.now_ms,
                },
            );
            outbox::enqueue(
                ctx.conn,
                ctx.vault,
                profile,
                "email",
                &OutboxMessage::Marketing {
                    to,
                    purpose,
                    subject: b.subject,
                    text: b.text,
                    html: b.html,
                    unsubscribe,
                },
                ctx.now_ms,
            )?;
            Ok((view, true))
        })
        .await?;
    s.outbox_wake();
    Ok((
        if queued {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        Json(EmailQueued { queued, decision }),
    ))
}

/// The person's first identifier of `kind`, opened.
pub(crate) fn ledger_contact(
    conn: &mut dyn tarmo_store::conn::Conn,
    vault: &tarmo_store::vault::Vault,
    profile: ProfileId,
    kind: &str,
) -> tarmo_store::Result<Option<String>> {
    for row in conn.identifiers_of(profile)? {
        if row.kind == kind {
            let key = vault
                .data_key(row.key_owner, || conn.data_key_get(row.key_owner))?
                .ok_or_else(|| tarmo_store::Error::Corrupt("no data key".into()))?;
            let v = vault.open(
                &key,
                tarmo_store::vault::Place::IdentifierValue,
                row.key_owner,
                &row.sealed,
            )?;
            return String::from_utf8(v)
                .map(Some)
                .map_err(|e| tarmo_store::Error::Corrupt(e.to_string()));
        }
    }
    Ok(None)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreferenceLink {
    /// The person's preference page: what they allow, changeable without a login.
    pub url: String,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreferenceLinkQuery {
    /// The person's own language (`fi`, `he`, ...): the page opens in it
    /// whatever their browser asks for. Without it, the browser decides.
    language: Option<String>,
}

/// A signed link to the person's preference page, to put in a message.
#[utoipa::path(post, path = "/api/v1/profiles/{id}/preference-link", tag = "consent",
    params(("id" = i64, Path, description = "Profile id"), PreferenceLinkQuery),
    security(("admin_key" = [])),
    responses((status = 200, body = PreferenceLink), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn preference_link(
    State(s): State<Arc<AppState>>,
    p: Principal,
    Path(raw): Path<String>,
    Query(q): Query<PreferenceLinkQuery>,
) -> Result<Json<PreferenceLink>, ApiError> {
    let id = crate::profiles::profile_id(&raw)?;
    if let Some(l) = &q.language
        && !tarmo_core::consent::purpose::valid_language(l)
    {
        return Err(ApiError::new(
            Code::InvalidLanguage,
            "`language` must be a language tag such as fi, he or pt-BR",
        ));
    }
    // The page behind the link shows and changes every purpose, and lets
    // its holder ask for the person's data: not for a key bound to some.
    if p.grant.bound() {
        return Err(ApiError::new(
            Code::PurposeNotPermitted,
            "a preference link covers every purpose; a key bound to purposes cannot make one",
        ));
    }
    let store = s.store.clone();
    let grant = p.grant.clone();
    let profile = blocking(move || store.visible_kinds(&grant, id))
        .await?
        .map(|(p, _)| p)
        .ok_or_else(|| ApiError::new(Code::ProfileNotFound, "no profile matches"))?;
    Ok(Json(PreferenceLink {
        url: crate::pages::preference_url(&s, profile, q.language.as_deref()),
        expires_at: rfc3339(now_ms() + crate::pages::PREFERENCES_TTL_MS),
    }))
}
