//! The vault: every personal value is sealed under its person's own data key
//! before it reaches a database, and found again through a keyed blind index.
//!
//! Key hierarchy: a 256-bit master key (file, environment or command) wraps
//! the installation keys — a key-wrapping key, a blind-index key and a
//! signing (MAC) key — kept in the store as one sealed record (meta
//! `installation_keys`). Every blind index, MAC and wrapped data key depends
//! on the installation keys only, so the master key can be rotated by
//! re-wrapping that one record. A store made before the record existed used
//! keys derived (HKDF-SHA256) from its master key; on its first start they
//! become its installation keys, unchanged, so nothing stored is rewritten.
//! Each profile has a random 256-bit data key, stored only wrapped by the
//! key-wrapping key. Destroying a profile's wrapped data key makes every
//! sealed value of that person unreadable (crypto-shredding), even in backups.
//!
//! Sealed values are AES-256-GCM with a random 96-bit nonce; the associated
//! data binds the table, the field and the id of the profile whose key sealed
//! it, so a ciphertext copied to another row or person does not open.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use crate::conn::ProfileId;
use crate::{Error, Result};

/// Bytes the vault sealed: what the database stores instead of a value.
/// Only the vault makes one (its `seal*` methods) or opens one (its `open*`
/// methods); the database layer only carries it, binding it with
/// [`Sealed::as_bytes`] and giving back what it read with
/// [`Sealed::from_db`].
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Sealed {
    /// Bytes read back from a sealed column.
    pub(crate) fn from_db(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes, to bind in a statement.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Length of a blind index: 128 bits of HMAC-SHA256 keep collisions out of
/// reach for any number of identifiers a store will hold.
pub const BIDX_LEN: usize = 16;

/// A keyed HMAC of a normalised identifier: what the store indexes instead of
/// the identifier itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindIndex(pub [u8; BIDX_LEN]);

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndex({})", hex::encode(&self.0[..6]))
    }
}

impl BlindIndex {
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let arr: [u8; BIDX_LEN] = b
            .try_into()
            .map_err(|_| Error::Corrupt("blind index of the wrong length".into()))?;
        Ok(Self(arr))
    }
}

/// The installation's root secret. Never logged: `Debug` is redacted.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| Error::Crypto("no randomness"))?;
        Ok(Self(k))
    }

    /// Parse the hex form used in the key file and in `TARMO_MASTER_KEY`.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bytes = hex::decode(s.trim()).map_err(|_| {
            Error::Config("the master key must be 64 hexadecimal characters".into())
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::Config("the master key must be 64 hexadecimal characters".into())
        })?;
        Ok(Self(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Read a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        Self::from_hex(&std::fs::read_to_string(path)?)
    }

    /// Write a new key file with mode 0600, never overwriting one.
    pub fn create_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        f.write_all(self.to_hex().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(())
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(master: &MasterKey, label: &[u8]) -> [u8; 32] {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tarmo vault v1");
    let prk = salt.extract(&master.0);
    let info = [label];
    let okm = prk
        .expand(&info, Len32)
        .expect("32 bytes is a valid HKDF length");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("32 bytes is a valid HKDF length");
    out
}

/// The meta row holding the installation keys, wrapped by the master key.
pub const INSTALLATION_KEYS: &str = "installation_keys";

/// The record's layout: a version byte, then the sealed keys.
const INSTALLATION_KEYS_V1: u8 = 1;

/// The installation's own keys, which everything stored depends on: the key
/// that wraps data keys (and seals what belongs to no one person), the
/// blind-index key and the signing key. Random at `tarmo init`; kept only
/// wrapped by the master key, and zeroed in memory when dropped.
pub struct InstallationKeys {
    wrap: [u8; 32],
    bidx: [u8; 32],
    sign: [u8; 32],
}

impl std::fmt::Debug for InstallationKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallationKeys(<secret>)")
    }
}

