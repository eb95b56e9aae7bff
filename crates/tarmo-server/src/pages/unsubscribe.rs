//! The unsubscribe link (`/u/{token}`, the `List-Unsubscribe` header of
//! every marketing email): a page with one button, and RFC 8058 one-click
//! unsubscribe, which withdraws at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tarmo_core::codes::Code;
use tarmo_store::doi;
use tarmo_store::links::SignedLink;

use super::i18n::{in_lang, lang_for};
use super::shell::{error_page, esc, page};
use super::{Peer, evidence};
use crate::{ApiError, AppState, ErrorBody, blocking};

fn open_unsubscribe(s: &AppState, token: &str) -> Result<SignedLink, ApiError> {
    doi::open_unsubscribe_link(&s.svc, token)
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
    let done = blocking({
        let svc = s.svc.clone();
        move || doi::unsubscribe_link(&svc, link, ev)
    })
    .await;
    if let Err(e) = done {
        return e.into_response();
    }
    page(StatusCode::OK, lang, lang.page().unsubscribed, "")
}
