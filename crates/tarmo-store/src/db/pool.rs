//! The pool of read connections, and whether the database can be reached.
//!
//! r2d2 keeps at most [`MAX_CONNECTIONS`] connections, hands a caller one
//! within [`CHECKOUT_TIMEOUT`] or an error, checks a connection that sat
//! idle with one round trip before handing it out, and drops a connection
//! that was lost instead of giving it back. The pool must never hand out a
//! connection it knows is broken, and never block a caller for longer than
//! its checkout timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::store::Backend;
use crate::{Error, Result};

/// Upper bound of open read connections per process.
pub const MAX_CONNECTIONS: u32 = 32;

/// How long a caller waits for a connection before it is told the
/// database is unavailable.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection idle for longer is checked with a round trip before use.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(2);

/// Whether the database answers, as the writer and the pool last found it:
/// what `/readyz` reports. Each side updates its own flag.
#[derive(Debug)]
pub struct DbHealth {
    pool: AtomicBool,
    writer: AtomicBool,
}

impl Default for DbHealth {
    fn default() -> Self {
        Self {
            pool: AtomicBool::new(true),
            writer: AtomicBool::new(true),
        }
    }
}

impl DbHealth {
    /// Both the writer and the pool reach the database.
    pub fn ready(&self) -> bool {
        self.pool.load(Ordering::Relaxed) && self.writer.load(Ordering::Relaxed)
    }

    /// The writer has a working connection (what ingestion needs).
    pub fn writer_ready(&self) -> bool {
        self.writer.load(Ordering::Relaxed)
    }

    pub fn set_writer(&self, up: bool) {
        if self.writer.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("the writer reaches the database again");
            } else {
                tracing::warn!("the writer lost the database; reconnecting");
            }
        }
    }

    pub fn set_pool(&self, up: bool) {
        if self.pool.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("the read pool reaches the database again");
            } else {
                tracing::warn!("the read pool cannot reach the database");
            }
        }
    }
}

/// A pooled connection and when it was last given back.
pub struct Slot {
    conn: Box<dyn Conn>,
    idle_since: Instant,
    /// Dropped while a panic unwound: its state is unknown.
    poisoned: bool,
}

pub(crate) struct Manager {
    pub(crate) backend: Arc<Backend>,
    pub(crate) health: Arc<DbHealth>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Slot;
    type Error = Error;

    fn connect(&self) -> Result<Slot> {
        let r = self.backend.connect();
        self.health
            .set_pool(r.is_ok() || !is_unavailable(r.as_ref().err()));
        Ok(Slot {
            conn: r?,
            idle_since: Instant::now(),
            poisoned: false,
        })
    }

    fn is_valid(&self, slot: &mut Slot) -> Result<()> {
        if slot.idle_since.elapsed() > CHECK_AFTER_IDLE {
            let r = slot.conn.ping();
            if let Err(e) = &r {
                self.health.set_pool(!is_unavailable(Some(e)));
            }
            r?;
        }
        Ok(())
    }

    fn has_broken(&self, slot: &mut Slot) -> bool {
        slot.poisoned || slot.conn.is_broken()
    }
}

fn is_unavailable(e: Option<&Error>) -> bool {
    matches!(e, Some(Error::Unavailable(_)))
}

/// r2d2 reports failed connection attempts here (it would use `log`).
#[derive(Debug)]
struct Report;

impl r2d2::HandleError<Error> for Report {
    fn handle_error(&self, error: Error) {
        tracing::warn!(error = %error, "opening a database connection failed");
    }
}

pub(crate) fn build(backend: Arc<Backend>, health: Arc<DbHealth>) -> r2d2::Pool<Manager> {
    r2d2::Pool::builder()
        .max_size(MAX_CONNECTIONS)
        // Opened on demand: no background attempts while nobody asks.
        .min_idle(Some(0))
        .idle_timeout(Some(Duration::from_secs(600)))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .test_on_check_out(true)
        .error_handler(Box::new(Report))
        .build_unchecked(Manager { backend, health })
}

/// A connection borrowed from the pool, given back when dropped (or
/// closed, if it was lost).
pub struct PooledConn {
    pub(crate) inner: r2d2::PooledConnection<Manager>,
}

impl std::ops::Deref for PooledConn {
    type Target = dyn Conn;
    fn deref(&self) -> &Self::Target {
        &*self.inner.conn
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.inner.conn
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.inner.idle_since = Instant::now();
        if std::thread::panicking() {
            self.inner.poisoned = true;
        }
    }
}

/// While the database is known to be away, a caller waits this long at
/// most (enough for a connection to a database that came back).
const CHECKOUT_WHILE_DOWN: Duration = Duration::from_millis(500);

/// An idle connection at once, or `None` (none idle: the caller waits
/// elsewhere, off an async worker).
pub(crate) fn try_checkout(pool: &r2d2::Pool<Manager>) -> Option<PooledConn> {
    pool.try_get().map(|inner| PooledConn { inner })
}

pub(crate) fn checkout(pool: &r2d2::Pool<Manager>, health: &DbHealth) -> Result<PooledConn> {
    let wait = if health.pool.load(Ordering::Relaxed) {
        CHECKOUT_TIMEOUT
    } else {
        CHECKOUT_WHILE_DOWN
    };
    match pool.get_timeout(wait) {
        Ok(inner) => {
            health.set_pool(true);
            Ok(PooledConn { inner })
        }
        Err(e) => {
            health.set_pool(false);
            Err(Error::Unavailable(format!("no database connection: {e}")))
        }
    }
}
