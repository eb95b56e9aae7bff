//! Form bodies as browsers and mailbox providers post them:
//! `application/x-www-form-urlencoded` and `multipart/form-data` (RFC 7578).
//!
//! RFC 8058 §3.1 says a mailbox provider SHOULD post its one-click
//! unsubscribe as `multipart/form-data`; many send the urlencoded form. Only
//! text fields are read; a part with a file name is skipped. The parser is
//! small on purpose (the bodies are one or two fields, under the 1 MB limit
//! on every body): it must never panic, and a body it cannot read is an
//! error, not an empty form.

/// Why a form body could not be read. Carries no part of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// `multipart/form-data` without a usable `boundary` parameter.
    NoBoundary,
    /// The body does not follow the multipart syntax.
    Malformed,
    /// More parts than a form of ours or a mailbox provider sends.
    TooManyParts,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoBoundary => "multipart/form-data needs a boundary parameter",
            Self::Malformed => "the multipart body is malformed",
            Self::TooManyParts => "the form has too many parts",
        })
    }
}

/// The most parts read from one multipart body.
const MAX_PARTS: usize = 64;

/// The fields of a form body, by its `Content-Type` (urlencoded when absent
/// or anything other than multipart, as browsers and curl send it).
pub fn fields(content_type: Option<&str>, body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let Some(ct) = content_type else {
        return Ok(urlencoded(body));
    };
    let (media, params) = split_params(ct);
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Ok(urlencoded(body));
    }
    let boundary = params
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| (1..=70).contains(&b.len()))
        .ok_or(FormError::NoBoundary)?;
    multipart(boundary.as_bytes(), body)
}

fn urlencoded(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// `value; a=b; c="d;e"` into the value and its parameters (names as
/// given, values unquoted).
fn split_params(header: &str) -> (&str, Vec<(String, String)>) {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in header.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&header[start..]);
    let first = parts[0];
    let params = parts[1..]
        .iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(inner) => unescape(inner),
                None => v.to_owned(),
            };
            Some((k.trim().to_owned(), v))
        })
        .collect();
    (first, params)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RFC 2046 §5.1.1: parts between `--boundary` lines, each with headers, an
/// empty line and its content; `--boundary--` ends the body. A preamble and
/// an epilogue are ignored.
fn multipart(boundary: &[u8], body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    // Every delimiter but a first one at the very start follows a CRLF.
    let mut delimiter = b"\r\n--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut rest: &[u8] = if body.starts_with(&delimiter[2..]) {
        &body[delimiter.len() - 2..]
    } else {
        let at = find(body, &delimiter).ok_or(FormError::Malformed)?;
        &body[at + delimiter.len()..]
    };
    let mut out = Vec::new();
    loop {
        // After a delimiter: `--` ends the body; otherwise optional
        // whitespace (transport padding), then CRLF and a part.
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        let line_end = find(rest, b"\r\n").ok_or(FormError::Malformed)?;
        if !rest[..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err(FormError::Malformed);
        }
        rest = &rest[line_end + 2..];
        let end = find(rest, &delimiter).ok_or(FormError::Malformed)?;
        let part = &rest[..end];
        rest = &rest[end + delimiter.len()..];
        if out.len() == MAX_PARTS {
            return Err(FormError::TooManyParts);
        }
        if let Some(field) = text_field(part)? {
            out.push(field);
        }
    }
}

/// A part's name and text, or `None` for a file or a part without a name.
fn text_field(part: &[u8]) -> Result<Option<(String, String)>, FormError> {
    // A part with no headers starts with the empty line itself.
    let (head, content) = if let Some(c) = part.strip_prefix(b"\r\n") {
        (&b""[..], c)
    } else {
        let at = find(part, b"\r\n\r\n").ok_or(FormError::Malformed)?;
        (&part[..at], &part[at + 4..])
    };
    let head = std::str::from_utf8(head).map_err(|_| FormError::Malformed)?;
    let mut name = None;
    for line in head.split("\r\n") {
        let (k, v) = line.split_once(':').ok_or(FormError::Malformed)?;
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let (kind, params) = split_params(v);
        if !kind.trim().eq_ignore_ascii_case("form-data") {
            return Ok(None);
        }
        if params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("filename"))
        {
            return Ok(None);
        }
        name = params
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("name"))
            .map(|(_, v)| v);
    }
    let Some(name) = name else {
        return Ok(None);
    };
    let value = String::from_utf8(content.to_vec()).map_err(|_| FormError::Malformed)?;
    Ok(Some((name, value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ONE_CLICK: &[u8] = b"--AaB03x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--AaB03x--\r\n";

    #[test]
    fn a_mailbox_providers_multipart_one_click_is_read() {
        let f = fields(Some("multipart/form-data; boundary=AaB03x"), ONE_CLICK).unwrap();
        assert_eq!(f, [("List-Unsubscribe".into(), "One-Click".into())]);
        // Quoted boundary, parameter names in capitals, a preamble, padding
        // after the delimiter, another header and a file part.
        let body = b"preamble\r\n--a;b \r\nContent-Type: text/plain\r\ncontent-disposition: form-data; NAME=\"x\\\"y\"\r\n\r\n1\r\n2\r\n--a;b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nfile\r\n--a;b--";
        let f = fields(Some("Multipart/Form-Data; Boundary=\"a;b\""), body).unwrap();
        assert_eq!(f, [("x\"y".into(), "1\r\n2".into())]);
    }

    #[test]
    fn urlencoded_and_untyped_bodies_are_read_as_urlencoded() {
        let want = vec![("List-Unsubscribe".to_owned(), "One-Click".to_owned())];
        let body = b"List-Unsubscribe=One-Click";
        assert_eq!(
            fields(Some("application/x-www-form-urlencoded"), body).unwrap(),
            want
        );
        assert_eq!(fields(None, body).unwrap(), want);
    }

    #[test]
    fn bad_multipart_bodies_are_errors() {
        assert_eq!(
            fields(Some("multipart/form-data"), ONE_CLICK),
            Err(FormError::NoBoundary)
        );
        assert_eq!(
            fields(Some("multipart/form-data; boundary=other"), ONE_CLICK),
            Err(FormError::Malformed)
        );
        let unterminated = &ONE_CLICK[..ONE_CLICK.len() - 14];
        assert_eq!(
            fields(Some("multipart/form-data; boundary=AaB03x"), unterminated),
            Err(FormError::Malformed)
        );
        let many =
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n".repeat(100) + "--b--";
        assert_eq!(
            fields(Some("multipart/form-data; boundary=b"), many.as_bytes()),
            Err(FormError::TooManyParts)
        );
    }

    proptest! {
        #[test]
        fn any_body_is_read_or_refused_without_panic(body in proptest::collection::vec(any::<u8>(), 0..400), b in "[a-zA-Z0-9'()+_,./:=? -]{1,70}") {
            let _ = fields(Some(&format!("multipart/form-data; boundary=\"{b}\"")), &body);
        }

        #[test]
        fn fields_written_as_multipart_read_back(values in proptest::collection::vec(("[a-zA-Z-]{1,20}", "[^\r]{0,40}"), 0..5)) {
            let mut body = String::new();
            for (k, v) in &values {
                body.push_str(&format!("--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"));
            }
            body.push_str("--XyZ--\r\n");
            let f = fields(Some("multipart/form-data; boundary=XyZ"), body.as_bytes()).unwrap();
            prop_assert_eq!(f, values);
        }
    }
}