impl Drop for InstallationKeys {
    fn drop(&mut self) {
        for k in [&mut self.wrap, &mut self.bidx, &mut self.sign] {
            k.fill(0);
            std::hint::black_box(&k);
        }
    }
}

impl InstallationKeys {
    /// New random keys, for a new store.
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut k = Self {
            wrap: [0; 32],
            bidx: [0; 32],
            sign: [0; 32],
        };
        for b in [&mut k.wrap, &mut k.bidx, &mut k.sign] {
            rng.fill(b).map_err(|_| Error::Crypto("no randomness"))?;
        }
        Ok(k)
    }

    /// The keys of a store made before installation keys existed: derived
    /// from its master key. Kept as they are on upgrade, so every blind
    /// index, MAC and wrapped data key already stored stays valid.
    pub fn derived(master: &MasterKey) -> Self {
        Self {
            wrap: derive(master, b"key wrapping"),
            bidx: derive(master, b"blind index"),
            sign: derive(master, b"signing"),
        }
    }

    /// The record stored in meta `installation_keys`: the keys sealed
    /// (AES-256-GCM) under a key derived from `master`, the associated data
    /// naming the record and its version.
    pub fn wrap_under(&self, master: &MasterKey) -> Result<Vec<u8>> {
        let kek = record_key(master);
        let mut plain = [0u8; 96];
        plain[..32].copy_from_slice(&self.wrap);
        plain[32..64].copy_from_slice(&self.bidx);
        plain[64..].copy_from_slice(&self.sign);
        let mut n = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut n)
            .map_err(|_| Error::Crypto("no randomness"))?;
        let sealed = seal_with(&kek, n, &record_aad(INSTALLATION_KEYS_V1), &plain);
        plain.fill(0);
        let mut out = vec![INSTALLATION_KEYS_V1];
        out.extend_from_slice(&sealed?);
        Ok(out)
    }

    /// Open a record made by [`InstallationKeys::wrap_under`]:
    /// `Error::WrongMasterKey` when `master` is not the key it was wrapped by.
    pub fn unwrap_under(master: &MasterKey, record: &[u8]) -> Result<Self> {
        let Some((&version, sealed)) = record.split_first() else {
            return Err(Error::Corrupt(
                "the installation keys record is empty".into(),
            ));
        };
        if version != INSTALLATION_KEYS_V1 {
            return Err(Error::Corrupt(format!(
                "installation keys record version {version} is not known to this version of Tarmo"
            )));
        }
        let mut plain = open_with(&record_key(master), &record_aad(version), sealed)
            .map_err(|_| Error::WrongMasterKey)?;
        if plain.len() != 96 {
            plain.fill(0);
            return Err(Error::Corrupt(
                "the installation keys record has the wrong length".into(),
            ));
        }
        let mut k = Self {
            wrap: [0; 32],
            bidx: [0; 32],
            sign: [0; 32],
        };
        k.wrap.copy_from_slice(&plain[..32]);
        k.bidx.copy_from_slice(&plain[32..64]);
        k.sign.copy_from_slice(&plain[64..]);
        plain.fill(0);
        Ok(k)
    }
}

impl MasterKey {
    /// Whether two master keys are the same, in constant time.
    pub fn same_as(&self, other: &MasterKey) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

/// The key that wraps the installation keys: derived from the master key
/// under a label of its own, so the master key itself seals nothing.
fn record_key(master: &MasterKey) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &derive(master, b"installation keys"))
            .expect("32 bytes is an AES-256 key"),
    )
}

fn record_aad(version: u8) -> Vec<u8> {
    let mut aad = b"meta.installation_keys\0".to_vec();
    aad.push(version);
    aad
}

