//! Segments: the rule language a marketer asks Tarmo questions in, and its
//! evaluation over one person's facts. (Not to be confused with
//! [`crate::segment`], the Segment *tracking spec* the SDKs speak.)
//!
//! A rule is a condition tree whose stable wire form is JSON (the console
//! builds it); a compact text form for people compiles to the same tree and
//! back ([`text`]). Both parse into [`Rule`] at the edge, with errors that
//! name the place at fault (a JSON path, or a line and column).
//!
//! Evaluation is pure: it takes a person's [`Facts`] and the time, and gives
//! the answer and the earliest time the answer could change by time alone
//! (an event leaving its window, a birthday coming closer), so the caller
//! can move people in and out without any new event. It must never log a
//! personal value; [`Facts`] are plaintext and live only in memory.

pub mod audience;
pub mod columns;
mod duration;
mod eval;
pub mod lifecycle;
mod rule;
pub mod text;

pub use columns::{EventTable, Events};
pub use duration::Span;
pub use eval::{ExactSum, Facts, evaluate, number, trait_holds};
pub use lifecycle::{LifecycleConfig, Rfm, Stage};
pub use rule::{
    Cmp, CmpOp, EventRule, Measure, PRODUCT_PROPERTY, ProductSource, PropFilter, Rule, RuleError,
    STORE_PROPERTY, STORE_TRAITS, StoreSource, TraitOp, Usage, VIEWED_EVENT, trait_kind,
};

/// A segment's id: `[a-z][a-z0-9_]{0,63}`, like a purpose's.
pub fn valid_segment_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}
