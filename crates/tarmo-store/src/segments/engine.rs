//! Live segment membership.
//!
//! The engine keeps, in memory only, the facts the defined segments look
//! at: for each person the traits and event properties some rule names,
//! their identifier kinds and their consent state for the purposes involved.
//! Nothing of it is written at rest; on start it is read back (opened) from
//! the store. It then follows what commits — new events (by id), consent
//! ledger entries (by sequence), merges, and touches (erasures,
//! rectifications) — every [`TICK`], re-evaluates the people concerned, and
//! moves people whose answer changes with time alone when that time comes.
//! Every entry and exit is written through the writer, with its time, to
//! `segment_members` and `segment_history` (which automations read).
//!
//! The shop's stores and stock (`in_stock`) are kept too — they are not
//! personal — and read again whenever an import changes them (the
//! `stock_version` meta key), which re-evaluates everyone a stock rule
//! concerns.
//!
//! It must never keep a person the store no longer has, and never list a
//! member to someone who may not see them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tarmo_core::codes::Code;

use serde::Deserialize;
use serde_json::{Map, Value};
use tarmo_core::consent::{Channel, ConsentState, ProfileFlags, PurposeId, decide};
use tarmo_core::segments::columns::{DEAD, MISSING, PropCol};
use tarmo_core::segments::lifecycle::Quintiles;
use tarmo_core::segments::{
    EventRule, EventTable, Events, ExactSum, Facts, LifecycleConfig, Measure, Rfm, Rule, Stage,
    evaluate, trait_holds,
};

use super::SegmentDef;
use crate::conn::{Conn, P, ProfileId, Row};
use crate::consent::Catalog;
use crate::crypto::person;
use crate::cursor::{self, Cursor};
use crate::imports::catalog::{STOCK_VERSION, StockSnapshot, StoreHints};
use crate::metrics::{Histogram, LATENCY_BUCKETS};
use crate::vault::{Place, Sealed};
use crate::writer::WriterHandle;
use crate::{Error, Result, Store};

/// How often the engine looks for what committed.
pub const TICK: Duration = Duration::from_millis(200);
const PAGE: i64 = 5000;
const DAY_MS: i64 = 86_400_000;

/// What the defined segments look at; nothing else is kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Needs {
    events: BTreeSet<String>,
    props: BTreeSet<String>,
    traits: BTreeSet<String>,
    purposes: BTreeSet<String>,
    /// Some rule asks about stock.
    stock: bool,
}

impl Needs {
    fn of(defs: &[SegmentDef], cfg: &LifecycleConfig) -> Self {
        let mut n = Needs::default();
        // Orders feed lifecycle and RFM, which are in every profile view.
        n.events.insert(cfg.order_event.clone());
        n.props.insert(cfg.revenue_property.clone());
        for d in defs {
            let u = d.rule.usage();
            n.events.extend(u.events);
            n.props.extend(u.properties);
            n.traits.extend(u.traits);
            n.purposes.extend(u.purposes);
            n.purposes.insert(d.purpose.to_string());
            n.stock |= u.stock;
        }
        n
    }

    fn covers(&self, other: &Needs) -> bool {
        other.events.is_subset(&self.events)
            && other.props.is_subset(&self.props)
            && other.traits.is_subset(&self.traits)
            && other.purposes.is_subset(&self.purposes)
    }
}

/// An event's properties that some rule reads.
type Props = Vec<(String, Value)>;

/// One person's facts other than events (those are in the [`Table`]s).
/// A million of them are held at 1M profiles, so each is 32 bytes: what
/// most people lack (traits some rule reads, a restriction, more than 64
/// identifier kinds) is behind one pointer. (88 bytes and a boxed list of
/// kinds before: the engine's facts of 1M people took 183 MB, measured.)
#[derive(Debug, Default)]
struct Person {
    /// Identifier kinds: bit `k` for index `k` into [`FactStore::kinds`],
    /// for the first 64 kinds (the rest in [`Rare::kinds`]).
    kinds: u64,
    /// Consent by purpose, as indexes into [`FactStore::purposes`].
    consent: Box<[(u16, ConsentState)]>,
    rare: Option<Box<Rare>>,
}

/// What few people have.
#[derive(Debug, Default)]
struct Rare {
    traits: Map<String, Value>,
    flags: ProfileFlags,
    /// Identifier kinds past the 64th.
    kinds: Vec<u16>,
}

impl Person {
    fn trait_value(&self, name: &str) -> Option<&Value> {
        self.rare.as_ref()?.traits.get(name)
    }

    fn flags(&self) -> ProfileFlags {
        self.rare
            .as_ref()
            .map_or_else(ProfileFlags::default, |r| r.flags)
    }

    fn has_kind(&self, k: u16) -> bool {
        if k < 64 {
            self.kinds & (1 << k) != 0
        } else {
            self.rare.as_ref().is_some_and(|r| r.kinds.contains(&k))
        }
    }

    fn add_kind(&mut self, k: u16) {
        if k < 64 {
            self.kinds |= 1 << k;
        } else if !self.has_kind(k) {
            self.rare_mut().kinds.push(k);
        }
    }

    fn set_kinds(&mut self, kinds: impl IntoIterator<Item = u16>) {
        self.kinds = 0;
        if let Some(r) = &mut self.rare {
            r.kinds.clear();
        }
        for k in kinds {
            self.add_kind(k);
        }
        self.tidy();
    }

    fn set_traits(&mut self, traits: Map<String, Value>) {
        self.rare_mut().traits = traits;
        self.tidy();
    }

    fn set_flags(&mut self, flags: ProfileFlags) {
        self.rare_mut().flags = flags;
        self.tidy();
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Nothing rare left: no box.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| {
            r.traits.is_empty() && r.flags == ProfileFlags::default() && r.kinds.is_empty()
        }) {
            self.rare = None;
        }
    }
}

/// The events of one name, in columns, and each person's rows of it.
#[derive(Debug, Default)]
struct Table {
    name: String,
    cols: EventTable,
    /// Person index -> their rows, oldest first.
    of: Vec<Vec<u32>>,
}

/// Everyone's facts: a dense index per person (reused when one goes), the
/// events in a columnar [`Table`] per name.
#[derive(Debug, Default)]
struct FactStore {
    index: HashMap<ProfileId, u32>,
    ids: Vec<ProfileId>,
    people: Vec<Option<Person>>,
    free: Vec<u32>,
    tables: Vec<Table>,
    kinds: Vec<Box<str>>,
    purposes: Vec<String>,
}

impl FactStore {
    fn new(needs: &Needs) -> Self {
        FactStore {
            tables: needs
                .events
                .iter()
                .map(|e| Table {
                    name: e.clone(),
                    ..Table::default()
                })
                .collect(),
            ..FactStore::default()
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, id: ProfileId) -> bool {
        self.index.contains_key(&id)
    }

    fn get(&self, id: ProfileId) -> Option<(u32, &Person)> {
        let i = *self.index.get(&id)?;
        self.people[i as usize].as_ref().map(|p| (i, p))
    }

    fn get_mut(&mut self, id: ProfileId) -> Option<&mut Person> {
        let i = *self.index.get(&id)?;
        self.people[i as usize].as_mut()
    }

    /// Everyone held: (profile, index, facts).
    fn all(&self) -> impl Iterator<Item = (ProfileId, u32, &Person)> {
        self.people
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (self.ids[i], i as u32, p)))
    }

    fn profiles(&self) -> Vec<ProfileId> {
        self.all().map(|(id, _, _)| id).collect()
    }

    fn table(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }

    /// Hold `p` for `id`, replacing (and dropping the events of) whatever
    /// was held for them; the index.
    fn put(&mut self, id: ProfileId, p: Person) -> u32 {
        if let Some(&i) = self.index.get(&id) {
            self.clear_events(i);
            self.people[i as usize] = Some(p);
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.ids[i as usize] = id;
                self.people[i as usize] = Some(p);
                i
            }
            None => {
                self.ids.push(id);
                self.people.push(Some(p));
                (self.people.len() - 1) as u32
            }
        };
        self.index.insert(id, i);
        i
    }

    fn remove(&mut self, id: ProfileId) {
        if let Some(i) = self.index.remove(&id) {
            self.clear_events(i);
            self.people[i as usize] = None;
            self.free.push(i);
        }
    }

    /// A person's rows are no one's any more (their memory stays until
    /// everything is read again).
    fn clear_events(&mut self, i: u32) {
        for t in &mut self.tables {
            if let Some(rows) = t.of.get_mut(i as usize) {
                for r in rows.drain(..) {
                    t.cols.person[r as usize] = DEAD;
                }
                *rows = Vec::new();
            }
        }
    }

    fn add_event(&mut self, i: u32, table: usize, ts: i64, props: Props) {
        let t = &mut self.tables[table];
        let row = t.cols.push(i, ts, props);
        if t.of.len() <= i as usize {
            t.of.resize_with(i as usize + 1, Vec::new);
        }
        let mut rows = std::mem::take(&mut t.of[i as usize]);
        t.cols.insert_sorted(&mut rows, row);
        t.of[i as usize] = rows;
    }

    fn events(&self, i: u32, name: &str) -> Events<'_> {
        match self.tables.iter().find(|t| t.name == name) {
            Some(t) => Events::new(&t.cols, t.of.get(i as usize).map_or(&[], Vec::as_slice)),
            None => Events::EMPTY,
        }
    }

    fn kind_id(&mut self, k: &str) -> u16 {
        match self.kinds.iter().position(|x| &**x == k) {
            Some(i) => i as u16,
            None => {
                self.kinds.push(k.into());
                (self.kinds.len() - 1) as u16
            }
        }
    }

    fn purpose_id(&mut self, purpose: &str) -> u16 {
        match self.purposes.iter().position(|x| x == purpose) {
            Some(i) => i as u16,
            None => {
                self.purposes.push(purpose.into());
                (self.purposes.len() - 1) as u16
            }
        }
    }

    fn consent<'a>(&self, p: &'a Person, purpose: &str) -> Option<&'a ConsentState> {
        let k = self.purposes.iter().position(|x| x == purpose)? as u16;
        p.consent.iter().find(|(x, _)| *x == k).map(|(_, s)| s)
    }

    /// Set a person's consent for a purpose.
    fn set_consent(&mut self, id: ProfileId, purpose: &str, state: ConsentState) {
        let k = self.purpose_id(purpose);
        if let Some(p) = self.get_mut(id) {
            let mut v: Vec<(u16, ConsentState)> = std::mem::take(&mut p.consent).into_vec();
            v.retain(|(x, _)| *x != k);
            v.push((k, state));
            p.consent = v.into_boxed_slice();
        }
    }

    /// (orders, first, last, revenue)
    fn orders(&self, i: u32, cfg: &LifecycleConfig) -> Option<(u64, i64, i64, f64)> {
        let e = self.events(i, &cfg.order_event);
        let (first, last) = (e.first_ts()?, e.last_ts()?);
        Some((e.len() as u64, first, last, e.sum(&cfg.revenue_property)))
    }

    /// Events held.
    fn held(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.of.iter().map(Vec::len).sum::<usize>())
            .sum()
    }
}

