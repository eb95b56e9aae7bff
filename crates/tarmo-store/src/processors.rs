//! The register of processors (GDPR Art. 28 and 30(1)(d)), the exports to
//! them with a disclosure recorded for every person, and the notifications
//! that tell them of an erasure (Art. 17(2) and 19).
//!
//! An export goes only for a purpose the processor is registered for, holds
//! only the data categories both the purpose and the processor name, and
//! includes a person only while the policy allows the purpose for them. A
//! webhook token is sealed with the installation key and never returned. An
//! erasure notification's payload (the person's identifiers) is sealed the
//! same way and wiped once delivered or given up.
//!
//! The use cases (`add`, `change`, `export_to`, ...) own their
//! transactions; every other function here runs inside the caller's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use tarmo_core::codes::Code;

use serde::Serialize;
use serde_json::{Map, Value, json};
use tarmo_core::consent::{DataCategory, PurposeId, Reason, decide};
use tarmo_core::processor::{ExportScope, ProcessorSpec, TokenChange, WebhookToken, format_date};

use crate::conn::{Conn, P, ProcessorId, ProfileId, RequestId, Row};
use crate::consent::{Catalog, Subject, subject_by_id, subject_by_identifier};
use crate::crypto::person;
use crate::lease::Claimant;
use crate::vault::{BlindIndex, Place, Sealed, Vault};
use crate::{Error, Result, rfc3339};

// --------------------------------------------------------------- register

/// A processor as the API shows it. The webhook token is never shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessorView {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub id: ProcessorId,
    pub name: String,
    /// What the processor does for the controller ("email delivery").
    pub role: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// The country is in the EEA, so sending data there is no transfer
    /// under GDPR Chapter V.
    pub in_eea: bool,
    pub transfer_safeguard: Option<String>,
    /// The data processing agreement (Art. 28(3)).
    pub dpa_reference: String,
    /// YYYY-MM-DD.
    pub dpa_signed_on: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub purposes: Vec<PurposeId>,
    pub data_categories: Vec<String>,
    /// Where erasures are announced (POST, JSON).
    pub erasure_webhook: Option<String>,
    /// Whether a bearer token is stored for the webhook.
    pub webhook_token_set: bool,
    pub created_at: String,
    pub updated_at: String,
}

const PROCESSOR_COLUMNS: &str = "id, name, role, country, transfer_safeguard, dpa_reference, \
     dpa_signed_on, purposes, data_categories, erasure_webhook, webhook_token IS NOT NULL, \
     created_ms, updated_ms";

fn json_list<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> Result<Vec<T>> {
    serde_json::from_str(&r.text(i)?).map_err(|e| Error::Corrupt(format!("processor list: {e}")))
}

fn processor_of(r: &Row) -> Result<ProcessorView> {
    let country = r.text(3)?;
    Ok(ProcessorView {
        id: ProcessorId(r.int(0)?),
        name: r.text(1)?,
        role: r.text(2)?,
        in_eea: tarmo_core::processor::EEA.contains(&country.as_str()),
        country,
        transfer_safeguard: r.opt_text(4)?,
        dpa_reference: r.text(5)?,
        dpa_signed_on: r.text(6)?,
        purposes: json_list(r, 7)?,
        data_categories: json_list(r, 8)?,
        erasure_webhook: r.opt_text(9)?,
        webhook_token_set: r.int(10)? != 0,
        created_at: rfc3339(r.int(11)?),
        updated_at: rfc3339(r.int(12)?),
    })
}

/// One processor by id.
pub fn get(conn: &mut dyn Conn, id: ProcessorId) -> Result<Option<ProcessorView>> {
    conn.query_opt(
        &format!("SELECT {PROCESSOR_COLUMNS} FROM processors WHERE id = $1"),
        &[P::from(id)],
    )?
    .map(|r| processor_of(&r))
    .transpose()
}

/// Every processor, by name.
pub fn list(conn: &mut dyn Conn) -> Result<Vec<ProcessorView>> {
    conn.query(
        &format!("SELECT {PROCESSOR_COLUMNS} FROM processors ORDER BY name, id"),
        &[],
    )?
    .iter()
    .map(processor_of)
    .collect()
}

