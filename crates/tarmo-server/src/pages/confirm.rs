//! The double opt-in confirmation link (`/c/{token}`): the page shows what
//! the person is asked to agree to; their button press records the grant.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tarmo_store::doi;

use super::i18n::{in_lang, lang_for};
use super::shell::{error_page, esc, page};
use super::{Peer, evidence};
use crate::consent::preference_url;
use crate::{AppState, blocking};

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
    let pending = blocking({
        let svc = s.svc.clone();
        move || doi::pending_with_notices(&svc, &token)
    })
    .await;
    let (pending, notices) = match pending {
        Ok(p) => p,
        Err(e) => return error_page(e, lang_for(None, &headers)),
    };
    let lang = lang_for(Some(&pending.data.language), &headers);
    let t = lang.page();
    let catalog = match s.catalog().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut body = format!("<p>{}</p>", esc(t.confirm_lead));
    for (p, texts) in notices {
        let (name_lang, name) = catalog
            .get(&p)
            .map_or(("en", p.as_str()), |c| c.spec.name_in(lang.code()));
        body.push_str(&in_lang(lang, name_lang, "h2", "", name));
        if let Some((l, text)) = tarmo_core::consent::purpose::notice_text(&texts, lang.code()) {
            body.push_str(&in_lang(lang, l, "p", " class=\"notice\"", text));
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
    let confirmed = blocking({
        let svc = s.svc.clone();
        move || doi::confirm_link(&svc, token, ev)
    })
    .await;
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
