//! Who may see what: permissions, the built-in roles, and the kinds of a
//! person's data a role may see.
//!
//! A key holds roles; its permissions are the union of theirs, its visible
//! data kinds the union of theirs. A key may also be bound to purposes; then
//! it sees only people whose decision for one of those purposes allows it,
//! and only the data kinds those purposes use.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a route lets a key do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// The Segment tracking routes (`/v1/*`).
    Ingest,
    /// One person's profile and events, by exact identifier or id.
    ProfilesRead,
    /// Aggregates only: counts, no person.
    StatsRead,
    PurposesRead,
    PurposesWrite,
    ConsentsRead,
    ConsentsWrite,
    DecisionsRead,
    /// Double opt-in subscriptions.
    Subscribe,
    /// Marketing messages.
    MessagesSend,
    /// Create data subject requests (support takes them from callers).
    RequestsCreate,
    /// Verify, refuse, extend, export data subject requests.
    RequestsManage,
    ProcessorsManage,
    /// Exports of people's data to a processor.
    ProcessorsExport,
    /// The Art. 30 record of processing.
    RecordsRead,
    /// The access log.
    AuditRead,
    /// Make and revoke keys.
    KeysManage,
    /// Segment definitions, counts and members (profile ids).
    SegmentsRead,
    /// Define, change, preview and delete segments.
    SegmentsManage,
    /// The Prometheus metrics (`GET /metrics`): counts and timings, no
    /// person, but they tell how the installation is used.
    MetricsRead,
    /// Imports of customers, orders, products, stores and stock
    /// (`/api/v1/imports`): writes people whatever the purpose.
    ImportsWrite,
    /// Templates, automations and campaigns: definitions and counters.
    AutomationsRead,
    /// Define, change, dry-run, delete templates, automations and
    /// campaigns (they send marketing to people).
    AutomationsManage,
}

