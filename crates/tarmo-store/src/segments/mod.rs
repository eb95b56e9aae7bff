//! Segments as stored: their definitions (the rule sealed with the
//! installation key, since a rule may name a value that identifies
//! someone), their members with the time each entered, and the history of
//! entries and exits that automations read. Membership is computed by the
//! [`engine::SegmentEngine`] from facts it keeps in memory only.
//!
//! This module must never accept a rule that reads data kinds its purpose
//! does not use, nor keep a member whose profile is gone.

pub mod audiences;
pub mod engine;

use std::collections::{BTreeMap, BTreeSet};
use tarmo_core::codes::Code;

use serde_json::Value;
use tarmo_core::access::DataKind;
use tarmo_core::consent::PurposeId;
use tarmo_core::segments::{Rule, valid_segment_id};

use crate::conn::{Conn, P, ProfileId};
use crate::consent::Catalog;
use crate::vault::{Place, Vault};
use crate::{Error, Result};

/// A segment's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    pub id: String,
    pub name: String,
    pub purpose: PurposeId,
    pub rule: Rule,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Check a definition against the catalog and the other segments: the
/// purpose exists, the rule reads only the kinds of data the purpose uses,
/// the purposes and segments it names exist, and no segment depends on
/// itself.
pub fn validate(
    def: &SegmentDef,
    catalog: &Catalog,
    others: &BTreeMap<String, SegmentDef>,
) -> Result<()> {
    if !valid_segment_id(&def.id) {
        return Err(Error::rejected(
            Code::InvalidSegmentId,
            "a segment id is 1-64 of a-z, 0-9 and _, starting with a letter",
        ));
    }
    let name = def.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::rejected(
            Code::InvalidSegmentName,
            "a segment's name is 1-200 bytes",
        ));
    }
    let entry = catalog.get(def.purpose.as_str()).ok_or_else(|| {
        Error::rejected(
            Code::UnknownPurpose,
            format!("no purpose `{}` in the catalog", def.purpose),
        )
    })?;
    let usage = def.rule.usage();
    let allowed: BTreeSet<DataKind> = entry
        .spec
        .data_categories
        .iter()
        .flat_map(|c| DataKind::of_category(c.as_str()).iter().copied())
        .collect();
    if let Some(k) = usage.kinds.iter().find(|k| !allowed.contains(k)) {
        let cats: Vec<&str> = entry
            .spec
            .data_categories
            .iter()
            .map(|c| c.as_str())
            .collect();
        return Err(Error::rejected(
            Code::RuleDataNotPermitted,
            format!(
                "the rule reads {} data, which purpose `{}` does not use (its data categories: {})",
                k.as_str(),
                def.purpose,
                if cats.is_empty() {
                    "none".into()
                } else {
                    cats.join(", ")
                }
            ),
        ));
    }
    if let Some(p) = usage.purposes.iter().find(|p| catalog.get(p).is_none()) {
        return Err(Error::rejected(
            Code::UnknownPurpose,
            format!("the rule names purpose `{p}`, which is not in the catalog"),
        ));
    }
    for s in &usage.segments {
        if s != &def.id && !others.contains_key(s) {
            return Err(Error::rejected(
                Code::UnknownSegment,
                format!("the rule names segment `{s}`, which does not exist"),
            ));
        }
    }
    // A cycle: some segment this one reaches names it again.
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = usage.segments.into_iter().collect();
    while let Some(s) = todo.pop() {
        if s == def.id {
            return Err(Error::rejected(
                Code::SegmentCycle,
                format!("segment `{}` would depend on itself", def.id),
            ));
        }
        if seen.insert(s.clone())
            && let Some(d) = others.get(&s)
        {
            todo.extend(d.rule.usage().segments);
        }
    }
    Ok(())
}

/// Definitions in an order where every segment comes after those it names.
pub fn ordered(defs: &BTreeMap<String, SegmentDef>) -> Vec<SegmentDef> {
    let mut out: Vec<SegmentDef> = Vec::with_capacity(defs.len());
    let mut placed = BTreeSet::new();
    while out.len() < defs.len() {
        let before = out.len();
        for d in defs.values() {
            if !placed.contains(&d.id)
                && d.rule
                    .usage()
                    .segments
                    .iter()
                    .all(|s| placed.contains(s) || !defs.contains_key(s))
            {
                placed.insert(d.id.clone());
                out.push(d.clone());
            }
        }
        if out.len() == before {
            // A cycle cannot be saved; should one be found, the rest go last.
            out.extend(defs.values().filter(|d| !placed.contains(&d.id)).cloned());
            break;
        }
    }
    out
}

