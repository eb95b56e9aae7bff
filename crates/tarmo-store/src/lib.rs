//! Tarmo's persistence: the vault that seals every personal value, identity
//! resolution, group-committed ingestion, and two backends — an embedded SQLite
//! file and PostgreSQL — behind one [`conn::Conn`] interface that both pass one
//! conformance suite.
//!
//! This crate must never write a personal value to a database, a file or a log
//! in plaintext: values are sealed by the [`vault::Vault`] before any SQL sees
//! them, and looked up only by blind index. It must never acknowledge a write
//! that is not durably committed.

pub mod access_log;
pub mod automations;
pub mod backup;
pub mod bundle;
pub mod consent;
pub mod crypto;
pub mod dashboard;
pub mod db;
pub mod doi;
pub mod erasure;
pub mod health;
pub mod imports;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod preferences;
pub mod processors;
pub mod requests;
pub mod retention;
pub mod segments;
pub mod service;
pub mod staff;
mod store;

// The modules' former paths (`tarmo_store::conn`, `crate::vault`, ...) stay.
pub use crypto::{keys, links, vault};
pub use db::{conn, cursor, lease, pool, postgres, sqlite};
use db::{migrations, pg_tls};
pub use ingest::{resolve, writer};

pub use service::Services;
pub use store::*;
pub use tarmo_core::codes::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage error: {0}")]
    Backend(String),
    /// A unique constraint: another writer got there first; the group is retried.
    #[error("conflicting write: {0}")]
    Conflict(String),
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The database cannot be reached (PostgreSQL down, restarting, or the
    /// connection was lost): nothing was written, and the caller may retry.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cryptography: {0}")]
    Crypto(&'static str),
    #[error("configuration: {0}")]
    Config(String),
    /// The master key given does not open the store's installation keys:
    /// nothing was read or changed.
    #[error(
        "master_key_mismatch: the master key does not open this store's installation keys (wrong key file, TARMO_MASTER_KEY or --master-key-command? after `tarmo keys rotate-master`, the new key is needed)"
    )]
    WrongMasterKey,
    #[error("the ingestion queue is full")]
    Overloaded,
    #[error("the writer has stopped")]
    WriterGone,
    /// Bad input found where only the store can tell (an unknown purpose, a
    /// used token): nothing was written. The code's HTTP status is in the
    /// catalog ([`Code::status`]).
    #[error("{message}")]
    Rejected { code: Code, message: String },
    /// The disk (or the database's quota) is full: the transaction was
    /// rolled back and nothing of it was written. Clears once space is freed.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// A job panicked on the writer thread: its transaction was rolled back
    /// and the writer went on with the next job.
    #[error("a write job panicked; its transaction was rolled back")]
    Panicked,
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Error::StorageFull(e.to_string()),
            _ => Error::Io(e),
        }
    }
}

impl Error {
    /// Bad input: nothing was written; answered with the code's status.
    pub fn rejected(code: Code, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            message: message.into(),
        }
    }
}

impl From<tarmo_core::consent::ConsentError> for Error {
    fn from(e: tarmo_core::consent::ConsentError) -> Self {
        Self::rejected(e.code(), e.to_string())
    }
}

impl Error {
    /// Transient faults a client may retry (HTTP 503), as opposed to bugs or
    /// corruption (HTTP 500).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Busy(_)
                | Error::Conflict(_)
                | Error::Overloaded
                | Error::WriterGone
                | Error::Unavailable(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 form of a millisecond timestamp, for the API.
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