/// Every processor, by name, read through the pool (the record of
/// processing lists them).
pub fn registered(svc: &crate::Services) -> Result<Vec<ProcessorView>> {
    svc.read(|conn, _| list(conn))
}

fn not_found() -> Error {
    Error::rejected(Code::ProcessorNotFound, "no processor with that id")
}

// ------------------------------------------------------------ use cases
//
// What the HTTP crate calls: each owns its transaction (a writer job, or a
// read on the pool); the functions after this section run inside one.

/// Add a processor to the register, in a writer transaction.
pub fn add(svc: &crate::Services, spec: ProcessorSpec) -> Result<ProcessorView> {
    svc.write(move |ctx| register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms))
}

/// Replace a processor's definition, in a writer transaction.
pub fn change(
    svc: &crate::Services,
    id: ProcessorId,
    spec: ProcessorSpec,
) -> Result<ProcessorView> {
    svc.write(move |ctx| update(ctx.conn, ctx.vault, &ctx.catalog, id, &spec, ctx.now_ms))
}

/// The register, by name.
pub fn all(svc: &crate::Services) -> Result<Vec<ProcessorView>> {
    svc.read(|conn, _| list(conn))
}

/// One processor of the register.
pub fn find(svc: &crate::Services, id: ProcessorId) -> Result<Option<ProcessorView>> {
    svc.read(|conn, _| get(conn, id))
}

/// Export people's data to a processor (see [`export`]), with their
/// disclosure records, in one writer transaction.
pub fn export_to(
    svc: &crate::Services,
    processor_id: ProcessorId,
    purpose: PurposeId,
    subjects: Vec<SubjectKey>,
    kinds: BTreeSet<tarmo_core::access::DataKind>,
) -> Result<ExportView> {
    svc.write(move |ctx| {
        export(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            processor_id,
            &purpose,
            &subjects,
            &kinds,
            ctx.now_ms,
        )
    })
}

/// Every disclosure of the person's data (see [`disclosures_of`]).
pub fn disclosures(svc: &crate::Services, profile: ProfileId) -> Result<Vec<DisclosureView>> {
    svc.read(|conn, _| disclosures_of(conn, profile))
}

/// The purposes must be in the catalog; the name (compared without regard
/// to ASCII case) must not belong to another processor.
fn check(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    spec: &ProcessorSpec,
    id: ProcessorId,
) -> Result<()> {
    for p in &spec.purposes {
        catalog.require(p.as_str())?;
    }
    let taken = conn.query_opt(
        "SELECT id FROM processors WHERE lower(name) = lower($1) AND id <> $2",
        &[P::Text(&spec.name), P::from(id)],
    )?;
    if taken.is_some() {
        return Err(Error::Rejected {
            code: Code::ProcessorNameTaken,
            message: "another processor has that name".into(),
        });
    }
    Ok(())
}

fn lists(spec: &ProcessorSpec) -> (String, String) {
    let purposes: Vec<&str> = spec.purposes.iter().map(|p| p.as_str()).collect();
    let categories: Vec<&str> = spec.data_categories.iter().map(|c| c.as_str()).collect();
    (
        serde_json::to_string(&purposes).expect("strings serialise"),
        serde_json::to_string(&categories).expect("strings serialise"),
    )
}

fn sealed_token(vault: &Vault, t: &WebhookToken) -> Result<Sealed> {
    vault.seal_system(Place::ProcessorSecret, t.expose().as_bytes())
}

/// Add a processor to the register.
pub fn register(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    spec: &ProcessorSpec,
    now_ms: i64,
) -> Result<ProcessorView> {
    check(conn, catalog, spec, ProcessorId(0))?;
    let (purposes, categories) = lists(spec);
    let token = match &spec.webhook_token {
        TokenChange::Set(t) => Some(sealed_token(vault, t)?),
        TokenChange::Keep | TokenChange::Remove => None,
    };
    let signed = format_date(spec.dpa_signed_on);
    let id = conn
        .query_opt(
            "INSERT INTO processors (name, role, country, transfer_safeguard, dpa_reference,
                 dpa_signed_on, purposes, data_categories, erasure_webhook, webhook_token,
                 created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
            &[
                P::Text(&spec.name),
                P::Text(&spec.role),
                P::Text(spec.country.as_str()),
                P::from(spec.transfer_safeguard.as_ref()),
                P::Text(&spec.dpa_reference),
                P::Text(&signed),
                P::Text(&purposes),
                P::Text(&categories),
                P::from(spec.erasure_webhook.as_ref()),
                P::from(token.as_ref()),
                P::Int(now_ms),
            ],
        )?
        .ok_or_else(|| Error::Backend("INSERT ... RETURNING gave no row".into()))?
        .int(0)
        .map(ProcessorId)?;
    get(conn, id)?.ok_or_else(not_found)
}