impl Permission {
    pub const ALL: [Self; 23] = [
        Self::Ingest,
        Self::ProfilesRead,
        Self::StatsRead,
        Self::PurposesRead,
        Self::PurposesWrite,
        Self::ConsentsRead,
        Self::ConsentsWrite,
        Self::DecisionsRead,
        Self::Subscribe,
        Self::MessagesSend,
        Self::RequestsCreate,
        Self::RequestsManage,
        Self::ProcessorsManage,
        Self::ProcessorsExport,
        Self::RecordsRead,
        Self::AuditRead,
        Self::KeysManage,
        Self::SegmentsRead,
        Self::SegmentsManage,
        Self::MetricsRead,
        Self::ImportsWrite,
        Self::AutomationsRead,
        Self::AutomationsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::ProfilesRead => "profiles_read",
            Self::StatsRead => "stats_read",
            Self::PurposesRead => "purposes_read",
            Self::PurposesWrite => "purposes_write",
            Self::ConsentsRead => "consents_read",
            Self::ConsentsWrite => "consents_write",
            Self::DecisionsRead => "decisions_read",
            Self::Subscribe => "subscribe",
            Self::MessagesSend => "messages_send",
            Self::RequestsCreate => "requests_create",
            Self::RequestsManage => "requests_manage",
            Self::ProcessorsManage => "processors_manage",
            Self::ProcessorsExport => "processors_export",
            Self::RecordsRead => "records_read",
            Self::AuditRead => "audit_read",
            Self::KeysManage => "keys_manage",
            Self::SegmentsRead => "segments_read",
            Self::SegmentsManage => "segments_manage",
            Self::MetricsRead => "metrics_read",
            Self::ImportsWrite => "imports_write",
            Self::AutomationsRead => "automations_read",
            Self::AutomationsManage => "automations_manage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Permissions a purpose-bound key never uses, whatever its roles: they
    /// reach people regardless of any purpose (rights requests, the access
    /// log) or would let the key step out of its binding (make an unbound
    /// key, widen its purpose's data categories).
    pub fn unbound_only(self) -> bool {
        matches!(
            self,
            Self::KeysManage
                | Self::PurposesWrite
                | Self::RequestsCreate
                | Self::RequestsManage
                | Self::AuditRead
                | Self::ImportsWrite
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of a person's data a view is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Email addresses, phone numbers, and traits that reach the person
    /// (email, phone, name, address).
    Contact,
    /// Other identifiers: user ids, loyalty cards, social handles, browser and
    /// device ids.
    Identifiers,
    /// Other traits.
    Traits,
    /// Events: what the person did.
    Behaviour,
    /// Consent state and ledger.
    Consent,
}

impl DataKind {
    pub const ALL: [Self; 5] = [
        Self::Contact,
        Self::Identifiers,
        Self::Traits,
        Self::Behaviour,
        Self::Consent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Identifiers => "identifiers",
            Self::Traits => "traits",
            Self::Behaviour => "behaviour",
            Self::Consent => "consent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The kind an identifier's value is: email addresses and phone numbers
    /// reach the person (contact), the others name them (identifiers).
    pub fn of_identifier(kind: &str) -> Self {
        if kind == "email" || kind == "phone" {
            Self::Contact
        } else {
            Self::Identifiers
        }
    }

    /// The kind a trait is: those that reach or name the person
    /// ([`CONTACT_TRAITS`]) are contact, the others traits.
    pub fn of_trait(name: &str) -> Self {
        if CONTACT_TRAITS.contains(&name) {
            Self::Contact
        } else {
            Self::Traits
        }
    }

    /// The kinds a purpose's data categories open. Unknown categories open
    /// nothing: a purpose must say what it uses.
    pub fn of_category(category: &str) -> &'static [DataKind] {
        match category {
            "contact" | "address" => &[DataKind::Contact],
            "identifiers" => &[DataKind::Identifiers],
            "traits" | "profile" | "demographics" | "interests" => &[DataKind::Traits],
            "behaviour" | "purchase_history" | "events" | "location" => &[DataKind::Behaviour],
            "consent" => &[DataKind::Consent],
            _ => &[],
        }
    }
}

/// Trait names that reach or name the person: shown only with `Contact`.
pub const CONTACT_TRAITS: &[&str] = &[
    "email",
    "phone",
    "name",
    "firstName",
    "lastName",
    "first_name",
    "last_name",
    "address",
    "street",
    "postalCode",
    "postal_code",
    "birthday",
    "username",
];

/// A role: what it may do and which kinds of a person's data it may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub permissions: BTreeSet<Permission>,
    pub data: BTreeSet<DataKind>,
}

/// The built-in roles, by name.
pub fn builtin_role(name: &str) -> Option<Role> {
    use DataKind as D;
    use Permission as P;
    let (p, d): (&[Permission], &[DataKind]) = match name {
        // Everything staff do; ingestion takes a write key of its own (write
        // keys sit in browsers and apps, so no staff key should be one).
        "admin" => (&Permission::ALL[1..], &DataKind::ALL),
        "dpo" => (
            &[
                P::ProfilesRead,
                P::StatsRead,
                P::PurposesRead,
                P::ConsentsRead,
                P::ConsentsWrite,
                P::DecisionsRead,
                P::RequestsCreate,
                P::RequestsManage,
                P::ProcessorsManage,
                P::RecordsRead,
                P::AuditRead,
                P::SegmentsRead,
            ],
            &DataKind::ALL,
        ),
        "marketer" => (
            &[
                P::ProfilesRead,
                P::StatsRead,
                P::PurposesRead,
                P::DecisionsRead,
                P::Subscribe,
                P::MessagesSend,
                P::ProcessorsExport,
                P::SegmentsRead,
                P::SegmentsManage,
                P::AutomationsRead,
                P::AutomationsManage,
            ],
            &[D::Contact, D::Traits, D::Behaviour, D::Consent],
        ),
        "support" => (
            &[
                P::ProfilesRead,
                P::PurposesRead,
                P::ConsentsRead,
                P::ConsentsWrite,
                P::DecisionsRead,
                P::RequestsCreate,
            ],
            &DataKind::ALL,
        ),
        "analyst" => (
            &[
                P::ProfilesRead,
                P::StatsRead,
                P::PurposesRead,
                P::SegmentsRead,
            ],
            &[D::Traits, D::Behaviour],
        ),
        "ingest" => (&[P::Ingest], &[]),
        // What Prometheus scrapes with (`GET /metrics`), and nothing else.
        "monitoring" => (&[P::MetricsRead], &[]),
        _ => return None,
    };
    Some(Role {
        permissions: p.iter().copied().collect(),
        data: d.iter().copied().collect(),
    })
}

pub const BUILTIN_ROLES: [&str; 7] = [
    "admin",
    "dpo",
    "marketer",
    "support",
    "analyst",
    "ingest",
    "monitoring",
];

/// A role name: `[a-z][a-z0-9_]{0,31}`.
pub fn valid_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What a key may do and see: the union of its roles, narrowed by the
/// purposes it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub permissions: BTreeSet<Permission>,
    pub data: BTreeSet<DataKind>,
    /// Empty: not bound to a purpose.
    pub purposes: Vec<String>,
}

impl Grant {
    pub fn new(roles: &[Role], purposes: Vec<String>) -> Self {
        Self {
            permissions: roles
                .iter()
                .flat_map(|r| r.permissions.iter().copied())
                .collect(),
            data: roles.iter().flat_map(|r| r.data.iter().copied()).collect(),
            purposes,
        }
    }

