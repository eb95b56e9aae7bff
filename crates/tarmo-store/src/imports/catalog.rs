//! The shop's side of the register: products (names per language, category,
//! price), stores (name, city, coordinates) and stock (store × product →
//! quantity), imported like customers and orders but holding no personal
//! data, so they are kept in plaintext and upserted (a re-import of the same
//! file changes nothing).
//!
//! And the questions automations and segments ask of them: which store is a
//! person's ([`store_of`]: the trait `preferred_store`, else the store of
//! their latest till purchase, else a store in their `city`), and what can
//! be offered to them ([`offer`]: the product in stock at that store, with
//! the store's and the product's names).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use tarmo_core::codes::Code;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{ImportKind, ImportReport, ImportSpec, Parsed, Record, RowError, number, text};
use crate::conn::{Conn, P, ProfileId};
use crate::crypto::person;
use crate::vault::{Place, Vault};
use crate::writer::TxCtx;
use crate::{Error, Result};

/// Bumped whenever stores or stock change, so the segment engine knows to
/// read them again.
pub const STOCK_VERSION: &str = "stock_version";

pub(crate) enum CatalogRec {
    Product {
        id: String,
        names: Map<String, Value>,
        category: Option<String>,
        price: Option<String>,
    },
    Store {
        id: String,
        name: String,
        city: Option<String>,
        lat: Option<String>,
        lon: Option<String>,
    },
    Stock {
        store: String,
        product: String,
        quantity: i64,
    },
}

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128
}