/// Replace a processor's definition. The stored webhook token stays unless
/// the definition sets or removes it (removing the webhook removes it).
pub fn update(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    id: ProcessorId,
    spec: &ProcessorSpec,
    now_ms: i64,
) -> Result<ProcessorView> {
    if get(conn, id)?.is_none() {
        return Err(not_found());
    }
    check(conn, catalog, spec, id)?;
    let (purposes, categories) = lists(spec);
    let signed = format_date(spec.dpa_signed_on);
    conn.exec(
        "UPDATE processors SET name = $2, role = $3, country = $4, transfer_safeguard = $5,
             dpa_reference = $6, dpa_signed_on = $7, purposes = $8, data_categories = $9,
             erasure_webhook = $10, updated_ms = $11 WHERE id = $1",
        &[
            P::from(id),
            P::Text(&spec.name),
            P::Text(&spec.role),
            P::Text(spec.country.as_str()),
            P::from(spec.transfer_safeguard.as_ref()),
            P::Text(&spec.dpa_reference),
            P::Text(&signed),
            P::Text(&purposes),
            P::Text(&categories),
            P::from(spec.erasure_webhook.as_ref()),
            P::Int(now_ms),
        ],
    )?;
    match &spec.webhook_token {
        TokenChange::Keep => {}
        TokenChange::Remove => {
            conn.exec(
                "UPDATE processors SET webhook_token = NULL WHERE id = $1",
                &[P::from(id)],
            )?;
        }
        TokenChange::Set(t) => {
            let sealed = sealed_token(vault, t)?;
            conn.exec(
                "UPDATE processors SET webhook_token = $2 WHERE id = $1",
                &[P::from(id), P::from(&sealed)],
            )?;
        }
    }
    get(conn, id)?.ok_or_else(not_found)
}

// ------------------------------------------------------------ disclosures

/// One recorded disclosure of a person's data to a processor.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DisclosureView {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub processor_id: ProcessorId,
    pub processor: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub purpose: PurposeId,
    pub categories: Vec<String>,
    pub at: String,
}

/// Record that the person's data of `categories` went to the processor.
pub fn record_disclosure(
    conn: &mut dyn Conn,
    profile: ProfileId,
    processor_id: ProcessorId,
    purpose: &PurposeId,
    categories: &[&str],
    now_ms: i64,
) -> Result<()> {
    let categories = serde_json::to_string(categories).expect("strings serialise");
    conn.exec(
        "INSERT INTO disclosures (profile_id, processor_id, purpose, categories, at_ms)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            P::Int(profile.0),
            P::from(processor_id),
            P::Text(purpose.as_str()),
            P::Text(&categories),
            P::Int(now_ms),
        ],
    )?;
    Ok(())
}

/// Every disclosure of the person's data (their current profile id), oldest
/// first: the recipients an access request lists.
pub fn disclosures_of(conn: &mut dyn Conn, profile: ProfileId) -> Result<Vec<DisclosureView>> {
    conn.query(
        "SELECT d.processor_id, p.name, d.purpose, d.categories, d.at_ms
         FROM disclosures d JOIN processors p ON p.id = d.processor_id
         WHERE d.profile_id = $1 ORDER BY d.at_ms, d.id",
        &[P::Int(profile.0)],
    )?
    .iter()
    .map(|r| {
        Ok(DisclosureView {
            processor_id: ProcessorId(r.int(0)?),
            processor: r.text(1)?,
            purpose: crate::consent::purpose_id(&r.text(2)?)?,
            categories: json_list(r, 3)?,
            at: rfc3339(r.int(4)?),
        })
    })
    .collect()
}