/// A person's lifecycle as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub stage: Option<Stage>,
    pub rfm: Option<Rfm>,
    pub orders: u64,
    pub revenue: f64,
    pub last_order_ms: Option<i64>,
}

/// Counts per stage and the distribution of scores.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSummary {
    pub stages: BTreeMap<&'static str, u64>,
    pub without_orders: u64,
    /// Customers with each score 1..=5 (index 0 is score 1).
    pub r: [u64; 5],
    pub f: [u64; 5],
    pub m: [u64; 5],
    pub quintiles: Quintiles,
}

struct View<'a> {
    fs: &'a FactStore,
    i: u32,
    p: &'a Person,
    now: i64,
    catalog: &'a Catalog,
    cfg: &'a LifecycleConfig,
    q: &'a Quintiles,
    current: &'a [&'a str],
    stock: &'a StockSnapshot,
}

/// A trait or property as a store or city name.
fn name_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    }
}

impl Facts for View<'_> {
    fn trait_value(&self, name: &str) -> Option<&Value> {
        self.p.trait_value(name)
    }

    fn has_identifier(&self, kind: &str) -> bool {
        self.fs
            .kinds
            .iter()
            .position(|x| &**x == kind)
            .is_some_and(|k| self.p.has_kind(k as u16))
    }

    fn events(&self, name: &str) -> Events<'_> {
        self.fs.events(self.i, name)
    }

    fn consent_allows(&self, purpose: &str, channel: Option<&str>) -> bool {
        allowed(self.fs, self.p, self.catalog, purpose, channel, self.now)
    }

    fn lifecycle(&self) -> Option<Stage> {
        let (n, first, last, _) = self.fs.orders(self.i, self.cfg)?;
        self.cfg.stage(n, first, last, self.now)
    }

    fn rfm(&self) -> Option<Rfm> {
        let (n, _, last, revenue) = self.fs.orders(self.i, self.cfg)?;
        Some(
            self.q
                .score(((self.now - last) / DAY_MS) as f64, n as f64, revenue),
        )
    }

    fn lifecycle_changes_at(&self) -> Option<i64> {
        let (_, first, last, _) = self.fs.orders(self.i, self.cfg)?;
        self.cfg.next_change(first, last, self.now)
    }

    fn in_segment(&self, id: &str) -> bool {
        self.current.contains(&id)
    }

    fn in_stock(&self, product: &str) -> bool {
        let orders = self.fs.events(self.i, &self.cfg.order_event);
        let latest_purchase_store = (0..orders.len()).rev().find_map(|k| {
            orders
                .prop(k, tarmo_core::segments::STORE_PROPERTY)
                .and_then(name_of)
        });
        let hints = StoreHints {
            preferred_store: self.p.trait_value("preferred_store").and_then(name_of),
            latest_purchase_store,
            city: self.p.trait_value("city").and_then(name_of),
        };
        self.stock.in_stock(&hints, product)
    }
}

fn allowed(
    fs: &FactStore,
    p: &Person,
    catalog: &Catalog,
    purpose: &str,
    channel: Option<&str>,
    now: i64,
) -> bool {
    let Some(c) = catalog.get(purpose) else {
        return false;
    };
    let channel = match channel {
        Some(ch) => match Channel::parse(ch) {
            Ok(c) => Some(c),
            Err(_) => return false,
        },
        None => None,
    };
    decide(&c.rule, channel, fs.consent(p, purpose), p.flags(), now).allowed
}

/// Whether `rule` holds now for every index of `fs` (false for the free
/// ones): events and consent are answered in passes over columns; any
/// other condition asks `other` person by person.
fn holds_all(
    fs: &FactStore,
    rule: &Rule,
    now: i64,
    catalog: &Catalog,
    other: &dyn Fn(u32, &Person, &Rule) -> bool,
) -> Vec<bool> {
    let n = fs.people.len();
    match rule {
        Rule::All(c) => {
            let mut acc: Vec<bool> = fs.people.iter().map(Option::is_some).collect();
            for r in c {
                for (a, b) in acc.iter_mut().zip(holds_all(fs, r, now, catalog, other)) {
                    *a &= b;
                }
            }
            acc
        }
        Rule::Any(c) => {
            let mut acc = vec![false; n];
            for r in c {
                for (a, b) in acc.iter_mut().zip(holds_all(fs, r, now, catalog, other)) {
                    *a |= b;
                }
            }
            acc
        }
        Rule::Not(c) => {
            let mut v = holds_all(fs, c, now, catalog, other);
            for (i, x) in v.iter_mut().enumerate() {
                *x = !*x && fs.people[i].is_some();
            }
            v
        }
        Rule::Event(e) => event_holds_all(fs, e, now),
        Rule::Consent { purpose, channel } => {
            let Some(c) = catalog.get(purpose) else {
                return vec![false; n];
            };
            let channel = match channel.as_deref().map(Channel::parse) {
                Some(Ok(c)) => Some(c),
                Some(Err(_)) => return vec![false; n],
                None => None,
            };
            let k = fs
                .purposes
                .iter()
                .position(|x| x == purpose)
                .map(|k| k as u16);
            fs.people
                .iter()
                .map(|p| {
                    p.as_ref().is_some_and(|p| {
                        let state =
                            k.and_then(|k| p.consent.iter().find(|(x, _)| *x == k).map(|(_, s)| s));
                        decide(&c.rule, channel, state, p.flags(), now).allowed
                    })
                })
                .collect()
        }
        _ => fs
            .people
            .iter()
            .enumerate()
            .map(|(i, p)| p.as_ref().is_some_and(|p| other(i as u32, p, rule)))
            .collect(),
    }
}

/// [`Rule::Event`] for everyone: one pass over the table's rows in the
/// window, counting (and summing) per person, as
/// [`tarmo_core::segments::evaluate`] does person by person.
fn event_holds_all(fs: &FactStore, e: &EventRule, now: i64) -> Vec<bool> {
    let n = fs.people.len();
    let judge = |count: u64, sum: f64| match &e.measure {
        Measure::Count(c) => c.holds(count as f64),
        Measure::Sum { cmp, .. } => cmp.holds(sum),
    };
    let alive = |i: usize| fs.people[i].is_some();
    let Some(t) = fs.tables.iter().find(|t| t.name == e.name) else {
        let h = judge(0, 0.0);
        return (0..n).map(|i| h && alive(i)).collect();
    };
    let cols = &t.cols;
    // Each filter decided once per distinct value.
    let filters: Vec<(Option<&PropCol>, Vec<bool>, bool)> = e
        .filters
        .iter()
        .map(|f| {
            let col = cols.col(&f.property);
            let per = col.map_or_else(Vec::new, |c| {
                c.dict
                    .values()
                    .iter()
                    .map(|v| trait_holds(Some(v), f.op, &f.value))
                    .collect()
            });
            (col, per, trait_holds(None, f.op, &f.value))
        })
        .collect();
    let summed = match &e.measure {
        Measure::Sum { property, .. } => Some(cols.col(property)),
        Measure::Count(_) => None,
    };
    let from = now - e.within.ms();
    let mut count = vec![0u32; n];
    let mut sum = vec![ExactSum::default(); if summed.is_some() { n } else { 0 }];
    'rows: for r in 0..cols.len() {
        let ts = cols.ts[r];
        if ts <= from || ts > now {
            continue;
        }
        let p = cols.person[r];
        if p == DEAD {
            continue;
        }
        for (col, per, missing) in &filters {
            let ok = match col {
                None => *missing,
                Some(c) => match c.ids[r] {
                    MISSING => *missing,
                    id => per[id as usize],
                },
            };
            if !ok {
                continue 'rows;
            }
        }
        count[p as usize] += 1;
        if let Some(Some(c)) = summed {
            let id = c.ids[r];
            if id != MISSING {
                sum[p as usize].add(c.dict.num(id));
            }
        }
    }
    (0..n)
        .map(|i| alive(i) && judge(count[i] as u64, sum.get(i).map_or(0.0, |s| s.value())))
        .collect()
}

