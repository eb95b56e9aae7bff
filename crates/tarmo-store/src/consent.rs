//! The purpose catalog and the consent ledger in the store.
//!
//! The ledger is append-only and hash-chained: each entry commits to the one
//! before it, and the newest entry's hash is kept in `meta`, signed with the
//! installation's signing key (wrapped by the master key), so that neither an
//! edited entry, a removed one, nor a cut-off tail goes unnoticed. Evidence (IP address, user agent,
//! the string a CMP sent) is sealed under the person's data key; the chain
//! hashes the sealed bytes, so crypto-shredding a person keeps it verifiable.
//!
//! `consent_state` is the fold of the ledger (see `tarmo_core::consent::fold`),
//! updated in the same transaction as every append, and rebuilt identically
//! from the ledger by [`fold_all`].
//!
//! Every function here runs inside the caller's transaction, except the use
//! cases at the end (under "use cases"), which own theirs through
//! [`Services`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tarmo_core::codes::Code;

use serde::Serialize;
use serde_json::{Map, Value};
use tarmo_core::consent::ledger::{ChainFields, chain_hash};
use tarmo_core::consent::{
    Channel, ConsentDecision, ConsentState, EntryFacts, Method, ProfileFlags, PurposeId,
    PurposeRule, PurposeSpec, check_channel_entry, check_entry, fold, gpc_applies,
};

use crate::conn::{Conn, P, ProfileId, Row, TxLock};
pub use crate::crypto::chain::{BrokenLink, VerifyReport};
use crate::crypto::chain::{Chain, Link};
use crate::crypto::person;
use crate::resolve::PreparedIdentifier;
use crate::service::Services;
use crate::vault::{BlindIndex, Place, Vault};
use crate::writer::TxCtx;
use crate::{Error, Result, rfc3339};

// ---------------------------------------------------------------- catalog

/// One purpose as the catalog holds it now.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub id: PurposeId,
    pub spec: PurposeSpec,
    pub rule: PurposeRule,
    /// The hash of the current notice texts.
    pub notice_version: String,
    /// The current notice's number within the purpose (1, 2, ...).
    pub notice_seq: u32,
    /// Number of the purpose's current definition (every change makes one).
    pub version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The purposes, as loaded at one moment.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    by_id: HashMap<String, CatalogEntry>,
    pub generation: i64,
}

impl Catalog {
    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.by_id.get(id)
    }

    /// The purpose, or the error a client gets for naming an unknown one.
    pub fn require(&self, id: &str) -> Result<&CatalogEntry> {
        self.by_id.get(id).ok_or_else(|| {
            Error::rejected(
                Code::UnknownPurpose,
                format!(
                    "unknown purpose `{}`; see GET /api/v1/purposes",
                    id.chars().take(64).collect::<String>()
                ),
            )
        })
    }

    /// Every purpose, in id order.
    pub fn entries(&self) -> Vec<&CatalogEntry> {
        let mut v: Vec<_> = self.by_id.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

const GENERATION_KEY: &str = "catalog_generation";

/// The catalog as this process last loaded it. Another node (or process) may
/// change it, so the generation in the store is checked again once its copy
/// is older than [`CATALOG_RECHECK`].
pub struct CatalogCache {
    inner: std::sync::RwLock<(Arc<Catalog>, Instant)>,
}

/// How long a loaded catalog is used before the store's generation is
/// checked again: the longest another node's purpose change takes to bite
/// (half a second, so that a change reaches every node within a second
/// with the request that sees it; the check is one point read).
pub const CATALOG_RECHECK: Duration = Duration::from_millis(500);

impl Default for CatalogCache {
    fn default() -> Self {
        Self {
            inner: std::sync::RwLock::new((
                Arc::new(Catalog {
                    by_id: HashMap::new(),
                    generation: -1,
                }),
                Instant::now() - CATALOG_RECHECK * 2,
            )),
        }
    }
}

impl CatalogCache {
    /// The loaded catalog, if it was checked against the store recently.
    pub fn fresh(&self) -> Option<Arc<Catalog>> {
        let g = self.inner.read().expect("catalog lock");
        (g.1.elapsed() < CATALOG_RECHECK).then(|| g.0.clone())
    }

    /// The current catalog, reloaded through `conn` if another writer changed it.
    pub fn get(&self, conn: &mut dyn Conn) -> Result<Arc<Catalog>> {
        {
            let g = self.inner.read().expect("catalog lock");
            if g.1.elapsed() < CATALOG_RECHECK {
                return Ok(g.0.clone());
            }
        }
        let generation = catalog_generation(conn)?;
        let mut g = self.inner.write().expect("catalog lock");
        if g.0.generation != generation {
            g.0 = Arc::new(load_catalog(conn)?);
        }
        g.1 = Instant::now();
        Ok(g.0.clone())
    }

    /// Forget the loaded copy (after this process changed the catalog).
    pub fn invalidate(&self) {
        let mut g = self.inner.write().expect("catalog lock");
        g.0 = Arc::new(Catalog {
            by_id: HashMap::new(),
            generation: -1,
        });
        g.1 = Instant::now() - CATALOG_RECHECK * 2;
    }
}

/// A number that changes whenever any node changes the catalog.
pub fn catalog_generation(conn: &mut dyn Conn) -> Result<i64> {
    Ok(conn
        .meta_get(GENERATION_KEY)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0))
}

pub fn load_catalog(conn: &mut dyn Conn) -> Result<Catalog> {
    let generation = catalog_generation(conn)?;
    let rows = conn.query(
        "SELECT p.id, p.spec, p.notice_seq, p.min_notice_seq, p.created_ms, p.updated_ms,
                (SELECT max(v.version) FROM purpose_versions v WHERE v.purpose_id = p.id)
         FROM purposes p",
        &[],
    )?;
    let mut by_id = HashMap::with_capacity(rows.len());
    for r in rows {
        let id = PurposeId::parse(&r.text(0)?)
            .map_err(|e| Error::Corrupt(format!("purpose id in the catalog: {e}")))?;
        let spec: PurposeSpec = serde_json::from_str(&r.text(1)?)
            .map_err(|e| Error::Corrupt(format!("purpose {id}: {e}")))?;
        let min_notice_seq = r.int(3)? as u32;
        by_id.insert(
            id.as_str().to_owned(),
            CatalogEntry {
                rule: PurposeRule::new(&spec, min_notice_seq),
                notice_version: spec.notice_version(),
                notice_seq: r.int(2)? as u32,
                version: r.opt_int(6)?.unwrap_or(1),
                created_ms: r.int(4)?,
                updated_ms: r.int(5)?,
                spec,
                id,
            },
        );
    }
    Ok(Catalog { by_id, generation })
}

/// What a change to the catalog did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurposeChange {
    pub id: String,
    /// `created`, `updated`, or `unchanged` (the same definition again).
    pub outcome: &'static str,
    /// The purpose's definition number after the change.
    pub version: i64,
    pub notice_version: String,
    /// Whether consents given under earlier notices now need asking again.
    pub reconsent_required: bool,
}

/// Create or change a purpose. A change never rewrites history: the old
/// definition stays in `purpose_versions`, and entries keep naming the notice
/// version they were made under. `requires_reconsent` marks a new notice text
/// as a material change: consents given under older texts stop counting.
pub fn upsert_purpose(
    conn: &mut dyn Conn,
    id: &PurposeId,
    spec: &PurposeSpec,
    requires_reconsent: bool,
    now_ms: i64,
) -> Result<PurposeChange> {
    spec.validate()?;
    let spec_json = serde_json::to_string(spec).expect("a purpose serialises");
    let notice_version = spec.notice_version();
    let current = conn.query_opt(
        "SELECT spec, notice_seq, min_notice_seq,
                (SELECT max(v.version) FROM purpose_versions v WHERE v.purpose_id = $1)
         FROM purposes WHERE id = $1",
        &[P::Text(id.as_str())],
    )?;
    let (outcome, version, notice_seq, min_seq) = match current {
        None => {
            if requires_reconsent {
                return Err(Error::rejected(
                    Code::ReconsentNeedsNewNotice,
                    "a new purpose has no earlier consents to ask again",
                ));
            }
            conn.exec(
                "INSERT INTO purposes (id, spec, notice_seq, min_notice_seq, created_ms, updated_ms)
                 VALUES ($1, $2, 1, 1, $3, $3)",
                &[P::Text(id.as_str()), P::Text(&spec_json), P::Int(now_ms)],
            )?;
            ("created", 1, 1, 1)
        }
        Some(r) => {
            let old: PurposeSpec = serde_json::from_str(&r.text(0)?)
                .map_err(|e| Error::Corrupt(format!("purpose {id}: {e}")))?;
            let (old_seq, old_min, old_version) =
                (r.int(1)?, r.int(2)?, r.opt_int(3)?.unwrap_or(1));
            let notice_changed = old.notice_version() != notice_version;
            if requires_reconsent && !notice_changed {
                return Err(Error::rejected(
                    Code::ReconsentNeedsNewNotice,
                    "asking everyone again needs a changed notice text that tells them what changed",
                ));
            }
            if &old == spec {
                return Ok(PurposeChange {
                    id: id.to_string(),
                    outcome: "unchanged",
                    version: old_version,
                    notice_version,
                    reconsent_required: false,
                });
            }
            let seq = if notice_changed { old_seq + 1 } else { old_seq };
            let min = if requires_reconsent { seq } else { old_min };
            conn.exec(
                "UPDATE purposes SET spec = $2, notice_seq = $3, min_notice_seq = $4, updated_ms = $5 WHERE id = $1",
                &[
                    P::Text(id.as_str()),
                    P::Text(&spec_json),
                    P::Int(seq),
                    P::Int(min),
                    P::Int(now_ms),
                ],
            )?;
            ("updated", old_version + 1, seq, min)
        }
    };
    conn.exec(
        "INSERT INTO purpose_versions (purpose_id, version, spec, notice_seq, notice_version, material, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            P::Text(id.as_str()),
            P::Int(version),
            P::Text(&spec_json),
            P::Int(notice_seq),
            P::Text(&notice_version),
            P::from(requires_reconsent),
            P::Int(now_ms),
        ],
    )?;
    let generation = catalog_generation(conn)? + 1;
    conn.meta_set(GENERATION_KEY, &generation.to_le_bytes())?;
    Ok(PurposeChange {
        id: id.to_string(),
        outcome,
        version,
        notice_version,
        reconsent_required: min_seq == notice_seq && requires_reconsent,
    })
}

