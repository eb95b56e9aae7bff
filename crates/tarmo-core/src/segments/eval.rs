//! Evaluation of a rule over one person's facts, with the time its answer
//! may next change by time alone.

use serde_json::Value;
use time::{Date, Month, OffsetDateTime};

use super::columns::Events;
use super::lifecycle::{Rfm, Stage};
use super::rule::{Cmp, EventRule, Measure, PRODUCT_PROPERTY, Rule, TraitOp, VIEWED_EVENT};

const DAY_MS: i64 = 86_400_000;

/// What a rule may ask about a person. Plaintext: kept in memory only.
pub trait Facts {
    fn trait_value(&self, name: &str) -> Option<&Value>;
    fn has_identifier(&self, kind: &str) -> bool;
    /// The person's events of this name, oldest first.
    fn events(&self, name: &str) -> Events<'_>;
    /// Whether the policy allows the purpose (over the channel) for them now.
    fn consent_allows(&self, purpose: &str, channel: Option<&str>) -> bool;
    fn lifecycle(&self) -> Option<Stage>;
    fn rfm(&self) -> Option<Rfm>;
    /// When the lifecycle stage changes by time alone.
    fn lifecycle_changes_at(&self) -> Option<i64>;
    fn in_segment(&self, id: &str) -> bool;
    /// Whether `product` is in stock at the person's store (see
    /// [`Rule::InStock`]); false where no stock is known.
    fn in_stock(&self, product: &str) -> bool {
        let _ = product;
        false
    }
}

/// Whether `rule` holds for the person now, and the earliest later time at
/// which the answer could change without any new fact (an event leaving its
/// window, a birthday coming into range). The time is conservative: at that
/// time the answer may also stay the same.
pub fn evaluate(rule: &Rule, facts: &dyn Facts, now_ms: i64) -> (bool, Option<i64>) {
    let mut next = None;
    let holds = eval(rule, facts, now_ms, &mut next);
    (holds, next)
}

fn soonest(next: &mut Option<i64>, t: i64) {
    *next = Some(next.map_or(t, |n| n.min(t)));
}

fn eval(rule: &Rule, f: &dyn Facts, now: i64, next: &mut Option<i64>) -> bool {
    match rule {
        // Every child is evaluated (no short cut), so that the time of the
        // next change covers the children that did not decide this time.
        Rule::All(c) => c.iter().fold(true, |acc, r| eval(r, f, now, next) & acc),
        Rule::Any(c) => c.iter().fold(false, |acc, r| eval(r, f, now, next) | acc),
        Rule::Not(c) => !eval(c, f, now, next),
        Rule::Trait { name, op, value } => trait_holds(f.trait_value(name), *op, value),
        Rule::Identifier(k) => f.has_identifier(k),
        Rule::Event(e) => event_holds(e, f.events(&e.name), now, next),
        Rule::Consent { purpose, channel } => f.consent_allows(purpose, channel.as_deref()),
        Rule::Lifecycle(s) => {
            if let Some(t) = f.lifecycle_changes_at() {
                soonest(next, t);
            }
            f.lifecycle() == Some(*s)
        }
        Rule::Rfm { r, f: fr, m } => {
            // Scores move with the base's quintiles, recomputed daily.
            soonest(next, (now / DAY_MS + 1) * DAY_MS);
            let Some(s) = f.rfm() else {
                return false;
            };
            let ok = |c: &Option<Cmp>, x: u8| c.is_none_or(|c| c.holds(x as f64));
            ok(r, s.r) && ok(fr, s.f) && ok(m, s.m)
        }
        Rule::BirthdayWithin(span) => {
            soonest(next, (now / DAY_MS + 1) * DAY_MS);
            match f.trait_value("birthday").and_then(Value::as_str) {
                Some(b) => days_to_birthday(b, now).is_some_and(|d| d * 86_400 < span.secs()),
                None => false,
            }
        }
        Rule::Segment(id) => f.in_segment(id),
        Rule::InStock { .. } => {
            // The latest view that names its product.
            let views = f.events(VIEWED_EVENT);
            let viewed =
                (0..views.len())
                    .rev()
                    .find_map(|i| match views.prop(i, PRODUCT_PROPERTY)? {
                        Value::String(s) if !s.is_empty() => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    });
            viewed.is_some_and(|p| f.in_stock(&p))
        }
    }
}

