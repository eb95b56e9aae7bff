//! IAB consent strings for Tarmo: TCF v2.x TC strings and GPP strings,
//! decoded into strong types and encoded back byte for byte as the official
//! IAB libraries (`@iabtechlabtcf/core`, `@iabgpp/cmpapi`) would write them.
//! It sits on the edge where untrusted strings from browsers and partners
//! enter the platform, so it must never panic on any input, never allocate
//! more than the decoded value needs (a short TC string decodes without
//! touching the heap), and never accept a string it cannot represent
//! faithfully: what it does not understand is an [`Error`] that says what is
//! wrong and at which bit, not a guess.
//!
//! - [`decode`] / [`encode`]: TC strings ([`TcString`]).
//! - [`gpp::decode`] / [`gpp::encode`]: GPP strings ([`gpp::GppString`]).
//! - [`cli`]: the `tarmo tcf` / `tarmo gpp` commands and their JSON forms.
//! - feature `serde`: [`TcString`] and [`gpp::GppString`] serialize as their
//!   encoded strings.

mod bits;
pub mod cli;
mod error;
pub mod gpp;
mod json;
#[cfg(feature = "serde")]
mod serde_impl;
pub mod tcf;
mod types;

pub use error::{Error, OutOfRange};
pub use tcf::{
    CustomPurposes, MAX_RESTRICTION_RANGES, PublisherRestrictions, PublisherTc, PurposeId,
    RestrictionType, TC_STRING_VERSION, TcString, TooManyRanges, decode, encode,
};
pub use types::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, IdSet, LanguageCode, PolicyVersion,
    PurposeSet, SpecialFeatureSet, VendorId, VendorListVersion, VendorSet,
};