/// The disclosures of `from` now belong to `into` (a profile merge), so an
/// erasure of the merged person finds every processor that received data.
pub fn after_merge(conn: &mut dyn Conn, from: ProfileId, into: ProfileId) -> Result<()> {
    conn.exec(
        "UPDATE disclosures SET profile_id = $2 WHERE profile_id = $1",
        &[P::Int(from.0), P::Int(into.0)],
    )?;
    Ok(())
}

// ---------------------------------------------------------------- exports

/// How an export names a person.
#[derive(Debug, Clone, Copy)]
pub enum SubjectKey {
    Profile(ProfileId),
    Identifier(BlindIndex),
}

/// Most recent events exported per person.
pub const EXPORT_EVENTS_PER_PERSON: u32 = 1000;

/// Most people in one export.
pub const EXPORT_MAX_SUBJECTS: usize = 10_000;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// One person's data, limited to the export's categories. A field is
/// present only when a category covers it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedPerson {
    /// Where the person was in the request's `subjects`.
    pub position: usize,
    pub profile_id: ProfileId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifiers: Option<Vec<ExportedIdentifier>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub traits: Option<Map<String, Value>>,
    /// Newest first: `type`, `event` (track) or `name` (page, screen),
    /// `properties` and `timestamp`; never the context (IP address, device).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub events: Option<Vec<Value>>,
}

/// A person left out, by position only: nothing about them is revealed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExcludedSubject {
    pub position: usize,
    /// The policy's reason (no_consent, withdrawn, objected, restricted,
    /// suppressed, unknown_profile, ...), or `duplicate` when an earlier
    /// subject named the same person.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportView {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub processor_id: ProcessorId,
    pub processor: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub purpose: PurposeId,
    /// The categories exported: those both the purpose and the processor name.
    pub categories: Vec<String>,
    pub exported: Vec<ExportedPerson>,
    pub excluded: Vec<ExcludedSubject>,
    pub at: String,
}

/// Export people's data to a processor for a purpose, and record a
/// disclosure for each person exported. Refused (403) when the purpose is
/// not one the processor is registered for, or when the purpose and the
/// processor share no data category; people the policy does not allow the
/// purpose for now are listed as excluded. Only the kinds of data the
/// caller may see (`kinds`, its grant's) leave: a key that may not see
/// identifiers cannot send them to a processor either.
#[allow(clippy::too_many_arguments)]
pub fn export(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    processor_id: ProcessorId,
    purpose: &PurposeId,
    subjects: &[SubjectKey],
    kinds: &BTreeSet<tarmo_core::access::DataKind>,
    now_ms: i64,
) -> Result<ExportView> {
    let processor = get(conn, processor_id)?.ok_or_else(not_found)?;
    if !processor.purposes.contains(purpose) {
        return Err(Error::Rejected {
            code: Code::PurposeNotPermitted,
            message: format!("processor {processor_id} is not registered for purpose `{purpose}`",),
        });
    }
    let entry = catalog.require(purpose.as_str())?;
    let allowed: BTreeSet<&str> = processor
        .data_categories
        .iter()
        .map(String::as_str)
        .collect();
    let categories: Vec<DataCategory> = entry
        .spec
        .data_categories
        .iter()
        .filter(|c| allowed.contains(c.as_str()))
        .cloned()
        .collect();
    if categories.is_empty() {
        return Err(Error::Rejected {
            code: Code::NoCommonDataCategories,
            message: format!(
                "purpose `{purpose}` and processor {processor_id} share no data category"
            ),
        });
    }
    let names: Vec<&str> = categories.iter().map(DataCategory::as_str).collect();
    let whole = ExportScope::of(&categories);
    let scope = whole.narrowed(kinds);
    // What opens: the kinds the caller's grant sees (the scope narrows further).
    let sight = person::Sight::granted(kinds);
    if scope.is_empty() && !whole.is_empty() {
        return Err(Error::Rejected {
            code: Code::DataKindNotPermitted,
            message: format!(
                "this key may not see the data the shared categories ({}) stand for",
                names.join(", ")
            ),
        });
    }
    if scope.is_empty() {
        return Err(Error::rejected(
            Code::NoExportableCategories,
            format!(
                "the shared categories ({}) stand for no data Tarmo exports",
                names.join(", ")
            ),
        ));
    }
    if subjects.len() > EXPORT_MAX_SUBJECTS {
        return Err(Error::rejected(
            Code::TooManySubjects,
            "at most 10,000 people an export",
        ));
    }
    let rule = entry.rule;
    let mut exported = Vec::new();
    let mut excluded = Vec::new();
    let mut seen = HashSet::new();
    for (position, key) in subjects.iter().enumerate() {
        let subject = match key {
            SubjectKey::Profile(p) => subject_by_id(conn, *p, &entry.id)?,
            SubjectKey::Identifier(b) => subject_by_identifier(conn, b, purpose.as_str())?,
        };
        let (profile, verdict) = match subject {
            Subject::Known(p, st, flags) => (p, decide(&rule, None, st.as_ref(), flags, now_ms)),
            Subject::Suppressed(_) => {
                excluded.push(ExcludedSubject {
                    position,
                    reason: Reason::Suppressed.as_str(),
                });
                continue;
            }
            Subject::Unknown => {
                excluded.push(ExcludedSubject {
                    position,
                    reason: Reason::UnknownProfile.as_str(),
                });
                continue;
            }
        };
        if !verdict.allowed {
            excluded.push(ExcludedSubject {
                position,
                reason: verdict.reason.as_str(),
            });
            continue;
        }
        if !seen.insert(profile) {
            excluded.push(ExcludedSubject {
                position,
                reason: "duplicate",
            });
            continue;
        }
        let person = person_data(conn, vault, &sight, profile, position, &scope)?;
        record_disclosure(conn, profile, processor_id, purpose, &names, now_ms)?;
        exported.push(person);
    }
    Ok(ExportView {
        processor_id,
        processor: processor.name,
        purpose: purpose.clone(),
        categories: names.iter().map(|c| c.to_string()).collect(),
        exported,
        excluded,
        at: rfc3339(now_ms),
    })
}

