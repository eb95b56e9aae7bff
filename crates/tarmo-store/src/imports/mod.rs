//! The offline register: customers and orders from the till and the CRM,
//! and the shop's products, stores and stock, imported from CSV or JSON
//! Lines. One use case for the CLI (`tarmo import customers FILE`) and the
//! HTTP API (`POST /api/v1/imports`).
//!
//! The shape of an import: every row is parsed and checked first (errors
//! carry line numbers; the file is read a block of rows at a time, and
//! only the checked records are kept); then, unless there were errors and
//! the caller did not ask to skip them, customers and orders are applied
//! in writer transactions of [`CHUNK`] records (up to [`MAX_CHUNK`] while
//! nothing else uses the writer), each recording a sealed checkpoint of
//! how far the import got: ingestion is not held up for the whole file,
//! and an import stopped between chunks (a killed process) resumes at its
//! checkpoint when the same file is imported again, ending as an
//! uninterrupted run would. Products, stores and stock go in one
//! transaction. People go in through
//! the same identity resolution as a server write key's messages
//! (identifiers verified, merges by the rules, sealing, counters): a
//! customer row becomes an `identify` message with its traits, an order an
//! `Order Completed` track message with its lines, each carrying the file's
//! provenance (`context.import`: source, documentation, file, line), under
//! a source id of its own (minus the import's id), so the access bundle can
//! say where each piece of data came from. Erased people's identifiers are
//! on the suppression list: their rows are skipped and counted.
//!
//! Idempotence: each applied row leaves a keyed hash of its key (the
//! person's key identifier, or the order id) and of its content in
//! `import_rows`. A row whose content is unchanged is skipped without
//! touching a person, which also makes re-imports cheap; an order seen
//! before with a new content replaces the event it became.
//!
//! This module must never write a personal value unsealed: the imports
//! table holds the provenance and the error report sealed with the
//! installation key (an error may quote a value), and `import_rows` only
//! keyed hashes.

pub mod catalog;
pub mod mapping;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tarmo_core::codes::Code;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tarmo_core::identity::{IdentifierKind, IdentityConfig, Trust};
use tarmo_core::segment::{MessageKind, parse_timestamp_ms};

pub use mapping::{Mapping, TraitType};

use crate::conn::{Conn, P, ProfileId, Source};
use crate::crypto::packed;
use crate::resolve::{Outcome, PreparedEvent, PreparedIdentifier};
use crate::vault::{Place, Vault};
use crate::writer::{TxCtx, WriterHandle};
use crate::{Error, Result, Services, Store, rfc3339};

/// Records of people applied per writer transaction (one resolution
/// group, one checkpoint): ingestion waits at most one chunk (1-2 s on a
/// loaded 2-core machine), and a commit's pages (random blind indexes and
/// keyed hashes touch a page a record) are shared by enough records; at
/// 2,000 the commits cost a fifth more.
pub const CHUNK: usize = 10_000;

/// While an import has the writer to itself (nothing else ran between two
/// of its chunks), its chunks double up to this: fewer commits of the
/// same random pages (1M customers: 17.9k rows/s in chunks of 50,000
/// against 13.9k in chunks of 10,000). As soon as anything else uses the
/// writer, they fall back to [`CHUNK`], so a live request never waits
/// behind more than one small chunk.
pub const MAX_CHUNK: usize = 100_000;
/// Below this many rows a part, a thread costs more than it saves.
const PAR_MIN: usize = 2048;
/// Errors kept in a report (the count is always complete).
const MAX_ERRORS: usize = 1000;
/// The event an order becomes (what lifecycle and RFM count by default).
pub const ORDER_EVENT: &str = "Order Completed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImportKind {
    Customers,
    Orders,
    Products,
    Stores,
    Stock,
}

impl ImportKind {
    pub const ALL: [Self; 5] = [
        Self::Customers,
        Self::Orders,
        Self::Products,
        Self::Stores,
        Self::Stock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Orders => "orders",
            Self::Products => "products",
            Self::Stores => "stores",
            Self::Stock => "stock",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether rows name people (and so carry provenance and suppression).
    pub fn personal(self) -> bool {
        matches!(self, Self::Customers | Self::Orders)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }

    /// By a file name's extension; CSV unless it says JSON Lines.
    pub fn of_file_name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Self::Jsonl
        } else {
            Self::Csv
        }
    }
}

/// What an import is asked to do.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub kind: ImportKind,
    pub format: Format,
    pub mapping: Mapping,
    /// Where the file comes from ("till export 2026-11"), 1-200 characters.
    pub source: String,
    /// Where the proof of its lawful collection is kept.
    pub documentation: String,
    pub file_name: String,
    /// Import the valid rows and report the rest, instead of nothing.
    pub skip_invalid: bool,
    /// Check and count, write nothing.
    pub dry_run: bool,
}

impl ImportSpec {
    /// Refuse a spec that cannot be right whatever the file holds.
    pub fn check(&self) -> Result<()> {
        let s = self.source.trim();
        if s.is_empty() || s.chars().count() > 200 {
            return Err(Error::rejected(
                Code::InvalidImportSource,
                "`source` names where the file comes from, in 1 to 200 characters",
            ));
        }
        if self.kind.personal() && self.documentation.trim().is_empty() {
            return Err(Error::rejected(
                Code::InvalidImportDocumentation,
                "`documentation` says where the proof that these people's data was collected lawfully is kept",
            ));
        }
        if self.documentation.chars().count() > 1000 {
            return Err(Error::rejected(
                Code::InvalidImportDocumentation,
                "`documentation` is at most 1000 characters",
            ));
        }
        Ok(())
    }
}

/// A row that could not be imported, by its line in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportReport {
    /// Data rows read (CSV records or JSON lines).
    pub rows: u64,
    /// Records built from them: people, orders (lines grouped), products...
    pub records: u64,
    pub invalid: u64,
    /// Records new to Tarmo.
    pub created: u64,
    /// Records seen before whose content changed (an order is replaced).
    pub updated: u64,
    /// Records seen before, unchanged: nothing written.
    pub unchanged: u64,
    /// Records naming an erased person: skipped.
    pub suppressed: u64,
    /// Orders naming no customer (an anonymous till sale): skipped.
    pub anonymous: u64,
    /// Columns the mapping does not use.
    pub ignored_columns: Vec<String>,
    /// The first errors, with line numbers (a row may have several; every
    /// row with one is counted in `invalid`).
    pub errors: Vec<RowError>,
    pub dry_run: bool,
}

// ------------------------------------------------------------ reading

/// A data row: its line and its fields (for products, stores and stock,
/// which are read whole).
type Record = (u64, Map<String, Value>);

/// Rows read per block: a block is checked on every core, then folded in
/// file order, and only its results are kept. A file is thus never held
/// as rows, only as the records it makes (a CSV row as fields, unparsed,
/// is ~100 bytes; as a map of values it was ~1 KB).
/// (Unit tests use small blocks, so that their files span several.)
const BLOCK: usize = if cfg!(test) { 5_000 } else { 100_000 };

/// A data row as read, before a worker reads its fields.
enum Row {
    /// The fields one after another, and where each ends: two exact
    /// allocations a row.
    Csv {
        text: Box<str>,
        ends: Box<[u32]>,
    },
    Json(Map<String, Value>),
}

impl Row {
    /// The row's fields by column (empty CSV fields and JSON nulls left out).
    fn into_map(self, headers: &[String]) -> Map<String, Value> {
        match self {
            Row::Csv { text, ends } => {
                let mut m = Map::new();
                let mut start = 0;
                for (h, end) in headers.iter().zip(ends.iter()) {
                    let end = (*end as usize).min(text.len());
                    let v = text.get(start..end).unwrap_or_default();
                    start = end;
                    if !v.is_empty() {
                        m.insert(h.clone(), Value::String(v.to_owned()));
                    }
                }
                m
            }
            Row::Json(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        }
    }

    /// The row's fields by column, read in place: customers and orders,
    /// millions of rows, are checked without a map of values a row (which
    /// with its copies was most of their parse's allocations).
    fn fields<'a>(&'a self, headers: &'a [String]) -> Fields<'a> {
        match self {
            Row::Csv { text, ends } => Fields::Csv {
                text,
                ends,
                headers,
            },
            Row::Json(m) => Fields::Json(m),
        }
    }
}

/// A field as read: a CSV field's text, or a JSON value.
#[derive(Clone, Copy)]
enum Cell<'a> {
    Str(&'a str),
    Val(&'a Value),
}

/// A row's fields by column. As with [`Row::into_map`], an empty CSV
/// field or a JSON null is no field at all.
trait Cells {
    fn cell(&self, col: &str) -> Option<Cell<'_>>;
}

impl Cells for Map<String, Value> {
    fn cell(&self, col: &str) -> Option<Cell<'_>> {
        self.get(col).filter(|v| !v.is_null()).map(Cell::Val)
    }
}

/// A row, borrowed: see [`Row::fields`].
#[derive(Clone, Copy)]
enum Fields<'a> {
    Csv {
        text: &'a str,
        ends: &'a [u32],
        headers: &'a [String],
    },
    Json(&'a Map<String, Value>),
}

impl Cells for Fields<'_> {
    fn cell(&self, col: &str) -> Option<Cell<'_>> {
        match *self {
            Fields::Csv {
                text,
                ends,
                headers,
            } => {
                // As the map did: of columns of the same name, the last
                // that is not empty.
                let mut found = None;
                let mut start = 0;
                for (h, end) in headers.iter().zip(ends) {
                    let end = (*end as usize).min(text.len());
                    if h == col {
                        let v = text.get(start..end).unwrap_or_default();
                        if !v.is_empty() {
                            found = Some(Cell::Str(v));
                        }
                    }
                    start = end;
                }
                found
            }
            Fields::Json(m) => m.cell(col),
        }
    }
}

/// A file's rows, read a block at a time; a row that is not valid CSV or
/// JSON is an error at its line.
struct Rows<'a> {
    headers: Vec<String>,
    src: Src<'a>,
    /// Rows read so far, valid or not.
    seen: u64,
}

