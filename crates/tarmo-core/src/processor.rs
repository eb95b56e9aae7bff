//! Processors (GDPR Art. 28): who receives personal data on the controller's
//! behalf, under which contract, for which purposes and data categories, and
//! from which country. A processor's definition is parsed here; the store
//! checks what only it can (the purposes exist, the name is free).
//!
//! Also the meaning of a data category for an export: which of a person's
//! identifiers, traits and events a category stands for ([`ExportScope`]).

use crate::codes::Code;
use serde::Deserialize;

use crate::consent::{DataCategory, PurposeId};

/// Bad input about a processor; each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("`name` must be 1 to 200 characters, without control characters")]
    Name,
    #[error(
        "`role` (what the processor does, e.g. \"email delivery\") must be 1 to 200 characters"
    )]
    Role,
    #[error("`country` must be an ISO 3166-1 alpha-2 code such as FI, DE or US")]
    Country,
    #[error(
        "{0} is outside the EEA: `transfer_safeguard` must name the Chapter V safeguard (e.g. \"SCC 2021/914\", \"adequacy decision\", \"EU-US DPF\")"
    )]
    SafeguardRequired(String),
    #[error("`transfer_safeguard` must be 1 to 500 characters when given")]
    Safeguard,
    #[error(
        "`dpa_reference` (the data processing agreement's reference) must be 1 to 200 characters"
    )]
    DpaReference,
    #[error("`dpa_signed_on` must be a date written YYYY-MM-DD")]
    DpaDate,
    #[error("`dpa_signed_on` is in the future")]
    DpaDateInFuture,
    #[error("`purposes` must list 1 to 100 purposes the processor may receive data for")]
    Purposes,
    #[error("`{0}` is not a purpose id")]
    PurposeId(String),
    #[error(
        "`data_categories` must list 1 to 100 categories (lower-case letters, digits and underscores)"
    )]
    Categories,
    #[error(
        "`erasure_webhook` must be an absolute http or https URL with a host and no user name or password (at most 2,000 characters)"
    )]
    Webhook,
    #[error(
        "`webhook_token` must be 1 to 4,096 visible ASCII characters, and needs an `erasure_webhook`"
    )]
    Token,
}

impl ProcessorError {
    pub fn code(&self) -> Code {
        match self {
            Self::Name => Code::InvalidProcessorName,
            Self::Role => Code::InvalidProcessorRole,
            Self::Country => Code::InvalidCountry,
            Self::SafeguardRequired(_) => Code::TransferSafeguardRequired,
            Self::Safeguard => Code::InvalidTransferSafeguard,
            Self::DpaReference => Code::InvalidDpaReference,
            Self::DpaDate => Code::InvalidDpaSignedOn,
            Self::DpaDateInFuture => Code::DpaSignedOnInFuture,
            Self::Purposes => Code::InvalidProcessorPurposes,
            Self::PurposeId(_) => Code::UnknownPurpose,
            Self::Categories => Code::InvalidDataCategories,
            Self::Webhook => Code::InvalidErasureWebhook,
            Self::Token => Code::InvalidWebhookToken,
        }
    }
}

/// Every officially assigned ISO 3166-1 alpha-2 code, sorted.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU \
ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA \
RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The European Economic Area: the 27 EU member states, Iceland,
/// Liechtenstein and Norway. Data sent anywhere else is a transfer under
/// GDPR Chapter V and needs a safeguard.
pub const EEA: [&str; 30] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IS",
    "IT", "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Accepts either case (`fi`, `FI`); refuses codes ISO has not assigned.
    pub fn parse(s: &str) -> Result<Self, ProcessorError> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
            return Err(ProcessorError::Country);
        }
        let code = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
        let text = std::str::from_utf8(&code).expect("ASCII");
        if !ISO_3166_ALPHA2.split(' ').any(|c| c == text) {
            return Err(ProcessorError::Country);
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }

    /// Inside the EEA: sending data there is no transfer under Chapter V.
    pub fn is_eea(&self) -> bool {
        EEA.contains(&self.as_str())
    }
}

/// A webhook bearer token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookToken(String);

impl std::fmt::Debug for WebhookToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookToken(<secret>)")
    }
}