/// Bytes from the operating system's generator, taken 4 KiB at a time
/// and handed out once each: a seal's nonce or a new data key was a
/// `getrandom` call of its own, 8 % of the writer's time in an import of
/// new customers (`perf`). Bytes handed out are zeroed in the buffer, so
/// it never holds a key already made; the process never forks.
fn random_fill(out: &mut [u8]) -> Result<()> {
    const SIZE: usize = 4096;
    struct Pool {
        bytes: [u8; SIZE],
        at: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> =
            const { std::cell::RefCell::new(Pool { bytes: [0; SIZE], at: SIZE }) };
    }
    if out.len() > SIZE / 4 {
        return SystemRandom::new()
            .fill(out)
            .map_err(|_| Error::Crypto("no randomness"));
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if SIZE - p.at < out.len() {
            SystemRandom::new()
                .fill(&mut p.bytes)
                .map_err(|_| Error::Crypto("no randomness"))?;
            p.at = 0;
        }
        let at = p.at;
        let taken = &mut p.bytes[at..at + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        p.at += out.len();
        Ok(())
    })
}

/// A profile's unwrapped data key.
pub type DataKey = Arc<LessSafeKey>;

pub struct Vault {
    wrap: LessSafeKey,
    bidx: hmac::Key,
    sign: hmac::Key,
    cache: Mutex<LruCache<ProfileId, DataKey>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

impl Vault {
    /// A vault with the keys derived from `master` (those of a store made
    /// before installation keys existed; tests and benchmarks use it).
    /// `cache_capacity` bounds how many unwrapped data keys stay in memory.
    pub fn new(master: &MasterKey, cache_capacity: usize) -> Self {
        Self::with_keys(&InstallationKeys::derived(master), cache_capacity)
    }

