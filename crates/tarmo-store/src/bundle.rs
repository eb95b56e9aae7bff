//! The access and portability bundle (Art. 15 and 20): everything held about
//! a person, opened, with what it is used for, where it came from and whom
//! it was given to.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::conn::{Conn, KeyId, P, ProfileId};
use crate::consent::{self, Catalog, LedgerEntryView};
use crate::crypto::person;
use crate::vault::{Place, Vault};
use crate::{IdentifierView, MergeView, Result, rfc3339};
use tarmo_core::consent::PurposeId;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleEvent {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub received_at: String,
    /// The write key (source) that sent it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub source_id: Option<KeyId>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub message: Value,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleConsent {
    #[serde(flatten)]
    pub entry: LedgerEntryView,
    /// The notice text the person was shown, by language.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub notice_text: Value,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundlePurpose {
    pub id: String,
    pub name: String,
    pub legal_basis: String,
    pub balancing_note: Option<String>,
    pub data_categories: Vec<String>,
    pub channels: Vec<String>,
    pub retention_days: u32,
    pub consent_lifetime_days: Option<u32>,
    /// The person's current state for it, where one is recorded.
    pub your_decision: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleSource {
    pub source_id: i64,
    /// The name the source's write key was given.
    pub name: String,
    pub events: i64,
    pub first_received: String,
    pub last_received: String,
}

/// A file imported from the till or the CRM that brought some of the
/// person's data (their events name it in `context.import`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleImport {
    pub import_id: i64,
    /// customers or orders.
    pub kind: String,
    /// Where the file came from, as the operator said.
    pub source: String,
    /// Where the proof of lawful collection is kept.
    pub documentation: String,
    pub file: String,
    pub events: i64,
    pub imported_at: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleRecipient {
    pub processor: String,
    pub role: String,
    pub country: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub purpose: PurposeId,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data_categories: Value,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bundle {
    pub generated_at: String,
    pub profile_id: ProfileId,
    pub identifiers: Vec<IdentifierView>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub traits: Map<String, Value>,
    pub events: Vec<BundleEvent>,
    pub consents: Vec<BundleConsent>,
    pub merges: Vec<MergeView>,
    /// Segments the person belongs to, with the purpose each serves.
    pub segments: Vec<BundleSegment>,
    pub purposes: Vec<BundlePurpose>,
    pub sources: Vec<BundleSource>,
    /// Imported files the person's data came from.
    pub imports: Vec<BundleImport>,
    pub recipients: Vec<BundleRecipient>,
}

/// A segment the person is in.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleSegment {
    pub id: String,
    pub name: String,
    /// The purpose the segment serves.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub purpose: PurposeId,
    /// When they entered it.
    pub since: String,
}

/// Collect the bundle for a person's current profile.
pub fn collect(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    profile: ProfileId,
    view: crate::ProfileView,
    now_ms: i64,
) -> Result<Bundle> {
    // The person's own request: everything held about them opens.
    let sight = person::Sight::duty(person::Duty::PersonsRequest);
    let mut events = Vec::new();
    let mut last = 0i64;
    loop {
        let rows = conn.query(
            "SELECT id, key_owner, kind, ts_ms, received_ms, body, source_id FROM events
             WHERE profile_id = $1 AND id > $2 ORDER BY id LIMIT 2000",
            &[P::Int(profile.0), P::Int(last)],
        )?;
        let Some(l) = rows.last() else { break };
        last = l.int(0)?;
        for r in &rows {
            let message = person::open_json(
                conn,
                vault,
                &sight,
                ProfileId(r.int(1)?),
                Place::EventBody,
                &r.sealed(5)?,
            )?;
            events.push(BundleEvent {
                id: r.int(0)?,
                kind: r.text(2)?,
                timestamp: rfc3339(r.int(3)?),
                received_at: rfc3339(r.int(4)?),
                source_id: r.opt_int(6)?.map(KeyId),
                message,
            });
        }
    }

    let mut consents = Vec::new();
    for entry in consent::history(conn, vault, &sight, profile)? {
        let texts = consent::notice_texts(conn, entry.purpose.as_str(), &entry.notice_version)?;
        consents.push(BundleConsent {
            notice_text: serde_json::to_value(texts).expect("serialises"),
            entry,
        });
    }

    let states = consent::states(conn, profile)?;
    let purposes = catalog
        .entries()
        .into_iter()
        .map(|c| BundlePurpose {
            id: c.id.to_string(),
            name: c.spec.name.clone(),
            legal_basis: c.spec.legal_basis.as_str().into(),
            balancing_note: c.spec.balancing_note.clone(),
            data_categories: c
                .spec
                .data_categories
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect(),
            channels: c
                .spec
                .channels
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect(),
            retention_days: c.spec.retention_days,
            consent_lifetime_days: c.spec.consent_lifetime_days,
            your_decision: states
                .iter()
                .find(|(p, _)| p == c.id.as_str())
                .map(|(_, s)| s.decision.as_str().to_owned()),
        })
        .collect();

    let sources = conn
        .query(
            "SELECT e.source_id, COALESCE(k.name, ''), count(*), min(e.received_ms), max(e.received_ms)
             FROM events e LEFT JOIN api_keys k ON k.id = e.source_id
             WHERE e.profile_id = $1 AND e.source_id IS NOT NULL AND e.source_id >= 0
             GROUP BY e.source_id, k.name ORDER BY e.source_id",
            &[P::Int(profile.0)],
        )?
        .iter()
        .map(|r| {
            Ok(BundleSource {
                source_id: r.int(0)?,
                name: r.text(1)?,
                events: r.int(2)?,
                first_received: rfc3339(r.int(3)?),
                last_received: rfc3339(r.int(4)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // Imports record their events under minus the import's id.
    let mut imports = Vec::new();
    for r in conn.query(
        "SELECT -e.source_id, count(*), min(e.received_ms) FROM events e
         WHERE e.profile_id = $1 AND e.source_id < 0 GROUP BY e.source_id ORDER BY e.source_id DESC",
        &[P::Int(profile.0)],
    )? {
        let id = r.int(0)?;
        if let Some(v) = crate::imports::get(conn, vault, id)? {
            imports.push(BundleImport {
                import_id: id,
                kind: v.kind.as_str().to_owned(),
                source: v.source,
                documentation: v.documentation,
                file: v.file,
                events: r.int(1)?,
                imported_at: rfc3339(r.int(2)?),
            });
        }
    }

    let recipients = conn
        .query(
            "SELECT p.name, p.role, p.country, d.purpose, d.categories, d.at_ms
             FROM disclosures d JOIN processors p ON p.id = d.processor_id
             WHERE d.profile_id = $1
                OR d.profile_id IN (SELECT id FROM profiles WHERE merged_into = $1)
             ORDER BY d.at_ms, d.id",
            &[P::Int(profile.0)],
        )?
        .iter()
        .map(|r| {
            Ok(BundleRecipient {
                processor: r.text(0)?,
                role: r.text(1)?,
                country: r.text(2)?,
                purpose: consent::purpose_id(&r.text(3)?)?,
                data_categories: serde_json::from_str(&r.text(4)?).unwrap_or(Value::Null),
                at: rfc3339(r.int(5)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut segments = Vec::new();
    for r in conn.query(
        "SELECT m.segment_id, s.name, s.purpose_id, m.since_ms FROM segment_members m
         JOIN segments s ON s.id = m.segment_id WHERE m.profile_id = $1 ORDER BY m.segment_id",
        &[P::Int(profile.0)],
    )? {
        segments.push(BundleSegment {
            id: r.text(0)?,
            name: r.text(1)?,
            purpose: consent::purpose_id(&r.text(2)?)?,
            since: rfc3339(r.int(3)?),
        });
    }

    Ok(Bundle {
        generated_at: rfc3339(now_ms),
        profile_id: profile,
        identifiers: view.identifiers,
        traits: view.traits,
        events,
        consents,
        merges: view.merges,
        segments,
        purposes,
        sources,
        imports,
        recipients,
    })
}
