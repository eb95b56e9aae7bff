//! Cryptography: the [`vault::Vault`] that seals every personal value and
//! computes blind indexes, API keys and staff passwords ([`keys`]), and the
//! secrets put in links sent to people ([`links`]). Key material must never
//! leave this module in plaintext.

pub mod keys;
pub mod links;
pub mod vault;
