//! The access log's journal on the embedded store: a file of its own, its
//! space written once when it is made, where a read's record is made durable
//! with one `fdatasync` of blocks already allocated, instead of waiting for
//! the writer's turn behind ingestion. The writer copies the records into
//! the chained `access_log` table afterwards; the table keeps, in the same
//! transaction, the number of the last record it holds, so that a record is
//! copied exactly once, including after a crash between the two.
//!
//! The file is a ring of [`ALIGN`]-byte slots. A batch of records starts at
//! a slot: a header (magic, the first record's number, how many, the
//! payload's length, a checksum over all of it), then the records, then
//! zeros to the next slot. A batch is written only over slots whose records
//! the table holds already. Reading the file back looks at every slot for a
//! header whose checksum holds: a batch torn by a crash fails its checksum
//! and was never acknowledged (its readers were answered only after the
//! flush); older batches carry numbers the table holds already.
//!
//! The records hold what the table holds (key ids, profile ids, routes,
//! roles and purposes), never a value of a person's.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::AccessRecord;
use crate::conn::{KeyId, ProfileId};

/// The journal's file name inside the data directory.
pub const FILE: &str = "access.journal";
/// A batch starts at a multiple of this.
pub const ALIGN: u64 = 512;
/// The default size: 8 MiB, some 16,000 batches of one lookup each before
/// the ring comes round.
pub const DEFAULT_BYTES: u64 = 8 << 20;
const MAGIC: &[u8; 8] = b"TARMOAJ1";
/// Magic, first number, count, payload length, checksum.
const HEADER: usize = 8 + 8 + 4 + 4 + 16;

/// The actions a record may carry, by their code in the file.
const ACTIONS: [&str; 4] = ["read", "export", "decisions", "users"];

/// The action as the verifier and the journal know it (`unknown` for
/// anything else).
pub fn action(name: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|a| **a == name)
        .copied()
        .unwrap_or("unknown")
}

/// Why a batch could not be written.
#[derive(Debug)]
pub enum Refused {
    /// The slots it needs hold records the table has not taken yet.
    Full,
    /// The batch is larger than the ring allows one batch to be.
    TooLarge,
    Io(std::io::Error),
}

pub struct Journal {
    file: File,
    bytes: u64,
    /// Where the next batch goes.
    pos: u64,
    /// The next record's number.
    next: u64,
    /// The highest record number in each slot (0: nothing the table lacks).
    slots: Vec<u64>,
}

/// The records a journal file holds, by number (torn batches aside).
pub fn scan(path: &Path) -> std::io::Result<Vec<(u64, AccessRecord)>> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut found = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= buf.len() {
        if let Some((first, records)) = batch_at(&buf[at..]) {
            found.extend((first..).zip(records));
        }
        at += ALIGN as usize;
    }
    found.sort_by_key(|(n, _)| *n);
    found.dedup_by_key(|(n, _)| *n);
    Ok(found)
}

/// The batch starting at `b[0]`, if a whole one with a good checksum does.
fn batch_at(b: &[u8]) -> Option<(u64, Vec<AccessRecord>)> {
    if &b[..8] != MAGIC {
        return None;
    }
    let first = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(b[16..20].try_into().ok()?) as usize;
    let len = u32::from_le_bytes(b[20..24].try_into().ok()?) as usize;
    let payload = b.get(HEADER..HEADER + len)?;
    if b[24..40] != checksum(first, count as u32, payload)[..] {
        return None;
    }
    let mut r = Reader(payload);
    let records = (0..count).map(|_| r.record()).collect::<Option<Vec<_>>>()?;
    (r.0.is_empty() && first > 0).then_some((first, records))
}

fn checksum(first: u64, count: u32, payload: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"tarmo access journal v1\0");
    h.update(first.to_le_bytes());
    h.update(count.to_le_bytes());
    h.update((payload.len() as u32).to_le_bytes());
    h.update(payload);
    let d = h.finalize();
    d[..16].try_into().expect("16 bytes")
}

impl Journal {
    /// Open the journal at `path`, `bytes` long (rounded up to a slot), to
    /// number records from `next`. Every record it holds must be in the
    /// table already ([`scan`] them and copy them first). A file of another
    /// size is made again, its space written with zeros so that a flush
    /// never has to allocate.
    pub fn open(path: &Path, bytes: u64, next: u64) -> std::io::Result<Self> {
        let bytes = bytes.max(4 * ALIGN).div_ceil(ALIGN) * ALIGN;
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let file = o.open(path)?;
        if file.metadata()?.len() != bytes {
            file.set_len(0)?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < bytes {
                let n = (bytes - at).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], at)?;
                at += n;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(Self {
            file,
            bytes,
            pos: 0,
            next: next.max(1),
            slots: vec![0; (bytes / ALIGN) as usize],
        })
    }