impl WebhookToken {
    pub fn parse(s: &str) -> Result<Self, ProcessorError> {
        if s.is_empty() || s.len() > 4096 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ProcessorError::Token);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// What to do with a processor's stored webhook token on an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    /// Leave it as it is (the field was absent).
    Keep,
    /// Remove it (`null`, or the webhook itself was removed).
    Remove,
    Set(WebhookToken),
}

/// A processor's definition (the whole of it, also on a change).
// As an operator sends it (`POST /api/v1/processors`, or
// `PUT /api/v1/processors/{id}` with the whole definition); the same type
// is the API document's schema (`ProcessorBody`, feature `openapi`).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ProcessorBody))]
#[serde(deny_unknown_fields)]
pub struct ProcessorInput {
    /// 1 to 200 characters, unique (ignoring case).
    pub name: String,
    /// What it does for you: "email delivery", "payment processing".
    pub role: String,
    /// ISO 3166-1 alpha-2, where it processes the data.
    pub country: String,
    /// Required outside the EEA: "SCC 2021/914", "adequacy decision", "EU-US DPF".
    pub transfer_safeguard: Option<String>,
    /// The data processing agreement's reference.
    pub dpa_reference: String,
    /// When the agreement was signed: YYYY-MM-DD, not in the future.
    pub dpa_signed_on: String,
    /// Purposes (from the catalog) it may receive data for.
    pub purposes: Vec<String>,
    /// Data categories it may receive: contact, identifiers, traits, address,
    /// behaviour, purchase_history, ...
    pub data_categories: Vec<String>,
    /// http(s) URL that is POSTed `{"type": "erasure", ...}` when a person
    /// whose data it received is erased.
    pub erasure_webhook: Option<String>,
    /// Bearer token for the webhook; stored sealed, never shown. On a change:
    /// absent keeps the stored one, null removes it.
    // Absent: keep the stored token; `null`: remove it; a string: set it.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub webhook_token: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A processor's definition, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorSpec {
    pub name: String,
    pub role: String,
    pub country: CountryCode,
    pub transfer_safeguard: Option<String>,
    pub dpa_reference: String,
    pub dpa_signed_on: time::Date,
    /// Sorted, without repeats.
    pub purposes: Vec<PurposeId>,
    /// Sorted, without repeats.
    pub data_categories: Vec<DataCategory>,
    pub erasure_webhook: Option<String>,
    pub webhook_token: TokenChange,
}

fn text(s: &str, max: usize, err: ProcessorError) -> Result<String, ProcessorError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(err);
    }
    Ok(t.to_owned())
}

/// The latest calendar date anywhere on Earth at `now_ms` (UTC+14): a
/// contract signed "today" in any time zone is not in the future.
pub fn latest_date(now_ms: i64) -> time::Date {
    let t = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (t + time::Duration::hours(14)).date()
}

/// A date written exactly `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<time::Date, ProcessorError> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(ProcessorError::DpaDate);
    }
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| ProcessorError::DpaDate)
}

/// The date as `YYYY-MM-DD`.
pub fn format_date(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// An absolute http(s) URL with a host, no credentials, no spaces.
pub fn check_webhook(url: &str) -> Result<String, ProcessorError> {
    let url = url.trim();
    if url.len() > 2000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProcessorError::Webhook);
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(ProcessorError::Webhook);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
        .map_or(authority, |(h, _)| h);
    if host.is_empty() || authority.contains('@') {
        return Err(ProcessorError::Webhook);
    }
    Ok(url.to_owned())
}

