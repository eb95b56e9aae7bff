//! Identity resolution: which profile each incoming message belongs to, and
//! when two profiles turn out to be one person.
//!
//! The rules, in order:
//! - a message's identifiers are looked up by blind index; none known makes a
//!   new profile, one known profile takes the message;
//! - with a `userId`, the profile of that user id takes the message; if the
//!   user id is new, it is attached to the first known profile that has no
//!   user id yet (the anonymous visitor who just logged in), else to a new one;
//! - other known profiles merge into the chosen one, except when the merge
//!   would give one profile two different user ids, or when the only link is a
//!   weak identifier (a browser or device id) between two profiles that both
//!   have strong identifiers: a shared laptop does not make two people one.
//!   Refused merges are recorded and logged with profile ids only, once
//!   (the same refusal again is counted, not recorded again), and at most
//!   [`REFUSALS_LOGGED_A_MINUTE`] a minute (the metric counts them all);
//! - from a client source (a write key shipped in a web page or an app),
//!   strong identifiers are claims: they never merge two profiles that both
//!   hold strong identifiers, and a new one never joins a profile that held,
//!   before the message, a strong identifier of the same or a stronger kind
//!   (`IdentifierKind::claim_rank`); both are recorded as refused, with a
//!   reason. Stitching an anonymous-only profile into a known person still
//!   works. Identifiers a server source brings are verified; a client's stay
//!   unverified until a confirmation link, a server source or staff verify
//!   them;
//! - traits merge last-write-wins by the message's own timestamp.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use serde_json::{Map, Value};
use tarmo_core::identity::{IdentifierKind, Trust};
use tarmo_core::profile::TraitSet;
use tarmo_core::segment::MessageKind;

use crate::Result;
use crate::conn::{Conn, IdentifierRow, MergeRow, NewEvent, P, ProfileId, Source};
pub use crate::consent::ConsentSignal;
use crate::consent::{Catalog, SignalOutcome};
use crate::vault::{BlindIndex, DataKey, Place, Sealed, Vault};

/// An identifier ready for the store: its kind, blind index and the value to
/// be sealed.
#[derive(Clone)]
pub struct PreparedIdentifier {
    pub kind: IdentifierKind,
    pub bidx: BlindIndex,
    pub value: String,
}

impl std::fmt::Debug for PreparedIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedIdentifier({}, {:?})", self.kind, self.bidx)
    }
}

/// A parsed message ready for the writer: everything that can be computed
/// without the store (parsing, blind indexes, serialisation) is done already,
/// on the request's own thread.
#[derive(Clone)]
pub struct PreparedEvent {
    pub dedup: Option<i64>,
    /// The write key or the import that sent it.
    pub source: Source,
    /// Whether that source is trusted about identity (a server) or only
    /// claims (a client): see the module's rules.
    pub trust: Trust,
    pub kind: MessageKind,
    pub timestamp_ms: i64,
    /// In precedence order (user id first).
    pub identifiers: Vec<PreparedIdentifier>,
    pub traits: Map<String, Value>,
    /// The message as JSON, packed ([`crate::crypto::packed::pack`]) and
    /// then sealed by the writer under the profile's key.
    pub body: Vec<u8>,
    /// Consent signals that came with the message.
    pub consent: Option<Box<EventConsent>>,
}

/// What a message said about consent: the browser's Global Privacy Control
/// header, and CMP strings (TCF, GPP) already decoded and mapped to purposes.
#[derive(Clone, Default)]
pub struct EventConsent {
    /// The request carried `Sec-GPC: 1`.
    pub gpc: bool,
    pub signals: Vec<ConsentSignal>,
    /// The collection point GPC entries name (each signal names its own).
    pub source: String,
    /// Where the request came from (IP address, user agent): sealed with
    /// every entry the message makes.
    pub evidence: Map<String, Value>,
}

impl std::fmt::Debug for PreparedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedEvent")
            .field("kind", &self.kind)
            .field("identifiers", &self.identifiers)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored(ProfileId),
    Duplicate,
    /// The message names an erased person: acknowledged, not stored.
    Suppressed,
}

#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    user_id: Option<BlindIndex>,
    strong: bool,
    /// The highest `claim_rank` of the profile's identifiers.
    strongest: u8,
    /// Some identifier of the profile is not verified (a trusted source
    /// naming it verifies it).
    claims: bool,
}

impl Facts {
    /// Take in one of the profile's stored identifiers.
    fn observe(&mut self, row: &IdentifierRow) {
        if row.kind == "user_id" {
            self.user_id = Some(row.bidx);
        }
        if row.kind != "anonymous_id" && row.kind != "device_id" {
            self.strong = true;
            self.claims |= row.verified_ms.is_none();
        }
        self.strongest = self.strongest.max(IdentifierKind::claim_rank_of(&row.kind));
    }
}

/// Counters of what a group did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupStats {
    pub stored: u64,
    pub duplicates: u64,
    pub profiles_created: u64,
    pub merges: u64,
    pub merges_refused: u64,
    pub consent_entries: u64,
    pub suppressed: u64,
}

/// Below this many data keys to read, a group reads each as it seals.
const KEYS_AHEAD_MIN: usize = 16;