/// One earlier (or the current) definition of a purpose.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurposeVersionView {
    pub version: i64,
    pub notice_version: String,
    /// This definition's notice text made earlier consents need asking again.
    pub material: bool,
    pub created_at: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub definition: Value,
}

pub fn purpose_history(conn: &mut dyn Conn, id: &str) -> Result<Vec<PurposeVersionView>> {
    conn.query(
        "SELECT version, notice_version, material, created_ms, spec FROM purpose_versions
         WHERE purpose_id = $1 ORDER BY version",
        &[P::Text(id)],
    )?
    .iter()
    .map(|r| {
        Ok(PurposeVersionView {
            version: r.int(0)?,
            notice_version: r.text(1)?,
            material: r.int(2)? != 0,
            created_at: rfc3339(r.int(3)?),
            definition: serde_json::from_str(&r.text(4)?)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
        })
    })
    .collect()
}

/// The notice texts of a purpose at a version, as the person saw them.
pub fn notice_texts(
    conn: &mut dyn Conn,
    purpose: &str,
    notice_version: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let Some(r) = conn.query_opt(
        "SELECT spec FROM purpose_versions WHERE purpose_id = $1 AND notice_version = $2
         ORDER BY version DESC LIMIT 1",
        &[P::Text(purpose), P::Text(notice_version)],
    )?
    else {
        return Ok(None);
    };
    let spec: PurposeSpec =
        serde_json::from_str(&r.text(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(Some(spec.notice))
}

/// The notice texts behind each (purpose, notice version) pair, as
/// (purpose, version, language, text), in the pairs' order: what a person
/// was shown, for staff reading their ledger (a read on the pool).
pub fn notices_shown(
    svc: &crate::Services,
    pairs: Vec<(PurposeId, String)>,
) -> Result<Vec<(PurposeId, String, String, String)>> {
    svc.read(|conn, _| {
        let mut out = Vec::new();
        for (purpose, version) in pairs {
            if let Some(texts) = notice_texts(conn, purpose.as_str(), &version)? {
                for (lang, text) in texts {
                    out.push((purpose.clone(), version.clone(), lang, text));
                }
            }
        }
        Ok(out)
    })
}

fn notice_seq_of(conn: &mut dyn Conn, purpose: &str, notice_version: &str) -> Result<u32> {
    let r = conn.query_opt(
        "SELECT notice_seq FROM purpose_versions WHERE purpose_id = $1 AND notice_version = $2
         ORDER BY version DESC LIMIT 1",
        &[P::Text(purpose), P::Text(notice_version)],
    )?;
    match r {
        Some(r) => Ok(r.int(0)? as u32),
        None => Err(Error::rejected(
            Code::UnknownNoticeVersion,
            format!(
                "purpose `{purpose}` never had notice version `{}`",
                notice_version.chars().take(64).collect::<String>()
            ),
        )),
    }
}

// ----------------------------------------------------------------- ledger

/// An entry to append. Evidence is personal data: it is sealed under the
/// person's key before it is written.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The person's current (not merged-away) profile.
    pub profile_id: ProfileId,
    pub purpose: PurposeId,
    pub decision: ConsentDecision,
    pub method: Method,
    /// The notice version shown; the current one when `None`.
    pub notice_version: Option<String>,
    /// When the decision took effect (a list's original consent date);
    /// now when `None`.
    pub at_ms: Option<i64>,
    /// The collection point ("checkout form v3"). Never personal data.
    pub source: String,
    pub evidence: Map<String, Value>,
    /// The one channel of the purpose the choice is about (keep email,
    /// stop SMS); `None` for the purpose as a whole.
    pub channel: Option<Channel>,
}

/// The ledger's chain: the bytes hashed are tarmo-core's [`chain_hash`].
const CHAIN: Chain = Chain {
    table: "consent_ledger",
    lock: TxLock::ConsentLedger,
    head_key: "consent_ledger_head",
    head_mac: "consent ledger head",
    bad_hash: "a ledger hash is not 32 bytes",
    record: "entry",
    records: "entries",
    whole: "chain",
};

/// One entry as the chain hashes it ([`chain_hash`], pinned in tarmo-core).
struct LedgerLink<'a>(ChainFields<'a>);

impl Link for LedgerLink<'_> {
    fn link_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        chain_hash(prev, &self.0)
    }
}

pub(crate) fn state_of_row(r: &Row, at: usize) -> Result<ConsentState> {
    let corrupt = |e: tarmo_core::consent::ConsentError| Error::Corrupt(e.to_string());
    Ok(ConsentState {
        decision: ConsentDecision::parse(&r.text(at)?).map_err(corrupt)?,
        method: Method::parse(&r.text(at + 1)?).map_err(corrupt)?,
        at_ms: r.int(at + 2)?,
        notice_seq: r.int(at + 3)? as u32,
        seq: r.int(at + 4)?,
        gpc_ms: r.opt_int(at + 5)?,
        // Only `Channel::bit`s are ever stored; anything else is corrupt.
        channels_off: u8::try_from(r.opt_int(at + 6)?.unwrap_or(0))
            .map_err(|_| Error::Corrupt("consent_state.channels_off out of range".into()))?,
    })
}

/// The columns [`state_of_row`] reads, in its order.
pub(crate) const STATE_COLUMNS: &str =
    "decision, method, at_ms, notice_seq, seq, gpc_ms, channels_off";

/// The state of one person for one purpose.
pub fn state(
    conn: &mut dyn Conn,
    profile: ProfileId,
    purpose: &PurposeId,
) -> Result<Option<ConsentState>> {
    conn.query_opt(
        &format!(
            "SELECT {STATE_COLUMNS} FROM consent_state WHERE profile_id = $1 AND purpose_id = $2"
        ),
        &[P::Int(profile.0), P::Text(purpose.as_str())],
    )?
    .map(|r| state_of_row(&r, 0))
    .transpose()
}

/// Every purpose's state for one person.
pub fn states(conn: &mut dyn Conn, profile: ProfileId) -> Result<Vec<(PurposeId, ConsentState)>> {
    conn.query(
        &format!(
            "SELECT purpose_id, {STATE_COLUMNS} FROM consent_state
             WHERE profile_id = $1 ORDER BY purpose_id"
        ),
        &[P::Int(profile.0)],
    )?
    .iter()
    .map(|r| Ok((purpose_id(&r.text(0)?)?, state_of_row(r, 1)?)))
    .collect()
}

fn put_state(
    conn: &mut dyn Conn,
    profile: ProfileId,
    purpose: &str,
    s: &ConsentState,
) -> Result<()> {
    crate::conn::exec_rows(
        conn,
        PUT_STATE_HEAD,
        PUT_STATE_TAIL,
        &[state_row(profile, purpose, s)],
    )
}

const PUT_STATE_HEAD: &str = "INSERT INTO consent_state (profile_id, purpose_id, decision, method, at_ms, notice_seq, seq, gpc_ms, channels_off)";
const PUT_STATE_TAIL: &str =
    " ON CONFLICT (profile_id, purpose_id) DO UPDATE SET decision = excluded.decision,
     method = excluded.method, at_ms = excluded.at_ms, notice_seq = excluded.notice_seq,
     seq = excluded.seq, gpc_ms = excluded.gpc_ms, channels_off = excluded.channels_off";

