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
//! on an async runtime run them on a blocking thread, or call the use
//! case's `*_then` form, which answers through a callback once durable
//! ([`Services::write_then`]; the single-entry hot paths).

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

    /// [`Services::write`] for a caller on an async worker: `reply` gets
    /// the result once it is durable, and no thread waits meanwhile (a
    /// blocking thread's hand-offs cost a single consent write more than
    /// its share of the writer, `perf`). When the writer's queue is full,
    /// a blocking thread queues the job and waits for room.
    pub fn write_then<T, F>(&self, f: F, reply: Box<dyn FnOnce(Result<T>) + Send>)
    where
        T: Send + 'static,
        F: FnOnce(&mut TxCtx<'_>) -> Result<T> + Send + 'static,
    {
        if let Err((f, reply)) = self.writer.try_transact(f, reply) {
            let writer = self.writer.clone();
            std::thread::Builder::new()
                .name("tarmo-queue-wait".into())
                .spawn(move || writer.transact(f, reply))
                .map(drop)
                .unwrap_or_else(|e| tracing::error!(error = %e, "no thread to queue a write"));
        }
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
