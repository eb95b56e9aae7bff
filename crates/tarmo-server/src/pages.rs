//! The pages people open from Tarmo's messages: confirm a subscription,
//! unsubscribe, and see and change what they allowed. No login and no
//! cookies: the link is the key. A GET never changes anything (mail scanners
//! fetch links); the person's button press is a POST. Each page is sent with
//! headers that keep the link out of referrers, caches and frames.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tarmo_core::consent::{ConsentDecision, LegalBasis, Method, decide};
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

struct Texts {
    dir: &'static str,
    confirm_title: &'static str,
    confirm_lead: &'static str,
    confirm_button: &'static str,
    confirmed_title: &'static str,
    confirmed_body: &'static str,
    used: &'static str,
    expired: &'static str,
    invalid: &'static str,
    unsub_title: &'static str,
    unsub_button: &'static str,
    unsubscribed: &'static str,
    prefs_title: &'static str,
    prefs_lead: &'static str,
    prefs_save: &'static str,
    prefs_saved: &'static str,
    gpc_note: &'static str,
    manage: &'static str,
}

const EN: Texts = Texts {
    dir: "ltr",
    confirm_title: "Please confirm",
    confirm_lead: "You asked to hear from us. Nothing is switched on until you press the button below. You agree to:",
    confirm_button: "Yes, I confirm",
    confirmed_title: "Thank you — confirmed",
    confirmed_body: "Your choice is recorded. You can change your mind at any time.",
    used: "This link was already used. Your earlier choice stands.",
    expired: "This link has expired. Please subscribe again to get a new one.",
    invalid: "This link is not valid.",
    unsub_title: "Unsubscribe",
    unsub_button: "Unsubscribe",
    unsubscribed: "You are unsubscribed. It took effect at once.",
    prefs_title: "Your choices",
    prefs_lead: "Tick what you allow. Untick to withdraw — it takes effect at once.",
    prefs_save: "Save my choices",
    prefs_saved: "Saved. Your choices took effect at once.",
    gpc_note: "Your browser sends a Global Privacy Control signal: we have recorded it as an opt-out of sale and sharing. A choice you make here stands.",
    manage: "See and change all your choices",
};

const FI: Texts = Texts {
    dir: "ltr",
    confirm_title: "Vahvista, kiitos",
    confirm_lead: "Pyysit viestejämme. Mitään ei oteta käyttöön ennen kuin painat alla olevaa painiketta. Hyväksyt:",
    confirm_button: "Kyllä, vahvistan",
    confirmed_title: "Kiitos — vahvistettu",
    confirmed_body: "Valintasi on tallennettu. Voit muuttaa mieltäsi milloin tahansa.",
    used: "Tätä linkkiä on jo käytetty. Aiempi valintasi on voimassa.",
    expired: "Linkki on vanhentunut. Tilaa uudelleen saadaksesi uuden.",
    invalid: "Linkki ei ole kelvollinen.",
    unsub_title: "Peru tilaus",
    unsub_button: "Peru tilaus",
    unsubscribed: "Tilaus on peruttu. Muutos tuli voimaan heti.",
    prefs_title: "Valintasi",
    prefs_lead: "Rastita, mitä sallit. Poista rasti peruaksesi — muutos tulee voimaan heti.",
    prefs_save: "Tallenna valintani",
    prefs_saved: "Tallennettu. Valintasi tulivat voimaan heti.",
    gpc_note: "Selaimesi lähettää Global Privacy Control -signaalin: olemme kirjanneet sen kieltona myydä tai jakaa tietojasi. Tällä sivulla tekemäsi valinta on voimassa.",
    manage: "Katso ja muuta kaikkia valintojasi",
};