/// A state's row for [`PUT_STATE_HEAD`].
fn state_row<'a>(profile: ProfileId, purpose: &'a str, s: &ConsentState) -> Vec<P<'a>> {
    vec![
        P::Int(profile.0),
        P::Text(purpose),
        P::Text(s.decision.as_str()),
        P::Text(s.method.as_str()),
        P::Int(s.at_ms),
        P::Int(s.notice_seq.into()),
        P::Int(s.seq),
        P::from(s.gpc_ms),
        P::Int(s.channels_off.into()),
    ]
}

/// Every state of these people, by person, read up to 512 people a
/// statement (lists padded to 1, 8, 64 or 512: few statement texts).
fn states_of_many(
    conn: &mut dyn Conn,
    people: &[ProfileId],
) -> Result<HashMap<ProfileId, Vec<(String, ConsentState)>>> {
    let mut out: HashMap<ProfileId, Vec<(String, ConsentState)>> =
        HashMap::with_capacity(people.len());
    for page in people.chunks(512) {
        let n = [1usize, 8, 64, 512]
            .into_iter()
            .find(|&n| n >= page.len())
            .expect("pages of at most 512");
        let marks: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        let params: Vec<P<'_>> = (0..n)
            .map(|i| P::Int(page[i.min(page.len() - 1)].0))
            .collect();
        let rows = conn.query(
            &format!(
                "SELECT profile_id, purpose_id, {STATE_COLUMNS} FROM consent_state
                 WHERE profile_id IN ({})",
                marks.join(", ")
            ),
            &params,
        )?;
        for r in &rows {
            out.entry(ProfileId(r.int(0)?))
                .or_default()
                .push((r.text(1)?, state_of_row(r, 2)?));
        }
    }
    Ok(out)
}

/// Append entries (in order) and fold them into the state, in the caller's
/// transaction. Returns each entry's sequence number.
pub fn append(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    entries: &[NewEntry],
    now_ms: i64,
) -> Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // Check everything before writing anything.
    let mut prepared = Vec::with_capacity(entries.len());
    let mut seq_cache: HashMap<(PurposeId, String), u32> = HashMap::new();
    for e in entries {
        let c = catalog.require(e.purpose.as_str())?;
        check_entry(c.id.as_str(), &c.rule, e.decision, e.method)?;
        if let Some(ch) = e.channel {
            check_channel_entry(c.id.as_str(), &c.rule, ch, e.decision)?;
        }
        if e.source.len() > 200 {
            return Err(Error::rejected(
                Code::InvalidSource,
                "`source` names a collection point in at most 200 characters",
            ));
        }
        let (version, seq) = match &e.notice_version {
            None => (c.notice_version.clone(), c.notice_seq),
            Some(v) if *v == c.notice_version => (v.clone(), c.notice_seq),
            Some(v) => {
                let k = (e.purpose.clone(), v.clone());
                let seq = match seq_cache.get(&k) {
                    Some(s) => *s,
                    None => {
                        let s = notice_seq_of(conn, e.purpose.as_str(), v)?;
                        seq_cache.insert(k, s);
                        s
                    }
                };
                (v.clone(), seq)
            }
        };
        prepared.push((e, version, seq));
    }

    // The people's keys and their states before this call, each read in
    // one pass (on PostgreSQL a round trip each, not one an entry).
    let mut people: Vec<ProfileId> = prepared.iter().map(|(e, _, _)| e.profile_id).collect();
    people.sort_unstable();
    people.dedup();
    person::warm_keys(conn, vault, &people)?;
    let stored = states_of_many(conn, &people)?;

    let mut tip = CHAIN.tip(conn)?;
    let mut touched: BTreeMap<(ProfileId, PurposeId), Option<ConsentState>> = BTreeMap::new();
    // The state before this transaction, for the dashboard's totals.
    let mut before: HashMap<(ProfileId, PurposeId), Option<ConsentDecision>> = HashMap::new();
    let mut counts = crate::dashboard::EntryCounts::default();
    let mut seqs = Vec::with_capacity(entries.len());
    let mut rows = Vec::with_capacity(entries.len());
    for (e, version, notice_seq) in prepared {
        // The collection point is free text (staff may write "phone call
        // with Ann Virtanen"): it is sealed with the evidence, under the
        // person's key, and the column holds only a marker. The chain hashes
        // the column and the sealed bytes as it always did, so entries
        // written before keep verifying.
        let evidence = serde_json::to_vec(&serde_json::json!({
            SEALED_SOURCE_FIELD: e.source,
            SEALED_EVIDENCE_FIELD: e.evidence,
        }))
        .expect("JSON serialises");
        let sealed = person::seal(conn, vault, e.profile_id, Place::ConsentEvidence, &evidence)?;
        let at_ms = e.at_ms.unwrap_or(now_ms);
        let link = tip.link(|seq| {
            LedgerLink(ChainFields {
                seq,
                profile_id: e.profile_id,
                key_owner: e.profile_id,
                purpose: e.purpose.as_str(),
                decision: e.decision.as_str(),
                method: e.method.as_str(),
                notice_version: &version,
                notice_seq: notice_seq.into(),
                at_ms,
                recorded_ms: now_ms,
                source: SEALED_SOURCE,
                evidence: sealed.as_bytes(),
                channel: e.channel.map(Channel::as_str),
            })
        });
        let seq = link.seq;
        let k = (e.profile_id, e.purpose.clone());
        let cur = match touched.get(&k) {
            Some(s) => *s,
            None => {
                let s = stored
                    .get(&e.profile_id)
                    .and_then(|v| v.iter().find(|(p, _)| p == e.purpose.as_str()))
                    .map(|(_, s)| *s);
                before.insert(k.clone(), s.map(|s| s.decision));
                s
            }
        };
        if e.channel.is_some() && cur.is_none() {
            return Err(Error::rejected(
                Code::ChannelWithoutConsent,
                format!(
                    "a choice about one channel refines the person's record for `{}`; there is none yet, so record the purpose first",
                    e.purpose
                ),
            ));
        }
        counts.add(
            at_ms,
            e.purpose.as_str(),
            e.method.as_str(),
            e.decision.as_str(),
        );
        let next = fold(
            cur,
            &EntryFacts {
                seq,
                decision: e.decision,
                method: e.method,
                at_ms,
                notice_seq,
                channel: e.channel,
            },
        );
        touched.insert(k, next);
        seqs.push(seq);
        rows.push((e, version, notice_seq, at_ms, sealed, link));
    }
    let ledger_rows: Vec<Vec<P<'_>>> = rows
        .iter()
        .map(|(e, version, notice_seq, at_ms, sealed, link)| {
            vec![
                P::Int(link.seq),
                P::Int(e.profile_id.0),
                P::Int(e.profile_id.0),
                P::Text(e.purpose.as_str()),
                P::Text(e.decision.as_str()),
                P::Text(e.method.as_str()),
                P::Text(version),
                P::Int((*notice_seq).into()),
                P::Int(*at_ms),
                P::Int(now_ms),
                P::Text(SEALED_SOURCE),
                P::from(sealed),
                P::Blob(&link.prev_hash),
                P::Blob(&link.hash),
                P::from(e.channel.map(Channel::as_str)),
            ]
        })
        .collect();
    crate::conn::exec_rows(
        conn,
        "INSERT INTO consent_ledger (seq, profile_id, key_owner, purpose_id, decision, method,
             notice_version, notice_seq, at_ms, recorded_ms, source, evidence, prev_hash, hash, channel)",
        "",
        &ledger_rows,
    )?;
    let mut deltas = crate::dashboard::StateDeltas::default();
    // In key order (a `BTreeMap`): neighbouring people's states share pages.
    let state_rows: Vec<Vec<P<'_>>> = touched
        .iter()
        .filter_map(|((profile, purpose), s)| {
            s.as_ref().map(|s| state_row(*profile, purpose.as_str(), s))
        })
        .collect();
    crate::conn::exec_rows(conn, PUT_STATE_HEAD, PUT_STATE_TAIL, &state_rows)?;
    for ((profile, purpose), s) in &touched {
        if let Some(s) = s {
            let old = before.get(&(*profile, purpose.clone())).copied().flatten();
            deltas.changed(
                crate::dashboard::day_of(s.at_ms),
                purpose.as_str(),
                old,
                s.decision,
            );
        }
    }
    deltas.write(conn)?;
    counts.write(conn)?;
    CHAIN.sign_head(conn, vault, &tip)?;
    Ok(seqs)
}