enum Src<'a> {
    Csv(csv::Reader<&'a [u8]>),
    /// JSON Lines: the columns are every key of every line, so a first
    /// pass finds them (and the lines that are not objects); the blocks
    /// parse each line again.
    Jsonl(std::iter::Enumerate<std::str::Lines<'a>>),
}

impl<'a> Rows<'a> {
    fn open(format: Format, bytes: &'a [u8], errors: &mut Vec<RowError>) -> Result<Self> {
        match format {
            Format::Csv => {
                let mut rdr = csv::ReaderBuilder::new()
                    .trim(csv::Trim::All)
                    .flexible(false)
                    .from_reader(bytes);
                let headers: Vec<String> = rdr
                    .headers()
                    .map_err(|e| {
                        Error::rejected(Code::InvalidFile, format!("the CSV header: {e}"))
                    })?
                    .iter()
                    .map(|h| h.trim_start_matches('\u{feff}').to_owned())
                    .collect();
                if headers.iter().all(String::is_empty) {
                    return Err(Error::rejected(
                        Code::InvalidFile,
                        "the file has no header row",
                    ));
                }
                Ok(Rows {
                    headers,
                    src: Src::Csv(rdr),
                    seen: 0,
                })
            }
            Format::Jsonl => {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    Error::rejected(Code::InvalidFile, "a JSON Lines file is UTF-8")
                })?;
                let mut headers: Vec<String> = Vec::new();
                let mut seen = HashSet::new();
                for (i, l) in text.lines().enumerate() {
                    if l.trim().is_empty() {
                        continue;
                    }
                    let line = i as u64 + 1;
                    // Keys only: the values are skipped, not built.
                    match serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(l) {
                        Ok(m) => {
                            for k in m.into_keys() {
                                if !seen.contains(&k) {
                                    seen.insert(k.clone());
                                    headers.push(k);
                                }
                            }
                        }
                        Err(e) => errors.push(RowError {
                            line,
                            message: if e.is_data() {
                                "a line is one JSON object".into()
                            } else {
                                format!("not valid JSON (column {})", e.column())
                            },
                        }),
                    }
                }
                Ok(Rows {
                    headers,
                    src: Src::Jsonl(text.lines().enumerate()),
                    seen: 0,
                })
            }
        }
    }

    /// The next `n` valid rows (fewer at the end; none when done).
    fn block(&mut self, n: usize, errors: &mut Vec<RowError>) -> Vec<(u64, Row)> {
        let mut out = Vec::with_capacity(n.min(4096));
        match &mut self.src {
            Src::Csv(rdr) => {
                let mut r = csv::StringRecord::new();
                while out.len() < n {
                    match rdr.read_record(&mut r) {
                        Ok(true) => {
                            self.seen += 1;
                            let line = r.position().map_or(0, |p| p.line());
                            let mut text = String::with_capacity(r.as_slice().len());
                            let mut ends = Vec::with_capacity(r.len());
                            for f in r.iter() {
                                text.push_str(f);
                                // A file is at most 4 GiB a row: the
                                // fields' ends fit in 32 bits.
                                ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
                            }
                            out.push((
                                line,
                                Row::Csv {
                                    text: text.into_boxed_str(),
                                    ends: ends.into_boxed_slice(),
                                },
                            ));
                        }
                        Ok(false) => break,
                        Err(e) => {
                            self.seen += 1;
                            let line = e.position().map_or(0, |p| p.line());
                            errors.push(RowError {
                                line,
                                message: format!("not valid CSV: {}", csv_error_kind(&e)),
                            });
                        }
                    }
                }
            }
            Src::Jsonl(lines) => {
                while out.len() < n {
                    let Some((i, l)) = lines.next() else { break };
                    if l.trim().is_empty() {
                        continue;
                    }
                    self.seen += 1;
                    // A line that is not an object was reported by the
                    // first pass.
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(l) {
                        out.push((i as u64 + 1, Row::Json(m)));
                    }
                }
            }
        }
        out
    }

    /// Every row as fields (products, stores and stock: small files).
    fn all(&mut self, errors: &mut Vec<RowError>) -> Vec<Record> {
        let mut out = Vec::new();
        loop {
            let b = self.block(BLOCK, errors);
            if b.is_empty() {
                return out;
            }
            out.extend(b.into_iter().map(|(l, r)| (l, r.into_map(&self.headers))));
        }
    }
}

/// A CSV error without the record's content (which may be personal).
fn csv_error_kind(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".into(),
        _ => "malformed record".into(),
    }
}

/// Rows are independent until they are grouped (an order's lines, a
/// customer seen twice): the checks that cost (normalising identifiers,
/// blind indexes, keyed hashes, building maps) run on every core, in parts
/// of consecutive rows whose results come back in file order.
fn par_chunks<T: Send, U: Send>(items: Vec<T>, f: impl Fn(Vec<T>) -> Vec<U> + Sync) -> Vec<U> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || items.len() < 2 * PAR_MIN {
        return f(items);
    }
    let per = items.len().div_ceil(cores);
    let mut parts = Vec::with_capacity(cores);
    let mut it = items.into_iter();
    loop {
        let part: Vec<T> = it.by_ref().take(per).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || f(part)))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            // A panic in a part is the same bug as in one thread: pass it on.
            out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// A field as text: strings trimmed, numbers and booleans written out.
fn text(m: &impl Cells, col: &str) -> Option<String> {
    let s = match m.cell(col)? {
        Cell::Str(s) => s,
        Cell::Val(Value::String(s)) => s,
        Cell::Val(Value::Number(n)) => return Some(n.to_string()),
        Cell::Val(Value::Bool(b)) => return Some(b.to_string()),
        Cell::Val(_) => return None,
    }
    .trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// A field as a number (a decimal comma is read too: `12,50`).
fn number(m: &impl Cells, col: &str) -> std::result::Result<Option<f64>, String> {
    let s = match m.cell(col) {
        None => return Ok(None),
        Some(Cell::Val(Value::Number(n))) => return Ok(n.as_f64()),
        Some(Cell::Str(s)) => s,
        Some(Cell::Val(Value::String(s))) => s,
        Some(Cell::Val(_)) => return Err(format!("`{col}` is not a number")),
    }
    .trim();
    if s.is_empty() {
        return Ok(None);
    }
    let x = if s.contains(',') {
        s.replace(',', ".").parse::<f64>()
    } else {
        s.parse::<f64>()
    };
    x.ok()
        .filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| format!("`{col}` is not a number"))
}

/// A date (`YYYY-MM-DD`) or an RFC 3339 date-time, as milliseconds.
fn parse_time(s: &str) -> Option<i64> {
    parse_timestamp_ms(s).or_else(|| {
        if s.len() == 10 {
            parse_timestamp_ms(&format!("{s}T00:00:00Z"))
        } else {
            None
        }
    })
}

fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!((x * 1e6).round() / 1e6)
    }
}

// ------------------------------------------------------------ validation

/// A person as a row names them: identifiers in precedence order, the key
/// identifier first.
#[derive(Clone)]
struct Person {
    identifiers: Vec<PreparedIdentifier>,
}

struct CustomerRec {
    line: u64,
    key: i64,
    mac: i64,
    person: Person,
    traits: Map<String, Value>,
}

struct OrderRec {
    line: u64,
    key: i64,
    mac: i64,
    person: Person,
    ts_ms: i64,
    /// The event's properties as JSON text (a map of values held for
    /// every order of a 10M-line file was most of its memory).
    properties: Box<str>,
}

/// A validated file: the records to apply and what was wrong.
pub struct Parsed {
    kind: ImportKind,
    customers: Vec<CustomerRec>,
    orders: Vec<OrderRec>,
    pub(crate) catalog: Vec<catalog::CatalogRec>,
    pub report: ImportReport,
    /// All errors (the report keeps the first ones).
    pub errors: Vec<RowError>,
}

impl Parsed {
    pub fn records(&self) -> usize {
        self.customers.len() + self.orders.len() + self.catalog.len()
    }
}

/// Which identifier columns a file has: the mapping's, or headers named as
/// identifier kinds.
fn identifier_columns(
    spec: &ImportSpec,
    headers: &[String],
    identity: &IdentityConfig,
) -> Result<Vec<(IdentifierKind, String)>> {
    let mut cols = Vec::new();
    if spec.mapping.identifiers.is_empty() {
        for h in headers {
            if let Ok(k) = identity.kind(h)
                && !matches!(k, IdentifierKind::AnonymousId | IdentifierKind::DeviceId)
            {
                cols.push((k, h.clone()));
            }
        }
    } else {
        for (k, c) in &spec.mapping.identifiers {
            let kind = identity.kind(k).map_err(|e| {
                Error::rejected(
                    Code::InvalidMapping,
                    format!("identifier `{k}`: {e} (custom kinds are set in tarmo.toml's identity.custom_kinds)"),
                )
            })?;
            if matches!(kind, IdentifierKind::AnonymousId | IdentifierKind::DeviceId) {
                return Err(Error::rejected(
                    Code::InvalidMapping,
                    format!("`{k}` names a browser or device, not a customer"),
                ));
            }
            cols.push((kind, c.clone()));
        }
    }
    if cols.is_empty() {
        return Err(Error::rejected(
            Code::InvalidMapping,
            "no identifier column: name columns as identifier kinds (email, phone, user_id, loyalty_card, ...) or map them under [identifiers]",
        ));
    }
    // The key identifier first, then by precedence.
    let key_kind = match &spec.mapping.key {
        Some(k) => {
            if !cols.iter().any(|(kind, _)| kind.as_str() == k) {
                return Err(Error::rejected(
                    Code::InvalidMapping,
                    format!("`key` names `{k}`, which is not among the identifiers"),
                ));
            }
            Some(k.clone())
        }
        None => None,
    };
    let rank = |k: &IdentifierKind| -> (u8, String) {
        if key_kind.as_deref() == Some(k.as_str()) {
            return (0, String::new());
        }
        let r = match k {
            IdentifierKind::UserId => 1,
            IdentifierKind::Custom(_) => 2,
            IdentifierKind::Email => 3,
            IdentifierKind::Phone => 4,
            _ => 5,
        };
        (r, k.as_str().to_owned())
    };
    cols.sort_by_key(|(k, _)| rank(k));
    Ok(cols)
}

fn person_of(
    store: &Vault,
    identity: &IdentityConfig,
    cols: &[(IdentifierKind, String)],
    m: &impl Cells,
    err: &mut Vec<String>,
) -> Option<Person> {
    let mut identifiers = Vec::new();
    for (kind, col) in cols {
        let Some(v) = text(m, col) else { continue };
        match identity.identifier(kind.clone(), &v) {
            Ok(id) => identifiers.push(PreparedIdentifier {
                bidx: store.blind_index(id.kind().as_str(), id.value()),
                kind: id.kind().clone(),
                value: id.value().to_owned(),
            }),
            Err(e) => err.push(format!("`{col}`: {e}")),
        }
    }
    (!identifiers.is_empty()).then_some(Person { identifiers })
}

/// A keyed 64-bit hash (the vault's MAC key): no value can be read back
/// from it, and nobody without the master key can test a guess.
fn keyed(vault: &Vault, label: &str, data: &[u8]) -> i64 {
    let t = vault.mac(label, data);
    i64::from_le_bytes(t[..8].try_into().expect("8 bytes"))
}

fn person_key(vault: &Vault, kind: ImportKind, p: &Person) -> i64 {
    let first = &p.identifiers[0];
    let mut d = Vec::with_capacity(40);
    d.extend_from_slice(kind.as_str().as_bytes());
    d.push(0);
    d.extend_from_slice(&first.bidx.0);
    keyed(vault, "import-row-key", &d)
}

fn content_mac(vault: &Vault, v: &Value) -> i64 {
    keyed(vault, "import-row-content", v.to_string().as_bytes())
}

/// Parse and check every row. Bad input in the file is reported per line;
/// an error here (a mapping that cannot work) refuses the whole file.
pub fn parse(
    spec: &ImportSpec,
    bytes: &[u8],
    identity: &IdentityConfig,
    vault: &Vault,
    now_ms: i64,
) -> Result<Parsed> {
    spec.check()?;
    let mut errors = Vec::new();
    let mut rows = Rows::open(spec.format, bytes, &mut errors)?;
    let headers = rows.headers.clone();
    let mut parsed = Parsed {
        kind: spec.kind,
        customers: Vec::new(),
        orders: Vec::new(),
        catalog: Vec::new(),
        report: ImportReport {
            dry_run: spec.dry_run,
            ..Default::default()
        },
        errors: Vec::new(),
    };
    let mut used: HashSet<String> = HashSet::new();
    match spec.kind {
        ImportKind::Customers => parse_customers(
            spec,
            &mut rows,
            identity,
            vault,
            &mut parsed,
            &mut errors,
            &mut used,
        )?,
        ImportKind::Orders => parse_orders(
            spec,
            &mut rows,
            identity,
            vault,
            now_ms,
            &mut parsed,
            &mut errors,
            &mut used,
        )?,
        ImportKind::Products | ImportKind::Stores | ImportKind::Stock => {
            let records = rows.all(&mut errors);
            catalog::parse(spec, &headers, records, &mut parsed, &mut errors, &mut used)?
        }
    }
    parsed.report.rows = rows.seen;
    parsed.report.ignored_columns = headers
        .iter()
        .filter(|h| !h.is_empty() && !used.contains(*h))
        .cloned()
        .collect();
    errors.sort_by_key(|e| e.line);
    parsed.report.invalid = errors.iter().map(|e| e.line).collect::<HashSet<_>>().len() as u64;
    parsed.report.records = parsed.records() as u64;
    parsed.report.errors = errors.iter().take(MAX_ERRORS).cloned().collect();
    parsed.errors = errors;
    Ok(parsed)
}