/// Events, merges and touches take their ids from a sequence (on
/// PostgreSQL, out of commit order): see [`Cursor`]. Ledger entries are
/// numbered in order under the ledger's lock.
#[derive(Debug, Clone, Default)]
struct Cursors {
    event: Cursor,
    ledger: i64,
    merge: Cursor,
    touch: Cursor,
}

#[derive(Default)]
struct State {
    defs: Vec<SegmentDef>,
    needs: Needs,
    facts: FactStore,
    /// Segment → member → since.
    members: HashMap<String, BTreeMap<ProfileId, i64>>,
    /// When each person's answers may next change by time alone.
    wake: BTreeSet<(i64, ProfileId)>,
    wake_of: HashMap<ProfileId, i64>,
    cursors: Cursors,
    quintiles: Quintiles,
    quintiles_day: i64,
    stock: StockSnapshot,
    /// The `stock_version` the snapshot was read at.
    stock_version: Option<Vec<u8>>,
    /// The facts are being read again, or a read failed part way: nothing
    /// is answered from them until a read completes (the next tick tries).
    stale: bool,
    /// What the ticks' gathers found for the next [`SegmentEngine::follow`].
    pending: Pending,
    /// Moved by everything that changes the facts, the needs or the
    /// cursors other than a gather: a page read without the state is
    /// applied only if this did not move meanwhile.
    generation: u64,
}

/// People the events read since the last [`SegmentEngine::follow`]
/// concern, by what they need.
#[derive(Default)]
struct Pending {
    /// Whose answers may have changed (an event of theirs was added).
    dirty: HashSet<ProfileId>,
    /// Whom the engine does not hold yet (or who must be read whole).
    reload: HashSet<ProfileId>,
    /// Whose traits or identifiers may have changed (an identify).
    refresh: HashSet<ProfileId>,
    /// Whose consent may have changed (a ledger entry).
    consent: HashSet<ProfileId>,
}

/// An event as a gather read it, opened, before it is applied.
enum Seen {
    /// A track, with its name and the properties some rule reads, if any
    /// rule reads events of its name.
    Track(ProfileId, i64, Option<(String, Props)>),
    /// Any other kind: the person's traits or identifiers may have changed.
    Other(ProfileId),
}

/// The events a tick follows, as [`SegmentEngine::seen`] reads them.
const EVENT_ROWS: &str = "SELECT id, profile_id, key_owner, kind, ts_ms, body FROM events";

/// Events a gather reads, opens and applies at a time: the state is held
/// only to apply them (a fraction of a millisecond for this many).
const GATHER: i64 = 500;

/// A membership change to record.
#[derive(Debug, Clone)]
enum Change {
    Enter(String, ProfileId, i64),
    Leave(String, ProfileId, i64),
}

/// The engine; see the module documentation.
pub struct SegmentEngine {
    store: Arc<Store>,
    writer: WriterHandle,
    cfg: LifecycleConfig,
    state: Mutex<State>,
    /// Held while membership changes are written; taken while holding
    /// `state`, so changes are written in the order they were decided, but
    /// a tick lets go of `state` while it waits for the writer, so readers
    /// of membership do not wait behind ingestion.
    writing: Mutex<()>,
    stopped: AtomicBool,
    /// How long the initial load took.
    pub loaded_in: Mutex<Duration>,
    /// How long a tick held the state at a time (a page taken in, the
    /// people decided): what a reader of membership may wait.
    held: Histogram,
}

#[derive(Deserialize)]
struct NameOnly {
    event: Option<String>,
}

#[derive(Deserialize)]
struct WithProps {
    #[serde(default)]
    properties: Option<Map<String, Value>>,
}

/// The page of members a caller asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersPage {
    pub members: Vec<(ProfileId, i64)>,
    pub next: Option<ProfileId>,
}