fn person_data(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &person::Sight,
    profile: ProfileId,
    position: usize,
    scope: &ExportScope,
) -> Result<ExportedPerson> {
    let rows = conn.identifiers_of(profile)?;
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let wants_identifiers = scope.contact || scope.all_identifiers;
    let mut identifiers = Vec::new();
    for row in rows.iter().filter(|r| scope.identifier(&r.kind)) {
        if let Some(value) = person::identifier(conn, vault, sight, row)? {
            identifiers.push(ExportedIdentifier {
                kind: row.kind.clone(),
                value,
            });
        }
    }
    let traits = if scope.traits || scope.address {
        let mut out = Map::new();
        if let Some(sealed) = conn.profile_get(profile)?.and_then(|p| p.traits) {
            let all = person::traits(conn, vault, sight, profile, &sealed)?.to_object();
            out.extend(
                all.into_iter()
                    .filter(|(k, _)| scope.trait_named(k, &kinds)),
            );
        }
        Some(out)
    } else {
        None
    };
    let events = if scope.event("track") {
        let kinds = if scope.event("page") {
            "'track', 'page', 'screen'"
        } else {
            "'track'"
        };
        let rows = conn.query(
            &format!(
                "SELECT key_owner, kind, ts_ms, body FROM events
                 WHERE profile_id = $1 AND kind IN ({kinds}) ORDER BY id DESC LIMIT $2"
            ),
            &[P::Int(profile.0), P::Int(EXPORT_EVENTS_PER_PERSON.into())],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let body: Value = person::open_json(
                conn,
                vault,
                sight,
                ProfileId(r.int(0)?),
                Place::EventBody,
                &r.sealed(3)?,
            )?;
            let kind = r.text(1)?;
            let mut e = Map::new();
            let name_field = if kind == "track" { "event" } else { "name" };
            if let Some(v) = body.get(name_field) {
                e.insert(name_field.into(), v.clone());
            }
            e.insert(
                "properties".into(),
                body.get("properties").cloned().unwrap_or_else(|| json!({})),
            );
            e.insert("timestamp".into(), Value::String(rfc3339(r.int(2)?)));
            e.insert("type".into(), Value::String(kind));
            out.push(Value::Object(e));
        }
        Some(out)
    } else {
        None
    };
    Ok(ExportedPerson {
        position,
        profile_id: profile,
        identifiers: wants_identifiers.then_some(identifiers),
        traits,
        events,
    })
}

// ---------------------------------------------------- erasure notifications