#[allow(clippy::too_many_arguments)]
fn parse_customers(
    spec: &ImportSpec,
    rows: &mut Rows<'_>,
    identity: &IdentityConfig,
    vault: &Vault,
    parsed: &mut Parsed,
    errors: &mut Vec<RowError>,
    used: &mut HashSet<String>,
) -> Result<()> {
    let headers = &rows.headers.clone();
    let id_cols = identifier_columns(spec, headers, identity)?;
    used.extend(id_cols.iter().map(|(_, c)| c.clone()));
    let trait_cols: Vec<(String, String, TraitType)> = if spec.mapping.traits.is_empty() {
        headers
            .iter()
            .filter(|h| !h.is_empty() && !used.contains(*h))
            .map(|h| {
                let ty = if h == "birthday" {
                    TraitType::Date
                } else {
                    TraitType::Text
                };
                (h.clone(), h.clone(), ty)
            })
            .collect()
    } else {
        spec.mapping
            .traits
            .iter()
            .map(|(name, c)| (name.clone(), c.column().to_owned(), c.ty()))
            .collect()
    };
    for (name, _, _) in &trait_cols {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::rejected(
                Code::InvalidMapping,
                "a trait's name is 1-128 bytes",
            ));
        }
    }
    used.extend(trait_cols.iter().map(|(_, c, _)| c.clone()));
    // Each row on its own (on every core), then in file order whether a
    // customer comes twice; a block at a time.
    let mut keys: HashMap<i64, u64> = HashMap::new();
    loop {
        let block = rows.block(BLOCK, errors);
        if block.is_empty() {
            break;
        }
        let checked = par_chunks(block, |part| {
            part.into_iter()
                .map(|(line, row)| {
                    let m = row.fields(headers);
                    let mut errs = Vec::new();
                    let person = person_of(vault, identity, &id_cols, &m, &mut errs);
                    if person.is_none() && errs.is_empty() {
                        errs.push("no identifier: every identifier column is empty".into());
                    }
                    let mut traits = Map::new();
                    for (name, col, ty) in &trait_cols {
                        let Some(raw) = m.cell(col) else { continue };
                        match typed(raw, *ty) {
                            Ok(Some(v)) => {
                                traits.insert(name.clone(), v);
                            }
                            Ok(None) => {}
                            Err(e) => errs.push(format!("`{col}`: {e}")),
                        }
                    }
                    match (errs.is_empty(), person) {
                        (true, Some(person)) => {
                            let key = person_key(vault, ImportKind::Customers, &person);
                            let ids: Vec<Value> = person
                                .identifiers
                                .iter()
                                .map(|i| json!([i.kind.as_str(), hex::encode(i.bidx.0)]))
                                .collect();
                            let mac = content_mac(vault, &json!({"ids": ids, "traits": traits}));
                            Ok(CustomerRec {
                                line,
                                key,
                                mac,
                                person,
                                traits,
                            })
                        }
                        _ => Err((line, errs)),
                    }
                })
                .collect()
        });
        for c in checked {
            match c {
                Ok(c) => {
                    if let Some(first) = keys.insert(c.key, c.line) {
                        errors.push(RowError {
                            line: c.line,
                            message: format!(
                                "the same customer as line {first} (one row per customer)"
                            ),
                        });
                    } else {
                        parsed.customers.push(c);
                    }
                }
                Err((line, errs)) => {
                    errors.extend(errs.into_iter().map(|message| RowError { line, message }));
                }
            }
        }
    }
    Ok(())
}

fn typed(raw: Cell<'_>, ty: TraitType) -> std::result::Result<Option<Value>, String> {
    let s = match raw {
        Cell::Str(s) => s.trim().to_owned(),
        Cell::Val(Value::String(s)) => s.trim().to_owned(),
        Cell::Val(Value::Null) => return Ok(None),
        Cell::Val(Value::Array(_) | Value::Object(_)) => {
            return Err("a trait is a single value".into());
        }
        Cell::Val(other) => other.to_string(),
    };
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(match ty {
        TraitType::Text => {
            if s.len() > 2000 {
                return Err("at most 2000 bytes".into());
            }
            Value::String(s)
        }
        TraitType::Number => match s.replace(',', ".").parse::<f64>() {
            Ok(x) if x.is_finite() => json_number(x),
            _ => return Err("not a number".into()),
        },
        TraitType::Date => {
            if parse_time(&s).is_none() {
                return Err("not a date (YYYY-MM-DD) or an RFC 3339 date-time".into());
            }
            Value::String(s)
        }
        TraitType::Boolean => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err("not true/false".into()),
        },
    }))
}

/// An order line, as the event will list it.
struct Item {
    product: String,
    quantity: f64,
    price: Option<f64>,
}

/// An order as it is built from its lines.
struct OrderDraft {
    line: u64,
    person: Option<Person>,
    /// The identifier columns as the first line wrote them: later lines of
    /// the order are compared by these, without normalising and hashing
    /// the same customer again.
    raw_ids: Vec<Option<String>>,
    ts_ms: i64,
    time: String,
    store: Option<String>,
    currency: Option<String>,
    total: Option<f64>,
    items: Vec<Item>,
    /// Every line had a price, so the total can be computed.
    priced: bool,
    computed: f64,
}

/// What one order line says on its own.
struct LinePre {
    line: u64,
    order_id: Option<String>,
    raw_ids: Vec<Option<String>>,
    /// The customer and what was wrong with it; `None` when the line
    /// continues the order of the line before it.
    person: Option<(Option<Person>, Vec<String>)>,
    time: Option<String>,
    ts: Option<std::result::Result<i64, String>>,
    errs: Vec<String>,
    store: Option<String>,
    currency: Option<String>,
    total: Option<f64>,
    items: Vec<Item>,
    priced: bool,
    computed: f64,
}

/// When an order was made, not in the future (a minute's clock skew aside).
fn order_time(t: &str, now_ms: i64, col: &str) -> std::result::Result<i64, String> {
    match parse_time(t) {
        Some(ms) if ms <= now_ms + 60_000 => Ok(ms),
        Some(_) => Err(format!("`{col}`: in the future")),
        None => Err(format!(
            "`{col}`: not a date (YYYY-MM-DD) or an RFC 3339 date-time"
        )),
    }
}

/// A row's order lines (a list in JSON Lines, or the row's own line): the
/// items, whether each had a price, and the total of those prices.
fn order_items(
    m: Fields<'_>,
    o: &mapping::OrderColumns,
    errs: &mut Vec<String>,
) -> (Vec<Item>, bool, f64) {
    let mut lines: Vec<Fields<'_>> = Vec::new();
    match m.cell(&o.items) {
        Some(Cell::Val(Value::Array(a))) => {
            for it in a {
                match it {
                    Value::Object(x) => lines.push(Fields::Json(x)),
                    _ => errs.push(format!("`{}`: a list of line objects", o.items)),
                }
            }
        }
        Some(_) => errs.push(format!("`{}`: a list of line objects", o.items)),
        None => {
            if m.cell(&o.product).is_some() {
                lines.push(m);
            }
        }
    }
    let mut items = Vec::new();
    let (mut priced, mut computed) = (true, 0.0);
    for l in &lines {
        let Some(product) = text(l, &o.product) else {
            errs.push(format!("`{}`: a line needs its product id", o.product));
            continue;
        };
        let qty = match number(l, &o.quantity) {
            Ok(Some(q)) if q > 0.0 => q,
            Ok(None) => 1.0,
            Ok(Some(_)) => {
                errs.push(format!("`{}`: a quantity above 0", o.quantity));
                continue;
            }
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        let price = match number(l, &o.price) {
            Ok(p) => p,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        match price {
            Some(p) => computed += p * qty,
            None => priced = false,
        }
        items.push(Item {
            product,
            quantity: qty,
            price,
        });
    }
    (items, priced, computed)
}

/// A finished order as it is kept until applied (`None`: it names nobody).
fn order_record(vault: &Vault, order_id: String, d: OrderDraft) -> Option<OrderRec> {
    let person = d.person?;
    let total = d
        .total
        .or((d.priced && !d.items.is_empty()).then_some(d.computed));
    let properties = order_properties(
        &order_id,
        d.store.as_deref(),
        d.currency.as_deref(),
        total,
        &d.items,
    );
    let key = keyed(
        vault,
        "import-row-key",
        format!("orders\0{order_id}").as_bytes(),
    );
    let content = order_content(&person, &d.time, &properties);
    let mac = keyed(vault, "import-row-content", &content);
    Some(OrderRec {
        line: d.line,
        key,
        mac,
        person,
        ts_ms: d.ts_ms,
        properties: properties.into_boxed_str(),
    })
}

/// What an order's content hash covers, written as `json!` would write
/// it (keys in order): the customer's blind indexes, the time as the file
/// wrote it, the properties. The bytes must not change between releases,
/// or a re-import would count every order as changed.
fn order_content(person: &Person, time: &str, properties: &str) -> Vec<u8> {
    let mut content: Vec<u8> = Vec::with_capacity(properties.len() + 160);
    content.extend_from_slice(b"{\"ids\":[");
    for (n, i) in person.identifiers.iter().enumerate() {
        if n > 0 {
            content.push(b',');
        }
        content.push(b'[');
        json_str(&mut content, i.kind.as_str());
        content.extend_from_slice(b",\"");
        content.extend_from_slice(hex::encode(i.bidx.0).as_bytes());
        content.extend_from_slice(b"\"]");
    }
    content.extend_from_slice(b"],\"properties\":");
    content.extend_from_slice(properties.as_bytes());
    content.extend_from_slice(b",\"time\":");
    json_str(&mut content, time);
    content.push(b'}');
    content
}

/// `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string writes into memory");
}

/// A number as [`json_number`] makes it, written out.
fn json_num(out: &mut Vec<u8>, x: f64) {
    serde_json::to_writer(out, &json_number(x)).expect("a number writes into memory");
}

/// An order's properties as JSON text, exactly as the map of values
/// (`channel`, `currency`, `order_id`, `products`, `revenue`, `store_id`,
/// `total`; keys in order) would print, without building it: at 3M orders
/// the map and its printing were most of a file's parse.
fn order_properties(
    order_id: &str,
    store: Option<&str>,
    currency: Option<&str>,
    total: Option<f64>,
    items: &[Item],
) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(96 + 64 * items.len());
    out.extend_from_slice("{\"channel\":\"offline\"".as_bytes());
    if let Some(c) = currency {
        out.extend_from_slice(",\"currency\":".as_bytes());
        json_str(&mut out, c);
    }
    out.extend_from_slice(",\"order_id\":".as_bytes());
    json_str(&mut out, order_id);
    out.extend_from_slice(",\"products\":[".as_bytes());
    for (n, it) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Some(p) = it.price {
            out.extend_from_slice("\"price\":".as_bytes());
            json_num(&mut out, p);
            out.push(b',');
        }
        out.extend_from_slice("\"product_id\":".as_bytes());
        json_str(&mut out, &it.product);
        out.extend_from_slice(",\"quantity\":".as_bytes());
        json_num(&mut out, it.quantity);
        out.push(b'}');
    }
    out.push(b']');
    if let Some(t) = total {
        out.extend_from_slice(",\"revenue\":".as_bytes());
        json_num(&mut out, t);
    }
    if let Some(s) = store {
        out.extend_from_slice(",\"store_id\":".as_bytes());
        json_str(&mut out, s);
    }
    if let Some(t) = total {
        out.extend_from_slice(",\"total\":".as_bytes());
        json_num(&mut out, t);
    }
    out.push(b'}');
    String::from_utf8(out).expect("JSON text is UTF-8")
}

