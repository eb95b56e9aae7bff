//! The staff console: server-rendered pages over the same handlers, store
//! views and permission table as the staff API, signed in with a staff
//! account's session key held in an `HttpOnly`, `SameSite=Strict` cookie.
//!
//! What it must keep: a page shows and allows exactly what the API route
//! it stands for allows the same roles (`auth::need` decides, never a list
//! of its own); every read of a person goes through the API's handlers, so
//! it lands in the access log like an API read; every POST carries a CSRF
//! token bound to the session; every page works without script, and the
//! one script there is (the builder's live count) is a file served by
//! digest: the CSP allows `'self'` and never inline script.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod people;
pub(crate) mod queue;
pub(crate) mod segments;

use std::sync::{Arc, LazyLock};
use tarmo_core::codes::Code;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, MatchedPath, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use minijinja::{Environment, Value, context};
use ring::hmac;
use tarmo_core::access::Permission;

use crate::auth::{Need, Principal};
use crate::{ApiError, AppState, blocking};

/// The session cookie: the staff session key itself (only its hash is
/// stored), so a sign-out or a revocation ends the console session too.
const SESSION_COOKIE: &str = "tarmo_console";
/// The sign-in form's own token (there is no session yet to bind one to).
const SIGN_IN_COOKIE: &str = "tarmo_sign_in";
/// The console's sign-in route (its POST is under the sign-in limits).
pub const SIGN_IN_ROUTE: &str = "/console/sign-in";

// ------------------------------------------------------------- templates

/// A template's name and its source, compiled into the binary.
macro_rules! t {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../templates/console/", $name)),
        )
    };
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, src) in [
        t!("base.html"),
        t!("sign_in.html"),
        t!("home.html"),
        t!("message.html"),
        t!("customer.html"),
        t!("requests.html"),
        t!("access_log.html"),
        t!("segments.html"),
        t!("segment_builder.html"),
        t!("automations.html"),
        t!("dry_run.html"),
        t!("processors.html"),
        t!("keys.html"),
        t!("dashboard.html"),
    ] {
        // The templates are part of the binary: one that does not parse is
        // a build mistake, caught by every console test.
        env.add_template(name, src)
            .expect("console templates parse");
    }
    env
});

const CSS: &str = include_str!("../../templates/console/console.css");

/// The stylesheet's name carries a digest of its content, so it can be
/// cached for a year and a new build is fetched at once.
static CSS_NAME: LazyLock<String> = LazyLock::new(|| {
    let d = ring::digest::digest(&ring::digest::SHA256, CSS.as_bytes());
    format!("console-{}.css", &hex::encode(d.as_ref())[..12])
});

const JS: &str = include_str!("../../templates/console/console.js");

/// The console's one script (the segment builder's live count), named by
/// its digest like the stylesheet. No page has inline script.
static JS_NAME: LazyLock<String> = LazyLock::new(|| {
    let d = ring::digest::digest(&ring::digest::SHA256, JS.as_bytes());
    format!("console-{}.js", &hex::encode(d.as_ref())[..12])
});

/// Headers of every console page: no caching (pages hold personal data),
/// no framing, no referrer to other sites, and a CSP whose only script is
/// the console's own file (no inline script), fetching only from Tarmo.
fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
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

/// Render a template with the shell's context (who is signed in, what
/// they may open, the CSRF token) merged in.
fn render(
    status: StatusCode,
    staff: Option<&Staff>,
    name: &str,
    title: &str,
    ctx: Value,
) -> Response {
    let shell = match staff {
        Some(st) => context! {
            user => st.p.key.name.clone(),
            roles => st.p.key.roles.join(", "),
            csrf => st.csrf.clone(),
            nav => st.nav(),
        },
        None => context! {},
    };
    let all = minijinja::value::merge_maps([
        context! {
            title => title,
            css => format!("/console/assets/{}", *CSS_NAME),
            js => format!("/console/assets/{}", *JS_NAME),
        },
        shell,
        ctx,
    ]);
    let html = TEMPLATES.get_template(name).and_then(|t| t.render(all));
    let mut r = match html {
        Ok(html) => (status, html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "a console page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; it has been logged",
            )
                .into_response()
        }
    };
    page_headers(r.headers_mut());
    r
}

