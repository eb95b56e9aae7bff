//! Tarmo's domain model: identifiers, Segment messages, traits, purposes, consent,
//! the policy decision, CMP strings (TCF, GPP) read as consent, and processors
//! with what each data category stands for.
//!
//! This crate is pure: no I/O, no async, no database or HTTP types. Everything
//! that enters Tarmo is parsed into these types at the edge, so an invalid email
//! address or an unknown identifier kind cannot travel further than the handler
//! that received it. It must never log or print a personal value: types that
//! hold one redact it in `Debug`.

pub mod access;
pub mod automations;
pub mod codes;
pub mod consent;
pub mod identity;
pub mod ids;
pub mod processor;
pub mod profile;
pub mod segment;
pub mod segments;