#[allow(clippy::too_many_arguments)]
fn parse_orders(
    spec: &ImportSpec,
    rows: &mut Rows<'_>,
    identity: &IdentityConfig,
    vault: &Vault,
    now_ms: i64,
    parsed: &mut Parsed,
    errors: &mut Vec<RowError>,
    used: &mut HashSet<String>,
) -> Result<()> {
    let headers = &rows.headers.clone();
    let id_cols = identifier_columns(spec, headers, identity)?;
    used.extend(id_cols.iter().map(|(_, c)| c.clone()));
    let o = &spec.mapping.order;
    used.extend(
        [
            &o.id,
            &o.time,
            &o.store,
            &o.total,
            &o.currency,
            &o.items,
            &o.product,
            &o.quantity,
            &o.price,
        ]
        .into_iter()
        .cloned(),
    );
    if !headers.contains(&o.id) {
        return Err(Error::rejected(
            Code::InvalidMapping,
            format!("the file has no order id column `{}`", o.id),
        ));
    }
    // Boxed: a draft is ~200 bytes, and a growing map moves its entries.
    let mut drafts: HashMap<String, Box<OrderDraft>> = HashMap::new();
    let mut bad: HashSet<String> = HashSet::new();
    // What each line says on its own, on every core; a line that continues
    // the order of the line before it reuses that line's customer and time.
    let work = |part: Vec<(u64, Row)>| {
        let mut out: Vec<LinePre> = Vec::with_capacity(part.len());
        for (line, row) in part {
            let m = row.fields(headers);
            let order_id = text(&m, &o.id);
            let prev = out
                .last()
                .filter(|p| p.order_id.is_some() && p.order_id == order_id);
            let raw_ids: Vec<Option<String>> = id_cols.iter().map(|(_, c)| text(&m, c)).collect();
            let person = match prev {
                Some(_) => None,
                None => {
                    let mut errs = Vec::new();
                    let p = person_of(vault, identity, &id_cols, &m, &mut errs);
                    Some((p, errs))
                }
            };
            let time = text(&m, &o.time);
            let ts = match prev {
                Some(p) if p.time == time && p.ts.is_some() => p.ts.clone(),
                _ => time.as_deref().map(|t| order_time(t, now_ms, &o.time)),
            };
            let mut errs = Vec::new();
            let store = text(&m, &o.store);
            let currency = text(&m, &o.currency).map(|c| c.to_ascii_uppercase());
            if let Some(c) = &currency
                && (c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
            {
                errs.push(format!("`{}`: an ISO 4217 code such as EUR", o.currency));
            }
            let total = number(&m, &o.total).unwrap_or_else(|e| {
                errs.push(e);
                None
            });
            let (items, priced, computed) = order_items(m, o, &mut errs);
            out.push(LinePre {
                line,
                order_id,
                raw_ids,
                person,
                time,
                ts,
                errs,
                store,
                currency,
                total,
                items,
                priced,
                computed,
            });
        }
        out
    };
    let work = &work;
    // A pipeline: while the workers check block N, this thread folds block
    // N-1 and reads block N+1 (reading and folding go in file order, so
    // they stay on one thread): ~10 % faster parsing of 3M lines.
    let mut block = rows.block(BLOCK, errors);
    std::thread::scope(|s| {
        let mut running: Option<std::thread::ScopedJoinHandle<'_, Vec<LinePre>>> = None;
        loop {
            if running.is_none() {
                if block.is_empty() {
                    break;
                }
                let b = std::mem::take(&mut block);
                running = Some(s.spawn(move || par_chunks(b, work)));
                block = rows.block(BLOCK, errors);
            }
            let pre = running
                .take()
                .expect("started above")
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            if !block.is_empty() {
                let b = std::mem::take(&mut block);
                running = Some(s.spawn(move || par_chunks(b, work)));
            }
            for p in pre {
                let LinePre {
                    line,
                    order_id,
                    raw_ids,
                    person: pre_person,
                    time,
                    ts: pre_ts,
                    errs: rest,
                    store,
                    currency,
                    total,
                    items,
                    priced,
                    computed,
                } = p;
                let mut errs = Vec::new();
                let Some(order_id) = order_id else {
                    errors.push(RowError {
                        line,
                        message: format!("`{}`: an order id is required", o.id),
                    });
                    continue;
                };
                if order_id.len() > 128 {
                    errs.push(format!("`{}`: at most 128 bytes", o.id));
                }
                // A further line of an order already seen names the same customer
                // when it writes the same values (or none); only a first line is
                // parsed into identifiers.
                let (person, same_customer) = match drafts.get(&order_id) {
                    Some(d) => {
                        let same = raw_ids.iter().all(Option::is_none) || raw_ids == d.raw_ids;
                        (None, Some(same))
                    }
                    None => {
                        let (p, e) = pre_person.unwrap_or_else(|| {
                            // Its order began in another part of the file: read
                            // the customer here.
                            let mut e = Vec::new();
                            let m: Map<String, Value> = id_cols
                                .iter()
                                .zip(&raw_ids)
                                .filter_map(|((_, c), v)| {
                                    Some((c.clone(), Value::String(v.clone()?)))
                                })
                                .collect();
                            (person_of(vault, identity, &id_cols, &m, &mut e), e)
                        });
                        errs.extend(e);
                        (p, None)
                    }
                };
                // A further line that writes its order's time as the first did
                // needs no second parse.
                let seen_time = drafts
                    .get(&order_id)
                    .filter(|d| Some(&d.time) == time.as_ref())
                    .map(|d| d.ts_ms);
                let ts_ms = match (seen_time, pre_ts) {
                    (Some(ms), _) => ms,
                    (None, None) => {
                        errs.push(format!("`{}`: when the order was made is required", o.time));
                        0
                    }
                    (None, Some(Ok(ms))) => ms,
                    (None, Some(Err(e))) => {
                        errs.push(e);
                        0
                    }
                };
                errs.extend(rest);
                if !errs.is_empty() {
                    bad.insert(order_id);
                    errors.extend(errs.into_iter().map(|message| RowError { line, message }));
                    continue;
                }
                match drafts.get_mut(&order_id) {
                    None => {
                        drafts.insert(
                            order_id,
                            Box::new(OrderDraft {
                                line,
                                person,
                                raw_ids,
                                ts_ms,
                                time: time.unwrap_or_default(),
                                store,
                                currency,
                                total,
                                items,
                                priced,
                                computed,
                            }),
                        );
                    }
                    Some(d) => {
                        // Another line of the same order must tell the same story.
                        let mut conflict = Vec::new();
                        if same_customer == Some(false) {
                            conflict.push("customer");
                        }
                        if d.ts_ms != ts_ms {
                            conflict.push("time");
                        }
                        if store.is_some() && d.store.is_some() && store != d.store {
                            conflict.push("store");
                        }
                        if currency.is_some() && d.currency.is_some() && currency != d.currency {
                            conflict.push("currency");
                        }
                        if !conflict.is_empty() {
                            errors.push(RowError {
                                line,
                                message: format!(
                                    "order `{order_id}` was given another {} on line {}",
                                    conflict.join(", "),
                                    d.line
                                ),
                            });
                            bad.insert(order_id);
                            continue;
                        }
                        d.store = d.store.take().or(store);
                        d.currency = d.currency.take().or(currency);
                        d.total = d.total.or(total);
                        d.items.extend(items);
                        d.priced &= priced;
                        d.computed += computed;
                    }
                }
            }
            if running.is_some() {
                block = rows.block(BLOCK, errors);
            }
        }
    });
    // Each finished order on every core: its properties as JSON text, its
    // keyed row hash and content hash.
    let done: Vec<(String, Box<OrderDraft>)> = drafts
        .into_iter()
        .filter(|(id, _)| !bad.contains(id))
        .collect();
    drop(bad);
    let recs = par_chunks(done, |part| {
        part.into_iter()
            .map(|(order_id, d)| order_record(vault, order_id, *d))
            .collect()
    });
    for r in recs {
        match r {
            Some(r) => parsed.orders.push(r),
            None => parsed.report.anonymous += 1,
        }
    }
    parsed.orders.sort_by_key(|o| o.line);
    Ok(())
}

// ------------------------------------------------------------ applying

/// The provenance every message of an import carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Details {
    source: String,
    documentation: String,
    file: String,
    file_sha256: String,
    format: Format,
    skip_invalid: bool,
}

/// Record a new import (`queued`), in the caller's transaction.
pub fn create(
    conn: &mut dyn Conn,
    vault: &Vault,
    spec: &ImportSpec,
    file_sha256: &str,
    now_ms: i64,
) -> Result<i64> {
    let details = Details {
        source: spec.source.trim().to_owned(),
        documentation: spec.documentation.trim().to_owned(),
        file: spec.file_name.clone(),
        file_sha256: file_sha256.to_owned(),
        format: spec.format,
        skip_invalid: spec.skip_invalid,
    };
    let sealed = vault.seal_system(
        Place::ImportDetails,
        &serde_json::to_vec(&details).expect("serialises"),
    )?;
    let row = conn
        .query_opt(
            "INSERT INTO imports (kind, status, details, created_ms) VALUES ($1, 'queued', $2, $3) RETURNING id",
            &[P::Text(spec.kind.as_str()), P::from(&sealed), P::Int(now_ms)],
        )?
        .ok_or_else(|| Error::Backend("INSERT ... RETURNING gave no row".into()))?;
    row.int(0)
}

/// Record how an import ended.
pub fn finish(
    conn: &mut dyn Conn,
    vault: &Vault,
    id: i64,
    status: Status,
    report: &ImportReport,
    now_ms: i64,
) -> Result<()> {
    let sealed = vault.seal_system(
        Place::ImportDetails,
        &serde_json::to_vec(report).expect("serialises"),
    )?;
    conn.exec(
        "UPDATE imports SET status = $2, report = $3, rows_total = $4, finished_ms = $5 WHERE id = $1",
        &[
            P::Int(id),
            P::Text(status.as_str()),
            P::from(&sealed),
            P::Int(report.rows as i64),
            P::Int(now_ms),
        ],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    /// Applied (with `skip_invalid`, the valid rows).
    Done,
    /// Rows had errors and nothing was written.
    Invalid,
    /// Checked only.
    Checked,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Invalid => "invalid",
            Self::Checked => "checked",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "invalid" => Self::Invalid,
            "checked" => Self::Checked,
            _ => Self::Failed,
        }
    }
}

/// A record to write, and what the file's earlier imports knew of it.
struct Todo {
    key: i64,
    mac: i64,
    /// The event an earlier version became (an order to replace).
    old: Option<i64>,
    /// Never imported before (else: changed).
    new: bool,
    event: PreparedEvent,
}