impl SegmentEngine {
    /// Load the definitions and everyone's facts, record what changed while
    /// no engine ran, and return the engine (call [`SegmentEngine::run`] on a
    /// thread of its own to keep it live).
    pub fn start(
        store: Arc<Store>,
        writer: WriterHandle,
        cfg: LifecycleConfig,
    ) -> Result<Arc<Self>> {
        let began = Instant::now();
        let engine = Arc::new(Self {
            store,
            writer,
            cfg,
            state: Mutex::new(State::default()),
            writing: Mutex::new(()),
            stopped: AtomicBool::new(false),
            loaded_in: Mutex::new(Duration::ZERO),
            held: Histogram::new(LATENCY_BUCKETS),
        });
        {
            let mut st = engine.lock();
            let defs = {
                let mut conn = engine.store.conn()?;
                super::load_all(&mut *conn, engine.store.vault())?
            };
            st.defs = super::ordered(&defs);
            st.needs = Needs::of(&st.defs, &engine.cfg);
            engine.reload_all(&mut st)?;
            engine.load_members(&mut st)?;
            let now = crate::now_ms();
            let everyone = st.facts.profiles();
            let changes = engine.evaluate_people(&mut st, &everyone, now)?;
            // Members whose profile is gone (erased or merged while no
            // engine ran) leave.
            let mut gone = Vec::new();
            for (seg, m) in &st.members {
                for p in m.keys() {
                    if !st.facts.contains(*p) {
                        gone.push(Change::Leave(seg.clone(), *p, now));
                    }
                }
            }
            for c in &gone {
                if let Change::Leave(s, p, _) = c
                    && let Some(m) = st.members.get_mut(s)
                {
                    m.remove(p);
                }
            }
            engine.write_now(changes.into_iter().chain(gone).collect())?;
        }
        *engine.loaded_in.lock().expect("load time") = began.elapsed();
        tracing::info!(
            ms = began.elapsed().as_millis() as u64,
            "segment engine loaded"
        );
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves facts that may be half
        // updated; they are rebuilt on the next definition change or start,
        // and serving stale membership beats serving none.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow the store until [`SegmentEngine::stop`].
    pub fn run(self: &Arc<Self>) {
        while !self.stopped.load(Ordering::Relaxed) {
            let began = Instant::now();
            if let Err(e) = self.tick() {
                tracing::warn!(error = %e, "segment engine: will retry");
            }
            if let Some(rest) = TICK.checked_sub(began.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Prometheus text: how long the ticks held the state at a time.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP tarmo_segment_engine_held_seconds Time a tick of the segment engine held its state at a time (a page of events taken in, the people concerned decided); profile views and lookups wait for it.\n# TYPE tarmo_segment_engine_held_seconds histogram\n",
        );
        self.held
            .render(out, "tarmo_segment_engine_held_seconds", "");
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The first half of a tick alone (the events and consent decisions
    /// read and applied), for the tests of what may commit between it and
    /// the second.
    #[doc(hidden)]
    pub fn tick_gather(&self) -> Result<()> {
        self.gather()
    }

    /// The second half of a tick alone (the people the gathers noted read
    /// and taken in), for the same tests.
    #[doc(hidden)]
    pub fn tick_read_people(&self) -> Result<()> {
        self.read_people()
    }

    /// Take in everything committed since the last look and move the people
    /// concerned, and those whose time came. Returns the changes recorded.
    /// The reading (events, people, consent) is done without holding the
    /// state ([`SegmentEngine::gather`], [`SegmentEngine::read_people`]);
    /// the state is held to take each page in and to decide the people
    /// concerned.
    pub fn tick(&self) -> Result<usize> {
        self.gather()?;
        self.read_people()?;
        let (changes, writing) = {
            let mut st = self.lock();
            let held = Instant::now();
            let changes = self.follow_with(&mut st, crate::now_ms(), true)?;
            let writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            drop(st);
            self.held.observe(held.elapsed());
            (changes, writing)
        };
        let n = changes.len();
        self.write(changes)?;
        drop(writing);
        Ok(n)
    }

    /// Read the events committed since the last look, a page at a time,
    /// without holding the state: only applying a page takes it, so a
    /// reader of membership (a profile view, a lookup) waits for that, not
    /// for the reading and opening of thousands of events while ingestion
    /// runs. Whom the events concern is left in `pending` for the next
    /// [`SegmentEngine::follow`], which does the rest under the state as
    /// before. A page read while something else changed the state (a
    /// definition, a catch-up of its own) is dropped: `follow` reads it.
    fn gather(&self) -> Result<()> {
        let mut conn = self.store.conn()?;
        loop {
            let (generation, mut cursor, needs) = {
                let st = self.lock();
                if st.stale {
                    return Ok(());
                }
                (st.generation, st.cursors.event.clone(), st.needs.clone())
            };
            let (rows, full) = cursor.poll(&mut *conn, EVENT_ROWS, GATHER, crate::now_ms())?;
            let seen = rows
                .iter()
                .map(|r| self.seen(&mut *conn, &needs, r))
                .collect::<Result<Vec<_>>>()?;
            let mut st = self.lock();
            let held = Instant::now();
            if st.generation != generation {
                return Ok(());
            }
            st.cursors.event = cursor;
            let State { facts, pending, .. } = &mut *st;
            for e in seen {
                apply_seen(facts, pending, e);
            }
            drop(st);
            self.held.observe(held.elapsed());
            if !full {
                break;
            }
        }
        // Consent decisions: whose consent to read again.
        loop {
            let (generation, after) = {
                let st = self.lock();
                (st.generation, st.cursors.ledger)
            };
            let rows = conn.query(
                "SELECT seq, profile_id FROM consent_ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[P::Int(after), P::Int(GATHER)],
            )?;
            let mut st = self.lock();
            let held = Instant::now();
            if st.generation != generation {
                return Ok(());
            }
            let n = rows.len() as i64;
            for r in rows {
                st.cursors.ledger = r.int(0)?;
                let profile = ProfileId(r.int(1)?);
                let State { facts, pending, .. } = &mut *st;
                mark_consent(facts, pending, profile);
            }
            drop(st);
            self.held.observe(held.elapsed());
            if n < GATHER {
                return Ok(());
            }
        }
    }

    /// Take in what committed since the last look (and what the gathers
    /// left pending) and evaluate the people concerned; the membership
    /// changes to record.
    fn follow(&self, st: &mut State, now: i64) -> Result<Vec<Change>> {
        self.follow_with(st, now, false)
    }

    /// [`SegmentEngine::follow`]; with `gathered`, the events and consent
    /// decisions are left to the ticks' gathers (one ran just before).
    fn follow_with(&self, st: &mut State, now: i64, gathered: bool) -> Result<Vec<Change>> {
        st.generation += 1;
        let mut conn = self.store.conn()?;
        let mut pending = std::mem::take(&mut st.pending);
        let mut changes = Vec::new();
        if st.stale {
            // An earlier read of everyone failed part way: read again, and
            // ask everyone (what committed meanwhile is in what was read).
            drop(conn);
            self.reload_all(st)?;
            let everyone = st.facts.profiles();
            return self.evaluate_people(st, &everyone, now);
        }

        // Stores or stock changed (an import): read them again, and ask
        // everyone a stock rule concerns again.
        let version = conn.meta_get(STOCK_VERSION)?;
        if version != st.stock_version {
            st.stock = StockSnapshot::load(&mut *conn)?;
            st.stock_version = version;
            if st.needs.stock {
                pending.dirty.extend(st.facts.profiles());
            }
        }

        // Merges first: the events of a merged profile now belong to the survivor.
        let clock = crate::now_ms();
        let (rows, _) = st.cursors.merge.poll(
            &mut *conn,
            "SELECT id, into_profile, from_profile, refused FROM merges",
            i64::MAX,
            clock,
        )?;
        for r in rows {
            if r.int(3)? != 0 {
                continue;
            }
            let (into, from) = (r.int(1)?, r.int(2)?);
            changes.extend(forget(st, ProfileId(from), now));
            pending.reload.insert(ProfileId(into));
        }
        // New events.
        let mut more = !gathered;
        while more {
            let (rows, full) = st.cursors.event.poll(&mut *conn, EVENT_ROWS, PAGE, clock)?;
            for r in rows {
                let e = self.seen(&mut *conn, &st.needs, &r)?;
                apply_seen(&mut st.facts, &mut pending, e);
            }
            more = full;
        }
        // Consent decisions.
        let rows = if gathered {
            Vec::new()
        } else {
            conn.query(
                "SELECT seq, profile_id FROM consent_ledger WHERE seq > $1 ORDER BY seq",
                &[P::Int(st.cursors.ledger)],
            )?
        };
        for r in rows {
            st.cursors.ledger = r.int(0)?;
            mark_consent(&st.facts, &mut pending, ProfileId(r.int(1)?));
        }
        for profile in std::mem::take(&mut pending.consent) {
            if st.facts.contains(profile) && !pending.reload.contains(&profile) {
                load_consent(&mut *conn, profile, &st.needs, &mut st.facts)?;
                pending.dirty.insert(profile);
            } else {
                pending.reload.insert(profile);
            }
        }
        // Erasures and rectifications.
        let (rows, _) = st.cursors.touch.poll(
            &mut *conn,
            "SELECT id, profile_id FROM profile_touches",
            i64::MAX,
            clock,
        )?;
        for r in rows {
            pending.reload.insert(ProfileId(r.int(1)?));
        }
        for profile in pending.refresh {
            if pending.reload.contains(&profile) {
                continue;
            }
            match st.facts.contains(profile) {
                true => {
                    if self.refresh_person(&mut *conn, &st.needs, profile, &mut st.facts)? {
                        pending.dirty.insert(profile);
                    } else {
                        changes.extend(forget(st, profile, now));
                    }
                }
                false => {
                    pending.reload.insert(profile);
                }
            }
        }
        for profile in pending.reload {
            match self.load_person(
                &mut *conn,
                &st.needs,
                &mut st.facts,
                profile,
                st.cursors.event.high(),
            )? {
                true => {
                    pending.dirty.insert(profile);
                }
                false => changes.extend(forget(st, profile, now)),
            }
        }
        // People whose time came.
        while let Some(&(t, p)) = st.wake.first() {
            if t > now {
                break;
            }
            st.wake.pop_first();
            st.wake_of.remove(&p);
            pending.dirty.insert(p);
        }
        if now / DAY_MS != st.quintiles_day {
            self.recompute_quintiles(st, now);
            // Scores moved for everyone.
            pending.dirty.extend(st.facts.profiles());
            // Touches older than a day have been read by every engine that runs.
            let before = now - DAY_MS;
            self.writer.transact_blocking(move |ctx| {
                ctx.conn.exec(
                    "DELETE FROM profile_touches WHERE at_ms < $1",
                    &[P::Int(before)],
                )?;
                Ok(())
            })?;
        }
        drop(conn);
        let dirty: Vec<ProfileId> = pending.dirty.into_iter().collect();
        changes.extend(self.evaluate_people(st, &dirty, now)?);
        Ok(changes)
    }

    /// [`SegmentEngine::write`] for a caller holding `state`: after any
    /// tick's changes still being written.
    fn write_now(&self, changes: Vec<Change>) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.write(changes)
    }

    /// Record changes through the writer, in transactions of bounded size
    /// (the caller holds `writing`, see [`SegmentEngine::write_now`]).
    fn write(&self, changes: Vec<Change>) -> Result<()> {
        let mut it = changes.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<Change> = it.by_ref().take(5000).collect();
            self.writer.transact_blocking(move |ctx| {
                for c in &chunk {
                    match c {
                        Change::Enter(s, p, at) => {
                            let n = ctx.conn.exec(
                                "INSERT INTO segment_members (segment_id, profile_id, since_ms)
                                 SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT)
                                 WHERE EXISTS (SELECT 1 FROM profiles WHERE id = $2 AND merged_into IS NULL)
                                   AND EXISTS (SELECT 1 FROM segments WHERE id = $1)
                                 ON CONFLICT DO NOTHING",
                                &[P::Text(s), P::Int(p.0), P::Int(*at)],
                            )?;
                            if n > 0 {
                                history(ctx.conn, s, *p, true, *at)?;
                            }
                        }
                        Change::Leave(s, p, at) => {
                            let n = ctx.conn.exec(
                                "DELETE FROM segment_members WHERE segment_id = $1 AND profile_id = $2",
                                &[P::Text(s), P::Int(p.0)],
                            )?;
                            if n > 0 {
                                history(ctx.conn, s, *p, false, *at)?;
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn catalog(&self) -> Result<Arc<Catalog>> {
        self.store.catalog()
    }

    /// Evaluate every segment for these people; the changes against the
    /// current membership, which is updated.
    fn evaluate_people(
        &self,
        st: &mut State,
        people: &[ProfileId],
        now: i64,
    ) -> Result<Vec<Change>> {
        let catalog = self.catalog()?;
        let mut changes = Vec::new();
        let State {
            defs,
            facts,
            members,
            wake,
            wake_of,
            quintiles,
            stock,
            ..
        } = st;
        for &id in people {
            let Some((i, p)) = facts.get(id) else {
                continue;
            };
            let mut current: Vec<&str> = Vec::new();
            let mut next: Option<i64> = None;
            for d in defs.iter() {
                let view = View {
                    fs: facts,
                    i,
                    p,
                    now,
                    catalog: &catalog,
                    cfg: &self.cfg,
                    q: quintiles,
                    current: &current,
                    stock,
                };
                let (holds, t) = evaluate(&d.rule, &view, now);
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n: i64| n.min(t)));
                }
                let m = members.entry(d.id.clone()).or_default();
                match (holds, m.contains_key(&id)) {
                    (true, false) => {
                        m.insert(id, now);
                        changes.push(Change::Enter(d.id.clone(), id, now));
                    }
                    (false, true) => {
                        m.remove(&id);
                        changes.push(Change::Leave(d.id.clone(), id, now));
                    }
                    _ => {}
                }
                if holds {
                    current.push(&d.id);
                }
            }
            if let Some(old) = wake_of.remove(&id) {
                wake.remove(&(old, id));
            }
            if let Some(t) = next {
                wake.insert((t, id));
                wake_of.insert(id, t);
            }
        }
        Ok(changes)
    }

    fn recompute_quintiles(&self, st: &mut State, now: i64) {
        let rows: Vec<(f64, f64, f64)> = st
            .facts
            .all()
            .filter_map(|(_, i, _)| st.facts.orders(i, &self.cfg))
            .map(|(n, _, last, revenue)| (((now - last) / DAY_MS) as f64, n as f64, revenue))
            .collect();
        st.quintiles = Quintiles::compute(rows);
        st.quintiles_day = now / DAY_MS;
    }

    fn load_members(&self, st: &mut State) -> Result<()> {
        let mut conn = self.store.conn()?;
        st.members.clear();
        for r in conn.query(
            "SELECT segment_id, profile_id, since_ms FROM segment_members",
            &[],
        )? {
            st.members
                .entry(r.text(0)?)
                .or_default()
                .insert(ProfileId(r.int(1)?), r.int(2)?);
        }
        for d in &st.defs {
            st.members.entry(d.id.clone()).or_default();
        }
        Ok(())
    }

    /// Read everyone's facts again (at start, and when a new definition
    /// needs facts that are not kept yet).
    fn reload_all(&self, st: &mut State) -> Result<()> {
        // The old facts go first: keeping them until the new ones are
        // complete doubled the memory (1.4 GB at 1M people when a
        // definition named a new event). The state is locked throughout,
        // so no one reads the empty facts; a read that fails part way
        // leaves them stale, and the next tick reads again.
        st.facts = FactStore::default();
        st.generation += 1;
        release_freed_memory();
        st.stale = true;
        let mut conn = self.store.conn()?;
        let needs = st.needs.clone();
        let mut people = FactStore::new(&needs);
        let mut after = 0i64;
        loop {
            let rows = conn.query(
                "SELECT id, traits FROM profiles WHERE merged_into IS NULL AND id > $1 ORDER BY id LIMIT $2",
                &[P::Int(after), P::Int(PAGE)],
            )?;
            let n = rows.len() as i64;
            for r in rows {
                let id = r.int(0)?;
                after = id;
                let mut p = Person::default();
                if !needs.traits.is_empty()
                    && let Some(sealed) = r.opt_sealed(1)?
                {
                    p.set_traits(self.open_traits(&mut *conn, ProfileId(id), &sealed, &needs)?);
                }
                people.put(ProfileId(id), p);
            }
            if n < PAGE {
                break;
            }
        }
        for r in conn.query("SELECT profile_id, kind FROM identifiers", &[])? {
            let id = ProfileId(r.int(0)?);
            if people.contains(id) {
                let k = people.kind_id(&r.text(1)?);
                add_kind(&mut people, id, k);
            }
        }
        let grace = cursor::grace_for(&*conn);
        let clock = crate::now_ms();
        // Read through a cursor: an event still in flight below the last
        // one read is looked for again by the ticks.
        let mut events = Cursor::new(0, grace);
        let mut last = 0i64;
        loop {
            let rows = conn.query(
                "SELECT id, profile_id, key_owner, kind, ts_ms, body FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                &[P::Int(last), P::Int(PAGE)],
            )?;
            let n = rows.len() as i64;
            for r in rows {
                last = r.int(0)?;
                events.take(last, clock);
                if r.text(3)? != "track" {
                    continue;
                }
                let Some((i, _)) = people.get(ProfileId(r.int(1)?)) else {
                    continue;
                };
                if let Some((name, props)) =
                    self.open_event(&mut *conn, &needs, ProfileId(r.int(2)?), &r.sealed(5)?)?
                    && let Some(t) = people.table(&name)
                {
                    people.add_event(i, t, r.int(4)?, props);
                }
            }
            if n < PAGE {
                break;
            }
        }
        for purpose in &needs.purposes {
            for r in conn.query(
                &format!(
                    "SELECT profile_id, {} FROM consent_state WHERE purpose_id = $1",
                    crate::consent::STATE_COLUMNS
                ),
                &[P::Text(purpose)],
            )? {
                let id = ProfileId(r.int(0)?);
                if people.contains(id) {
                    people.set_consent(id, purpose, crate::consent::state_of_row(&r, 1)?);
                }
            }
        }
        for r in conn.query(
            "SELECT profile_id, restricted_ms FROM profile_flags WHERE restricted_ms IS NOT NULL",
            &[],
        )? {
            if let Some(p) = people.get_mut(ProfileId(r.int(0)?)) {
                let flags = ProfileFlags {
                    restricted_since: r.opt_int(1)?,
                    ..p.flags()
                };
                p.set_flags(flags);
            }
        }
        let cur = |conn: &mut dyn Conn, sql: &str| -> Result<i64> {
            Ok(conn
                .query_opt(sql, &[])?
                .map(|r| r.opt_int(0))
                .transpose()?
                .flatten()
                .unwrap_or(0))
        };
        // Anything that committed while loading is taken in by the next tick.
        st.cursors = Cursors {
            event: events,
            ledger: cur(&mut *conn, "SELECT MAX(seq) FROM consent_ledger")?,
            merge: Cursor::new(cur(&mut *conn, "SELECT MAX(id) FROM merges")?, grace),
            touch: Cursor::new(
                cur(&mut *conn, "SELECT MAX(id) FROM profile_touches")?,
                grace,
            ),
        };
        st.stock_version = conn.meta_get(STOCK_VERSION)?;
        st.stock = StockSnapshot::load(&mut *conn)?;
        st.facts = people;
        st.stale = false;
        st.wake.clear();
        st.wake_of.clear();
        self.recompute_quintiles(st, crate::now_ms());
        Ok(())
    }

    /// Make sure the facts cover `needs`: a new purpose costs one query per
    /// purpose; new events, properties or traits mean reading everyone again.
    fn cover(&self, st: &mut State, needs: Needs) -> Result<()> {
        st.generation += 1;
        if st.needs.covers(&needs) {
            st.needs = needs;
            return Ok(());
        }
        let only_purposes = needs.events.is_subset(&st.needs.events)
            && needs.props.is_subset(&st.needs.props)
            && needs.traits.is_subset(&st.needs.traits);
        let new: Vec<String> = needs
            .purposes
            .difference(&st.needs.purposes)
            .cloned()
            .collect();
        st.needs = needs;
        if !only_purposes {
            return self.reload_all(st);
        }
        let mut conn = self.store.conn()?;
        for purpose in new {
            for r in conn.query(
                &format!(
                    "SELECT profile_id, {} FROM consent_state WHERE purpose_id = $1",
                    crate::consent::STATE_COLUMNS
                ),
                &[P::Text(&purpose)],
            )? {
                let id = ProfileId(r.int(0)?);
                if st.facts.contains(id) {
                    st.facts
                        .set_consent(id, &purpose, crate::consent::state_of_row(&r, 1)?);
                }
            }
        }
        Ok(())
    }

    fn open_traits(
        &self,
        conn: &mut dyn Conn,
        owner: ProfileId,
        sealed: &Sealed,
        needs: &Needs,
    ) -> Result<Map<String, Value>> {
        let sight = person::Sight::duty(person::Duty::Evaluation);
        let mut all = person::traits(conn, self.store.vault(), &sight, owner, sealed)?.to_object();
        all.retain(|k, _| needs.traits.contains(k));
        Ok(all)
    }

    /// A track event's name and the properties some rule needs, if any
    /// rule looks at events of its name.
    fn open_event(
        &self,
        conn: &mut dyn Conn,
        needs: &Needs,
        owner: ProfileId,
        sealed: &Sealed,
    ) -> Result<Option<(String, Props)>> {
        // No definition names an event: whatever this one is, it is not
        // kept, so its body is not opened (a data key, a decryption, an
        // unpacking and a parse for each event followed).
        if needs.events.is_empty() {
            return Ok(None);
        }
        let sight = person::Sight::duty(person::Duty::Evaluation);
        let plain = person::open(
            conn,
            self.store.vault(),
            &sight,
            owner,
            Place::EventBody,
            sealed,
        )?;
        let Ok(NameOnly { event: Some(name) }) = serde_json::from_slice::<NameOnly>(&plain) else {
            return Ok(None);
        };
        if !needs.events.contains(&name) {
            return Ok(None);
        }
        let props: Vec<(String, Value)> = match serde_json::from_slice::<WithProps>(&plain) {
            Ok(WithProps {
                properties: Some(m),
            }) => m
                .into_iter()
                .filter(|(k, _)| needs.props.contains(k))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Some((name, props)))
    }

    /// An event row (`id, profile_id, key_owner, kind, ts_ms, body`), a
    /// track opened for what some rule reads.
    fn seen(&self, conn: &mut dyn Conn, needs: &Needs, r: &Row) -> Result<Seen> {
        let profile = ProfileId(r.int(1)?);
        Ok(if r.text(3)? == "track" {
            let opened = self.open_event(conn, needs, ProfileId(r.int(2)?), &r.sealed(5)?)?;
            Seen::Track(profile, r.int(4)?, opened)
        } else {
            Seen::Other(profile)
        })
    }

    /// Read a person's traits and identifier kinds again (after an
    /// identify); `false` when the profile is gone or merged.
    fn refresh_person(
        &self,
        conn: &mut dyn Conn,
        needs: &Needs,
        id: ProfileId,
        fs: &mut FactStore,
    ) -> Result<bool> {
        Ok(match self.read_person(conn, needs, id, None)? {
            Some(read) => {
                take_person(fs, id, read);
                true
            }
            None => false,
        })
    }

    /// Read one person's facts into `fs`, with their events up to the
    /// cursor's (those after it are the cursor's to hand out); `false`
    /// (and nothing changed) when the profile is gone or merged.
    fn load_person(
        &self,
        conn: &mut dyn Conn,
        needs: &Needs,
        fs: &mut FactStore,
        id: ProfileId,
        through: i64,
    ) -> Result<bool> {
        Ok(match self.read_person(conn, needs, id, Some(through))? {
            Some(read) => {
                take_person(fs, id, read);
                true
            }
            None => false,
        })
    }

    /// Read a person from the store without touching the facts: their
    /// traits and identifier kinds, and with `whole` (the last event id to
    /// read) also their events and consent. `None` when the profile is gone
    /// or merged.
    fn read_person(
        &self,
        conn: &mut dyn Conn,
        needs: &Needs,
        id: ProfileId,
        whole: Option<i64>,
    ) -> Result<Option<ReadPerson>> {
        let Some(r) = conn.query_opt(
            "SELECT merged_into, traits FROM profiles WHERE id = $1",
            &[P::Int(id.0)],
        )?
        else {
            return Ok(None);
        };
        if r.opt_int(0)?.is_some() {
            return Ok(None);
        }
        let traits = match r.opt_sealed(1)? {
            Some(sealed) if !needs.traits.is_empty() => {
                Some(self.open_traits(conn, id, &sealed, needs)?)
            }
            _ => None,
        };
        let mut kinds = Vec::new();
        for r in conn.query(
            "SELECT DISTINCT kind FROM identifiers WHERE profile_id = $1",
            &[P::Int(id.0)],
        )? {
            kinds.push(r.text(0)?);
        }
        let whole = match whole {
            None => None,
            Some(through) => {
                let mut events = Vec::new();
                let tracks = if needs.events.is_empty() {
                    Vec::new()
                } else {
                    conn.query(
                        "SELECT key_owner, ts_ms, body FROM events
                         WHERE profile_id = $1 AND id <= $2 AND kind = 'track' ORDER BY id",
                        &[P::Int(id.0), P::Int(through)],
                    )?
                };
                for r in tracks {
                    if let Some((name, props)) =
                        self.open_event(conn, needs, ProfileId(r.int(0)?), &r.sealed(2)?)?
                    {
                        events.push((name, r.int(1)?, props));
                    }
                }
                Some(Whole {
                    events,
                    consent: read_consent(conn, id, needs)?,
                })
            }
        };
        Ok(Some(ReadPerson {
            traits,
            kinds,
            whole,
        }))
    }

    /// Read, without holding the state, the people the gathers left to
    /// read again (after an identify) or whole (new to the engine), and
    /// take them in under it, unless something else changed the state
    /// meanwhile (then `follow` reads them). Those gone or merged are left
    /// for `follow`, which lets them go.
    fn read_people(&self) -> Result<()> {
        let (generation, needs, through, refresh, reload, consent) = {
            let st = self.lock();
            if st.stale {
                return Ok(());
            }
            let p = &st.pending;
            let refresh: Vec<ProfileId> = p
                .refresh
                .iter()
                .filter(|id| !p.reload.contains(id))
                .copied()
                .collect();
            let reload: Vec<ProfileId> = p.reload.iter().copied().collect();
            let consent: Vec<ProfileId> = p
                .consent
                .iter()
                .filter(|id| !p.reload.contains(id))
                .copied()
                .collect();
            (
                st.generation,
                st.needs.clone(),
                st.cursors.event.high(),
                refresh,
                reload,
                consent,
            )
        };
        if refresh.is_empty() && reload.is_empty() && consent.is_empty() {
            return Ok(());
        }
        let mut conn = self.store.conn()?;
        let mut read = Vec::with_capacity(refresh.len() + reload.len());
        for id in refresh {
            read.push((id, self.read_person(&mut *conn, &needs, id, None)?));
        }
        for id in reload {
            read.push((id, self.read_person(&mut *conn, &needs, id, Some(through))?));
        }
        let mut consents = Vec::with_capacity(consent.len());
        for id in consent {
            consents.push((id, read_consent(&mut *conn, id, &needs)?));
        }
        drop(conn);
        let mut st = self.lock();
        let held = Instant::now();
        if st.generation != generation {
            return Ok(());
        }
        let State { facts, pending, .. } = &mut *st;
        for (id, r) in read {
            let Some(r) = r else { continue };
            if r.whole.is_some() {
                pending.reload.remove(&id);
            } else if facts.contains(id) {
                pending.refresh.remove(&id);
            } else {
                continue;
            }
            take_person(facts, id, r);
            pending.dirty.insert(id);
        }
        for (id, c) in consents {
            if facts.contains(id) && !pending.reload.contains(&id) && pending.consent.remove(&id) {
                take_consent(facts, id, c);
                pending.dirty.insert(id);
            }
        }
        drop(st);
        self.held.observe(held.elapsed());
        Ok(())
    }

    // ------------------------------------------------------------ the API

    /// Add or replace a definition (validated by the caller's use case,
    /// saved through the writer), and compute its members now.
    pub fn put(&self, def: SegmentDef) -> Result<(SegmentDef, usize)> {
        let mut st = self.lock();
        // Everything acknowledged before this call counts.
        let caught_up = self.follow(&mut st, crate::now_ms())?;
        self.write_now(caught_up)?;
        let catalog = self.catalog()?;
        let mut all: BTreeMap<String, SegmentDef> =
            st.defs.iter().map(|d| (d.id.clone(), d.clone())).collect();
        let mut def = def;
        if let Some(old) = all.get(&def.id) {
            def.created_ms = old.created_ms;
        }
        let others = {
            let mut o = all.clone();
            o.remove(&def.id);
            o
        };
        super::validate(&def, &catalog, &others)?;
        let saved = def.clone();
        self.writer
            .transact_blocking(move |ctx| super::save(ctx.conn, ctx.vault, &saved))?;
        all.insert(def.id.clone(), def.clone());
        st.defs = super::ordered(&all);
        let needs = Needs::of(&st.defs, &self.cfg);
        st.members.entry(def.id.clone()).or_default();
        self.cover(&mut st, needs)?;
        let everyone = st.facts.profiles();
        let changes = self.evaluate_people(&mut st, &everyone, crate::now_ms())?;
        self.write_now(changes)?;
        let n = st.members.get(&def.id).map_or(0, BTreeMap::len);
        Ok((def, n))
    }

    /// Delete a definition; `false` if there was none. Refused while another
    /// segment names it.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut st = self.lock();
        if let Some(user) = st
            .defs
            .iter()
            .find(|d| d.id != id && d.rule.usage().segments.contains(id))
        {
            return Err(Error::Rejected {
                code: Code::SegmentInUse,
                message: format!("segment `{}` names it; change that one first", user.id),
            });
        }
        let owned = id.to_owned();
        let existed = self
            .writer
            .transact_blocking(move |ctx| super::delete(ctx.conn, &owned))?;
        st.defs.retain(|d| d.id != id);
        st.members.remove(id);
        st.needs = Needs::of(&st.defs, &self.cfg);
        st.generation += 1;
        Ok(existed)
    }

    pub fn list(&self) -> Vec<(SegmentDef, usize)> {
        let st = self.lock();
        let mut out: Vec<(SegmentDef, usize)> = st
            .defs
            .iter()
            .map(|d| (d.clone(), st.members.get(&d.id).map_or(0, BTreeMap::len)))
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    pub fn get(&self, id: &str) -> Option<(SegmentDef, usize)> {
        let st = self.lock();
        let d = st.defs.iter().find(|d| d.id == id)?.clone();
        let n = st.members.get(id).map_or(0, BTreeMap::len);
        Some((d, n))
    }

    /// Members after `after`, in profile id order. With `purposes`, only
    /// people whose decision allows one of them now (a purpose-bound key).
    pub fn members(
        &self,
        id: &str,
        after: Option<ProfileId>,
        limit: usize,
        purposes: Option<&[String]>,
    ) -> Result<Option<MembersPage>> {
        let st = self.lock();
        let Some(m) = st.members.get(id) else {
            return Ok(None);
        };
        if !st.defs.iter().any(|d| d.id == id) {
            return Ok(None);
        }
        let catalog = self.catalog()?;
        let now = crate::now_ms();
        let mut out = Vec::with_capacity(limit.min(1000));
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut next = None;
        for (&p, &since) in m.range((from, std::ops::Bound::Unbounded)) {
            if let Some(purposes) = purposes {
                let Some((_, person)) = st.facts.get(p) else {
                    continue;
                };
                if !purposes
                    .iter()
                    .any(|u| allowed(&st.facts, person, &catalog, u, None, now))
                {
                    continue;
                }
            }
            if out.len() == limit {
                next = out.last().map(|(p, _)| *p);
                break;
            }
            out.push((p, since));
        }
        Ok(Some(MembersPage { members: out, next }))
    }

    /// How many people a rule would hold now, and a few of them, without
    /// saving anything. The rule may name existing segments.
    pub fn preview(&self, def: &SegmentDef, sample: usize) -> Result<(usize, Vec<ProfileId>)> {
        let mut st = self.lock();
        let caught_up = self.follow(&mut st, crate::now_ms())?;
        self.write_now(caught_up)?;
        let catalog = self.catalog()?;
        let others: BTreeMap<String, SegmentDef> =
            st.defs.iter().map(|d| (d.id.clone(), d.clone())).collect();
        super::validate(def, &catalog, &others)?;
        let mut needs = st.needs.clone();
        let extra = Needs::of(std::slice::from_ref(def), &self.cfg);
        needs.events.extend(extra.events);
        needs.props.extend(extra.props);
        needs.traits.extend(extra.traits);
        needs.purposes.extend(extra.purposes);
        needs.stock |= extra.stock;
        self.cover(&mut st, needs)?;
        let now = crate::now_ms();
        let st = &*st;
        let other = |i: u32, p: &Person, rule: &Rule| {
            let id = st.facts.ids[i as usize];
            let current: Vec<&str> = st
                .members
                .iter()
                .filter(|(_, m)| m.contains_key(&id))
                .map(|(s, _)| s.as_str())
                .collect();
            let view = View {
                fs: &st.facts,
                i,
                p,
                now,
                catalog: &catalog,
                cfg: &self.cfg,
                q: &st.quintiles,
                current: &current,
                stock: &st.stock,
            };
            evaluate(rule, &view, now).0
        };
        let holds = holds_all(&st.facts, &def.rule, now, &catalog, &other);
        let mut ids: Vec<ProfileId> = holds
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| st.facts.ids[i])
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.truncate(sample);
        Ok((n, ids))
    }

    /// Count the people a rule holds now (the benchmark's question): a
    /// pass over columns for its events and consent.
    pub fn count(&self, rule: &Rule) -> Result<usize> {
        let st = self.lock();
        if st.stale {
            // Transient: answered 503 `temporarily_unavailable`, retry.
            return Err(Error::Busy(
                "the segment engine is reading everyone's facts again".into(),
            ));
        }
        let catalog = self.catalog()?;
        let now = crate::now_ms();
        let none: Vec<&str> = Vec::new();
        let other = |i: u32, p: &Person, rule: &Rule| {
            let view = View {
                fs: &st.facts,
                i,
                p,
                now,
                catalog: &catalog,
                cfg: &self.cfg,
                q: &st.quintiles,
                current: &none,
                stock: &st.stock,
            };
            evaluate(rule, &view, now).0
        };
        Ok(holds_all(&st.facts, rule, now, &catalog, &other)
            .into_iter()
            .filter(|h| *h)
            .count())
    }

    /// The segments a person is in, with when they entered.
    pub fn of_profile(&self, profile: ProfileId) -> Vec<(String, PurposeId, i64)> {
        let st = self.lock();
        st.defs
            .iter()
            .filter_map(|d| {
                st.members
                    .get(&d.id)
                    .and_then(|m| m.get(&profile))
                    .map(|since| (d.id.clone(), d.purpose.clone(), *since))
            })
            .collect()
    }

    pub fn lifecycle_of(&self, profile: ProfileId) -> Option<Lifecycle> {
        let st = self.lock();
        let (i, _) = st.facts.get(profile)?;
        let now = crate::now_ms();
        Some(match st.facts.orders(i, &self.cfg) {
            None => Lifecycle {
                stage: None,
                rfm: None,
                orders: 0,
                revenue: 0.0,
                last_order_ms: None,
            },
            Some((n, first, last, revenue)) => Lifecycle {
                stage: self.cfg.stage(n, first, last, now),
                rfm: Some(
                    st.quintiles
                        .score(((now - last) / DAY_MS) as f64, n as f64, revenue),
                ),
                orders: n,
                revenue,
                last_order_ms: Some(last),
            },
        })
    }

    pub fn lifecycle_summary(&self) -> LifecycleSummary {
        let st = self.lock();
        let now = crate::now_ms();
        let mut s = LifecycleSummary {
            stages: Stage::ALL.iter().map(|x| (x.as_str(), 0)).collect(),
            without_orders: 0,
            r: [0; 5],
            f: [0; 5],
            m: [0; 5],
            quintiles: st.quintiles.clone(),
        };
        for (_, i, _) in st.facts.all() {
            match st.facts.orders(i, &self.cfg) {
                None => s.without_orders += 1,
                Some((n, first, last, revenue)) => {
                    if let Some(stage) = self.cfg.stage(n, first, last, now) {
                        *s.stages.entry(stage.as_str()).or_default() += 1;
                    }
                    let rfm = st
                        .quintiles
                        .score(((now - last) / DAY_MS) as f64, n as f64, revenue);
                    s.r[(rfm.r.clamp(1, 5) - 1) as usize] += 1;
                    s.f[(rfm.f.clamp(1, 5) - 1) as usize] += 1;
                    s.m[(rfm.m.clamp(1, 5) - 1) as usize] += 1;
                }
            }
        }
        s
    }

    /// Whether the decision for `purpose` allows it for this person now, as
    /// the engine last read their consent.
    pub fn allows(&self, profile: ProfileId, purpose: &str) -> Result<bool> {
        let st = self.lock();
        let catalog = self.catalog()?;
        Ok(st
            .facts
            .get(profile)
            .is_some_and(|(_, p)| allowed(&st.facts, p, &catalog, purpose, None, crate::now_ms())))
    }

    /// Define an audience of a segment for a processor.
    pub fn create_audience(&self, def: super::audiences::AudienceDef) -> Result<()> {
        let Some((seg, _)) = self.get(&def.segment) else {
            return Err(Error::rejected(
                Code::UnknownSegment,
                format!("no segment `{}`", def.segment),
            ));
        };
        self.writer.transact_blocking(move |ctx| {
            super::audiences::create(ctx.conn, &ctx.catalog, &def, &seg.purpose)
        })
    }

    /// Sync an audience with its segment's members as they are now; `None`
    /// when there is no such audience.
    pub fn sync_audience(&self, id: &str) -> Result<Option<super::audiences::SyncReport>> {
        let Some(def) = super::audiences::get(&mut *self.store.conn()?, id)? else {
            return Ok(None);
        };
        let Some((seg, _)) = self.get(&def.segment) else {
            return Err(Error::rejected(
                Code::UnknownSegment,
                format!("the audience's segment `{}` no longer exists", def.segment),
            ));
        };
        let catalog = self.catalog()?;
        let entry = catalog.require(seg.purpose.as_str())?.clone();
        // The engine decides everyone in the segment from what it last read:
        // those it sees refused are left out (with its reason), and the
        // lines of the rest are worked out before the writer's transaction,
        // which decides them again *now*. The engine first takes in what
        // committed (as a definition does); what commits after that is
        // caught by the transaction if it is a withdrawal, and joins at
        // the next sync if it is a grant.
        let began = Instant::now();
        let (likely, excluded, everyone) = {
            let mut st = self.lock();
            let caught_up = self.follow(&mut st, crate::now_ms())?;
            self.write_now(caught_up)?;
            let now = crate::now_ms();
            let mut likely = Vec::new();
            let mut excluded: BTreeMap<String, u64> = BTreeMap::new();
            for p in st
                .members
                .get(&def.segment)
                .into_iter()
                .flat_map(|m| m.keys())
            {
                let Some((_, person)) = st.facts.get(*p) else {
                    *excluded.entry("unknown_profile".into()).or_default() += 1;
                    continue;
                };
                let v = decide(
                    &entry.rule,
                    Some(Channel::Ads),
                    st.facts.consent(person, seg.purpose.as_str()),
                    person.flags(),
                    now,
                );
                if v.allowed {
                    likely.push(*p);
                } else {
                    *excluded.entry(v.reason.as_str().into()).or_default() += 1;
                }
            }
            (likely, excluded, st.facts.len())
        };
        let decided = began.elapsed();
        let prepared =
            super::audiences::prepare(&self.store, def.format, &likely, everyone, excluded)?;
        let prepared_at = began.elapsed();
        let mut report = self.writer.transact_blocking(move |ctx| {
            super::audiences::sync(ctx, &def, &seg.purpose, &likely, prepared)
        })?;
        let ms = |d: Duration| d.as_millis() as u64;
        report.timings = super::audiences::SyncTimings {
            decided_ms: ms(decided),
            prepared_ms: ms(prepared_at - decided),
            transaction_ms: ms(began.elapsed() - prepared_at),
        };
        tracing::info!(
            audience = id,
            sync = report.sync,
            added = report.added,
            removed = report.removed,
            decided_ms = report.timings.decided_ms,
            prepared_ms = report.timings.prepared_ms,
            transaction_ms = report.timings.transaction_ms,
            "audience synced"
        );
        Ok(Some(report))
    }

    /// People and events held in memory, for metrics.
    pub fn size(&self) -> (usize, usize) {
        let st = self.lock();
        (st.facts.len(), st.facts.held())
    }
}

/// Hand the memory of dropped facts back to the system. glibc keeps freed
/// small blocks in its heap for later use; the facts of a million people
/// are millions of them, and reading everyone again allocates in other
/// places, so without this the old facts stayed in the RSS (1,149 MB
/// with 20 segments at 1M people / 10M events against 953 MB when start
/// read the same facts once).
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system; it
    // reads or changes no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn history(
    conn: &mut dyn Conn,
    segment: &str,
    profile: ProfileId,
    entered: bool,
    at: i64,
) -> Result<()> {
    conn.exec(
        "INSERT INTO segment_history (segment_id, profile_id, entered, at_ms) VALUES ($1, $2, $3, $4)",
        &[P::Text(segment), P::Int(profile.0), P::Int(entered as i64), P::Int(at)],
    )?;
    Ok(())
}

/// A person who is gone (erased, or merged into another): out of memory and
/// out of every segment.
/// Note a person whose consent changed: read again, or whole.
fn mark_consent(facts: &FactStore, pending: &mut Pending, profile: ProfileId) {
    if facts.contains(profile) && !pending.reload.contains(&profile) {
        pending.consent.insert(profile);
    } else {
        pending.reload.insert(profile);
    }
}

/// Take one event read into the facts, or note whom it concerns.
fn apply_seen(facts: &mut FactStore, pending: &mut Pending, e: Seen) {
    let profile = match e {
        Seen::Track(p, ..) | Seen::Other(p) => p,
    };
    if pending.reload.contains(&profile) {
        // Read whole later, with this event.
        return;
    }
    let Some((i, _)) = facts.get(profile) else {
        pending.reload.insert(profile);
        return;
    };
    match e {
        // Traits and identifiers may have changed; the events the engine
        // keeps have not.
        Seen::Other(_) => {
            pending.refresh.insert(profile);
        }
        Seen::Track(_, ts, Some((name, props))) => {
            if let Some(t) = facts.table(&name) {
                facts.add_event(i, t, ts, props);
                pending.dirty.insert(profile);
            }
        }
        Seen::Track(_, _, None) => {}
    }
}

fn forget(st: &mut State, profile: ProfileId, now: i64) -> Vec<Change> {
    st.facts.remove(profile);
    if let Some(t) = st.wake_of.remove(&profile) {
        st.wake.remove(&(t, profile));
    }
    let mut out = Vec::new();
    for (seg, m) in st.members.iter_mut() {
        if m.remove(&profile).is_some() {
            out.push(Change::Leave(seg.clone(), profile, now));
        }
    }
    out
}

fn load_consent(
    conn: &mut dyn Conn,
    id: ProfileId,
    needs: &Needs,
    fs: &mut FactStore,
) -> Result<()> {
    let read = read_consent(conn, id, needs)?;
    take_consent(fs, id, read);
    Ok(())
}

/// A person's consent by purpose (the purposes some rule reads) and
/// restrictions, as read from the store.
type ReadConsent = (Vec<(String, ConsentState)>, ProfileFlags);

fn read_consent(conn: &mut dyn Conn, id: ProfileId, needs: &Needs) -> Result<ReadConsent> {
    let mut consent = Vec::new();
    for purpose in &needs.purposes {
        if let crate::consent::Subject::Known(_, Some(state), _) =
            crate::consent::subject_by_id(conn, id, &crate::consent::purpose_id(purpose)?)?
        {
            consent.push((purpose.clone(), state));
        }
    }
    Ok((consent, crate::consent::flags(conn, id)?))
}

fn take_consent(fs: &mut FactStore, id: ProfileId, (consent, flags): ReadConsent) {
    let consent: Vec<(u16, ConsentState)> = consent
        .into_iter()
        .map(|(purpose, state)| (fs.purpose_id(&purpose), state))
        .collect();
    if let Some(p) = fs.get_mut(id) {
        p.consent = consent.into_boxed_slice();
        p.set_flags(flags);
    }
}

/// A person as read from the store ([`SegmentEngine::read_person`]),
/// before it is taken into the facts.
struct ReadPerson {
    /// `None`: none some rule reads (or none at all); kept as they were.
    traits: Option<Map<String, Value>>,
    kinds: Vec<String>,
    /// For a person read whole: what replaces all the engine held.
    whole: Option<Whole>,
}

struct Whole {
    /// Tracks some rule reads: name, time, properties, in order.
    events: Vec<(String, i64, Props)>,
    consent: ReadConsent,
}

/// Take a person read into the facts: a person read whole replaces what
/// was held; otherwise their traits and kinds are set again.
fn take_person(fs: &mut FactStore, id: ProfileId, read: ReadPerson) {
    let kinds: Vec<u16> = read.kinds.iter().map(|k| fs.kind_id(k)).collect();
    match read.whole {
        Some(whole) => {
            let mut p = Person::default();
            if let Some(t) = read.traits {
                p.set_traits(t);
            }
            p.set_kinds(kinds);
            let i = fs.put(id, p);
            for (name, ts, props) in whole.events {
                if let Some(t) = fs.table(&name) {
                    fs.add_event(i, t, ts, props);
                }
            }
            take_consent(fs, id, whole.consent);
        }
        None => {
            if let Some(p) = fs.get_mut(id) {
                if let Some(t) = read.traits {
                    p.set_traits(t);
                }
                p.set_kinds(kinds);
            }
        }
    }
}

fn add_kind(fs: &mut FactStore, id: ProfileId, k: u16) {
    if let Some(p) = fs.get_mut(id) {
        p.add_kind(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million are held at 1M profiles.
    #[test]
    fn a_person_takes_32_bytes() {
        assert!(std::mem::size_of::<Person>() <= 32);
        assert!(std::mem::size_of::<Option<Person>>() <= 32);
    }

    #[test]
    fn a_persons_rare_facts_live_in_a_box_only_while_there_are_any() {
        let mut p = Person::default();
        p.set_kinds([0, 5, 63]);
        assert!(p.rare.is_none(), "64 kinds fit in the bits");
        p.add_kind(64);
        p.add_kind(300);
        p.add_kind(300);
        for k in [0, 5, 63, 64, 300] {
            assert!(p.has_kind(k), "{k}");
        }
        for k in [1, 62, 65, 299, 301] {
            assert!(!p.has_kind(k), "{k}");
        }
        assert_eq!(p.rare.as_ref().unwrap().kinds, vec![64, 300]);
        p.set_kinds([2]);
        assert!(p.has_kind(2) && !p.has_kind(0) && !p.has_kind(64));
        assert!(p.rare.is_none(), "nothing rare left");

        let restricted = ProfileFlags {
            restricted_since: Some(7),
            ..ProfileFlags::default()
        };
        p.set_flags(restricted);
        let mut t = Map::new();
        t.insert("city".into(), Value::from("Oulu"));
        p.set_traits(t);
        assert_eq!(p.flags(), restricted);
        assert_eq!(p.trait_value("city"), Some(&Value::from("Oulu")));
        p.set_flags(ProfileFlags::default());
        assert!(p.rare.is_some(), "the traits stay");
        p.set_traits(Map::new());
        assert!(p.rare.is_none());
        assert_eq!(p.trait_value("city"), None);
        assert_eq!(p.flags(), ProfileFlags::default());
        assert!(p.has_kind(2), "kinds untouched");
    }
}
