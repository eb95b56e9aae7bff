//! Identifiers: the ways Tarmo recognises a person, parsed and normalised at the
//! edge so that `Ann@Example.COM ` and `Ann@example.com` are one customer.

use crate::codes::Code;
use std::fmt;

/// What an identifier is. Strong kinds name one person (a login, an email
/// address, a loyalty card); weak kinds name a browser or a device, which may
/// be shared, so a weak identifier never causes two people to be merged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKind {
    UserId,
    Email,
    Phone,
    AnonymousId,
    DeviceId,
    /// A kind configured by the operator (loyalty card, social handle, ...).
    Custom(CustomKind),
}

/// The name of an operator-defined identifier kind: `[a-z][a-z0-9_]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomKind(String);

impl CustomKind {
    pub fn parse(name: &str) -> Result<Self, IdentifierError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok || IdentifierKind::builtin(name).is_some() {
            return Err(IdentifierError::BadKindName(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl IdentifierKind {
    fn builtin(name: &str) -> Option<Self> {
        Some(match name {
            "user_id" => Self::UserId,
            "email" => Self::Email,
            "phone" => Self::Phone,
            "anonymous_id" => Self::AnonymousId,
            "device_id" => Self::DeviceId,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::UserId => "user_id",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::AnonymousId => "anonymous_id",
            Self::DeviceId => "device_id",
            Self::Custom(c) => c.as_str(),
        }
    }

    /// Strong identifiers may merge profiles; weak ones only attach to one.
    pub fn is_strong(&self) -> bool {
        !matches!(self, Self::AnonymousId | Self::DeviceId)
    }

    /// How much a claimed identifier says about who a person is: 2 for a
    /// user id (the operator's own account), 1 for the other strong kinds
    /// (an address, a card), 0 for weak ones. From a client source, a new
    /// identifier does not join a profile that already holds a strong one
    /// of this rank or higher (see [`Trust`]).
    pub fn claim_rank(&self) -> u8 {
        match self {
            Self::UserId => 2,
            Self::AnonymousId | Self::DeviceId => 0,
            _ => 1,
        }
    }

    /// [`IdentifierKind::claim_rank`] of a stored kind name.
    pub fn claim_rank_of(name: &str) -> u8 {
        match name {
            "user_id" => 2,
            "anonymous_id" | "device_id" => 0,
            _ => 1,
        }
    }

    /// Order in which a message's identifiers choose the profile it belongs to.
    pub fn precedence(&self) -> u8 {
        match self {
            Self::UserId => 0,
            Self::Email => 1,
            Self::Phone => 2,
            Self::Custom(_) => 3,
            Self::DeviceId => 4,
            Self::AnonymousId => 5,
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far the source of a message is trusted about who the person is.
///
/// A write key shipped in a web page or an app is public: whatever it sends
/// about identity is a *claim*. Claims may stitch an anonymous visitor into
/// a known person (the login case) but never merge two known people, never
/// add an identifier to a known person that holds one of the same or a
/// stronger kind, and never make an address verified. A server key (a back
/// end, a till, a CRM) is the operator's own system: its identifiers are
/// verified and may merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Trust {
    #[default]
    Client,
    Server,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(Self::Client),
            "server" => Some(Self::Server),
            _ => None,
        }
    }
}

/// How identifiers are parsed in this installation.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    default_region: Option<phonenumber::country::Id>,
    custom_kinds: Vec<CustomKind>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            default_region: None,
            custom_kinds: vec![
                CustomKind("loyalty_card".into()),
                CustomKind("social_handle".into()),
            ],
        }
    }
}

impl IdentityConfig {
    /// `default_region` is an ISO 3166 alpha-2 code used for phone numbers
    /// written without a country code.
    pub fn new(
        default_region: Option<&str>,
        custom_kinds: &[String],
    ) -> Result<Self, IdentifierError> {
        let default_region = match default_region {
            None => None,
            Some(r) => Some(
                r.to_ascii_uppercase()
                    .parse::<phonenumber::country::Id>()
                    .map_err(|_| IdentifierError::BadRegion(r.to_owned()))?,
            ),
        };
        let custom_kinds = custom_kinds
            .iter()
            .map(|k| CustomKind::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            default_region,
            custom_kinds,
        })
    }

    pub fn custom_kinds(&self) -> &[CustomKind] {
        &self.custom_kinds
    }

    /// Parse a kind name as it appears in the API (`email`, `loyalty_card`).
    pub fn kind(&self, name: &str) -> Result<IdentifierKind, IdentifierError> {
        if let Some(k) = IdentifierKind::builtin(name) {
            return Ok(k);
        }
        self.custom_kinds
            .iter()
            .find(|c| c.as_str() == name)
            .map(|c| IdentifierKind::Custom(c.clone()))
            .ok_or_else(|| IdentifierError::UnknownKind(name.to_owned()))
    }

    /// Parse and normalise a raw value of the given kind.
    pub fn identifier(
        &self,
        kind: IdentifierKind,
        raw: &str,
    ) -> Result<Identifier, IdentifierError> {
        let value = match &kind {
            IdentifierKind::Email => normalise_email(raw)?,
            IdentifierKind::Phone => normalise_phone(raw, self.default_region)?,
            _ => {
                let v = raw.trim();
                if v.is_empty() {
                    return Err(IdentifierError::Empty(kind.to_string()));
                }
                if v.len() > MAX_IDENTIFIER_LEN {
                    return Err(IdentifierError::TooLong(kind.to_string()));
                }
                v.to_owned()
            }
        };
        Ok(Identifier { kind, value })
    }
}

const MAX_IDENTIFIER_LEN: usize = 512;

/// A normalised identifier. The value is personal data: it is only ever
/// sealed or blind-indexed on its way to storage, and `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    kind: IdentifierKind,
    value: String,
}

