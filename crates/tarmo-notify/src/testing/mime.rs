//! Just enough MIME to check what a mailer sent: unfolded headers, RFC 2047
//! encoded words, multipart bodies, and the quoted-printable and base64
//! transfer encodings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A leaf of a MIME message: its headers and its decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// Unfolded headers in order, values as sent (not RFC 2047-decoded).
    pub headers: Vec<(String, String)>,
    /// `type/subtype`, lower-cased; `text/plain` when the header is missing.
    pub content_type: String,
    pub charset: Option<String>,
    /// `Content-Transfer-Encoding`, lower-cased; `7bit` when missing.
    pub transfer_encoding: String,
    /// The body with its transfer encoding undone.
    pub body: Vec<u8>,
}

impl MimePart {
    /// The body as text, with CRLF line ends turned into LF (the transfer
    /// encodings carry line ends as CRLF whatever the sender wrote).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).replace("\r\n", "\n")
    }
}

/// Splits a message or part into its header block and its body.
pub(crate) fn split_head_body(raw: &[u8]) -> (&[u8], &[u8]) {
    if raw.starts_with(b"\r\n") {
        return (&[], &raw[2..]);
    }
    if raw.starts_with(b"\n") {
        return (&[], &raw[1..]);
    }
    let crlf = find(raw, b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = find(raw, b"\n\n").map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) if b.0 < a.0 => (&raw[..b.0], &raw[b.1..]),
        (Some((end, start)), _) | (None, Some((end, start))) => (&raw[..end], &raw[start..]),
        (None, None) => (raw, &[]),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a header block, unfolding continuation lines (RFC 5322 §2.2.3:
/// the line break is removed, the whitespace kept).
pub(crate) fn parse_headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim_start().to_owned()));
        }
    }
    for (_, value) in &mut headers {
        value.truncate(value.trim_end().len());
    }
    headers
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The leaves of a MIME entity, depth first, in order.
pub(crate) fn leaves(raw: &[u8]) -> Vec<MimePart> {
    let mut out = Vec::new();
    collect(raw, &mut out, 0);
    out
}

fn collect(raw: &[u8], out: &mut Vec<MimePart>, depth: usize) {
    let (head, body) = split_head_body(raw);
    let headers = parse_headers(head);
    let (content_type, params) = header(&headers, "Content-Type")
        .map(parse_content_type)
        .unwrap_or_else(|| ("text/plain".to_owned(), Vec::new()));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if content_type.starts_with("multipart/")
        && depth < 8
        && let Some(boundary) = param("boundary")
    {
        for part in split_multipart(body, &boundary) {
            collect(part, out, depth + 1);
        }
        return;
    }
    let transfer_encoding = header(&headers, "Content-Transfer-Encoding")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".to_owned());
    let body = match transfer_encoding.as_str() {
        "base64" => decode_base64(body).unwrap_or_else(|| body.to_vec()),
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.to_vec(),
    };
    out.push(MimePart {
        charset: param("charset"),
        headers,
        content_type,
        transfer_encoding,
        body,
    });
}

/// `type/subtype; key=value; key="quoted value"` → lower-cased type and the
/// parameters.
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => current.extend(chars.next()),
            ';' if !quoted => pieces.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    pieces.push(current);
    let mut pieces = pieces.into_iter();
    let kind = pieces
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let params = pieces
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    (kind, params)
}

/// The body parts between `--boundary` lines (RFC 2046 §5.1.1: the line
/// break before a delimiter belongs to the delimiter).
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut part_start = None;
    let mut line_start = 0;
    while line_start < body.len() {
        let line_end = body[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| line_start + i);
        let line = String::from_utf8_lossy(&body[line_start..line_end]);
        let line = line.trim_end();
        let next = (line_end + 1).min(body.len());
        if line == delimiter || line == closing {
            if let Some(start) = part_start {
                let mut end = line_start;
                if end > start && body[end - 1] == b'\n' {
                    end -= 1;
                    if end > start && body[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                parts.push(&body[start..end.max(start)]);
            }
            if line == closing {
                break;
            }
            part_start = Some(next);
        }
        line_start = next;
    }
    parts
}

fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(compact).ok()
}

fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'=' {
            if body[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if body[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let Some(byte) = body.get(i + 1..i + 3).and_then(hex_byte) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) in a
/// header value. Whitespace between adjacent encoded words is dropped, and
/// their bytes are joined before decoding, so a character split across two
/// words survives. Charsets other than UTF-8, US-ASCII and ISO-8859-1 are
/// left encoded.
pub(crate) fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    // Bytes of adjacent encoded words, and whether they are ISO-8859-1.
    let mut pending: Option<(Vec<u8>, bool)> = None;
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        match parse_encoded_word(&rest[start..]) {
            Some((bytes, latin1, len)) => {
                match &mut pending {
                    // RFC 2047 §6.2: whitespace between encoded words is not content.
                    Some((buf, l)) if before.trim().is_empty() && *l == latin1 => {
                        buf.extend(bytes);
                    }
                    Some(_) if before.trim().is_empty() => {
                        flush(&mut out, pending.take());
                        pending = Some((bytes, latin1));
                    }
                    _ => {
                        flush(&mut out, pending.take());
                        out.push_str(before);
                        pending = Some((bytes, latin1));
                    }
                }
                rest = &rest[start + len..];
            }
            None => {
                flush(&mut out, pending.take());
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
            }
        }
    }
    flush(&mut out, pending.take());
    out.push_str(rest);
    out
}

fn flush(out: &mut String, pending: Option<(Vec<u8>, bool)>) {
    match pending {
        Some((bytes, true)) => out.extend(bytes.iter().map(|&b| b as char)),
        Some((bytes, false)) => out.push_str(&String::from_utf8_lossy(&bytes)),
        None => {}
    }
}

/// Parses one encoded word at the start of `s`: its decoded bytes, whether
/// they are ISO-8859-1, and its length in `s`.
fn parse_encoded_word(s: &str) -> Option<(Vec<u8>, bool, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (charset, rest) = inner.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let text = &rest[..end];
    if text.contains([' ', '\t', '\r', '\n']) {
        return None;
    }
    // RFC 2231 allows a language after the charset: `utf-8*fi`.
    let latin1 = match charset.split('*').next()?.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" | "us-ascii" => false,
        "iso-8859-1" | "latin1" => true,
        _ => return None,
    };
    let bytes = match encoding {
        "b" | "B" => STANDARD.decode(text).ok()?,
        "q" | "Q" => {
            let spaced: Vec<u8> = text
                .bytes()
                .map(|b| if b == b'_' { b' ' } else { b })
                .collect();
            decode_quoted_printable(&spaced)
        }
        _ => return None,
    };
    let len = "=?".len() + charset.len() + 1 + encoding.len() + 1 + end + "?=".len();
    Some((bytes, latin1, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_words() {
        assert_eq!(decode_encoded_words("plain text"), "plain text");
        assert_eq!(
            decode_encoded_words("=?utf-8?b?SHl2w6Qgw6RpdGk=?="),
            "Hyvä äiti"
        );
        assert_eq!(
            decode_encoded_words("=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus?= Berlin"),
            "Grüße aus Berlin"
        );
        // Adjacent words: the folding whitespace goes, a split character survives.
        assert_eq!(
            decode_encoded_words("=?utf-8?b?w6Q=?= =?utf-8?b?w7Y=?="),
            "äö"
        );
        assert_eq!(
            decode_encoded_words("=?utf-8?q?=C3?=\r\n =?utf-8?q?=A4?="),
            "ä"
        );
        assert_eq!(decode_encoded_words("a =?utf-8?q?=C3=A4?= b"), "a ä b");
        assert_eq!(decode_encoded_words("=?iso-8859-1?q?=E4?="), "ä");
        assert_eq!(
            decode_encoded_words("=?koi8-r?b?AAA=?="),
            "=?koi8-r?b?AAA=?="
        );
        assert_eq!(decode_encoded_words("odd =? text"), "odd =? text");
    }

    #[test]
    fn headers_unfold() {
        let headers = parse_headers(b"Subject: one\r\n two\r\nX-A:  b \r\n");
        assert_eq!(
            headers,
            vec![
                ("Subject".into(), "one two".into()),
                ("X-A".into(), "b".into())
            ]
        );
    }

    #[test]
    fn quoted_printable() {
        assert_eq!(
            decode_quoted_printable(b"a=3Db=\r\nc=C3=A4"),
            "a=bcä".as_bytes()
        );
        assert_eq!(decode_quoted_printable(b"50=25 =ZZ"), b"50% =ZZ");
    }

    #[test]
    fn multipart() {
        let raw = b"Content-Type: multipart/alternative; boundary=\"b;1\"\r\n\r\n\
            preamble\r\n--b;1\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\nHyv=C3=A4\r\nrivi\r\n\
            --b;1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\
            PHA+aGk8L3A+\r\n--b;1--\r\nepilogue";
        let parts = leaves(raw);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].content_type, "text/plain");
        assert_eq!(parts[0].charset.as_deref(), Some("utf-8"));
        assert_eq!(parts[0].text(), "Hyvä\nrivi");
        assert_eq!(parts[1].content_type, "text/html");
        assert_eq!(parts[1].text(), "<p>hi</p>");
    }
}