/// What is kept of earlier imports' rows of a kind: key → (content, event).
fn known_rows(conn: &mut dyn Conn, kind: ImportKind) -> Result<HashMap<i64, (i64, Option<i64>)>> {
    let mut out = HashMap::new();
    for r in conn.query(
        "SELECT h, mac, event_id FROM import_rows WHERE kind = $1",
        &[P::Text(kind.as_str())],
    )? {
        out.insert(r.int(0)?, (r.int(1)?, r.opt_int(2)?));
    }
    Ok(out)
}

/// What earlier imports kept of these keys: key → (content, event). Read
/// inside the chunk's transaction, so that two imports of the same file
/// at once cannot both count a record as new.
fn known_for(conn: &mut dyn Conn, keys: &[i64]) -> Result<HashMap<i64, (i64, Option<i64>)>> {
    let mut out = HashMap::with_capacity(keys.len());
    // Bounded: both backends cap the parameters of one statement.
    for part in keys.chunks(500) {
        let marks: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
        let params: Vec<P<'_>> = part.iter().map(|k| P::Int(*k)).collect();
        let sql = format!(
            "SELECT h, mac, event_id FROM import_rows WHERE h IN ({})",
            marks.join(",")
        );
        for r in conn.query(&sql, &params)? {
            out.insert(r.int(0)?, (r.int(1)?, r.opt_int(2)?));
        }
    }
    Ok(out)
}

/// What each event an import makes says about where it came from.
struct Origin<'a> {
    id: i64,
    spec: &'a ImportSpec,
    file_sha256: &'a str,
}

/// The event record `i` of `parsed` becomes, its body built and packed;
/// `now` is the import's time (an identify's timestamp).
fn record_event(parsed: &Parsed, i: usize, origin: &Origin<'_>, now: i64) -> Option<PreparedEvent> {
    let provenance = |line: u64| {
        json!({
            "id": origin.id,
            "kind": parsed.kind.as_str(),
            "source": origin.spec.source.trim(),
            "documentation": origin.spec.documentation.trim(),
            "file": origin.spec.file_name,
            "file_sha256": origin.file_sha256,
            "line": line,
        })
    };
    let source = Source::Import(origin.id);
    if let Some(c) = parsed.customers.get(i) {
        let body = json!({
            "type": "identify",
            "traits": c.traits,
            "timestamp": rfc3339(now),
            "context": {"import": provenance(c.line)},
        });
        return Some(PreparedEvent {
            dedup: None,
            source,
            trust: Trust::Server,
            kind: MessageKind::Identify,
            timestamp_ms: now,
            identifiers: c.person.identifiers.clone(),
            traits: c.traits.clone(),
            body: packed::pack(serde_json::to_vec(&body).expect("serialises")),
            consent: None,
        });
    }
    let o = parsed.orders.get(i)?;
    // The message as `json!` would write it (keys in order), with the
    // properties as they were kept: already JSON.
    let body = format!(
        r#"{{"context":{{"import":{}}},"event":{},"properties":{},"timestamp":"{}","type":"track"}}"#,
        provenance(o.line),
        Value::String(ORDER_EVENT.into()),
        o.properties,
        rfc3339(o.ts_ms),
    );
    Some(PreparedEvent {
        dedup: None,
        source,
        trust: Trust::Server,
        kind: MessageKind::Track,
        timestamp_ms: o.ts_ms,
        identifiers: o.person.identifiers.clone(),
        traits: Map::new(),
        body: packed::pack(body.into_bytes()),
        consent: None,
    })
}

/// The key and content of record `i`, whichever kind the file holds.
fn record_key(parsed: &Parsed, i: usize) -> Option<(i64, i64)> {
    parsed
        .customers
        .get(i)
        .map(|c| (c.key, c.mac))
        .or_else(|| parsed.orders.get(i).map(|o| (o.key, o.mac)))
}

/// Events built off the writer, while it applies the chunk before:
/// record `start + i` is `events[i]`, `None` where it was not built.
/// Building and packing bodies was a fifth (customers) to a third
/// (orders) of the writer's time. Whether a record is to be written at
/// all is for the chunk's transaction to say (it reads the import rows):
/// it drops what was built for an unchanged record and builds whatever it
/// must write and was not built.
struct Ahead {
    start: usize,
    events: Vec<Option<PreparedEvent>>,
}

impl Ahead {
    fn none() -> Self {
        Self {
            start: 0,
            events: Vec::new(),
        }
    }

    fn take(&mut self, i: usize) -> Option<PreparedEvent> {
        let j = i.checked_sub(self.start)?;
        self.events.get_mut(j)?.take()
    }

    /// Build the events of `range` on this thread.
    fn build(parsed: &Parsed, range: std::ops::Range<usize>, origin: &Origin<'_>) -> Self {
        let now = crate::now_ms();
        let events = range
            .clone()
            .map(|i| record_event(parsed, i, origin, now))
            .collect();
        Self {
            start: range.start,
            events,
        }
    }
}

/// Whether to build the next chunk's events ahead: not when most records
/// of the chunk before were unchanged (a re-import), whose events would
/// be built for nothing, and more slowly than the writer skips them.
fn worth_building(written: u64, records: u64) -> bool {
    written * 2 >= records
}

/// Apply the records `range` (in the order parsing gave them) of a
/// validated file inside the writer transaction `ctx`, adding what was
/// done to `report`; `ahead` holds events already built. The caller
/// decides whether a file with errors may be applied (`skip_invalid`) and
/// records the checkpoint in the same transaction.
fn apply_chunk(
    ctx: &mut TxCtx<'_>,
    origin: &Origin<'_>,
    parsed: &Parsed,
    range: std::ops::Range<usize>,
    report: &mut ImportReport,
    mut ahead: Ahead,
) -> Result<()> {
    let keys: Vec<i64> = range
        .clone()
        .filter_map(|i| record_key(parsed, i).map(|k| k.0))
        .collect();
    let known = known_for(ctx.conn, &keys)?;
    let now = ctx.now_ms;
    let orders = parsed.kind == ImportKind::Orders;
    let mut todo: Vec<Todo> = Vec::new();
    for i in range {
        let Some((key, mac)) = record_key(parsed, i) else {
            continue;
        };
        // Whether a record must be written, and the event an earlier
        // version became (only an order's is ever replaced).
        let old = match known.get(&key) {
            Some((m, _)) if *m == mac => {
                report.unchanged += 1;
                continue;
            }
            Some((_, ev)) => {
                report.updated += 1;
                if orders { *ev } else { None }
            }
            None => {
                report.created += 1;
                None
            }
        };
        let Some(event) = ahead
            .take(i)
            .or_else(|| record_event(parsed, i, origin, now))
        else {
            continue;
        };
        todo.push(Todo {
            key,
            mac,
            old,
            new: !known.contains_key(&key),
            event,
        });
    }
    if todo.is_empty() {
        return Ok(());
    }
    let refs: Vec<&PreparedEvent> = todo.iter().map(|t| &t.event).collect();
    // Only an order's event is ever replaced: only orders need ids.
    let want_ids = parsed.kind == ImportKind::Orders;
    let (outcomes, event_ids) = ctx.apply_events(&refs, want_ids)?;
    let mut touched = HashSet::new();
    for (t, (outcome, event_id)) in todo.iter().zip(outcomes.into_iter().zip(event_ids)) {
        let profile = match outcome {
            Outcome::Stored(p) => p,
            Outcome::Suppressed => {
                // Counted as new or changed above; it is neither.
                if t.new {
                    report.created -= 1;
                } else {
                    report.updated -= 1;
                }
                report.suppressed += 1;
                continue;
            }
            Outcome::Duplicate => continue,
        };
        if let Some(old) = t.old {
            replace_event(ctx.conn, old, &mut touched)?;
        }
        ctx.conn.exec(
            "INSERT INTO import_rows (h, kind, mac, profile_id, event_id, import_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (h) DO UPDATE SET mac = EXCLUDED.mac, profile_id = EXCLUDED.profile_id,
                 event_id = EXCLUDED.event_id, import_id = EXCLUDED.import_id",
            &[
                P::Int(t.key),
                P::Text(parsed.kind.as_str()),
                P::Int(t.mac),
                P::Int(profile.0),
                event_id.map_or(P::Null, P::Int),
                P::Int(origin.id),
            ],
        )?;
    }
    for p in touched {
        crate::segments::touch(ctx.conn, p, now)?;
    }
    Ok(())
}

/// An order changed: the event it became goes (the new one is stored), and
/// the segment engine reads the person again.
fn replace_event(
    conn: &mut dyn Conn,
    event_id: i64,
    touched: &mut HashSet<ProfileId>,
) -> Result<()> {
    let Some(r) = conn.query_opt(
        "SELECT profile_id FROM events WHERE id = $1",
        &[P::Int(event_id)],
    )?
    else {
        // Gone already (retention, erasure of that person).
        return Ok(());
    };
    let p = r.int(0)?;
    conn.exec("DELETE FROM events WHERE id = $1", &[P::Int(event_id)])?;
    conn.events_removed(&[(ProfileId(p), event_id)])?;
    touched.insert(ProfileId(p));
    Ok(())
}