fn event_holds(e: &EventRule, events: Events<'_>, now: i64, next: &mut Option<i64>) -> bool {
    let from = now - e.within.ms();
    // Oldest first: skip what has left the window.
    let (mut lo, mut hi) = (0, events.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if events.ts(mid) <= from {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut count = 0u64;
    let mut sum = ExactSum::default();
    for i in lo..events.len() {
        if !e
            .filters
            .iter()
            .all(|flt| trait_holds(events.prop(i, &flt.property), flt.op, &flt.value))
        {
            continue;
        }
        let ts = events.ts(i);
        if ts > now {
            // Dated ahead (clock skew within what ingestion allows): it
            // counts from its time on.
            soonest(next, ts);
            continue;
        }
        soonest(next, ts + e.within.ms());
        count += 1;
        if let Measure::Sum { property, .. } = &e.measure {
            sum.add(events.prop(i, property).and_then(number).unwrap_or(0.0));
        }
    }
    match &e.measure {
        Measure::Count(c) => c.holds(count as f64),
        Measure::Sum { cmp, .. } => cmp.holds(sum.value()),
    }
}

/// A sum that does not depend on the order of its terms. Floating-point
/// addition is not associative (`0.1 + 0.2 + 0.3` and `0.3 + 0.2 + 0.1`
/// differ in the last bit), and a person's events are summed in time order
/// by [`evaluate`] but in arrival order by a pass over a whole table, so a
/// person at a boundary (`sum revenue > 500`) could be in a segment by one
/// road and out by the other. Each term is counted in 128-bit fixed point
/// to the nearest 10⁻⁹ — integer addition, exact in any order — and the
/// total converted back once. Totals beyond ±1.7 × 10²⁹ saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExactSum(i128);

impl ExactSum {
    const SCALE: f64 = 1e9;

    pub fn add(&mut self, x: f64) {
        if x.is_finite() {
            // `as` saturates: a term beyond the range counts as its end.
            self.0 = self.0.saturating_add((x * Self::SCALE).round() as i128);
        }
    }

    pub fn value(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }
}

/// A number, or a string that is one (SDKs send "12.50" as often as 12.5).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) if a.is_number() || b.is_number() => x == y,
        _ => a == b,
    }
}

/// A missing value holds for `ne` only (a person whose city is unknown is
/// not in Tampere) and for nothing else.
pub fn trait_holds(v: Option<&Value>, op: TraitOp, want: &Value) -> bool {
    let v = match v {
        None | Some(Value::Null) => return op == TraitOp::Ne,
        Some(v) => v,
    };
    match op {
        TraitOp::Exists => true,
        TraitOp::Eq => same(v, want),
        TraitOp::Ne => !same(v, want),
        TraitOp::In => want
            .as_array()
            .is_some_and(|list| list.iter().any(|w| same(v, w))),
        TraitOp::Contains => match (v, want) {
            (Value::String(s), Value::String(w)) => s.to_lowercase().contains(&w.to_lowercase()),
            (Value::Array(items), w) => items.iter().any(|i| same(i, w)),
            _ => false,
        },
        TraitOp::Gt | TraitOp::Gte | TraitOp::Lt | TraitOp::Lte => {
            let ord = match (number(v), want) {
                (Some(x), Value::Number(_)) => x.partial_cmp(&number(want).unwrap_or(f64::NAN)),
                (_, Value::String(w)) => v.as_str().map(|s| s.cmp(w.as_str())),
                _ => None,
            };
            let Some(ord) = ord else {
                return false;
            };
            match op {
                TraitOp::Gt => ord.is_gt(),
                TraitOp::Gte => ord.is_ge(),
                TraitOp::Lt => ord.is_lt(),
                _ => ord.is_le(),
            }
        }
    }
}

