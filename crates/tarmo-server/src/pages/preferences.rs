//! The preference page (`/p/{token}`): what is done with the person's
//! data, by whom, and what they allow or object to, changeable without a
//! login; and the Global Privacy Control support resource.

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tarmo_core::codes::Code;
use tarmo_core::consent::{Channel, ConsentState, decide};
use tarmo_core::ids::ProfileId;
use tarmo_notify::pages::{fill_days, fill_org};
use tarmo_notify::templates::Lang;
use tarmo_store::consent::{Catalog, CatalogEntry};
use tarmo_store::now_ms;
use tarmo_store::preferences::{self as prefs, Group, channel_value, group};
use tarmo_store::processors::ProcessorView;

use super::i18n::{in_lang, lang_for, words};
use super::rights::rights_section;
use super::shell::{error_page, esc, page};
use super::{Peer, evidence, form, gpc};
use crate::{ApiError, AppState, ErrorBody, blocking};

/// A preference link's profile and the person's own language, when the link
/// names one.
pub(super) fn open_preferences(
    s: &AppState,
    token: &str,
) -> Result<(ProfileId, Option<String>), ApiError> {
    prefs::open_preferences(&s.svc, token)
        .ok_or_else(|| ApiError::new(Code::LinkInvalid, "this link is not valid"))
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
    blocking({
        let svc = s.svc.clone();
        move || prefs::record_gpc(&svc, profile, ev)
    })
    .await?;
    Ok(true)
}

/// What is done for a purpose, with which data, by which channels, shared
/// with whom and kept how long.
fn purpose_details(lang: Lang, c: &CatalogEntry, processors: &[ProcessorView]) -> String {
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

/// One box per channel of a purpose reaching the person by more than one:
/// unticking one stops that channel and keeps the others. Ticked unless the
/// person switched it off; saved with the purpose's box ticked (a purpose
/// switched off keeps its channels' choices for when it is on again).
fn channel_boxes(lang: Lang, c: &CatalogEntry, st: Option<&ConsentState>) -> String {
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
    let read = blocking({
        let svc = s.svc.clone();
        move || prefs::person_now(&svc, profile)
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
    let allowed = |c: &CatalogEntry| {
        let st = now_state
            .states
            .iter()
            .find(|(p, _)| p == c.id.as_str())
            .map(|x| x.1);
        decide(&c.rule, None, st.as_ref(), now_state.flags, now).allowed
    };
    let purpose_head = |c: &CatalogEntry| {
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
    let saved = blocking({
        let svc = s.svc.clone();
        move || prefs::save(&svc, profile, fields, ev)
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
fn channel_field(catalog: &Catalog, v: &str) -> Result<(), ApiError> {
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