/// One ledger entry, opened for an authorised reader.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntryView {
    pub seq: i64,
    /// The profile the entry was recorded for (a profile merged since keeps
    /// its entries under its old id).
    pub profile_id: ProfileId,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub purpose: PurposeId,
    pub decision: String,
    pub method: String,
    pub notice_version: String,
    /// When the decision took effect.
    pub at: String,
    /// When Tarmo recorded it.
    pub recorded_at: String,
    pub source: String,
    /// IP address, user agent, token id, list provenance, CMP string...
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub evidence: Value,
    /// This entry's link in the chain (hex SHA-256).
    pub hash: String,
    /// The one channel of the purpose the entry is about; absent for the
    /// purpose as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// What `consent_ledger.source` holds for an entry whose collection point is
/// sealed in its evidence.
pub const SEALED_SOURCE: &str = "(sealed)";
const SEALED_SOURCE_FIELD: &str = "source";
const SEALED_EVIDENCE_FIELD: &str = "evidence";

/// The collection point and the evidence of an opened entry: from the
/// sealed wrapper, or (entries from before the source was sealed) the
/// column and the evidence as they are.
fn unseal_source(column: String, opened: Value) -> (String, Value) {
    match opened {
        Value::Object(mut m)
            if column == SEALED_SOURCE
                && m.len() == 2
                && m.get(SEALED_SOURCE_FIELD).is_some_and(Value::is_string)
                && m.contains_key(SEALED_EVIDENCE_FIELD) =>
        {
            let source = m
                .remove(SEALED_SOURCE_FIELD)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let evidence = m.remove(SEALED_EVIDENCE_FIELD).unwrap_or(Value::Null);
            (source, evidence)
        }
        other => (column, other),
    }
}

