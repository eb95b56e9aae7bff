//! The pages people open from Tarmo's messages: confirm a subscription,
//! unsubscribe, and see and change what they allowed. No login and no
//! cookies: the link is the key. A GET never changes anything (mail scanners
//! fetch links); the person's button press is a POST. Each page is sent with
//! headers that keep the link out of referrers, caches and frames.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tarmo_core::codes::Code;
use tarmo_core::ids::ProfileId;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tarmo_core::consent::{Channel, ConsentDecision, LegalBasis, Method, decide};
use tarmo_notify::pages::{fill_days, fill_org, tag_is_rtl};
use tarmo_notify::templates::Lang;
use tarmo_store::automations::{preferences_language, preferences_scope};
use tarmo_store::consent::{self as ledger, NewEntry};
use tarmo_store::doi;
use tarmo_store::links::{self, SignedLink};
use tarmo_store::now_ms;

use crate::{ApiError, AppState, ErrorBody, blocking};

/// The preference page's link kind; marketing messages made in the store
/// carry the same links.
pub use tarmo_store::automations::PREFERENCES_LINK;
/// How long a preference link works.
pub const PREFERENCES_TTL_MS: i64 = 90 * 86_400_000;

/// The page's language: the person's own language when known, else the
/// browser's `Accept-Language` by weight, else English.
fn lang_for(own: Option<&str>, headers: &HeaderMap) -> Lang {
    Lang::for_person(
        own,
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Text an operator wrote in language `tag`, inside element `el`: when it
/// is not in the page's language (a fallback), the element says which
/// language and direction it is in, so that a screen reader reads it in its
/// own voice and its full stop stays at its end inside a right-to-left page.
fn in_lang(page: Lang, tag: &str, el: &str, attrs: &str, text: &str) -> String {
    if Lang::supported(tag) == Some(page) {
        format!("<{el}{attrs}>{}</{el}>", esc(text))
    } else {
        format!(
            "<{el}{attrs} lang=\"{}\" dir=\"{}\">{}</{el}>",
            esc(tag),
            if tag_is_rtl(tag) { "rtl" } else { "ltr" },
            esc(text)
        )
    }
}

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
fn page(status: StatusCode, lang: Lang, title: &str, body: &str) -> Response {
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

fn error_page(e: ApiError, lang: Lang) -> Response {
    let t = lang.page();
    let msg = match e.code {
        Code::TokenUsed => t.used,
        Code::TokenExpired => t.expired,
        Code::TokenUnknown | Code::LinkInvalid => t.invalid,
        _ => return e.into_response(),
    };
    page(e.status, lang, msg, "")
}

/// Where the person's request came from, as evidence: the socket's address,
/// and a proxy's `X-Forwarded-For` when there is one.
fn evidence(headers: &HeaderMap, peer: Option<SocketAddr>) -> Map<String, Value> {
    let mut m = crate::consent::evidence_of(
        peer.map(|p| p.ip().to_string()),
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if let Some(f) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        m.insert(
            "forwarded_for".into(),
            Value::String(f.chars().take(200).collect()),
        );
    }
    m
}

fn gpc(headers: &HeaderMap) -> bool {
    headers
        .get("sec-gpc")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1")
}

/// `application/x-www-form-urlencoded` pairs.
fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The peer's socket address, when the server was started with connection
/// info (`tarmo serve` is; an in-process test router may not be).
pub struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(crate::tls::peer_of(&parts.extensions)))
    }
}

// ------------------------------------------------------------- confirmation

/// The confirmation page a double opt-in message links to. Changes nothing.
#[utoipa::path(get, path = "/c/{token}", tag = "pages",
    params(("token" = String, Path, description = "The confirmation link's token")),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 404, content_type = "text/html", body = String),
        (status = 410, content_type = "text/html", body = String, description = "Used or expired")))]
