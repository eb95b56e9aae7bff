//! The purpose catalog: what personal data is used for, on which legal basis,
//! over which channels, with which data, for how long — and the exact notice
//! text each person is shown, versioned by its hash.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ConsentError;

/// A purpose's name in the catalog: `[a-z][a-z0-9_]{0,63}` (`email_marketing`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PurposeId(String);

impl PurposeId {
    pub fn parse(s: &str) -> Result<Self, ConsentError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ConsentError::BadPurposeId(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PurposeId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PurposeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for PurposeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PurposeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PurposeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The lawful bases of GDPR Art. 6(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    /// Art. 6(1)(a): the person agreed, and may withdraw at any time.
    Consent,
    /// Art. 6(1)(b): needed to perform a contract with the person.
    Contract,
    /// Art. 6(1)(c).
    LegalObligation,
    /// Art. 6(1)(d).
    VitalInterests,
    /// Art. 6(1)(e).
    PublicTask,
    /// Art. 6(1)(f), with a recorded balancing test; the person may object.
    LegitimateInterests,
}

impl LegalBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consent => "consent",
            Self::Contract => "contract",
            Self::LegalObligation => "legal_obligation",
            Self::VitalInterests => "vital_interests",
            Self::PublicTask => "public_task",
            Self::LegitimateInterests => "legitimate_interests",
        }
    }

    /// Art. 21(1): the person may object to processing on these bases.
    pub fn objectionable(self) -> bool {
        matches!(self, Self::LegitimateInterests | Self::PublicTask)
    }
}

/// Where a purpose reaches the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Phone,
    Post,
    Web,
    Ads,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Self::Email,
        Self::Sms,
        Self::Push,
        Self::Phone,
        Self::Post,
        Self::Web,
        Self::Ads,
    ];

    pub fn parse(s: &str) -> Result<Self, ConsentError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ConsentError::UnknownChannel(s.chars().take(40).collect()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
            Self::Phone => "phone",
            Self::Post => "post",
            Self::Web => "web",
            Self::Ads => "ads",
        }
    }

    /// This channel's bit in a set of channels (a purpose's channels, the
    /// channels a person switched off within a purpose).
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The channels of a set of bits, in [`Channel::ALL`] order.
    pub fn in_set(bits: u8) -> impl Iterator<Item = Channel> {
        Self::ALL.into_iter().filter(move |c| bits & c.bit() != 0)
    }
}

/// A kind of personal data a purpose uses (`contact`, `purchase_history`,
/// `location`, `health`, ...): `[a-z][a-z0-9_]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DataCategory(String);

/// The special categories of GDPR Art. 9(1), processed only with explicit
/// consent (Art. 9(2)(a)) in this product.
pub const SPECIAL_CATEGORIES: &[&str] = &[
    "racial_or_ethnic_origin",
    "political_opinions",
    "religious_or_philosophical_beliefs",
    "trade_union_membership",
    "genetic",
    "biometric",
    "health",
    "sex_life_or_sexual_orientation",
];

