//! Cryptography: the [`vault::Vault`] that seals every personal value and
//! computes blind indexes, API keys and staff passwords ([`keys`]), and the
//! secrets put in links sent to people ([`links`]), and the signed hash
//! [`chain`] of the consent ledger and the access log; [`person`] is the one
//! place that opens a person's values. Key material must never
//! leave this module in plaintext.

pub mod chain;
pub mod keys;
pub mod links;
pub mod packed;
pub mod person;
pub mod vault;