pub async fn confirm_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let store = s.store.clone();
    let t = token.clone();
    let pending = match blocking(move || doi::peek(&mut *store.conn()?, &t, now_ms())).await {
        Ok(p) => p,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(Some(&pending.data.language), &headers);
    let t = lang.page();
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let store = s.store.clone();
    let purposes = pending.data.purposes.clone();
    let language = lang.code().to_owned();
    let notices = blocking(move || {
        let mut c = store.conn()?;
        purposes
            .iter()
            .map(|(p, v)| {
                let texts = ledger::notice_texts(&mut *c, p, v)?.unwrap_or_default();
                let text = tarmo_core::consent::purpose::notice_text(&texts, &language)
                    .map(|(l, x)| (l.to_owned(), x.to_owned()));
                Ok((p.clone(), text))
            })
            .collect::<tarmo_store::Result<Vec<_>>>()
    })
    .await;
    let notices = match notices {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let mut body = format!("<p>{}</p>", esc(t.confirm_lead));
    for (p, text) in notices {
        let (name_lang, name) = catalog
            .get(&p)
            .map_or(("en", p.as_str()), |c| c.spec.name_in(lang.code()));
        body.push_str(&in_lang(lang, name_lang, "h2", "", name));
        if let Some((l, text)) = text {
            body.push_str(&in_lang(lang, &l, "p", " class=\"notice\"", &text));
        }
    }
    let _ = write!(
        body,
        "<form method=\"post\"><button type=\"submit\">{}</button></form>",
        esc(t.confirm_button)
    );
    page(StatusCode::OK, lang, t.confirm_title, &body)
}

/// The person pressed "confirm": the grant is recorded with this request as
/// evidence, and the link stops working.
#[utoipa::path(post, path = "/c/{token}", tag = "pages",
    params(("token" = String, Path, description = "The confirmation link's token")),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 404, content_type = "text/html", body = String),
        (status = 410, content_type = "text/html", body = String, description = "Used or expired")))]
pub async fn confirm_post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
) -> Response {
    let ev = evidence(&headers, peer.0);
    let confirmed = s.transact(move |ctx| doi::confirm(ctx, &token, ev)).await;
    let c = match confirmed {
        Ok(c) => c,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(Some(&c.language), &headers);
    let t = lang.page();
    let link = preference_url(&s, c.profile_id, Some(lang.code()));
    let body = format!(
        "<p>{}</p><p><a href=\"{}\">{}</a></p>",
        esc(t.confirmed_body),
        esc(&link),
        esc(t.manage)
    );
    page(StatusCode::OK, lang, t.confirmed_title, &body)
}

/// A link to the person's preference page, in their language when known.
pub(crate) fn preference_url(s: &AppState, profile: ProfileId, language: Option<&str>) -> String {
    let token = links::sign_link(
        s.store.vault(),
        PREFERENCES_LINK,
        &SignedLink {
            profile_id: profile,
            scope: preferences_scope(language),
            issued_ms: now_ms(),
        },
    );
    format!("{}/p/{token}", s.config.public_url)
}

// -------------------------------------------------------------- unsubscribe

fn open_unsubscribe(s: &AppState, token: &str) -> Result<SignedLink, ApiError> {
    links::open_link(s.store.vault(), doi::UNSUBSCRIBE_LINK, token)
        .ok_or_else(|| ApiError::new(Code::LinkInvalid, "this link is not valid"))
}

/// The page behind `List-Unsubscribe`: one button. Changes nothing.
#[utoipa::path(get, path = "/u/{token}", tag = "pages",
    params(("token" = String, Path, description = "The unsubscribe link's signed token")),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, content_type = "text/html", body = String)))]
pub async fn unsubscribe_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let lang = lang_for(None, &headers);
    let link = match open_unsubscribe(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, lang),
    };
    let t = lang.page();
    let name = match s.catalog().await {
        Ok(c) => c.get(&link.scope).map_or_else(
            || in_lang(lang, "en", "strong", "", &link.scope),
            |c| {
                let (l, n) = c.spec.name_in(lang.code());
                in_lang(lang, l, "strong", "", n)
            },
        ),
        Err(e) => return e.into_response(),
    };
    let body = format!(
        "<p>{name}</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">{}</button></form>",
        esc(t.unsub_button)
    );
    page(StatusCode::OK, lang, t.unsub_title, &body)
}

