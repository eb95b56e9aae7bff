//! Purposes, legal bases, the consent ledger and the policy decision.
//!
//! Every use of a person's data names a purpose; the purpose names its legal
//! basis; a purpose resting on consent is allowed only while the person's
//! recorded consent stands. Nothing here does I/O: the store keeps the ledger,
//! this module says what it means.

pub mod ledger;
pub mod policy;
pub mod purpose;
pub mod signals;

use crate::codes::Code;
pub use ledger::{ConsentDecision, ConsentState, EntryFacts, Method, fold, gpc_applies};
pub use policy::{ProfileFlags, Reason, Verdict, decide};
pub use purpose::{Channel, DataCategory, LegalBasis, PurposeId, PurposeRule, PurposeSpec};
pub use signals::{SignalMap, SignalReading, SignalSources, UsOptOut};

/// Bad input about purposes and consent; each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("`{0}` is not a valid purpose id (lower-case letters, digits and underscores)")]
    BadPurposeId(String),
    #[error("`{0}` is not a valid data category (lower-case letters, digits and underscores)")]
    BadDataCategory(String),
    #[error("unknown channel `{0}` (email, sms, push, phone, post, web, ads)")]
    UnknownChannel(String),
    #[error(
        "unknown decision `{0}` (granted, denied, withdrawn, pending_confirmation, expired, objected)"
    )]
    UnknownDecision(String),
    #[error("unknown method `{0}`")]
    UnknownMethod(String),
    #[error("invalid purpose: {0}")]
    InvalidPurpose(String),
    #[error("invalid consent signal mapping: {0}")]
    InvalidSignalMap(String),
    #[error(
        "special categories of data (GDPR Art. 9) may only be processed on explicit consent: set legal_basis = \"consent\""
    )]
    SpecialCategoryNeedsConsent,
    #[error("purpose `{0}` does not rest on consent, so there is no consent to record for it")]
    NotConsentBased(String),
    #[error(
        "purpose `{0}` does not reach anyone by `{1}`; see its channels in GET /api/v1/purposes"
    )]
    ChannelNotCovered(String, String),
    #[error(
        "a choice about one channel is granted, denied or withdrawn (the purpose's other decisions have no channel)"
    )]
    ChannelDecision,
    #[error(
        "purpose `{0}` rests on a basis a person cannot object to (contract, legal obligation, vital interests) and is not direct marketing"
    )]
    ObjectionNotApplicable(String),
}

/// Whether an entry with this decision and method may be recorded for a
/// purpose with this rule: consent decisions only for purposes resting on
/// consent; objections where Art. 21 gives the right to object; GPC opt-outs
/// where the purpose is configured for them.
pub fn check_entry(
    purpose: &str,
    rule: &PurposeRule,
    decision: ConsentDecision,
    method: Method,
) -> Result<(), ConsentError> {
    let objectable = rule.direct_marketing || rule.basis.objectionable();
    match decision {
        ConsentDecision::Objected if rule.basis == LegalBasis::Consent || objectable => Ok(()),
        ConsentDecision::Objected => Err(ConsentError::ObjectionNotApplicable(purpose.into())),
        _ if rule.basis == LegalBasis::Consent => Ok(()),
        ConsentDecision::Denied | ConsentDecision::Withdrawn
            if method == Method::Gpc && rule.gpc_opt_out =>
        {
            Ok(())
        }
        _ => Err(ConsentError::NotConsentBased(purpose.into())),
    }
}

/// Whether an entry about one channel of a purpose may be recorded: the
/// purpose must reach people by that channel, rest on consent (the choice
/// refines a consent), and the decision be a grant or a refusal.
pub fn check_channel_entry(
    purpose: &str,
    rule: &PurposeRule,
    channel: Channel,
    decision: ConsentDecision,
) -> Result<(), ConsentError> {
    if !rule.covers(channel) {
        return Err(ConsentError::ChannelNotCovered(
            purpose.into(),
            channel.as_str().into(),
        ));
    }
    if rule.basis != LegalBasis::Consent {
        return Err(ConsentError::NotConsentBased(purpose.into()));
    }
    match decision {
        ConsentDecision::Granted | ConsentDecision::Denied | ConsentDecision::Withdrawn => Ok(()),
        _ => Err(ConsentError::ChannelDecision),
    }
}

impl ConsentError {
    pub fn code(&self) -> Code {
        match self {
            Self::BadPurposeId(_) => Code::InvalidPurposeId,
            Self::BadDataCategory(_) | Self::InvalidPurpose(_) => Code::InvalidPurpose,
            Self::UnknownChannel(_) => Code::UnknownChannel,
            Self::UnknownDecision(_) => Code::UnknownDecision,
            Self::UnknownMethod(_) => Code::UnknownMethod,
            Self::SpecialCategoryNeedsConsent => Code::SpecialCategoryNeedsConsent,
            Self::NotConsentBased(_) => Code::PurposeNotConsentBased,
            Self::ObjectionNotApplicable(_) => Code::ObjectionNotApplicable,
            Self::InvalidSignalMap(_) => Code::InvalidSignalMap,
            Self::ChannelNotCovered(..) => Code::ChannelNotCovered,
            Self::ChannelDecision => Code::InvalidChannelDecision,
        }
    }
}