pub(crate) fn parse(
    spec: &ImportSpec,
    headers: &[String],
    records: Vec<Record>,
    parsed: &mut Parsed,
    errors: &mut Vec<RowError>,
    used: &mut HashSet<String>,
) -> Result<()> {
    let m = &spec.mapping;
    let need = |field: &str| -> Result<String> {
        let c = m.column(field).to_owned();
        if !headers.contains(&c) {
            return Err(Error::rejected(
                Code::InvalidMapping,
                format!("the file has no `{c}` column ({field})"),
            ));
        }
        Ok(c)
    };
    let mut seen: HashMap<String, u64> = HashMap::new();
    match spec.kind {
        ImportKind::Products => {
            let id_col = need("product_id")?;
            // Names: `name` (the default) and `name_<language>` columns, or
            // as the mapping says.
            let mut name_cols: Vec<(String, String)> = Vec::new();
            for (field, col) in &m.columns {
                if field == "name" {
                    name_cols.push(("default".into(), col.clone()));
                } else if let Some(lang) = field.strip_prefix("name_") {
                    name_cols.push((lang.to_owned(), col.clone()));
                }
            }
            if name_cols.is_empty() {
                for h in headers {
                    if h == "name" {
                        name_cols.push(("default".into(), h.clone()));
                    } else if let Some(lang) = h.strip_prefix("name_") {
                        name_cols.push((lang.to_owned(), h.clone()));
                    }
                }
            }
            if name_cols.is_empty() {
                return Err(Error::rejected(
                    Code::InvalidMapping,
                    "a products file needs a `name` or `name_<language>` column (name_fi, name_en, ...)",
                ));
            }
            let (cat_col, price_col) = (
                m.column("category").to_owned(),
                m.column("price").to_owned(),
            );
            used.insert(id_col.clone());
            used.extend(name_cols.iter().map(|(_, c)| c.clone()));
            used.insert(cat_col.clone());
            used.insert(price_col.clone());
            for (line, r) in records {
                let mut errs = Vec::new();
                let id = text(&r, &id_col).unwrap_or_default();
                if !id_ok(&id) {
                    errs.push(format!("`{id_col}`: a product id of 1-128 bytes"));
                }
                let mut names = Map::new();
                for (lang, col) in &name_cols {
                    if let Some(n) = text(&r, col) {
                        names.insert(lang.clone(), Value::String(n));
                    }
                }
                if names.is_empty() {
                    errs.push("the product has no name".into());
                }
                let price = match number(&r, &price_col) {
                    Ok(p) => p.map(|x| super::json_number(x).to_string()),
                    Err(e) => {
                        errs.push(e);
                        None
                    }
                };
                dedupe(&mut seen, &id, line, &mut errs);
                if errs.is_empty() {
                    parsed.catalog.push(CatalogRec::Product {
                        id,
                        names,
                        category: text(&r, &cat_col),
                        price,
                    });
                } else {
                    errors.extend(errs.into_iter().map(|message| RowError { line, message }));
                }
            }
        }
        ImportKind::Stores => {
            let id_col = need("store_id")?;
            let name_col = need("name")?;
            let (city_col, lat_col, lon_col) = (
                m.column("city").to_owned(),
                m.column("latitude").to_owned(),
                m.column("longitude").to_owned(),
            );
            used.extend([
                id_col.clone(),
                name_col.clone(),
                city_col.clone(),
                lat_col.clone(),
                lon_col.clone(),
            ]);
            for (line, r) in records {
                let mut errs = Vec::new();
                let id = text(&r, &id_col).unwrap_or_default();
                if !id_ok(&id) {
                    errs.push(format!("`{id_col}`: a store id of 1-128 bytes"));
                }
                let name = text(&r, &name_col).unwrap_or_default();
                if name.is_empty() {
                    errs.push(format!("`{name_col}`: the store's name is required"));
                }
                let mut coord = |col: &str, max: f64| match number(&r, col) {
                    Ok(Some(x)) if x.abs() <= max => Some(x.to_string()),
                    Ok(Some(_)) => {
                        errs.push(format!("`{col}`: out of range"));
                        None
                    }
                    Ok(None) => None,
                    Err(e) => {
                        errs.push(e);
                        None
                    }
                };
                let lat = coord(&lat_col, 90.0);
                let lon = coord(&lon_col, 180.0);
                dedupe(&mut seen, &id, line, &mut errs);
                if errs.is_empty() {
                    parsed.catalog.push(CatalogRec::Store {
                        id,
                        name,
                        city: text(&r, &city_col),
                        lat,
                        lon,
                    });
                } else {
                    errors.extend(errs.into_iter().map(|message| RowError { line, message }));
                }
            }
        }
        ImportKind::Stock => {
            let store_col = need("store_id")?;
            let product_col = need("product_id")?;
            let qty_col = need("quantity")?;
            used.extend([store_col.clone(), product_col.clone(), qty_col.clone()]);
            for (line, r) in records {
                let mut errs = Vec::new();
                let store = text(&r, &store_col).unwrap_or_default();
                let product = text(&r, &product_col).unwrap_or_default();
                if !id_ok(&store) || !id_ok(&product) {
                    errs.push("a store id and a product id are required".into());
                }
                let quantity = match number(&r, &qty_col) {
                    Ok(Some(q)) if q >= 0.0 && q.fract() == 0.0 && q < 1e12 => q as i64,
                    Ok(_) => {
                        errs.push(format!("`{qty_col}`: a whole number ≥ 0"));
                        0
                    }
                    Err(e) => {
                        errs.push(e);
                        0
                    }
                };
                dedupe(&mut seen, &format!("{store}\0{product}"), line, &mut errs);
                if errs.is_empty() {
                    parsed.catalog.push(CatalogRec::Stock {
                        store,
                        product,
                        quantity,
                    });
                } else {
                    errors.extend(errs.into_iter().map(|message| RowError { line, message }));
                }
            }
        }
        ImportKind::Customers | ImportKind::Orders => unreachable!("people are parsed apart"),
    }
    Ok(())
}

fn dedupe(seen: &mut HashMap<String, u64>, key: &str, line: u64, errs: &mut Vec<String>) {
    if !errs.is_empty() {
        return;
    }
    if let Some(first) = seen.insert(key.to_owned(), line) {
        errs.push(format!("the same id as line {first}"));
    }
}