/// RFC 8058 one-click unsubscribe (`List-Unsubscribe=One-Click`, posted by
/// the mail client), and the page's button: withdraws at once.
#[utoipa::path(post, path = "/u/{token}", tag = "pages",
    params(("token" = String, Path, description = "The unsubscribe link's signed token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "List-Unsubscribe=One-Click"),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 400, body = ErrorBody), (status = 404, content_type = "text/html", body = String)))]
pub async fn unsubscribe_post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let lang = lang_for(None, &headers);
    let link = match open_unsubscribe(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, lang),
    };
    // Mailbox providers post multipart/form-data (RFC 8058 §3.1) or the
    // urlencoded form; the page's own button posts the latter.
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let one_click = crate::form::fields(ctype, &body).is_ok_and(|f| {
        f.iter()
            .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click")
    });
    if !one_click {
        return ApiError::new(
            Code::InvalidUnsubscribe,
            "post List-Unsubscribe=One-Click (RFC 8058)",
        )
        .into_response();
    }
    let ev = evidence(&headers, peer.0);
    if let Err(e) = s
        .transact(move |ctx| doi::unsubscribe(ctx, &link, ev))
        .await
    {
        return e.into_response();
    }
    page(StatusCode::OK, lang, lang.page().unsubscribed, "")
}

// -------------------------------------------------------------- preferences

/// A preference link's profile and the person's own language, when the link
/// names one.
fn open_preferences(s: &AppState, token: &str) -> Result<(ProfileId, Option<String>), ApiError> {
    links::open_link(s.store.vault(), PREFERENCES_LINK, token)
        .filter(|l| now_ms() - l.issued_ms < PREFERENCES_TTL_MS)
        .and_then(|l| {
            let own = preferences_language(&l.scope)?.map(str::to_owned);
            Some((l.profile_id, own))
        })
        .ok_or_else(|| ApiError::new(Code::LinkInvalid, "this link is not valid"))
}

/// How the page shows a purpose: consent is given and withdrawn with a box;
/// legitimate interests (and direct marketing on any basis other than
/// consent) are objected to (Art. 21), never "consented"; a contract or a
/// legal duty is only explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Consent,
    Objection,
    Necessary,
}

fn group(c: &ledger::CatalogEntry) -> Group {
    if c.rule.basis == LegalBasis::Consent {
        Group::Consent
    } else if c.rule.basis.objectionable() || c.rule.direct_marketing {
        Group::Objection
    } else {
        Group::Necessary
    }
}

async fn record_gpc_if_sent(
    s: &AppState,
    headers: &HeaderMap,
    profile: ProfileId,
    ev: Map<String, Value>,
) -> Result<bool, ApiError> {
    if !gpc(headers) {
        return Ok(false);
    }
    s.transact(move |ctx| {
        let Some(p) = doi::current_profile(ctx.conn, profile)? else {
            return Ok(0);
        };
        ledger::record_gpc(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            p,
            "Sec-GPC header, preference page",
            &ev,
            ctx.now_ms,
        )
    })
    .await?;
    Ok(true)
}