/// Before counting: what a dry run would do, read without writing.
pub fn dry_run(conn: &mut dyn Conn, parsed: &Parsed) -> Result<ImportReport> {
    let mut report = parsed.report.clone();
    if !parsed.kind.personal() {
        report.created = parsed.catalog.len() as u64;
        return Ok(report);
    }
    let known = known_rows(conn, parsed.kind)?;
    let rows = parsed
        .customers
        .iter()
        .map(|c| (c.key, c.mac, &c.person))
        .chain(parsed.orders.iter().map(|o| (o.key, o.mac, &o.person)));
    for (key, mac, person) in rows {
        match known.get(&key) {
            Some((m, _)) if *m == mac => report.unchanged += 1,
            _ => {
                let b: Vec<_> = person.identifiers.iter().map(|i| i.bidx).collect();
                if conn.suppressed_many(&b)?.into_iter().any(|s| s) {
                    report.suppressed += 1;
                } else if known.contains_key(&key) {
                    report.updated += 1;
                } else {
                    report.created += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Forget an erased person's import rows (their keyed hashes), so that a
/// later import of the same file finds them suppressed, not unchanged.
pub fn erase(conn: &mut dyn Conn, profile: ProfileId) -> Result<()> {
    conn.exec(
        "DELETE FROM import_rows WHERE profile_id = $1",
        &[P::Int(profile.0)],
    )?;
    Ok(())
}

/// Follow a merge.
pub fn after_merge(conn: &mut dyn Conn, from: ProfileId, into: ProfileId) -> Result<()> {
    conn.exec(
        "UPDATE import_rows SET profile_id = $2 WHERE profile_id = $1",
        &[P::Int(from.0), P::Int(into.0)],
    )?;
    Ok(())
}

// ------------------------------------------------------------ reading back

/// An import as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportView {
    pub id: i64,
    pub kind: ImportKind,
    pub status: Status,
    pub source: String,
    pub documentation: String,
    pub file: String,
    pub file_sha256: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// While running: records done of records to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ImportReport>,
    /// Why a failed import failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

pub fn get(conn: &mut dyn Conn, vault: &Vault, id: i64) -> Result<Option<ImportView>> {
    let Some(r) = conn.query_opt(
        "SELECT kind, status, details, report, created_ms, finished_ms FROM imports WHERE id = $1",
        &[P::Int(id)],
    )?
    else {
        return Ok(None);
    };
    let details: Details =
        serde_json::from_slice(&vault.open_system(Place::ImportDetails, &r.sealed(2)?)?)
            .map_err(|e| Error::Corrupt(e.to_string()))?;
    // Running here: the counter is fresher than the last checkpoint.
    let mut progress = running().get(id);
    let status = match (Status::parse(&r.text(1)?), progress) {
        (Status::Queued, Some(_)) => Status::Running,
        (s, _) => s,
    };
    let (report, failure) = match r.opt_sealed(3)? {
        None => (None, None),
        Some(sealed) => {
            let plain = vault.open_system(Place::ImportDetails, &sealed)?;
            if let Ok(cp) = serde_json::from_slice::<Checkpoint>(&plain) {
                // Running (here, on another node, or in a process that
                // died) or stopped: how far it got.
                progress = progress.or(Some(Progress {
                    done: cp.done,
                    total: cp.total,
                }));
                (None, cp.failure)
            } else {
                match serde_json::from_slice::<ImportReport>(&plain) {
                    Ok(rep) => (Some(rep), None),
                    Err(_) => (
                        None,
                        serde_json::from_slice::<Value>(&plain).ok().and_then(|v| {
                            v.get("failure").and_then(Value::as_str).map(str::to_owned)
                        }),
                    ),
                }
            }
        }
    };
    Ok(Some(ImportView {
        id,
        kind: ImportKind::parse(&r.text(0)?)
            .ok_or_else(|| Error::Corrupt("unknown import kind".into()))?,
        status,
        source: details.source,
        documentation: details.documentation,
        file: details.file,
        file_sha256: details.file_sha256,
        created_at: rfc3339(r.int(4)?),
        finished_at: r.opt_int(5)?.map(rfc3339),
        progress,
        report,
        failure,
    }))
}

/// Mark an import failed (its transaction was rolled back).
pub fn fail(conn: &mut dyn Conn, vault: &Vault, id: i64, why: &str, now_ms: i64) -> Result<()> {
    let sealed = vault.seal_system(
        Place::ImportDetails,
        json!({ "failure": why }).to_string().as_bytes(),
    )?;
    conn.exec(
        "UPDATE imports SET status = 'failed', report = $2, finished_ms = $3 WHERE id = $1",
        &[P::Int(id), P::from(&sealed), P::Int(now_ms)],
    )?;
    Ok(())
}

/// Imports running in this process, for progress between checkpoints, and
/// so that an import running here is never taken for one to resume.
#[derive(Default)]
pub struct Running(Mutex<HashMap<i64, (Arc<AtomicU64>, u64)>>);

impl Running {
    fn start(&self, id: i64, total: u64) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (c.clone(), total));
        c
    }

    fn end(&self, id: i64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    fn get(&self, id: i64) -> Option<Progress> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|(c, total)| Progress {
                done: c.load(Ordering::Relaxed),
                total: *total,
            })
    }
}

fn running() -> &'static Running {
    static R: OnceLock<Running> = OnceLock::new();
    R.get_or_init(Running::default)
}

/// How a whole import went, for callers that run one start to end.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: Option<i64>,
    pub status: Status,
    pub report: ImportReport,
}

/// Run an import start to end: parse and check every row, then (unless
/// errors stop it, or it is a dry run) apply the file in chunks, each with
/// its checkpoint. `id` is an import recorded with [`create_or_resume`]
/// (HTTP), or `None` to record one (or find the interrupted import of the
/// same file) here (CLI). `on_progress` gets the counter and the total
/// once applying starts.
pub fn run(
    store: &Store,
    writer: &WriterHandle,
    identity: &IdentityConfig,
    spec: ImportSpec,
    bytes: &[u8],
    id: Option<i64>,
    on_progress: impl FnOnce(Arc<AtomicU64>, u64),
) -> Result<Finished> {
    let sha = file_sha256(bytes);
    let parsed = match parse(&spec, bytes, identity, store.vault(), crate::now_ms()) {
        Ok(p) => p,
        Err(e) => {
            if let Some(id) = id {
                let why = e.to_string();
                writer.transact_blocking(move |ctx| {
                    fail(ctx.conn, ctx.vault, id, &why, ctx.now_ms)
                })?;
            }
            return Err(e);
        }
    };
    run_parsed(store, writer, spec, parsed, sha, id, on_progress)
}

/// The file's SHA-256, in hex: which file an import was.
pub fn file_sha256(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// [`run`] for a file already parsed (the HTTP route parses before it
/// answers, so a mapping that cannot work is a 400 and records nothing).
pub fn run_parsed(
    store: &Store,
    writer: &WriterHandle,
    spec: ImportSpec,
    parsed: Parsed,
    sha: String,
    id: Option<i64>,
    on_progress: impl FnOnce(Arc<AtomicU64>, u64),
) -> Result<Finished> {
    let blocked = !parsed.errors.is_empty() && !spec.skip_invalid;
    if spec.dry_run || blocked {
        let report = {
            let mut conn = store.conn()?;
            dry_run(&mut *conn, &parsed)?
        };
        let status = if blocked {
            Status::Invalid
        } else {
            Status::Checked
        };
        let mut report = report;
        if blocked {
            // Nothing was written: the counts say what would have been.
            report.dry_run = true;
        }
        if let Some(id) = id {
            let r = report.clone();
            writer.transact_blocking(move |ctx| {
                finish(ctx.conn, ctx.vault, id, status, &r, ctx.now_ms)
            })?;
        }
        return Ok(Finished { id, status, report });
    }
    if !parsed.kind.personal() {
        return run_catalog(writer, spec, parsed, sha, id, on_progress);
    }
    let total = parsed.records() as u64;
    let parsed = Arc::new(parsed);
    let spec = Arc::new(spec);
    let sha = Arc::new(sha);
    // Recorded (or found, to resume) and marked running in a transaction of
    // its own; then the records in chunks, each with its checkpoint.
    let (s2, p2, h2) = (spec.clone(), parsed.clone(), sha.clone());
    let setup = writer.transact_blocking(move |ctx| {
        bulk_load(ctx, true)?;
        let id = match id {
            Some(id) => id,
            None => create_or_resume(ctx.conn, ctx.vault, &s2, &h2, total, ctx.now_ms)?,
        };
        let cp = match checkpoint_of(ctx.conn, ctx.vault, id)? {
            Some(cp) if cp.total == total => Checkpoint {
                failure: None,
                ..cp
            },
            _ => Checkpoint {
                done: 0,
                total,
                report: p2.report.clone(),
                failure: None,
            },
        };
        save_checkpoint(ctx.conn, ctx.vault, id, &cp)?;
        Ok((id, cp))
    });
    let (id, mut cp) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = writer.transact_blocking(|ctx| bulk_load(ctx, false));
            return Err(e);
        }
    };
    let counter = running().start(id, total);
    counter.store(cp.done, Ordering::Relaxed);
    on_progress(counter.clone(), total);
    let mut chunk = CHUNK;
    let origin = Origin {
        id,
        spec: &spec,
        file_sha256: &sha,
    };
    let total_n = total as usize;
    let first = cp.done as usize;
    let mut ahead = Ahead::build(&parsed, first..(first + chunk).min(total_n), &origin);
    let mut build = true;
    let result = loop {
        let start = cp.done as usize;
        let end = (start + chunk).min(total_n);
        let ran_before = writer.jobs_run();
        let (s2, p2, h2, mut next) = (spec.clone(), parsed.clone(), sha.clone(), cp.clone());
        let built = std::mem::replace(&mut ahead, Ahead::none());
        let (tx, rx) = std::sync::mpsc::channel();
        writer.transact(
            move |ctx| {
                let origin = Origin {
                    id,
                    spec: &s2,
                    file_sha256: &h2,
                };
                apply_chunk(ctx, &origin, &p2, start..end, &mut next.report, built)?;
                next.done = end as u64;
                if next.done >= next.total {
                    finish(
                        ctx.conn,
                        ctx.vault,
                        id,
                        Status::Done,
                        &next.report,
                        ctx.now_ms,
                    )?;
                } else {
                    save_checkpoint(ctx.conn, ctx.vault, id, &next)?;
                }
                Ok(next)
            },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // While the writer applies this chunk, the next one's events are
        // built here (its size guessed: the writer still ours).
        if build && end < total_n {
            let guess = next_chunk(chunk, true);
            ahead = Ahead::build(&parsed, end..(end + guess).min(total_n), &origin);
        }
        let step = rx.recv().unwrap_or(Err(Error::WriterGone));
        if let Ok(next) = &step {
            let written = |r: &ImportReport| r.created + r.updated + r.suppressed;
            build = worth_building(
                written(&next.report).saturating_sub(written(&cp.report)),
                (end - start) as u64,
            );
        }
        // Only this chunk ran since the last: the writer is ours.
        chunk = next_chunk(chunk, writer.jobs_run() == ran_before + 1);
        match step {
            Ok(next) => {
                cp = next;
                counter.store(cp.done, Ordering::Relaxed);
                if cp.done >= cp.total {
                    break Ok(cp.report.clone());
                }
            }
            Err(e) => break Err(e),
        }
    };
    running().end(id);
    drop(parsed);
    // The writer's cache shrinks back (unless another import runs), and
    // the file's records go back to the system.
    if let Err(e) = writer.transact_blocking(|ctx| bulk_load(ctx, false)) {
        tracing::warn!(error = %e, "the writer's page cache could not be shrunk after an import");
    }
    crate::segments::engine::release_freed_memory();
    match result {
        Ok(report) => Ok(Finished {
            id: Some(id),
            status: Status::Done,
            report,
        }),
        Err(e) => {
            let why = match &e {
                Error::Rejected { message, .. } => message.clone(),
                _ => "the import could not be written".to_owned(),
            };
            cp.failure = Some(format!(
                "{why}; stopped after {} of {} records (each chunk whole); importing the same file again finishes it",
                cp.done, cp.total
            ));
            let _ = writer.transact_blocking(move |ctx| {
                record_failure(ctx.conn, ctx.vault, id, &cp, ctx.now_ms)
            });
            Err(e)
        }
    }
}

/// The next chunk's size: doubling while the import has the writer to
/// itself, back to [`CHUNK`] once anything else used it.
fn next_chunk(chunk: usize, alone: bool) -> usize {
    if alone {
        (chunk * 2).min(MAX_CHUNK)
    } else {
        CHUNK
    }
}

/// Imports applying records now: while any does, the writer's page cache
/// is the bulk one (see [`Conn::bulk_load`]).
static BULK_LOADS: AtomicU64 = AtomicU64::new(0);

/// An import starts (`true`) or ends applying; runs on the writer thread,
/// so the count and the cache change together.
fn bulk_load(ctx: &mut TxCtx<'_>, on: bool) -> Result<()> {
    if on {
        if BULK_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
            ctx.bulk_load(true)?;
        }
    } else if BULK_LOADS.fetch_sub(1, Ordering::SeqCst) == 1 {
        ctx.bulk_load(false)?;
    }
    Ok(())
}

/// Products, stores and stock: one transaction (a catalog is small, and
/// names nobody).
fn run_catalog(
    writer: &WriterHandle,
    spec: ImportSpec,
    parsed: Parsed,
    sha: String,
    id: Option<i64>,
    on_progress: impl FnOnce(Arc<AtomicU64>, u64),
) -> Result<Finished> {
    let total = parsed.records() as u64;
    let counter = Arc::new(AtomicU64::new(0));
    let c2 = counter.clone();
    let registered = id.map(|id| running().start(id, total));
    let c3 = registered.clone();
    on_progress(registered.clone().unwrap_or(counter.clone()), total);
    let result = writer.transact_blocking(move |ctx| {
        let id = match id {
            Some(id) => id,
            None => create(ctx.conn, ctx.vault, &spec, &sha, ctx.now_ms)?,
        };
        let counter = c3.as_deref().unwrap_or(&c2);
        let mut report = parsed.report.clone();
        catalog::apply(ctx, &parsed, &mut report, counter)?;
        finish(ctx.conn, ctx.vault, id, Status::Done, &report, ctx.now_ms)?;
        Ok((id, report))
    });
    if let Some(id) = id {
        running().end(id);
    }
    match result {
        Ok((id, report)) => Ok(Finished {
            id: Some(id),
            status: Status::Done,
            report,
        }),
        Err(e) => {
            if let Some(id) = id {
                let why = match &e {
                    Error::Rejected { message, .. } => message.clone(),
                    _ => "the import could not be written; nothing was imported".to_owned(),
                };
                let _ = writer
                    .transact_blocking(move |ctx| fail(ctx.conn, ctx.vault, id, &why, ctx.now_ms));
            }
            Err(e)
        }
    }
}

