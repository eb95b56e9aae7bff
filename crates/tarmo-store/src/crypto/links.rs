//! Secrets Tarmo puts in links it sends to people.
//!
//! Two kinds:
//! - **single-use tokens** (double opt-in confirmation): 256 random bits,
//!   stored only as their SHA-256, with an expiry and a `used` mark;
//! - **signed links** (one-click unsubscribe, the preference page): no row at
//!   all; the link carries the profile, the purpose or scope and the time it
//!   was made, with a MAC under the installation's signing key, so it
//!   cannot be forged or pointed at someone else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use serde::{Deserialize, Serialize};
use tarmo_core::codes::Code;

use crate::conn::{Conn, P, ProfileId, RequestId};
use crate::vault::Vault;
use crate::{Error, Result};

/// A fresh single-use token: its secret (for the link) and the hash stored.
pub struct NewToken {
    pub secret: String,
    pub hash: Vec<u8>,
}

pub fn token_hash(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// A short, non-secret name for a token, fit for evidence and logs.
pub fn token_id(hash: &[u8]) -> String {
    hex::encode(&hash[..8.min(hash.len())])
}

pub fn new_token(vault: &Vault) -> Result<NewToken> {
    let raw: [u8; 32] = vault.random()?;
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let hash = token_hash(&secret);
    Ok(NewToken { secret, hash })
}

/// What a confirmation token is for. Holds no personal data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfirmationData {
    /// Purpose id and the notice version the person was shown.
    pub purposes: Vec<(String, String)>,
    /// `email` or `sms`.
    pub channel: String,
    pub language: String,
    pub source: String,
    /// The blind index (hex) of the address the link was sent to: using the
    /// link proves the address is the person's, and verifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifies: Option<String>,
}

pub fn store_token(
    conn: &mut dyn Conn,
    t: &NewToken,
    kind: &str,
    profile: ProfileId,
    data: &ConfirmationData,
    now_ms: i64,
    expires_ms: i64,
) -> Result<()> {
    conn.exec(
        "INSERT INTO tokens (hash, kind, profile_id, data, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            P::Blob(&t.hash),
            P::Text(kind),
            P::Int(profile.0),
            P::Text(&serde_json::to_string(data).expect("serialises")),
            P::Int(now_ms),
            P::Int(expires_ms),
        ],
    )?;
    Ok(())
}

/// A token found by its secret and still usable.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub hash: Vec<u8>,
    pub profile_id: ProfileId,
    pub data: ConfirmationData,
    pub expires_ms: i64,
}

/// Look a token up without using it: unknown, used and expired tokens are
/// errors with their own codes.
pub fn find_token(conn: &mut dyn Conn, secret: &str, kind: &str, now_ms: i64) -> Result<LiveToken> {
    if secret.is_empty() || secret.len() > 100 {
        return Err(Error::rejected(
            Code::TokenUnknown,
            "this link is not valid",
        ));
    }
    let hash = token_hash(secret);
    let r = conn
        .query_opt(
            "SELECT profile_id, data, expires_ms, used_ms FROM tokens WHERE hash = $1 AND kind = $2",
            &[P::Blob(&hash), P::Text(kind)],
        )?
        .ok_or_else(|| Error::rejected(Code::TokenUnknown, "this link is not valid"))?;
    if r.opt_int(3)?.is_some() {
        return Err(Error::rejected(
            Code::TokenUsed,
            "this link was already used; each link works once",
        ));
    }
    let expires_ms = r.int(2)?;
    if now_ms >= expires_ms {
        return Err(Error::rejected(
            Code::TokenExpired,
            "this link has expired; please ask for a new one",
        ));
    }
    Ok(LiveToken {
        hash,
        profile_id: ProfileId(r.int(0)?),
        data: serde_json::from_str(&r.text(1)?).map_err(|e| Error::Corrupt(e.to_string()))?,
        expires_ms,
    })
}

/// Mark a token used; fails if someone used it first.
pub fn use_token(conn: &mut dyn Conn, hash: &[u8], now_ms: i64) -> Result<()> {
    let n = conn.exec(
        "UPDATE tokens SET used_ms = $2 WHERE hash = $1 AND used_ms IS NULL",
        &[P::Blob(hash), P::Int(now_ms)],
    )?;
    if n != 1 {
        return Err(Error::rejected(
            Code::TokenUsed,
            "this link was already used; each link works once",
        ));
    }
    Ok(())
}

