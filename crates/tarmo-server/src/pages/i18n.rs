//! The pages' language: the one negotiation ([`Lang::for_person`]: the
//! person's own language when known, else the browser's `Accept-Language`
//! by q-value, else English), and how text in another language than the
//! page's is marked so that it is read in its own voice.

use axum::http::{HeaderMap, header};
use tarmo_notify::pages::tag_is_rtl;
use tarmo_notify::templates::Lang;

use super::shell::esc;

/// The page's language: the person's own language when known, else the
/// browser's `Accept-Language` by weight, else English.
pub(crate) fn lang_for(own: Option<&str>, headers: &HeaderMap) -> Lang {
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
pub(crate) fn in_lang(page: Lang, tag: &str, el: &str, attrs: &str, text: &str) -> String {
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

/// Words for ids (data categories, channels): the page's own word when it
/// has one, else the id in plain letters, marked as English.
pub(crate) fn words<'a>(
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