pub fn load_all(conn: &mut dyn Conn, vault: &Vault) -> Result<BTreeMap<String, SegmentDef>> {
    let mut out = BTreeMap::new();
    for r in conn.query(
        "SELECT id, name, purpose_id, rule, created_ms, updated_ms FROM segments",
        &[],
    )? {
        let sealed = r.sealed(3)?;
        let plain = vault.open_system(Place::SegmentRule, &sealed)?;
        let v: Value = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
        let rule = Rule::from_json(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
        let def = SegmentDef {
            id: r.text(0)?,
            name: r.text(1)?,
            purpose: crate::consent::purpose_id(&r.text(2)?)?,
            rule,
            created_ms: r.int(4)?,
            updated_ms: r.int(5)?,
        };
        out.insert(def.id.clone(), def);
    }
    Ok(out)
}

/// Insert or replace a definition (the caller validated it).
pub fn save(conn: &mut dyn Conn, vault: &Vault, def: &SegmentDef) -> Result<()> {
    let sealed = vault.seal_system(
        Place::SegmentRule,
        def.rule.to_json().to_string().as_bytes(),
    )?;
    conn.exec(
        "INSERT INTO segments (id, name, purpose_id, rule, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, purpose_id = EXCLUDED.purpose_id,
             rule = EXCLUDED.rule, updated_ms = EXCLUDED.updated_ms",
        &[
            P::Text(&def.id),
            P::Text(&def.name),
            P::Text(def.purpose.as_str()),
            P::from(&sealed),
            P::Int(def.created_ms),
            P::Int(def.updated_ms),
        ],
    )?;
    Ok(())
}

/// Delete a definition and its members; its history stays for the
/// automations that read it, until those people are erased. Refused
/// (`409 segment_in_use`, naming them) while an automation or a campaign
/// names it: the flow would go on firing for nobody.
pub fn delete(conn: &mut dyn Conn, id: &str) -> Result<bool> {
    let users: Vec<String> = crate::automations::flows(conn)?
        .into_iter()
        // A campaign reads its segment once, when it fires.
        .filter(|f| {
            f.flow.segment() == Some(id)
                && (f.status == "scheduled" || f.flow.kind() == "automation")
        })
        .map(|f| format!("{} `{}`", f.flow.kind(), f.flow.id()))
        .collect();
    if !users.is_empty() {
        return Err(Error::Rejected {
            code: Code::SegmentInUse,
            message: format!("{} names it; change or delete that first", users.join(", ")),
        });
    }
    conn.exec(
        "DELETE FROM segment_members WHERE segment_id = $1",
        &[P::Text(id)],
    )?;
    Ok(conn.exec("DELETE FROM segments WHERE id = $1", &[P::Text(id)])? > 0)
}

/// Tell the segment engine that a person's facts changed outside ingestion
/// and the consent ledger (a rectification, an erasure), so it reads them
/// again; in the same transaction as the change, so no node misses it.
pub fn touch(conn: &mut dyn Conn, profile: ProfileId, now_ms: i64) -> Result<()> {
    conn.exec(
        "INSERT INTO profile_touches (profile_id, at_ms) VALUES ($1, $2)",
        &[P::Int(profile.0), P::Int(now_ms)],
    )?;
    Ok(())
}

/// An erased person leaves every segment, and their history goes with them.
pub fn erase(conn: &mut dyn Conn, profile: ProfileId) -> Result<()> {
    for sql in [
        "DELETE FROM segment_members WHERE profile_id = $1",
        "DELETE FROM segment_history WHERE profile_id = $1",
        "DELETE FROM profile_touches WHERE profile_id = $1",
    ] {
        conn.exec(sql, &[P::Int(profile.0)])?;
    }
    Ok(())
}

/// The segments a person is in, with when they entered.
pub fn memberships(conn: &mut dyn Conn, profile: ProfileId) -> Result<Vec<(String, i64)>> {
    conn.query(
        "SELECT segment_id, since_ms FROM segment_members WHERE profile_id = $1 ORDER BY segment_id",
        &[P::Int(profile.0)],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}
