//! A person named in a request body or query (`{"profile": 42}` or
//! `{"type": "email", "value": "..."}`), parsed into what the store looks
//! up, and the evidence a person's own request carries. Shared by the
//! consent, request, signal, processor and page handlers, so that none of
//! them imports another for it.

use serde::Deserialize;
use serde_json::{Map, Value};
use tarmo_core::codes::Code;
use utoipa::ToSchema;

pub use tarmo_store::consent::Lookup;

use crate::{ApiError, AppState};

/// A person named in a request: by profile id or by any identifier.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectRef {
    /// Identifier type: email, phone, user_id, ... (or omit and give `profile`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
    /// A profile id.
    pub profile: Option<i64>,
}

impl AppState {
    /// Parse a subject into what the store looks up: an id, or a blind index.
    pub(crate) fn lookup_of(
        &self,
        profile: Option<&str>,
        kind: Option<&str>,
        value: Option<&str>,
    ) -> Result<(Lookup, Option<tarmo_core::identity::Identifier>), ApiError> {
        match (profile, kind, value) {
            (Some(p), None, None) => Ok((Lookup::Id(crate::profiles::profile_id(p)?), None)),
            (None, Some(k), Some(v)) => {
                let kind = self.identity.kind(k)?;
                let id = self.identity.identifier(kind, v)?;
                let b = self.store.prepare_identifier(&id).bidx;
                Ok((Lookup::Identifier(b), Some(id)))
            }
            _ => Err(ApiError::new(
                Code::InvalidSubject,
                "name the person by `profile` (an id) or by `type` and `value` (an identifier), not both",
            )),
        }
    }
}

pub(crate) fn subject_ref_lookup(
    s: &AppState,
    r: &SubjectRef,
) -> Result<(Lookup, Option<tarmo_core::identity::Identifier>), ApiError> {
    let p = r.profile.map(|p| p.to_string());
    s.lookup_of(p.as_deref(), r.kind.as_deref(), r.value.as_deref())
}

/// A person's IP address and user agent as evidence, cut to a sane length.
pub(crate) fn evidence_of(ip: Option<String>, user_agent: Option<String>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(ip) = ip {
        m.insert("ip".into(), Value::String(ip.chars().take(100).collect()));
    }
    if let Some(ua) = user_agent {
        m.insert(
            "user_agent".into(),
            Value::String(ua.chars().take(500).collect()),
        );
    }
    m
}
