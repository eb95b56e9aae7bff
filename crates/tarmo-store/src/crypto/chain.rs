//! The signed hash chain, written once for the consent ledger and the
//! access log.
//!
//! Each record names the hash of the one before it (the first names
//! [`GENESIS`]) and hashes, with that previous hash, to its own; the newest
//! record's sequence number and hash are kept in `meta` as the chain's
//! head, with a MAC under the installation's signing key. So an edited
//! record breaks its own hash, a removed one the sequence or the next
//! record's link, and a truncated or rewritten tail the signed head.
//!
//! What a record commits to is the record's own business ([`Link`]): the
//! bytes each chain hashes are pinned by tests, since every ledger and log
//! written since the first release must keep verifying. This module holds
//! the rest: where a chain's tip is, how a record is linked onto it, how
//! the head is signed, and the verification walk.

use serde::Serialize;

use crate::conn::{Conn, TxLock};
use crate::vault::Vault;
use crate::{Error, Result};

/// The first record's `prev_hash`.
pub const GENESIS: [u8; 32] = [0; 32];

/// A record of a chain: the hash it links with, given its predecessor's.
pub trait Link {
    fn link_hash(&self, prev: &[u8; 32]) -> [u8; 32];
}

/// One chain: its table, its head in `meta`, and the words its reports use.
pub struct Chain {
    /// The table, with `seq`, `prev_hash` and `hash` columns.
    pub table: &'static str,
    /// Taken before the tip is read, so that two writers never link onto
    /// the same record.
    pub lock: TxLock,
    /// The `meta` key of the signed head.
    pub head_key: &'static str,
    /// The MAC's context, so that one chain's head never passes for another's.
    pub head_mac: &'static str,
    /// What a stored hash of the wrong length is reported as (corrupt).
    pub bad_hash: &'static str,
    /// A record, records, and the whole, in reports ("entry", "entries",
    /// "chain").
    pub record: &'static str,
    pub records: &'static str,
    pub whole: &'static str,
}

/// Where the chain ends: the last record's sequence number and hash.
#[derive(Debug, Clone, Copy)]
pub struct Tip {
    pub seq: i64,
    pub hash: [u8; 32],
}

/// A record linked onto the tip: what its row stores.
#[derive(Debug, Clone, Copy)]
pub struct Linked {
    pub seq: i64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Where a chain first fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The record (or, for a missing record, the number expected).
    pub seq: i64,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub first_broken: Option<BrokenLink>,
}

fn head_bytes(seq: i64, hash: &[u8; 32]) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend_from_slice(hash);
    b
}

impl Chain {
    /// Lock the chain for the caller's transaction and find its tip.
    pub fn tip(&self, conn: &mut dyn Conn) -> Result<Tip> {
        conn.lock(self.lock)?;
        let head = conn.query_opt(
            &format!(
                "SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1",
                self.table
            ),
            &[],
        )?;
        Ok(match head {
            Some(r) => Tip {
                seq: r.int(0)?,
                hash: r
                    .blob(1)?
                    .try_into()
                    .map_err(|_| Error::Corrupt(self.bad_hash.into()))?,
            },
            None => Tip {
                seq: 0,
                hash: GENESIS,
            },
        })
    }

    /// Sign the tip as the chain's head, in the caller's transaction, once
    /// every record of it is written.
    pub fn sign_head(&self, conn: &mut dyn Conn, vault: &Vault, tip: &Tip) -> Result<()> {
        let mut b = head_bytes(tip.seq, &tip.hash);
        let mac = vault.mac(self.head_mac, &b);
        b.extend_from_slice(&mac);
        conn.meta_set(self.head_key, &b)
    }

    /// A walk over the stored records, from the first.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            chain: self,
            prev: GENESIS,
            last: 0,
            n: 0,
        }
    }
}

impl Tip {
    /// Link the next record: `record` is made with its sequence number.
    pub fn link<L: Link>(&mut self, record: impl FnOnce(i64) -> L) -> Linked {
        let seq = self.seq + 1;
        let hash = record(seq).link_hash(&self.hash);
        let linked = Linked {
            seq,
            prev_hash: self.hash,
            hash,
        };
        self.seq = seq;
        self.hash = hash;
        linked
    }
}

/// Verification, record by record in `seq` order: every record numbered one
/// after the previous, naming the previous hash, hashing to its own; the
/// last one the signed head.
pub struct Walk<'c> {
    chain: &'c Chain,
    prev: [u8; 32],
    last: i64,
    n: u64,
}

impl Walk<'_> {
    /// The last record checked (0 before any): read on after it.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// Records checked so far.
    pub fn checked(&self) -> u64 {
        self.n
    }

    fn broken(&self, seq: i64, problem: String) -> VerifyReport {
        VerifyReport {
            entries: self.n,
            first_broken: Some(BrokenLink { seq, problem }),
        }
    }

    /// Check the next stored record: its `seq`, `prev_hash` and `hash`
    /// columns, and what it hashes to (a record that cannot be what was
    /// hashed, `well_formed` false, counts as altered). The report of the
    /// first broken link ends the walk.
    pub fn check(
        &mut self,
        seq: i64,
        prev_hash: &[u8],
        hash: &[u8],
        record: &impl Link,
        well_formed: bool,
    ) -> Result<(), VerifyReport> {
        let (c, last) = (self.chain, self.last);
        if seq != last + 1 {
            return Err(self.broken(
                last + 1,
                format!("{} missing: the sequence jumps past it", c.record),
            ));
        }
        let expected = record.link_hash(&self.prev);
        if prev_hash != self.prev {
            return Err(self.broken(
                seq,
                format!(
                    "its prev_hash is not the hash of the {} before it",
                    c.record
                ),
            ));
        }
        if !well_formed || hash != expected {
            return Err(self.broken(
                seq,
                "its content does not hash to its recorded hash (altered)".into(),
            ));
        }
        self.prev = expected;
        self.last = seq;
        self.n += 1;
        Ok(())
    }

    /// Every record checked: whether the signed head is the last one.
    pub fn finish(self, conn: &mut dyn Conn, vault: &Vault) -> Result<VerifyReport> {
        let c = self.chain;
        let problem = match conn.meta_get(c.head_key)? {
            None if self.n == 0 => None,
            None => Some("the signed head is missing".to_owned()),
            Some(h) if h.len() != 72 => Some("the signed head is malformed".to_owned()),
            Some(h) if !vault.mac_ok(c.head_mac, &h[..40], &h[40..]) => Some(
                "the signed head's signature does not verify (forged, or another master key)"
                    .to_owned(),
            ),
            Some(h) if h[..40] != head_bytes(self.last, &self.prev)[..] => Some(format!(
                "the last {} were removed or rewritten: the {} ends before the signed head",
                c.records, c.whole
            )),
            Some(_) => None,
        };
        Ok(VerifyReport {
            entries: self.n,
            first_broken: problem.map(|problem| BrokenLink {
                seq: self.last + 1,
                problem,
            }),
        })
    }
}