    /// A vault holding the installation keys `keys` (the store's).
    pub fn with_keys(keys: &InstallationKeys, cache_capacity: usize) -> Self {
        let wrap = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &keys.wrap).expect("32 bytes is an AES-256 key"),
        );
        let bidx = hmac::Key::new(hmac::HMAC_SHA256, &keys.bidx);
        let sign = hmac::Key::new(hmac::HMAC_SHA256, &keys.sign);
        Self {
            wrap,
            bidx,
            sign,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_capacity.max(1)).expect("at least one"),
            )),
        }
    }

    /// The blind index of a normalised identifier of a kind.
    pub fn blind_index(&self, kind: &str, value: &str) -> BlindIndex {
        let mut ctx = hmac::Context::with_key(&self.bidx);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; BIDX_LEN];
        out.copy_from_slice(&tag.as_ref()[..BIDX_LEN]);
        BlindIndex(out)
    }

    /// A keyed 64-bit digest for deduplication keys (messageIds): not personal,
    /// but keyed so that nobody can craft collisions against this installation.
    pub fn dedup_hash(&self, source: i64, message_id: &str) -> i64 {
        let mut ctx = hmac::Context::with_key(&self.bidx);
        ctx.update(b"dedup\0");
        ctx.update(&source.to_le_bytes());
        ctx.update(message_id.as_bytes());
        let tag = ctx.sign();
        i64::from_le_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"))
    }

    /// A MAC binding `data` to this installation, for links Tarmo hands out
    /// (unsubscribe, preferences) and for the signed heads of hash chains.
    /// `purpose` separates uses so that one MAC never stands for another.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.sign);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Check a MAC made by [`Vault::mac`] (possibly truncated), in constant time.
    pub fn mac_ok(&self, purpose: &str, data: &[u8], tag: &[u8]) -> bool {
        let full = self.mac(purpose, data);
        tag.len() >= 16 && tag.len() <= full.len() && ct_eq(&full[..tag.len()], tag)
    }

    /// Random bytes, for tokens.
    pub fn random<const N: usize>(&self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        random_fill(&mut b)?;
        Ok(b)
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN]> {
        let mut n = [0u8; NONCE_LEN];
        random_fill(&mut n)?;
        Ok(n)
    }

    /// Make a new data key for `owner`; returns it and its wrapped form.
    pub fn new_data_key(&self, owner: ProfileId) -> Result<(DataKey, Vec<u8>)> {
        let mut raw = [0u8; 32];
        random_fill(&mut raw)?;
        let key = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).expect("32 bytes is an AES-256 key"),
        ));
        let wrapped = seal_with(&self.wrap, self.nonce()?, &wrap_aad(owner.0), &raw)?;
        raw.fill(0);
        self.cache
            .lock()
            .expect("vault cache")
            .put(owner, key.clone());
        Ok((key, wrapped))
    }

    /// The data key of `owner`, from the cache or unwrapped from `load()`.
    pub fn data_key(
        &self,
        owner: ProfileId,
        load: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<DataKey>> {
        if let Some(k) = self.cache.lock().expect("vault cache").get(&owner) {
            return Ok(Some(k.clone()));
        }
        let Some(wrapped) = load()? else {
            return Ok(None);
        };
        let mut raw = open_with(&self.wrap, &wrap_aad(owner.0), &wrapped)?;
        let key = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| Error::Crypto("bad data key"))?,
        ));
        raw.fill(0);
        self.cache
            .lock()
            .expect("vault cache")
            .put(owner, key.clone());
        Ok(Some(key))
    }

    /// The data key of `owner` if the cache holds it (a bulk reader looks
    /// here first, then unwraps the rest with [`Vault::unwrap_uncached`]).
    pub(crate) fn cached_key(&self, owner: ProfileId) -> Option<DataKey> {
        self.cache
            .lock()
            .expect("vault cache")
            .peek(&owner)
            .cloned()
    }

    /// Unwrap `owner`'s data key without keeping it in the cache: a bulk
    /// read (an audience of a million) must not evict the keys of the
    /// people being served now.
    pub(crate) fn unwrap_uncached(&self, owner: ProfileId, wrapped: &[u8]) -> Result<DataKey> {
        let mut raw = open_with(&self.wrap, &wrap_aad(owner.0), wrapped)?;
        let key = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| Error::Crypto("bad data key"))?,
        ));
        raw.fill(0);
        Ok(key)
    }

    /// Drop a key from memory (after its profile was erased, or a rollback).
    pub fn forget(&self, owner: ProfileId) {
        self.cache.lock().expect("vault cache").pop(&owner);
    }

    /// Drop every cached key.
    pub fn forget_all(&self) {
        self.cache.lock().expect("vault cache").clear();
    }

    pub fn seal(
        &self,
        key: &LessSafeKey,
        place: Place,
        owner: ProfileId,
        plaintext: &[u8],
    ) -> Result<Sealed> {
        seal_with(key, self.nonce()?, &place.aad(owner.0), plaintext).map(Sealed)
    }

    pub fn open(
        &self,
        key: &LessSafeKey,
        place: Place,
        owner: ProfileId,
        sealed: &Sealed,
    ) -> Result<Vec<u8>> {
        let plain = open_with(key, &place.aad(owner.0), &sealed.0)?;
        match place {
            // Packed before sealing (see `packed`); older bodies are JSON.
            Place::EventBody => super::packed::unpack(plain),
            _ => Ok(plain),
        }
    }

    /// A value sealed with the installation's wrapping key, for data that
    /// belongs to no single person (and so is not shredded with one).
    pub fn seal_system(&self, place: Place, plaintext: &[u8]) -> Result<Sealed> {
        seal_with(&self.wrap, self.nonce()?, &place.aad(0), plaintext).map(Sealed)
    }

    pub fn open_system(&self, place: Place, sealed: &Sealed) -> Result<Vec<u8>> {
        open_with(&self.wrap, &place.aad(0), &sealed.0)
    }
}

