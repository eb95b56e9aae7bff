//! Audiences for ad platforms: a segment's members whose decision for the
//! segment's purpose over the `ads` channel allows it *now*, as hashed,
//! normalised identifiers in the platform's file format, plus removals for
//! those who left, withdrew or were erased since the last sync.
//!
//! Each sync decides and discloses in one writer transaction: a person
//! added is a disclosure to the processor (so an erasure notifies it), and
//! a withdrawal one second earlier keeps them out. What a platform received
//! is kept sealed with the installation key only until it has been told to
//! remove it. No plaintext identifier is ever written to an audience file.

use std::collections::{BTreeMap, HashMap};
use tarmo_core::codes::Code;

use tarmo_core::consent::{Channel, PurposeId, decide};
use tarmo_core::segments::audience::{AudienceFormat, hashed};

use crate::conn::{Conn, IdentifierRow, P, ProcessorId, ProfileId};
use crate::consent::{Catalog, Subject, subjects_by_id};
use crate::crypto::person;
use crate::vault::{Place, Sealed, Vault};
use crate::writer::TxCtx;
use crate::{Error, Result, Services, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct AudienceDef {
    pub id: String,
    pub segment: String,
    pub processor_id: ProcessorId,
    pub format: AudienceFormat,
    pub created_ms: i64,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncReport {
    pub sync: i64,
    pub added: u64,
    pub removed: u64,
    /// People of the segment left out, by reason (`no_consent`, `withdrawn`,
    /// `missing_contact`, ...).
    pub excluded: BTreeMap<String, u64>,
    /// Whether the file was queued for the processor's webhook.
    pub pushed: bool,
    /// Where the time went: the engine's decisions, the work before the
    /// transaction, and the transaction (queued and run), in ms.
    pub timings: SyncTimings,
}

/// A sync's phases, in ms (logged, and printed by the benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncTimings {
    pub decided_ms: u64,
    pub prepared_ms: u64,
    pub transaction_ms: u64,
}

/// The largest file pushed to a webhook in one request (8 MiB, some 60,000
/// people); larger ones are downloaded.
const MAX_PUSHED_FILE: usize = 8 * 1024 * 1024;

/// Check and save a new audience for a segment serving `purpose`.
pub fn create(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    def: &AudienceDef,
    purpose: &PurposeId,
) -> Result<()> {
    if !tarmo_core::segments::valid_segment_id(&def.id) {
        return Err(Error::rejected(
            Code::InvalidAudienceId,
            "an audience id is 1-64 of a-z, 0-9 and _, starting with a letter",
        ));
    }
    if get(conn, &def.id)?.is_some() {
        return Err(Error::Rejected {
            code: Code::AudienceExists,
            message: format!("audience `{}` exists", def.id),
        });
    }
    let Some(p) = crate::processors::get(conn, def.processor_id)? else {
        return Err(Error::rejected(
            Code::UnknownProcessor,
            format!("no processor {}", def.processor_id),
        ));
    };
    if !p.purposes.iter().any(|x| x == purpose) {
        return Err(Error::Rejected {
            code: Code::PurposeNotPermitted,
            message: format!(
                "processor {} is not registered for purpose `{purpose}` (its purposes: {})",
                p.id,
                p.purposes
                    .iter()
                    .map(PurposeId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let entry = catalog.require(purpose.as_str())?;
    if !entry.spec.channels.contains(&Channel::Ads) {
        return Err(Error::rejected(
            Code::ChannelNotCovered,
            format!("purpose `{purpose}` does not cover the ads channel"),
        ));
    }
    conn.exec(
        "INSERT INTO audiences (id, segment_id, processor_id, format, created_ms) VALUES ($1, $2, $3, $4, $5)",
        &[
            P::Text(&def.id),
            P::Text(&def.segment),
            P::from(def.processor_id),
            P::Text(def.format.as_str()),
            P::Int(def.created_ms),
        ],
    )?;
    Ok(())
}

fn def_of(r: &crate::conn::Row) -> Result<AudienceDef> {
    Ok(AudienceDef {
        id: r.text(0)?,
        segment: r.text(1)?,
        processor_id: ProcessorId(r.int(2)?),
        format: AudienceFormat::parse(&r.text(3)?)
            .ok_or_else(|| Error::Corrupt("unknown audience format".into()))?,
        created_ms: r.int(4)?,
    })
}

pub fn get(conn: &mut dyn Conn, id: &str) -> Result<Option<AudienceDef>> {
    conn.query_opt(
        "SELECT id, segment_id, processor_id, format, created_ms FROM audiences WHERE id = $1",
        &[P::Text(id)],
    )?
    .map(|r| def_of(&r))
    .transpose()
}

pub fn list(conn: &mut dyn Conn) -> Result<Vec<AudienceDef>> {
    conn.query(
        "SELECT id, segment_id, processor_id, format, created_ms FROM audiences ORDER BY id",
        &[],
    )?
    .iter()
    .map(def_of)
    .collect()
}

/// The syncs so far: (n, at, added, removed).
pub fn syncs(conn: &mut dyn Conn, id: &str) -> Result<Vec<(i64, i64, i64, i64)>> {
    conn.query(
        "SELECT n, at_ms, added, removed FROM audience_syncs WHERE audience_id = $1 ORDER BY n",
        &[P::Text(id)],
    )?
    .into_iter()
    .map(|r| Ok((r.int(0)?, r.int(1)?, r.int(2)?, r.int(3)?)))
    .collect()
}

/// One audience (a read on the pool, as the three below).
pub fn find(svc: &Services, id: &str) -> Result<Option<AudienceDef>> {
    svc.read(|conn, _| get(conn, id))
}

/// Every audience, by id.
pub fn all(svc: &Services) -> Result<Vec<AudienceDef>> {
    svc.read(|conn, _| list(conn))
}

/// An audience's syncs so far: (n, at, added, removed).
pub fn sync_history(svc: &Services, id: &str) -> Result<Vec<(i64, i64, i64, i64)>> {
    svc.read(|conn, _| syncs(conn, id))
}

/// A sync's file (CSV), opened; `None` when there is no such sync.
pub fn sync_file(svc: &Services, id: &str, n: i64) -> Result<Option<Vec<u8>>> {
    svc.read(|conn, vault| file(conn, vault, id, n))
}

/// An erased person's entries wait, sealed, for the next sync to remove
/// them from the platform; then they go.
pub fn erased(conn: &mut dyn Conn, profile: ProfileId) -> Result<()> {
    conn.exec(
        "UPDATE audience_members SET erased = 1 WHERE profile_id = $1",
        &[P::Int(profile.0)],
    )?;
    Ok(())
}

/// Each person's line in the platform file (`email_hash,phone_hash`, a
/// hash empty where they have no such identifier; `None` with neither):
/// their first email and first phone, found through the index by
/// profile a page at a time and opened in bulk.
fn lines_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    profiles: &[ProfileId],
    format: AudienceFormat,
) -> Result<Vec<(ProfileId, Option<String>)>> {
    let mut out = Vec::with_capacity(profiles.len());
    for page in profiles.chunks(PAGE) {
        let mut first: HashMap<ProfileId, [Option<IdentifierRow>; 2]> =
            HashMap::with_capacity(page.len());
        for (profile, row) in conn.identifiers_of_many(page)? {
            let k = match row.kind.as_str() {
                "email" => 0,
                "phone" => 1,
                _ => continue,
            };
            keep_first(&mut first.entry(profile).or_default()[k], row);
        }
        let contacts: Vec<Contacts> = page
            .iter()
            .map(|p| {
                let [email, phone] = first.remove(p).unwrap_or_default();
                (*p, email, phone)
            })
            .collect();
        out.extend(open_lines(conn, vault, &contacts, format)?);
    }
    Ok(out)
}

/// Members' lines worked out before a sync's transaction, on the read
/// pool and every core: opening a million addresses is most of a sync's
/// work, and none of it needs the writer. The transaction still decides
/// everyone *now*; a person it allows who was not prepared (their consent
/// arrived meanwhile) is worked out there.
#[derive(Debug, Default)]
pub struct Prepared {
    lines: HashMap<ProfileId, Option<String>>,
    /// Each line sealed for `audience_members`, where it is added.
    sealed: HashMap<ProfileId, Sealed>,
    /// Members left out before the transaction (refused when the caller
    /// decided), by reason.
    excluded: BTreeMap<String, u64>,
}

impl Prepared {
    /// A member's line: `None` if they were not prepared, `Some(None)`
    /// if they have neither an email nor a phone.
    pub fn line_of(&self, p: ProfileId) -> Option<Option<&str>> {
        self.lines.get(&p).map(Option::as_deref)
    }
}

/// Threads for the work before the transaction (each with a connection).
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 4)
}

/// Work out the lines of `members` (those the caller expects to be
/// allowed, among `everyone` people; `excluded` counts the others by
/// reason) on up to four threads, each with a connection of the pool.
///
/// Members' identifiers are found one of two ways. A few of everyone
/// (under a quarter): each one's rows through the index by profile, a
/// page at a time. Many: one pass over the email and phone rows of the
/// identifiers table, in key order, split between the threads — the index
/// road costs a random page read per identifier, and for half a million
/// members those reads were two thirds of the sync.
pub fn prepare(
    store: &Store,
    format: AudienceFormat,
    members: &[ProfileId],
    everyone: usize,
    excluded: BTreeMap<String, u64>,
) -> Result<Prepared> {
    if members.is_empty() {
        return Ok(Prepared {
            excluded,
            ..Default::default()
        });
    }
    let n = threads();
    type Part = (Vec<(ProfileId, Option<String>)>, Vec<(ProfileId, Sealed)>);
    let seal_lines = |lines: Vec<(ProfileId, Option<String>)>| -> Result<Part> {
        let mut sealed = Vec::with_capacity(lines.len());
        for (p, line) in &lines {
            if let Some(l) = line {
                sealed.push((
                    *p,
                    store
                        .vault()
                        .seal_system(Place::AudienceHashes, l.as_bytes())?,
                ));
            }
        }
        Ok((lines, sealed))
    };
    let parts: Vec<Result<Part>> = if members.len().saturating_mul(4) >= everyone {
        let picked = scan_contacts(store, members, n)?;
        on_threads(store, &picked, n, |conn, part| {
            seal_lines(open_lines(conn, store.vault(), part, format)?)
        })
    } else {
        on_threads(store, members, n, |conn, part| {
            seal_lines(lines_of(conn, store.vault(), part, format)?)
        })
    };
    let mut lines = HashMap::with_capacity(members.len());
    let mut sealed = HashMap::with_capacity(members.len());
    for part in parts {
        let (l, s) = part?;
        lines.extend(l);
        sealed.extend(s);
    }
    Ok(Prepared {
        lines,
        sealed,
        excluded,
    })
}

/// `work` on up to `n` parts of `items` (of at least a page each), each on
/// a thread with a connection of the pool; the results in order.
fn on_threads<T: Sync, U: Send>(
    store: &Store,
    items: &[T],
    n: usize,
    work: impl Fn(&mut dyn Conn, &[T]) -> Result<U> + Sync,
) -> Vec<Result<U>> {
    let per = items.len().div_ceil(n).max(PAGE);
    let work = &work;
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut conn = store.conn()?;
                    work(&mut *conn, part)
                })
            })
            .collect();
        join_all(workers)
    })
}