/// The profile's entries and those of profiles merged into it, oldest first.
pub fn history(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &person::Sight,
    profile: ProfileId,
) -> Result<Vec<LedgerEntryView>> {
    let rows = conn.query(
        "SELECT seq, profile_id, key_owner, purpose_id, decision, method, notice_version, at_ms,
                recorded_ms, source, evidence, hash, channel FROM consent_ledger
         WHERE profile_id = $1 OR profile_id IN (SELECT id FROM profiles WHERE merged_into = $1)
         ORDER BY seq",
        &[P::Int(profile.0)],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let owner = ProfileId(r.int(2)?);
        let opened: Value = person::open_json(
            conn,
            vault,
            sight,
            owner,
            Place::ConsentEvidence,
            &r.sealed(10)?,
        )?;
        let (source, evidence) = unseal_source(r.text(9)?, opened);
        out.push(LedgerEntryView {
            seq: r.int(0)?,
            profile_id: ProfileId(r.int(1)?),
            purpose: purpose_id(&r.text(3)?)?,
            decision: r.text(4)?,
            method: r.text(5)?,
            notice_version: r.text(6)?,
            at: rfc3339(r.int(7)?),
            recorded_at: rfc3339(r.int(8)?),
            source,
            evidence,
            hash: hex::encode(r.blob(11)?),
            channel: r.opt_text(12)?,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------ verification

/// Walk the whole chain: every entry numbered one after the previous, naming
/// the previous hash, hashing to its own; the last entry the signed head.
/// `progress` is called with the number of entries checked so far.
pub fn verify(
    conn: &mut dyn Conn,
    vault: &Vault,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    let mut walk = CHAIN.walk();
    loop {
        let rows = conn.query(
            "SELECT seq, profile_id, key_owner, purpose_id, decision, method, notice_version,
                    notice_seq, at_ms, recorded_ms, source, evidence, prev_hash, hash, channel
             FROM consent_ledger WHERE seq > $1 ORDER BY seq LIMIT 5000",
            &[P::Int(walk.last())],
        )?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let seq = r.int(0)?;
            let (purpose, decision, method, version, source) =
                (r.text(3)?, r.text(4)?, r.text(5)?, r.text(6)?, r.text(10)?);
            let evidence = r.blob(11)?;
            let channel = r.opt_text(14)?;
            let f = LedgerLink(ChainFields {
                seq,
                profile_id: ProfileId(r.int(1)?),
                key_owner: ProfileId(r.int(2)?),
                purpose: &purpose,
                decision: &decision,
                method: &method,
                notice_version: &version,
                notice_seq: r.int(7)?,
                at_ms: r.int(8)?,
                recorded_ms: r.int(9)?,
                source: &source,
                evidence: &evidence,
                channel: channel.as_deref(),
            });
            if let Err(report) = walk.check(seq, &r.blob(12)?, &r.blob(13)?, &f, true) {
                return Ok(report);
            }
        }
        progress(walk.checked());
    }
    walk.finish(conn, vault)
}

// ---------------------------------------------------------- materialisation

pub type StateMap = BTreeMap<(ProfileId, String), ConsentState>;

/// The state as the ledger alone says it is: every entry, in order, folded
/// under the profile it now belongs to. Erased profiles have none.
pub fn fold_all(conn: &mut dyn Conn) -> Result<StateMap> {
    let mut out: StateMap = BTreeMap::new();
    let mut last = 0i64;
    loop {
        let rows = conn.query(
            "SELECT l.seq, COALESCE(p.merged_into, p.id), l.purpose_id, l.decision, l.method,
                    l.at_ms, l.notice_seq, l.channel
             FROM consent_ledger l JOIN profiles p ON p.id = l.profile_id
             WHERE l.seq > $1 ORDER BY l.seq LIMIT 10000",
            &[P::Int(last)],
        )?;
        let Some(r) = rows.last() else { break };
        last = r.int(0)?;
        for r in &rows {
            let corrupt = |e: tarmo_core::consent::ConsentError| Error::Corrupt(e.to_string());
            let facts = EntryFacts {
                seq: r.int(0)?,
                decision: ConsentDecision::parse(&r.text(3)?).map_err(corrupt)?,
                method: Method::parse(&r.text(4)?).map_err(corrupt)?,
                at_ms: r.int(5)?,
                notice_seq: r.int(6)? as u32,
                channel: r
                    .opt_text(7)?
                    .map(|c| Channel::parse(&c))
                    .transpose()
                    .map_err(corrupt)?,
            };
            let k = (ProfileId(r.int(1)?), r.text(2)?);
            let next = fold(out.get(&k).copied(), &facts);
            match next {
                Some(s) => out.insert(k, s),
                None => out.remove(&k),
            };
        }
    }
    Ok(out)
}

/// The materialised state as stored.
pub fn materialised(conn: &mut dyn Conn) -> Result<StateMap> {
    let rows = conn.query(
        &format!("SELECT profile_id, purpose_id, {STATE_COLUMNS} FROM consent_state"),
        &[],
    )?;
    rows.iter()
        .map(|r| Ok(((ProfileId(r.int(0)?), r.text(1)?), state_of_row(r, 2)?)))
        .collect()
}

/// Replace the materialised state by the fold of the ledger; the number of
/// rows that differed.
pub fn rebuild(conn: &mut dyn Conn) -> Result<u64> {
    let folded = fold_all(conn)?;
    let stored = materialised(conn)?;
    let mut differed = 0;
    for (k, v) in &stored {
        if folded.get(k) != Some(v) {
            differed += 1;
        }
    }
    differed += folded.keys().filter(|k| !stored.contains_key(*k)).count() as u64;
    // The totals move to today: a rebuild changes no history, and the
    // dashboard's per-day changes cannot tell which day a fix belongs to.
    let today = crate::dashboard::day_of(crate::now_ms());
    crate::dashboard::states_removed(conn, "1 = 1", &[], today)?;
    conn.exec("DELETE FROM consent_state", &[])?;
    let mut deltas = crate::dashboard::StateDeltas::default();
    for ((p, purpose), s) in &folded {
        put_state(conn, *p, purpose, s)?;
        deltas.changed(today, purpose, None, s.decision);
    }
    deltas.write(conn)?;
    Ok(differed)
}

/// Everything consent-related of `from` now belongs to `into`: the state is
/// folded again from both profiles' entries, in ledger order.
pub fn after_merge(conn: &mut dyn Conn, from: ProfileId, into: ProfileId) -> Result<()> {
    let rows = conn.query(
        "SELECT seq, purpose_id, decision, method, at_ms, notice_seq, channel FROM consent_ledger
         WHERE profile_id = $1 OR profile_id IN (SELECT id FROM profiles WHERE merged_into = $1)
         ORDER BY seq",
        &[P::Int(into.0)],
    )?;
    let mut folded: BTreeMap<String, ConsentState> = BTreeMap::new();
    for r in &rows {
        let corrupt = |e: tarmo_core::consent::ConsentError| Error::Corrupt(e.to_string());
        let facts = EntryFacts {
            seq: r.int(0)?,
            decision: ConsentDecision::parse(&r.text(2)?).map_err(corrupt)?,
            method: Method::parse(&r.text(3)?).map_err(corrupt)?,
            at_ms: r.int(4)?,
            notice_seq: r.int(5)? as u32,
            channel: r
                .opt_text(6)?
                .map(|c| Channel::parse(&c))
                .transpose()
                .map_err(corrupt)?,
        };
        let purpose = r.text(1)?;
        if let Some(s) = fold(folded.get(&purpose).copied(), &facts) {
            folded.insert(purpose, s);
        }
    }
    // Two people's states become one person's: the totals change today.
    let today = crate::dashboard::day_of(crate::now_ms());
    crate::dashboard::states_removed(
        conn,
        "profile_id = $1 OR profile_id = $2",
        &[P::Int(from.0), P::Int(into.0)],
        today,
    )?;
    conn.exec(
        "DELETE FROM consent_state WHERE profile_id = $1 OR profile_id = $2",
        &[P::Int(from.0), P::Int(into.0)],
    )?;
    let mut deltas = crate::dashboard::StateDeltas::default();
    for (purpose, s) in &folded {
        put_state(conn, into, purpose, s)?;
        deltas.changed(today, purpose, None, s.decision);
    }
    deltas.write(conn)?;
    conn.exec(
        "INSERT INTO consent_signals (profile_id, hash, at_ms)
         SELECT $2, hash, at_ms FROM consent_signals WHERE profile_id = $1
         ON CONFLICT DO NOTHING",
        &[P::Int(from.0), P::Int(into.0)],
    )?;
    conn.exec(
        "DELETE FROM consent_signals WHERE profile_id = $1",
        &[P::Int(from.0)],
    )?;
    // A restriction of either person's data restricts the merged profile.
    conn.exec(
        "INSERT INTO profile_flags (profile_id, restricted_ms)
         SELECT $2, restricted_ms FROM profile_flags WHERE profile_id = $1 AND restricted_ms IS NOT NULL
         ON CONFLICT (profile_id) DO UPDATE SET restricted_ms =
             COALESCE(profile_flags.restricted_ms, excluded.restricted_ms)",
        &[P::Int(from.0), P::Int(into.0)],
    )?;
    conn.exec(
        "DELETE FROM profile_flags WHERE profile_id = $1",
        &[P::Int(from.0)],
    )?;
    for table in ["tokens", "outbox"] {
        conn.exec(
            &format!("UPDATE {table} SET profile_id = $2 WHERE profile_id = $1"),
            &[P::Int(from.0), P::Int(into.0)],
        )?;
    }
    Ok(())
}

// --------------------------------------------------------------- decisions

/// What the policy needs to decide for one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A known person (their current profile id), their state for the
    /// purpose asked about, and their flags.
    Known(ProfileId, Option<ConsentState>, ProfileFlags),
    /// An erased person: the identifier is on the suppression list.
    Suppressed(i64),
    Unknown,
}

/// The decision's inputs for one person and purpose, in one read; the person
/// named by the condition that completes it. Whole statements, so that the
/// hot path formats nothing.
macro_rules! subject_sql {
    ($who:literal) => {
        concat!(
            "SELECT p.id, s.decision, s.method, s.at_ms, s.notice_seq, s.seq, s.gpc_ms, s.channels_off, f.restricted_ms
             FROM profiles p
             LEFT JOIN consent_state s ON s.profile_id = p.id AND s.purpose_id = $2
             LEFT JOIN profile_flags f ON f.profile_id = p.id
             WHERE p.id = ",
            $who
        )
    };
}
const SUBJECT_BY_ID: &str =
    subject_sql!("(SELECT COALESCE(merged_into, id) FROM profiles WHERE id = $1)");
const SUBJECT_BY_BIDX: &str = subject_sql!("(SELECT profile_id FROM identifiers WHERE bidx = $1)");

fn subject_of(row: Option<Row>) -> Result<Option<Subject>> {
    let Some(r) = row else { return Ok(None) };
    let st = match r.opt_text(1)? {
        Some(_) => Some(state_of_row(&r, 1)?),
        None => None,
    };
    Ok(Some(Subject::Known(
        ProfileId(r.int(0)?),
        st,
        ProfileFlags {
            restricted_since: r.opt_int(8)?,
            suppressed_since: None,
        },
    )))
}

/// A purpose id that is well formed by construction: read back from the
/// store, or checked against the catalog on its way in. One that does not
/// parse is a corrupt store, not bad input.
pub(crate) fn purpose_id(s: &str) -> Result<PurposeId> {
    PurposeId::parse(s)
        .map_err(|_| Error::Corrupt(format!("a purpose id that does not parse: {s:?}")))
}

/// The person with this profile id (following merges), for one purpose.
pub fn subject_by_id(
    conn: &mut dyn Conn,
    profile: ProfileId,
    purpose: &PurposeId,
) -> Result<Subject> {
    let row = conn.query_opt(
        SUBJECT_BY_ID,
        &[P::Int(profile.0), P::Text(purpose.as_str())],
    )?;
    Ok(subject_of(row)?.unwrap_or(Subject::Unknown))
}

/// [`subject_by_id`] for many people in one read: the pipeline that sends
/// decides for a page of people at once, so the decision's reads cost one
/// round trip a page, not one a person. Answers in the order asked; an id
/// with no profile is `Unknown`.
pub fn subjects_by_id(
    conn: &mut dyn Conn,
    profiles: &[ProfileId],
    purpose: &PurposeId,
) -> Result<Vec<(ProfileId, Subject)>> {
    let purpose = purpose.as_str();
    let mut found: HashMap<ProfileId, Subject> = HashMap::with_capacity(profiles.len());
    // Pages of 500 stay under every backend's limit on parameters.
    for page in profiles.chunks(500) {
        let marks: Vec<String> = (0..page.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT p.id, s.decision, s.method, s.at_ms, s.notice_seq, s.seq, s.gpc_ms, s.channels_off, f.restricted_ms, q.id
             FROM profiles q
             JOIN profiles p ON p.id = COALESCE(q.merged_into, q.id)
             LEFT JOIN consent_state s ON s.profile_id = p.id AND s.purpose_id = $1
             LEFT JOIN profile_flags f ON f.profile_id = p.id
             WHERE q.id IN ({})",
            marks.join(", ")
        );
        let mut params = Vec::with_capacity(page.len() + 1);
        params.push(P::Text(purpose));
        params.extend(page.iter().map(|&p| P::Int(p.0)));
        for r in conn.query(&sql, &params)? {
            let asked = r.int(9)?;
            if let Some(s) = subject_of(Some(r))? {
                found.insert(ProfileId(asked), s);
            }
        }
    }
    Ok(profiles
        .iter()
        .map(|&p| (p, found.get(&p).copied().unwrap_or(Subject::Unknown)))
        .collect())
}

/// The person an identifier (by blind index) names, for one purpose.
pub fn subject_by_identifier(
    conn: &mut dyn Conn,
    bidx: &BlindIndex,
    purpose: &str,
) -> Result<Subject> {
    let row = conn.query_opt(SUBJECT_BY_BIDX, &[P::Blob(&bidx.0), P::Text(purpose)])?;
    if let Some(s) = subject_of(row)? {
        return Ok(s);
    }
    Ok(match suppressed(conn, bidx)? {
        Some(at) => Subject::Suppressed(at),
        None => Subject::Unknown,
    })
}

pub fn flags(conn: &mut dyn Conn, profile: ProfileId) -> Result<ProfileFlags> {
    let r = conn.query_opt(
        "SELECT restricted_ms FROM profile_flags WHERE profile_id = $1",
        &[P::Int(profile.0)],
    )?;
    Ok(ProfileFlags {
        restricted_since: r.map(|r| r.opt_int(0)).transpose()?.flatten(),
        suppressed_since: None,
    })
}

// -------------------------------------------------------------- suppression

/// When the identifier was suppressed (its person erased), if it was.
pub fn suppressed(conn: &mut dyn Conn, bidx: &BlindIndex) -> Result<Option<i64>> {
    conn.query_opt(
        "SELECT at_ms FROM suppression WHERE bidx = $1",
        &[P::Blob(&bidx.0)],
    )?
    .map(|r| r.int(0))
    .transpose()
}

// --------------------------------------------------------------------- GPC

/// Record a Global Privacy Control opt-out for every purpose configured for
/// it where [`gpc_applies`]; the number of entries written.
pub fn record_gpc(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    profile: ProfileId,
    source: &str,
    evidence: &Map<String, Value>,
    now_ms: i64,
) -> Result<usize> {
    let mut entries = Vec::new();
    for c in catalog.entries() {
        if !c.rule.gpc_opt_out {
            continue;
        }
        if gpc_applies(state(conn, profile, &c.id)?.as_ref()) {
            entries.push(NewEntry {
                profile_id: profile,
                purpose: c.id.clone(),
                decision: ConsentDecision::Denied,
                method: Method::Gpc,
                notice_version: None,
                at_ms: None,
                source: source.to_owned(),
                evidence: evidence.clone(),
                channel: None,
            });
        }
    }
    append(conn, vault, catalog, &entries, now_ms)?;
    Ok(entries.len())
}

// ------------------------------------------------------------- CMP strings

/// One CMP string (a TCF TC string or a GPP string), decoded and mapped to
/// purposes at the edge (see `tarmo_core::consent::signals`).
#[derive(Clone)]
pub struct ConsentSignal {
    /// SHA-256 of the string: only its first arrival for a person writes.
    pub hash: [u8; 32],
    pub method: Method,
    pub entries: Vec<(PurposeId, ConsentDecision)>,
    /// The collection point the entries name. Never personal data.
    pub source: String,
    /// The string itself and what was noticed about it, sealed.
    pub evidence: Map<String, Value>,
}

/// What recording a CMP string did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// The person's ledger already holds this string: nothing was written.
    Duplicate,
    /// The first arrival: the entries written, as (purpose, decision, seq).
    Recorded(Vec<(PurposeId, ConsentDecision, i64)>),
}

/// Record a CMP string for a person, once. Its first arrival appends its
/// entries, leaving out any for a purpose the catalog no longer has or whose
/// legal basis no longer admits it (the string was mapped against the
/// catalog as the request saw it); later arrivals of the same string write
/// nothing. `evidence` (where the request came from) is sealed with the
/// signal's own, which wins on a clash.
#[allow(clippy::too_many_arguments)]
pub fn record_signal(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    profile: ProfileId,
    signal: &ConsentSignal,
    evidence: &Map<String, Value>,
    now_ms: i64,
) -> Result<SignalOutcome> {
    let fresh = conn.exec(
        "INSERT INTO consent_signals (profile_id, hash, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[P::Int(profile.0), P::Blob(&signal.hash), P::Int(now_ms)],
    )? == 1;
    if !fresh {
        return Ok(SignalOutcome::Duplicate);
    }
    let mut sealed_evidence = evidence.clone();
    sealed_evidence.extend(signal.evidence.clone());
    let entries: Vec<NewEntry> = signal
        .entries
        .iter()
        .filter(|(purpose, decision)| {
            let ok = catalog.get(purpose.as_str()).is_some_and(|c| {
                check_entry(purpose.as_str(), &c.rule, *decision, signal.method).is_ok()
            });
            if !ok {
                tracing::debug!(purpose = %purpose, "a CMP signal's entry no longer fits the catalog; left out");
            }
            ok
        })
        .map(|(purpose, decision)| NewEntry {
            profile_id: profile,
            purpose: purpose.clone(),
            decision: *decision,
            method: signal.method,
            notice_version: None,
            at_ms: None,
            source: signal.source.clone(),
            evidence: sealed_evidence.clone(),
            channel: None,
        })
        .collect();
    let seqs = append(conn, vault, catalog, &entries, now_ms)?;
    Ok(SignalOutcome::Recorded(
        entries
            .into_iter()
            .zip(seqs)
            .map(|(e, seq)| (e.purpose, e.decision, seq))
            .collect(),
    ))
}

// ------------------------------------------------------------------ defaults

/// The catalog a new installation starts with, so that `tarmo serve` on an
/// empty directory has purposes to ask about. Operators change it in
/// `tarmo.toml` or through `PUT /api/v1/purposes/{id}`.
pub fn default_purposes() -> Vec<(PurposeId, PurposeSpec)> {
    // Every purpose is written in the six languages of the pages (en, fi,
    // de, nb, he, tr), so a new installation shows no fallback.
    let spec = r#"
[email_marketing]
name = "News and offers by email"
names.fi = "Uutiset ja tarjoukset sähköpostilla"
names.de = "Neuigkeiten und Angebote per E-Mail"
names.nb = "Nyheter og tilbud på e-post"
names.he = "חדשות ומבצעים בדוא״ל"
names.tr = "E-postayla haberler ve fırsatlar"
legal_basis = "consent"
channels = ["email"]
data_categories = ["contact", "purchase_history"]
retention_days = 730
consent_lifetime_days = 730
direct_marketing = true
notice.en = "We send you news and offers by email, chosen by what you have bought. You can unsubscribe at any time with one click."
notice.fi = "Lähetämme sinulle uutisia ja tarjouksia sähköpostilla ostojesi perusteella. Voit perua tilauksen milloin tahansa yhdellä napsautuksella."
notice.de = "Wir senden Ihnen Neuigkeiten und Angebote per E-Mail, ausgewählt nach Ihren Einkäufen. Sie können sich jederzeit mit einem Klick abmelden."
notice.nb = "Vi sender deg nyheter og tilbud på e-post, valgt ut fra det du har kjøpt. Du kan melde deg av når som helst med ett klikk."
notice.he = "נשלח אליך חדשות ומבצעים בדוא״ל, לפי מה שקנית. אפשר לבטל את ההרשמה בכל עת בלחיצה אחת."
notice.tr = "Satın aldıklarınıza göre seçilmiş haberleri ve fırsatları size e-postayla göndeririz. Aboneliğinizi istediğiniz zaman tek tıklamayla iptal edebilirsiniz."

[sms_marketing]
name = "Offers by text message"
names.fi = "Tarjoukset tekstiviestillä"
names.de = "Angebote per SMS"
names.nb = "Tilbud på SMS"
names.he = "מבצעים בהודעות SMS"
names.tr = "Kısa mesajla fırsatlar"
legal_basis = "consent"
channels = ["sms"]
data_categories = ["contact"]
retention_days = 730
consent_lifetime_days = 730
direct_marketing = true
notice.en = "We send you offers by text message. Reply STOP or use the link in any message to stop them."
notice.fi = "Lähetämme sinulle tarjouksia tekstiviestillä. Voit lopettaa ne viestin linkistä."
notice.de = "Wir senden Ihnen Angebote per SMS. Antworten Sie STOP oder nutzen Sie den Link in jeder Nachricht, um sie zu beenden."
notice.nb = "Vi sender deg tilbud på SMS. Svar STOPP eller bruk lenken i en melding for å stoppe dem."
notice.he = "נשלח אליך מבצעים בהודעות SMS. להפסקה יש להשיב STOP או להשתמש בקישור שבכל הודעה."
notice.tr = "Size kısa mesajla fırsatlar göndeririz. Durdurmak için RET yazın ya da mesajdaki bağlantıyı kullanın."

[personalisation]
name = "Personalised recommendations"
names.fi = "Henkilökohtaiset suositukset"
names.de = "Persönliche Empfehlungen"
names.nb = "Personlige anbefalinger"
names.he = "המלצות מותאמות אישית"
names.tr = "Kişiye özel öneriler"
legal_basis = "consent"
channels = ["web", "email", "push"]
data_categories = ["behaviour", "purchase_history"]
retention_days = 365
consent_lifetime_days = 365
notice.en = "We use what you view and buy to recommend products to you on our site and in our messages."
notice.fi = "Käytämme katselu- ja ostotietojasi suositellaksemme sinulle tuotteita sivustollamme ja viesteissämme."
notice.de = "Wir nutzen, was Sie ansehen und kaufen, um Ihnen auf unserer Website und in unseren Nachrichten Produkte zu empfehlen."
notice.nb = "Vi bruker det du ser på og kjøper, til å anbefale deg produkter på nettstedet vårt og i meldingene våre."
notice.he = "אנו משתמשים במה שצפית בו ובמה שקנית כדי להמליץ לך על מוצרים באתר ובהודעות שלנו."
notice.tr = "Sitemizde ve mesajlarımızda size ürün önermek için baktığınız ve satın aldığınız ürünleri kullanırız."

[analytics]
name = "Measuring how our site is used"
names.fi = "Sivustomme käytön mittaaminen"
names.de = "Messung der Nutzung unserer Website"
names.nb = "Måling av hvordan nettstedet brukes"
names.he = "מדידת השימוש באתר שלנו"
names.tr = "Sitemizin nasıl kullanıldığının ölçülmesi"
legal_basis = "legitimate_interests"
balancing_note = "Aggregate measurement of site use to fix and improve it; pseudonymous, short retention, expected by visitors, no profiling for marketing; visitors may object."
channels = ["web"]
data_categories = ["behaviour"]
retention_days = 400
description.en = "We count which pages are visited and where visits break off, to fix and improve our site. We do not ask for your consent for this, because it is a legitimate interest of ours that weighs little on you; you may object and we stop."
description.fi = "Laskemme, millä sivuilla käydään ja missä käynnit katkeavat, korjataksemme ja parantaaksemme sivustoamme. Emme kysy tähän suostumustasi, koska se on oikeutettu etumme, joka vaikuttaa sinuun vähän; voit vastustaa, ja lopetamme."
description.de = "Wir zählen, welche Seiten besucht werden und wo Besuche abbrechen, um unsere Website zu verbessern. Dafür fragen wir nicht nach Ihrer Einwilligung, weil es unser berechtigtes Interesse ist, das Sie wenig belastet; Sie können widersprechen, dann hören wir auf."
description.nb = "Vi teller hvilke sider som besøkes og hvor besøk avbrytes, for å rette og forbedre nettstedet. Vi ber ikke om samtykke til dette, fordi det er en berettiget interesse for oss som berører deg lite; du kan protestere, og da stopper vi."
description.he = "אנו סופרים אילו דפים נצפים והיכן ביקורים נקטעים, כדי לתקן ולשפר את האתר. איננו מבקשים לכך את הסכמתך, כי זהו אינטרס לגיטימי שלנו שפוגע בך מעט; אפשר להתנגד, ואז נפסיק."
description.tr = "Sitemizi düzeltmek ve iyileştirmek için hangi sayfaların ziyaret edildiğini ve ziyaretlerin nerede yarıda kaldığını sayarız. Bunun için onayınızı istemeyiz, çünkü bu sizi az etkileyen meşru menfaatimizdir; itiraz edebilirsiniz, o zaman dururuz."

[ad_audiences]
name = "Advertising audiences on social media and search"
names.fi = "Mainosyleisöt sosiaalisessa mediassa ja hakukoneissa"
names.de = "Werbezielgruppen in sozialen Medien und Suchmaschinen"
names.nb = "Annonsemålgrupper i sosiale medier og søk"
names.he = "קהלי פרסום ברשתות החברתיות ובמנועי חיפוש"
names.tr = "Sosyal medya ve arama motorlarında reklam kitleleri"
legal_basis = "consent"
channels = ["ads"]
data_categories = ["contact"]
retention_days = 180
consent_lifetime_days = 365
gpc_opt_out = true
direct_marketing = true
notice.en = "We share a scrambled (hashed) form of your email address with advertising platforms to show you our ads, or to leave you out of them."
notice.fi = "Jaamme sähköpostiosoitteesi salatussa (tiivistetyssä) muodossa mainosalustoille näyttääksemme sinulle mainoksiamme."
notice.de = "Wir geben eine verschlüsselte (gehashte) Form Ihrer E-Mail-Adresse an Werbeplattformen weiter, um Ihnen unsere Anzeigen zu zeigen oder Sie davon auszunehmen."
notice.nb = "Vi deler en kryptert (hashet) form av e-postadressen din med annonseplattformer for å vise deg annonsene våre, eller for å holde deg utenfor dem."
notice.he = "אנו משתפים צורה מוצפנת (מגובבת) של כתובת הדוא״ל שלך עם פלטפורמות פרסום, כדי להציג לך את המודעות שלנו או כדי להוציא אותך מהן."
notice.tr = "Size reklamlarımızı göstermek ya da sizi onların dışında tutmak için e-posta adresinizin karıştırılmış (hash'lenmiş) biçimini reklam platformlarıyla paylaşırız."

[order_fulfilment]
name = "Delivering your orders"
names.fi = "Tilaustesi toimittaminen"
names.de = "Lieferung Ihrer Bestellungen"
names.nb = "Levering av bestillingene dine"
names.he = "משלוח ההזמנות שלך"
names.tr = "Siparişlerinizin teslimi"
legal_basis = "contract"
channels = ["email", "sms", "post", "phone"]
data_categories = ["contact", "address", "purchase_history"]
retention_days = 2555
description.en = "We use your contact details and address to deliver what you order and to tell you about it. This is needed to carry out our contract with you."
description.fi = "Käytämme yhteystietojasi ja osoitettasi toimittaaksemme tilauksesi ja kertoaksemme niistä. Tämä on tarpeen sopimuksemme täyttämiseksi."
description.de = "Wir nutzen Ihre Kontaktdaten und Ihre Adresse, um Ihre Bestellungen zu liefern und Sie darüber zu informieren. Das ist zur Erfüllung unseres Vertrags mit Ihnen nötig."
description.nb = "Vi bruker kontaktopplysningene og adressen din til å levere det du bestiller og fortelle deg om det. Dette er nødvendig for å oppfylle avtalen vår med deg."
description.he = "אנו משתמשים בפרטי הקשר ובכתובת שלך כדי לשלוח את מה שהזמנת ולעדכן אותך על כך. הדבר נחוץ לביצוע החוזה שלנו איתך."
description.tr = "Siparişlerinizi teslim etmek ve size bilgi vermek için iletişim bilgilerinizi ve adresinizi kullanırız. Bu, sizinle yaptığımız sözleşmeyi yerine getirmek için gereklidir."
"#;
    let parsed: BTreeMap<String, PurposeSpec> =
        toml::from_str(spec).expect("the default catalog parses");
    parsed
        .into_iter()
        .map(|(id, s)| (PurposeId::parse(&id).expect("valid default id"), s))
        .collect()
}

/// Seed the default catalog into an empty one; the number of purposes added.
pub fn seed_defaults(conn: &mut dyn Conn, now_ms: i64) -> Result<usize> {
    if conn
        .query_opt("SELECT id FROM purposes LIMIT 1", &[])?
        .is_some()
    {
        return Ok(0);
    }
    let defaults = default_purposes();
    for (id, spec) in &defaults {
        upsert_purpose(conn, id, spec, false, now_ms)?;
    }
    Ok(defaults.len())
}

// ---------------------------------------------------------------- use cases

/// A person named in a request: by profile id, or by an identifier's blind
/// index.
#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    Id(ProfileId),
    Identifier(BlindIndex),
}