const DE: Texts = Texts {
    dir: "ltr",
    confirm_title: "Bitte bestätigen",
    confirm_lead: "Sie möchten von uns hören. Nichts wird aktiviert, bevor Sie auf die Schaltfläche unten klicken. Sie stimmen zu:",
    confirm_button: "Ja, ich bestätige",
    confirmed_title: "Danke — bestätigt",
    confirmed_body: "Ihre Wahl ist gespeichert. Sie können sie jederzeit ändern.",
    used: "Dieser Link wurde bereits verwendet. Ihre frühere Wahl gilt weiter.",
    expired: "Dieser Link ist abgelaufen. Bitte melden Sie sich erneut an.",
    invalid: "Dieser Link ist ungültig.",
    unsub_title: "Abmelden",
    unsub_button: "Abmelden",
    unsubscribed: "Sie sind abgemeldet. Das gilt ab sofort.",
    prefs_title: "Ihre Einstellungen",
    prefs_lead: "Haken Sie an, was Sie erlauben. Entfernen Sie den Haken, um zu widerrufen — das gilt sofort.",
    prefs_save: "Einstellungen speichern",
    prefs_saved: "Gespeichert. Ihre Einstellungen gelten ab sofort.",
    gpc_note: "Ihr Browser sendet ein Global-Privacy-Control-Signal: Wir haben es als Widerspruch gegen Verkauf und Weitergabe erfasst. Eine Wahl, die Sie hier treffen, gilt.",
    manage: "Alle Einstellungen ansehen und ändern",
};

const NB: Texts = Texts {
    dir: "ltr",
    confirm_title: "Vennligst bekreft",
    confirm_lead: "Du ba om å høre fra oss. Ingenting slås på før du trykker på knappen under. Du samtykker til:",
    confirm_button: "Ja, jeg bekrefter",
    confirmed_title: "Takk — bekreftet",
    confirmed_body: "Valget ditt er lagret. Du kan ombestemme deg når som helst.",
    used: "Denne lenken er allerede brukt. Det tidligere valget ditt gjelder.",
    expired: "Denne lenken er utløpt. Meld deg på igjen for å få en ny.",
    invalid: "Denne lenken er ikke gyldig.",
    unsub_title: "Meld av",
    unsub_button: "Meld av",
    unsubscribed: "Du er meldt av. Det gjelder fra nå.",
    prefs_title: "Dine valg",
    prefs_lead: "Kryss av for det du tillater. Fjern krysset for å trekke tilbake — det gjelder med en gang.",
    prefs_save: "Lagre valgene mine",
    prefs_saved: "Lagret. Valgene dine gjelder med en gang.",
    gpc_note: "Nettleseren din sender et Global Privacy Control-signal: vi har registrert det som et nei til salg og deling. Et valg du gjør her, gjelder.",
    manage: "Se og endre alle valgene dine",
};

const TR: Texts = Texts {
    dir: "ltr",
    confirm_title: "Lütfen onaylayın",
    confirm_lead: "Bizden haber almak istediniz. Aşağıdaki düğmeye basana kadar hiçbir şey etkinleşmez. Onay verdiğiniz:",
    confirm_button: "Evet, onaylıyorum",
    confirmed_title: "Teşekkürler — onaylandı",
    confirmed_body: "Seçiminiz kaydedildi. Fikrinizi istediğiniz zaman değiştirebilirsiniz.",
    used: "Bu bağlantı zaten kullanıldı. Önceki seçiminiz geçerli.",
    expired: "Bu bağlantının süresi doldu. Yeni bir bağlantı için yeniden abone olun.",
    invalid: "Bu bağlantı geçerli değil.",
    unsub_title: "Abonelikten çık",
    unsub_button: "Abonelikten çık",
    unsubscribed: "Abonelikten çıktınız. Hemen geçerli oldu.",
    prefs_title: "Seçimleriniz",
    prefs_lead: "İzin verdiklerinizi işaretleyin. Geri çekmek için işareti kaldırın — hemen geçerli olur.",
    prefs_save: "Seçimlerimi kaydet",
    prefs_saved: "Kaydedildi. Seçimleriniz hemen geçerli oldu.",
    gpc_note: "Tarayıcınız Global Privacy Control sinyali gönderiyor: bunu satış ve paylaşıma itiraz olarak kaydettik. Burada yaptığınız seçim geçerlidir.",
    manage: "Tüm seçimlerinizi görün ve değiştirin",
};