/// The resolver keeps a bounded cache of identifier → profile between groups
/// when it is the only writer (SQLite). With PostgreSQL several nodes write,
/// so it reads the store every group instead.
pub struct Resolver {
    cache: Option<LruCache<BlindIndex, ProfileId>>,
    facts_cache: Option<LruCache<ProfileId, Facts>>,
    /// (profile, catalog generation) whose GPC signal is already recorded, and
    /// (profile, string hash) of CMP strings already recorded: repeats of the
    /// same signal cost a hash lookup.
    signals_seen: Option<LruCache<(ProfileId, [u8; 32]), ()>>,
    redirect: HashMap<ProfileId, ProfileId>,
    pending: Option<Pending>,
    pending_signals: Vec<(ProfileId, [u8; 32])>,
    clear_after_commit: bool,
    /// Profiles erased in the current transaction: what the caches hold
    /// of them goes once it commits.
    erased: Vec<ProfileId>,
    erased_identifiers: Vec<BlindIndex>,
    /// Whether the suppression list has any entry, while caching (a store
    /// nobody was erased from needs no lookup per new identifier).
    any_suppressed: Option<bool>,
    /// The identity caches' capacity outside bulk loads.
    normal_capacity: usize,
}

/// State of one group (one transaction).
struct Group<'a> {
    conn: &'a mut dyn Conn,
    vault: &'a Vault,
    now_ms: i64,
    ids: HashMap<BlindIndex, ProfileId>,
    facts: HashMap<ProfileId, Facts>,
    traits: HashMap<ProfileId, TraitSet>,
    dirty_traits: HashSet<ProfileId>,
    counts: HashMap<ProfileId, i64>,
    redirect: HashMap<ProfileId, ProfileId>,
    stats: GroupStats,
    /// Data keys the group has used or made, by owner. A new profile's key
    /// must stay at hand: with batched writes it is not in the store yet.
    keys: HashMap<ProfileId, DataKey>,
    /// Sealed traits read ahead, by profile asked for (not yet opened).
    sealed_traits: HashMap<ProfileId, Option<Sealed>>,
    /// Writes held until the end of the group, where the backend batches.
    batch: Option<Batch>,
}

/// Where every statement is a network round trip (PostgreSQL), the rows a
/// group creates are held here and written with one statement per table
/// (`Group::flush`): before any merge (which moves rows by profile id in the
/// store, and so must see them) and before the events. Held rows live only
/// as long as the group: on failure they are dropped with it, and the
/// transaction is rolled back.
#[derive(Default)]
struct Batch {
    /// Reserved ids not handed out yet (last first).
    free_ids: Vec<ProfileId>,
    profiles: Vec<ProfileId>,
    data_keys: Vec<(ProfileId, ProfileId, Vec<u8>)>,
    identifiers: Vec<(IdentifierRow, ProfileId)>,
}

impl Resolver {
    pub fn new(cache_capacity: Option<usize>) -> Self {
        let cap = cache_capacity.and_then(NonZeroUsize::new);
        Self {
            cache: cap.map(LruCache::new),
            facts_cache: cap.map(LruCache::new),
            signals_seen: cap.map(LruCache::new),
            redirect: HashMap::new(),
            pending: None,
            pending_signals: Vec::new(),
            clear_after_commit: false,
            erased: Vec::new(),
            erased_identifiers: Vec::new(),
            any_suppressed: None,
            normal_capacity: cap.map_or(0, NonZeroUsize::get),
        }
    }

    /// While a bulk load runs (`Some(capacity)`), the identity caches hold
    /// up to `capacity` entries each, so that a file naming a million
    /// people reads each person's identifiers once; `None` brings them back
    /// to the capacity the resolver was made with (the least recently used
    /// go). A resolver without caches stays without.
    pub fn bulk_caches(&mut self, capacity: Option<usize>) {
        let normal = self.normal_capacity;
        let cap =
            NonZeroUsize::new(capacity.unwrap_or(normal).max(normal)).unwrap_or(NonZeroUsize::MIN);
        if let Some(c) = &mut self.cache {
            c.resize(cap);
        }
        if let Some(c) = &mut self.facts_cache {
            c.resize(cap);
        }
    }