/// A notification to a processor, as a data subject request shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationView {
    pub id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub processor_id: ProcessorId,
    pub processor: String,
    /// `pending` (waiting for its next attempt), `sending`, `delivered`,
    /// `failed` (given up: tell the processor another way), or `manual`
    /// (the processor has no erasure webhook: tell it another way).
    pub status: String,
    pub attempts: i64,
    /// What went wrong last, in words that carry no personal data.
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

/// The notifications made for one data subject request, by processor name.
pub fn notifications_for_request(
    conn: &mut dyn Conn,
    request_id: RequestId,
) -> Result<Vec<NotificationView>> {
    conn.query(
        "SELECT n.id, n.processor_id, COALESCE(p.name, ''), n.status, n.attempts, n.last_error,
                n.next_attempt_ms, n.delivered_ms, n.created_ms
         FROM processor_notifications n LEFT JOIN processors p ON p.id = n.processor_id
         WHERE n.request_id = $1 ORDER BY p.name, n.id",
        &[P::from(request_id)],
    )?
    .iter()
    .map(|r| {
        let status = r.text(3)?;
        Ok(NotificationView {
            id: r.int(0)?,
            processor_id: ProcessorId(r.int(1)?),
            processor: r.text(2)?,
            attempts: r.int(4)?,
            last_error: r.opt_text(5)?,
            next_attempt_at: (status == "pending")
                .then(|| r.int(6))
                .transpose()?
                .map(rfc3339),
            delivered_at: r.opt_int(7)?.map(rfc3339),
            created_at: rfc3339(r.int(8)?),
            status,
        })
    })
    .collect()
}

/// Queue an erasure notification for every processor that received data of
/// any of `profile_ids` (the person's current profile id first, then any
/// profiles merged into it). Call it in the erasure's transaction, before
/// the person's disclosures are deleted.
///
/// A processor with an erasure webhook gets a `pending` notification whose
/// sealed payload is `{"type": "erasure", "request_id", "profile_id",
/// "identifiers": [{"type", "value"}], "requested_at"}`; `identifiers` holds
/// only the kinds the processor received (see
/// [`tarmo_core::processor::ExportScope::identifier`]), and `requested_at`
/// is the request's receipt time (now, when no such request is stored). A
/// processor without a webhook gets a `manual` notification: someone must
/// tell it. A processor already notified for this request is skipped, so a
/// retried erasure queues nothing twice. The number of `pending`
/// notifications queued.
pub fn enqueue_erasure_notifications<K: AsRef<str>, V: AsRef<str>>(
    conn: &mut dyn Conn,
    vault: &Vault,
    request_id: RequestId,
    profile_ids: &[ProfileId],
    identifiers: &[(K, V)],
    now_ms: i64,
) -> Result<usize> {
    let Some(&first) = profile_ids.first() else {
        return Ok(0);
    };
    let mut received: BTreeMap<ProcessorId, BTreeSet<DataCategory>> = BTreeMap::new();
    for &p in profile_ids {
        for r in conn.query(
            "SELECT processor_id, categories FROM disclosures WHERE profile_id = $1",
            &[P::Int(p.0)],
        )? {
            let cats = received.entry(ProcessorId(r.int(0)?)).or_default();
            cats.extend(
                json_list::<String>(&r, 1)?
                    .iter()
                    .filter_map(|c| DataCategory::parse(c).ok()),
            );
        }
    }
    let requested_ms = conn
        .query_opt(
            "SELECT received_ms FROM requests WHERE id = $1",
            &[P::from(request_id)],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(now_ms);
    let mut queued = 0;
    for (processor_id, cats) in received {
        let Some(r) = conn.query_opt(
            "SELECT erasure_webhook FROM processors WHERE id = $1",
            &[P::from(processor_id)],
        )?
        else {
            continue;
        };
        let already = conn.query_opt(
            "SELECT id FROM processor_notifications WHERE request_id = $1 AND processor_id = $2",
            &[P::from(request_id), P::from(processor_id)],
        )?;
        if already.is_some() {
            continue;
        }
        let (status, sealed) = if r.opt_text(0)?.is_some() {
            let scope = ExportScope::of(&cats);
            let ids: Vec<Value> = identifiers
                .iter()
                .filter(|(k, _)| scope.identifier(k.as_ref()))
                .map(|(k, v)| json!({"type": k.as_ref(), "value": v.as_ref()}))
                .collect();
            let payload = json!({
                "type": "erasure",
                "request_id": request_id,
                "profile_id": first,
                "identifiers": ids,
                "requested_at": rfc3339(requested_ms),
            });
            let plain = serde_json::to_vec(&payload).expect("JSON serialises");
            (
                "pending",
                Some(vault.seal_system(Place::ProcessorNotification, &plain)?),
            )
        } else {
            ("manual", None)
        };
        conn.exec(
            "INSERT INTO processor_notifications (request_id, processor_id, payload, status,
                 attempts, next_attempt_ms, created_ms)
             VALUES ($1, $2, $3, $4, 0, $5, $5)",
            &[
                P::from(request_id),
                P::from(processor_id),
                P::from(sealed.as_ref()),
                P::Text(status),
                P::Int(now_ms),
            ],
        )?;
        if status == "pending" {
            queued += 1;
        }
    }
    Ok(queued)
}

