//! The text form of a rule, for people; it compiles to the JSON tree and
//! back. Grammar (keywords are lower case; `and` binds tighter than `or`):
//!
//! ```text
//! rule    := and { "or" and }
//! and     := unary { "and" unary }
//! unary   := "not" unary | "(" rule ")" | atom
//! atom    := "trait" NAME (OP VALUE | "exists")
//!          | "has" NAME                                   -- an identifier kind
//!          | "event" NAME ["where" filter {"," filter}] "in" SPAN
//!                 ["count" CMP NUMBER | "sum" NAME CMP NUMBER]
//!          | "consent" "(" NAME ["," NAME] ")"            -- purpose, channel
//!          | "lifecycle" NAME
//!          | "rfm" SCORE CMP NUMBER {"," SCORE CMP NUMBER}  -- SCORE: r, f, m
//!          | "birthday" "in" SPAN
//!          | "segment" NAME
//!          | "in_stock" "(" NAME "," NAME ")"            -- product, store: in_stock(viewed, preferred)
//! filter  := NAME (OP VALUE | "exists")
//! OP      := CMP | "contains" | "in"                       -- `in` takes a [list]
//! CMP     := "=" | "!=" | ">" | ">=" | "<" | "<="
//! VALUE   := STRING | NUMBER | "true" | "false" | "[" VALUE {"," VALUE} "]"
//! NAME    := a word of letters, digits, `_`, `.` and `$` | a "quoted string"
//! SPAN    := a whole number and s, m, h or d: 90s 30m 48h 365d
//! ```
//!
//! Examples:
//!
//! ```text
//! event "Order Completed" in 365d count >= 3 and sum revenue > 500 ...   (see README)
//! event "Product Viewed" in 2d and not event "Order Completed" in 2d
//! event "Order Completed" in 180d count = 0 and consent(email_marketing, email)
//! trait city in ["Tampere", "Turku"] or (lifecycle at_risk and rfm m >= 4)
//! ```

use serde_json::Value;

use super::duration::Span;
use super::lifecycle::Stage;
use super::rule::{
    Cmp, CmpOp, EventRule, Measure, ProductSource, PropFilter, Rule, RuleError, StoreSource,
    TraitOp,
};

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "trait",
    "has",
    "event",
    "where",
    "in",
    "count",
    "sum",
    "consent",
    "lifecycle",
    "rfm",
    "birthday",
    "segment",
    "in_stock",
    "exists",
    "contains",
    "true",
    "false",
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

fn at(line: usize, col: usize, message: impl Into<String>) -> RuleError {
    RuleError {
        path: format!("line {line}, column {col}"),
        message: message.into(),
    }
}

