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
