//! The policy decision: may this person's data be used for this purpose, over
//! this channel, now — and why. Pure and allocation-free: it runs on every
//! read, send and export.

use serde::Serialize;

use super::ledger::{ConsentDecision, ConsentState};
use super::purpose::{Channel, LegalBasis, PurposeRule};

/// Why the answer is what it is. Stable names: clients branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // Allowed.
    ConsentGranted,
    Contract,
    LegalObligation,
    VitalInterests,
    PublicTask,
    LegitimateInterests,
    // Not allowed.
    NoConsent,
    Denied,
    Withdrawn,
    PendingConfirmation,
    Expired,
    /// The notice changed materially since the person agreed.
    ReconsentRequired,
    /// Special-category data needs the person's own explicit consent, not an
    /// imported list or a CMP signal.
    ExplicitConsentRequired,
    Objected,
    /// The person opted out by Global Privacy Control.
    OptedOut,
    /// Processing is restricted (Art. 18) while a request is open.
    Restricted,
    /// The person was erased; only a blind index of them remains.
    Suppressed,
    /// The purpose does not cover this channel.
    ChannelNotCovered,
    /// The person keeps the purpose but switched this one channel of it off.
    ChannelWithdrawn,
    /// No such person is known.
    UnknownProfile,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsentGranted => "consent_granted",
            Self::Contract => "contract",
            Self::LegalObligation => "legal_obligation",
            Self::VitalInterests => "vital_interests",
            Self::PublicTask => "public_task",
            Self::LegitimateInterests => "legitimate_interests",
            Self::NoConsent => "no_consent",
            Self::Denied => "denied",
            Self::Withdrawn => "withdrawn",
            Self::PendingConfirmation => "pending_confirmation",
            Self::Expired => "expired",
            Self::ReconsentRequired => "reconsent_required",
            Self::ExplicitConsentRequired => "explicit_consent_required",
            Self::Objected => "objected",
            Self::OptedOut => "opted_out",
            Self::Restricted => "restricted",
            Self::Suppressed => "suppressed",
            Self::ChannelNotCovered => "channel_not_covered",
            Self::ChannelWithdrawn => "channel_withdrawn",
            Self::UnknownProfile => "unknown_profile",
        }
    }
}

/// Person-level facts that override any purpose's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileFlags {
    /// Restriction of processing (Art. 18) since this time.
    pub restricted_since: Option<i64>,
    /// Erased: the identifier asked about is on the suppression list.
    pub suppressed_since: Option<i64>,
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub basis: LegalBasis,
    pub reason: Reason,
    /// Since when the answer holds, where a recorded event decides it.
    pub since_ms: Option<i64>,
}

impl Verdict {
    fn no(basis: LegalBasis, reason: Reason, since_ms: Option<i64>) -> Self {
        Self {
            allowed: false,
            basis,
            reason,
            since_ms,
        }
    }

    fn yes(basis: LegalBasis, reason: Reason, since_ms: Option<i64>) -> Self {
        Self {
            allowed: true,
            basis,
            reason,
            since_ms,
        }
    }
}

fn refusal_reason(d: ConsentDecision, via_gpc: bool) -> Reason {
    match d {
        _ if via_gpc => Reason::OptedOut,
        ConsentDecision::Denied => Reason::Denied,
        ConsentDecision::Withdrawn => Reason::Withdrawn,
        _ => Reason::Objected,
    }
}

