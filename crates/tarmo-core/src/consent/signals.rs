//! CMP strings as consent: IAB TCF v2 TC strings and GPP strings, read
//! through the operator's mapping ([`SignalMap`]) into ledger entries for the
//! catalog's purposes.
//!
//! A Tarmo purpose lists the signals that feed it ([`SignalSources`]). Each
//! source the string carries gives one answer:
//! - a TCF purpose (core segment), or a publisher purpose or custom purpose
//!   (publisher TC segment): *consent* if its consent bit is set, else
//!   *legitimate interest* if its legitimate-interest bit is set, else
//!   *refused*;
//! - a special feature: *consent* if opted in, else *refused*;
//! - a US opt-out (GPP `usnat`, and the state sections that have the field):
//!   *refused* if the person opted out, no answer otherwise: an opt-out
//!   regime never grants anything.
//!
//! A source the string does not carry (no publisher TC segment, a custom
//! purpose past the segment's count, no US section) gives no answer.
//!
//! The answers make at most one entry per purpose:
//! - a purpose resting on consent is `granted` when every answer is consent
//!   and `denied` when any is not (a legitimate-interest bit is no consent);
//! - a purpose the person may object to (legitimate interests, public task,
//!   or direct marketing on another basis) is `objected` when any answer is
//!   refused: the person cleared the legitimate-interest bit in the CMP and
//!   did not consent either. Otherwise nothing: there is no consent to grant;
//! - any other purpose (contract, legal obligation, vital interests) gets
//!   nothing.
//!
//! No answer, no entry; and every entry is one [`check_entry`] accepts, so a
//! signal cannot fail the transaction it is written in. Grants recorded this
//! way are not the person's explicit act ([`Method::is_explicit`]): they do
//! not lift an objection or an earlier GPC opt-out.
//!
//! A TC string made under a TCF policy version below 4 (TCF 2.0 and 2.1,
//! superseded by TCF 2.2 in 2023) is still read, and flagged outdated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tarmo_tcf::TcString;
use tarmo_tcf::gpp::{Choice, GppString, Section, UsNatSensitiveData};

use super::{
    ConsentDecision, ConsentError, LegalBasis, Method, PurposeId, PurposeRule, check_entry,
};

/// The first TCF policy version of TCF 2.2; strings made under an earlier
/// one are flagged outdated.
pub const CURRENT_POLICY_VERSION: u8 = 4;

/// A US opt-out a GPP string can carry. Sale, sharing and targeted
/// advertising are read from `usnat` and from every state section that has
/// the field; the sensitive-data categories from `usnat` only (their lists
/// differ by state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsOptOut {
    Sale,
    Sharing,
    TargetedAdvertising,
    SensitiveRacialOrEthnicOrigin,
    SensitiveReligiousOrPhilosophicalBeliefs,
    SensitiveHealth,
    SensitiveSexLifeOrSexualOrientation,
    SensitiveCitizenshipOrImmigrationStatus,
    SensitiveGeneticData,
    SensitiveBiometricData,
    SensitivePreciseGeolocation,
    SensitiveGovernmentIdNumbers,
    SensitiveAccountOrFinancialCredentials,
    SensitiveUnionMembership,
    SensitiveCommunicationContents,
}

impl UsOptOut {
    /// The 0-based position in `usnat`'s sensitive-data list (the same in
    /// versions 1 and 2; version 2 only appends).
    fn sensitive_index(self) -> Option<usize> {
        use UsOptOut::*;
        let i = match self {
            Sale | Sharing | TargetedAdvertising => return None,
            SensitiveRacialOrEthnicOrigin => 0,
            SensitiveReligiousOrPhilosophicalBeliefs => 1,
            SensitiveHealth => 2,
            SensitiveSexLifeOrSexualOrientation => 3,
            SensitiveCitizenshipOrImmigrationStatus => 4,
            SensitiveGeneticData => 5,
            SensitiveBiometricData => 6,
            SensitivePreciseGeolocation => 7,
            SensitiveGovernmentIdNumbers => 8,
            SensitiveAccountOrFinancialCredentials => 9,
            SensitiveUnionMembership => 10,
            SensitiveCommunicationContents => 11,
        };
        Some(i)
    }