const HE: Texts = Texts {
    dir: "rtl",
    confirm_title: "נא לאשר",
    confirm_lead: "ביקשת לשמוע מאיתנו. דבר לא מופעל עד שתלחץ על הכפתור למטה. אתה מסכים ל:",
    confirm_button: "כן, אני מאשר",
    confirmed_title: "תודה — אושר",
    confirmed_body: "הבחירה שלך נשמרה. אפשר לשנות אותה בכל עת.",
    used: "הקישור הזה כבר נוצל. הבחירה הקודמת שלך בתוקף.",
    expired: "תוקף הקישור פג. נא להירשם שוב כדי לקבל קישור חדש.",
    invalid: "הקישור אינו תקף.",
    unsub_title: "ביטול הרשמה",
    unsub_button: "ביטול הרשמה",
    unsubscribed: "ההרשמה בוטלה. השינוי נכנס לתוקף מיד.",
    prefs_title: "הבחירות שלך",
    prefs_lead: "סמן את מה שאתה מתיר. הסר סימון כדי לבטל — זה נכנס לתוקף מיד.",
    prefs_save: "שמור את הבחירות שלי",
    prefs_saved: "נשמר. הבחירות שלך נכנסו לתוקף מיד.",
    gpc_note: "הדפדפן שלך שולח אות Global Privacy Control: רשמנו אותו כהתנגדות למכירה ולשיתוף. בחירה שתעשה כאן תקפה.",
    manage: "צפה בכל הבחירות שלך ושנה אותן",
};

fn texts(lang: &str) -> (&'static str, &'static Texts) {
    match lang.split('-').next().unwrap_or("en") {
        "fi" => ("fi", &FI),
        "de" => ("de", &DE),
        "nb" | "no" | "nn" => ("nb", &NB),
        "tr" => ("tr", &TR),
        "he" | "iw" => ("he", &HE),
        _ => ("en", &EN),
    }
}

/// The first language the browser asks for.
fn browser_language(headers: &HeaderMap) -> String {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "en".into())
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