/// How far an import of people has got. Kept sealed in its row (the
/// report may quote a value) while it runs and after it stopped, in the
/// same transaction as the chunk it counts: the records before `done` are
/// in the store, none after. Importing the same file again (same kind,
/// same bytes, same choice of skipping invalid rows) resumes there, so an
/// interrupted import ends exactly as an uninterrupted one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// Records applied, in the order parsing gives them (the file's).
    done: u64,
    total: u64,
    report: ImportReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

fn save_checkpoint(conn: &mut dyn Conn, vault: &Vault, id: i64, cp: &Checkpoint) -> Result<()> {
    let sealed = vault.seal_system(
        Place::ImportDetails,
        &serde_json::to_vec(cp).expect("serialises"),
    )?;
    conn.exec(
        "UPDATE imports SET status = 'running', report = $2, rows_total = $3 WHERE id = $1",
        &[P::Int(id), P::from(&sealed), P::Int(cp.report.rows as i64)],
    )?;
    Ok(())
}

/// An import stopped between chunks: failed, with where it stopped.
fn record_failure(
    conn: &mut dyn Conn,
    vault: &Vault,
    id: i64,
    cp: &Checkpoint,
    now_ms: i64,
) -> Result<()> {
    let sealed = vault.seal_system(
        Place::ImportDetails,
        &serde_json::to_vec(cp).expect("serialises"),
    )?;
    conn.exec(
        "UPDATE imports SET status = 'failed', report = $2, finished_ms = $3 WHERE id = $1",
        &[P::Int(id), P::from(&sealed), P::Int(now_ms)],
    )?;
    Ok(())
}

fn checkpoint_of(conn: &mut dyn Conn, vault: &Vault, id: i64) -> Result<Option<Checkpoint>> {
    let Some(r) = conn.query_opt("SELECT report FROM imports WHERE id = $1", &[P::Int(id)])? else {
        return Ok(None);
    };
    let Some(sealed) = r.opt_sealed(0)? else {
        return Ok(None);
    };
    let plain = vault.open_system(Place::ImportDetails, &sealed)?;
    Ok(serde_json::from_slice::<Checkpoint>(&plain).ok())
}

/// An import the HTTP route accepted: its file parsed and checked, the
/// import recorded (or the interrupted one of the same file found).
pub struct Accepted {
    pub id: i64,
    spec: ImportSpec,
    parsed: Parsed,
    sha: String,
}

/// Parse and check a file, then record its import in a writer transaction
/// (the same file again after an interruption resumes that import). A file
/// or mapping that cannot work is refused before anything is recorded; row
/// errors are the import's outcome.
pub fn accept(
    svc: &Services,
    spec: ImportSpec,
    bytes: &[u8],
    identity: &IdentityConfig,
) -> Result<Accepted> {
    let parsed = parse(&spec, bytes, identity, svc.store.vault(), crate::now_ms())?;
    let sha = file_sha256(bytes);
    let (sp, sh, records) = (spec.clone(), sha.clone(), parsed.records() as u64);
    let id =
        svc.write(move |ctx| create_or_resume(ctx.conn, ctx.vault, &sp, &sh, records, ctx.now_ms))?;
    Ok(Accepted {
        id,
        spec,
        parsed,
        sha,
    })
}

/// Apply an accepted import to the end (see [`run_parsed`]); it blocks
/// until then, so the caller runs it on a thread of its own.
pub fn run_accepted(svc: &Services, a: Accepted) -> Result<Finished> {
    run_parsed(
        &svc.store,
        &svc.writer,
        a.spec,
        a.parsed,
        a.sha,
        Some(a.id),
        |_, _| {},
    )
}

/// An import's progress and outcome (a read on the pool).
pub fn view(svc: &Services, id: i64) -> Result<Option<ImportView>> {
    svc.read(|conn, vault| get(conn, vault, id))
}

