//! Ingestion: the group-committing [`writer`] that owns the write
//! connection, and identity [`resolve`]-ution, which decides the profile
//! each message belongs to. A write is acknowledged only once committed.

pub mod resolve;
pub mod writer;
