//! Opening a person's values: the one place that gets a person's data key
//! and opens (or seals) what is sealed under it — contact details and
//! other identifiers, traits, events, consent evidence, outgoing messages.
//!
//! A value is opened only here, and only after the caller decided it may
//! be: the use case that calls these functions is the one that checked the
//! purpose or the role. Values that belong to no single person (a request's
//! details, a segment's rule) are opened with [`Vault::open_system`].
//! A person whose data key was destroyed (crypto-shredded) has nothing that
//! opens: their values are an error ([`Error::Corrupt`]), except where a
//! caller asks whether it still opens ([`try_open`]).

use serde::de::DeserializeOwned;
use tarmo_core::profile::TraitSet;

use crate::conn::{Conn, IdentifierRow, ProfileId};
use crate::vault::{DataKey, Place, Sealed, Vault};
use crate::{Error, Result};

/// The data key of `owner`: from the vault's cache, or unwrapped from the
/// store.
fn data_key(conn: &mut dyn Conn, vault: &Vault, owner: ProfileId) -> Result<DataKey> {
    vault
        .data_key(owner, || conn.data_key_get(owner))?
        .ok_or_else(|| Error::Corrupt(format!("no data key for profile {owner}")))
}

/// Seal `plain` under `owner`'s data key, for `place`.
pub fn seal(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    place: Place,
    plain: &[u8],
) -> Result<Sealed> {
    let key = data_key(conn, vault, owner)?;
    vault.seal(&key, place, owner, plain)
}

/// Open a value `owner`'s data key sealed for `place`.
pub fn open(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<Vec<u8>> {
    let key = data_key(conn, vault, owner)?;
    vault.open(&key, place, owner, sealed)
}

/// As [`open`], for a value that is UTF-8 text.
pub fn open_text(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<String> {
    String::from_utf8(open(conn, vault, owner, place, sealed)?)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// As [`open`], for a value that is JSON.
pub fn open_json<T: DeserializeOwned>(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<T> {
    serde_json::from_slice(&open(conn, vault, owner, place, sealed)?)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// An identifier's value (an email address, a phone number, a user id).
pub fn identifier(conn: &mut dyn Conn, vault: &Vault, row: &IdentifierRow) -> Result<String> {
    open_text(
        conn,
        vault,
        row.key_owner,
        Place::IdentifierValue,
        &row.sealed,
    )
}

/// A profile's traits, sealed under the profile's own key.
pub fn traits(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    sealed: &Sealed,
) -> Result<TraitSet> {
    let plain = open(conn, vault, profile, Place::ProfileTraits, sealed)?;
    TraitSet::from_bytes(&plain).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Whether a value that may outlive its person still opens, and why not.
#[derive(Debug)]
pub enum Opened {
    Plain(Vec<u8>),
    /// The person's data key is gone (erased).
    KeyGone,
    /// The person's data key is there but does not unwrap.
    KeyBroken,
    /// The key is there; the value does not open under it.
    DoesNotOpen,
}

/// As [`open`], telling why a value does not open instead of failing
/// (a queued message whose person was erased meanwhile). Errors are the
/// store's own (the database).
pub fn try_open(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<Opened> {
    let key = match vault.data_key(owner, || conn.data_key_get(owner)) {
        Ok(Some(k)) => k,
        Ok(None) => return Ok(Opened::KeyGone),
        Err(Error::Crypto(_) | Error::Corrupt(_)) => return Ok(Opened::KeyBroken),
        Err(e) => return Err(e),
    };
    Ok(match vault.open(&key, place, owner, sealed) {
        Ok(plain) => Opened::Plain(plain),
        Err(_) => Opened::DoesNotOpen,
    })
}
