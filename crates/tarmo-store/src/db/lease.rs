//! Work shared by several nodes on one PostgreSQL: who claimed what, and
//! for how long.
//!
//! A queued row (an outbox message, an erasure notification) is claimed by
//! one node at a time: `FOR UPDATE SKIP LOCKED` keeps two nodes from
//! waiting on each other, and the `status = 'pending'` guard on the update
//! makes sure only one claim wins. A claim is a lease: it names the node
//! and ends at `lease_until`. A node that dies leaves its claims to expire,
//! and any node then takes them over; a node that restarts takes back only
//! its own. A node must never act on a row whose lease it no longer holds.
//!
//! Periodic jobs (the retention sweep) take a named lease in
//! `work_leases`, so that one node runs each turn.

use std::time::Duration;

use crate::Result;
use crate::conn::{Conn, P};

/// The node claiming work, and how long its claims last.
#[derive(Debug, Clone)]
pub struct Claimant {
    /// Stable across restarts of the same node (see `tarmo serve --node-id`).
    pub node: String,
    /// How long a claim lasts unless renewed; another node takes the work
    /// over once it has run out.
    pub lease: Duration,
}

impl Claimant {
    pub fn new(node: impl Into<String>, lease: Duration) -> Self {
        Self {
            node: node.into(),
            lease,
        }
    }

    /// When a claim made at `now_ms` runs out.
    pub fn until(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.lease.as_millis() as i64)
    }
}

impl Default for Claimant {
    /// A single node: claims last a minute.
    fn default() -> Self {
        Self::new("local", Duration::from_secs(60))
    }
}

/// A node id for a data directory: read from `node.id`, made (random) the
/// first time. Each node of a cluster has its own data directory, so its
/// own id, which it keeps across restarts and takes back its claims with.
pub fn node_id_of(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let mut b = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| std::io::Error::other("no randomness for a node id"))?;
            let id = format!("node-{}", hex::encode(b));
            // Like every file Tarmo writes: the owner's only.
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            std::io::Write::write_all(&mut opts.open(&path)?, id.as_bytes())?;
            Ok(id)
        }
    }
}

/// Take the named job's lease for `claimant` unless another node holds an
/// unexpired one; `true` when this node has it now (until `until_ms`).
pub fn take_job(
    conn: &mut dyn Conn,
    name: &str,
    node: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool> {
    let n = conn.exec(
        "INSERT INTO work_leases (name, claimed_by, lease_until) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET claimed_by = excluded.claimed_by,
             lease_until = excluded.lease_until
         WHERE work_leases.lease_until <= $4 OR work_leases.claimed_by = excluded.claimed_by",
        &[
            P::Text(name),
            P::Text(node),
            P::Int(until_ms),
            P::Int(now_ms),
        ],
    )?;
    Ok(n == 1)
}
