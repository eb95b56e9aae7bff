//! The HTML shell every page is sent in: the document around the body
//! (language, direction, the one inline style sheet), escaping, the headers
//! that keep a link's key out of referrers, caches and frames, and the page
//! a used, expired or forged link opens.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tarmo_core::codes::Code;
use tarmo_notify::templates::Lang;

use crate::ApiError;

pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Colours keep a contrast of at least 4.5:1 (WCAG 1.4.3), focus is
/// visible (2.4.7) and targets are at least 24 px (2.5.8).
pub(crate) fn page(status: StatusCode, lang: Lang, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"{code}\" dir=\"{dir}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222;background:#fff}}\
button{{font-size:1rem;min-height:2.75rem;padding:.6rem 1.2rem;border-radius:.4rem;border:1px solid #235;background:#235;color:#fff;cursor:pointer}}\
button.danger{{background:#8a1c1c;border-color:#8a1c1c}}\
:focus-visible{{outline:3px solid #b35c00;outline-offset:2px}}\
a{{color:#1a4f8b}}\
.notice{{background:#f4f4f4;padding:.6rem .8rem;border-radius:.3rem;white-space:pre-wrap;margin:.4rem 0}}\
fieldset{{border:1px solid #bbb;border-radius:.4rem;margin:1rem 0;padding:.4rem 1rem .8rem}}\
legend h3{{margin:0;font-size:1.05rem}}\
label{{display:inline-flex;gap:.5rem;align-items:center;margin:.6rem 0;min-height:2.75rem;font-weight:600}}\
input[type=checkbox]{{width:1.5rem;height:1.5rem}}\
dl{{margin:.4rem 0;display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem}}dt{{color:#444;font-weight:600}}dd{{margin:0}}\
.muted{{color:#555;font-size:.95rem}}.status{{background:#e8f3e8;border-inline-start:4px solid #2a6b2a;padding:.5rem .8rem}}\
section{{margin-top:2rem}}</style></head>\
<body><main><h1>{title}</h1>{body}</main></body></html>",
        code = lang.code(),
        dir = lang.dir(),
        title = esc(title),
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

/// Headers for every page: no referrer to other sites (the URL holds the
/// key), no caching, no framing, no scripts. `same-origin` rather than
/// `no-referrer`: under `no-referrer` a browser sends `Origin: null` with
/// the page's own form posts, and `null` is what a sandboxed frame on any
/// site sends too, so the origin check could not tell them apart.
pub(crate) fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The page a link that does not work (any more) opens, in words for
/// people; any other error keeps the API's shape.
pub(crate) fn error_page(e: ApiError, lang: Lang) -> Response {
    let t = lang.page();
    let msg = match e.code {
        Code::TokenUsed => t.used,
        Code::TokenExpired => t.expired,
        Code::TokenUnknown | Code::LinkInvalid => t.invalid,
        _ => return e.into_response(),
    };
    page(e.status, lang, msg, "")
}