pub(crate) fn apply(
    ctx: &mut TxCtx<'_>,
    parsed: &Parsed,
    report: &mut ImportReport,
    progress: &AtomicU64,
) -> Result<()> {
    let now = ctx.now_ms;
    let mut stock_changed = false;
    for rec in &parsed.catalog {
        progress.fetch_add(1, Ordering::Relaxed);
        // `changed`: 0 unchanged, 1 new, 2 updated.
        let changed = match rec {
            CatalogRec::Product {
                id,
                names,
                category,
                price,
            } => {
                let names = Value::Object(names.clone()).to_string();
                upsert(
                    ctx.conn,
                    "SELECT names, category, price FROM products WHERE id = $1",
                    &[P::Text(id)],
                    &[Some(names.as_str()), category.as_deref(), price.as_deref()],
                    "INSERT INTO products (id, names, category, price, updated_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET names = EXCLUDED.names, category = EXCLUDED.category,
                         price = EXCLUDED.price, updated_ms = EXCLUDED.updated_ms",
                    &[
                        P::Text(id),
                        P::Text(&names),
                        category.as_deref().into(),
                        price.as_deref().into(),
                        P::Int(now),
                    ],
                )?
            }
            CatalogRec::Store {
                id,
                name,
                city,
                lat,
                lon,
            } => upsert(
                ctx.conn,
                "SELECT name, city, lat, lon FROM stores WHERE id = $1",
                &[P::Text(id)],
                &[Some(name.as_str()), city.as_deref(), lat.as_deref(), lon.as_deref()],
                "INSERT INTO stores (id, name, city, lat, lon, updated_ms) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, city = EXCLUDED.city,
                     lat = EXCLUDED.lat, lon = EXCLUDED.lon, updated_ms = EXCLUDED.updated_ms",
                &[
                    P::Text(id),
                    P::Text(name),
                    city.as_deref().into(),
                    lat.as_deref().into(),
                    lon.as_deref().into(),
                    P::Int(now),
                ],
            )?,
            CatalogRec::Stock {
                store,
                product,
                quantity,
            } => {
                let q = quantity.to_string();
                let old = ctx
                    .conn
                    .query_opt(
                        "SELECT quantity FROM stock WHERE store_id = $1 AND product_id = $2",
                        &[P::Text(store), P::Text(product)],
                    )?
                    .map(|r| r.int(0))
                    .transpose()?;
                match old {
                    Some(o) if o.to_string() == q => 0,
                    o => {
                        ctx.conn.exec(
                            "INSERT INTO stock (store_id, product_id, quantity, updated_ms) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (store_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity,
                                 updated_ms = EXCLUDED.updated_ms",
                            &[P::Text(store), P::Text(product), P::Int(*quantity), P::Int(now)],
                        )?;
                        if o.is_some() { 2 } else { 1 }
                    }
                }
            }
        };
        match changed {
            0 => report.unchanged += 1,
            1 => report.created += 1,
            _ => report.updated += 1,
        }
        if changed != 0 && !matches!(rec, CatalogRec::Product { .. }) {
            stock_changed = true;
        }
    }
    if stock_changed {
        ctx.conn.meta_set(STOCK_VERSION, &now.to_le_bytes())?;
    }
    Ok(())
}

/// Insert or update one row unless it holds these values already.
fn upsert(
    conn: &mut dyn Conn,
    select: &str,
    key: &[P<'_>],
    values: &[Option<&str>],
    write: &str,
    params: &[P<'_>],
) -> Result<u8> {
    let old = conn.query_opt(select, key)?;
    if let Some(r) = &old {
        let mut same = true;
        for (i, v) in values.iter().enumerate() {
            same &= r.opt_text(i)?.as_deref() == *v;
        }
        if same {
            return Ok(0);
        }
    }
    conn.exec(write, params)?;
    Ok(if old.is_some() { 2 } else { 1 })
}

// ------------------------------------------------------------ questions

/// How a person's store was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StoreBasis {
    /// The trait `preferred_store`.
    Preferred,
    /// The store of their latest till purchase.
    LatestPurchase,
    /// A store in their `city`.
    City,
}

/// What decides a person's store, as kept in memory by the segment engine
/// or read from the store by [`store_of`].
#[derive(Debug, Clone, Default)]
pub struct StoreHints<'a> {
    pub preferred_store: Option<&'a str>,
    /// The `store_id` of their latest order that has one.
    pub latest_purchase_store: Option<&'a str>,
    pub city: Option<&'a str>,
}

