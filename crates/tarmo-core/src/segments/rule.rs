//! The rule tree and its JSON wire form.
//!
//! ```text
//! {"all": [C, ...]}   {"any": [C, ...]}   {"not": C}
//! {"trait": "city", "op": "eq", "value": "Tampere"}    ops: eq ne in gt gte lt lte contains exists
//! {"identifier": "email"}
//! {"event": "Order Completed", "within": "365d", "count": {"gte": 3}}
//! {"event": "Order Completed", "within": "365d", "sum": {"property": "revenue", "gt": 500}}
//! {"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "shoes"}], "within": "2d"}
//! {"consent": "email_marketing", "channel": "email"}
//! {"lifecycle": "at_risk"}   {"rfm": {"r": {"gte": 4}, "m": {"gte": 3}}}
//! {"birthday_within": "7d"}  {"segment": "vip"}
//! {"in_stock": {"product": "viewed", "store": "preferred"}}
//! ```
//!
//! `in_stock`: the product of the person's latest `Product Viewed` event
//! (property `product_id`) is in stock at their store — the trait
//! `preferred_store`, else the store (`store_id`) of their latest order,
//! else a store in their `city`. Those are the only sources today.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::duration::Span;
use super::lifecycle::Stage;
use crate::access::{CONTACT_TRAITS, DataKind};

/// Deepest nesting a rule may have, and most conditions in one rule: a rule
/// is written by a person, and evaluation runs for every person.
const MAX_DEPTH: usize = 16;
const MAX_NODES: usize = 256;
const MAX_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Trait {
        name: String,
        op: TraitOp,
        value: Value,
    },
    Identifier(String),
    Event(EventRule),
    Consent {
        purpose: String,
        channel: Option<String>,
    },
    Lifecycle(Stage),
    Rfm {
        r: Option<Cmp>,
        f: Option<Cmp>,
        m: Option<Cmp>,
    },
    BirthdayWithin(Span),
    Segment(String),
    /// The viewed product is in stock at the person's store.
    InStock {
        product: ProductSource,
        store: StoreSource,
    },
}

/// The event whose product `in_stock` asks about.
pub const VIEWED_EVENT: &str = "Product Viewed";
/// The property naming the product, in views and order lines.
pub const PRODUCT_PROPERTY: &str = "product_id";
/// The property naming the store an order was made in.
pub const STORE_PROPERTY: &str = "store_id";
/// The traits that say where a person shops.
pub const STORE_TRAITS: [&str; 2] = ["preferred_store", "city"];

/// Which product `in_stock` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductSource {
    /// The product of the latest `Product Viewed` event.
    Viewed,
}

/// Which store `in_stock` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSource {
    /// The person's store: `preferred_store`, else the latest order's
    /// store, else a store in their city.
    Preferred,
}

impl ProductSource {
    pub fn as_str(self) -> &'static str {
        "viewed"
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s == "viewed").then_some(Self::Viewed)
    }
}