/// Words for ids (data categories, channels): the page's own word when it
/// has one, else the id in plain letters, marked as English.
fn words<'a>(
    lang: Lang,
    ids: impl Iterator<Item = &'a str>,
    word: impl Fn(Lang, &str) -> Option<&'static str>,
) -> String {
    ids.map(|id| match word(lang, id) {
        Some(w) => esc(w),
        None => in_lang(lang, "en", "span", "", &id.replace('_', " ")),
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// What is done for a purpose, with which data, by which channels, shared
/// with whom and kept how long.
fn purpose_details(
    lang: Lang,
    c: &ledger::CatalogEntry,
    processors: &[tarmo_store::processors::ProcessorView],
) -> String {
    let t = lang.page();
    let mut o = String::new();
    if let Some((l, x)) = c.spec.notice_text(lang.code()) {
        o.push_str(&in_lang(lang, l, "p", " class=\"notice\"", x));
    }
    if let Some((l, x)) = c.spec.description_in(lang.code()) {
        o.push_str(&in_lang(lang, l, "p", "", x));
    }
    o.push_str("<dl>");
    if !c.spec.data_categories.is_empty() {
        let _ = write!(
            o,
            "<dt>{}</dt><dd>{}</dd>",
            esc(t.held_label),
            words(
                lang,
                c.spec.data_categories.iter().map(|d| d.as_str()),
                Lang::data_category
            )
        );
    }
    if !c.spec.channels.is_empty() {
        let _ = write!(
            o,
            "<dt>{}</dt><dd>{}</dd>",
            esc(t.channels_label),
            words(
                lang,
                c.spec.channels.iter().map(|ch| ch.as_str()),
                Lang::channel
            )
        );
    }
    let recipients: Vec<String> = processors
        .iter()
        .filter(|p| p.purposes.iter().any(|x| x == c.id.as_str()))
        .map(|p| {
            // Operator-written, in no known language: isolated so that
            // its direction does not disturb the sentence around it.
            format!(
                "<bdi>{}</bdi> (<bdi>{}</bdi>, {})",
                esc(&p.name),
                esc(&p.role),
                esc(&p.country)
            )
        })
        .collect();
    let _ = write!(
        o,
        "<dt>{}</dt><dd>{}</dd></dl><p class=\"muted\">{}</p>",
        esc(t.recipients_label),
        if recipients.is_empty() {
            esc(t.recipients_none)
        } else {
            recipients.join("; ")
        },
        esc(&fill_days(t.retention, c.spec.retention_days))
    );
    o
}

struct PersonNow {
    states: Vec<(String, tarmo_core::consent::ConsentState)>,
    flags: tarmo_core::consent::ProfileFlags,
    processors: Vec<tarmo_store::processors::ProcessorView>,
}

impl PersonNow {
    fn state_of(&self, c: &ledger::CatalogEntry) -> Option<&tarmo_core::consent::ConsentState> {
        self.states
            .iter()
            .find(|(p, _)| p == c.id.as_str())
            .map(|x| &x.1)
    }
}

/// The value of one channel's box: `purpose:channel`.
fn channel_value(purpose: &str, c: Channel) -> String {
    format!("{purpose}:{}", c.as_str())
}

/// One box per channel of a purpose reaching the person by more than one:
/// unticking one stops that channel and keeps the others. Ticked unless the
/// person switched it off; saved with the purpose's box ticked (a purpose
/// switched off keeps its channels' choices for when it is on again).
fn channel_boxes(
    lang: Lang,
    c: &ledger::CatalogEntry,
    st: Option<&tarmo_core::consent::ConsentState>,
) -> String {
    if c.spec.channels.len() < 2 {
        return String::new();
    }
    // The hidden field says the boxes were on the page, so that a form
    // without them (an older page, a script) leaves the channels alone.
    let mut o = format!(
        "<fieldset class=\"channels\"><legend>{}</legend><input type=\"hidden\" name=\"channels_shown\" value=\"{}\">",
        esc(lang.page().channel_choice),
        esc(c.id.as_str())
    );
    for &ch in &c.spec.channels {
        let off = st.is_some_and(|s| s.channel_off(ch));
        let _ = write!(
            o,
            "<label><input type=\"checkbox\" name=\"channel\" value=\"{}\"{}> {}</label>",
            esc(&channel_value(c.id.as_str(), ch)),
            if off { "" } else { " checked" },
            esc(lang.channel(ch.as_str()).unwrap_or(ch.as_str()))
        );
    }
    o.push_str("</fieldset>");
    o
}

async fn render_preferences(
    s: &AppState,
    profile: ProfileId,
    token: &str,
    lang: Lang,
    gpc_seen: bool,
    saved: bool,
) -> Response {
    let t = lang.page();
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let store = s.store.clone();
    let read = blocking(move || {
        let mut c = store.conn()?;
        let Some(p) = doi::current_profile(&mut *c, profile)? else {
            return Ok(None);
        };
        Ok(Some(PersonNow {
            states: ledger::states(&mut *c, p)?,
            flags: ledger::flags(&mut *c, p)?,
            processors: tarmo_store::processors::list(&mut *c)?,
        }))
    })
    .await;
    let now_state = match read {
        Ok(Some(x)) => x,
        Ok(None) => return error_page(ApiError::new(Code::LinkInvalid, ""), lang),
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let entries = catalog.entries();
    let of = |g: Group| entries.iter().filter(move |c| group(c) == g);
    let allowed = |c: &ledger::CatalogEntry| {
        let st = now_state
            .states
            .iter()
            .find(|(p, _)| p == c.id.as_str())
            .map(|x| x.1);
        decide(&c.rule, None, st.as_ref(), now_state.flags, now).allowed
    };
    let purpose_head = |c: &ledger::CatalogEntry| {
        let (l, name) = c.spec.name_in(lang.code());
        format!("<legend>{}</legend>", in_lang(lang, l, "h3", "", name))
    };
    let mut body = String::new();
    if saved {
        let _ = write!(
            body,
            "<p class=\"status\" role=\"status\">{}</p>",
            esc(t.prefs_saved)
        );
    }
    if gpc_seen {
        let _ = write!(body, "<p class=\"muted\">{}</p>", esc(t.gpc_note));
    }
    let _ = write!(body, "<p>{}</p><form method=\"post\">", esc(t.prefs_lead));
    if of(Group::Consent).next().is_some() {
        let _ = write!(body, "<section><h2>{}</h2>", esc(t.consents_title));
        for c in of(Group::Consent) {
            let _ = write!(
                body,
                "<fieldset>{}{}<label><input type=\"checkbox\" name=\"purpose\" value=\"{id}\"{checked}> {}</label>{}</fieldset>",
                purpose_head(c),
                purpose_details(lang, c, &now_state.processors),
                esc(t.allow_label),
                channel_boxes(lang, c, now_state.state_of(c)),
                id = esc(c.id.as_str()),
                checked = if allowed(c) { " checked" } else { "" },
            );
        }
        body.push_str("</section>");
    }
    if of(Group::Objection).next().is_some() {
        let _ = write!(
            body,
            "<section><h2>{}</h2><p>{}</p>",
            esc(t.objections_title),
            esc(t.objections_lead)
        );
        for c in of(Group::Objection) {
            let control = if allowed(c) {
                format!(
                    "<label><input type=\"checkbox\" name=\"object\" value=\"{}\"> {}</label>",
                    esc(c.id.as_str()),
                    esc(t.object_label)
                )
            } else {
                format!("<p><strong>{}</strong></p>", esc(t.objected_note))
            };
            let _ = write!(
                body,
                "<fieldset>{}{}{control}</fieldset>",
                purpose_head(c),
                purpose_details(lang, c, &now_state.processors),
            );
        }
        body.push_str("</section>");
    }
    let _ = write!(
        body,
        "<p><button type=\"submit\">{}</button></p></form>",
        esc(t.prefs_save)
    );
    if of(Group::Necessary).next().is_some() {
        let _ = write!(
            body,
            "<section><h2>{}</h2><p>{}</p>",
            esc(t.necessary_title),
            esc(t.necessary_lead)
        );
        for c in of(Group::Necessary) {
            let (l, name) = c.spec.name_in(lang.code());
            body.push_str(&in_lang(lang, l, "h3", "", name));
            body.push_str(&purpose_details(lang, c, &now_state.processors));
        }
        body.push_str("</section>");
    }
    body.push_str(&controller_section(s, lang));
    body.push_str(&rights_section(lang, token));
    page(StatusCode::OK, lang, t.prefs_title, &body)
}

/// Who the controller is and how to reach them (and their DPO), from the
/// configuration.
fn controller_section(s: &AppState, lang: Lang) -> String {
    let t = lang.page();
    let mut o = format!(
        "<section><h2>{}</h2><p>{}</p>",
        esc(t.controller_title),
        fill_org(
            &esc(t.controller_body),
            &format!("<bdi>{}</bdi>", esc(&s.config.organisation))
        )
    );
    let contacts = [
        (t.contact_label, s.config.controller_contact.as_deref()),
        (t.dpo_label, s.config.dpo_contact.as_deref()),
    ];
    if contacts.iter().any(|c| c.1.is_some()) {
        o.push_str("<dl>");
        for (label, value) in contacts {
            if let Some(v) = value {
                let _ = write!(o, "<dt>{}</dt><dd><bdi>{}</bdi></dd>", esc(label), esc(v));
            }
        }
        o.push_str("</dl>");
    }
    o.push_str("</section>");
    o
}

/// The person's preference page: what is done with their data, by whom,
/// and what they allow or object to. A `Sec-GPC: 1` header is recorded as
/// an opt-out of sale and sharing.
#[utoipa::path(get, path = "/p/{token}", tag = "pages",
    params(("token" = String, Path, description = "The preference link's signed token")),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, content_type = "text/html", body = String)))]