fn page(status: StatusCode, lang: &str, t: &Texts, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"{lang}\" dir=\"{dir}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#222}}\
button{{font-size:1rem;padding:.6rem 1.2rem;border-radius:.4rem;border:1px solid #235;background:#235;color:#fff;cursor:pointer}}\
.notice{{background:#f4f4f4;padding:.6rem .8rem;border-radius:.3rem;white-space:pre-wrap}}\
label{{display:block;margin:.8rem 0}}.muted{{color:#666;font-size:.9rem}}</style></head>\
<body><main><h1>{title}</h1>{body}</main></body></html>",
        dir = t.dir,
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

fn error_page(e: ApiError, lang: &str) -> Response {
    let (l, t) = texts(lang);
    let msg = match e.code {
        "token_used" => t.used,
        "token_expired" => t.expired,
        "token_unknown" | "link_invalid" => t.invalid,
        _ => return e.into_response(),
    };
    page(e.status, l, t, msg, "")
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
        Err(e) => return error_page(e, &browser_language(&headers)),
    };
    let (lang, t) = texts(&pending.data.language);
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let store = s.store.clone();
    let purposes = pending.data.purposes.clone();
    let language = pending.data.language.clone();
    let notices = blocking(move || {
        let mut c = store.conn()?;
        purposes
            .iter()
            .map(|(p, v)| {
                let texts = ledger::notice_texts(&mut *c, p, v)?.unwrap_or_default();
                let text = tarmo_core::consent::purpose::notice_text(&texts, &language)
                    .map(|(_, x)| x.to_owned());
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
        let name = catalog.get(&p).map_or(p.as_str(), |c| c.spec.name.as_str());
        let _ = write!(
            body,
            "<h2>{}</h2><p class=\"notice\">{}</p>",
            esc(name),
            esc(text.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\"><button type=\"submit\">{}</button></form>",
        esc(t.confirm_button)
    );
    page(StatusCode::OK, lang, t, t.confirm_title, &body)
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
        Err(e) => return error_page(e, &browser_language(&headers)),
    };
    let (lang, t) = texts(&c.language);
    let link = preference_url(&s, c.profile_id);
    let body = format!(
        "<p>{}</p><p><a href=\"{}\">{}</a></p>",
        esc(t.confirmed_body),
        esc(&link),
        esc(t.manage)
    );
    page(StatusCode::OK, lang, t, t.confirmed_title, &body)
}

/// A link to the person's preference page.
pub(crate) fn preference_url(s: &AppState, profile: i64) -> String {
    let token = links::sign_link(
        s.store.vault(),
        PREFERENCES_LINK,
        &SignedLink {
            profile_id: profile,
            scope: "*".into(),
            issued_ms: now_ms(),
        },
    );
    format!("{}/p/{token}", s.config.public_url)
}

// -------------------------------------------------------------- unsubscribe

fn open_unsubscribe(s: &AppState, token: &str) -> Result<SignedLink, ApiError> {
    links::open_link(s.store.vault(), doi::UNSUBSCRIBE_LINK, token)
        .ok_or_else(|| ApiError::not_found("link_invalid", "this link is not valid"))
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
    let lang = browser_language(&headers);
    let link = match open_unsubscribe(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, &lang),
    };
    let (lang, t) = texts(&lang);
    let name = match s.catalog().await {
        Ok(c) => c
            .get(&link.scope)
            .map_or(link.scope.clone(), |c| c.spec.name.clone()),
        Err(e) => return e.into_response(),
    };
    let body = format!(
        "<p><strong>{}</strong></p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">{}</button></form>",
        esc(&name),
        esc(t.unsub_button)
    );
    page(StatusCode::OK, lang, t, t.unsub_title, &body)
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
    let lang = browser_language(&headers);
    let link = match open_unsubscribe(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, &lang),
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
        return ApiError::bad_request(
            "invalid_unsubscribe",
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
    let (lang, t) = texts(&lang);
    page(StatusCode::OK, lang, t, t.unsubscribed, "")
}

// -------------------------------------------------------------- preferences

fn open_preferences(s: &AppState, token: &str) -> Result<SignedLink, ApiError> {
    links::open_link(s.store.vault(), PREFERENCES_LINK, token)
        .filter(|l| l.scope == "*" && now_ms() - l.issued_ms < PREFERENCES_TTL_MS)
        .ok_or_else(|| ApiError::not_found("link_invalid", "this link is not valid"))
}

/// Purposes a person can switch on and off here: those resting on consent,
/// and those they may object to.
fn choosable(c: &ledger::CatalogEntry) -> bool {
    c.rule.basis == LegalBasis::Consent || c.rule.basis.objectionable() || c.rule.direct_marketing
}

async fn record_gpc_if_sent(
    s: &AppState,
    headers: &HeaderMap,
    profile: i64,
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

async fn render_preferences(
    s: &AppState,
    profile: i64,
    token: &str,
    lang: &str,
    gpc_seen: bool,
    saved: bool,
) -> Response {
    let (lang, t) = texts(lang);
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
        Ok(Some((
            ledger::states(&mut *c, p)?,
            ledger::flags(&mut *c, p)?,
        )))
    })
    .await;
    let (states, flags) = match read {
        Ok(Some(x)) => x,
        Ok(None) => return error_page(ApiError::not_found("link_invalid", ""), lang),
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let mut body = String::new();
    if saved {
        let _ = write!(body, "<p><strong>{}</strong></p>", esc(t.prefs_saved));
    }
    if gpc_seen {
        let _ = write!(body, "<p class=\"muted\">{}</p>", esc(t.gpc_note));
    }
    let _ = write!(body, "<p>{}</p><form method=\"post\">", esc(t.prefs_lead));
    for c in catalog.entries().into_iter().filter(|c| choosable(c)) {
        let st = states.iter().find(|(p, _)| p == c.id.as_str()).map(|x| x.1);
        let on = decide(&c.rule, None, st.as_ref(), flags, now).allowed;
        let notice = c.spec.notice_text(lang).map(|x| x.1).unwrap_or("");
        let _ = write!(
            body,
            "<label><input type=\"checkbox\" name=\"purpose\" value=\"{id}\"{checked}> <strong>{name}</strong></label><p class=\"notice\">{notice}</p>",
            id = esc(c.id.as_str()),
            checked = if on { " checked" } else { "" },
            name = esc(&c.spec.name),
            notice = esc(notice),
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\">{}</button></form>",
        esc(t.prefs_save)
    );
    body.push_str(&rights_section(lang, token));
    page(StatusCode::OK, lang, t, t.prefs_title, &body)
}

/// The person's preference page: what they allow, with the notice texts.
/// A `Sec-GPC: 1` header is recorded as an opt-out of sale and sharing.
#[utoipa::path(get, path = "/p/{token}", tag = "pages",
    params(("token" = String, Path, description = "The preference link's signed token")),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, content_type = "text/html", body = String)))]
pub async fn preferences_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
) -> Response {
    let lang = browser_language(&headers);
    let link = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, &lang),
    };
    let ev = evidence(&headers, peer.0);
    let gpc_seen = match record_gpc_if_sent(&s, &headers, link.profile_id, ev).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    render_preferences(&s, link.profile_id, &token, &lang, gpc_seen, false).await
}