/// An error as a console page (status kept, the API's code and message shown).
fn error_page(staff: Option<&Staff>, e: ApiError) -> Response {
    let title = match e.status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests",
        s if s.is_client_error() => "That did not work",
        _ => "Something went wrong",
    };
    render(
        e.status,
        staff,
        "message.html",
        title,
        context! { message => e.message, code => e.code },
    )
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = if file == *CSS_NAME {
        (CSS, "text/css; charset=utf-8")
    } else if file == *JS_NAME {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

// ---------------------------------------------------------------- session

/// A signed-in staff member: the session key as a [`Principal`] (the same
/// the API's guard makes), and the CSRF token of their forms.
pub(crate) struct Staff {
    pub p: Principal,
    pub csrf: String,
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The CSRF token of a session: a MAC of a fixed label under the session
/// secret, which the page's own origin alone learns (the cookie is
/// `HttpOnly` and never leaves in a URL).
fn csrf_of(secret: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(&hmac::sign(&k, b"tarmo console csrf v1").as_ref()[..20])
}

impl FromRequestParts<Arc<AppState>> for Staff {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let to_sign_in = || see_other(SIGN_IN_ROUTE);
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
            return Err(to_sign_in());
        };
        let (key, grant) = match s.key_for(&secret).await {
            Ok(Some(k)) => k,
            Ok(None) => return Err(to_sign_in()),
            Err(e) => return Err(error_page(None, e)),
        };
        // Only login sessions open the console: a service key pasted into a
        // cookie is not a person at a desk.
        if key.user_id.is_none() {
            return Err(to_sign_in());
        }
        s.limit_key(key.id).map_err(|e| error_page(None, e))?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .cloned()
            .ok_or_else(to_sign_in)?;
        Ok(Staff {
            csrf: csrf_of(&secret),
            p: Principal { key, grant, route },
        })
    }
}

/// The console's sections: each stands for an API route, and is shown to
/// whoever that route admits.
const SECTIONS: [(&str, &str, &str); 8] = [
    ("Search", "/console", "/api/v1/profiles/lookup"),
    ("Consent dashboard", "/console/dashboard", "/api/v1/stats"),
    ("Requests", "/console/requests", "/api/v1/requests"),
    ("Access log", "/console/access-log", "/api/v1/audit"),
    ("Segments", "/console/segments", "/api/v1/segments"),
    ("Automations", "/console/automations", "/api/v1/automations"),
    ("Processors", "/console/processors", "/api/v1/processors"),
    ("Keys and users", "/console/keys", "/api/v1/keys"),
];

impl Staff {
    /// Whether this session may call `method route` of the API, by the
    /// API's own table.
    pub fn may(&self, method: &Method, api_route: &str) -> bool {
        match crate::auth::need(method, api_route) {
            Some(Need::Staff(p)) => self.may_permission(p),
            Some(Need::AnyStaffKey | Need::Public | Need::Page | Need::SignIn) => true,
            Some(Need::Ingest) | None => false,
        }
    }

    fn may_permission(&self, p: Permission) -> bool {
        self.p.grant.may(p) && !(self.p.grant.bound() && p.unbound_only())
    }

    /// Refuse, as the API would, what this session may not do.
    pub fn require(&self, method: &Method, api_route: &str) -> Result<(), Box<Response>> {
        if self.may(method, api_route) {
            return Ok(());
        }
        Err(Box::new(error_page(
            Some(self),
            ApiError::new(Code::Forbidden, "your roles do not allow this page"),
        )))
    }

    fn nav(&self) -> Vec<Value> {
        let here = self.p.route.as_str();
        SECTIONS
            .iter()
            .filter(|(_, _, api)| self.may(&Method::GET, api))
            .map(|(label, href, _)| {
                let current = here == *href
                    || (*href != "/console" && here.starts_with(href))
                    || (*href == "/console" && here.starts_with("/console/people"));
                context! { label, href, current }
            })
            .collect()
    }

    /// Parse a posted form and check its CSRF token.
    pub fn form(&self, body: &[u8]) -> Result<Form, Box<Response>> {
        let f = Form::parse(body);
        let sent = f.get("csrf").unwrap_or("");
        if !tarmo_store::vault::ct_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            return Err(Box::new(csrf_refused(Some(self))));
        }
        Ok(f)
    }
}

fn csrf_refused(staff: Option<&Staff>) -> Response {
    error_page(
        staff,
        ApiError::new(
            Code::CsrfFailed,
            "this form is out of date or did not come from the console; reload the page and try again",
        ),
    )
}

/// A posted form's fields.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated field (checkboxes), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A required text field, trimmed, at most `max` characters.
    pub fn text(&self, name: &str, max: usize) -> Result<String, ApiError> {
        let v = self.get(name).unwrap_or("").trim();
        if v.is_empty() {
            return Err(ApiError::new(
                Code::InvalidForm,
                format!("`{name}` is required"),
            ));
        }
        if v.chars().count() > max {
            return Err(ApiError::new(
                Code::InvalidForm,
                format!("`{name}` is at most {max} characters"),
            ));
        }
        Ok(v.to_owned())
    }
}