impl StoreSource {
    pub fn as_str(self) -> &'static str {
        "preferred"
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s == "preferred").then_some(Self::Preferred)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRule {
    pub name: String,
    pub within: Span,
    pub filters: Vec<PropFilter>,
    pub measure: Measure,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropFilter {
    pub property: String,
    pub op: TraitOp,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Count(Cmp),
    Sum { property: String, cmp: Cmp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraitOp {
    Eq,
    Ne,
    In,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    Exists,
}

impl TraitOp {
    pub const ALL: [Self; 9] = [
        Self::Eq,
        Self::Ne,
        Self::In,
        Self::Gt,
        Self::Gte,
        Self::Lt,
        Self::Lte,
        Self::Contains,
        Self::Exists,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::In => "in",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::Contains => "contains",
            Self::Exists => "exists",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub const ALL: [Self; 6] = [Self::Eq, Self::Ne, Self::Gt, Self::Gte, Self::Lt, Self::Lte];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::Lt => "lt",
            Self::Lte => "lte",
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Gte => ">=",
            Self::Lt => "<",
            Self::Lte => "<=",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A comparison with a number: `{"gte": 3}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cmp {
    pub op: CmpOp,
    pub value: f64,
}

impl Cmp {
    pub fn holds(self, x: f64) -> bool {
        match self.op {
            CmpOp::Eq => x == self.value,
            CmpOp::Ne => x != self.value,
            CmpOp::Gt => x > self.value,
            CmpOp::Gte => x >= self.value,
            CmpOp::Lt => x < self.value,
            CmpOp::Lte => x <= self.value,
        }
    }
}

/// A rule that does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RuleError {
    /// A JSON path (`$.all[1].within`) or, for the text form, `line L, column C`.
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// What a rule reads: the kinds of a person's data, the segments it builds
/// on, and the events and properties evaluation must keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub kinds: BTreeSet<DataKind>,
    pub segments: BTreeSet<String>,
    pub purposes: BTreeSet<String>,
    /// Event names, and the properties of them the rule looks at.
    pub events: BTreeSet<String>,
    pub properties: BTreeSet<String>,
    /// Trait names the rule reads (for the purpose check).
    pub traits: BTreeSet<String>,
    pub lifecycle: bool,
    /// The rule asks about stock (which changes without any person's event).
    pub stock: bool,
}

impl Rule {
    /// Parse the JSON wire form.
    pub fn from_json(v: &Value) -> Result<Self, RuleError> {
        let mut nodes = 0;
        parse(v, "$", 0, &mut nodes)
    }

    /// The canonical JSON wire form (what `from_json` reads back as the same rule).
    pub fn to_json(&self) -> Value {
        match self {
            Rule::All(c) => json!({"all": c.iter().map(Rule::to_json).collect::<Vec<_>>()}),
            Rule::Any(c) => json!({"any": c.iter().map(Rule::to_json).collect::<Vec<_>>()}),
            Rule::Not(c) => json!({"not": c.to_json()}),
            Rule::Trait { name, op, value } => {
                if *op == TraitOp::Exists {
                    json!({"trait": name, "op": "exists"})
                } else {
                    json!({"trait": name, "op": op.as_str(), "value": value})
                }
            }
            Rule::Identifier(k) => json!({"identifier": k}),
            Rule::Event(e) => {
                let mut m = Map::new();
                m.insert("event".into(), json!(e.name));
                m.insert("within".into(), json!(e.within.to_string()));
                if !e.filters.is_empty() {
                    m.insert(
                        "where".into(),
                        Value::Array(
                            e.filters
                                .iter()
                                .map(|f| {
                                    if f.op == TraitOp::Exists {
                                        json!({"property": f.property, "op": "exists"})
                                    } else {
                                        json!({"property": f.property, "op": f.op.as_str(), "value": f.value})
                                    }
                                })
                                .collect(),
                        ),
                    );
                }
                match &e.measure {
                    Measure::Count(c) => {
                        m.insert("count".into(), cmp_json(*c));
                    }
                    Measure::Sum { property, cmp } => {
                        let mut s = Map::new();
                        s.insert("property".into(), json!(property));
                        s.insert(cmp.op.as_str().into(), num_json(cmp.value));
                        m.insert("sum".into(), Value::Object(s));
                    }
                }
                Value::Object(m)
            }
            Rule::Consent { purpose, channel } => match channel {
                Some(c) => json!({"consent": purpose, "channel": c}),
                None => json!({"consent": purpose}),
            },
            Rule::Lifecycle(s) => json!({"lifecycle": s.as_str()}),
            Rule::Rfm { r, f, m } => {
                let mut o = Map::new();
                for (k, c) in [("r", r), ("f", f), ("m", m)] {
                    if let Some(c) = c {
                        o.insert(k.into(), cmp_json(*c));
                    }
                }
                json!({"rfm": o})
            }
            Rule::BirthdayWithin(s) => json!({"birthday_within": s.to_string()}),
            Rule::Segment(id) => json!({"segment": id}),
            Rule::InStock { product, store } => {
                json!({"in_stock": {"product": product.as_str(), "store": store.as_str()}})
            }
        }
    }

    /// What the rule reads.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        self.collect(&mut u);
        u
    }

    fn collect(&self, u: &mut Usage) {
        match self {
            Rule::All(c) | Rule::Any(c) => c.iter().for_each(|r| r.collect(u)),
            Rule::Not(c) => c.collect(u),
            Rule::Trait { name, .. } => {
                u.traits.insert(name.clone());
                u.kinds.insert(trait_kind(name));
            }
            Rule::Identifier(k) => {
                u.kinds.insert(if k == "email" || k == "phone" {
                    DataKind::Contact
                } else {
                    DataKind::Identifiers
                });
            }
            Rule::Event(e) => {
                u.kinds.insert(DataKind::Behaviour);
                u.events.insert(e.name.clone());
                for f in &e.filters {
                    u.properties.insert(f.property.clone());
                }
                if let Measure::Sum { property, .. } = &e.measure {
                    u.properties.insert(property.clone());
                }
            }
            // Asking whether a use is allowed reads no personal data of the
            // purpose's kinds; it is what every send does first.
            Rule::Consent { purpose, .. } => {
                u.purposes.insert(purpose.clone());
            }
            Rule::Lifecycle(_) | Rule::Rfm { .. } => {
                u.kinds.insert(DataKind::Behaviour);
                u.lifecycle = true;
            }
            Rule::BirthdayWithin(_) => {
                u.traits.insert("birthday".into());
                u.kinds.insert(DataKind::Contact);
            }
            Rule::Segment(id) => {
                u.segments.insert(id.clone());
            }
            Rule::InStock { .. } => {
                u.kinds.insert(DataKind::Behaviour);
                u.kinds.insert(DataKind::Traits);
                u.events.insert(VIEWED_EVENT.into());
                u.events.insert("Order Completed".into());
                u.properties.insert(PRODUCT_PROPERTY.into());
                u.properties.insert(STORE_PROPERTY.into());
                u.traits.extend(STORE_TRAITS.iter().map(|t| t.to_string()));
                u.stock = true;
            }
        }
    }
}

/// The kind of data a trait is: contact traits reach or name the person.
pub fn trait_kind(name: &str) -> DataKind {
    if CONTACT_TRAITS.contains(&name) {
        DataKind::Contact
    } else {
        DataKind::Traits
    }
}

fn num_json(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn cmp_json(c: Cmp) -> Value {
    let mut m = Map::new();
    m.insert(c.op.as_str().into(), num_json(c.value));
    Value::Object(m)
}

fn parse(v: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<Rule, RuleError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(err(
            path,
            format!("a rule may have at most {MAX_NODES} conditions"),
        ));
    }
    if depth > MAX_DEPTH {
        return Err(err(
            path,
            format!("a rule may nest at most {MAX_DEPTH} deep"),
        ));
    }
    let Value::Object(o) = v else {
        return Err(err(path, "a condition is a JSON object"));
    };
    let head = [
        "all",
        "any",
        "not",
        "trait",
        "identifier",
        "event",
        "consent",
        "lifecycle",
        "rfm",
        "birthday_within",
        "segment",
        "in_stock",
    ];
    let found: Vec<&str> = head
        .iter()
        .copied()
        .filter(|k| o.contains_key(*k))
        .collect();
    let kind = match found.as_slice() {
        [k] => *k,
        [] => {
            return Err(err(
                path,
                format!("a condition names one of: {}", head.join(", ")),
            ));
        }
        many => {
            return Err(err(
                path,
                format!("a condition names only one of {}", many.join(", ")),
            ));
        }
    };
    let allowed: &[&str] = match kind {
        "trait" => &["trait", "op", "value"],
        "event" => &["event", "within", "where", "count", "sum"],
        "consent" => &["consent", "channel"],
        k => &[k][..],
    };
    // `allowed` for the one-key forms borrows `kind`; list them explicitly.
    let one = [kind];
    let allowed = if allowed.len() == 1 {
        &one[..]
    } else {
        allowed
    };
    if let Some(extra) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(err(
            &format!("{path}.{extra}"),
            format!("`{extra}` does not belong in a `{kind}` condition"),
        ));
    }
    let at = |k: &str| format!("{path}.{k}");
    Ok(match kind {
        "all" | "any" => {
            let Some(Value::Array(items)) = o.get(kind) else {
                return Err(err(&at(kind), "a list of conditions"));
            };
            if items.is_empty() {
                return Err(err(&at(kind), "at least one condition"));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, c) in items.iter().enumerate() {
                out.push(parse(c, &format!("{path}.{kind}[{i}]"), depth + 1, nodes)?);
            }
            if kind == "all" {
                Rule::All(out)
            } else {
                Rule::Any(out)
            }
        }
        "not" => Rule::Not(Box::new(parse(&o["not"], &at("not"), depth + 1, nodes)?)),
        "trait" => {
            let name = name_at(o.get("trait"), &at("trait"))?;
            let (op, value) = op_value(o, path)?;
            Rule::Trait { name, op, value }
        }
        "identifier" => {
            let k = name_at(o.get("identifier"), &at("identifier"))?;
            if crate::identity::CustomKind::parse(&k).is_err()
                && !BUILTIN_KINDS.contains(&k.as_str())
            {
                return Err(err(
                    &at("identifier"),
                    format!("`{k}` is not an identifier kind"),
                ));
            }
            Rule::Identifier(k)
        }
        "event" => {
            let name = name_at(o.get("event"), &at("event"))?;
            let within = match o.get("within") {
                Some(Value::String(s)) => Span::parse(s).map_err(|m| err(&at("within"), m))?,
                Some(_) => return Err(err(&at("within"), "a duration string: \"365d\"")),
                None => {
                    return Err(err(
                        &at("within"),
                        "an event condition needs a window: \"within\": \"30d\"",
                    ));
                }
            };
            let mut filters = Vec::new();
            match o.get("where") {
                None => {}
                Some(Value::Array(items)) => {
                    for (i, f) in items.iter().enumerate() {
                        let p = format!("{path}.where[{i}]");
                        let Value::Object(fo) = f else {
                            return Err(err(&p, "a property filter is an object"));
                        };
                        if let Some(extra) = fo
                            .keys()
                            .find(|k| !["property", "op", "value"].contains(&k.as_str()))
                        {
                            return Err(err(
                                &format!("{p}.{extra}"),
                                format!("`{extra}` does not belong in a property filter"),
                            ));
                        }
                        let property = name_at(fo.get("property"), &format!("{p}.property"))?;
                        let (op, value) = op_value(fo, &p)?;
                        filters.push(PropFilter {
                            property,
                            op,
                            value,
                        });
                    }
                }
                Some(_) => return Err(err(&at("where"), "a list of property filters")),
            }
            let measure = match (o.get("count"), o.get("sum")) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        path,
                        "an event condition has `count` or `sum`, not both",
                    ));
                }
                (Some(c), None) => {
                    let c = cmp_at(c, &at("count"), &[])?;
                    if c.value < 0.0 || c.value.fract() != 0.0 {
                        return Err(err(&at("count"), "a count is a whole number ≥ 0"));
                    }
                    Measure::Count(c)
                }
                (None, Some(s)) => {
                    let p = at("sum");
                    let Value::Object(so) = s else {
                        return Err(err(&p, "{\"property\": \"revenue\", \"gt\": 500}"));
                    };
                    let property = name_at(so.get("property"), &format!("{p}.property"))?;
                    let cmp = cmp_at(s, &p, &["property"])?;
                    Measure::Sum { property, cmp }
                }
                (None, None) => Measure::Count(Cmp {
                    op: CmpOp::Gte,
                    value: 1.0,
                }),
            };
            Rule::Event(EventRule {
                name,
                within,
                filters,
                measure,
            })
        }
        "consent" => {
            let purpose = name_at(o.get("consent"), &at("consent"))?;
            if crate::consent::PurposeId::parse(&purpose).is_err() {
                return Err(err(
                    &at("consent"),
                    format!("`{purpose}` is not a purpose id"),
                ));
            }
            let channel = match o.get("channel") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) => {
                    crate::consent::Channel::parse(c)
                        .map_err(|e| err(&at("channel"), e.to_string()))?;
                    Some(c.clone())
                }
                Some(_) => return Err(err(&at("channel"), "a channel name: \"email\"")),
            };
            Rule::Consent { purpose, channel }
        }
        "lifecycle" => {
            let s = name_at(o.get("lifecycle"), &at("lifecycle"))?;
            Rule::Lifecycle(Stage::parse(&s).ok_or_else(|| {
                err(
                    &at("lifecycle"),
                    format!("`{s}` is not a stage: new, active, loyal, at_risk, lapsed"),
                )
            })?)
        }
        "rfm" => {
            let p = at("rfm");
            let Some(Value::Object(ro)) = o.get("rfm") else {
                return Err(err(&p, "{\"r\": {\"gte\": 4}, \"f\": ..., \"m\": ...}"));
            };
            if ro.is_empty() {
                return Err(err(&p, "name at least one of r, f, m"));
            }
            let mut out = [None, None, None];
            for (k, c) in ro {
                let i = match k.as_str() {
                    "r" => 0,
                    "f" => 1,
                    "m" => 2,
                    _ => return Err(err(&format!("{p}.{k}"), "scores are r, f and m")),
                };
                let c = cmp_at(c, &format!("{p}.{k}"), &[])?;
                if !(0.0..=5.0).contains(&c.value) {
                    return Err(err(&format!("{p}.{k}"), "scores run from 1 to 5"));
                }
                out[i] = Some(c);
            }
            Rule::Rfm {
                r: out[0],
                f: out[1],
                m: out[2],
            }
        }
        "birthday_within" => match o.get("birthday_within") {
            Some(Value::String(s)) => {
                Rule::BirthdayWithin(Span::parse(s).map_err(|m| err(&at("birthday_within"), m))?)
            }
            _ => return Err(err(&at("birthday_within"), "a duration string: \"7d\"")),
        },
        "segment" => {
            let id = name_at(o.get("segment"), &at("segment"))?;
            if !super::valid_segment_id(&id) {
                return Err(err(&at("segment"), format!("`{id}` is not a segment id")));
            }
            Rule::Segment(id)
        }
        "in_stock" => {
            let p = at("in_stock");
            let Some(Value::Object(io)) = o.get("in_stock") else {
                return Err(err(
                    &p,
                    "{\"product\": \"viewed\", \"store\": \"preferred\"}",
                ));
            };
            if let Some(extra) = io.keys().find(|k| *k != "product" && *k != "store") {
                return Err(err(
                    &format!("{p}.{extra}"),
                    format!("`{extra}` does not belong in `in_stock`: product, store"),
                ));
            }
            let product = match io.get("product") {
                None => ProductSource::Viewed,
                Some(Value::String(s)) => ProductSource::parse(s).ok_or_else(|| {
                    err(
                        &format!("{p}.product"),
                        format!("`{s}` is not a product source: viewed"),
                    )
                })?,
                Some(_) => return Err(err(&format!("{p}.product"), "\"viewed\"")),
            };
            let store = match io.get("store") {
                None => StoreSource::Preferred,
                Some(Value::String(s)) => StoreSource::parse(s).ok_or_else(|| {
                    err(
                        &format!("{p}.store"),
                        format!("`{s}` is not a store source: preferred"),
                    )
                })?,
                Some(_) => return Err(err(&format!("{p}.store"), "\"preferred\"")),
            };
            Rule::InStock { product, store }
        }
        _ => unreachable!("every head is matched above"),
    })
}

const BUILTIN_KINDS: &[&str] = &[
    "email",
    "phone",
    "user_id",
    "anonymous_id",
    "device_id",
    "loyalty_card",
    "social_handle",
];

fn name_at(v: Option<&Value>, path: &str) -> Result<String, RuleError> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_NAME => Ok(s.clone()),
        Some(Value::String(s)) if s.len() > MAX_NAME => {
            Err(err(path, format!("at most {MAX_NAME} bytes")))
        }
        _ => Err(err(path, "a non-empty string")),
    }
}

fn op_value(o: &Map<String, Value>, path: &str) -> Result<(TraitOp, Value), RuleError> {
    let op = match o.get("op") {
        Some(Value::String(s)) => TraitOp::parse(s).ok_or_else(|| {
            err(
                &format!("{path}.op"),
                format!("`{s}` is not an operator: eq ne in gt gte lt lte contains exists"),
            )
        })?,
        None => TraitOp::Eq,
        Some(_) => return Err(err(&format!("{path}.op"), "an operator name: \"eq\"")),
    };
    let vp = format!("{path}.value");
    let value = match (op, o.get("value")) {
        (TraitOp::Exists, None) => Value::Null,
        (TraitOp::Exists, Some(_)) => return Err(err(&vp, "`exists` takes no value")),
        (_, None) => return Err(err(&vp, format!("`{}` needs a value", op.as_str()))),
        (TraitOp::In, Some(Value::Array(a))) if !a.is_empty() && a.len() <= 1000 => {
            if a.iter().any(|x| x.is_object() || x.is_array()) {
                return Err(err(
                    &vp,
                    "`in` takes a list of strings, numbers or booleans",
                ));
            }
            Value::Array(a.clone())
        }
        (TraitOp::In, Some(_)) => {
            return Err(err(&vp, "`in` takes a list of 1 to 1000 values"));
        }
        (TraitOp::Gt | TraitOp::Gte | TraitOp::Lt | TraitOp::Lte, Some(v)) => {
            if !(v.is_number() || v.is_string()) {
                return Err(err(&vp, "compare with a number or a string (a date)"));
            }
            v.clone()
        }
        (_, Some(v)) if v.is_object() || v.is_array() => {
            return Err(err(&vp, "a string, a number or a boolean"));
        }
        (_, Some(v)) => v.clone(),
    };
    Ok((op, value))
}

/// `{"gte": 3}`, optionally beside other keys (`property` in a sum).
fn cmp_at(v: &Value, path: &str, others: &[&str]) -> Result<Cmp, RuleError> {
    let Value::Object(o) = v else {
        return Err(err(path, "a comparison: {\"gte\": 3}"));
    };
    let mut found = None;
    for (k, x) in o {
        if others.contains(&k.as_str()) {
            continue;
        }
        let Some(op) = CmpOp::parse(k) else {
            return Err(err(
                &format!("{path}.{k}"),
                format!("`{k}` is not a comparison: eq ne gt gte lt lte"),
            ));
        };
        if found.is_some() {
            return Err(err(path, "one comparison"));
        }
        let Some(n) = x.as_f64().filter(|n| n.is_finite()) else {
            return Err(err(&format!("{path}.{k}"), "a number"));
        };
        found = Some(Cmp { op, value: n });
    }
    found.ok_or_else(|| err(path, "a comparison: {\"gte\": 3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Rule, RuleError> {
        Rule::from_json(&serde_json::from_str(s).unwrap())
    }

    #[test]
    fn the_issue_examples_parse_and_round_trip() {
        for s in [
            r#"{"all": [{"trait": "city", "op": "eq", "value": "Tampere"}]}"#,
            r#"{"any": [{"identifier": "email"}, {"not": {"identifier": "phone"}}]}"#,
            r#"{"event": "Order Completed", "within": "365d", "count": {"gte": 3}}"#,
            r#"{"event": "Order Completed", "within": "365d", "sum": {"property": "revenue", "gt": 500}}"#,
            r#"{"event": "Order Completed", "within": "180d", "count": {"eq": 0}}"#,
            r#"{"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "shoes"}], "within": "2d"}"#,
            r#"{"consent": "email_marketing", "channel": "email"}"#,
            r#"{"lifecycle": "at_risk"}"#,
            r#"{"rfm": {"r": {"gte": 4}, "m": {"gte": 3}}}"#,
            r#"{"birthday_within": "7d"}"#,
            r#"{"segment": "vip"}"#,
            r#"{"in_stock": {"product": "viewed", "store": "preferred"}}"#,
            r#"{"all": [{"event": "Product Viewed", "within": "2d"}, {"not": {"event": "Order Completed", "within": "2d"}}]}"#,
        ] {
            let r = parse_str(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(Rule::from_json(&r.to_json()).unwrap(), r, "{s}");
        }
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            (
                r#"{"all": [{"trait": "city", "op": "exists"}, {"event": "x"}]}"#,
                "$.all[1].within",
            ),
            (r#"{"all": [{"trait": "city"}]}"#, "$.all[0].value"),
            (
                r#"{"all": [{"trait": "city", "op": "like", "value": 1}]}"#,
                "$.all[0].op",
            ),
            (r#"{"not": {"event": "x", "within": "5y"}}"#, "$.not.within"),
            (r#"{"any": []}"#, "$.any"),
            (r#"{"trait": "a", "event": "b"}"#, "$"),
            (r#"{"lifecycle": "sleepy"}"#, "$.lifecycle"),
            (r#"{"rfm": {"x": {"gt": 1}}}"#, "$.rfm.x"),
            (
                r#"{"event": "x", "within": "1d", "sum": {"gt": 5}}"#,
                "$.sum.property",
            ),
            (
                r#"{"event": "x", "within": "1d", "count": {"gte": 1.5}}"#,
                "$.count",
            ),
            (r#"{"trait": "x", "op": "exists", "value": 1}"#, "$.value"),
            (
                r#"{"consent": "email_marketing", "channel": "pigeon"}"#,
                "$.channel",
            ),
            (r#"{"segment": "Bad Id"}"#, "$.segment"),
            (
                r#"{"trait": "a", "op": "eq", "value": 1, "colour": 2}"#,
                "$.colour",
            ),
            (r#"[1]"#, "$"),
            (
                r#"{"in_stock": {"product": "liked"}}"#,
                "$.in_stock.product",
            ),
            (r#"{"in_stock": {"store": "cheapest"}}"#, "$.in_stock.store"),
            (r#"{"in_stock": {"colour": "red"}}"#, "$.in_stock.colour"),
            (r#"{"in_stock": true}"#, "$.in_stock"),
        ];
        for (s, path) in cases {
            let e = parse_str(s).unwrap_err();
            assert_eq!(e.path, path, "{s}: {e}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut v = json!({"identifier": "email"});
        for _ in 0..40 {
            v = json!({"not": v});
        }
        assert!(Rule::from_json(&v).unwrap_err().message.contains("nest"));
        let many: Vec<Value> = (0..300).map(|_| json!({"identifier": "email"})).collect();
        assert!(
            Rule::from_json(&json!({"any": many}))
                .unwrap_err()
                .message
                .contains("at most")
        );
    }

    #[test]
    fn usage_lists_kinds_segments_and_events() {
        let r = parse_str(
            r#"{"all": [{"trait": "email", "op": "exists"}, {"trait": "city", "value": "x"},
                {"event": "Order Completed", "within": "1d", "sum": {"property": "revenue", "gt": 1}},
                {"segment": "vip"}, {"consent": "sms_marketing"}]}"#,
        )
        .unwrap();
        let u = r.usage();
        assert!(u.kinds.contains(&DataKind::Contact));
        assert!(u.kinds.contains(&DataKind::Traits));
        assert!(u.kinds.contains(&DataKind::Behaviour));
        assert!(!u.kinds.contains(&DataKind::Consent));
        assert!(u.segments.contains("vip"));
        assert!(u.events.contains("Order Completed"));
        assert!(u.properties.contains("revenue"));
        assert!(u.purposes.contains("sms_marketing"));
    }
}