fn join_all<T>(workers: Vec<std::thread::ScopedJoinHandle<'_, T>>) -> Vec<T> {
    workers
        .into_iter()
        .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// A member and the identifier rows their line is made of: their first
/// email and first phone (by first seen, then key).
type Contacts = (ProfileId, Option<IdentifierRow>, Option<IdentifierRow>);

/// One pass over the email and phone rows of everyone, split by key range
/// between `n` threads; the first of each kind for each of `members`.
fn scan_contacts(store: &Store, members: &[ProfileId], n: usize) -> Result<Vec<Contacts>> {
    let wanted: std::collections::HashSet<ProfileId> = members.iter().copied().collect();
    let wanted = &wanted;
    // Blind indexes are uniform: ranges of their first byte split the work.
    let bounds: Vec<(u8, Option<u8>)> = (0..n)
        .map(|t| {
            let lo = (t * 256 / n) as u8;
            let hi = ((t + 1) * 256 / n < 256).then(|| ((t + 1) * 256 / n) as u8);
            (lo, hi)
        })
        .collect();
    let found: Vec<Result<HashMap<ProfileId, [Option<IdentifierRow>; 2]>>> =
        std::thread::scope(|s| {
            let workers: Vec<_> = bounds
                .iter()
                .map(|&(lo, hi)| {
                    s.spawn(move || {
                        let mut conn = store.conn()?;
                        scan_range(&mut *conn, wanted, lo, hi)
                    })
                })
                .collect();
            join_all(workers)
        });
    let mut all: HashMap<ProfileId, [Option<IdentifierRow>; 2]> =
        HashMap::with_capacity(members.len());
    for part in found {
        for (p, rows) in part? {
            let slot = all.entry(p).or_default();
            for (k, row) in rows.into_iter().enumerate() {
                if let Some(row) = row {
                    keep_first(&mut slot[k], row);
                }
            }
        }
    }
    Ok(members
        .iter()
        .map(|p| {
            let [email, phone] = all.remove(p).unwrap_or_default();
            (*p, email, phone)
        })
        .collect())
}

/// Keep the earlier of two rows of a kind (first seen, then key).
fn keep_first(slot: &mut Option<IdentifierRow>, row: IdentifierRow) {
    let earlier = slot
        .as_ref()
        .is_none_or(|old| (row.first_seen_ms, row.bidx.0) < (old.first_seen_ms, old.bidx.0));
    if earlier {
        *slot = Some(row);
    }
}

/// Email and phone rows with a key from `lo` (its first byte) up to `hi`
/// (or the end), a page at a time, kept for the `wanted` people.
fn scan_range(
    conn: &mut dyn Conn,
    wanted: &std::collections::HashSet<ProfileId>,
    lo: u8,
    hi: Option<u8>,
) -> Result<HashMap<ProfileId, [Option<IdentifierRow>; 2]>> {
    const SCAN_PAGE: i64 = 5000;
    let mut out: HashMap<ProfileId, [Option<IdentifierRow>; 2]> = HashMap::new();
    // Keys from `from` on: the byte `lo`, then just after the last key read.
    let mut from = vec![lo];
    // No key is 33 bytes of 0xFF or more: the end of the last range.
    let to = hi.map_or_else(|| vec![0xFF; 33], |h| vec![h]);
    loop {
        let rows = conn.query(
            "SELECT bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms
             FROM identifiers WHERE bidx >= $1 AND bidx < $2 AND kind IN ('email', 'phone')
             ORDER BY bidx LIMIT $3",
            &[P::Blob(&from), P::Blob(&to), P::Int(SCAN_PAGE)],
        )?;
        let n = rows.len() as i64;
        for r in rows {
            let bidx = r.blob(0)?;
            let profile = ProfileId(r.int(2)?);
            from.clear();
            from.extend_from_slice(&bidx);
            from.push(0);
            if !wanted.contains(&profile) {
                continue;
            }
            let kind = r.text(1)?;
            let k = usize::from(kind == "phone");
            let row = IdentifierRow {
                kind,
                bidx: crate::vault::BlindIndex::from_slice(&bidx)?,
                key_owner: ProfileId(r.int(3)?),
                sealed: r.sealed(4)?,
                first_seen_ms: r.int(5)?,
                verified_ms: r.opt_int(6)?,
            };
            keep_first(&mut out.entry(profile).or_default()[k], row);
        }
        if n < SCAN_PAGE {
            return Ok(out);
        }
    }
}

/// The lines of members whose rows were found: opened in bulk, hashed.
fn open_lines(
    conn: &mut dyn Conn,
    vault: &Vault,
    contacts: &[Contacts],
    format: AudienceFormat,
) -> Result<Vec<(ProfileId, Option<String>)>> {
    let mut out = Vec::with_capacity(contacts.len());
    for page in contacts.chunks(PAGE) {
        let picked: Vec<&IdentifierRow> = page
            .iter()
            .flat_map(|(_, e, p)| e.iter().chain(p.iter()))
            .collect();
        // An audience is a delivery to the ad platform the purpose allowed:
        // the contact details, hashed before they leave.
        let sight = person::Sight::duty(person::Duty::Delivery);
        let mut values = person::identifiers_in_bulk(conn, vault, &sight, &picked)?.into_iter();
        for (p, e, ph) in page {
            let email = e
                .as_ref()
                .and_then(|_| values.next().flatten())
                .map(|v| hashed(&format.email(&v)))
                .unwrap_or_default();
            let phone = ph
                .as_ref()
                .and_then(|_| values.next().flatten())
                .map(|v| hashed(&format.phone(&v)))
                .unwrap_or_default();
            let line = (!email.is_empty() || !phone.is_empty()).then(|| format!("{email},{phone}"));
            out.push((*p, line));
        }
    }
    Ok(out)
}

/// People read or written per statement.
const PAGE: usize = 500;

/// Sync the audience with the segment's `members` (those not already
/// left out in `prepared`): decide each person now, write the platform
/// file and record the disclosures. `prepared` holds the lines worked out
/// beforehand and the members left out before ([`prepare`]); whoever
/// the platform holds and is not added again is removed.
pub fn sync(
    ctx: &mut TxCtx<'_>,
    def: &AudienceDef,
    purpose: &PurposeId,
    members: &[ProfileId],
    mut prepared: Prepared,
) -> Result<SyncReport> {
    let now = ctx.now_ms;
    let entry = ctx.catalog.require(purpose.as_str())?.clone();
    let n = ctx
        .conn
        .query_opt(
            "SELECT MAX(n) FROM audience_syncs WHERE audience_id = $1",
            &[P::Text(&def.id)],
        )?
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten()
        .unwrap_or(0)
        + 1;
    let mut report = SyncReport {
        sync: n,
        excluded: std::mem::take(&mut prepared.excluded),
        ..Default::default()
    };
    // What the platform holds now, from earlier syncs.
    let mut held: HashMap<ProfileId, (String, bool)> = HashMap::new();
    for r in ctx.conn.query(
        "SELECT profile_id, hashes, erased FROM audience_members WHERE audience_id = $1",
        &[P::Text(&def.id)],
    )? {
        let plain = ctx
            .vault
            .open_system(Place::AudienceHashes, &r.sealed(1)?)?;
        let h = String::from_utf8(plain).map_err(|e| Error::Corrupt(e.to_string()))?;
        held.insert(ProfileId(r.int(0)?), (h, r.int(2)? != 0));
    }
    // Decide everyone a page at a time, then read the identifiers of
    // those allowed a page at a time.
    let mut allowed: Vec<ProfileId> = Vec::with_capacity(members.len());
    for (p, subject) in subjects_by_id(ctx.conn, members, purpose)? {
        let verdict = match subject {
            Subject::Known(cur, st, flags) if cur == p => {
                decide(&entry.rule, Some(Channel::Ads), st.as_ref(), flags, now)
            }
            _ => {
                *report.excluded.entry("unknown_profile".into()).or_default() += 1;
                continue;
            }
        };
        if !verdict.allowed {
            *report
                .excluded
                .entry(verdict.reason.as_str().into())
                .or_default() += 1;
            continue;
        }
        allowed.push(p);
    }
    // Those allowed now whom `prepared` does not cover are worked out here.
    let late: Vec<ProfileId> = allowed
        .iter()
        .copied()
        .filter(|p| !prepared.lines.contains_key(p))
        .collect();
    let mut lines = std::mem::take(&mut prepared.lines);
    lines.extend(lines_of(ctx.conn, ctx.vault, &late, def.format)?);
    let mut now_in: HashMap<ProfileId, String> = HashMap::with_capacity(allowed.len());
    for p in allowed {
        let Some(line) = lines.remove(&p).flatten() else {
            *report.excluded.entry("missing_contact".into()).or_default() += 1;
            continue;
        };
        now_in.insert(p, line);
    }
    drop(lines);
    let (ce, cp) = def.format.columns();
    let mut file = format!("action,{ce},{cp}\n");
    let mut removals: Vec<ProfileId> = Vec::new();
    for (p, (h, erased)) in &held {
        if *erased || now_in.get(p) != Some(h) {
            file.push_str(&format!("remove,{h}\n"));
            removals.push(*p);
        }
    }
    removals.sort_unstable();
    for page in removals.chunks(PAGE) {
        let marks: Vec<String> = (0..page.len()).map(|i| format!("${}", i + 2)).collect();
        let mut params = vec![P::Text(&def.id)];
        params.extend(page.iter().map(|p| P::Int(p.0)));
        ctx.conn.exec(
            &format!(
                "DELETE FROM audience_members WHERE audience_id = $1 AND profile_id IN ({})",
                marks.join(", ")
            ),
            &params,
        )?;
    }
    report.removed = removals.len() as u64;
    let mut adds: Vec<(&ProfileId, &String)> = now_in
        .iter()
        .filter(|(p, h)| held.get(p).is_none_or(|(old, erased)| *erased || old != *h))
        .collect();
    adds.sort_unstable();
    // Each person added is a disclosure of their contact to the processor.
    let categories = serde_json::to_string(&["contact"]).expect("strings serialise");
    for page in adds.chunks(PAGE) {
        let mut sealed = Vec::with_capacity(page.len());
        for (p, h) in page {
            file.push_str(&format!("add,{h}\n"));
            // Sealed beforehand with the line the person is added with.
            sealed.push(match prepared.sealed.remove(*p) {
                Some(s) => s,
                None => ctx.vault.seal_system(Place::AudienceHashes, h.as_bytes())?,
            });
        }
        // audience_members: $1 the audience, then (profile, hashes) pairs.
        let rows: Vec<String> = (0..page.len())
            .map(|i| format!("($1, ${}, ${}, 0)", 2 * i + 2, 2 * i + 3))
            .collect();
        let mut params = vec![P::Text(&def.id)];
        for ((p, _), s) in page.iter().zip(&sealed) {
            params.push(P::Int(p.0));
            params.push(P::from(s));
        }
        ctx.conn.exec(
            &format!(
                "INSERT INTO audience_members (audience_id, profile_id, hashes, erased) VALUES {}",
                rows.join(", ")
            ),
            &params,
        )?;
        // disclosures: $1 processor, $2 purpose, $3 categories, $4 time, then profiles.
        let rows: Vec<String> = (0..page.len())
            .map(|i| format!("(${}, $1, $2, $3, $4)", i + 5))
            .collect();
        let mut params = vec![
            P::from(def.processor_id),
            P::Text(purpose.as_str()),
            P::Text(&categories),
            P::Int(now),
        ];
        params.extend(page.iter().map(|(p, _)| P::Int(p.0)));
        ctx.conn.exec(
            &format!(
                "INSERT INTO disclosures (profile_id, processor_id, purpose, categories, at_ms) VALUES {}",
                rows.join(", ")
            ),
            &params,
        )?;
        report.added += page.len() as u64;
    }
    // Where the processor has a webhook, the file goes there through the
    // processors' delivery queue (retried with backoff, never logged);
    // a file too large for one request waits to be downloaded.
    let webhook = ctx
        .conn
        .query_opt(
            "SELECT erasure_webhook FROM processors WHERE id = $1",
            &[P::from(def.processor_id)],
        )?
        .map(|r| r.opt_text(0))
        .transpose()?
        .flatten();
    if webhook.is_some() && file.len() <= MAX_PUSHED_FILE {
        let payload = serde_json::json!({
            "type": "audience_sync",
            "audience": def.id,
            "sync": n,
            "format": def.format.as_str(),
            "added": report.added,
            "removed": report.removed,
            "file": file,
        });
        let plain = serde_json::to_vec(&payload).map_err(|e| Error::Corrupt(e.to_string()))?;
        let sealed = ctx
            .vault
            .seal_system(Place::ProcessorNotification, &plain)?;
        // Request 0: no data subject request asked for it.
        ctx.conn.exec(
            "INSERT INTO processor_notifications (request_id, processor_id, payload, status,
                 attempts, next_attempt_ms, created_ms)
             VALUES (0, $1, $2, 'pending', 0, $3, $3)",
            &[P::from(def.processor_id), P::from(&sealed), P::Int(now)],
        )?;
        report.pushed = true;
    }
    let sealed = ctx
        .vault
        .seal_system(Place::AudienceFile, file.as_bytes())?;
    let excluded =
        serde_json::to_string(&report.excluded).map_err(|e| Error::Corrupt(e.to_string()))?;
    ctx.conn.exec(
        "INSERT INTO audience_syncs (audience_id, n, at_ms, added, removed, excluded, file)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            P::Text(&def.id),
            P::Int(n),
            P::Int(now),
            P::Int(report.added as i64),
            P::Int(report.removed as i64),
            P::Text(&excluded),
            P::from(&sealed),
        ],
    )?;
    Ok(report)
}

/// A sync's file (CSV), opened.
pub fn file(conn: &mut dyn Conn, vault: &Vault, id: &str, n: i64) -> Result<Option<Vec<u8>>> {
    let Some(r) = conn.query_opt(
        "SELECT file FROM audience_syncs WHERE audience_id = $1 AND n = $2",
        &[P::Text(id), P::Int(n)],
    )?
    else {
        return Ok(None);
    };
    match r.opt_sealed(0)? {
        Some(sealed) => Ok(Some(vault.open_system(Place::AudienceFile, &sealed)?)),
        None => Ok(None),
    }
}