/// A notification claimed for delivery: where to send it and what.
pub struct ClaimedNotification {
    pub id: i64,
    pub request_id: RequestId,
    pub processor_id: ProcessorId,
    /// Attempts including this one.
    pub attempts: i64,
    /// The processor's webhook now; `None` when it was removed since.
    pub webhook: Option<String>,
    pub token: Option<WebhookToken>,
    /// Personal data (identifiers): never log it.
    pub payload: Value,
}

impl std::fmt::Debug for ClaimedNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedNotification")
            .field("id", &self.id)
            .field("request_id", &self.request_id)
            .field("processor_id", &self.processor_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Claim up to `limit` due notifications for `who`: mark them `sending`
/// under a lease and open them. Due are pending notifications whose time
/// came, and those whose deliverer's lease ran out (a node that died).
pub fn claim_due_notifications(
    conn: &mut dyn Conn,
    vault: &Vault,
    who: &Claimant,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedNotification>> {
    let sql = format!(
        "SELECT n.id, n.request_id, n.processor_id, n.attempts, n.payload, p.erasure_webhook,
                p.webhook_token
         FROM processor_notifications n LEFT JOIN processors p ON p.id = n.processor_id
         WHERE (n.status = 'pending' AND n.next_attempt_ms <= $1)
            OR (n.status = 'sending' AND n.lease_until <= $1)
         ORDER BY n.next_attempt_ms, n.id LIMIT $2{}",
        conn.skip_locked("n")
    );
    let rows = conn.query(&sql, &[P::Int(now_ms), P::Int(limit)])?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id = r.int(0)?;
        // Another node may have claimed it since the read: only one wins.
        let won = conn.exec(
            "UPDATE processor_notifications SET status = 'sending', attempts = attempts + 1,
                 claimed_by = $2, lease_until = $3
             WHERE id = $1 AND (status = 'pending' OR (status = 'sending' AND lease_until <= $4))",
            &[
                P::from(id),
                P::Text(&who.node),
                P::Int(who.until(now_ms)),
                P::Int(now_ms),
            ],
        )? == 1;
        if !won {
            continue;
        }
        let Some(sealed) = r.opt_sealed(4)? else {
            mark_failed(conn, who, id, "the payload is missing")?;
            continue;
        };
        let opened = open_notification(vault, &sealed, r.opt_sealed(6)?.as_ref());
        let Ok((payload, token)) = opened else {
            // Not worth blocking the queue for: someone must tell this
            // processor another way.
            tracing::error!(
                notification_id = id,
                "an erasure notification does not open"
            );
            mark_failed(conn, who, id, "the sealed payload or token does not open")?;
            continue;
        };
        out.push(ClaimedNotification {
            id,
            request_id: RequestId(r.int(1)?),
            processor_id: ProcessorId(r.int(2)?),
            attempts: r.int(3)? + 1,
            webhook: r.opt_text(5)?,
            token,
            payload,
        });
    }
    Ok(out)
}

fn open_notification(
    vault: &Vault,
    payload: &Sealed,
    token: Option<&Sealed>,
) -> Result<(Value, Option<WebhookToken>)> {
    let plain = vault.open_system(Place::ProcessorNotification, payload)?;
    let payload = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
    let token = match token {
        None => None,
        Some(s) => {
            let t = vault.open_system(Place::ProcessorSecret, s)?;
            let t = String::from_utf8(t).map_err(|e| Error::Corrupt(e.to_string()))?;
            Some(WebhookToken::parse(&t).map_err(|e| Error::Corrupt(e.to_string()))?)
        }
    };
    Ok((payload, token))
}

/// A processor's webhook and its bearer token, opened, for a send to it
/// (a webhook automation's push or call list). `None`: no such processor,
/// or it has no webhook.
pub fn webhook_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    id: ProcessorId,
) -> Result<Option<(String, Option<String>)>> {
    let Some(r) = conn.query_opt(
        "SELECT erasure_webhook, webhook_token FROM processors WHERE id = $1",
        &[P::from(id)],
    )?
    else {
        return Ok(None);
    };
    let Some(url) = r.opt_text(0)? else {
        return Ok(None);
    };
    let token = match r.opt_sealed(1)? {
        None => None,
        Some(s) => {
            let t = vault.open_system(Place::ProcessorSecret, &s)?;
            Some(String::from_utf8(t).map_err(|e| Error::Corrupt(e.to_string()))?)
        }
    };
    Ok(Some((url, token)))
}