/// Save the person's choices: each change is a ledger entry (method
/// `preference_center`), in effect at once.
#[utoipa::path(post, path = "/p/{token}", tag = "pages",
    params(("token" = String, Path, description = "The preference link's signed token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "purpose=<id> for each purpose allowed"),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, content_type = "text/html", body = String)))]
pub async fn preferences_post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Peer,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let lang = browser_language(&headers);
    let link = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, &lang),
    };
    let ev = evidence(&headers, peer.0);
    // GPC first, so that the person's explicit choice below stands over it.
    let gpc_seen = match record_gpc_if_sent(&s, &headers, link.profile_id, ev.clone()).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let wanted: Vec<String> = form(&body)
        .into_iter()
        .filter(|(k, _)| k == "purpose")
        .map(|(_, v)| v)
        .collect();
    let profile = link.profile_id;
    let saved = s
        .transact(move |ctx| {
            let Some(p) = doi::current_profile(ctx.conn, profile)? else {
                return Ok(());
            };
            let flags = ledger::flags(ctx.conn, p)?;
            let mut entries = Vec::new();
            for c in ctx.catalog.entries().into_iter().filter(|c| choosable(c)) {
                let st = ledger::state(ctx.conn, p, c.id.as_str())?;
                let on = decide(&c.rule, None, st.as_ref(), flags, ctx.now_ms).allowed;
                let want = wanted.iter().any(|w| w == c.id.as_str());
                let decision = match (on, want) {
                    (false, true) => ConsentDecision::Granted,
                    (true, false) if c.rule.basis == LegalBasis::Consent => {
                        ConsentDecision::Withdrawn
                    }
                    (true, false) => ConsentDecision::Objected,
                    _ => continue,
                };
                if decision == ConsentDecision::Granted && c.rule.basis != LegalBasis::Consent {
                    // Lifting an objection to a legitimate interest is not a consent.
                    continue;
                }
                entries.push(NewEntry {
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
            ledger::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        return e.into_response();
    }
    render_preferences(&s, profile, &token, &lang, gpc_seen, true).await
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

fn rights_texts(
    lang: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
) {
    // (section title, access button, erasure button, check your inbox, done)
    match lang {
        "fi" => (
            "Tietosi",
            "Lähetä minulle kopio tiedoistani",
            "Poista kaikki tietoni",
            "Lähetimme vahvistuslinkin osoitteeseesi. Pyyntö etenee, kun vahvistat sen.",
            "Pyyntösi on vahvistettu.",
        ),
        "de" => (
            "Ihre Daten",
            "Eine Kopie meiner Daten",
            "Alle meine Daten löschen",
            "Wir haben einen Bestätigungslink an Ihre Adresse geschickt. Die Anfrage wird bearbeitet, sobald Sie ihn bestätigen.",
            "Ihre Anfrage ist bestätigt.",
        ),
        _ => (
            "Your data",
            "Send me a copy of my data",
            "Erase all my data",
            "We sent a confirmation link to your address. The request goes ahead once you confirm it.",
            "Your request is confirmed.",
        ),
    }
}

/// The "your data" part of the preference page.
fn rights_section(lang: &str, token: &str) -> String {
    let (title, access, erase, _, _) = rights_texts(lang);
    format!(
        "<h2>{}</h2><form method=\"post\" action=\"/p/{t}/request\"><input type=\"hidden\" name=\"type\" value=\"access\">\
<button type=\"submit\">{}</button></form><p></p>\
<form method=\"post\" action=\"/p/{t}/request\"><input type=\"hidden\" name=\"type\" value=\"erasure\">\
<button type=\"submit\">{}</button></form>",
        esc(title),
        esc(access),
        esc(erase),
        t = esc(token)
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
    let lang = browser_language(&headers);
    let link = match open_preferences(&s, &token) {
        Ok(l) => l,
        Err(e) => return error_page(e, &lang),
    };
    let kind = match form(&body)
        .into_iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v)
        .as_deref()
    {
        Some("access") => tarmo_store::requests::RequestKind::Access,
        Some("erasure") => tarmo_store::requests::RequestKind::Erasure,
        _ => {
            return ApiError::bad_request("unknown_request_type", "type=access or type=erasure")
                .into_response();
        }
    };
    let (l, t) = texts(&lang);
    let ttl = s.config.token_ttl.as_millis() as i64;
    let language = l.to_owned();
    let profile = link.profile_id;
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
                    code: "duplicate_request",
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
    let (_, _, _, sent, _) = rights_texts(l);
    page(
        StatusCode::OK,
        l,
        t,
        t.prefs_title,
        &format!("<p>{}</p>", esc(sent)),
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
    let store = s.store.clone();
    let t2 = token.clone();
    let found = blocking(move || {
        tarmo_store::links::find_token(
            &mut *store.conn()?,
            &t2,
            tarmo_store::requests::VERIFY_TOKEN,
            now_ms(),
        )
    })
    .await;
    let data = match found {
        Ok(t) => t.data,
        Err(e) => return error_page(e, &browser_language(&headers)),
    };
    let (l, t) = texts(&data.language);
    let body = format!(
        "<p>{}: <strong>{}</strong></p><form method=\"post\"><button type=\"submit\">{}</button></form>",
        esc(t.confirm_lead.split('.').next().unwrap_or("")),
        esc(&data.source),
        esc(t.confirm_button)
    );
    page(StatusCode::OK, l, t, t.confirm_title, &body)
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
    let lang = browser_language(&headers);
    let done = s
        .transact(move |ctx| tarmo_store::requests::verify_by_link(ctx, &token))
        .await;
    let (id, kind) = match done {
        Ok(x) => x,
        Err(e) => return error_page(e, &lang),
    };
    s.notices_wake();
    let (l, t) = texts(&lang);
    let (_, _, _, _, confirmed) = rights_texts(l);
    let mut body = String::new();
    if kind.has_bundle() {
        let signed = links::sign_link(
            s.store.vault(),
            DOWNLOAD_LINK,
            &SignedLink {
                profile_id: id,
                scope: "bundle".into(),
                issued_ms: now_ms(),
            },
        );
        let _ = write!(
            body,
            "<p><a href=\"{}/r/download/{}\">bundle.zip</a></p>",
            esc(&s.config.public_url),
            esc(&signed)
        );
    }
    page(StatusCode::OK, l, t, confirmed, &body)
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
    let lang = browser_language(&headers);
    let Some(link) = links::open_link(s.store.vault(), DOWNLOAD_LINK, &token)
        .filter(|l| l.scope == "bundle" && now_ms() - l.issued_ms < DOWNLOAD_TTL_MS)
    else {
        return error_page(ApiError::not_found("link_invalid", ""), &lang);
    };
    match crate::requests::bundle_for(&s, link.profile_id).await {
        Ok(b) => {
            let mut r = crate::requests::bundle_response(&b, link.profile_id, Some("zip"))
                .unwrap_or_else(IntoResponse::into_response);
            secure_headers(r.headers_mut());
            r
        }
        Err(e) => error_page(e, &lang),
    }
}