pub async fn preferences_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
) -> Response {
    let (profile, own) = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(own.as_deref(), &headers);
    let ev = evidence(&headers, peer.0);
    let gpc_seen = match record_gpc_if_sent(&s, &headers, profile, ev).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    render_preferences(&s, profile, &token, lang, gpc_seen, false).await
}

/// Save the person's choices: each change is a ledger entry (method
/// `preference_center`), in effect at once. A purpose the page does not
/// offer for that change is refused and nothing is saved.
#[utoipa::path(post, path = "/p/{token}", tag = "pages",
    params(("token" = String, Path, description = "The preference link's signed token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "purpose=<id> for each purpose resting on consent that is allowed; channel=<id>:<channel> for each channel kept of such a purpose with several channels (unticked: that channel is switched off); object=<id> for each purpose on legitimate interests objected to"),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 400, body = ErrorBody), (status = 404, content_type = "text/html", body = String)))]
pub async fn preferences_post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (profile, own) = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(own.as_deref(), &headers);
    let fields = form(&body);
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    for (k, v) in &fields {
        let want = match k.as_str() {
            "purpose" => Group::Consent,
            "object" => Group::Objection,
            _ => continue,
        };
        if catalog.get(v).map(group) != Some(want) {
            return ApiError::new(
                Code::UnknownPurpose,
                "purpose= names a purpose resting on consent, object= one that may be objected to",
            )
            .into_response();
        }
    }
    for (_, v) in fields.iter().filter(|(k, _)| k == "channel") {
        if let Err(e) = channel_field(&catalog, v) {
            return e.into_response();
        }
    }
    let ev = evidence(&headers, peer.0);
    // GPC first, so that the person's explicit choice below stands over it.
    let gpc_seen = match record_gpc_if_sent(&s, &headers, profile, ev.clone()).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let saved = s
        .transact(move |ctx| {
            let Some(p) = doi::current_profile(ctx.conn, profile)? else {
                return Ok(());
            };
            let flags = ledger::flags(ctx.conn, p)?;
            let named = |k: &str, id: &str| fields.iter().any(|(fk, v)| fk == k && v == id);
            let mut entries = Vec::new();
            for c in ctx.catalog.entries() {
                let st = ledger::state(ctx.conn, p, c.id.as_str())?;
                let on = decide(&c.rule, None, st.as_ref(), flags, ctx.now_ms).allowed;
                let decision = match group(c) {
                    Group::Consent => match (on, named("purpose", c.id.as_str())) {
                        (false, true) => ConsentDecision::Granted,
                        (true, false) => ConsentDecision::Withdrawn,
                        _ => continue,
                    },
                    // Lifting an objection is not offered: it would be a
                    // consent in all but name.
                    Group::Objection if on && named("object", c.id.as_str()) => {
                        ConsentDecision::Objected
                    }
                    _ => continue,
                };
                entries.push(NewEntry {
                    channel: None,
                    profile_id: p,
                    purpose: c.id.to_string(),
                    decision,
                    method: Method::PreferenceCenter,
                    notice_version: None,
                    at_ms: None,
                    source: "preference page".into(),
                    evidence: ev.clone(),
                });
            }
            // The channels of each purpose kept (or given) on this save: a
            // box unticked switches its channel off, one ticked again back
            // on. A purpose switched off keeps its channels as they were.
            for c in ctx.catalog.entries() {
                if group(c) != Group::Consent
                    || c.spec.channels.len() < 2
                    || !named("purpose", c.id.as_str())
                    || !named("channels_shown", c.id.as_str())
                {
                    continue;
                }
                let st = ledger::state(ctx.conn, p, c.id.as_str())?;
                for &ch in &c.spec.channels {
                    let off = st.is_some_and(|s| s.channel_off(ch));
                    let want = named("channel", &channel_value(c.id.as_str(), ch));
                    let decision = match (off, want) {
                        (true, true) => ConsentDecision::Granted,
                        (false, false) => ConsentDecision::Withdrawn,
                        _ => continue,
                    };
                    entries.push(NewEntry {
                        channel: Some(ch),
                        profile_id: p,
                        purpose: c.id.to_string(),
                        decision,
                        method: Method::PreferenceCenter,
                        notice_version: None,
                        at_ms: None,
                        source: "preference page".into(),
                        evidence: ev.clone(),
                    });
                }
            }
            ledger::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        return e.into_response();
    }
    render_preferences(&s, profile, &token, lang, gpc_seen, true).await
}

/// A `channel=purpose:channel` field of the preference form, checked
/// against the catalog: a purpose on consent that reaches people by more
/// than one channel, one of them.
fn channel_field(catalog: &ledger::Catalog, v: &str) -> Result<(), ApiError> {
    let (purpose, name) = v.split_once(':').unwrap_or((v, ""));
    let c = catalog
        .get(purpose)
        .filter(|c| group(c) == Group::Consent && c.spec.channels.len() > 1)
        .ok_or_else(|| {
            ApiError::new(
                Code::UnknownPurpose,
                "channel= names purpose:channel of a purpose on consent with several channels",
            )
        })?;
    let ch = Channel::parse(name)?;
    if !c.rule.covers(ch) {
        return Err(ApiError::new(
            Code::ChannelNotCovered,
            format!(
                "purpose `{purpose}` does not reach anyone by `{}`",
                ch.as_str()
            ),
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------- GPC

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GpcSupport {
    gpc: bool,
    #[serde(rename = "lastUpdate")]
    last_update: &'static str,
}

/// The Global Privacy Control support resource.
#[utoipa::path(get, path = "/.well-known/gpc.json", tag = "pages",
    responses((status = 200, body = GpcSupport)))]
pub async fn gpc_json() -> axum::Json<GpcSupport> {
    axum::Json(GpcSupport {
        gpc: true,
        last_update: "2026-11-26",
    })
}

// -------------------------------------------------------- self-service rights

pub const DOWNLOAD_LINK: &str = "request download";
/// How long the download link of a person's own data works.
pub const DOWNLOAD_TTL_MS: i64 = 7 * 86_400_000;

/// The "your data" part of the preference page: download, erase.
fn rights_section(lang: Lang, token: &str) -> String {
    let t = lang.page();
    format!(
        "<section><h2>{}</h2><p>{}</p><form method=\"post\" action=\"/p/{tk}/request\"><input type=\"hidden\" name=\"type\" value=\"access\">\
<p><button type=\"submit\">{}</button></p></form>\
<form method=\"post\" action=\"/p/{tk}/request\"><input type=\"hidden\" name=\"type\" value=\"erasure\">\
<p class=\"muted\">{}</p><p><button type=\"submit\" class=\"danger\">{}</button></p></form></section>",
        esc(t.rights_title),
        esc(t.rights_lead),
        esc(t.access_button),
        esc(t.erase_note),
        esc(t.erase_button),
        tk = esc(token)
    )
}

/// A request for access or erasure from the person's own page. A link to
/// confirm it goes to their address on record; nothing on the page says
/// whether or what data is held.
#[utoipa::path(post, path = "/p/{token}/request", tag = "pages",
    params(("token" = String, Path, description = "The preference link's signed token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "type=access or type=erasure"),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 400, body = ErrorBody), (status = 404, content_type = "text/html", body = String)))]
pub async fn self_service_request(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (profile, own) = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(own.as_deref(), &headers);
    let kind = match form(&body)
        .into_iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v)
        .as_deref()
    {
        Some("access") => tarmo_store::requests::RequestKind::Access,
        Some("erasure") => tarmo_store::requests::RequestKind::Erasure,
        _ => {
            return ApiError::new(Code::UnknownRequestType, "type=access or type=erasure")
                .into_response();
        }
    };
    let ttl = s.config.token_ttl.as_millis() as i64;
    let language = lang.code().to_owned();
    let created = s
        .transact(move |ctx| {
            let Some(p) = doi::current_profile(ctx.conn, profile)? else {
                return Ok(());
            };
            let Some((kind_name, value)) =
                tarmo_store::requests::contact_of(ctx.conn, ctx.vault, p)?
            else {
                return Ok(());
            };
            let bidx = ctx.vault.blind_index(&kind_name, &value);
            let kind_id = if kind_name == "email" {
                tarmo_core::identity::IdentifierKind::Email
            } else {
                tarmo_core::identity::IdentifierKind::Phone
            };
            let req = tarmo_store::requests::NewRequest {
                kind,
                subject: tarmo_store::resolve::PreparedIdentifier {
                    kind: kind_id,
                    bidx,
                    value,
                },
                corrected: None,
                purposes: None,
                language,
                origin: "self_service",
                actor: "the person, from their preference page".into(),
            };
            match tarmo_store::requests::create(ctx, req, ttl) {
                // An open request of the same kind: the person is told the
                // same thing; the earlier link still works.
                Err(tarmo_store::Error::Rejected {
                    code: Code::DuplicateRequest,
                    ..
                }) => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await;
    if let Err(e) = created {
        return e.into_response();
    }
    s.outbox_wake();
    let t = lang.page();
    page(
        StatusCode::OK,
        lang,
        t.prefs_title,
        &format!(
            "<p class=\"status\" role=\"status\">{}</p>",
            esc(t.request_sent)
        ),
    )
}

/// The page a request's verification link opens. Changes nothing.
#[utoipa::path(get, path = "/r/{token}", tag = "pages",
    params(("token" = String, Path, description = "The verification link's token")),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 404, content_type = "text/html", body = String),
        (status = 410, content_type = "text/html", body = String)))]
pub async fn verify_request_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let data = match request_token(&s, &token).await {
        Ok(d) => d,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(Some(&data.language), &headers);
    let t = lang.page();
    let what = match lang.request_kind(&data.source) {
        Some(w) => esc(w),
        None => in_lang(lang, "en", "span", "", &data.source),
    };
    let body = format!(
        "<p>{}: <strong>{what}</strong></p><form method=\"post\"><button type=\"submit\">{}</button></form>",
        esc(t.verify_lead.trim_end_matches(':')),
        esc(t.verify_button)
    );
    page(StatusCode::OK, lang, t.confirm_title, &body)
}

/// A request's verification token, looked at without using it.
async fn request_token(
    s: &AppState,
    token: &str,
) -> Result<tarmo_store::links::ConfirmationData, ApiError> {
    let store = s.store.clone();
    let t = token.to_owned();
    blocking(move || {
        tarmo_store::links::find_token(
            &mut *store.conn()?,
            &t,
            tarmo_store::requests::VERIFY_TOKEN,
            now_ms(),
        )
    })
    .await
    .map(|t| t.data)
}

/// The person confirms the request is theirs: it is carried out at once.
/// An access request's page then links to the download of their data.
#[utoipa::path(post, path = "/r/{token}", tag = "pages",
    params(("token" = String, Path, description = "The verification link's token")),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 404, content_type = "text/html", body = String),
        (status = 410, content_type = "text/html", body = String)))]
