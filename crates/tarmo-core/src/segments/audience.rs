//! Identifiers as ad platforms take them for customer lists: normalised as
//! each platform documents, then SHA-256 in lower-case hex. No plaintext
//! identifier ever goes into an audience file.

use sha2::{Digest, Sha256};

/// The platform file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudienceFormat {
    /// Meta Custom Audiences: email trimmed and lower-cased; phone as
    /// digits with the country code, no `+`.
    MetaCustomAudience,
    /// Google Customer Match: email trimmed and lower-cased, dots before the
    /// `@` removed for gmail.com and googlemail.com; phone in E.164 with `+`.
    GoogleCustomerMatch,
}

impl AudienceFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "meta_custom_audience" => Some(Self::MetaCustomAudience),
            "google_customer_match" => Some(Self::GoogleCustomerMatch),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MetaCustomAudience => "meta_custom_audience",
            Self::GoogleCustomerMatch => "google_customer_match",
        }
    }

    /// The file's column names for the two hashes, as each platform names them.
    pub fn columns(self) -> (&'static str, &'static str) {
        match self {
            Self::MetaCustomAudience => ("EMAIL", "PHONE"),
            Self::GoogleCustomerMatch => ("Email", "Phone"),
        }
    }

    pub fn email(self, email: &str) -> String {
        let e = email.trim().to_lowercase();
        match self {
            Self::MetaCustomAudience => e,
            Self::GoogleCustomerMatch => match e.rsplit_once('@') {
                Some((local, domain)) if domain == "gmail.com" || domain == "googlemail.com" => {
                    format!("{}@{domain}", local.replace('.', ""))
                }
                _ => e,
            },
        }
    }

    /// `phone` in E.164 (`+358401234567`), as Tarmo keeps phones.
    pub fn phone(self, phone: &str) -> String {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        match self {
            Self::MetaCustomAudience => digits,
            Self::GoogleCustomerMatch => format!("+{digits}"),
        }
    }
}

/// SHA-256 of the normalised value, lower-case hex.
pub fn hashed(normalised: &str) -> String {
    hex::encode(Sha256::digest(normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_platform_normalises_as_it_documents() {
        let m = AudienceFormat::MetaCustomAudience;
        let g = AudienceFormat::GoogleCustomerMatch;
        assert_eq!(m.email("  Ann.Lee@Gmail.com "), "ann.lee@gmail.com");
        assert_eq!(g.email("  Ann.Lee@Gmail.com "), "annlee@gmail.com");
        assert_eq!(g.email("ann.lee@example.fi"), "ann.lee@example.fi");
        assert_eq!(g.email("a.b@googlemail.com"), "ab@googlemail.com");
        assert_eq!(m.phone("+358401234567"), "358401234567");
        assert_eq!(g.phone("+358401234567"), "+358401234567");
        // The published SHA-256 of "test@example.com".
        assert_eq!(
            hashed("test@example.com"),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(AudienceFormat::parse("meta_custom_audience"), Some(m));
        assert_eq!(AudienceFormat::parse("tiktok"), None);
    }
}