    /// The person's choice in one section, if the section has the field.
    fn choice(self, section: &Section) -> Option<Choice> {
        use UsOptOut::*;
        match (section, self) {
            (Section::UsNat(s), Sale) => Some(s.sale_opt_out),
            (Section::UsNat(s), Sharing) => Some(s.sharing_opt_out),
            (Section::UsNat(s), TargetedAdvertising) => Some(s.targeted_advertising_opt_out),
            (Section::UsNat(s), _) => {
                let i = self.sensitive_index()?;
                match &s.sensitive_data {
                    UsNatSensitiveData::V1 { processing, .. } => processing.get(i).copied(),
                    UsNatSensitiveData::V2 { processing, .. } => processing.get(i).copied(),
                }
            }
            (Section::UsCa(s), Sale) => Some(s.sale_opt_out),
            (Section::UsCa(s), Sharing) => Some(s.sharing_opt_out),
            (Section::UsVa(s), Sale) => Some(s.sale_opt_out),
            (Section::UsVa(s), TargetedAdvertising) => Some(s.targeted_advertising_opt_out),
            (Section::UsCo(s), Sale) => Some(s.sale_opt_out),
            (Section::UsCo(s), TargetedAdvertising) => Some(s.targeted_advertising_opt_out),
            (Section::UsUt(s), Sale) => Some(s.sale_opt_out),
            (Section::UsUt(s), TargetedAdvertising) => Some(s.targeted_advertising_opt_out),
            (Section::UsCt(s), Sale) => Some(s.sale_opt_out),
            (Section::UsCt(s), TargetedAdvertising) => Some(s.targeted_advertising_opt_out),
            _ => None,
        }
    }
}

/// What feeds one Tarmo purpose. Ids are as the IAB defines them: TCF and
/// publisher purposes 1 to 11, special features 1 to 2, custom purposes 1
/// to 63.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSources {
    /// TCF purposes of the core segment (the person's choice for vendors).
    #[serde(default)]
    pub tcf_purposes: Vec<u8>,
    #[serde(default)]
    pub special_features: Vec<u8>,
    /// The publisher's own purposes (publisher TC segment).
    #[serde(default)]
    pub publisher_purposes: Vec<u8>,
    /// The publisher's custom purposes (publisher TC segment).
    #[serde(default)]
    pub custom_purposes: Vec<u8>,
    /// GPP US opt-outs.
    #[serde(default)]
    pub us_opt_outs: Vec<UsOptOut>,
}

/// The operator's table from CMP signals to Tarmo purposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMap {
    purposes: BTreeMap<PurposeId, SignalSources>,
}

impl Default for SignalMap {
    /// The mapping for the default catalog: personalisation from TCF purposes
    /// 5 and 6 (profiles for personalised content), ad audiences from TCF
    /// purposes 3 and 4 (profiles for personalised advertising) and the US
    /// sale, sharing and targeted-advertising opt-outs, analytics (a
    /// legitimate interest) from TCF purposes 8 (measure content performance)
    /// and 10 (develop and improve services). Marketing by email or SMS is
    /// not what a cookie banner asks about, and order fulfilment rests on the
    /// contract: nothing feeds them.
    fn default() -> Self {
        let id = |s: &str| PurposeId::parse(s).expect("valid default purpose id");
        let purposes = BTreeMap::from([
            (
                id("personalisation"),
                SignalSources {
                    tcf_purposes: vec![5, 6],
                    ..Default::default()
                },
            ),
            (
                id("ad_audiences"),
                SignalSources {
                    tcf_purposes: vec![3, 4],
                    us_opt_outs: vec![
                        UsOptOut::Sale,
                        UsOptOut::Sharing,
                        UsOptOut::TargetedAdvertising,
                    ],
                    ..Default::default()
                },
            ),
            (
                id("analytics"),
                SignalSources {
                    tcf_purposes: vec![8, 10],
                    ..Default::default()
                },
            ),
        ]);
        SignalMap { purposes }
    }
}