/// Delivered: the payload (identifiers) is wiped. Only while `who` holds
/// the claim; `false` when it no longer did.
pub fn mark_delivered(conn: &mut dyn Conn, who: &Claimant, id: i64, now_ms: i64) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE processor_notifications SET status = 'delivered', delivered_ms = $2,
             payload = NULL, last_error = NULL, lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $3",
        &[P::from(id), P::Int(now_ms), P::Text(&who.node)],
    )? == 1)
}

/// Try again at `next_ms`. `error` must hold no personal data. Only while
/// `who` holds the claim.
pub fn mark_retry(
    conn: &mut dyn Conn,
    who: &Claimant,
    id: i64,
    next_ms: i64,
    error: &str,
) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE processor_notifications SET status = 'pending', next_attempt_ms = $2,
             last_error = $3, claimed_by = NULL, lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $4",
        &[
            P::from(id),
            P::Int(next_ms),
            P::Text(error),
            P::Text(&who.node),
        ],
    )? == 1)
}

/// Given up (a permanent refusal or too many attempts): the payload is
/// wiped. `error` must hold no personal data. Only while `who` holds the
/// claim.
pub fn mark_failed(conn: &mut dyn Conn, who: &Claimant, id: i64, error: &str) -> Result<bool> {
    Ok(conn.exec(
        "UPDATE processor_notifications SET status = 'failed', payload = NULL, last_error = $2,
             lease_until = NULL
         WHERE id = $1 AND status = 'sending' AND claimed_by = $3",
        &[P::from(id), P::Text(error), P::Text(&who.node)],
    )? == 1)
}

/// Extend `who`'s leases on these notifications; the ids it still holds.
pub fn renew_notifications(
    conn: &mut dyn Conn,
    who: &Claimant,
    ids: &[i64],
    now_ms: i64,
) -> Result<Vec<i64>> {
    let mut held = Vec::with_capacity(ids.len());
    for &id in ids {
        let n = conn.exec(
            "UPDATE processor_notifications SET lease_until = $3
             WHERE id = $1 AND status = 'sending' AND claimed_by = $2",
            &[P::from(id), P::Text(&who.node), P::Int(who.until(now_ms))],
        )?;
        if n == 1 {
            held.push(id);
        }
    }
    Ok(held)
}

/// After a restart: the notifications this node was delivering are due
/// again; other nodes' claims are theirs until their leases run out.
/// The number recovered.
pub fn recover_notifications(conn: &mut dyn Conn, who: &Claimant) -> Result<u64> {
    conn.exec(
        "UPDATE processor_notifications SET status = 'pending', claimed_by = NULL,
             lease_until = NULL
         WHERE status = 'sending' AND (claimed_by = $1 OR claimed_by IS NULL)",
        &[P::Text(&who.node)],
    )
}

/// Counts by status, for metrics.
pub fn notification_counts(conn: &mut dyn Conn) -> Result<Vec<(String, i64)>> {
    conn.query(
        "SELECT status, count(*) FROM processor_notifications GROUP BY status ORDER BY status",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}