    /// How many entries the identifier cache may hold (0: no cache).
    pub fn cache_capacity(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.cap().get())
    }

    /// Drop the cache once the current transaction committed.
    pub fn clear_after_commit(&mut self) {
        self.clear_after_commit = true;
    }

    /// These profiles, which held these identifiers, are erased once the
    /// current transaction commits: only what the caches hold of them goes
    /// then. Forgetting is always safe, so a rollback leaves the lists for
    /// the next commit. (Dropping every cache instead took the writer 60 ms
    /// with 200,000 identities cached, inside the erasure's answer, and left
    /// the next groups to read every identity again; walking the caches for
    /// the erased ids took 40 ms.)
    pub fn erased_after_commit(&mut self, ids: &[ProfileId], identifiers: &[BlindIndex]) {
        self.erased.extend_from_slice(ids);
        self.erased_identifiers.extend_from_slice(identifiers);
    }

    /// Forget everything cached: after a rollback, or when another writer may
    /// have changed identities.
    pub fn clear(&mut self) {
        if let Some(c) = &mut self.cache {
            c.clear();
        }
        if let Some(c) = &mut self.facts_cache {
            c.clear();
        }
        if let Some(c) = &mut self.signals_seen {
            c.clear();
        }
        self.any_suppressed = None;
        self.redirect.clear();
    }

    /// Where `p` lives now: through committed merges, and through merges
    /// made earlier in the same transaction (a job that applies several
    /// groups in one transaction, as an import does).
    fn canon(&self, mut p: ProfileId) -> ProfileId {
        loop {
            if let Some(&n) = self.redirect.get(&p) {
                p = n;
            } else if let Some(&n) = self.pending.as_ref().and_then(|x| x.redirect.get(&p)) {
                p = n;
            } else {
                return p;
            }
        }
    }

    /// Apply a group of events inside the caller's open transaction. On error
    /// the caller rolls back and calls [`Resolver::abandon`].
    pub fn apply(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        catalog: &Catalog,
        events: &[&PreparedEvent],
        now_ms: i64,
    ) -> Result<(Vec<Outcome>, GroupStats)> {
        let (outcomes, _, stats) = self.apply_with(conn, vault, catalog, events, &[], now_ms)?;
        Ok((outcomes, stats))
    }

    /// Resolve one set of identifiers to its person's profile — creating,
    /// attaching and merging by the same rules as events — without storing
    /// an event. Inside the caller's transaction; the caller commits, then
    /// calls [`Resolver::keep`] (or rolls back and calls [`Resolver::abandon`]).
    pub fn resolve_identifiers(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        identifiers: &[PreparedIdentifier],
        now_ms: i64,
    ) -> Result<ProfileId> {
        let profiles = self.resolve_subjects(conn, vault, &[identifiers], now_ms)?;
        Ok(profiles[0])
    }

    /// The profiles several identifier sets name, in order, resolved in
    /// one pass, as [`Resolver::resolve_identifiers`] one after the other
    /// would.
    pub fn resolve_subjects(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        subjects: &[&[PreparedIdentifier]],
        now_ms: i64,
    ) -> Result<Vec<ProfileId>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let (_, profiles, _) =
            self.apply_with(conn, vault, &Catalog::default(), &[], subjects, now_ms)?;
        Ok(profiles)
    }

    /// Apply events, and resolve `subjects` (identifier sets that are not
    /// events) to profiles, in one pass. Returns the events' outcomes and the
    /// subjects' current profiles.
    pub fn apply_with(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        catalog: &Catalog,
        events: &[&PreparedEvent],
        subjects: &[&[PreparedIdentifier]],
        now_ms: i64,
    ) -> Result<(Vec<Outcome>, Vec<ProfileId>, GroupStats)> {
        let (outcomes, subjects, stats, _) =
            self.apply_inner(conn, vault, catalog, events, subjects, now_ms, false)?;
        Ok((outcomes, subjects, stats))
    }

    /// As [`Resolver::apply`], also giving the id of each stored event
    /// (`None` for a duplicate or suppressed one), for imports that replace
    /// an event when its record changes.
    pub fn apply_returning_ids(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        catalog: &Catalog,
        events: &[&PreparedEvent],
        now_ms: i64,
    ) -> Result<(Vec<Outcome>, Vec<Option<i64>>, GroupStats)> {
        let (outcomes, _, stats, ids) =
            self.apply_inner(conn, vault, catalog, events, &[], now_ms, true)?;
        Ok((outcomes, ids, stats))
    }

    /// The phases of a group, in order: deduplicate, look up the
    /// identifiers named, resolve and seal each event, resolve the
    /// subjects, write events and profiles, record consent signals, and
    /// hold what was learnt until the commit.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn apply_inner(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        catalog: &Catalog,
        events: &[&PreparedEvent],
        subjects: &[&[PreparedIdentifier]],
        now_ms: i64,
        want_ids: bool,
    ) -> Result<(Vec<Outcome>, Vec<ProfileId>, GroupStats, Vec<Option<i64>>)> {
        let mut outcomes = vec![Outcome::Duplicate; events.len()];
        let mut live = deduplicate(conn, events, now_ms)?;
        let mut g = Group::new(conn, vault, now_ms);
        self.look_up(&mut g, events, subjects, &mut live, &mut outcomes)?;
        if g.conn.batch_writes() {
            g.start_batch(events, subjects, &live)?;
        } else {
            g.keys_ahead()?;
        }
        let rows = self.place_events(&mut g, events, &live, &outcomes)?;

        let mut subject_profiles = Vec::with_capacity(subjects.len());
        for ids in subjects {
            // Staff and API callers name one identifier to act on; the
            // address stays unverified until its confirmation link is used.
            subject_profiles.push(g.resolve(self, ids, Trust::Server, false)?);
        }

        let event_ids = g.write_events(rows, &mut outcomes, want_ids)?;
        g.write_profiles()?;
        let subject_profiles = subject_profiles.into_iter().map(|p| g.canon(p)).collect();

        // Consent signals, once every merge of the group is known.
        for (i, e) in events.iter().enumerate() {
            let (Some(c), Outcome::Stored(p)) = (&e.consent, outcomes[i]) else {
                continue;
            };
            self.record_signals(g.conn, vault, catalog, p, c, now_ms, &mut g.stats)?;
        }
        let stats = g.stats;
        self.hold(g);
        Ok((outcomes, subject_profiles, stats, event_ids))
    }

    /// Look up every identifier the group names that is not cached; an
    /// event naming an erased person's identifier (on the suppression list)
    /// is acknowledged but not stored.
    fn look_up(
        &mut self,
        g: &mut Group<'_>,
        events: &[&PreparedEvent],
        subjects: &[&[PreparedIdentifier]],
        live: &mut [bool],
        outcomes: &mut [Outcome],
    ) -> Result<()> {
        let mut unknown = Vec::new();
        let mut asked = HashSet::new();
        let named = events
            .iter()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .map(|(_, e)| &e.identifiers[..])
            .chain(subjects.iter().copied());
        for identifiers in named {
            for id in identifiers {
                if let Some(p) = self.cache.as_mut().and_then(|c| c.get(&id.bidx).copied()) {
                    let p = self.canon(p);
                    g.ids.insert(id.bidx, p);
                } else if asked.insert(id.bidx) {
                    unknown.push(id.bidx);
                }
            }
        }
        // Identifiers nobody has: an erased person's are on the suppression
        // list, and a message naming one is acknowledged but not stored.
        let mut suppressed: HashSet<BlindIndex> = HashSet::new();
        let any_suppressed = match self.any_suppressed {
            Some(a) => a,
            None if unknown.is_empty() => false,
            None => {
                let a = g
                    .conn
                    .query_opt("SELECT 1 FROM suppression LIMIT 1", &[])?
                    .is_some();
                if self.cache.is_some() {
                    self.any_suppressed = Some(a);
                }
                a
            }
        };
        if !unknown.is_empty() {
            let found = g.conn.identifiers_lookup(&unknown)?;
            let mut nobody = Vec::new();
            for (b, p) in unknown.iter().zip(found) {
                match p {
                    Some(p) => {
                        g.ids.insert(*b, p);
                    }
                    None => nobody.push(*b),
                }
            }
            if any_suppressed && !nobody.is_empty() {
                let on_list = g.conn.suppressed_many(&nobody)?;
                for (b, s) in nobody.iter().zip(on_list) {
                    if s {
                        suppressed.insert(*b);
                    }
                }
            }
        }
        if !suppressed.is_empty() {
            for (i, e) in events.iter().enumerate() {
                if live[i] && e.identifiers.iter().any(|id| suppressed.contains(&id.bidx)) {
                    live[i] = false;
                    outcomes[i] = Outcome::Suppressed;
                    g.stats.suppressed += 1;
                }
            }
        }
        Ok(())
    }

    /// Resolve each live event to its profile, seal its body and fold its
    /// traits in; the rows are written once every merge is known.
    fn place_events(
        &mut self,
        g: &mut Group<'_>,
        events: &[&PreparedEvent],
        live: &[bool],
        outcomes: &[Outcome],
    ) -> Result<Vec<(usize, NewEvent)>> {
        let mut rows = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if !live[i] {
                if outcomes[i] == Outcome::Duplicate {
                    g.stats.duplicates += 1;
                }
                continue;
            }
            let target = g.resolve(self, &e.identifiers, e.trust, true)?;
            let key = g.key(target)?;
            let sealed = g.vault.seal(&key, Place::EventBody, target, &e.body)?;
            rows.push((
                i,
                NewEvent {
                    profile_id: target,
                    key_owner: target,
                    source_id: e.source,
                    kind: e.kind.as_str(),
                    timestamp_ms: e.timestamp_ms,
                    received_ms: g.now_ms,
                    sealed,
                },
            ));
            if !e.traits.is_empty() {
                g.traits_of(target)?;
                let t = g.traits.get_mut(&target).expect("loaded above");
                if t.observe(&e.traits, e.timestamp_ms) {
                    g.dirty_traits.insert(target);
                }
            }
            *g.counts.entry(target).or_default() += 1;
            g.stats.stored += 1;
        }
        Ok(rows)
    }

    /// Keep what the group learnt only once the transaction is known good:
    /// the caller commits, then calls `keep`. Several groups in one
    /// transaction: what each learnt adds up.
    fn hold(&mut self, g: Group<'_>) {
        let mut pending = self.pending.take().unwrap_or(Pending {
            ids: HashMap::new(),
            facts: HashMap::new(),
            redirect: HashMap::new(),
        });
        pending.ids.extend(g.ids);
        pending.facts.extend(g.facts);
        pending.redirect.extend(g.redirect);
        self.pending = Some(pending);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_signals(
        &mut self,
        conn: &mut dyn Conn,
        vault: &Vault,
        catalog: &Catalog,
        profile: ProfileId,
        c: &EventConsent,
        now_ms: i64,
        stats: &mut GroupStats,
    ) -> Result<()> {
        if c.gpc {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&catalog.generation.to_le_bytes());
            k[8..11].copy_from_slice(b"gpc");
            if !self.seen(profile, k) {
                stats.consent_entries += crate::consent::record_gpc(
                    conn,
                    vault,
                    catalog,
                    profile,
                    &c.source,
                    &c.evidence,
                    now_ms,
                )? as u64;
                self.mark(profile, k);
            }
        }
        for sig in &c.signals {
            if self.seen(profile, sig.hash) {
                continue;
            }
            let outcome = crate::consent::record_signal(
                conn,
                vault,
                catalog,
                profile,
                sig,
                &c.evidence,
                now_ms,
            )?;
            if let SignalOutcome::Recorded(written) = outcome {
                stats.consent_entries += written.len() as u64;
            }
            self.mark(profile, sig.hash);
        }
        Ok(())
    }

    fn seen(&mut self, profile: ProfileId, k: [u8; 32]) -> bool {
        self.signals_seen
            .as_mut()
            .is_some_and(|c| c.get(&(profile, k)).is_some())
    }

    /// Remembered only once the transaction commits, like everything else.
    fn mark(&mut self, profile: ProfileId, k: [u8; 32]) {
        if self.signals_seen.is_some() {
            self.pending_signals.push((profile, k));
        }
    }

    /// The transaction committed: keep what the group learnt, and forget
    /// the people it erased.
    pub fn keep(&mut self) {
        if std::mem::take(&mut self.clear_after_commit) {
            self.pending = None;
            self.pending_signals.clear();
            self.erased.clear();
            self.erased_identifiers.clear();
            self.clear();
            return;
        }
        self.keep_pending();
        self.forget_erased();
    }

    /// Drop what the caches hold of erased people: their identifiers
    /// (every identifier cached for them is one of theirs, as the cache
    /// follows the store), their facts, the redirects to and from them.
    /// The signals seen for them stay until they age out: they are keyed
    /// by a profile id that is never handed out again. The suppression
    /// list has grown, so whether it is empty is asked again.
    fn forget_erased(&mut self) {
        if let Some(c) = &mut self.cache {
            for b in &self.erased_identifiers {
                c.pop(b);
            }
        }
        self.erased_identifiers.clear();
        if self.erased.is_empty() {
            return;
        }
        let gone: HashSet<ProfileId> = self.erased.drain(..).collect();
        if let Some(c) = &mut self.facts_cache {
            for id in &gone {
                c.pop(id);
            }
        }
        self.redirect
            .retain(|from, to| !gone.contains(from) && !gone.contains(to));
        self.any_suppressed = None;
    }

    fn keep_pending(&mut self) {
        if let Some(c) = &mut self.signals_seen {
            for k in self.pending_signals.drain(..) {
                c.put(k, ());
            }
        }
        let Some(p) = self.pending.take() else { return };
        self.redirect.extend(p.redirect);
        if self.redirect.len() > 100_000 {
            // Redirects only shortcut cached ids; dropping all is always safe.
            self.clear();
            return;
        }
        if let Some(c) = &mut self.cache {
            for (b, id) in p.ids {
                c.put(b, id);
            }
        }
        if let Some(c) = &mut self.facts_cache {
            for (id, f) in p.facts {
                c.put(id, f);
            }
        }
    }

    /// Whether a job of this transaction asked for the cache to be dropped
    /// after the commit; the question is taken back.
    pub fn take_clear_after_commit(&mut self) -> bool {
        std::mem::take(&mut self.clear_after_commit)
    }

    /// The transaction was rolled back: drop what the group learnt, and every
    /// cached data key, as a rolled-back profile's id will be given again to a
    /// new profile with a new key.
    pub fn abandon(&mut self, vault: &Vault) {
        self.pending = None;
        self.pending_signals.clear();
        self.clear_after_commit = false;
        vault.forget_all();
        self.clear();
    }
}

