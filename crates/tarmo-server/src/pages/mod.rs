//! The pages people open from Tarmo's messages: confirm a subscription,
//! unsubscribe, and see and change what they allowed. No login and no
//! cookies: the link is the key. A GET never changes anything (mail scanners
//! fetch links); the person's button press is a POST. Each page is sent with
//! headers that keep the link out of referrers, caches and frames.
//!
//! `shell` is the HTML around every page, `i18n` the language a page is
//! in; the handlers, one module a kind of link, parse, call one use case
//! of `tarmo_store::{doi, preferences, requests}` and render.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

mod confirm;
mod i18n;
mod preferences;
mod rights;
mod shell;
mod unsubscribe;

pub use confirm::*;
pub use preferences::*;
pub use rights::*;
pub(crate) use shell::{esc, secure_headers};
pub use unsubscribe::*;

/// Where the person's request came from, as evidence: the socket's address,
/// and a proxy's `X-Forwarded-For` when there is one.
pub(crate) fn evidence(headers: &HeaderMap, peer: Option<SocketAddr>) -> Map<String, Value> {
    let mut m = crate::subject::evidence_of(
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

pub(crate) fn gpc(headers: &HeaderMap) -> bool {
    headers
        .get("sec-gpc")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1")
}

/// `application/x-www-form-urlencoded` pairs.
pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The peer's socket address, when the server was started with connection
/// info (`tarmo serve` is; an in-process test router may not be).
pub struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(crate::tls::peer_of(&parts.extensions)))
    }
}