/// What a signed link lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLink {
    pub profile_id: ProfileId,
    /// A purpose id (unsubscribe) or `*` (the whole preference page).
    pub scope: String,
    pub issued_ms: i64,
}

const MAC_LEN: usize = 16;

/// Make a signed link token. `kind` separates link kinds: an unsubscribe
/// link never opens the preference page.
pub fn sign_link(vault: &Vault, kind: &str, link: &SignedLink) -> String {
    sign_raw(vault, kind, link.profile_id.0, link.issued_ms, &link.scope)
}

/// Check a signed link token; `None` for anything forged, truncated or made
/// for another kind of link.
pub fn open_link(vault: &Vault, kind: &str, token: &str) -> Option<SignedLink> {
    let (id, issued_ms, scope) = open_raw(vault, kind, token)?;
    Some(SignedLink {
        profile_id: ProfileId(id),
        scope,
        issued_ms,
    })
}

/// A signed link that names a data subject request where a person's link
/// names the profile (the download of a request's bundle): the same layout,
/// its own type, so a request's id is never taken for a person's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLink {
    pub request: RequestId,
    pub scope: String,
    pub issued_ms: i64,
}

/// Make a signed request link token (see [`RequestLink`]).
pub fn sign_request_link(vault: &Vault, kind: &str, link: &RequestLink) -> String {
    sign_raw(vault, kind, link.request.0, link.issued_ms, &link.scope)
}

/// Check a signed request link token, as [`open_link`] does.
pub fn open_request_link(vault: &Vault, kind: &str, token: &str) -> Option<RequestLink> {
    let (id, issued_ms, scope) = open_raw(vault, kind, token)?;
    Some(RequestLink {
        request: RequestId(id),
        scope,
        issued_ms,
    })
}

fn sign_raw(vault: &Vault, kind: &str, id: i64, issued_ms: i64, scope: &str) -> String {
    let mut payload = Vec::with_capacity(16 + scope.len() + MAC_LEN);
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(&issued_ms.to_be_bytes());
    payload.extend_from_slice(scope.as_bytes());
    let mac = vault.mac(kind, &payload);
    payload.extend_from_slice(&mac[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(payload)
}

fn open_raw(vault: &Vault, kind: &str, token: &str) -> Option<(i64, i64, String)> {
    if token.len() > 400 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() < 16 + MAC_LEN {
        return None;
    }
    let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
    if !vault.mac_ok(kind, payload, tag) {
        return None;
    }
    Some((
        i64::from_be_bytes(payload[..8].try_into().ok()?),
        i64::from_be_bytes(payload[8..16].try_into().ok()?),
        String::from_utf8(payload[16..].to_vec()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::MasterKey;

    #[test]
    fn signed_links_resist_forgery_and_kind_confusion() {
        let v = Vault::new(&MasterKey::generate().unwrap(), 4);
        let link = SignedLink {
            profile_id: ProfileId(42),
            scope: "email_marketing".into(),
            issued_ms: 1_700_000_000_000,
        };
        let t = sign_link(&v, "unsubscribe", &link);
        assert_eq!(open_link(&v, "unsubscribe", &t), Some(link.clone()));
        assert_eq!(open_link(&v, "preferences", &t), None);
        let other = Vault::new(&MasterKey::generate().unwrap(), 4);
        assert_eq!(open_link(&other, "unsubscribe", &t), None);
        // Flip each byte of the token: none opens as another person's link.
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 1;
            assert_eq!(
                open_link(&v, "unsubscribe", &URL_SAFE_NO_PAD.encode(&r)),
                None
            );
        }
        assert_eq!(open_link(&v, "unsubscribe", "short"), None);
        assert_eq!(open_link(&v, "unsubscribe", "!!!not base64!!!"), None);
    }

    #[test]
    fn tokens_are_random_and_stored_as_hashes() {
        let v = Vault::new(&MasterKey::generate().unwrap(), 4);
        let a = new_token(&v).unwrap();
        let b = new_token(&v).unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 43);
        assert_eq!(a.hash, token_hash(&a.secret));
        assert_eq!(token_id(&a.hash).len(), 16);
    }
}