/// Equality of two secrets' bytes in time that depends only on their length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// Where a sealed value lives: its table and field, bound into the AEAD.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    IdentifierValue,
    ProfileTraits,
    EventBody,
    VaultCheck,
    ConsentEvidence,
    OutboxPayload,
    /// A data subject request's details (corrected values, the address to
    /// verify), sealed with the installation key, wiped when it closes.
    RequestPayload,
    /// What a processor is told when a person is erased (their identifiers),
    /// sealed with the installation key, wiped once delivered.
    ProcessorNotification,
    /// A processor's webhook bearer token.
    ProcessorSecret,
    /// A segment's rule: written by staff, and it may name a value that
    /// identifies someone; sealed with the installation key.
    SegmentRule,
    /// The hashed identifiers an ad platform received for a person, kept
    /// (installation key) until the platform is told to remove them.
    AudienceHashes,
    /// An audience sync's file (hashed identifiers), installation key.
    AudienceFile,
    /// A staff note on a data subject request's step (why it was verified,
    /// refused, extended), sealed with the installation key: the request
    /// outlives the person, and the note may name them.
    RequestNote,
    /// An import's provenance (source, documentation, file) and its report
    /// (an error may quote a value), installation key.
    ImportDetails,
}

impl Place {
    fn aad(self, owner: i64) -> Vec<u8> {
        let tf: &[u8] = match self {
            Place::IdentifierValue => b"identifiers.value",
            Place::ProfileTraits => b"profiles.traits",
            Place::EventBody => b"events.body",
            Place::VaultCheck => b"meta.vault_check",
            Place::ConsentEvidence => b"consent_ledger.evidence",
            Place::OutboxPayload => b"outbox.payload",
            Place::RequestPayload => b"requests.payload",
            Place::ProcessorNotification => b"processor_notifications.payload",
            Place::ProcessorSecret => b"processors.webhook_token",
            Place::SegmentRule => b"segments.rule",
            Place::AudienceHashes => b"audience_members.hashes",
            Place::AudienceFile => b"audience_syncs.file",
            Place::RequestNote => b"request_events.note",
            Place::ImportDetails => b"imports.details",
        };
        let mut aad = Vec::with_capacity(tf.len() + 9);
        aad.extend_from_slice(tf);
        aad.push(0);
        aad.extend_from_slice(&owner.to_le_bytes());
        aad
    }
}

fn wrap_aad(owner: i64) -> Vec<u8> {
    let mut aad = b"data_keys.wrapped\0".to_vec();
    aad.extend_from_slice(&owner.to_le_bytes());
    aad
}