impl ProcessorInput {
    /// Check every field; `now_ms` dates the contract's signing.
    pub fn parse(self, now_ms: i64) -> Result<ProcessorSpec, ProcessorError> {
        let name = text(&self.name, 200, ProcessorError::Name)?;
        let role = text(&self.role, 200, ProcessorError::Role)?;
        let country = CountryCode::parse(&self.country)?;
        let transfer_safeguard = self
            .transfer_safeguard
            .as_deref()
            .map(|s| text(s, 500, ProcessorError::Safeguard))
            .transpose()?;
        if !country.is_eea() && transfer_safeguard.is_none() {
            return Err(ProcessorError::SafeguardRequired(country.as_str().into()));
        }
        let dpa_reference = text(&self.dpa_reference, 200, ProcessorError::DpaReference)?;
        let dpa_signed_on = parse_date(self.dpa_signed_on.trim())?;
        if dpa_signed_on > latest_date(now_ms) {
            return Err(ProcessorError::DpaDateInFuture);
        }
        if self.purposes.is_empty() || self.purposes.len() > 100 {
            return Err(ProcessorError::Purposes);
        }
        let mut purposes = self
            .purposes
            .iter()
            .map(|p| {
                PurposeId::parse(p.trim())
                    .map_err(|_| ProcessorError::PurposeId(p.chars().take(64).collect()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        purposes.sort();
        purposes.dedup();
        if self.data_categories.is_empty() || self.data_categories.len() > 100 {
            return Err(ProcessorError::Categories);
        }
        let mut data_categories = self
            .data_categories
            .iter()
            .map(|c| DataCategory::parse(c.trim()).map_err(|_| ProcessorError::Categories))
            .collect::<Result<Vec<_>, _>>()?;
        data_categories.sort();
        data_categories.dedup();
        let erasure_webhook = self
            .erasure_webhook
            .as_deref()
            .map(check_webhook)
            .transpose()?;
        let webhook_token = match self.webhook_token {
            None if erasure_webhook.is_some() => TokenChange::Keep,
            None | Some(None) => TokenChange::Remove,
            Some(Some(t)) => {
                if erasure_webhook.is_none() {
                    return Err(ProcessorError::Token);
                }
                TokenChange::Set(WebhookToken::parse(&t)?)
            }
        };
        Ok(ProcessorSpec {
            name,
            role,
            country,
            transfer_safeguard,
            dpa_reference,
            dpa_signed_on,
            purposes,
            data_categories,
            erasure_webhook,
            webhook_token,
        })
    }
}

// ------------------------------------------------------------------ exports

/// Which events a scope includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventScope {
    None,
    /// `track` events: what the person did, including purchases.
    Purchases,
    /// `track`, `page` and `screen` events.
    Behaviour,
}

/// What a set of data categories stands for in a person's data. The
/// mapping (documented on the export route and in the README):
///
/// | category             | data                                              |
/// |----------------------|---------------------------------------------------|
/// | `contact`            | email and phone identifiers                       |
/// | `identifiers`        | every identifier                                  |
/// | `profile`, `traits`  | the traits                                        |
/// | `address`            | the `address` trait                               |
/// | `behaviour`          | `track`, `page` and `screen` events               |
/// | `purchase_history`   | `track` events                                    |
///
/// Any other category stands for no data Tarmo holds, so it exports nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportScope {
    pub contact: bool,
    pub all_identifiers: bool,
    pub traits: bool,
    pub address: bool,
    pub events: EventScope,
    /// Traits that reach or name the person (`firstName`, `address`, ...;
    /// see [`crate::access::CONTACT_TRAITS`]) go with the other traits
    /// unless the caller may not see contact data.
    pub contact_traits: bool,
}

impl ExportScope {
    pub fn of<'a>(categories: impl IntoIterator<Item = &'a DataCategory>) -> Self {
        let mut s = ExportScope {
            contact: false,
            all_identifiers: false,
            traits: false,
            address: false,
            events: EventScope::None,
            contact_traits: true,
        };
        for c in categories {
            match c.as_str() {
                "contact" => s.contact = true,
                "identifiers" => s.all_identifiers = true,
                "profile" | "traits" => s.traits = true,
                "address" => s.address = true,
                "behaviour" => s.events = EventScope::Behaviour,
                "purchase_history" => s.events = s.events.max(EventScope::Purchases),
                _ => {}
            }
        }
        s
    }

    /// What of this scope a caller who may see only `kinds` of a person's
    /// data may send: a marketer (no `identifiers`) exports the email and
    /// phone of an `identifiers` processor, not its user ids.
    pub fn narrowed(self, kinds: &std::collections::BTreeSet<crate::access::DataKind>) -> Self {
        use crate::access::DataKind as K;
        let contact = kinds.contains(&K::Contact);
        Self {
            contact: contact && (self.contact || self.all_identifiers),
            all_identifiers: self.all_identifiers && kinds.contains(&K::Identifiers),
            traits: self.traits && kinds.contains(&K::Traits),
            address: self.address && contact,
            events: if kinds.contains(&K::Behaviour) {
                self.events
            } else {
                EventScope::None
            },
            contact_traits: self.contact_traits && contact,
        }
    }

    /// Whether identifiers of this kind (`email`, `user_id`, ...) are in scope.
    pub fn identifier(&self, kind: &str) -> bool {
        self.all_identifiers || (self.contact && matches!(kind, "email" | "phone"))
    }

    /// Whether an event of this type (`track`, `page`, ...) is in scope.
    pub fn event(&self, kind: &str) -> bool {
        match self.events {
            EventScope::None => false,
            EventScope::Purchases => kind == "track",
            EventScope::Behaviour => matches!(kind, "track" | "page" | "screen"),
        }
    }

    /// Whether a trait of this name is in scope. A trait that repeats an
    /// identifier (`email`, `phone`, a custom kind's name) goes only where
    /// that identifier goes.
    pub fn trait_named(&self, name: &str, identifier_kinds: &[&str]) -> bool {
        let as_identifier = match name {
            "userId" => Some("user_id"),
            "anonymousId" => Some("anonymous_id"),
            n if identifier_kinds.contains(&n)
                || matches!(
                    n,
                    "email" | "phone" | "user_id" | "anonymous_id" | "device_id"
                ) =>
            {
                Some(n)
            }
            _ => None,
        };
        let in_traits = (self.traits
            && (self.contact_traits || !crate::access::CONTACT_TRAITS.contains(&name)))
            || (self.address && name == "address");
        in_traits && as_identifier.is_none_or(|kind| self.identifier(kind))
    }

    pub fn is_empty(&self) -> bool {
        !self.contact
            && !self.all_identifiers
            && !self.traits
            && !self.address
            && self.events == EventScope::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_narrowed_scope_keeps_only_the_kinds_the_caller_may_see() {
        use crate::access::{DataKind as K, builtin_role};
        let cats: Vec<DataCategory> = ["identifiers", "traits", "behaviour"]
            .iter()
            .map(|c| DataCategory::parse(c).unwrap())
            .collect();
        let marketer = builtin_role("marketer").unwrap().data;
        let s = ExportScope::of(&cats).narrowed(&marketer);
        assert!(s.identifier("email") && !s.identifier("user_id"));
        assert!(s.trait_named("tier", &[]) && s.trait_named("firstName", &[]));
        let traits_only: std::collections::BTreeSet<K> = [K::Traits].into_iter().collect();
        let s = ExportScope::of(&cats).narrowed(&traits_only);
        assert!(!s.identifier("email") && !s.event("track"));
        assert!(s.trait_named("tier", &[]) && !s.trait_named("firstName", &[]));
        assert!(
            ExportScope::of(&cats)
                .narrowed(&Default::default())
                .is_empty()
        );
    }

    fn input() -> ProcessorInput {
        ProcessorInput {
            name: "Mailer Oy".into(),
            role: "email delivery".into(),
            country: "fi".into(),
            transfer_safeguard: None,
            dpa_reference: "DPA-2024-7".into(),
            dpa_signed_on: "2024-05-02".into(),
            purposes: vec!["email_marketing".into(), "email_marketing".into()],
            data_categories: vec!["contact".into()],
            erasure_webhook: Some("https://mailer.example/erase".into()),
            webhook_token: None,
        }
    }

    const NOW: i64 = 1_750_000_000_000; // 2025-06-15

    #[test]
    fn a_good_processor_parses_and_is_normalised() {
        let s = input().parse(NOW).unwrap();
        assert_eq!(s.country.as_str(), "FI");
        assert!(s.country.is_eea());
        assert_eq!(s.purposes.len(), 1);
        assert_eq!(format_date(s.dpa_signed_on), "2024-05-02");
        assert_eq!(s.webhook_token, TokenChange::Keep);
    }

    #[test]
    fn each_bad_field_has_its_code() {
        type Change = fn(&mut ProcessorInput);
        let cases: Vec<(Change, &str)> = vec![
            (|i| i.name = " ".into(), "invalid_processor_name"),
            (|i| i.name = "x".repeat(201), "invalid_processor_name"),
            (|i| i.role = String::new(), "invalid_processor_role"),
            (|i| i.country = "XX".into(), "invalid_country"),
            (|i| i.country = "FIN".into(), "invalid_country"),
            (|i| i.country = "US".into(), "transfer_safeguard_required"),
            (
                |i| i.transfer_safeguard = Some(" ".into()),
                "invalid_transfer_safeguard",
            ),
            (|i| i.dpa_reference = String::new(), "invalid_dpa_reference"),
            (
                |i| i.dpa_signed_on = "2024-5-2".into(),
                "invalid_dpa_signed_on",
            ),
            (
                |i| i.dpa_signed_on = "2024-02-30".into(),
                "invalid_dpa_signed_on",
            ),
            (
                |i| i.dpa_signed_on = "2025-06-17".into(),
                "dpa_signed_on_in_future",
            ),
            (|i| i.purposes = vec![], "invalid_processor_purposes"),
            (|i| i.purposes = vec!["Not An Id".into()], "unknown_purpose"),
            (|i| i.data_categories = vec![], "invalid_data_categories"),
            (
                |i| i.data_categories = vec!["Health!".into()],
                "invalid_data_categories",
            ),
            (
                |i| i.erasure_webhook = Some("ftp://x.example/".into()),
                "invalid_erasure_webhook",
            ),
            (
                |i| i.erasure_webhook = Some("https://u:p@x.example/".into()),
                "invalid_erasure_webhook",
            ),
            (
                |i| i.erasure_webhook = Some("https:///x".into()),
                "invalid_erasure_webhook",
            ),
            (
                |i| i.webhook_token = Some(Some("a b".into())),
                "invalid_webhook_token",
            ),
            (
                |i| {
                    i.erasure_webhook = None;
                    i.webhook_token = Some(Some("t".into()));
                },
                "invalid_webhook_token",
            ),
        ];
        for (f, code) in cases {
            let mut i = input();
            f(&mut i);
            assert_eq!(i.parse(NOW).unwrap_err().code().as_str(), code);
        }
    }

    #[test]
    fn outside_the_eea_a_safeguard_is_needed() {
        let mut i = input();
        i.country = "US".into();
        i.transfer_safeguard = Some("EU-US DPF".into());
        let s = i.parse(NOW).unwrap();
        assert!(!s.country.is_eea());
        // Signed today in Kiribati (UTC+14) is not in the future.
        let mut i = input();
        i.dpa_signed_on = "2025-06-16".into();
        assert!(i.parse(NOW).is_ok());
    }

    #[test]
    fn the_code_lists_are_sorted_and_complete() {
        let codes: Vec<&str> = ISO_3166_ALPHA2.split(' ').collect();
        assert_eq!(codes.len(), 249);
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        assert!(EEA.windows(2).all(|w| w[0] < w[1]));
        assert!(EEA.iter().all(|c| codes.contains(c)));
    }

    #[test]
    fn categories_map_to_data() {
        let cats = |v: &[&str]| {
            v.iter()
                .map(|c| DataCategory::parse(c).unwrap())
                .collect::<Vec<_>>()
        };
        let s = ExportScope::of(&cats(&["contact", "purchase_history"]));
        assert!(s.identifier("email") && s.identifier("phone") && !s.identifier("user_id"));
        assert!(s.event("track") && !s.event("page") && !s.event("identify"));
        assert!(!s.trait_named("plan", &[]));
        let s = ExportScope::of(&cats(&["traits"]));
        assert!(s.trait_named("plan", &[]));
        assert!(
            !s.trait_named("email", &[]),
            "a trait repeating an identifier"
        );
        assert!(!s.trait_named("loyalty_card", &["loyalty_card"]));
        let s = ExportScope::of(&cats(&["traits", "identifiers", "behaviour"]));
        assert!(s.trait_named("email", &[]) && s.event("page") && s.event("screen"));
        let s = ExportScope::of(&cats(&["address"]));
        assert!(s.trait_named("address", &[]) && !s.trait_named("plan", &[]));
        assert!(ExportScope::of(&cats(&["health", "location"])).is_empty());
    }

    proptest! {
        #[test]
        fn country_codes_parse_only_when_assigned(s in "[A-Za-z]{2}") {
            let assigned = ISO_3166_ALPHA2.split(' ').any(|c| c == s.to_ascii_uppercase());
            prop_assert_eq!(CountryCode::parse(&s).is_ok(), assigned);
        }

        #[test]
        fn dates_round_trip(y in 1970i32..2100, m in 1u8..=12, d in 1u8..=28) {
            let s = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(format_date(parse_date(&s).unwrap()), s);
        }

        #[test]
        fn webhook_check_never_panics_and_keeps_what_it_accepts(s in "\\PC{0,80}") {
            if let Ok(u) = check_webhook(&s) {
                prop_assert!(u.to_ascii_lowercase().starts_with("http"));
            }
        }
    }
}