/// The decision's inputs for the person `lookup` names, for one purpose.
pub fn read_subject(conn: &mut dyn Conn, lookup: Lookup, purpose: &PurposeId) -> Result<Subject> {
    match lookup {
        Lookup::Id(p) => subject_by_id(conn, p, purpose),
        Lookup::Identifier(b) => subject_by_identifier(conn, &b, purpose.as_str()),
    }
}

/// The person a write names: the current profile of an id (an unknown id
/// is an error), or the profile an identifier resolves to, made when
/// nobody has it yet. `None` for an erased (suppressed) identifier, about
/// whom nothing may be recorded.
pub fn subject_to_write(
    ctx: &mut TxCtx<'_>,
    lookup: Lookup,
    identifier: Option<&PreparedIdentifier>,
) -> Result<Option<ProfileId>> {
    match (lookup, identifier) {
        (Lookup::Id(p), _) => crate::doi::current_profile(ctx.conn, p)?
            .map(Some)
            .ok_or_else(|| Error::rejected(Code::ProfileNotFound, "no profile with that id")),
        (Lookup::Identifier(b), Some(id)) => {
            if suppressed(ctx.conn, &b)?.is_some() {
                return Ok(None);
            }
            ctx.resolve(std::slice::from_ref(id)).map(Some)
        }
        (Lookup::Identifier(_), None) => Err(Error::Corrupt(
            "an identifier to write for comes prepared".into(),
        )),
    }
}