/// The stores and the stock, in memory (the segment engine keeps one).
#[derive(Debug, Clone, Default)]
pub struct StockSnapshot {
    stores: HashSet<String>,
    by_city: HashMap<String, Vec<String>>,
    stock: HashMap<(String, String), i64>,
}

fn city_key(c: &str) -> String {
    c.trim().to_lowercase()
}

impl StockSnapshot {
    pub fn load(conn: &mut dyn Conn) -> Result<Self> {
        let mut s = Self::default();
        for r in conn.query("SELECT id, city FROM stores ORDER BY id", &[])? {
            let id = r.text(0)?;
            if let Some(c) = r.opt_text(1)? {
                s.by_city.entry(city_key(&c)).or_default().push(id.clone());
            }
            s.stores.insert(id);
        }
        for r in conn.query(
            "SELECT store_id, product_id, quantity FROM stock WHERE quantity > 0",
            &[],
        )? {
            s.stock.insert((r.text(0)?, r.text(1)?), r.int(2)?);
        }
        Ok(s)
    }

    /// The stores that count as the person's: one (preferred, or latest
    /// purchase), or those in their city.
    pub fn stores_for(&self, h: &StoreHints<'_>) -> (Vec<&str>, Option<StoreBasis>) {
        if let Some(s) = h.preferred_store.and_then(|s| self.stores.get(s)) {
            return (vec![s.as_str()], Some(StoreBasis::Preferred));
        }
        if let Some(s) = h.latest_purchase_store.and_then(|s| self.stores.get(s)) {
            return (vec![s.as_str()], Some(StoreBasis::LatestPurchase));
        }
        if let Some(list) = h.city.and_then(|c| self.by_city.get(&city_key(c))) {
            return (
                list.iter().map(String::as_str).collect(),
                Some(StoreBasis::City),
            );
        }
        (Vec::new(), None)
    }