impl DataCategory {
    pub fn parse(s: &str) -> Result<Self, ConsentError> {
        PurposeId::parse(s)
            .map(|p| Self(p.0))
            .map_err(|_| ConsentError::BadDataCategory(s.chars().take(80).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_special(&self) -> bool {
        SPECIAL_CATEGORIES.contains(&self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for DataCategory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A language tag as the notice texts are keyed: `en`, `fi`, `nb`, `pt-BR`.
pub fn valid_language(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let Some(primary) = parts.next() else {
        return false;
    };
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A purpose as an operator defines it (in `tarmo.toml` or by
/// `PUT /api/v1/purposes/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeSpec {
    /// A short name people understand ("Newsletter by email").
    pub name: String,
    pub legal_basis: LegalBasis,
    /// The balancing test behind a legitimate interest: required for that
    /// basis, refused for any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing_note: Option<String>,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub data_categories: Vec<DataCategory>,
    /// How long data kept for this purpose may be kept, in days.
    pub retention_days: u32,
    /// How long a consent stays valid before it must be asked again (days);
    /// none: until withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_lifetime_days: Option<u32>,
    /// Sale, sharing or targeted advertising: a Global Privacy Control signal
    /// is an opt-out of it.
    #[serde(default)]
    pub gpc_opt_out: bool,
    /// Direct marketing: an objection (Art. 21(2)) stops it, whatever the basis.
    #[serde(default)]
    pub direct_marketing: bool,
    /// The exact text shown to the person, by language tag. A purpose resting
    /// on consent needs at least one.
    #[serde(default)]
    pub notice: BTreeMap<String, String>,
    /// `name` in other languages, by language tag; `name` stands where a
    /// language has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
    /// What is done with the data and why, in plain words, by language tag:
    /// shown on the person's own page. Purposes that ask no consent
    /// (legitimate interests, contract) have no notice, so this is where
    /// the person reads what they may object to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub description: BTreeMap<String, String>,
}

impl PurposeSpec {
    /// Check the rules a purpose must follow before it enters the catalog.
    pub fn validate(&self) -> Result<(), ConsentError> {
        let bad = |m: &str| Err(ConsentError::InvalidPurpose(m.to_owned()));
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return bad("`name` must be 1 to 200 characters");
        }
        match (self.legal_basis, &self.balancing_note) {
            (LegalBasis::LegitimateInterests, None) => {
                return bad(
                    "a purpose resting on legitimate interests needs its `balancing_note` (the recorded balancing test)",
                );
            }
            (LegalBasis::LegitimateInterests, Some(n)) if n.trim().is_empty() => {
                return bad("`balancing_note` is empty");
            }
            (b, Some(_)) if b != LegalBasis::LegitimateInterests => {
                return bad("`balancing_note` belongs only to legitimate interests");
            }
            _ => {}
        }
        if self.retention_days == 0 {
            return bad("`retention_days` must be at least 1");
        }
        if self.consent_lifetime_days == Some(0) {
            return bad("`consent_lifetime_days` must be at least 1 when given");
        }
        if self.legal_basis != LegalBasis::Consent && self.consent_lifetime_days.is_some() {
            return bad("`consent_lifetime_days` applies only to purposes resting on consent");
        }
        if self.legal_basis == LegalBasis::Consent && self.notice.is_empty() {
            return bad(
                "a purpose resting on consent needs a `notice`: the text the person agrees to, by language",
            );
        }
        if self.data_categories.iter().any(DataCategory::is_special)
            && self.legal_basis != LegalBasis::Consent
        {
            return Err(ConsentError::SpecialCategoryNeedsConsent);
        }
        for (field, texts, max) in [
            ("notice", &self.notice, 20_000),
            ("names", &self.names, 200),
            ("description", &self.description, 20_000),
        ] {
            for (lang, text) in texts {
                if !valid_language(lang) {
                    return bad(&format!(
                        "`{lang}` in `{field}` is not a language tag (e.g. en, fi, pt-BR)"
                    ));
                }
                if text.trim().is_empty() || text.len() > max {
                    return bad(&format!(
                        "the `{lang}` text of `{field}` must be 1 to {max} bytes"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn uses_special_categories(&self) -> bool {
        self.data_categories.iter().any(DataCategory::is_special)
    }

    /// The version of the notice: SHA-256 over the texts, in language order,
    /// as 32 hex digits. The same texts always give the same version.
    pub fn notice_version(&self) -> String {
        notice_version(&self.notice)
    }

    /// The text for `lang`, falling back to its primary language, then
    /// English, then any.
    pub fn notice_text(&self, lang: &str) -> Option<(&str, &str)> {
        notice_text(&self.notice, lang)
    }

    /// The name for `lang` and the language it is written in: a name given
    /// for `lang` or its primary language, else `name` (whose language is
    /// the English of the catalog, `en`).
    pub fn name_in(&self, lang: &str) -> (&str, &str) {
        let primary = lang.split('-').next().unwrap_or(lang);
        self.names
            .get_key_value(lang)
            .or_else(|| self.names.get_key_value(primary))
            .map_or(("en", self.name.as_str()), |(k, v)| {
                (k.as_str(), v.as_str())
            })
    }

    /// The description for `lang`, with the same fallback as the notice.
    pub fn description_in(&self, lang: &str) -> Option<(&str, &str)> {
        notice_text(&self.description, lang)
    }
}

/// The text for `lang` among notice texts, falling back to its primary
/// language, then English, then any.
pub fn notice_text<'a>(
    texts: &'a BTreeMap<String, String>,
    lang: &str,
) -> Option<(&'a str, &'a str)> {
    let primary = lang.split('-').next().unwrap_or(lang);
    texts
        .get_key_value(lang)
        .or_else(|| texts.get_key_value(primary))
        .or_else(|| texts.get_key_value("en"))
        .or_else(|| texts.iter().next())
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

pub fn notice_version(texts: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (lang, text) in texts {
        h.update((lang.len() as u64).to_le_bytes());
        h.update(lang.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// What the policy needs of a purpose, compact for the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurposeRule {
    pub basis: LegalBasis,
    channels: u8,
    /// Consent lifetime in milliseconds.
    pub consent_lifetime_ms: Option<i64>,
    /// Consents given under an older notice than this need asking again.
    pub min_notice_seq: u32,
    pub special_categories: bool,
    pub direct_marketing: bool,
    pub gpc_opt_out: bool,
}

impl PurposeRule {
    pub fn new(spec: &PurposeSpec, min_notice_seq: u32) -> Self {
        Self {
            basis: spec.legal_basis,
            channels: spec.channels.iter().fold(0, |m, c| m | c.bit()),
            consent_lifetime_ms: spec
                .consent_lifetime_days
                .map(|d| i64::from(d) * 86_400_000),
            min_notice_seq,
            special_categories: spec.uses_special_categories(),
            direct_marketing: spec.direct_marketing,
            gpc_opt_out: spec.gpc_opt_out,
        }
    }

    /// A purpose with no channels listed covers none: every use names one.
    pub fn covers(&self, c: Channel) -> bool {
        self.channels & c.bit() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec(basis: LegalBasis) -> PurposeSpec {
        PurposeSpec {
            name: "Newsletter".into(),
            legal_basis: basis,
            balancing_note: (basis == LegalBasis::LegitimateInterests)
                .then(|| "low impact, expected".into()),
            channels: vec![Channel::Email],
            data_categories: vec![DataCategory::parse("contact").unwrap()],
            retention_days: 365,
            consent_lifetime_days: None,
            gpc_opt_out: false,
            direct_marketing: true,
            notice: [("en".to_owned(), "We email you our news.".to_owned())].into(),
            names: BTreeMap::new(),
            description: BTreeMap::new(),
        }
    }

    #[test]
    fn names_and_descriptions_by_language_fall_back_and_are_checked() {
        let mut s = spec(LegalBasis::Consent);
        s.name = "News by email".into();
        s.names = [("fi".to_owned(), "Uutiset sähköpostilla".to_owned())].into();
        s.description = [("en".to_owned(), "What we do.".to_owned())].into();
        assert!(s.validate().is_ok());
        assert_eq!(s.name_in("fi-FI"), ("fi", "Uutiset sähköpostilla"));
        assert_eq!(s.name_in("he"), ("en", "News by email"));
        assert_eq!(s.description_in("tr"), Some(("en", "What we do.")));
        let mut bad = s.clone();
        bad.names.insert("Finnish".into(), "x".into());
        assert!(bad.validate().is_err());
        let mut bad = s.clone();
        bad.names.insert("de".into(), "x".repeat(201));
        assert!(bad.validate().is_err());
        let mut bad = s;
        bad.description.insert("de".into(), " ".into());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn ids_and_categories_parse_strictly() {
        assert!(PurposeId::parse("email_marketing").is_ok());
        for bad in ["", "Email", "1x", "a-b", "a b", &"x".repeat(65)] {
            assert!(PurposeId::parse(bad).is_err(), "{bad}");
        }
        assert!(DataCategory::parse("health").unwrap().is_special());
        assert!(!DataCategory::parse("contact").unwrap().is_special());
        assert_eq!(Channel::parse("sms").unwrap(), Channel::Sms);
        assert!(Channel::parse("pigeon").is_err());
    }

    #[test]
    fn validation_enforces_the_gdpr_rules() {
        assert!(spec(LegalBasis::Consent).validate().is_ok());
        assert!(spec(LegalBasis::LegitimateInterests).validate().is_ok());
        let mut li = spec(LegalBasis::LegitimateInterests);
        li.balancing_note = None;
        assert!(li.validate().is_err());
        let mut c = spec(LegalBasis::Contract);
        c.balancing_note = Some("x".into());
        assert!(c.validate().is_err());
        let mut health = spec(LegalBasis::Contract);
        health
            .data_categories
            .push(DataCategory::parse("health").unwrap());
        assert_eq!(
            health.validate(),
            Err(ConsentError::SpecialCategoryNeedsConsent)
        );
        let mut no_notice = spec(LegalBasis::Consent);
        no_notice.notice.clear();
        assert!(no_notice.validate().is_err());
        let mut bad_lang = spec(LegalBasis::Consent);
        bad_lang.notice.insert("English".into(), "x".into());
        assert!(bad_lang.validate().is_err());
    }

    #[test]
    fn notice_version_follows_the_text() {
        let a = spec(LegalBasis::Consent);
        let mut b = a.clone();
        assert_eq!(a.notice_version(), b.notice_version());
        b.name = "Other name".into();
        assert_eq!(a.notice_version(), b.notice_version());
        b.notice.insert("fi".into(), "Lähetämme uutisia.".into());
        assert_ne!(a.notice_version(), b.notice_version());
        assert_eq!(a.notice_version().len(), 32);
        assert_eq!(b.notice_text("fi-FI").unwrap().0, "fi");
        assert_eq!(b.notice_text("de").unwrap().0, "en");
    }

    #[test]
    fn rules_cover_listed_channels_only() {
        let r = PurposeRule::new(&spec(LegalBasis::Consent), 1);
        assert!(r.covers(Channel::Email));
        assert!(!r.covers(Channel::Sms));
    }
}