/// The decision for one person, and whether the purpose allows them on
/// any channel (what a purpose-bound key may learn their id by).
#[derive(Debug, Clone, Copy)]
pub struct Judged {
    /// The person's current profile; `None` when unknown or erased.
    pub profile: Option<ProfileId>,
    pub verdict: tarmo_core::consent::Verdict,
    /// The purpose's decision on any channel.
    pub any_channel: bool,
}

/// The policy's decision for `subject` over `channel` (any when `None`).
pub fn judge(rule: &PurposeRule, channel: Option<Channel>, subject: Subject, now: i64) -> Judged {
    use tarmo_core::consent::{Reason, Verdict, decide};
    match subject {
        Subject::Known(p, st, flags) => {
            let v = decide(rule, channel, st.as_ref(), flags, now);
            let any = match channel {
                None => v.allowed,
                Some(_) => decide(rule, None, st.as_ref(), flags, now).allowed,
            };
            Judged {
                profile: Some(p),
                verdict: v,
                any_channel: any,
            }
        }
        Subject::Suppressed(at) => {
            let flags = ProfileFlags {
                suppressed_since: Some(at),
                ..Default::default()
            };
            Judged {
                profile: None,
                verdict: decide(rule, channel, None, flags, now),
                any_channel: false,
            }
        }
        Subject::Unknown => Judged {
            profile: None,
            verdict: Verdict {
                allowed: false,
                basis: rule.basis,
                reason: Reason::UnknownProfile,
                since_ms: None,
            },
            any_channel: false,
        },
    }
}

