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
    Channel, ConsentDecision, Method, PurposeId, PurposeSpec, Verdict, decide,
};
use tarmo_store::conn::ProfileId;
use tarmo_store::consent::{
    self as ledger, Judged, LedgerEntryView, PurposeChange, PurposeVersionView, ToRecord,
};
use tarmo_store::doi::{self, Subscribe};
use tarmo_store::outbox::{self, MarketingEmail};
use tarmo_store::preferences;
use tarmo_store::{now_ms, rfc3339};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody, blocking};

/// Where the processor handlers found these before they moved to
/// [`crate::subject`].
pub(crate) use crate::subject::{Lookup, SubjectRef, subject_ref_lookup};

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
    v.history = Some(
        blocking({
            let svc = s.svc.clone();
            move || ledger::purpose_versions(&svc, &id)
        })
        .await?,
    );
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
    let change = blocking({
        let svc = s.svc.clone();
        move || ledger::define_purpose(&svc, id, spec, q.requires_reconsent)
    })
    .await?;
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
        parsed.push(ToRecord {
            lookup,
            identifier: ident.as_ref().map(|i| s.store.prepare_identifier(i)),
            purpose: c.id.clone(),
            decision,
            method,
            channel,
            notice_version: e.notice_version,
            source: e.source,
            evidence: e.evidence,
        });
    }
    let recorded = crate::replied(|reply| ledger::record_then(&s.svc, parsed, reply)).await?;
    let mut out = Vec::with_capacity(recorded.len());
    for r in recorded {
        out.push(Recorded {
            profile_id: match r.profile_id {
                Some(id) => s.visible_id(&p, id).await?,
                None => None,
            },
            seq: r.seq,
            suppressed: r.suppressed,
        });
    }
    Ok(Json(RecordedList { recorded: out }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentStateView {
    #[schema(value_type = String)]
    pub purpose: PurposeId,
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
    let grant = p.grant.clone();
    let ledger::PersonConsents {
        profile,
        states,
        flags,
        entries,
    } = blocking({
        let svc = s.svc.clone();
        move || ledger::consents_of(&svc, &grant, id)
    })
    .await?;
    s.log_access(&p, "read", vec![profile]).await?;
    let now = now_ms();
    let states = states
        .into_iter()
        .map(|(purpose, st)| {
            let v = catalog
                .get(purpose.as_str())
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
    #[schema(value_type = String)]
    pub purpose: PurposeId,
    /// The person's current profile id; null when unknown or erased.
    pub profile_id: Option<ProfileId>,
}

fn verdict_view(purpose: PurposeId, profile: Option<ProfileId>, v: Verdict) -> DecisionView {
    DecisionView {
        allowed: v.allowed,
        basis: v.basis.as_str(),
        reason: v.reason.as_str(),
        since: v.since_ms.map(rfc3339),
        purpose,
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
    // The purpose travels as the catalog's id from here on.
    let purpose = c.id.clone();
    // A point read, but still off the async workers: a database that does
    // not answer must stall this request, not the runtime.
    let (subject, purpose) = blocking({
        let svc = s.svc.clone();
        move || Ok((ledger::subject_for(&svc, lookup, &purpose)?, purpose))
    })
    .await?;
    let Judged {
        profile,
        verdict: v,
        any_channel,
    } = ledger::judge(&rule, channel, subject, now_ms());
    let profile = shown_id(&p, profile, any_channel);
    s.access.count(
        p.key.id,
        p.key.user_id,
        &p.key.roles,
        &p.key.purposes,
        p.route.as_str(),
        1,
    );
    Ok(Json(verdict_view(purpose, profile, v)))
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
    let entry = catalog.require(&b.purpose)?;
    let (rule, purpose) = (entry.rule, entry.id.clone());
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
    let subjects = blocking({
        let svc = s.svc.clone();
        let purpose = purpose.clone();
        move || ledger::subjects_for(&svc, lookups, &purpose)
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
                let j = ledger::judge(&rule, channel, sub, now);
                verdict_view(
                    purpose.clone(),
                    shown_id(&p, j.profile, j.any_channel),
                    j.verdict,
                )
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
    #[schema(value_type = Vec<String>)]
    pub pending: Vec<PurposeId>,
    #[schema(value_type = Vec<String>)]
    pub already_granted: Vec<PurposeId>,
    pub expires_at: Option<String>,
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
        evidence: crate::subject::evidence_of(b.ip, b.user_agent),
        token_ttl_ms: s.config.token_ttl.as_millis() as i64,
    };
    let r = blocking({
        let svc = s.svc.clone();
        move || doi::subscribe_person(&svc, req)
    })
    .await?;
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
    let entry = catalog.require(&b.purpose)?;
    let (rule, purpose) = (entry.rule, entry.id.clone());
    p.may_act_for(&b.purpose)?;
    let (lookup, _) = subject_ref_lookup(&s, &b.recipient)?;
    let email = MarketingEmail {
        subject: b.subject,
        text: b.text,
        html: b.html,
    };
    let (judged, queued) = blocking({
        let svc = s.svc.clone();
        let purpose = purpose.clone();
        move || outbox::queue_marketing_email(&svc, lookup, purpose, rule, email)
    })
    .await?;
    let decision = verdict_view(
        purpose,
        shown_id(&p, judged.profile, judged.any_channel),
        judged.verdict,
    );
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
        url: preference_url(&s, profile, q.language.as_deref()),
        expires_at: rfc3339(now_ms() + preferences::PREFERENCES_TTL_MS),
    }))
}

/// A link to the person's preference page, in their language when known.
pub(crate) fn preference_url(s: &AppState, profile: ProfileId, language: Option<&str>) -> String {
    let token = preferences::preference_token(&s.svc, profile, language);
    format!("{}/p/{token}", s.config.public_url)
}
