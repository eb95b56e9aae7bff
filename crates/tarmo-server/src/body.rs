//! Reading a JSON body so that a client writing one by hand learns what to
//! fix: an empty body says what is needed, a bad one names the field at
//! fault by its path (`entries[2].source`), and no message ever names a Rust
//! type (serde's "expected struct ConsentInput" reads "expected an object").

use serde::de::DeserializeOwned;
use serde_json::Value;
use tarmo_core::codes::Code;

use crate::error::ApiError;

/// Parse `raw` as `T`. `needed` describes the body for the empty case, e.g.
/// `{"reason": "..."}`.
pub fn json<T: DeserializeOwned>(raw: &[u8], code: Code, needed: &str) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            code,
            format!("a JSON body is needed: {needed}"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(de).map_err(|e| refused(code, e))
}

/// Read an already parsed value as `T`, naming the field at fault.
pub fn from_value<T: DeserializeOwned>(v: Value, code: Code) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| refused(code, e))
}

fn refused<E: std::fmt::Display>(code: Code, e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    let inner = plain(&e.inner().to_string());
    let message = if path == "." {
        inner
    } else {
        format!("`{path}`: {inner}")
    };
    ApiError::new(code, message)
}

/// serde's messages without the names of Rust types.
pub fn plain(msg: &str) -> String {
    const NAMED: [(&str, &str); 6] = [
        (
            "data did not match any variant of untagged enum ",
            "the value matches none of the accepted shapes",
        ),
        ("expected struct variant ", "expected an object"),
        ("expected tuple variant ", "expected an array"),
        ("expected tuple struct ", "expected an array"),
        ("expected struct ", "expected an object"),
        ("expected enum ", "expected one of the accepted values"),
    ];
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    'next: while let Some(c) = rest.chars().next() {
        for (pattern, instead) in NAMED {
            if let Some(tail) = rest.strip_prefix(pattern) {
                out.push_str(instead);
                let name = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(tail.len());
                rest = &tail[name..];
                continue 'next;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        source: String,
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        entries: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Either {
        Many { entries: Vec<Inner> },
        One(Inner),
    }

    fn msg<T: DeserializeOwned + std::fmt::Debug>(raw: &str) -> String {
        json::<T>(raw.as_bytes(), Code::InvalidJson, "{\"entries\": [...]}")
            .unwrap_err()
            .message
    }

    #[test]
    fn an_empty_body_says_what_is_needed() {
        for raw in ["", "  \n"] {
            assert_eq!(
                msg::<Outer>(raw),
                "a JSON body is needed: {\"entries\": [...]}"
            );
        }
    }

    #[test]
    fn the_field_at_fault_is_named_by_its_path() {
        let m = msg::<Outer>(r#"{"entries": [{"source": "a", "n": 1}, {"n": 2}]}"#);
        assert!(m.starts_with("`entries[1]`: missing field `source`"), "{m}");
        let m = msg::<Outer>(r#"{"entries": [{"source": "a", "n": "x"}]}"#);
        assert!(m.starts_with("`entries[0].n`: invalid type: string"), "{m}");
    }

    #[test]
    fn no_message_names_a_rust_type() {
        for raw in [
            r#"{"entries": ["x"]}"#,
            r#"[1]"#,
            r#""x""#,
            r#"{"entries": [{"n": 1}]}"#,
        ] {
            for m in [msg::<Outer>(raw), msg::<Either>(raw)] {
                for name in ["Inner", "Outer", "Either", "struct", "enum"] {
                    assert!(!m.contains(name), "{raw}: {m}");
                }
            }
        }
        assert_eq!(
            plain("invalid type: string \"x\", expected struct ConsentInput at line 1 column 3"),
            "invalid type: string \"x\", expected an object at line 1 column 3"
        );
    }
}