/// What one CMP string says, as ledger entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalReading {
    pub method: Method,
    /// At most one per purpose, in purpose order; only purposes `rule_of`
    /// knows.
    pub entries: Vec<(PurposeId, ConsentDecision)>,
    /// The TCF policy version of the TC string (of a GPP string's TCF
    /// section; none without one).
    pub policy_version: Option<u8>,
    /// The CMP that made the TC string (or a GPP string's TCF section).
    pub cmp_id: Option<u16>,
    /// Made under a TCF policy version below [`CURRENT_POLICY_VERSION`].
    pub outdated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Consent,
    LegitimateInterest,
    Refused,
}

fn answer(consent: bool, legitimate_interest: bool) -> Answer {
    match (consent, legitimate_interest) {
        (true, _) => Answer::Consent,
        (false, true) => Answer::LegitimateInterest,
        (false, false) => Answer::Refused,
    }
}

fn range_error(purpose: &PurposeId, what: &str, id: u8, max: u8) -> ConsentError {
    ConsentError::InvalidSignalMap(format!(
        "[consent_signals.{purpose}] {what} {id} is not an IAB id (1 to {max})"
    ))
}

impl SignalMap {
    /// A mapping, once every id in it is one the IAB defines.
    pub fn new(purposes: BTreeMap<PurposeId, SignalSources>) -> Result<Self, ConsentError> {
        for (p, s) in &purposes {
            let lists: [(&str, &[u8], u8); 4] = [
                ("TCF purpose", &s.tcf_purposes, 11),
                ("special feature", &s.special_features, 2),
                ("publisher purpose", &s.publisher_purposes, 11),
                ("custom purpose", &s.custom_purposes, 63),
            ];
            for (what, ids, max) in lists {
                if let Some(&bad) = ids.iter().find(|&&i| i == 0 || i > max) {
                    return Err(range_error(p, what, bad, max));
                }
            }
        }
        Ok(SignalMap { purposes })
    }

    /// Each Tarmo purpose and what feeds it.
    pub fn purposes(&self) -> impl Iterator<Item = (&PurposeId, &SignalSources)> {
        self.purposes.iter()
    }

    /// A TC string as entries; `rule_of` gives the catalog's rule for a
    /// purpose (purposes it does not know get no entry).
    pub fn read_tcf(
        &self,
        tc: &TcString,
        rule_of: impl Fn(&str) -> Option<PurposeRule>,
    ) -> SignalReading {
        let entries = self.entries(Method::Tcf, &rule_of, |src, out| tcf_answers(src, tc, out));
        reading(Method::Tcf, entries, Some(tc))
    }

    /// A GPP string as entries: its TCF section through the TCF sources, its
    /// US sections through the US opt-outs. A refusal in either wins.
    pub fn read_gpp(
        &self,
        gpp: &GppString,
        rule_of: impl Fn(&str) -> Option<PurposeRule>,
    ) -> SignalReading {
        let tc = gpp.tcf_eu_v2();
        let entries = self.entries(Method::Gpp, &rule_of, |src, out| {
            if let Some(tc) = tc {
                tcf_answers(src, tc, out);
            }
            for section in gpp.sections() {
                for o in &src.us_opt_outs {
                    if o.choice(section) == Some(Choice::Denied) {
                        out.push(Answer::Refused);
                    }
                }
            }
        });
        reading(Method::Gpp, entries, tc)
    }

    fn entries(
        &self,
        method: Method,
        rule_of: &dyn Fn(&str) -> Option<PurposeRule>,
        answers_of: impl Fn(&SignalSources, &mut Vec<Answer>),
    ) -> Vec<(PurposeId, ConsentDecision)> {
        let mut entries = Vec::new();
        let mut answers = Vec::new();
        for (purpose, src) in &self.purposes {
            let Some(rule) = rule_of(purpose.as_str()) else {
                continue;
            };
            answers.clear();
            answers_of(src, &mut answers);
            if let Some(d) = decision(purpose, &rule, &answers, method) {
                entries.push((purpose.clone(), d));
            }
        }
        entries
    }
}

fn reading(
    method: Method,
    entries: Vec<(PurposeId, ConsentDecision)>,
    tc: Option<&TcString>,
) -> SignalReading {
    let policy_version = tc.map(|t| t.policy_version.get());
    SignalReading {
        method,
        entries,
        policy_version,
        cmp_id: tc.map(|t| t.cmp_id.get()),
        outdated: policy_version.is_some_and(|v| v < CURRENT_POLICY_VERSION),
    }
}