pub async fn verify_request_post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    // The request's language, read before the token is used up.
    let own = request_token(&s, &token).await.ok().map(|d| d.language);
    let lang = lang_for(own.as_deref(), &headers);
    let done = s
        .transact(move |ctx| tarmo_store::requests::verify_by_link(ctx, &token))
        .await;
    let (id, kind) = match done {
        Ok(x) => x,
        Err(e) => return error_page(e, lang),
    };
    s.notices_wake();
    let t = lang.page();
    let mut body = String::new();
    if kind.has_bundle() {
        let signed = links::sign_link(
            s.store.vault(),
            DOWNLOAD_LINK,
            &SignedLink {
                // A download link names the request where other links
                // name the profile (the token's layout is the same).
                profile_id: ProfileId(id),
                scope: "bundle".into(),
                issued_ms: now_ms(),
            },
        );
        let _ = write!(
            body,
            "<p><a href=\"{}/r/download/{}\">{}</a></p>",
            esc(&s.config.public_url),
            esc(&signed),
            esc(t.download_link)
        );
    }
    page(StatusCode::OK, lang, t.request_confirmed, &body)
}

/// The person's own data, from the link on the page after they confirmed an
/// access request (valid for seven days).
#[utoipa::path(get, path = "/r/download/{token}", tag = "pages",
    params(("token" = String, Path, description = "The download link's signed token")),
    responses((status = 200, content_type = "application/zip", body = Vec<u8>),
        (status = 404, content_type = "text/html", body = String)))]
pub async fn download(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let lang = lang_for(None, &headers);
    let Some(link) = links::open_link(s.store.vault(), DOWNLOAD_LINK, &token)
        .filter(|l| l.scope == "bundle" && now_ms() - l.issued_ms < DOWNLOAD_TTL_MS)
    else {
        return error_page(ApiError::new(Code::LinkInvalid, ""), lang);
    };
    match crate::requests::bundle_for(&s, link.profile_id.0).await {
        Ok(b) => {
            let mut r = crate::requests::bundle_response(&b, link.profile_id.0, Some("zip"))
                .unwrap_or_else(IntoResponse::into_response);
            secure_headers(r.headers_mut());
            r
        }
        Err(e) => error_page(e, lang),
    }
}
