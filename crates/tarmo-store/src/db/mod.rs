//! Database mechanics: the [`conn::Conn`] interface and its two backends,
//! the migrations written once for both, the pool of read connections, TLS
//! to PostgreSQL, and the two ways several readers and nodes share tables
//! ([`cursor`] to follow a table by id, [`lease`] to claim work). Nothing
//! here knows a use case, and nothing here ever sees a personal value in
//! plaintext: only ids, blind indexes and sealed bytes.

pub mod conn;
pub mod cursor;
pub mod lease;
pub(crate) mod migrations;
pub mod paced;
pub(crate) mod pg_tls;
pub mod pool;
pub mod postgres;
pub(crate) mod recent;
pub mod sqlite;