fn tcf_answers(src: &SignalSources, tc: &TcString, out: &mut Vec<Answer>) {
    for &p in &src.tcf_purposes {
        out.push(answer(
            tc.purpose_consents.contains(p),
            tc.purpose_legitimate_interests.contains(p),
        ));
    }
    for &f in &src.special_features {
        out.push(answer(tc.special_feature_optins.contains(f), false));
    }
    let Some(publisher) = &tc.publisher_tc else {
        return;
    };
    for &p in &src.publisher_purposes {
        out.push(answer(
            publisher.consents.contains(p),
            publisher.legitimate_interests.contains(p),
        ));
    }
    let custom = publisher.custom_purposes;
    for &c in src.custom_purposes.iter().filter(|&&c| c <= custom.count()) {
        out.push(answer(
            custom.consents().contains(c),
            custom.legitimate_interests().contains(c),
        ));
    }
}

/// The entry one purpose gets from its answers; see the module documentation.
fn decision(
    purpose: &PurposeId,
    rule: &PurposeRule,
    answers: &[Answer],
    method: Method,
) -> Option<ConsentDecision> {
    if answers.is_empty() {
        return None;
    }
    let d = if rule.basis == LegalBasis::Consent {
        if answers.iter().all(|a| *a == Answer::Consent) {
            ConsentDecision::Granted
        } else {
            ConsentDecision::Denied
        }
    } else if answers.contains(&Answer::Refused) {
        ConsentDecision::Objected
    } else {
        return None;
    };
    check_entry(purpose.as_str(), rule, d, method)
        .is_ok()
        .then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::purpose::{Channel, PurposeSpec};
    use ConsentDecision::*;
    use tarmo_tcf::gpp::{UsCa, UsNat};
    use tarmo_tcf::{
        CmpId, CmpVersion, ConsentScreen, CountryCode, CustomPurposes, Deciseconds, IdSet,
        LanguageCode, PolicyVersion, PublisherRestrictions, PublisherTc, PurposeSet,
        SpecialFeatureSet, VendorListVersion, VendorSet,
    };

    fn rule(basis: LegalBasis, direct_marketing: bool) -> PurposeRule {
        let spec = PurposeSpec {
            name: "p".into(),
            legal_basis: basis,
            balancing_note: None,
            channels: vec![Channel::Web],
            data_categories: vec![],
            retention_days: 30,
            consent_lifetime_days: None,
            gpc_opt_out: false,
            direct_marketing,
            notice: BTreeMap::new(),
            names: BTreeMap::new(),
            description: BTreeMap::new(),
        };
        PurposeRule::new(&spec, 1)
    }

    /// The default catalog's bases.
    fn catalog(purpose: &str) -> Option<PurposeRule> {
        match purpose {
            "personalisation" => Some(rule(LegalBasis::Consent, false)),
            "ad_audiences" => Some(rule(LegalBasis::Consent, true)),
            "analytics" => Some(rule(LegalBasis::LegitimateInterests, false)),
            "order_fulfilment" => Some(rule(LegalBasis::Contract, false)),
            _ => None,
        }
    }

    fn tc(consents: &[u8], lis: &[u8], policy: u8) -> TcString {
        TcString {
            created: Deciseconds::new(17_000_000_000).unwrap(),
            last_updated: Deciseconds::new(17_000_000_000).unwrap(),
            cmp_id: CmpId::new(300).unwrap(),
            cmp_version: CmpVersion::new(2).unwrap(),
            consent_screen: ConsentScreen::new(1).unwrap(),
            consent_language: LanguageCode::parse("EN").unwrap(),
            vendor_list_version: VendorListVersion::new(80).unwrap(),
            policy_version: PolicyVersion::new(policy).unwrap(),
            is_service_specific: true,
            use_non_standard_texts: false,
            special_feature_optins: SpecialFeatureSet::new(),
            purpose_consents: PurposeSet::from_ids(consents.iter().copied()).unwrap(),
            purpose_legitimate_interests: PurposeSet::from_ids(lis.iter().copied()).unwrap(),
            purpose_one_treatment: false,
            publisher_country_code: CountryCode::parse("FI").unwrap(),
            vendor_consents: VendorSet::new(),
            vendor_legitimate_interests: VendorSet::new(),
            publisher_restrictions: PublisherRestrictions::new(),
            vendors_disclosed: None,
            publisher_tc: None,
        }
    }

    fn entries(r: &SignalReading) -> Vec<(&str, ConsentDecision)> {
        r.entries.iter().map(|(p, d)| (p.as_str(), *d)).collect()
    }

    #[test]
    fn accept_all_grants_consent_purposes_and_leaves_legitimate_interests_alone() {
        let all: Vec<u8> = (1..=11).collect();
        let r = SignalMap::default().read_tcf(&tc(&all, &[2, 7, 8, 9, 10], 4), catalog);
        assert_eq!(
            entries(&r),
            [("ad_audiences", Granted), ("personalisation", Granted)]
        );
        assert_eq!(r.method, Method::Tcf);
        assert_eq!(
            (r.policy_version, r.cmp_id, r.outdated),
            (Some(4), Some(300), false)
        );
    }

    #[test]
    fn reject_all_denies_but_an_untouched_legitimate_interest_is_no_objection() {
        let r = SignalMap::default().read_tcf(&tc(&[], &[2, 7, 8, 9, 10], 5), catalog);
        assert_eq!(
            entries(&r),
            [("ad_audiences", Denied), ("personalisation", Denied)]
        );
    }

    #[test]
    fn a_cleared_legitimate_interest_bit_is_an_objection() {
        // The person objected to purpose 10 in the CMP; 8 still stands.
        let r = SignalMap::default().read_tcf(&tc(&[1], &[2, 7, 8, 9], 4), catalog);
        assert_eq!(of(&r, "analytics"), Some(Objected));
        // Consent to the purpose is a stronger yes than legitimate interest.
        let r = SignalMap::default().read_tcf(&tc(&[8, 10], &[], 4), catalog);
        assert_eq!(of(&r, "analytics"), None);
    }

    fn of(r: &SignalReading, purpose: &str) -> Option<ConsentDecision> {
        r.entries
            .iter()
            .find(|(p, _)| p.as_str() == purpose)
            .map(|(_, d)| *d)
    }

    #[test]
    fn a_purpose_fed_by_several_is_granted_only_if_all_are_consented() {
        let r = SignalMap::default().read_tcf(&tc(&[1, 3, 5, 6], &[8, 10], 4), catalog);
        assert_eq!(of(&r, "ad_audiences"), Some(Denied), "3 without 4");
        assert_eq!(of(&r, "personalisation"), Some(Granted), "5 and 6");
        // A legitimate-interest bit is not consent.
        let r = SignalMap::default().read_tcf(&tc(&[3], &[4, 8, 10], 4), catalog);
        assert_eq!(of(&r, "ad_audiences"), Some(Denied));
        // For a legitimate interest, one objection among its TCF purposes is
        // enough.
        let r = SignalMap::default().read_tcf(&tc(&[], &[8], 4), catalog);
        assert_eq!(of(&r, "analytics"), Some(Objected));
    }

    #[test]
    fn policy_versions_before_tcf_2_2_are_read_and_flagged_outdated() {
        for (policy, outdated) in [(2, true), (3, true), (4, false), (5, false)] {
            let r = SignalMap::default().read_tcf(&tc(&[3, 4], &[8, 10], policy), catalog);
            assert_eq!(r.outdated, outdated, "policy version {policy}");
            assert_eq!(r.policy_version, Some(policy));
            assert_eq!(of(&r, "ad_audiences"), Some(Granted));
        }
    }

    #[test]
    fn only_entries_check_entry_accepts_are_made() {
        let map = SignalMap::new(BTreeMap::from([
            (
                PurposeId::parse("order_fulfilment").unwrap(),
                SignalSources {
                    tcf_purposes: vec![1],
                    ..Default::default()
                },
            ),
            (
                PurposeId::parse("unknown_one").unwrap(),
                SignalSources {
                    tcf_purposes: vec![1],
                    ..Default::default()
                },
            ),
        ]))
        .unwrap();
        for consents in [&[][..], &[1]] {
            let r = map.read_tcf(&tc(consents, &[], 4), catalog);
            assert!(r.entries.is_empty(), "{r:?}");
        }
        // Direct marketing on a contract basis may be objected to.
        let dm = |p: &str| (p == "order_fulfilment").then(|| rule(LegalBasis::Contract, true));
        let r = map.read_tcf(&tc(&[], &[], 4), dm);
        assert_eq!(entries(&r), [("order_fulfilment", Objected)]);
    }

    #[test]
    fn special_features_publisher_and_custom_purposes() {
        let map = SignalMap::new(BTreeMap::from([(
            PurposeId::parse("personalisation").unwrap(),
            SignalSources {
                special_features: vec![1],
                publisher_purposes: vec![5],
                custom_purposes: vec![2, 9],
                ..Default::default()
            },
        )]))
        .unwrap();
        let mut t = tc(&[], &[], 4);
        t.special_feature_optins = SpecialFeatureSet::from_ids([1]).unwrap();
        // Without the publisher segment only the special feature answers.
        assert_eq!(
            entries(&map.read_tcf(&t, catalog)),
            [("personalisation", Granted)]
        );
        // Custom purpose 9 is past the count: no answer; 2 is consented.
        t.publisher_tc = Some(PublisherTc {
            consents: PurposeSet::from_ids([5]).unwrap(),
            legitimate_interests: PurposeSet::new(),
            custom_purposes: CustomPurposes::new(3, IdSet::from_ids([2]).unwrap(), IdSet::new())
                .unwrap(),
        });
        assert_eq!(
            entries(&map.read_tcf(&t, catalog)),
            [("personalisation", Granted)]
        );
        t.special_feature_optins = SpecialFeatureSet::new();
        assert_eq!(
            entries(&map.read_tcf(&t, catalog)),
            [("personalisation", Denied)]
        );
    }

    fn gpp_with(sections: Vec<Section>) -> GppString {
        let mut g = GppString::new();
        for s in sections {
            g.insert(s);
        }
        // Through the wire format, as a real string arrives.
        tarmo_tcf::gpp::decode(&g.encode()).unwrap()
    }

    #[test]
    fn gpp_us_opt_outs_deny_and_never_grant() {
        let opted_out = UsNat {
            sale_opt_out: Choice::Denied,
            sharing_opt_out: Choice::Allowed,
            targeted_advertising_opt_out: Choice::Allowed,
            ..Default::default()
        };
        let r = SignalMap::default().read_gpp(&gpp_with(vec![Section::UsNat(opted_out)]), catalog);
        assert_eq!(entries(&r), [("ad_audiences", Denied)]);
        assert_eq!(r.method, Method::Gpp);
        assert_eq!(
            (r.policy_version, r.cmp_id, r.outdated),
            (None, None, false)
        );

        let did_not = UsNat {
            sale_opt_out: Choice::Allowed,
            sharing_opt_out: Choice::Allowed,
            targeted_advertising_opt_out: Choice::NotApplicable,
            ..Default::default()
        };
        let r = SignalMap::default().read_gpp(&gpp_with(vec![Section::UsNat(did_not)]), catalog);
        assert!(r.entries.is_empty(), "{r:?}");

        // A state section's sharing opt-out counts too.
        let ca = UsCa {
            sharing_opt_out: Choice::Denied,
            ..Default::default()
        };
        let r = SignalMap::default().read_gpp(&gpp_with(vec![Section::UsCa(ca)]), catalog);
        assert_eq!(entries(&r), [("ad_audiences", Denied)]);
    }

    #[test]
    fn gpp_opt_outs_object_to_legitimate_interests_and_read_sensitive_data() {
        let map = SignalMap::new(BTreeMap::from([(
            PurposeId::parse("analytics").unwrap(),
            SignalSources {
                us_opt_outs: vec![UsOptOut::SensitivePreciseGeolocation],
                ..Default::default()
            },
        )]))
        .unwrap();
        let mut processing = [Choice::Allowed; 16];
        let mut s = UsNat {
            sensitive_data: UsNatSensitiveData::V2 {
                processing,
                known_child_consents: [Choice::NotApplicable; 3],
            },
            ..Default::default()
        };
        let r = map.read_gpp(&gpp_with(vec![Section::UsNat(s.clone())]), catalog);
        assert!(r.entries.is_empty());
        processing[7] = Choice::Denied;
        s.sensitive_data = UsNatSensitiveData::V2 {
            processing,
            known_child_consents: [Choice::NotApplicable; 3],
        };
        let r = map.read_gpp(&gpp_with(vec![Section::UsNat(s)]), catalog);
        assert_eq!(entries(&r), [("analytics", Objected)]);
    }

    #[test]
    fn a_gpp_tcf_section_is_read_and_a_us_refusal_wins_over_its_grant() {
        let t = tc(&[3, 4, 5, 6], &[8, 10], 3);
        let us = UsNat {
            targeted_advertising_opt_out: Choice::Denied,
            ..Default::default()
        };
        let g = gpp_with(vec![
            Section::TcfEuV2(Box::new(t.clone())),
            Section::UsNat(us),
        ]);
        let r = SignalMap::default().read_gpp(&g, catalog);
        assert_eq!(
            entries(&r),
            [("ad_audiences", Denied), ("personalisation", Granted)]
        );
        assert_eq!(
            (r.policy_version, r.cmp_id, r.outdated),
            (Some(3), Some(300), true)
        );
    }

    #[test]
    fn ids_outside_the_iab_lists_are_refused() {
        for sources in [
            SignalSources {
                tcf_purposes: vec![12],
                ..Default::default()
            },
            SignalSources {
                special_features: vec![3],
                ..Default::default()
            },
            SignalSources {
                custom_purposes: vec![0],
                ..Default::default()
            },
        ] {
            let m = BTreeMap::from([(PurposeId::parse("x").unwrap(), sources)]);
            let e = SignalMap::new(m).unwrap_err();
            assert_eq!(e.code(), crate::codes::Code::InvalidSignalMap);
        }
        let toml_like: SignalSources =
            serde_json::from_str(r#"{"us_opt_outs": ["sale", "sensitive_health"]}"#).unwrap();
        assert_eq!(
            toml_like.us_opt_outs,
            [UsOptOut::Sale, UsOptOut::SensitiveHealth]
        );
        assert!(serde_json::from_str::<SignalSources>(r#"{"vendors": [1]}"#).is_err());
    }

    proptest::proptest! {
        /// Whatever the string and the purpose's basis, an entry is one
        /// `check_entry` accepts, and a consent purpose is granted exactly
        /// when every TCF purpose feeding it is consented.
        #[test]
        fn entries_always_fit_the_purpose(
            consents in 0u32..(1 << 11),
            lis in 0u32..(1 << 11),
            basis in 0usize..6,
            direct_marketing: bool,
        ) {
            let bases = [
                LegalBasis::Consent,
                LegalBasis::Contract,
                LegalBasis::LegalObligation,
                LegalBasis::VitalInterests,
                LegalBasis::PublicTask,
                LegalBasis::LegitimateInterests,
            ];
            let ids = |bits: u32| (1..=11u8).filter(|i| bits & (1 << (i - 1)) != 0).collect::<Vec<_>>();
            let r = rule(bases[basis], direct_marketing);
            let map = SignalMap::new(BTreeMap::from([(
                PurposeId::parse("p").unwrap(),
                SignalSources { tcf_purposes: vec![2, 7, 9], ..Default::default() },
            )]))
            .unwrap();
            let reading = map.read_tcf(&tc(&ids(consents), &ids(lis), 4), |_| Some(r));
            proptest::prop_assert!(reading.entries.len() <= 1);
            for (p, d) in &reading.entries {
                proptest::prop_assert!(check_entry(p.as_str(), &r, *d, Method::Tcf).is_ok());
            }
            if bases[basis] == LegalBasis::Consent {
                let all = [2u8, 7, 9].iter().all(|i| consents & (1 << (i - 1)) != 0);
                let want = if all { Granted } else { Denied };
                proptest::prop_assert_eq!(of(&reading, "p"), Some(want));
            }
        }
    }
}