fn seal_with(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| Error::Crypto("sealing failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(Error::Crypto("sealed value too short"));
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("nonce length");
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| Error::Crypto("a sealed value does not open: wrong key, place or owner"))?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pooled generator hands every byte out once, across refills of
    /// its buffer and for sizes that do not divide it.
    #[test]
    fn pooled_random_bytes_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..3000 {
            let mut n = [0u8; NONCE_LEN];
            random_fill(&mut n).unwrap();
            assert_ne!(n, [0u8; NONCE_LEN], "draw {i}");
            assert!(seen.insert(n.to_vec()), "draw {i} repeated");
            let mut k = [0u8; 32];
            random_fill(&mut k).unwrap();
            assert!(seen.insert(k.to_vec()), "key {i} repeated");
        }
        let mut big = vec![0u8; 8192];
        random_fill(&mut big).unwrap();
        assert!(big.iter().any(|b| *b != 0));
    }

    #[test]
    fn sealed_values_open_only_in_their_place_and_for_their_owner() {
        let v = Vault::new(&MasterKey::generate().unwrap(), 10);
        let (k, _) = v.new_data_key(ProfileId(7)).unwrap();
        let s = v
            .seal(&k, Place::EventBody, ProfileId(7), b"hello")
            .unwrap();
        assert_eq!(
            v.open(&k, Place::EventBody, ProfileId(7), &s).unwrap(),
            b"hello"
        );
        assert!(v.open(&k, Place::EventBody, ProfileId(8), &s).is_err());
        assert!(v.open(&k, Place::ProfileTraits, ProfileId(7), &s).is_err());
        assert!(!s.as_bytes().windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn wrapped_keys_unwrap_for_their_owner_only_and_cache_is_bounded() {
        let m = MasterKey::generate().unwrap();
        let v = Vault::new(&m, 1);
        let (k, wrapped) = v.new_data_key(ProfileId(1)).unwrap();
        let s = v.seal(&k, Place::EventBody, ProfileId(1), b"x").unwrap();
        let v2 = Vault::new(&MasterKey::from_hex(&m.to_hex()).unwrap(), 1);
        let k2 = v2
            .data_key(ProfileId(1), || Ok(Some(wrapped.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(
            v2.open(&k2, Place::EventBody, ProfileId(1), &s).unwrap(),
            b"x"
        );
        assert!(
            v2.data_key(ProfileId(2), || Ok(Some(wrapped.clone())))
                .is_err()
        );
        v.new_data_key(ProfileId(2)).unwrap();
        // capacity 1: key 1 was evicted, so it must be loaded again
        let mut loaded = false;
        v.data_key(ProfileId(1), || {
            loaded = true;
            Ok(Some(wrapped.clone()))
        })
        .unwrap();
        assert!(loaded);
    }

    #[test]
    fn installation_keys_open_under_their_master_key_only() {
        let (m1, m2) = (
            MasterKey::generate().unwrap(),
            MasterKey::generate().unwrap(),
        );
        let keys = InstallationKeys::generate().unwrap();
        let rec = keys.wrap_under(&m1).unwrap();
        let back = InstallationKeys::unwrap_under(&m1, &rec).unwrap();
        let (v, w) = (Vault::with_keys(&keys, 1), Vault::with_keys(&back, 1));
        assert_eq!(
            v.blind_index("email", "a@b.fi"),
            w.blind_index("email", "a@b.fi")
        );
        assert_eq!(v.mac("x", b"y"), w.mac("x", b"y"));
        let sealed = v.seal_system(Place::VaultCheck, b"tarmo").unwrap();
        assert_eq!(w.open_system(Place::VaultCheck, &sealed).unwrap(), b"tarmo");
        // wrong master key, a changed version byte, a flipped bit: refused
        assert!(matches!(
            InstallationKeys::unwrap_under(&m2, &rec),
            Err(Error::WrongMasterKey)
        ));
        let mut bad = rec.clone();
        bad[0] = 2;
        assert!(matches!(
            InstallationKeys::unwrap_under(&m1, &bad),
            Err(Error::Corrupt(_))
        ));
        let mut bad = rec.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(InstallationKeys::unwrap_under(&m1, &bad).is_err());
        // rotation: the same keys under another master key
        let rec2 = back.wrap_under(&m2).unwrap();
        let again = InstallationKeys::unwrap_under(&m2, &rec2).unwrap();
        assert_eq!(
            Vault::with_keys(&again, 1).blind_index("email", "a@b.fi"),
            v.blind_index("email", "a@b.fi")
        );
        // the derived keys are exactly those of the old code path
        let old = Vault::new(&m1, 1);
        let up = Vault::with_keys(&InstallationKeys::derived(&m1), 1);
        assert_eq!(
            old.blind_index("email", "a@b.fi"),
            up.blind_index("email", "a@b.fi")
        );
        assert_eq!(old.mac("p", b"d"), up.mac("p", b"d"));
        // random keys are not the derived ones
        assert_ne!(
            Vault::with_keys(&keys, 1).blind_index("email", "a@b.fi"),
            Vault::new(&m1, 1).blind_index("email", "a@b.fi")
        );
    }

    #[test]
    fn blind_indexes_depend_on_kind_value_and_master_key() {
        let v = Vault::new(&MasterKey::generate().unwrap(), 1);
        let w = Vault::new(&MasterKey::generate().unwrap(), 1);
        assert_eq!(
            v.blind_index("email", "a@b.fi"),
            v.blind_index("email", "a@b.fi")
        );
        assert_ne!(
            v.blind_index("email", "a@b.fi"),
            v.blind_index("user_id", "a@b.fi")
        );
        assert_ne!(
            v.blind_index("email", "a@b.fi"),
            w.blind_index("email", "a@b.fi")
        );
    }
}
