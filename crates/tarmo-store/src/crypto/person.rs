//! Opening a person's values: the one place that gets a person's data key
//! and opens (or seals) what is sealed under it — contact details and
//! other identifiers, traits, events, consent evidence, outgoing messages.
//!
//! Every opening function is given the caller's [`Sight`]: the kinds of a
//! person's data the caller may see, from its grant (after purpose
//! binding, see [`crate::Store::visible_kinds`]), from the purpose it acts
//! for (an automation), or from a [`Duty`] Tarmo carries out (the person's
//! own request, an erasure's notices, delivering a message the policy
//! allowed). What the caller may not see is not opened at all: an
//! identifier of a kind it may not see is `None`, traits come back without
//! the kinds it may not see, and an event, a piece of consent evidence or
//! a queued message is refused. Values that belong to no single person (a
//! request's details, a segment's rule) are opened with
//! [`Vault::open_system`]. A person whose data key was destroyed
//! (crypto-shredded) has nothing that opens: their values are an error
//! ([`Error::Corrupt`]), except where a caller asks whether it still opens
//! ([`try_open`]).
//!
//! One exception, for speed: identity resolution (`ingest::resolve`) keeps
//! the data keys of the profiles a batch touches and opens their traits to
//! merge them, inside the writer; it shows nothing to anyone.

use std::collections::{BTreeSet, HashMap};

use serde::de::DeserializeOwned;
use tarmo_core::access::DataKind;
use tarmo_core::codes::Code;
use tarmo_core::profile::TraitSet;

use crate::conn::{Conn, IdentifierRow, ProfileId};
use crate::vault::{DataKey, Place, Sealed, Vault};
use crate::{Error, Result};

/// What a caller may see of a person: the kinds of data that open for it.
/// A bit per kind, so making one costs nothing where values are opened in
/// bulk (the segment engine opens every event of every person at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sight {
    kinds: u8,
}

const fn bit(k: DataKind) -> u8 {
    1 << (k as u8)
}

/// Work Tarmo does with a person's data on nobody's grant: each names why,
/// and sees what that work needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The person's own request (access, portability, rectification,
    /// erasure and its notices to processors): everything held.
    PersonsRequest,
    /// Delivering a message whose purpose and channel the policy allowed,
    /// and verifying an address: the person's contact details.
    Delivery,
    /// Evaluating segments and automations' conditions: traits and events
    /// (what leaves is membership, never a value).
    Evaluation,
    /// Reconciling an import with what is held (its matching and its
    /// report): traits and events.
    Import,
    /// Reading the ledger's evidence of a consent for its proof.
    ConsentProof,
}

impl Sight {
    /// What a grant sees of this person (its kinds after purpose binding).
    pub fn granted(kinds: &BTreeSet<DataKind>) -> Self {
        Self {
            kinds: kinds.iter().fold(0, |m, &k| m | bit(k)),
        }
    }

    /// What a duty needs.
    pub fn duty(d: Duty) -> Self {
        use DataKind as K;
        let kinds: &[DataKind] = match d {
            Duty::PersonsRequest => &K::ALL,
            Duty::Delivery => &[K::Contact],
            Duty::Evaluation | Duty::Import => &[K::Contact, K::Traits, K::Behaviour],
            Duty::ConsentProof => &[K::Consent],
        };
        Self {
            kinds: kinds.iter().fold(0, |m, &k| m | bit(k)),
        }
    }

    pub fn sees(&self, k: DataKind) -> bool {
        self.kinds & bit(k) != 0
    }

    /// The kind a value sealed for `place` is, for the places a whole value
    /// belongs to one kind.
    fn require(&self, place: Place) -> Result<()> {
        let kind = match place {
            Place::EventBody => DataKind::Behaviour,
            Place::ConsentEvidence => DataKind::Consent,
            Place::OutboxPayload => DataKind::Contact,
            // Identifiers and traits are opened by their own functions,
            // which know each value's kind.
            _ => {
                return Err(Error::Corrupt(format!(
                    "{place:?} is not opened as a whole"
                )));
            }
        };
        if self.sees(kind) {
            Ok(())
        } else {
            Err(Error::rejected(
                Code::Forbidden,
                format!("this caller may not see {}", kind.as_str()),
            ))
        }
    }
}

/// The data key of `owner`: from the vault's cache, or unwrapped from the
/// store.
fn data_key(conn: &mut dyn Conn, vault: &Vault, owner: ProfileId) -> Result<DataKey> {
    vault
        .data_key(owner, || conn.data_key_get(owner))?
        .ok_or_else(|| Error::Corrupt(format!("no data key for profile {owner}")))
}