/// Decide. Checked in this order: erasure, restriction, channel, then the
/// legal basis with the person's recorded state.
pub fn decide(
    rule: &PurposeRule,
    channel: Option<Channel>,
    state: Option<&ConsentState>,
    flags: ProfileFlags,
    now_ms: i64,
) -> Verdict {
    let basis = rule.basis;
    if let Some(t) = flags.suppressed_since {
        return Verdict::no(basis, Reason::Suppressed, Some(t));
    }
    if let Some(t) = flags.restricted_since {
        return Verdict::no(basis, Reason::Restricted, Some(t));
    }
    if let Some(c) = channel
        && !rule.covers(c)
    {
        return Verdict::no(basis, Reason::ChannelNotCovered, None);
    }
    let refused = state.filter(|s| s.decision.is_refusal());
    if let Some(s) = refused {
        let via_gpc = s.method == super::ledger::Method::Gpc;
        // An objection stops direct marketing whatever its basis (Art. 21(2)).
        if s.decision == ConsentDecision::Objected && rule.direct_marketing {
            return Verdict::no(basis, Reason::Objected, Some(s.at_ms));
        }
        // A GPC opt-out binds every basis it is configured for.
        if via_gpc && rule.gpc_opt_out {
            return Verdict::no(basis, Reason::OptedOut, Some(s.at_ms));
        }
    }
    match basis {
        LegalBasis::Consent => {
            let Some(s) = state else {
                return Verdict::no(basis, Reason::NoConsent, None);
            };
            match s.decision {
                ConsentDecision::Granted => {
                    if let Some(c) = channel
                        && s.channel_off(c)
                    {
                        return Verdict::no(basis, Reason::ChannelWithdrawn, None);
                    }
                    if let Some(life) = rule.consent_lifetime_ms
                        && now_ms >= s.at_ms.saturating_add(life)
                    {
                        return Verdict::no(
                            basis,
                            Reason::Expired,
                            Some(s.at_ms.saturating_add(life)),
                        );
                    }
                    if s.notice_seq < rule.min_notice_seq {
                        return Verdict::no(basis, Reason::ReconsentRequired, Some(s.at_ms));
                    }
                    if rule.special_categories && !s.method.is_explicit() {
                        return Verdict::no(basis, Reason::ExplicitConsentRequired, Some(s.at_ms));
                    }
                    Verdict::yes(basis, Reason::ConsentGranted, Some(s.at_ms))
                }
                ConsentDecision::PendingConfirmation => {
                    Verdict::no(basis, Reason::PendingConfirmation, Some(s.at_ms))
                }
                ConsentDecision::Expired => Verdict::no(basis, Reason::Expired, Some(s.at_ms)),
                d => Verdict::no(
                    basis,
                    refusal_reason(d, s.method == super::ledger::Method::Gpc),
                    Some(s.at_ms),
                ),
            }
        }
        LegalBasis::LegitimateInterests | LegalBasis::PublicTask => match refused {
            // Under these bases any recorded no is an objection (Art. 21(1)).
            Some(s) => Verdict::no(
                basis,
                refusal_reason(s.decision, s.method == super::ledger::Method::Gpc),
                Some(s.at_ms),
            ),
            None if basis == LegalBasis::PublicTask => {
                Verdict::yes(basis, Reason::PublicTask, None)
            }
            None => Verdict::yes(basis, Reason::LegitimateInterests, None),
        },
        LegalBasis::Contract => Verdict::yes(basis, Reason::Contract, None),
        LegalBasis::LegalObligation => Verdict::yes(basis, Reason::LegalObligation, None),
        LegalBasis::VitalInterests => Verdict::yes(basis, Reason::VitalInterests, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ledger::Method;
    use crate::consent::purpose::{DataCategory, PurposeSpec};

    const DAY: i64 = 86_400_000;

    fn rule(basis: LegalBasis, f: impl FnOnce(&mut PurposeSpec)) -> PurposeRule {
        let mut s = PurposeSpec {
            name: "p".into(),
            legal_basis: basis,
            balancing_note: None,
            channels: vec![Channel::Email, Channel::Web],
            data_categories: vec![],
            retention_days: 30,
            consent_lifetime_days: None,
            gpc_opt_out: false,
            direct_marketing: false,
            notice: Default::default(),
            names: Default::default(),
            description: Default::default(),
        };
        f(&mut s);
        PurposeRule::new(&s, 2)
    }

    fn st(decision: ConsentDecision, method: Method, at_ms: i64, notice_seq: u32) -> ConsentState {
        ConsentState {
            decision,
            method,
            at_ms,
            notice_seq,
            seq: 1,
            gpc_ms: (method == Method::Gpc).then_some(at_ms),
            channels_off: 0,
        }
    }

    fn d(r: &PurposeRule, s: Option<ConsentState>, now: i64) -> (bool, Reason) {
        let v = decide(
            r,
            Some(Channel::Email),
            s.as_ref(),
            ProfileFlags::default(),
            now,
        );
        (v.allowed, v.reason)
    }

    #[test]
    fn consent_basis_follows_the_recorded_state() {
        let r = rule(LegalBasis::Consent, |s| s.consent_lifetime_days = Some(730));
        assert_eq!(d(&r, None, 0), (false, Reason::NoConsent));
        let g = st(ConsentDecision::Granted, Method::WebForm, 1000, 2);
        assert_eq!(d(&r, Some(g), 2000), (true, Reason::ConsentGranted));
        assert_eq!(
            d(&r, Some(g), 1000 + 730 * DAY),
            (false, Reason::Expired),
            "consent lapses after its lifetime"
        );
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Granted, Method::WebForm, 1000, 1)),
                2000
            ),
            (false, Reason::ReconsentRequired)
        );
        for (dec, reason) in [
            (ConsentDecision::Denied, Reason::Denied),
            (ConsentDecision::Withdrawn, Reason::Withdrawn),
            (
                ConsentDecision::PendingConfirmation,
                Reason::PendingConfirmation,
            ),
            (ConsentDecision::Expired, Reason::Expired),
            (ConsentDecision::Objected, Reason::Objected),
        ] {
            assert_eq!(d(&r, Some(st(dec, Method::Api, 1, 2)), 2), (false, reason));
        }
        let v = decide(&r, Some(Channel::Sms), Some(&g), ProfileFlags::default(), 2);
        assert_eq!((v.allowed, v.reason), (false, Reason::ChannelNotCovered));
        let v = decide(&r, None, Some(&g), ProfileFlags::default(), 2);
        assert!(v.allowed, "no channel named: the purpose alone decides");
    }

    #[test]
    fn a_channel_switched_off_is_denied_while_the_others_stay_allowed() {
        let r = rule(LegalBasis::Consent, |s| {
            s.channels = vec![Channel::Email, Channel::Sms]
        });
        let mut g = st(ConsentDecision::Granted, Method::WebForm, 1000, 2);
        g.channels_off = Channel::Sms.bit();
        let at = |c| {
            let v = decide(&r, c, Some(&g), ProfileFlags::default(), 2000);
            (v.allowed, v.reason)
        };
        assert_eq!(at(Some(Channel::Sms)), (false, Reason::ChannelWithdrawn));
        assert_eq!(at(Some(Channel::Email)), (true, Reason::ConsentGranted));
        assert_eq!(
            at(None),
            (true, Reason::ConsentGranted),
            "the purpose as a whole still stands"
        );
        // The purpose's own refusal speaks first.
        let mut w = st(ConsentDecision::Withdrawn, Method::WebForm, 1000, 2);
        w.channels_off = Channel::Sms.bit();
        let v = decide(
            &r,
            Some(Channel::Sms),
            Some(&w),
            ProfileFlags::default(),
            2000,
        );
        assert_eq!(v.reason, Reason::Withdrawn);
    }

    #[test]
    fn person_level_flags_come_first() {
        let r = rule(LegalBasis::Contract, |_| {});
        let flags = ProfileFlags {
            restricted_since: Some(5),
            suppressed_since: None,
        };
        let v = decide(&r, Some(Channel::Email), None, flags, 10);
        assert_eq!(
            (v.allowed, v.reason, v.since_ms),
            (false, Reason::Restricted, Some(5))
        );
        let flags = ProfileFlags {
            restricted_since: Some(5),
            suppressed_since: Some(7),
        };
        assert_eq!(decide(&r, None, None, flags, 10).reason, Reason::Suppressed);
    }

    #[test]
    fn legitimate_interest_stands_until_an_objection() {
        let r = rule(LegalBasis::LegitimateInterests, |s| {
            s.balancing_note = Some("x".into())
        });
        assert_eq!(d(&r, None, 1), (true, Reason::LegitimateInterests));
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Objected, Method::Staff, 1, 1)),
                2
            ),
            (false, Reason::Objected)
        );
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Withdrawn, Method::WebForm, 1, 1)),
                2
            ),
            (false, Reason::Withdrawn)
        );
        let contract = rule(LegalBasis::Contract, |_| {});
        assert_eq!(
            d(
                &contract,
                Some(st(ConsentDecision::Objected, Method::Staff, 1, 1)),
                2
            ),
            (true, Reason::Contract),
            "objection does not stop performing a contract"
        );
    }

    #[test]
    fn objection_stops_direct_marketing_on_any_basis() {
        let r = rule(LegalBasis::Contract, |s| s.direct_marketing = true);
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Objected, Method::Staff, 1, 1)),
                2
            ),
            (false, Reason::Objected)
        );
    }

    #[test]
    fn gpc_opts_out_of_sale_and_sharing_on_any_basis() {
        let r = rule(LegalBasis::LegitimateInterests, |s| {
            s.balancing_note = Some("x".into());
            s.gpc_opt_out = true;
        });
        assert_eq!(
            d(&r, Some(st(ConsentDecision::Denied, Method::Gpc, 1, 1)), 2),
            (false, Reason::OptedOut)
        );
        let c = rule(LegalBasis::Consent, |s| s.gpc_opt_out = true);
        assert_eq!(
            d(&c, Some(st(ConsentDecision::Denied, Method::Gpc, 1, 2)), 2),
            (false, Reason::OptedOut)
        );
    }

    #[test]
    fn special_categories_need_the_persons_own_consent() {
        let r = rule(LegalBasis::Consent, |s| {
            s.data_categories = vec![DataCategory::parse("health").unwrap()]
        });
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Granted, Method::Import, 1, 2)),
                2
            ),
            (false, Reason::ExplicitConsentRequired)
        );
        assert_eq!(
            d(
                &r,
                Some(st(ConsentDecision::Granted, Method::DoubleOptInEmail, 1, 2)),
                2
            ),
            (true, Reason::ConsentGranted)
        );
    }
}