    pub fn quantity(&self, store: &str, product: &str) -> i64 {
        self.stock
            .get(&(store.to_owned(), product.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Whether `product` is in stock at the person's store.
    pub fn in_stock(&self, h: &StoreHints<'_>, product: &str) -> bool {
        self.stores_for(h)
            .0
            .iter()
            .any(|s| self.quantity(s, product) > 0)
    }
}

/// [`StoreHints`] as read from the store.
struct OwnedHints {
    preferred: Option<String>,
    latest: Option<String>,
    city: Option<String>,
}

impl OwnedHints {
    fn hints(&self) -> StoreHints<'_> {
        StoreHints {
            preferred_store: self.preferred.as_deref(),
            latest_purchase_store: self.latest.as_deref(),
            city: self.city.as_deref(),
        }
    }
}

/// What a person's store is read from: the traits and the latest order
/// with a store, opened with their key. (Only these facts are read.)
fn hints_of(conn: &mut dyn Conn, vault: &Vault, profile: ProfileId) -> Result<Option<OwnedHints>> {
    let Some(p) = conn.profile_get(profile)? else {
        return Ok(None);
    };
    let sight = person::Sight::duty(person::Duty::Import);
    let (mut preferred, mut city) = (None, None);
    if let Some(sealed) = &p.traits {
        let t = person::traits(conn, vault, &sight, p.id, sealed)?.to_object();
        let s = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        preferred = s(t.get("preferred_store"));
        city = s(t.get("city"));
    }
    let mut latest: Option<(i64, String)> = None;
    for r in conn.query(
        "SELECT key_owner, ts_ms, body FROM events WHERE profile_id = $1 AND kind = 'track' ORDER BY ts_ms DESC, id DESC",
        &[P::Int(p.id.0)],
    )? {
        let v: Value = person::open_json(
            conn,
            vault,
            &sight,
            ProfileId(r.int(0)?),
            Place::EventBody,
            &r.sealed(2)?,
        )?;
        if v.get("event").and_then(Value::as_str) != Some(super::ORDER_EVENT) {
            continue;
        }
        if let Some(s) = v
            .pointer("/properties/store_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            latest = Some((r.int(1)?, s.to_owned()));
            break;
        }
    }
    Ok(Some(OwnedHints {
        preferred,
        latest: latest.map(|l| l.1),
        city,
    }))
}

/// A person's store and how it was chosen; `None` when nothing points to
/// one (or the profile is gone).
pub fn store_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
) -> Result<Option<(String, StoreBasis)>> {
    let Some(owned) = hints_of(conn, vault, profile)? else {
        return Ok(None);
    };
    let snap = StockSnapshot::load(conn)?;
    let h = owned.hints();
    let (stores, basis) = snap.stores_for(&h);
    Ok(stores.first().zip(basis).map(|(s, b)| (s.to_string(), b)))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OfferStore {
    pub id: String,
    pub name: String,
    pub city: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OfferProduct {
    pub id: String,
    /// In the language asked for, else the default name, else English,
    /// else any.
    pub name: String,
    pub category: Option<String>,
    pub price: Option<String>,
}

/// What a message may say: this product is in stock at this store of yours.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Offer {
    pub store: OfferStore,
    pub product: OfferProduct,
    pub quantity: i64,
    /// How the store was chosen.
    pub basis: StoreBasis,
}

/// The offer for `profile` and `product_id`: the person's store (see
/// [`store_of`]; among several stores in their city, the one with the most
/// in stock) with the product in stock there, named in `language` (`fi`,
/// `en`, ...; else the default name, else English). `None` when the person has no store, the product is unknown
/// or it is not in stock there. For templates (`{{ offer.store.name }}`,
/// `{{ offer.product.name }}`): it reads only the person's
/// `preferred_store` and `city` traits and their orders' store ids.
pub fn offer(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    product_id: &str,
    language: Option<&str>,
) -> Result<Option<Offer>> {
    let Some(owned) = hints_of(conn, vault, profile)? else {
        return Ok(None);
    };
    let snap = StockSnapshot::load(conn)?;
    let h = owned.hints();
    let (stores, basis) = snap.stores_for(&h);
    let Some(basis) = basis else { return Ok(None) };
    let Some((store, quantity)) = stores
        .iter()
        .map(|s| (*s, snap.quantity(s, product_id)))
        .filter(|(_, q)| *q > 0)
        .max_by_key(|(s, q)| (*q, std::cmp::Reverse(*s)))
    else {
        return Ok(None);
    };
    let Some(p) = conn.query_opt(
        "SELECT names, category, price FROM products WHERE id = $1",
        &[P::Text(product_id)],
    )?
    else {
        return Ok(None);
    };
    let names: Map<String, Value> =
        serde_json::from_str(&p.text(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let name = language
        .and_then(|l| names.get(l))
        .or_else(|| names.get("default"))
        .or_else(|| names.get("en"))
        .or_else(|| names.values().next())
        .and_then(Value::as_str)
        .unwrap_or(product_id)
        .to_owned();
    let s = conn
        .query_opt(
            "SELECT name, city FROM stores WHERE id = $1",
            &[P::Text(store)],
        )?
        .ok_or_else(|| Error::Corrupt(format!("store `{store}` vanished")))?;
    Ok(Some(Offer {
        store: OfferStore {
            id: store.to_owned(),
            name: s.text(0)?,
            city: s.opt_text(1)?,
        },
        product: OfferProduct {
            id: product_id.to_owned(),
            name,
            category: p.opt_text(1)?,
            price: p.opt_text(2)?,
        },
        quantity,
        basis,
    }))
}