/// Read into the vault's cache, in one pass, the data keys of these
/// owners that it lacks: a write that then seals for many people (a
/// consent recording) makes one read, not one a person.
pub fn warm_keys(conn: &mut dyn Conn, vault: &Vault, owners: &[ProfileId]) -> Result<()> {
    let missing: Vec<ProfileId> = owners
        .iter()
        .copied()
        .filter(|o| vault.cached_key(*o).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (owner, wrapped) in missing.iter().zip(conn.data_keys_get(&missing)?) {
        if let Some(w) = wrapped {
            vault.data_key(*owner, || Ok(Some(w)))?;
        }
    }
    Ok(())
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

/// Open a value `owner`'s data key sealed for `place` (an event, consent
/// evidence, a queued message), if `sight` sees its kind.
pub fn open(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<Vec<u8>> {
    sight.require(place)?;
    let key = data_key(conn, vault, owner)?;
    vault.open(&key, place, owner, sealed)
}

/// As [`open`], for a value that is UTF-8 text.
pub fn open_text(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<String> {
    String::from_utf8(open(conn, vault, sight, owner, place, sealed)?)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// As [`open`], for a value that is JSON.
pub fn open_json<T: DeserializeOwned>(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<T> {
    serde_json::from_slice(&open(conn, vault, sight, owner, place, sealed)?)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// An identifier's value (an email address, a phone number, a user id);
/// `None` when `sight` does not see its kind.
pub fn identifier(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    row: &IdentifierRow,
) -> Result<Option<String>> {
    if !sight.sees(DataKind::of_identifier(&row.kind)) {
        return Ok(None);
    }
    let key = data_key(conn, vault, row.key_owner)?;
    let plain = vault.open(&key, Place::IdentifierValue, row.key_owner, &row.sealed)?;
    String::from_utf8(plain)
        .map(Some)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// The values of many identifiers at once, in the order of `rows` (`None`
/// where `sight` does not see the kind), for work done in bulk (an
/// audience of a million): the data keys the cache lacks are read in one
/// pass and unwrapped, each once, without entering the cache.
pub fn identifiers_in_bulk(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    rows: &[&IdentifierRow],
) -> Result<Vec<Option<String>>> {
    let mut keys: HashMap<ProfileId, DataKey> = HashMap::new();
    let mut missing: Vec<ProfileId> = Vec::new();
    for r in rows {
        if !sight.sees(DataKind::of_identifier(&r.kind)) || keys.contains_key(&r.key_owner) {
            continue;
        }
        match vault.cached_key(r.key_owner) {
            Some(k) => {
                keys.insert(r.key_owner, k);
            }
            None => missing.push(r.key_owner),
        }
    }
    missing.sort_unstable();
    missing.dedup();
    for (owner, wrapped) in missing.iter().zip(conn.data_keys_get(&missing)?) {
        let wrapped =
            wrapped.ok_or_else(|| Error::Corrupt(format!("no data key for profile {owner}")))?;
        keys.insert(*owner, vault.unwrap_uncached(*owner, &wrapped)?);
    }
    rows.iter()
        .map(|r| {
            let Some(key) = keys.get(&r.key_owner) else {
                return Ok(None);
            };
            let plain = vault.open(key, Place::IdentifierValue, r.key_owner, &r.sealed)?;
            String::from_utf8(plain)
                .map(Some)
                .map_err(|e| Error::Corrupt(e.to_string()))
        })
        .collect()
}

/// A profile's traits, sealed under the profile's own key: those of the
/// kinds `sight` sees (contact traits, the others). A caller that writes
/// the traits back must see both, or it would drop the rest.
pub fn traits(
    conn: &mut dyn Conn,
    vault: &Vault,
    sight: &Sight,
    profile: ProfileId,
    sealed: &Sealed,
) -> Result<TraitSet> {
    let (contact, other) = (sight.sees(DataKind::Contact), sight.sees(DataKind::Traits));
    if !contact && !other {
        return Ok(TraitSet::default());
    }
    let key = data_key(conn, vault, profile)?;
    let plain = vault.open(&key, Place::ProfileTraits, profile, sealed)?;
    let mut t = TraitSet::from_bytes(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
    if !(contact && other) {
        t.retain(|name| sight.sees(DataKind::of_trait(name)));
    }
    Ok(t)
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
    sight: &Sight,
    owner: ProfileId,
    place: Place,
    sealed: &Sealed,
) -> Result<Opened> {
    sight.require(place)?;
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