fn lex(src: &str) -> Result<Vec<Token>, RuleError> {
    let chars: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        let (l0, c0) = (line, col);
        let mut adv = |i: &mut usize, n: usize| {
            for _ in 0..n {
                if chars[*i] == '\n' {
                    line += 1;
                    col = 1;
                } else {
                    col += 1;
                }
                *i += 1;
            }
        };
        if c.is_whitespace() {
            adv(&mut i, 1);
            continue;
        }
        if c == '"' {
            // A JSON string, escapes and all.
            let mut j = i + 1;
            let mut esc = false;
            while j < chars.len() && (esc || chars[j] != '"') {
                esc = !esc && chars[j] == '\\';
                j += 1;
            }
            if j >= chars.len() {
                return Err(at(l0, c0, "this string has no closing quote"));
            }
            let raw: String = chars[i..=j].iter().collect();
            let s: String = serde_json::from_str(&raw)
                .map_err(|_| at(l0, c0, "this string has a bad escape"))?;
            out.push(Token {
                tok: Tok::Str(s),
                line: l0,
                col: c0,
            });
            let n = j + 1 - i;
            adv(&mut i, n);
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        if let Some(s) = [">=", "<=", "!="].into_iter().find(|s| *s == two) {
            out.push(Token {
                tok: Tok::Sym(s),
                line: l0,
                col: c0,
            });
            adv(&mut i, 2);
            continue;
        }
        if let Some(s) = ["=", ">", "<", "(", ")", "[", "]", ","]
            .into_iter()
            .find(|s| s.starts_with(c))
        {
            out.push(Token {
                tok: Tok::Sym(s),
                line: l0,
                col: c0,
            });
            adv(&mut i, 1);
            continue;
        }
        let word =
            |ch: char| ch.is_alphanumeric() || ch == '_' || ch == '.' || ch == '$' || ch == '-';
        if word(c) {
            let mut j = i;
            while j < chars.len() && word(chars[j]) {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            let is_num = w.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-')
                && w.parse::<f64>().is_ok_and(f64::is_finite);
            out.push(Token {
                tok: if is_num {
                    Tok::Num(w.parse().unwrap_or(0.0))
                } else {
                    Tok::Word(w)
                },
                line: l0,
                col: c0,
            });
            let n = j - i;
            adv(&mut i, n);
            continue;
        }
        return Err(at(l0, c0, format!("unexpected `{c}`")));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    end: (usize, usize),
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn here(&self) -> (usize, usize) {
        self.toks
            .get(self.pos)
            .map_or(self.end, |t| (t.line, t.col))
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, RuleError> {
        let (l, c) = self.here();
        Err(at(l, c, message))
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let yes = self.is_word(w);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Sym(x)) if *x == s);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_word(&mut self, w: &str) -> Result<(), RuleError> {
        if self.eat_word(w) {
            Ok(())
        } else {
            self.fail(format!("expected `{w}`"))
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), RuleError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            self.fail(format!("expected `{s}`"))
        }
    }

    fn name(&mut self, what: &str) -> Result<String, RuleError> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) if !s.trim().is_empty() => {
                self.pos += 1;
                Ok(s)
            }
            Some(Tok::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                self.pos += 1;
                Ok(w)
            }
            _ => self.fail(format!("expected {what}")),
        }
    }

    fn number(&mut self) -> Result<f64, RuleError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            _ => self.fail("expected a number"),
        }
    }

    fn span(&mut self) -> Result<Span, RuleError> {
        let (l, c) = self.here();
        match self.peek().cloned() {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Span::parse(&w).map_err(|m| at(l, c, m))
            }
            _ => self.fail("expected a duration: 90s, 30m, 48h, 365d"),
        }
    }

    fn cmp_op(&mut self) -> Result<CmpOp, RuleError> {
        for op in CmpOp::ALL {
            if self.eat_sym(op.symbol()) {
                return Ok(op);
            }
        }
        self.fail("expected a comparison: = != > >= < <=")
    }

    fn value(&mut self) -> Result<Value, RuleError> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Value::String(s))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(num(n))
            }
            Some(Tok::Word(w)) if w == "true" || w == "false" => {
                self.pos += 1;
                Ok(Value::Bool(w == "true"))
            }
            _ => self.fail("expected a value: \"text\", a number, true or false"),
        }
    }

    /// `OP VALUE` or `exists`, after a trait or property name.
    fn op_value(&mut self) -> Result<(TraitOp, Value), RuleError> {
        if self.eat_word("exists") {
            return Ok((TraitOp::Exists, Value::Null));
        }
        if self.eat_word("contains") {
            return Ok((TraitOp::Contains, self.value()?));
        }
        if self.eat_word("in") {
            self.expect_sym("[")?;
            let mut items = vec![self.value()?];
            while self.eat_sym(",") {
                items.push(self.value()?);
            }
            self.expect_sym("]")?;
            return Ok((TraitOp::In, Value::Array(items)));
        }
        let op = match self.cmp_op()? {
            CmpOp::Eq => TraitOp::Eq,
            CmpOp::Ne => TraitOp::Ne,
            CmpOp::Gt => TraitOp::Gt,
            CmpOp::Gte => TraitOp::Gte,
            CmpOp::Lt => TraitOp::Lt,
            CmpOp::Lte => TraitOp::Lte,
        };
        Ok((op, self.value()?))
    }

    fn rule(&mut self) -> Result<Rule, RuleError> {
        self.depth += 1;
        if self.depth > 16 {
            return self.fail("a rule may nest at most 16 deep");
        }
        let mut any = vec![self.and()?];
        while self.eat_word("or") {
            any.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Rule::Any(any)
        })
    }

    fn and(&mut self) -> Result<Rule, RuleError> {
        let mut all = vec![self.unary()?];
        while self.eat_word("and") {
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Rule::All(all)
        })
    }

    fn unary(&mut self) -> Result<Rule, RuleError> {
        if self.eat_word("not") {
            self.depth += 1;
            if self.depth > 16 {
                return self.fail("a rule may nest at most 16 deep");
            }
            let r = Rule::Not(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(r);
        }
        if self.eat_sym("(") {
            let r = self.rule()?;
            self.expect_sym(")")?;
            return Ok(r);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Rule, RuleError> {
        let (l, c) = self.here();
        let Some(Tok::Word(w)) = self.peek().cloned() else {
            return self.fail("expected a condition: trait, has, event, consent, lifecycle, rfm, birthday, segment, not or (");
        };
        self.pos += 1;
        Ok(match w.as_str() {
            "trait" => {
                let name = self.name("a trait name")?;
                let (op, value) = self.op_value()?;
                Rule::Trait { name, op, value }
            }
            "has" => Rule::Identifier(self.name("an identifier kind")?),
            "event" => {
                let name = self.name("an event name")?;
                let mut filters = Vec::new();
                if self.eat_word("where") {
                    loop {
                        let property = self.name("a property name")?;
                        let (op, value) = self.op_value()?;
                        filters.push(PropFilter {
                            property,
                            op,
                            value,
                        });
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                }
                self.expect_word("in")?;
                let within = self.span()?;
                let measure = if self.eat_word("count") {
                    let op = self.cmp_op()?;
                    Measure::Count(Cmp {
                        op,
                        value: self.number()?,
                    })
                } else if self.eat_word("sum") {
                    let property = self.name("a property name")?;
                    let op = self.cmp_op()?;
                    Measure::Sum {
                        property,
                        cmp: Cmp {
                            op,
                            value: self.number()?,
                        },
                    }
                } else {
                    Measure::Count(Cmp {
                        op: CmpOp::Gte,
                        value: 1.0,
                    })
                };
                Rule::Event(EventRule {
                    name,
                    within,
                    filters,
                    measure,
                })
            }
            "consent" => {
                self.expect_sym("(")?;
                let purpose = self.name("a purpose")?;
                let channel = if self.eat_sym(",") {
                    Some(self.name("a channel")?)
                } else {
                    None
                };
                self.expect_sym(")")?;
                Rule::Consent { purpose, channel }
            }
            "lifecycle" => {
                let s = self.name("a stage")?;
                Rule::Lifecycle(Stage::parse(&s).ok_or_else(|| {
                    at(
                        l,
                        c,
                        format!("`{s}` is not a stage: new, active, loyal, at_risk, lapsed"),
                    )
                })?)
            }
            "rfm" => {
                let mut out = [None, None, None];
                loop {
                    let i = match self.peek() {
                        Some(Tok::Word(s)) if s == "r" => 0,
                        Some(Tok::Word(s)) if s == "f" => 1,
                        Some(Tok::Word(s)) if s == "m" => 2,
                        _ => return self.fail("expected a score: r, f or m"),
                    };
                    self.pos += 1;
                    let op = self.cmp_op()?;
                    out[i] = Some(Cmp {
                        op,
                        value: self.number()?,
                    });
                    if !self.eat_sym(",") {
                        break;
                    }
                }
                Rule::Rfm {
                    r: out[0],
                    f: out[1],
                    m: out[2],
                }
            }
            "birthday" => {
                self.expect_word("in")?;
                Rule::BirthdayWithin(self.span()?)
            }
            "segment" => Rule::Segment(self.name("a segment id")?),
            "in_stock" => {
                self.expect_sym("(")?;
                let p = self.name("a product source")?;
                let product = ProductSource::parse(&p)
                    .ok_or_else(|| at(l, c, format!("`{p}` is not a product source: viewed")))?;
                self.expect_sym(",")?;
                let s = self.name("a store source")?;
                let store = StoreSource::parse(&s)
                    .ok_or_else(|| at(l, c, format!("`{s}` is not a store source: preferred")))?;
                self.expect_sym(")")?;
                Rule::InStock { product, store }
            }
            other => {
                return Err(at(
                    l,
                    c,
                    format!(
                        "`{other}` is not a condition: trait, has, event, consent, lifecycle, rfm, birthday, segment, in_stock"
                    ),
                ));
            }
        })
    }
}

fn num(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

/// Parse the text form. The result is checked as the JSON form is (through
/// it), so both forms accept exactly the same rules.
pub fn parse(src: &str) -> Result<Rule, RuleError> {
    if src.len() > 64 * 1024 {
        return Err(at(1, 1, "a rule may be at most 64 KB"));
    }
    let toks = lex(src)?;
    let end = src
        .lines()
        .enumerate()
        .last()
        .map_or((1, 1), |(i, l)| (i + 1, l.chars().count() + 1));
    let mut p = Parser {
        toks,
        pos: 0,
        end,
        depth: 0,
    };
    if p.toks.is_empty() {
        return p.fail("the rule is empty");
    }
    let r = p.rule()?;
    if p.pos < p.toks.len() {
        return p.fail("expected `and`, `or` or the end of the rule");
    }
    // Whatever the JSON form refuses (a bad identifier kind, a count of 1.5)
    // is refused here too, at the start of the rule.
    Rule::from_json(&r.to_json()).map_err(|e| at(1, 1, format!("{}: {}", e.path, e.message)))
}

fn name(s: &str) -> String {
    let bare = !s.is_empty()
        && !KEYWORDS.contains(&s)
        && s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '$' || c == '-');
    if bare {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

fn op_value(op: TraitOp, v: &Value) -> String {
    match op {
        TraitOp::Exists => "exists".into(),
        TraitOp::Contains => format!("contains {v}"),
        TraitOp::In => {
            let items: Vec<String> = v
                .as_array()
                .map_or(Vec::new(), |a| a.iter().map(Value::to_string).collect());
            format!("in [{}]", items.join(", "))
        }
        TraitOp::Eq => format!("= {v}"),
        TraitOp::Ne => format!("!= {v}"),
        TraitOp::Gt => format!("> {v}"),
        TraitOp::Gte => format!(">= {v}"),
        TraitOp::Lt => format!("< {v}"),
        TraitOp::Lte => format!("<= {v}"),
    }
}

fn cmp(c: &Cmp) -> String {
    format!("{} {}", c.op.symbol(), num(c.value))
}

/// The text form of a rule.
pub fn to_text(r: &Rule) -> String {
    let group = |r: &Rule| match r {
        Rule::All(_) | Rule::Any(_) => format!("({})", to_text(r)),
        _ => to_text(r),
    };
    match r {
        Rule::All(c) => c.iter().map(group).collect::<Vec<_>>().join(" and "),
        Rule::Any(c) => c.iter().map(group).collect::<Vec<_>>().join(" or "),
        Rule::Not(c) => format!("not {}", group(c)),
        Rule::Trait { name: n, op, value } => format!("trait {} {}", name(n), op_value(*op, value)),
        Rule::Identifier(k) => format!("has {}", name(k)),
        Rule::Event(e) => {
            let mut s = format!("event {}", name(&e.name));
            if !e.filters.is_empty() {
                let f: Vec<String> = e
                    .filters
                    .iter()
                    .map(|f| format!("{} {}", name(&f.property), op_value(f.op, &f.value)))
                    .collect();
                s.push_str(&format!(" where {}", f.join(", ")));
            }
            s.push_str(&format!(" in {}", e.within));
            match &e.measure {
                Measure::Count(c) if c.op == CmpOp::Gte && c.value == 1.0 => {}
                Measure::Count(c) => s.push_str(&format!(" count {}", cmp(c))),
                Measure::Sum { property, cmp: c } => {
                    s.push_str(&format!(" sum {} {}", name(property), cmp(c)))
                }
            }
            s
        }
        Rule::Consent { purpose, channel } => match channel {
            Some(c) => format!("consent({}, {})", name(purpose), name(c)),
            None => format!("consent({})", name(purpose)),
        },
        Rule::Lifecycle(s) => format!("lifecycle {}", s.as_str()),
        Rule::Rfm { r, f, m } => {
            let parts: Vec<String> = [("r", r), ("f", f), ("m", m)]
                .into_iter()
                .filter_map(|(k, c)| c.as_ref().map(|c| format!("{k} {}", cmp(c))))
                .collect();
            format!("rfm {}", parts.join(", "))
        }
        Rule::BirthdayWithin(s) => format!("birthday in {s}"),
        Rule::Segment(id) => format!("segment {}", name(id)),
        Rule::InStock { product, store } => {
            format!("in_stock({}, {})", product.as_str(), store.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn examples_compile_to_the_tree() {
        let r = parse(
            r#"event "Order Completed" in 365d count >= 3 and not consent(email_marketing, email)"#,
        )
        .unwrap();
        assert_eq!(
            r.to_json(),
            json!({"all": [
                {"event": "Order Completed", "within": "365d", "count": {"gte": 3}},
                {"not": {"consent": "email_marketing", "channel": "email"}}]})
        );
        let r = parse("event \"Product Viewed\" where category = \"shoes\" in 2d and not event \"Order Completed\" in 2d").unwrap();
        assert_eq!(
            r.to_json(),
            json!({"all": [
                {"event": "Product Viewed", "within": "2d", "where": [{"property": "category", "op": "eq", "value": "shoes"}], "count": {"gte": 1}},
                {"not": {"event": "Order Completed", "within": "2d", "count": {"gte": 1}}}]})
        );
        let r = parse(
            "trait city in [\"Tampere\", \"Turku\"] or lifecycle at_risk and rfm r >= 4, m >= 3",
        )
        .unwrap();
        assert!(
            matches!(&r, Rule::Any(c) if matches!(c[1], Rule::All(_))),
            "and binds tighter: {r:?}"
        );
        let r = parse("event \"Order Completed\" in 365d sum revenue > 500 and birthday in 7d and segment vip and has email").unwrap();
        assert_eq!(parse(&to_text(&r)).unwrap(), r);
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = parse("trait city = \"x\"\n  and event \"x\" in 5y").unwrap_err();
        assert_eq!(e.path, "line 2, column 20", "{e}");
        let e = parse("trait city = \"x\" or").unwrap_err();
        assert!(e.path.starts_with("line 1"), "{e}");
        let e = parse("lifecycle sleepy").unwrap_err();
        assert_eq!(e.path, "line 1, column 1");
        let e = parse("has \"not a kind!\"").unwrap_err();
        assert!(e.message.contains("identifier"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("trait city = \"unterminated").is_err());
        assert!(parse("(has email").is_err());
        assert!(parse(&format!("{}has email", "not ".repeat(40))).is_err());
    }

    /// Single-child groups print as their child.
    fn normal(r: Rule) -> Rule {
        match r {
            Rule::All(mut c) if c.len() == 1 => normal(c.remove(0)),
            Rule::Any(mut c) if c.len() == 1 => normal(c.remove(0)),
            Rule::All(c) => Rule::All(c.into_iter().map(normal).collect()),
            Rule::Any(c) => Rule::Any(c.into_iter().map(normal).collect()),
            Rule::Not(c) => Rule::Not(Box::new(normal(*c))),
            x => x,
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-zA-Z0-9 _\"\\\\é-]{0,8}".prop_map(Value::String),
            (-1000i64..1000).prop_map(Value::from),
            any::<bool>().prop_map(Value::Bool),
        ]
    }

    fn arb_op() -> impl Strategy<Value = (TraitOp, Value)> {
        prop_oneof![
            Just((TraitOp::Exists, Value::Null)),
            (
                prop::sample::select(vec![TraitOp::Eq, TraitOp::Ne, TraitOp::Contains]),
                arb_value()
            ),
            (
                prop::sample::select(vec![TraitOp::Gt, TraitOp::Lte]),
                (-50i64..50).prop_map(Value::from)
            ),
            prop::collection::vec(arb_value(), 1..4).prop_map(|v| (TraitOp::In, Value::Array(v))),
        ]
    }

    fn arb_cmp() -> impl Strategy<Value = Cmp> {
        (prop::sample::select(CmpOp::ALL.to_vec()), 0u32..6).prop_map(|(op, v)| Cmp {
            op,
            value: v as f64,
        })
    }

    fn arb_leaf() -> impl Strategy<Value = Rule> {
        let name = "[a-zA-Z][a-zA-Z0-9 _]{0,10}";
        prop_oneof![
            (name, arb_op()).prop_map(|(name, (op, value))| Rule::Trait { name, op, value }),
            prop::sample::select(vec!["email", "phone", "user_id", "loyalty_card"])
                .prop_map(|k| Rule::Identifier(k.into())),
            (
                name,
                1i64..400_000,
                prop::collection::vec((name, arb_op()), 0..3),
                prop::option::of(arb_cmp()),
                prop::option::of(name)
            )
                .prop_map(|(n, secs, f, c, sum)| Rule::Event(EventRule {
                    name: n,
                    within: Span::from_secs(secs),
                    filters: f
                        .into_iter()
                        .map(|(property, (op, value))| PropFilter {
                            property,
                            op,
                            value
                        })
                        .collect(),
                    measure: match (c, sum) {
                        (Some(c), Some(p)) => Measure::Sum {
                            property: p,
                            cmp: c
                        },
                        (Some(c), None) => Measure::Count(c),
                        (None, _) => Measure::Count(Cmp {
                            op: CmpOp::Gte,
                            value: 1.0
                        }),
                    },
                })),
            (
                prop::sample::select(vec!["email_marketing", "ads"]),
                prop::option::of(prop::sample::select(vec!["email", "sms"]))
            )
                .prop_map(|(p, c)| Rule::Consent {
                    purpose: p.into(),
                    channel: c.map(Into::into)
                }),
            prop::sample::select(Stage::ALL.to_vec()).prop_map(Rule::Lifecycle),
            (prop::option::of(arb_cmp()), arb_cmp()).prop_map(|(r, m)| Rule::Rfm {
                r,
                f: None,
                m: Some(m)
            }),
            (1i64..400).prop_map(|d| Rule::BirthdayWithin(Span::from_secs(d * 86_400))),
            "[a-z][a-z0-9_]{0,8}".prop_map(Rule::Segment),
            Just(Rule::InStock {
                product: ProductSource::Viewed,
                store: StoreSource::Preferred
            }),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        arb_leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::All),
                prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::Any),
                inner.prop_map(|r| Rule::Not(Box::new(r))),
            ]
        })
    }

    proptest! {
        #[test]
        fn text_and_json_round_trip(r in arb_rule()) {
            let r = normal(r);
            let text = to_text(&r);
            let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&back, &r, "{}", text);
            prop_assert_eq!(Rule::from_json(&r.to_json()).unwrap(), r);
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }
    }
}