struct Pending {
    ids: HashMap<BlindIndex, ProfileId>,
    facts: HashMap<ProfileId, Facts>,
    redirect: HashMap<ProfileId, ProfileId>,
}

/// Deduplication, within the group and then against the store: whether
/// each event is still to be stored.
fn deduplicate(conn: &mut dyn Conn, events: &[&PreparedEvent], now_ms: i64) -> Result<Vec<bool>> {
    let mut seen = HashSet::with_capacity(events.len());
    let mut claim_idx = Vec::with_capacity(events.len());
    let mut claim = Vec::with_capacity(events.len());
    let mut live = vec![true; events.len()];
    for (i, e) in events.iter().enumerate() {
        if let Some(h) = e.dedup {
            if seen.insert(h) {
                claim_idx.push(i);
                claim.push(h);
            } else {
                live[i] = false;
            }
        }
    }
    let fresh = if claim.is_empty() {
        Vec::new()
    } else {
        conn.dedup_claim(&claim, now_ms)?
    };
    for (k, &i) in claim_idx.iter().enumerate() {
        if !fresh[k] {
            live[i] = false;
        }
    }
    Ok(live)
}

impl<'a> Group<'a> {
    fn new(conn: &'a mut dyn Conn, vault: &'a Vault, now_ms: i64) -> Self {
        Self {
            conn,
            vault,
            now_ms,
            ids: HashMap::new(),
            facts: HashMap::new(),
            traits: HashMap::new(),
            dirty_traits: HashSet::new(),
            counts: HashMap::new(),
            redirect: HashMap::new(),
            stats: GroupStats::default(),
            keys: HashMap::new(),
            sealed_traits: HashMap::new(),
            batch: None,
        }
    }
}

