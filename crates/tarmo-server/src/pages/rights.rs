//! The person's rights from their own page: a request for access or
//! erasure (`/p/{token}/request`), the link that verifies it is theirs
//! (`/r/{token}`), and the download of their data (`/r/download/{token}`).

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tarmo_core::codes::Code;
use tarmo_notify::templates::Lang;
use tarmo_store::links::ConfirmationData;
use tarmo_store::preferences as prefs;
use tarmo_store::requests::{self, RequestKind};

use super::form;
use super::i18n::{in_lang, lang_for};
use super::preferences::open_preferences;
use super::shell::{error_page, esc, page, secure_headers};
use crate::{ApiError, AppState, ErrorBody, blocking};

/// The "your data" part of the preference page: download, erase.
pub(super) fn rights_section(lang: Lang, token: &str) -> String {
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
        Some("access") => RequestKind::Access,
        Some("erasure") => RequestKind::Erasure,
        _ => {
            return ApiError::new(Code::UnknownRequestType, "type=access or type=erasure")
                .into_response();
        }
    };
    let ttl = s.config.token_ttl.as_millis() as i64;
    let language = lang.code().to_owned();
    let created = blocking({
        let svc = s.svc.clone();
        move || prefs::request_from_page(&svc, profile, kind, language, ttl)
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
async fn request_token(s: &AppState, token: &str) -> Result<ConfirmationData, ApiError> {
    let t = token.to_owned();
    blocking({
        let svc = s.svc.clone();
        move || requests::peek_verification(&svc, &t)
    })
    .await
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
    let done = blocking({
        let svc = s.svc.clone();
        move || requests::verify_link(&svc, token)
    })
    .await;
    let (id, kind) = match done {
        Ok(x) => x,
        Err(e) => return error_page(e, lang),
    };
    s.notices_wake();
    let t = lang.page();
    let mut body = String::new();
    if kind.has_bundle() {
        let signed = prefs::download_token(&s.svc, id);
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
    let Some(request) = prefs::open_download(&s.svc, &token) else {
        return error_page(ApiError::new(Code::LinkInvalid, ""), lang);
    };
    match crate::requests::bundle_for(&s, request).await {
        Ok(b) => {
            let mut r = crate::requests::bundle_response(&b, request, Some("zip"))
                .unwrap_or_else(IntoResponse::into_response);
            secure_headers(r.headers_mut());
            r
        }
        Err(e) => error_page(e, lang),
    }
}