    /// The number the next record will get.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Write `records` as one batch and flush it; the table holds every
    /// record numbered up to `applied`. Returns the first record's number.
    pub fn append(&mut self, records: &[AccessRecord], applied: u64) -> Result<u64, Refused> {
        let mut payload = Vec::with_capacity(records.len() * 96);
        for r in records {
            encode(&mut payload, r);
        }
        let first = self.next;
        let count = records.len() as u32;
        let whole = ((HEADER + payload.len()) as u64).div_ceil(ALIGN) * ALIGN;
        if whole > self.bytes / 4 || payload.len() > u32::MAX as usize {
            return Err(Refused::TooLarge);
        }
        let at = if self.pos + whole > self.bytes {
            0
        } else {
            self.pos
        };
        let span = (at / ALIGN) as usize..((at + whole) / ALIGN) as usize;
        if self.slots[span.clone()].iter().any(|n| *n > applied) {
            return Err(Refused::Full);
        }
        let mut b = Vec::with_capacity(whole as usize);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&first.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&checksum(first, count, &payload));
        b.extend_from_slice(&payload);
        b.resize(whole as usize, 0);
        self.file.write_all_at(&b, at).map_err(Refused::Io)?;
        self.file.sync_data().map_err(Refused::Io)?;
        let last = first + u64::from(count) - 1;
        for s in &mut self.slots[span] {
            *s = last;
        }
        self.pos = at + whole;
        self.next = last + 1;
        Ok(first)
    }
}

// ------------------------------------------------------------ the records

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_strs(b: &mut Vec<u8>, v: &[String]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for s in v {
        put_str(b, s);
    }
}

fn encode(b: &mut Vec<u8>, r: &AccessRecord) {
    for n in [
        r.at_ms,
        r.key_id.0,
        r.user_id.unwrap_or(0),
        r.count,
        r.profiles.len() as i64,
    ] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.push(u8::from(r.user_id.is_some()));
    let code = ACTIONS.iter().position(|a| *a == r.action);
    b.push(code.map_or(u8::MAX, |c| c as u8));
    put_str(b, &r.route);
    put_strs(b, &r.roles);
    put_strs(b, &r.purposes);
    for p in &r.profiles {
        b.extend_from_slice(&p.0.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(a)
    }

    fn int(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn str(&mut self) -> Option<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    fn strs(&mut self) -> Option<Vec<String>> {
        let n = self.len()?;
        if n > self.0.len() / 4 {
            return None;
        }
        (0..n).map(|_| self.str()).collect()
    }

    fn record(&mut self) -> Option<AccessRecord> {
        let [at_ms, key_id, user_id, count, n] = [
            self.int()?,
            self.int()?,
            self.int()?,
            self.int()?,
            self.int()?,
        ];
        let flags = self.take(2)?;
        let (has_user, code) = (flags[0] == 1, flags[1] as usize);
        let route = self.str()?;
        let roles = self.strs()?;
        let purposes = self.strs()?;
        if n < 0 || n as usize > self.0.len() / 8 {
            return None;
        }
        let profiles = (0..n)
            .map(|_| self.int().map(ProfileId))
            .collect::<Option<Vec<_>>>()?;
        Some(AccessRecord {
            at_ms,
            key_id: KeyId(key_id),
            user_id: has_user.then_some(user_id),
            roles,
            purposes,
            route,
            action: ACTIONS.get(code).copied().unwrap_or("unknown"),
            profiles,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> AccessRecord {
        AccessRecord {
            at_ms: 1_000 + i,
            key_id: KeyId(7),
            user_id: (i % 2 == 0).then_some(i),
            roles: vec!["support".into()],
            purposes: vec!["email_marketing".into(), "analytics".into()],
            route: "/api/v1/profiles/{id}".into(),
            action: ACTIONS[(i % 4) as usize],
            profiles: vec![ProfileId(i), ProfileId(i + 1)],
            count: 2,
        }
    }

    #[test]
    fn batches_read_back_whole_and_a_torn_one_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut j = Journal::open(&path, 64 * ALIGN, 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * ALIGN);
        assert_eq!(j.append(&[rec(0), rec(1)], 0).unwrap(), 1);
        assert_eq!(j.append(&[rec(2)], 0).unwrap(), 3);
        let found = scan(&path).unwrap();
        let numbers: Vec<u64> = found.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(found[1].1, rec(1));
        assert_eq!(found[2].1, rec(2));

        // A batch cut short by a crash: its tail never reached the file.
        let at = j.pos;
        j.append(&[rec(3), rec(4)], 0).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 16], at + HEADER as u64 + 8).unwrap();
        let numbers: Vec<u64> = scan(&path).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3], "the torn batch is not read");
    }

    #[test]
    fn the_ring_comes_round_only_over_records_the_table_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut j = Journal::open(&path, 8 * ALIGN, 1).unwrap();
        let mut last = 0;
        // Each batch of one record takes one slot: eight fill the ring.
        for i in 0..8 {
            last = j.append(&[rec(i)], 0).unwrap();
        }
        assert_eq!(last, 8);
        assert!(matches!(j.append(&[rec(8)], 0), Err(Refused::Full)));
        // The table took the first three: three more fit, then no more.
        for i in 8..11 {
            j.append(&[rec(i)], 3).unwrap();
        }
        assert!(matches!(j.append(&[rec(11)], 3), Err(Refused::Full)));
        let numbers: Vec<u64> = scan(&path).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (4..=11).collect::<Vec<_>>());
        // A batch larger than a quarter of the ring goes another way.
        let big: Vec<AccessRecord> = (0..40).map(rec).collect();
        assert!(matches!(j.append(&big, 11), Err(Refused::TooLarge)));

        // Opened again at the same size: the file is kept; numbering goes on.
        drop(j);
        let mut j = Journal::open(&path, 8 * ALIGN, 12).unwrap();
        assert_eq!(j.append(&[rec(12)], 11).unwrap(), 12);
        let numbers: Vec<u64> = scan(&path).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [4, 5, 6, 7, 8, 10, 11, 12], "12 went over 9");
    }

    #[test]
    fn the_file_is_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        Journal::open(&path, 8 * ALIGN, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