impl Group<'_> {
    /// Where the backend batches: read ahead what resolving will ask, and
    /// reserve profile ids. Profiles needed: at most one per event or
    /// subject that names an identifier nobody has (or none at all); more
    /// are reserved on the way should that ever fall short.
    fn start_batch(
        &mut self,
        events: &[&PreparedEvent],
        subjects: &[&[PreparedIdentifier]],
        live: &[bool],
    ) -> Result<()> {
        let needed = events
            .iter()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .map(|(_, e)| &e.identifiers[..])
            .chain(subjects.iter().copied())
            .filter(|ids| ids.is_empty() || ids.iter().any(|id| !self.ids.contains_key(&id.bidx)))
            .count();
        self.read_ahead()?;
        let mut free_ids = self.conn.profile_ids_reserve(needed)?;
        free_ids.reverse();
        self.batch = Some(Batch {
            free_ids,
            ..Batch::default()
        });
        Ok(())
    }

    /// Write the events, on the profiles they live on now (merges later in
    /// the group may have moved earlier events' profiles); with `want_ids`,
    /// the id of each stored event by its place in the group.
    fn write_events(
        &mut self,
        rows: Vec<(usize, NewEvent)>,
        outcomes: &mut [Outcome],
        want_ids: bool,
    ) -> Result<Vec<Option<i64>>> {
        let mut new_events = Vec::with_capacity(rows.len());
        let mut stored_at = Vec::with_capacity(rows.len());
        for (i, mut ev) in rows {
            ev.profile_id = self.canon(ev.profile_id);
            outcomes[i] = Outcome::Stored(ev.profile_id);
            new_events.push(ev);
            stored_at.push(i);
        }
        self.flush()?;
        let mut event_ids = Vec::new();
        if want_ids {
            event_ids = vec![None; outcomes.len()];
            let ids = self.conn.events_insert_returning_ids(&new_events)?;
            for (i, id) in stored_at.into_iter().zip(ids) {
                event_ids[i] = Some(id);
            }
        } else {
            self.conn.events_insert(&new_events)?;
        }
        Ok(event_ids)
    }

    /// Add the events' counts to their profiles, and seal and write the
    /// traits that changed.
    fn write_profiles(&mut self) -> Result<()> {
        let mut counts: HashMap<ProfileId, i64> = HashMap::new();
        for (p, n) in std::mem::take(&mut self.counts) {
            *counts.entry(self.canon(p)).or_default() += n;
        }
        // In id order, so that concurrent writers lock rows in one order.
        let mut counts: Vec<(ProfileId, i64)> = counts.into_iter().collect();
        counts.sort_unstable();
        self.conn.profiles_add_events(&counts, self.now_ms)?;
        let mut dirty: Vec<ProfileId> = std::mem::take(&mut self.dirty_traits)
            .into_iter()
            .map(|p| self.canon(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        dirty.sort_unstable();
        let mut traits = Vec::with_capacity(dirty.len());
        for p in dirty {
            if let Some(bytes) = self.traits.get(&p).map(TraitSet::to_bytes) {
                let key = self.key(p)?;
                let sealed = self.vault.seal(&key, Place::ProfileTraits, p, &bytes)?;
                traits.push((p, sealed));
            }
        }
        self.conn.profiles_set_traits(&traits, self.now_ms)?;
        Ok(())
    }

    fn canon(&self, mut p: ProfileId) -> ProfileId {
        while let Some(&n) = self.redirect.get(&p) {
            p = n;
        }
        p
    }

    fn key(&mut self, owner: ProfileId) -> Result<DataKey> {
        if let Some(k) = self.keys.get(&owner) {
            return Ok(k.clone());
        }
        let conn = &mut *self.conn;
        let key = self
            .vault
            .data_key(owner, || conn.data_key_get(owner))?
            .ok_or_else(|| crate::Error::Corrupt(format!("profile {owner} has no data key")))?;
        self.keys.insert(owner, key.clone());
        Ok(key)
    }

    /// Read, in one statement each, what resolving will ask of every profile
    /// the group's identifiers were found on: its identifiers (for the merge
    /// rules), its traits and its data key. Without this, each profile
    /// costs several round trips.
    fn read_ahead(&mut self) -> Result<()> {
        let mut profiles: Vec<ProfileId> = self
            .ids
            .values()
            .copied()
            .filter(|p| !self.facts.contains_key(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if profiles.is_empty() {
            return Ok(());
        }
        profiles.sort_unstable();
        for &p in &profiles {
            self.facts.insert(p, Facts::default());
        }
        for (p, row) in self.conn.identifiers_of_many(&profiles)? {
            let f = self.facts.entry(p).or_default();
            f.observe(&row);
        }
        for (&p, row) in profiles.iter().zip(self.conn.profiles_get(&profiles)?) {
            self.sealed_traits.insert(p, row.and_then(|r| r.traits));
        }
        self.keys_of(&profiles)
    }

    /// Read the data keys of `owners` (sorted) in one pass and keep them.
    fn keys_of(&mut self, owners: &[ProfileId]) -> Result<()> {
        for (&p, wrapped) in owners.iter().zip(self.conn.data_keys_get(owners)?) {
            if let Some(w) = wrapped
                && let Some(k) = self.vault.data_key(p, || Ok(Some(w)))?
            {
                self.keys.insert(p, k);
            }
        }
        Ok(())
    }

    /// Where the backend does not batch (SQLite): the data keys of the
    /// profiles the group's identifiers were found on, when many are in
    /// neither the group nor the vault's cache, read in one pass in key
    /// order rather than one query each while sealing. An import's chunk
    /// of orders from 100,000 customers spent a tenth of the writer's time
    /// in those single reads (`perf`, BENCHMARKS.md).
    fn keys_ahead(&mut self) -> Result<()> {
        let mut missing: Vec<ProfileId> = Vec::new();
        let mut seen = HashSet::new();
        for &p in self.ids.values() {
            if self.keys.contains_key(&p) || !seen.insert(p) {
                continue;
            }
            match self.vault.cached_key(p) {
                Some(k) => {
                    self.keys.insert(p, k);
                }
                None => missing.push(p),
            }
        }
        if missing.len() < KEYS_AHEAD_MIN {
            return Ok(());
        }
        missing.sort_unstable();
        self.keys_of(&missing)
    }

    /// Write what the batch holds: profiles first, then what refers to them.
    fn flush(&mut self) -> Result<()> {
        let Some(b) = &mut self.batch else {
            return Ok(());
        };
        let profiles = std::mem::take(&mut b.profiles);
        let data_keys = std::mem::take(&mut b.data_keys);
        let identifiers = std::mem::take(&mut b.identifiers);
        self.conn.profiles_insert(&profiles, self.now_ms)?;
        self.conn.data_keys_insert(&data_keys)?;
        self.conn.identifiers_insert(&identifiers)?;
        Ok(())
    }

    fn facts(&mut self, r: &mut Resolver, p: ProfileId) -> Result<Facts> {
        if let Some(f) = self.facts.get(&p) {
            return Ok(*f);
        }
        // Learnt earlier in this transaction: newer than the cache.
        if let Some(f) = r.pending.as_ref().and_then(|x| x.facts.get(&p).copied()) {
            self.facts.insert(p, f);
            return Ok(f);
        }
        if let Some(f) = r.facts_cache.as_mut().and_then(|c| c.get(&p).copied()) {
            self.facts.insert(p, f);
            return Ok(f);
        }
        let mut f = Facts::default();
        for row in self.conn.identifiers_of(p)? {
            f.observe(&row);
        }
        self.facts.insert(p, f);
        Ok(f)
    }

    fn traits_of(&mut self, p: ProfileId) -> Result<()> {
        if self.traits.contains_key(&p) {
            return Ok(());
        }
        let sealed = match self.sealed_traits.remove(&p) {
            Some(read_ahead) => read_ahead,
            None => self.conn.profile_get(p)?.and_then(|r| r.traits),
        };
        let t = match sealed {
            None => TraitSet::default(),
            Some(sealed) => {
                let key = self.key(p)?;
                let plain = self.vault.open(&key, Place::ProfileTraits, p, &sealed)?;
                TraitSet::from_bytes(&plain).map_err(|e| crate::Error::Corrupt(e.to_string()))?
            }
        };
        self.traits.insert(p, t);
        Ok(())
    }

    fn create_profile(&mut self) -> Result<ProfileId> {
        let p = match &mut self.batch {
            None => self.conn.profile_create(self.now_ms)?,
            Some(b) => {
                if b.free_ids.is_empty() {
                    b.free_ids = self.conn.profile_ids_reserve(64)?;
                    b.free_ids.reverse();
                }
                let p = b.free_ids.pop().ok_or_else(|| {
                    crate::Error::Backend("no profile id was reserved".to_owned())
                })?;
                b.profiles.push(p);
                p
            }
        };
        let (key, wrapped) = self.vault.new_data_key(p)?;
        self.keys.insert(p, key);
        match &mut self.batch {
            None => self.conn.data_key_insert(p, p, &wrapped)?,
            Some(b) => b.data_keys.push((p, p, wrapped)),
        }
        self.facts.insert(p, Facts::default());
        self.traits.insert(p, TraitSet::default());
        self.stats.profiles_created += 1;
        Ok(p)
    }

    fn attach(
        &mut self,
        r: &mut Resolver,
        id: &PreparedIdentifier,
        p: ProfileId,
        verified: bool,
    ) -> Result<()> {
        self.facts(r, p)?;
        let key = self.key(p)?;
        let sealed = self
            .vault
            .seal(&key, Place::IdentifierValue, p, id.value.as_bytes())?;
        let row = IdentifierRow {
            kind: id.kind.as_str().to_owned(),
            bidx: id.bidx,
            key_owner: p,
            sealed,
            first_seen_ms: self.now_ms,
            verified_ms: verified.then_some(self.now_ms),
        };
        match &mut self.batch {
            None => self.conn.identifier_insert(&row, p)?,
            Some(b) => b.identifiers.push((row, p)),
        }
        self.ids.insert(id.bidx, p);
        let f = self.facts.entry(p).or_default();
        if id.kind == IdentifierKind::UserId {
            f.user_id = Some(id.bidx);
        }
        f.strong |= id.kind.is_strong();
        f.strongest = f.strongest.max(id.kind.claim_rank());
        f.claims |= !verified && id.kind.is_strong();
        Ok(())
    }

    /// A trusted source named identifiers the store holds as claims: they
    /// are verified now.
    fn verify_found(&mut self, identifiers: &[PreparedIdentifier]) -> Result<()> {
        self.flush()?;
        for id in identifiers.iter().filter(|id| id.kind.is_strong()) {
            self.conn.exec(
                "UPDATE identifiers SET verified_ms = $2 WHERE bidx = $1 AND verified_ms IS NULL",
                &[P::Blob(&id.bidx.0), P::Int(self.now_ms)],
            )?;
        }
        Ok(())
    }

    /// A client's claim of an identifier for a known person, not attached.
    fn refuse_claim(&mut self, p: ProfileId, kind: &IdentifierKind) -> Result<()> {
        self.refuse(
            p,
            p,
            kind,
            "a client write key's claim does not add an identifier to a known person who holds one of the same or a stronger kind",
        )
    }

    fn refuse(
        &mut self,
        into: ProfileId,
        from: ProfileId,
        kind: &IdentifierKind,
        reason: &str,
    ) -> Result<()> {
        self.stats.merges_refused += 1;
        // The same refusal again (a browser that sends the same claim at
        // every identify) is counted, not written again: each would be a
        // row (12 bytes an event at 1M customers in the ingest bench) and
        // a warning, and a write key in a web page could add them at will.
        let seen = self.conn.query_opt(
            "SELECT 1 FROM merges WHERE into_profile = $1 AND from_profile = $2 AND identifier_kind = $3 AND refused AND reason = $4",
            &[
                P::Int(into.0),
                P::Int(from.0),
                P::Text(kind.as_str()),
                P::Text(reason),
            ],
        )?;
        if seen.is_some() {
            return Ok(());
        }
        if let Some(unlogged) = REFUSALS_LOGGED.admit(self.now_ms, REFUSALS_LOGGED_A_MINUTE) {
            if unlogged > 0 {
                tracing::warn!(
                    unlogged,
                    "profile merges refused in the minute before and not logged one by one (tarmo_profile_merges_refused_total counts them)"
                );
            }
            if into == from {
                // A claim refused for one known person: no second profile.
                tracing::warn!(profile = into.0, identifier_kind = %kind, reason, "identifier claim refused");
            } else {
                tracing::warn!(into = into.0, from = from.0, identifier_kind = %kind, reason, "profile merge refused");
            }
        }
        self.conn.merge_record(&MergeRow {
            into_profile: into,
            from_profile: from,
            identifier_kind: kind.as_str().to_owned(),
            at_ms: self.now_ms,
            refused: true,
            reason: Some(reason.to_owned()),
        })
    }

    fn merge(&mut self, from: ProfileId, into: ProfileId, kind: &IdentifierKind) -> Result<()> {
        tracing::info!(into = into.0, from = from.0, identifier_kind = %kind, "profiles merged");
        self.traits_of(from)?;
        self.traits_of(into)?;
        let absorbed = self.traits.remove(&from).unwrap_or_default();
        if !absorbed.is_empty() {
            self.traits
                .get_mut(&into)
                .expect("loaded above")
                .absorb(absorbed);
            self.dirty_traits.insert(into);
        }
        self.dirty_traits.remove(&from);
        // The merge moves rows by profile id in the store: held ones too.
        self.flush()?;
        self.conn
            .profile_merge(from, into, kind.as_str(), self.now_ms)?;
        crate::consent::after_merge(self.conn, from, into)?;
        crate::processors::after_merge(self.conn, from, into)?;
        crate::imports::after_merge(self.conn, from, into)?;
        let ff = self.facts.remove(&from).unwrap_or_default();
        let fi = self.facts.entry(into).or_default();
        fi.user_id = fi.user_id.or(ff.user_id);
        fi.strong |= ff.strong;
        fi.strongest = fi.strongest.max(ff.strongest);
        fi.claims |= ff.claims;
        self.redirect.insert(from, into);
        self.stats.merges += 1;
        Ok(())
    }

    /// Choose the profile for one event, creating, attaching and merging as
    /// the rules in the module documentation say.
    fn resolve(
        &mut self,
        r: &mut Resolver,
        identifiers: &[PreparedIdentifier],
        trust: Trust,
        verifies: bool,
    ) -> Result<ProfileId> {
        let claims = trust == Trust::Client;
        let verified = verifies && !claims;
        // Each identifier's current profile, in the event's precedence order.
        let found: Vec<Option<ProfileId>> = identifiers
            .iter()
            .map(|id| self.ids.get(&id.bidx).map(|&p| self.canon(r.canon(p))))
            .collect();
        let user = identifiers
            .iter()
            .position(|id| id.kind == IdentifierKind::UserId);

        // A profile reached only through a browser or device id is not the
        // one for a message that brings a new strong identifier, if that
        // profile already belongs to a known person.
        let brings_new_strong = identifiers
            .iter()
            .zip(&found)
            .any(|(id, p)| p.is_none() && id.kind.is_strong());
        let mut target = None;
        if let Some(u) = user {
            target = found[u];
        }
        if target.is_none() {
            for (id, p) in identifiers.iter().zip(&found) {
                let Some(p) = *p else { continue };
                let f = self.facts(r, p)?;
                if user.is_some() && f.user_id.is_some() {
                    continue;
                }
                if id.kind.is_strong() || !f.strong || !brings_new_strong {
                    target = Some(p);
                    break;
                }
            }
        }
        let target = match target {
            Some(p) => p,
            None => self.create_profile()?,
        };
        // What the target held before this message: a client's claims are
        // judged against that, so that identifiers arriving together on a
        // new or anonymous profile (a sign-up) all join it.
        let held = if claims {
            self.facts(r, target)?
        } else {
            Facts::default()
        };
        if verified {
            let mut any_claims = false;
            for &p in found.iter().flatten() {
                let p = self.canon(p);
                any_claims |= self.facts(r, p)?.claims;
            }
            if any_claims {
                self.verify_found(identifiers)?;
            }
        }

        // New identifiers join first, so the merge rules below see them.
        for (id, p) in identifiers.iter().zip(&found) {
            if p.is_none() && !self.ids.contains_key(&id.bidx) {
                if claims
                    && id.kind.is_strong()
                    && held.strong
                    && held.strongest >= id.kind.claim_rank()
                {
                    self.refuse_claim(target, &id.kind)?;
                    continue;
                }
                self.attach(r, id, target, verified)?;
            }
        }

        for (id, p) in identifiers.iter().zip(&found) {
            let Some(p) = *p else { continue };
            let p = self.canon(p);
            let target = self.canon(target);
            if p == target {
                continue;
            }
            let (ft, fp) = (self.facts(r, target)?, self.facts(r, p)?);
            if let (Some(a), Some(b)) = (ft.user_id, fp.user_id)
                && a != b
            {
                self.refuse(
                    target,
                    p,
                    &id.kind,
                    "the merge would give one profile two user ids",
                )?;
                continue;
            }
            if claims && ft.strong && fp.strong {
                self.refuse(
                    target,
                    p,
                    &id.kind,
                    "a client write key's claim does not merge two known people",
                )?;
                continue;
            }
            if !id.kind.is_strong() && ft.strong && fp.strong {
                self.refuse(
                    target,
                    p,
                    &id.kind,
                    "a shared browser or device id does not merge two known people",
                )?;
                continue;
            }
            self.merge(p, target, &id.kind)?;
        }

        Ok(self.canon(target))
    }
}

/// Refused merges logged one by one in a minute, at most. A write key
/// shipped in every web page lets anyone make claims that are refused;
/// a line for each would let them fill the operator's logs.
pub const REFUSALS_LOGGED_A_MINUTE: u32 = 20;

static REFUSALS_LOGGED: LogBudget = LogBudget::new();

/// A budget of log lines a minute, shared by the threads that log.
pub(crate) struct LogBudget(Mutex<(i64, u32, u64)>);

impl LogBudget {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new((i64::MIN, 0, 0)))
    }

    /// Whether one more line may be logged at `now_ms`: `Some(n)` yes, `n`
    /// being how many were left out in the minute before (said once, at
    /// the first line of the next minute); `None`: no, it is counted.
    pub(crate) fn admit(&self, now_ms: i64, per_minute: u32) -> Option<u64> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let minute = now_ms.div_euclid(60_000);
        let mut unlogged = 0;
        if b.0 != minute {
            unlogged = std::mem::take(&mut b.2);
            *b = (minute, 0, 0);
        }
        if b.1 < per_minute {
            b.1 += 1;
            Some(unlogged)
        } else {
            b.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod log_budget_tests {
    use super::LogBudget;

    #[test]
    fn a_minutes_lines_are_bounded_and_the_rest_said_once() {
        let b = LogBudget::new();
        let t = 1_800_000_000_000;
        let first: Vec<_> = (0..10).map(|i| b.admit(t + i, 3)).collect();
        assert_eq!(&first[..3], &[Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // The next minute: its first line says how many were left out.
        assert_eq!(b.admit(t + 60_000, 3), Some(7));
        assert_eq!(b.admit(t + 60_001, 3), Some(0));
    }
}
