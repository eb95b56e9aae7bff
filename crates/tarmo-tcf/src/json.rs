//! Just enough JSON for the CLI's fixed schemas, so the library stays
//! std-only: a small strict parser (nesting depth limited, integers only) and
//! a writer that keeps keys in schema order.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

const MAX_DEPTH: usize = 32;

pub(crate) fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(format!("unexpected trailing data at byte {}", p.pos));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.pos)
    }

    fn expect(&mut self, literal: &str) -> Result<(), String> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_ws();
        match self.bytes.get(self.pos) {
            None => Err(self.error("unexpected end")),
            Some(b'n') => self.expect("null").map(|()| Value::Null),
            Some(b't') => self.expect("true").map(|()| Value::Bool(true)),
            Some(b'f') => self.expect("false").map(|()| Value::Bool(false)),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.bytes.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.error("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut members = Vec::new();
                self.skip_ws();
                if self.bytes.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return Err(self.error("expected a key"));
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b':') {
                        return Err(self.error("expected :"));
                    }
                    self.pos += 1;
                    let value = self.value(depth + 1)?;
                    if members.iter().any(|(k, _)| *k == key) {
                        return Err(format!("duplicate key \"{key}\""));
                    }
                    members.push((key, value));
                    self.skip_ws();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(self.error("expected , or }")),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.integer(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn integer(&mut self) -> Result<Value, String> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        if matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E')) {
            return Err(self.error("only integers are expected"));
        }
        std::str::from_utf8(&self.bytes[start..self.pos])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .map(Value::Int)
            .ok_or_else(|| self.error("integer out of range"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.pos) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.pos..self.pos + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.error("bad \\u escape"))?;
                            self.pos += 4;
                            // Surrogate pairs never occur in our schemas' values.
                            char::from_u32(hex).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.error("control character in string")),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"))
    }
}

/// Appends `text` as a JSON string literal.
pub(crate) fn write_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds one JSON object, keys in call order.
pub(crate) struct ObjectWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        out.push('{');
        ObjectWriter { out, first: true }
    }

    pub(crate) fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(':');
        self.out
    }

    pub(crate) fn int(&mut self, key: &str, value: impl Into<i64>) {
        let value = value.into();
        let _ = write!(self.key(key), "{value}");
    }

    pub(crate) fn bool(&mut self, key: &str, value: bool) {
        self.key(key).push_str(if value { "true" } else { "false" });
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        write_str(out, value);
    }

    pub(crate) fn ints(&mut self, key: &str, values: impl IntoIterator<Item = i64>) {
        let out = self.key(key);
        write_ints(out, values);
    }

    pub(crate) fn null(&mut self, key: &str) {
        self.key(key).push_str("null");
    }

    pub(crate) fn finish(self) {
        self.out.push('}');
    }
}

pub(crate) fn write_ints(out: &mut String, values: impl IntoIterator<Item = i64>) {
    out.push('[');
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v}");
    }
    out.push(']');
}

/// Reads an object against a fixed key set: every key must be known and
/// present, so a typo cannot silently drop a field.
pub(crate) struct Fields {
    members: Vec<(String, Value)>,
    context: &'static str,
}

impl Fields {
    pub(crate) fn new(value: Value, context: &'static str, keys: &[&str]) -> Result<Self, String> {
        let Value::Object(members) = value else {
            return Err(format!("{context}: expected a JSON object"));
        };
        if let Some((unknown, _)) = members.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
            return Err(format!("{context}: unknown key \"{unknown}\""));
        }
        if let Some(missing) = keys.iter().find(|k| !members.iter().any(|(m, _)| m == *k)) {
            return Err(format!("{context}: missing key \"{missing}\""));
        }
        Ok(Fields { members, context })
    }

    pub(crate) fn take(&mut self, key: &str) -> Value {
        self.members
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| std::mem::replace(v, Value::Null))
            .unwrap_or(Value::Null)
    }

    fn bad(&self, key: &str, expected: &str) -> String {
        format!("{}: \"{key}\" must be {expected}", self.context)
    }

    pub(crate) fn int(&mut self, key: &str, min: i64, max: i64) -> Result<i64, String> {
        match self.take(key) {
            Value::Int(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(self.bad(key, &format!("an integer from {min} to {max}"))),
        }
    }

    pub(crate) fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.take(key) {
            Value::Bool(v) => Ok(v),
            _ => Err(self.bad(key, "true or false")),
        }
    }

    pub(crate) fn str(&mut self, key: &str) -> Result<String, String> {
        match self.take(key) {
            Value::Str(v) => Ok(v),
            _ => Err(self.bad(key, "a string")),
        }
    }

    /// An array of integers within `min..=max`; `None` for `null` when
    /// `nullable`.
    pub(crate) fn ints(
        &mut self,
        key: &str,
        min: i64,
        max: i64,
        nullable: bool,
    ) -> Result<Option<Vec<i64>>, String> {
        let expected = format!("an array of integers from {min} to {max}");
        match self.take(key) {
            Value::Null if nullable => Ok(None),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Int(v) if (min..=max).contains(&v) => Ok(v),
                    _ => Err(self.bad(key, &expected)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(self.bad(key, &expected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_schemas_need() {
        let v = parse(r#" {"a": [1, -2, 3], "b": null, "c": "x\"\u0041", "d": true} "#).unwrap();
        assert_eq!(
            v,
            Value::Object(vec![
                (
                    "a".into(),
                    Value::Array(vec![Value::Int(1), Value::Int(-2), Value::Int(3)])
                ),
                ("b".into(), Value::Null),
                ("c".into(), Value::Str("x\"A".into())),
                ("d".into(), Value::Bool(true)),
            ])
        );
    }

    #[test]
    fn rejects_floats_trailing_data_duplicates_and_deep_nesting() {
        assert!(parse("1.5").is_err());
        assert!(parse("{} x").is_err());
        assert!(parse(r#"{"a":1,"a":2}"#).is_err());
        assert!(parse(&"[".repeat(100)).is_err());
        assert!(parse("\"abc").is_err());
    }
}