    pub fn may(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// The kinds visible for a person, given the data categories of the
    /// bound purposes whose decision allows them (ignored when unbound).
    pub fn visible(&self, allowed_purpose_categories: &[&str]) -> BTreeSet<DataKind> {
        if self.purposes.is_empty() {
            return self.data.clone();
        }
        let opened: BTreeSet<DataKind> = allowed_purpose_categories
            .iter()
            .flat_map(|c| DataKind::of_category(c).iter().copied())
            .collect();
        self.data.intersection(&opened).copied().collect()
    }

    pub fn bound(&self) -> bool {
        !self.purposes.is_empty()
    }

    /// Whether the grant acts for `purpose`: any purpose when unbound.
    pub fn serves(&self, purpose: &str) -> bool {
        !self.bound() || self.purposes.iter().any(|p| p == purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roles_follow_the_issue() {
        let admin = builtin_role("admin").unwrap();
        assert_eq!(admin.permissions.len(), Permission::ALL.len() - 1);
        assert!(!admin.permissions.contains(&Permission::Ingest));
        let dpo = builtin_role("dpo").unwrap();
        assert!(dpo.permissions.contains(&Permission::AuditRead));
        assert!(!dpo.permissions.contains(&Permission::MessagesSend));
        assert!(!dpo.permissions.contains(&Permission::ProcessorsExport));
        let analyst = builtin_role("analyst").unwrap();
        assert!(!analyst.data.contains(&DataKind::Contact));
        assert!(!analyst.data.contains(&DataKind::Identifiers));
        let ingest = builtin_role("ingest").unwrap();
        assert_eq!(ingest.permissions.len(), 1);
        assert!(ingest.data.is_empty());
        assert!(builtin_role("root").is_none());
        for r in BUILTIN_ROLES {
            assert!(valid_role_name(r));
        }
        assert!(!valid_role_name("Admin"));
    }

    #[test]
    fn a_purpose_bound_grant_sees_what_the_purpose_uses() {
        let g = Grant::new(
            &[builtin_role("marketer").unwrap()],
            vec!["email_marketing".into()],
        );
        let v = g.visible(&["contact", "purchase_history"]);
        assert_eq!(
            v,
            [DataKind::Contact, DataKind::Behaviour]
                .into_iter()
                .collect()
        );
        assert!(g.visible(&[]).is_empty(), "no allowed purpose: nothing");
        let unbound = Grant::new(&[builtin_role("analyst").unwrap()], vec![]);
        assert_eq!(unbound.visible(&[]), unbound.data);
        let both = Grant::new(
            &[
                builtin_role("analyst").unwrap(),
                builtin_role("ingest").unwrap(),
            ],
            vec![],
        );
        assert!(both.may(Permission::Ingest) && both.may(Permission::StatsRead));
    }
}