/// The decision's inputs for one person (a point read of the pool).
pub fn subject_for(svc: &Services, lookup: Lookup, purpose: &PurposeId) -> Result<Subject> {
    svc.read(|conn, _| read_subject(conn, lookup, purpose))
}

/// [`subject_for`] for many people, in the order asked, on one connection.
pub fn subjects_for(
    svc: &Services,
    lookups: Vec<Lookup>,
    purpose: &PurposeId,
) -> Result<Vec<Subject>> {
    svc.read(|conn, _| {
        lookups
            .into_iter()
            .map(|l| read_subject(conn, l, purpose))
            .collect()
    })
}

/// Every definition of a purpose, oldest first.
pub fn purpose_versions(svc: &Services, id: &str) -> Result<Vec<PurposeVersionView>> {
    svc.read(|conn, _| purpose_history(conn, id))
}

/// Create or change a purpose (see [`upsert_purpose`]); the catalog's
/// cache learns of it at once.
pub fn define_purpose(
    svc: &Services,
    id: PurposeId,
    spec: PurposeSpec,
    requires_reconsent: bool,
) -> Result<PurposeChange> {
    let change =
        svc.write(move |ctx| upsert_purpose(ctx.conn, &id, &spec, requires_reconsent, ctx.now_ms))?;
    svc.store.catalog_changed();
    Ok(change)
}

/// One consent decision to record, checked against the catalog at the edge.
#[derive(Debug, Clone)]
pub struct ToRecord {
    pub lookup: Lookup,
    /// The identifier, when the person is named by one: made into a new
    /// profile when nobody has it yet.
    pub identifier: Option<PreparedIdentifier>,
    /// The catalog's id (the handler found it there).
    pub purpose: PurposeId,
    pub decision: ConsentDecision,
    pub method: Method,
    pub channel: Option<Channel>,
    pub notice_version: Option<String>,
    pub source: String,
    pub evidence: Map<String, Value>,
}

/// What recording one decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub profile_id: Option<ProfileId>,
    /// The ledger entry's number; `None` for an erased (suppressed) person,
    /// for whom nothing is recorded.
    pub seq: Option<i64>,
    pub suppressed: bool,
}

/// Record consent decisions in one durable transaction, in the order given.
/// Requests that wait for the writer together are recorded in one pass
/// ([`crate::writer::WriterHandle::transact_merged`]; one that fails is
/// recorded again alone, so it fails only itself).
pub fn record(svc: &Services, decisions: Vec<ToRecord>) -> Result<Vec<Recorded>> {
    svc.writer
        .transact_merged_blocking(RECORDING, decisions, record_decisions)
}

/// [`record`] for a caller on an async worker: `reply` gets what
/// [`record`] returns, once durable; no thread waits meanwhile.
pub fn record_then(
    svc: &Services,
    decisions: Vec<ToRecord>,
    reply: Box<dyn FnOnce(Result<Vec<Recorded>>) + Send>,
) {
    svc.writer
        .transact_merged(RECORDING, decisions, record_decisions, reply)
}

/// The writer's name for the jobs [`record_decisions`] runs.
const RECORDING: &str = "consent decisions";

/// Record `decisions` inside the writer's transaction: one answer each,
/// in order.
fn record_decisions(
    ctx: &mut crate::writer::TxCtx<'_>,
    decisions: Vec<ToRecord>,
) -> Result<Vec<Recorded>> {
    let mut out = Vec::with_capacity(decisions.len());
    let mut entries = Vec::with_capacity(decisions.len());
    let mut slots = Vec::with_capacity(decisions.len());
    let mut named = subjects_named(ctx, &decisions)?.into_iter();
    for d in decisions {
        let subject = match d.lookup {
            Lookup::Identifier(_) if d.identifier.is_some() => named.next().flatten(),
            lookup => subject_to_write(ctx, lookup, d.identifier.as_ref())?,
        };
        let Some(profile) = subject else {
            out.push(Recorded {
                profile_id: None,
                seq: None,
                suppressed: true,
            });
            slots.push(None);
            continue;
        };
        slots.push(Some(entries.len()));
        out.push(Recorded {
            profile_id: Some(profile),
            seq: None,
            suppressed: false,
        });
        entries.push(NewEntry {
            channel: d.channel,
            profile_id: profile,
            purpose: d.purpose,
            decision: d.decision,
            method: d.method,
            notice_version: d.notice_version,
            at_ms: None,
            source: d.source,
            evidence: d.evidence,
        });
    }
    let seqs = append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
    for (r, slot) in out.iter_mut().zip(slots) {
        r.seq = slot.map(|i| seqs[i]);
    }
    Ok(out)
}

/// The profiles of the decisions that name their person by an identifier,
/// in order (`None` for an erased, suppressed one), as [`subject_to_write`]
/// would give them one by one, in one pass: a request of 1,000 entries
/// otherwise costs 1,000 lookups and inserts of each kind (on PostgreSQL,
/// each a round trip: ~500 entries/s).
fn subjects_named(ctx: &mut TxCtx<'_>, decisions: &[ToRecord]) -> Result<Vec<Option<ProfileId>>> {
    let (bidxs, ids): (Vec<BlindIndex>, Vec<&PreparedIdentifier>) = decisions
        .iter()
        .filter_map(|d| match (d.lookup, &d.identifier) {
            (Lookup::Identifier(b), Some(id)) => Some((b, id)),
            _ => None,
        })
        .unzip();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let erased = ctx.conn.suppressed_many(&bidxs)?;
    let live: Vec<&[PreparedIdentifier]> = ids
        .iter()
        .zip(&erased)
        .filter(|(_, e)| !**e)
        .map(|(i, _)| std::slice::from_ref(*i))
        .collect();
    let mut profiles = ctx.resolve_many(&live)?.into_iter();
    Ok(erased
        .iter()
        .map(|e| if *e { None } else { profiles.next() })
        .collect())
}

/// A person's consents as a key may read them.
#[derive(Debug, Clone)]
pub struct PersonConsents {
    pub profile: ProfileId,
    /// The current state, one per purpose with a record.
    pub states: Vec<(PurposeId, ConsentState)>,
    pub flags: ProfileFlags,
    /// Every ledger entry, oldest first, evidence opened where the grant
    /// includes consent (else null).
    pub entries: Vec<LedgerEntryView>,
}

/// A person's consents through `grant`: a person the key may not see reads
/// as absent (as on the profile routes); a purpose-bound key sees its
/// purposes' states and entries only, and the evidence (IP address, user
/// agent, CMP strings) only where its data kinds, narrowed by its
/// purposes, include consent.
pub fn consents_of(
    svc: &Services,
    grant: &tarmo_core::access::Grant,
    id: ProfileId,
) -> Result<PersonConsents> {
    let (profile, kinds) = svc
        .store
        .visible_kinds(grant, id)?
        .ok_or_else(|| Error::rejected(Code::ProfileNotFound, "no profile matches"))?;
    let ours = |purpose: &str| grant.serves(purpose);
    svc.read(|conn, vault| {
        let mut states = states(conn, profile)?;
        states.retain(|(purpose, _)| ours(purpose.as_str()));
        let flags = flags(conn, profile)?;
        // The source (where the consent was given) is part of the record
        // every reader of consents sees, so the entries open as the
        // ledger's proof; the evidence is kept only for a grant that sees
        // consent data.
        let proof = person::Sight::duty(person::Duty::ConsentProof);
        let mut entries = history(conn, vault, &proof, profile)?;
        entries.retain(|e| ours(e.purpose.as_str()));
        if !kinds.contains(&tarmo_core::access::DataKind::Consent) {
            for e in &mut entries {
                e.evidence = Value::Null;
            }
        }
        Ok(PersonConsents {
            profile,
            states,
            flags,
            entries,
        })
    })
}

/// Record a CMP string for the person `lookup` names (see
/// [`record_signal`]); `None` for an erased person, about whom nothing is
/// recorded.
pub fn record_cmp_string(
    svc: &Services,
    lookup: Lookup,
    identifier: Option<PreparedIdentifier>,
    signal: ConsentSignal,
    evidence: Map<String, Value>,
) -> Result<Option<(ProfileId, SignalOutcome)>> {
    svc.write(move |ctx| {
        let Some(profile) = subject_to_write(ctx, lookup, identifier.as_ref())? else {
            return Ok(None);
        };
        let outcome = record_signal(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            profile,
            &signal,
            &evidence,
            ctx.now_ms,
        )?;
        Ok(Some((profile, outcome)))
    })
}

/// The person's first identifier of `kind`, opened.
pub(crate) fn contact(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    kind: &str,
) -> Result<Option<String>> {
    let sight = person::Sight::duty(person::Duty::Delivery);
    for row in conn.identifiers_of(profile)? {
        if row.kind == kind {
            return person::identifier(conn, vault, &sight, &row);
        }
    }
    Ok(None)
}
