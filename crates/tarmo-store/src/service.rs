//! What a use case needs to run: the store (reads through the pool) and the
//! writer (transactions, group-committed and durable before they return).
//!
//! The one rule: **a use case owns its transaction.** Each use-case module
//! (`consent`, `requests`, `processors`, ...) exposes functions that take a
//! [`Services`] and decide themselves whether they read through the pool
//! ([`Services::read`]) or write through the writer ([`Services::write`]).
//! The HTTP crate calls such a function off its async workers and turns the
//! result into a view; it never opens a transaction or a connection.
//!
//! These functions block (a write waits for its group's flush), so callers
//! on an async runtime run them on a blocking thread.

use std::sync::Arc;

use crate::conn::Conn;
use crate::vault::Vault;
use crate::writer::{TxCtx, WriterHandle};
use crate::{Result, Store};

/// The store and the writer, cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<Store>,
    pub writer: WriterHandle,
}

impl Services {
    pub fn new(store: Arc<Store>, writer: WriterHandle) -> Self {
        Self { store, writer }
    }

    /// Run `f` as a writer transaction job and wait until it is committed
    /// and durable (or failed, leaving nothing behind).
    pub fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.transact_blocking(f)
    }

    /// Run `f` on a connection of the read pool (no transaction of the
    /// writer: reads, and the access log's own records).
    pub fn read<T>(&self, f: impl FnOnce(&mut dyn Conn, &Vault) -> Result<T>) -> Result<T> {
        let mut c = self.store.conn()?;
        f(&mut *c, self.store.vault())
    }
}

/// What the readiness probe and the metrics ask the store, each a use case
/// that reads through the pool.
pub mod probes {
    use super::Services;
    use crate::Result;
    use crate::health::{QueueView, queue_states};

    /// The depth and age of each queue of work; reads the vault check
    /// first, so a store whose vault does not answer is not ready.
    pub fn queues(svc: &Services) -> Result<Vec<QueueView>> {
        let health = svc.store.health.clone();
        svc.read(|c, _| {
            c.meta_get("vault_check")?;
            queue_states(c, &health, crate::now_ms())
        })
    }

    /// Messages in the outbox by status, and data subject requests past
    /// their deadline.
    pub fn backlog(svc: &Services) -> Result<(Vec<(String, i64)>, i64)> {
        svc.read(|c, _| {
            Ok((
                crate::outbox::counts(c)?,
                crate::requests::overdue_count(c, crate::now_ms())?,
            ))
        })
    }

    /// Erasure notifications to processors by status.
    pub fn notifications(svc: &Services) -> Result<Vec<(String, i64)>> {
        svc.read(|c, _| crate::processors::notification_counts(c))
    }
}