fn secure_cookies(s: &AppState) -> &'static str {
    if s.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(r: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

// ---------------------------------------------------------------- pages

pub(crate) async fn root() -> Response {
    see_other("/console")
}

pub(crate) async fn home(staff: Staff, State(s): State<Arc<AppState>>) -> Response {
    let search = staff.may(&Method::GET, "/api/v1/profiles/lookup");
    let kinds = people::search_kinds(&s);
    render(
        StatusCode::OK,
        Some(&staff),
        "home.html",
        "Tarmo console",
        context! { search, kinds },
    )
}

pub(crate) async fn sign_in_page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // Already signed in: straight on.
    if let Some(secret) = cookie(&headers, SESSION_COOKIE)
        && let Ok(Some((k, _))) = s.key_for(secret).await
        && k.user_id.is_some()
    {
        return see_other("/console");
    }
    sign_in_form(&s, StatusCode::OK, None)
}

fn sign_in_form(s: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let token = match tarmo_store::staff::random_token(&s.svc) {
        Ok(t) => t,
        Err(e) => return error_page(None, e.into()),
    };
    let mut r = render(
        status,
        None,
        "sign_in.html",
        "Sign in",
        context! { token => token.clone(), error },
    );
    set_cookie(
        &mut r,
        format!(
            "{SIGN_IN_COOKIE}={token}; Path={SIGN_IN_ROUTE}; HttpOnly; SameSite=Strict; Max-Age=3600{}",
            secure_cookies(s)
        ),
    );
    r
}

pub(crate) async fn sign_in(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = Form::parse(&body);
    let sent = f.get("token").unwrap_or("");
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !tarmo_store::vault::ct_eq(sent.as_bytes(), expected.as_bytes()) {
        return csrf_refused(None);
    }
    let name = f.get("name").unwrap_or("").to_owned();
    let password = f.get("password").unwrap_or("").to_owned();
    if name.trim().is_empty() || password.is_empty() {
        return sign_in_form(
            &s,
            StatusCode::BAD_REQUEST,
            Some("Enter your name and password."),
        );
    }
    if name.len() > 200 || password.len() > 1000 {
        return sign_in_form(
            &s,
            StatusCode::BAD_REQUEST,
            Some("Name or password too long."),
        );
    }
    if let Err(e) = s.limit_login_account(&name) {
        return error_page(None, e);
    }
    let store = s.store.clone();
    let r = blocking(move || store.login(&name, &password, crate::staff::SESSION_TTL_MS)).await;
    match r {
        Ok(Some((secret, _))) => {
            let mut r = see_other("/console");
            set_cookie(
                &mut r,
                format!(
                    "{SESSION_COOKIE}={secret}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
                    crate::staff::SESSION_TTL_MS / 1000,
                    secure_cookies(&s)
                ),
            );
            set_cookie(
                &mut r,
                format!(
                    "{SIGN_IN_COOKIE}=; Path={SIGN_IN_ROUTE}; HttpOnly; SameSite=Strict; Max-Age=0"
                ),
            );
            r
        }
        Ok(None) => sign_in_form(
            &s,
            StatusCode::UNAUTHORIZED,
            Some("Wrong name or password."),
        ),
        Err(e) => error_page(None, e),
    }
}

pub(crate) async fn sign_out(
    staff: Staff,
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Response {
    if let Err(r) = staff.form(&body) {
        return *r;
    }
    let store = s.store.clone();
    let id = staff.p.key.id;
    if let Err(e) = blocking(move || store.revoke_api_key(id)).await {
        return error_page(Some(&staff), e);
    }
    s.keys_changed();
    tracing::info!(key_id = id.0, "signed out of the console");
    let mut r = see_other(SIGN_IN_ROUTE);
    set_cookie(
        &mut r,
        format!("{SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_console_template_parses_and_renders_its_shell() {
        let t = TEMPLATES.get_template("message.html").unwrap();
        let html = t
            .render(context! { title => "T", message => "<b>m</b>", css => "/c.css" })
            .unwrap();
        assert!(html.contains("<html lang=\"en\">"));
        assert!(
            html.contains("&lt;b&gt;m&lt;&#x2f;b&gt;"),
            "auto-escaped: {html}"
        );
        assert_eq!(TEMPLATES.templates().count(), 14);
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_session() {
        assert_eq!(csrf_of("tka_a"), csrf_of("tka_a"));
        assert_ne!(csrf_of("tka_a"), csrf_of("tka_b"));
    }
}
