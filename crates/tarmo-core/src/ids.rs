//! The ids of the things Tarmo stores, as types: a profile id cannot be
//! passed where a request id is expected, although both are row ids.
//!
//! Each is the database's integer and nothing more: on the wire it is the
//! bare number (`#[serde(transparent)]`), in a path it parses like one
//! (`FromStr`, and `Path<ProfileId>` through serde), and in the API document
//! its schema is the one it had as an alias of `i64` (feature `openapi`).
//! Binding to SQL stays in the store, which reads the number with `.0`: the
//! core knows no database.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        // The schema the API document had while the id was an alias of
        // `i64`, kept so that the document does not change with the type.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                <i64 as utoipa::PartialSchema>::schema()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                <i64 as utoipa::ToSchema>::name()
            }
        }
    };
}

row_id!(
    /// A profile: one person as far as identity resolution knows.
    ProfileId
);
row_id!(
    /// An API key (a write key or a staff key), also the source of the
    /// events it sent.
    KeyId
);
row_id!(
    /// A data subject request (access, erasure, rectification, ...).
    RequestId
);
row_id!(
    /// A processor (a recipient of personal data, GDPR Art. 28).
    ProcessorId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_its_number_on_the_wire_and_in_text() {
        let id = ProfileId(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<ProfileId>("42").unwrap(), id);
        assert!(serde_json::from_str::<ProfileId>("\"42\"").is_err());
        assert_eq!(id.to_string(), "42");
        assert_eq!("42".parse::<ProfileId>().unwrap(), id);
        assert!("x".parse::<RequestId>().is_err());
        assert!(KeyId(1) < KeyId(2));
    }
}