/// Days from today (UTC) to the next birthday (`YYYY-MM-DD` or `MM-DD`);
/// 29 February falls on 28 February in a common year.
pub fn days_to_birthday(birthday: &str, now_ms: i64) -> Option<i64> {
    let parts: Vec<&str> = birthday.trim().split('-').collect();
    let (m, d) = match parts.as_slice() {
        [_, m, d] | [m, d] => (m.parse::<u8>().ok()?, d.parse::<u8>().ok()?),
        _ => return None,
    };
    let month = Month::try_from(m).ok()?;
    if d == 0 || d > 31 {
        return None;
    }
    let today = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .ok()?
        .date();
    let on = |year: i32| -> Option<Date> {
        Date::from_calendar_date(year, month, d).ok().or_else(|| {
            (m == 2 && d == 29).then(|| Date::from_calendar_date(year, month, 28).ok())?
        })
    };
    // Check the day exists at all (31 April is no birthday).
    Date::from_calendar_date(2000, month, d).ok()?;
    let mut next = on(today.year())?;
    if next < today {
        next = on(today.year() + 1)?;
    }
    Some((next - today).whole_days())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::json;

    use super::*;
    use crate::segments::columns::EventTable;

    #[test]
    fn an_exact_sum_does_not_depend_on_the_order_of_its_terms() {
        let three = [0.1, 0.2, 0.3];
        let plain_fwd: f64 = three.iter().sum();
        let plain_back: f64 = three.iter().rev().sum();
        assert_ne!(plain_fwd, plain_back, "floating point differs by order");
        let terms = [0.1, 0.2, 0.3, 1e-9, 499.4, -0.05];
        let (mut fwd, mut back) = (ExactSum::default(), ExactSum::default());
        terms.iter().for_each(|x| fwd.add(*x));
        terms.iter().rev().for_each(|x| back.add(*x));
        assert_eq!(fwd, back);
        assert_eq!(fwd.value(), 499.950000001);
        // Not a number is no term; a term beyond the range saturates.
        fwd.add(f64::NAN);
        assert_eq!(fwd, back);
        let mut huge = ExactSum::default();
        huge.add(1e300);
        huge.add(1e300);
        assert!(huge.value() > 1e29);
    }

    const NOW: i64 = 1_800_000_000_000;

    #[derive(Default)]
    struct P {
        traits: HashMap<String, Value>,
        ids: HashSet<String>,
        events: HashMap<String, (EventTable, Vec<u32>)>,
        allowed: HashSet<String>,
        segments: HashSet<String>,
    }

    impl Facts for P {
        fn trait_value(&self, name: &str) -> Option<&Value> {
            self.traits.get(name)
        }
        fn has_identifier(&self, kind: &str) -> bool {
            self.ids.contains(kind)
        }
        fn events(&self, name: &str) -> Events<'_> {
            self.events
                .get(name)
                .map_or(Events::EMPTY, |(t, rows)| Events::new(t, rows))
        }
        fn consent_allows(&self, purpose: &str, _: Option<&str>) -> bool {
            self.allowed.contains(purpose)
        }
        fn lifecycle(&self) -> Option<Stage> {
            None
        }
        fn rfm(&self) -> Option<Rfm> {
            None
        }
        fn lifecycle_changes_at(&self) -> Option<i64> {
            None
        }
        fn in_segment(&self, id: &str) -> bool {
            self.segments.contains(id)
        }
    }

    fn ev(days_ago: f64, props: Value) -> (i64, Vec<(String, Value)>) {
        let props: Vec<(String, Value)> = props
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        (NOW - (days_ago * DAY_MS as f64) as i64, props)
    }

    /// A person's events in columns, oldest first.
    fn tbl(events: Vec<(i64, Vec<(String, Value)>)>) -> (EventTable, Vec<u32>) {
        let mut t = EventTable::default();
        let mut rows = Vec::new();
        for (ts, props) in events {
            let r = t.push(0, ts, props);
            t.insert_sorted(&mut rows, r);
        }
        (t, rows)
    }

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v).unwrap()
    }

    #[test]
    fn count_sum_window_and_absence() {
        let mut p = P::default();
        p.events.insert(
            "Order Completed".into(),
            tbl(vec![
                ev(400.0, json!({"revenue": 1000})),
                ev(200.0, json!({"revenue": 300})),
                ev(100.0, json!({"revenue": "150.5"})),
                ev(10.0, json!({"revenue": 100})),
            ]),
        );
        let r3 = rule(json!({"event": "Order Completed", "within": "365d", "count": {"gte": 3}}));
        let (ok, next) = evaluate(&r3, &p, NOW);
        assert!(ok);
        // The order of 200 days ago leaves the 365-day window first.
        assert_eq!(next, Some(NOW - 200 * DAY_MS + 365 * DAY_MS));
        let (later, _) = evaluate(&r3, &p, next.unwrap());
        assert!(!later, "one order left the window");
        let sum = rule(
            json!({"event": "Order Completed", "within": "365d", "sum": {"property": "revenue", "gt": 500}}),
        );
        assert!(evaluate(&sum, &p, NOW).0, "300 + 150.5 + 100");
        let sum2 = rule(
            json!({"event": "Order Completed", "within": "150d", "sum": {"property": "revenue", "gt": 500}}),
        );
        assert!(!evaluate(&sum2, &p, NOW).0);
        let absent = rule(json!({"event": "Order Completed", "within": "5d", "count": {"eq": 0}}));
        let (ok, next) = evaluate(&absent, &p, NOW);
        assert!(ok);
        assert_eq!(
            next, None,
            "nothing in the window: only a new order changes it"
        );
        let lapsed = rule(json!({"event": "Order Completed", "within": "30d", "count": {"eq": 0}}));
        let (ok, next) = evaluate(&lapsed, &p, NOW);
        assert!(!ok);
        assert!(
            evaluate(&lapsed, &p, next.unwrap()).0,
            "the scheduler moves them in"
        );
    }

    #[test]
    fn viewed_and_did_not_buy() {
        let r = rule(json!({"all": [
            {"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "shoes"}], "within": "2d"},
            {"not": {"event": "Order Completed", "within": "2d"}}]}));
        let mut p = P::default();
        p.events.insert(
            "Product Viewed".into(),
            tbl(vec![ev(1.0, json!({"category": "shoes"}))]),
        );
        assert!(evaluate(&r, &p, NOW).0);
        p.events
            .insert("Order Completed".into(), tbl(vec![ev(0.5, json!({}))]));
        assert!(!evaluate(&r, &p, NOW).0);
        let mut q = P::default();
        q.events.insert(
            "Product Viewed".into(),
            tbl(vec![ev(1.0, json!({"category": "hats"}))]),
        );
        assert!(!evaluate(&r, &q, NOW).0);
    }

    #[test]
    fn traits_identifiers_consent_segments() {
        let mut p = P::default();
        p.traits.insert("city".into(), json!("Tampere"));
        p.traits.insert("age".into(), json!("42"));
        p.traits.insert("tags".into(), json!(["vip", "eco"]));
        p.ids.insert("email".into());
        p.allowed.insert("email_marketing".into());
        p.segments.insert("vip".into());
        for (r, want) in [
            (
                json!({"trait": "city", "op": "eq", "value": "Tampere"}),
                true,
            ),
            (
                json!({"trait": "city", "op": "ne", "value": "Tampere"}),
                false,
            ),
            (json!({"trait": "country", "op": "ne", "value": "FI"}), true),
            (
                json!({"trait": "country", "op": "eq", "value": "FI"}),
                false,
            ),
            (
                json!({"trait": "city", "op": "in", "value": ["Turku", "Tampere"]}),
                true,
            ),
            (
                json!({"trait": "city", "op": "contains", "value": "tamp"}),
                true,
            ),
            (
                json!({"trait": "tags", "op": "contains", "value": "eco"}),
                true,
            ),
            (json!({"trait": "age", "op": "gt", "value": 40}), true),
            (json!({"trait": "age", "op": "lte", "value": 41}), false),
            (json!({"trait": "age", "op": "exists"}), true),
            (json!({"trait": "zip", "op": "exists"}), false),
            (json!({"identifier": "email"}), true),
            (json!({"identifier": "phone"}), false),
            (
                json!({"consent": "email_marketing", "channel": "email"}),
                true,
            ),
            (json!({"consent": "sms_marketing"}), false),
            (json!({"segment": "vip"}), true),
            (json!({"not": {"segment": "vip"}}), false),
            (
                json!({"any": [{"segment": "x"}, {"identifier": "email"}]}),
                true,
            ),
        ] {
            assert_eq!(evaluate(&rule(r.clone()), &p, NOW).0, want, "{r}");
        }
    }

    #[test]
    fn birthdays() {
        // NOW is 2027-01-15T08:00:00Z.
        assert_eq!(days_to_birthday("1990-01-15", NOW), Some(0));
        assert_eq!(days_to_birthday("01-20", NOW), Some(5));
        assert_eq!(days_to_birthday("1990-01-14", NOW), Some(364));
        assert_eq!(days_to_birthday("04-31", NOW), None);
        assert_eq!(days_to_birthday("nonsense", NOW), None);
        // 2027 is a common year: 29 February is celebrated on the 28th.
        assert_eq!(days_to_birthday("2000-02-29", NOW), Some(44));
        let mut p = P::default();
        p.traits.insert("birthday".into(), json!("1990-01-20"));
        assert!(evaluate(&rule(json!({"birthday_within": "7d"})), &p, NOW).0);
        assert!(!evaluate(&rule(json!({"birthday_within": "5d"})), &p, NOW).0);
    }
}