impl Identifier {
    pub fn kind(&self) -> &IdentifierKind {
        &self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identifier({}, <redacted>)", self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("unknown identifier type `{0}`")]
    UnknownKind(String),
    #[error(
        "`{0}` is not a valid name for a custom identifier type (lower-case letters, digits, underscores; not a built-in name)"
    )]
    BadKindName(String),
    #[error("`{0}` is not an ISO 3166 region code")]
    BadRegion(String),
    #[error("the {0} is empty")]
    Empty(String),
    #[error("the {0} is longer than 512 bytes")]
    TooLong(String),
    #[error("not a valid email address: {0}")]
    BadEmail(&'static str),
    #[error("not a valid phone number: {0}")]
    BadPhone(&'static str),
}

impl IdentifierError {
    /// Stable machine-readable code for API responses.
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownKind(_) => Code::UnknownIdentifierType,
            Self::BadKindName(_) | Self::BadRegion(_) => Code::InvalidConfiguration,
            Self::BadEmail(_) => Code::InvalidEmail,
            Self::BadPhone(_) => Code::InvalidPhone,
            Self::Empty(_) | Self::TooLong(_) => Code::InvalidIdentifier,
        }
    }
}

/// Trim, keep the local part as written (it is case-sensitive by RFC 5321),
/// and bring the domain to its lower-case ASCII (IDNA) form.
fn normalise_email(raw: &str) -> Result<String, IdentifierError> {
    let s = raw.trim();
    if s.len() > 254 {
        return Err(IdentifierError::BadEmail("longer than 254 characters"));
    }
    let (local, domain) = s
        .rsplit_once('@')
        .ok_or(IdentifierError::BadEmail("no @"))?;
    if local.is_empty() || local.len() > 64 {
        return Err(IdentifierError::BadEmail(
            "the part before @ must be 1 to 64 characters",
        ));
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdentifierError::BadEmail("white space before @"));
    }
    let domain = idna::domain_to_ascii(domain.trim_end_matches('.'))
        .map_err(|_| IdentifierError::BadEmail("the domain is not a valid domain name"))?;
    if domain.is_empty() || !domain.contains('.') || domain.starts_with('.') {
        return Err(IdentifierError::BadEmail(
            "the domain needs at least two labels",
        ));
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(IdentifierError::BadEmail(
            "the domain has characters a host name cannot have",
        ));
    }
    Ok(format!("{local}@{domain}"))
}