/// Record an import of people, or find the interrupted import of the same
/// file to resume (one that stopped or whose process died, not one running
/// in this process).
pub fn create_or_resume(
    conn: &mut dyn Conn,
    vault: &Vault,
    spec: &ImportSpec,
    file_sha256: &str,
    records: u64,
    now_ms: i64,
) -> Result<i64> {
    if spec.dry_run || !spec.kind.personal() {
        return create(conn, vault, spec, file_sha256, now_ms);
    }
    let rows = conn.query(
        "SELECT id, details FROM imports WHERE kind = $1 AND status IN ('running', 'failed') AND report IS NOT NULL ORDER BY id DESC",
        &[P::Text(spec.kind.as_str())],
    )?;
    for r in rows {
        let id = r.int(0)?;
        if running().get(id).is_some() {
            continue;
        }
        let details: Details =
            serde_json::from_slice(&vault.open_system(Place::ImportDetails, &r.sealed(1)?)?)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
        // The records already in carry this import's provenance: only the
        // same file with the same provenance goes on under it.
        if details.file_sha256 != file_sha256
            || details.skip_invalid != spec.skip_invalid
            || details.format != spec.format
            || details.source != spec.source.trim()
            || details.documentation != spec.documentation.trim()
        {
            continue;
        }
        if checkpoint_of(conn, vault, id)?.is_some_and(|cp| cp.total == records) {
            return Ok(id);
        }
    }
    create(conn, vault, spec, file_sha256, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::MasterKey;

    fn vault() -> Vault {
        Vault::new(&MasterKey::generate().unwrap(), 10)
    }

    impl Item {
        /// The map of values an order's line was once built as.
        fn value(self) -> Value {
            let mut item = Map::new();
            item.insert("product_id".into(), Value::String(self.product));
            item.insert("quantity".into(), json_number(self.quantity));
            if let Some(p) = self.price {
                item.insert("price".into(), json_number(p));
            }
            Value::Object(item)
        }
    }

    /// The properties and the content hash's bytes, written out directly,
    /// are what the map of values printed before (a re-import after an
    /// upgrade must find its orders unchanged): numbers whole and not,
    /// lines with and without a price, text that JSON escapes.
    #[test]
    fn order_text_is_what_the_map_of_values_printed() {
        let v = vault();
        let person = Person {
            identifiers: vec![
                PreparedIdentifier {
                    kind: IdentifierKind::Email,
                    bidx: v.blind_index("email", "a@example.fi"),
                    value: "a@example.fi".into(),
                },
                PreparedIdentifier {
                    kind: IdentifierKind::Phone,
                    bidx: v.blind_index("phone", "+358401234567"),
                    value: "+358401234567".into(),
                },
            ],
        };
        let items = || {
            vec![
                Item {
                    product: "P-1 \"ä\"\\\n".into(),
                    quantity: 2.0,
                    price: Some(12.5),
                },
                Item {
                    product: "P2".into(),
                    quantity: 0.333_333_7,
                    price: None,
                },
                Item {
                    product: "P3".into(),
                    quantity: 1.0,
                    price: Some(1e16),
                },
            ]
        };
        // (store, currency, total, items)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<f64>, Vec<Item>);
        let cases: [Case<'_>; 4] = [
            (Some("S1"), Some("EUR"), Some(37.5), items()),
            (None, None, None, items()),
            (Some("\u{1F600}"), None, Some(-0.000_000_4), Vec::new()),
            (
                None,
                Some("SEK"),
                Some(100.0),
                items().into_iter().take(1).collect(),
            ),
        ];
        for (store, currency, total, items) in cases {
            let order_id = "R-7 \"x\"";
            let mut props = Map::new();
            props.insert("order_id".into(), Value::String(order_id.into()));
            if let Some(s) = store {
                props.insert("store_id".into(), Value::String(s.into()));
            }
            if let Some(c) = currency {
                props.insert("currency".into(), Value::String(c.into()));
            }
            if let Some(t) = total {
                props.insert("total".into(), json_number(t));
                props.insert("revenue".into(), json_number(t));
            }
            let written = order_properties(order_id, store, currency, total, &items);
            props.insert(
                "products".into(),
                Value::Array(items.into_iter().map(Item::value).collect()),
            );
            props.insert("channel".into(), Value::String("offline".into()));
            let props = Value::Object(props);
            assert_eq!(written, props.to_string());
            let ids: Vec<Value> = person
                .identifiers
                .iter()
                .map(|i| json!([i.kind.as_str(), hex::encode(i.bidx.0)]))
                .collect();
            let time = "2026-10-01T10:00:00+03:00";
            assert_eq!(
                String::from_utf8(order_content(&person, time, &written)).unwrap(),
                json!({"ids": ids, "time": time, "properties": &props}).to_string()
            );
        }
    }

    /// A file parsed with the default identity settings, now.
    fn parsed(kind: ImportKind, format: Format, bytes: &[u8], v: &Vault) -> Parsed {
        parse(
            &spec(kind, format),
            bytes,
            &IdentityConfig::default(),
            v,
            crate::now_ms(),
        )
        .unwrap()
    }

    /// Events built ahead of the writer are only a help: whether a record
    /// is written is for the chunk's own reading of the import rows to
    /// say. Unbuilt records that must be written are built on the writer;
    /// built records that are unchanged are not written again. And a
    /// re-import (most of a chunk unchanged) builds nothing ahead.
    #[test]
    fn events_built_ahead_are_a_help_the_writer_checks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::Backend::open(dir.path(), None).unwrap();
        let master = MasterKey::generate().unwrap();
        let store = Store::open(backend, &master, 1000).unwrap();
        let (writer, _join) = store
            .start_writer(crate::writer::WriterConfig::default())
            .unwrap();
        let csv = b"email,first_name\na@example.fi,Ada\nb@example.fi,Ben\nc@example.fi,Cy\n";
        let parsed = Arc::new(parsed(
            ImportKind::Customers,
            Format::Csv,
            csv,
            store.vault(),
        ));
        let spec = Arc::new(spec(ImportKind::Customers, Format::Csv));
        let origin = Origin {
            id: 1,
            spec: &spec,
            file_sha256: "sha",
        };
        let all = Ahead::build(&parsed, 0..3, &origin);
        assert_eq!(all.events.iter().filter(|e| e.is_some()).count(), 3);
        let events = |store: &Store| {
            let mut c = store.conn().unwrap();
            c.query_opt("SELECT count(*) FROM events", &[])
                .unwrap()
                .unwrap()
                .int(0)
                .unwrap()
        };
        let apply = |ahead: Ahead| {
            let (p, s) = (parsed.clone(), spec.clone());
            writer
                .transact_blocking(move |ctx| {
                    let id = create(ctx.conn, ctx.vault, &s, "sha", ctx.now_ms)?;
                    let mut report = ImportReport::default();
                    let origin = Origin {
                        id,
                        spec: &s,
                        file_sha256: "sha",
                    };
                    apply_chunk(ctx, &origin, &p, 0..3, &mut report, ahead)?;
                    Ok(report)
                })
                .unwrap()
        };
        // Nothing built: the writer builds what it writes.
        let first = apply(Ahead::none());
        assert_eq!((first.created, first.unchanged), (3, 0));
        assert_eq!(events(&store), 3);
        for (email, name) in [("a@example.fi", "Ada"), ("c@example.fi", "Cy")] {
            let b = store.vault().blind_index("email", email);
            let p = store.conn().unwrap().identifiers_lookup(&[b]).unwrap()[0]
                .expect("a profile for every row");
            let sight =
                crate::crypto::person::Sight::duty(crate::crypto::person::Duty::PersonsRequest);
            let view = store.profile_view(&sight, p).unwrap().unwrap();
            assert_eq!(view.traits["first_name"], name, "{email}");
        }
        // All three built, all three unchanged: nothing is written again.
        let again = apply(all);
        assert_eq!((again.created, again.unchanged), (0, 3));
        assert_eq!(events(&store), 3);
        // What follows such a chunk is not built ahead; what follows a
        // chunk of mostly new or changed records is.
        assert!(!worth_building(again.created + again.updated, 3));
        assert!(worth_building(first.created + first.updated, 3));
        assert!(worth_building(5_000, 10_000) && !worth_building(4_999, 10_000));
    }

    fn spec(kind: ImportKind, format: Format) -> ImportSpec {
        ImportSpec {
            kind,
            format,
            mapping: Mapping::default(),
            source: "s".into(),
            documentation: "d".into(),
            file_name: "f".into(),
            skip_invalid: false,
            dry_run: false,
        }
    }

    #[test]
    fn json_lines_orders_carry_their_items_and_a_computed_total() {
        let v = vault();
        let text = concat!(
            r#"{"order_id": "J1", "ordered_at": "2026-10-01", "email": "a@example.fi", "store_id": "S1", "items": [{"product_id": "P1", "quantity": 2, "price": 4.5}, {"product_id": "P2", "price": "1,25"}]}"#,
            "\n\n",
            r#"{"order_id": "J2", "ordered_at": "2026-10-02", "items": [{"product_id": "P1"}]}"#,
            "\n",
        );
        let p = parsed(ImportKind::Orders, Format::Jsonl, text.as_bytes(), &v);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!((p.orders.len(), p.report.anonymous), (1, 1));
        let props: Value = serde_json::from_str(&p.orders[0].properties).unwrap();
        assert_eq!(props["revenue"], json!(10.25));
        assert_eq!(props["products"].as_array().unwrap().len(), 2);
        assert_eq!(props["products"][1]["quantity"], json!(1));
        assert_eq!(p.orders[0].line, 1);
    }

    #[test]
    fn lines_of_one_order_must_agree_and_errors_name_both_lines() {
        let v = vault();
        let csv = "order_id,ordered_at,email,product_id\nX,2026-10-01,a@example.fi,P1\nY,2026-10-01,b@example.fi,P1\nX,2026-10-01,b@example.fi,P2\nZ,2099-01-01,a@example.fi,P1\n";
        let p = parsed(ImportKind::Orders, Format::Csv, csv.as_bytes(), &v);
        let msgs: Vec<(u64, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[0].0, 4);
        assert!(msgs[0].1.contains("another customer on line 2"), "{msgs:?}");
        assert_eq!(msgs[1].0, 5);
        assert!(msgs[1].1.contains("in the future"), "{msgs:?}");
        // Order X is refused whole; Y stands.
        assert_eq!(p.orders.len(), 1);
        assert_eq!(p.report.invalid, 2);
    }

    /// Files long enough to be checked on several cores give what one core
    /// gives: an order whose lines lie in different parts is one order with
    /// its customer, and a customer repeated across parts is an error.
    #[test]
    fn rows_checked_on_every_core_group_and_repeat_as_in_file_order() {
        let v = vault();
        let n = 4 * PAR_MIN;
        let mut csv = String::from("order_id,ordered_at,email,product_id\n");
        csv.push_str("X,2026-10-01,x@example.fi,P0\n");
        for i in 0..n {
            csv.push_str(&format!("O{i},2026-10-02,c{i}@example.fi,P1\n"));
        }
        // The last line of X, without its customer, far from its first.
        csv.push_str("X,2026-10-01,,P9\n");
        let p = parsed(ImportKind::Orders, Format::Csv, csv.as_bytes(), &v);
        assert!(p.errors.is_empty(), "{:?}", p.errors.first());
        assert_eq!(p.orders.len(), n + 1);
        let x = &p.orders[0];
        assert_eq!(x.line, 2);
        let props: Value = serde_json::from_str(&x.properties).unwrap();
        assert_eq!(props["products"].as_array().unwrap().len(), 2);
        assert_eq!(x.person.identifiers[0].value, "x@example.fi");

        let mut csv = String::from("email,city\n");
        for i in 0..n {
            csv.push_str(&format!("c{i}@example.fi,Oulu\n"));
        }
        csv.push_str("c0@example.fi,Turku\n");
        let p = parsed(ImportKind::Customers, Format::Csv, csv.as_bytes(), &v);
        assert_eq!(p.customers.len(), n);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, n as u64 + 2);
        assert!(p.errors[0].message.contains("as line 2"), "{:?}", p.errors);
    }

    #[test]
    fn chunks_grow_while_the_writer_is_the_imports_alone() {
        let mut c = CHUNK;
        let mut seen = Vec::new();
        for _ in 0..5 {
            c = next_chunk(c, true);
            seen.push(c);
        }
        assert_eq!(seen, [20_000, 40_000, 80_000, MAX_CHUNK, MAX_CHUNK]);
        assert_eq!(next_chunk(MAX_CHUNK, false), CHUNK);
    }

    /// A file is read a block at a time: rows that are not CSV or JSON
    /// are errors at their own lines in any block, every row is counted
    /// once, and JSON Lines' columns are every line's keys.
    #[test]
    fn files_read_in_blocks_report_bad_rows_at_their_lines() {
        let v = vault();
        let n = 3 * BLOCK;
        let mut csv = String::from("email,city\n");
        for i in 0..n {
            if i == BLOCK + 7 {
                csv.push_str("broken@example.fi,Oulu,extra\n");
            }
            csv.push_str(&format!("c{i}@example.fi,Oulu\n"));
        }
        let p = parsed(ImportKind::Customers, Format::Csv, csv.as_bytes(), &v);
        assert_eq!((p.customers.len(), p.report.rows), (n, n as u64 + 1));
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors.first());
        assert_eq!(p.errors[0].line, BLOCK as u64 + 9);
        assert!(p.errors[0].message.contains("3 fields"), "{:?}", p.errors);
        assert_eq!(p.customers[BLOCK + 7].line, BLOCK as u64 + 10);

        let mut jl = String::new();
        for i in 0..n {
            match i {
                10 => jl.push_str("[1, 2]\n"),
                x if x == 2 * BLOCK => jl.push_str("{\"email\": \"half\n"),
                x if x == 2 * BLOCK + 1 => jl.push('\n'),
                _ => {}
            }
            // A column only the last line has is still read.
            let extra = if i == n - 1 {
                r#", "tier": "gold""#
            } else {
                ""
            };
            jl.push_str(&format!(
                "{{\"email\": \"j{i}@example.fi\", \"city\": null{extra}}}\n"
            ));
        }
        let p = parsed(ImportKind::Customers, Format::Jsonl, jl.as_bytes(), &v);
        assert_eq!((p.customers.len(), p.report.rows), (n, n as u64 + 2));
        let lines: Vec<(u64, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], (11, "a line is one JSON object"));
        assert_eq!(lines[1].0, 2 * BLOCK as u64 + 2);
        assert!(lines[1].1.starts_with("not valid JSON"), "{lines:?}");
        let last = p.customers.last().unwrap();
        assert_eq!(last.traits.get("tier"), Some(&json!("gold")));
        assert!(
            !p.customers[0].traits.contains_key("city"),
            "a null is no value"
        );
    }

    /// Rows are read in place as the map of values read them: empty CSV
    /// fields and JSON nulls are no field, and of two columns of the same
    /// name the last that is not empty counts.
    #[test]
    fn fields_read_in_place_say_what_the_map_said() {
        fn same(a: Option<Cell<'_>>, b: Option<Cell<'_>>) -> bool {
            let text = |c: Option<Cell<'_>>| {
                c.map(|c| match c {
                    Cell::Str(s) => Value::String(s.to_owned()),
                    Cell::Val(v) => v.clone(),
                })
            };
            text(a) == text(b)
        }
        let csv = "a,b,a,c,d\nx,,y,1,\n,2,,,z\n p , q ,,3.5,\n";
        let mut errors = Vec::new();
        let mut rows = Rows::open(Format::Csv, csv.as_bytes(), &mut errors).unwrap();
        let headers = rows.headers.clone();
        let block = rows.block(10, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(block.len(), 3);
        let mut seen = 0;
        for (_, row) in &block {
            let f = row.fields(&headers);
            let (text_f, ends) = match row {
                Row::Csv { text, ends } => (text.to_string(), ends.clone()),
                Row::Json(_) => unreachable!("a CSV file"),
            };
            let m = Row::Csv {
                text: text_f.into_boxed_str(),
                ends,
            }
            .into_map(&headers);
            for col in ["a", "b", "c", "d", "missing"] {
                assert!(same(f.cell(col), m.cell(col)), "{col} of {m:?}");
                seen += usize::from(f.cell(col).is_some());
            }
        }
        // Row 1: a (y, over x), c. Row 2: b, d. Row 3: a, b, c.
        assert_eq!(seen, 7);
        let first = block[0].1.fields(&headers);
        assert!(matches!(first.cell("a"), Some(Cell::Str("y"))));
        assert_eq!(text(&first, "b"), None);
        assert_eq!(number(&block[2].1.fields(&headers), "c"), Ok(Some(3.5)));
        assert_eq!(
            text(&block[2].1.fields(&headers), "a").as_deref(),
            Some("p")
        );

        let jl = r#"{"a": "x", "b": null, "c": 2, "d": [1]}"#;
        let mut rows = Rows::open(Format::Jsonl, jl.as_bytes(), &mut errors).unwrap();
        let headers = rows.headers.clone();
        let block = rows.block(10, &mut errors);
        let f = block[0].1.fields(&headers);
        assert!(f.cell("b").is_none(), "a null is no field");
        assert_eq!(number(&f, "c"), Ok(Some(2.0)));
        assert_eq!(text(&f, "c").as_deref(), Some("2"));
        assert!(number(&f, "d").is_err());
    }

    #[test]
    fn a_mapping_that_cannot_work_refuses_the_file() {
        let v = vault();
        let mut s = spec(ImportKind::Customers, Format::Csv);
        s.mapping = Mapping::parse("[identifiers]\nshoe_size = \"x\"").unwrap();
        let e = parse(&s, b"x\n1\n", &IdentityConfig::default(), &v, 0)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Rejected {
                    code: Code::InvalidMapping,
                    ..
                }
            ),
            "{e}"
        );
        let s = spec(ImportKind::Customers, Format::Csv);
        let e = parse(&s, b"name,city\nA,B\n", &IdentityConfig::default(), &v, 0)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Rejected {
                    code: Code::InvalidMapping,
                    ..
                }
            ),
            "{e}"
        );
        let mut s = spec(ImportKind::Customers, Format::Csv);
        s.source = " ".into();
        let e = parse(&s, b"email\n", &IdentityConfig::default(), &v, 0)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Rejected {
                    code: Code::InvalidImportSource,
                    ..
                }
            ),
            "{e}"
        );
    }
}