/// E.164, through libphonenumber's metadata.
fn normalise_phone(
    raw: &str,
    region: Option<phonenumber::country::Id>,
) -> Result<String, IdentifierError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(IdentifierError::BadPhone("empty"));
    }
    if s.len() > 64 {
        return Err(IdentifierError::BadPhone("too long"));
    }
    let n = phonenumber::parse(region, s).map_err(|_| {
        if region.is_none() && !s.starts_with('+') {
            IdentifierError::BadPhone("no country code and no default region configured")
        } else {
            IdentifierError::BadPhone("cannot be parsed")
        }
    })?;
    if !phonenumber::is_valid(&n) {
        return Err(IdentifierError::BadPhone(
            "not a number in use in its country",
        ));
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> IdentityConfig {
        IdentityConfig::new(Some("fi"), &["loyalty_card".into()]).unwrap()
    }

    #[test]
    fn email_domain_is_lowered_and_idna_encoded() {
        let c = cfg();
        let e = c
            .identifier(IdentifierKind::Email, "  Ann.Lee@Example.COM ")
            .unwrap();
        assert_eq!(e.value(), "Ann.Lee@example.com");
        let e = c
            .identifier(IdentifierKind::Email, "matti@Bücher.DE")
            .unwrap();
        assert_eq!(e.value(), "matti@xn--bcher-kva.de");
    }

    #[test]
    fn bad_emails_are_refused() {
        let c = cfg();
        for bad in [
            "",
            "no-at",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
        ] {
            assert!(
                c.identifier(IdentifierKind::Email, bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn phones_become_e164_with_the_default_region() {
        let c = cfg();
        let p = c.identifier(IdentifierKind::Phone, "040 123 4567").unwrap();
        assert_eq!(p.value(), "+358401234567");
        let p = c
            .identifier(IdentifierKind::Phone, "+49 30 1234567")
            .unwrap();
        assert_eq!(p.value(), "+49301234567");
        assert_eq!(
            c.identifier(IdentifierKind::Phone, "12")
                .unwrap_err()
                .code(),
            Code::InvalidPhone
        );
        let no_region = IdentityConfig::new(None, &[]).unwrap();
        assert!(
            no_region
                .identifier(IdentifierKind::Phone, "040 123 4567")
                .is_err()
        );
    }

    #[test]
    fn kinds_parse_builtin_and_configured_only() {
        let c = cfg();
        assert_eq!(c.kind("email").unwrap(), IdentifierKind::Email);
        assert!(matches!(
            c.kind("loyalty_card").unwrap(),
            IdentifierKind::Custom(_)
        ));
        assert_eq!(
            c.kind("shoe_size").unwrap_err().code(),
            Code::UnknownIdentifierType
        );
        assert!(CustomKind::parse("email").is_err());
        assert!(CustomKind::parse("Loyalty").is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let e = cfg()
            .identifier(IdentifierKind::Email, "secret@example.com")
            .unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }

    proptest! {
        #[test]
        fn email_normalisation_is_idempotent(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-zA-Z0-9]{1,10}\\.[a-zA-Z]{2,5}") {
            let c = cfg();
            let once = c.identifier(IdentifierKind::Email, &format!(" {local}@{domain} ")).unwrap();
            let twice = c.identifier(IdentifierKind::Email, once.value()).unwrap();
            prop_assert_eq!(once.value(), twice.value());
        }

        #[test]
        fn identifier_parsing_never_panics(kind in "[a-z_]{1,12}", value in "\\PC{0,80}") {
            let c = cfg();
            if let Ok(k) = c.kind(&kind) {
                let _ = c.identifier(k, &value);
            }
            let _ = c.identifier(IdentifierKind::Email, &value);
            let _ = c.identifier(IdentifierKind::Phone, &value);
        }
    }
}
