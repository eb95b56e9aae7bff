//! The vault: every personal value is sealed under its person's own data key
//! before it reaches a database, and found again through a keyed blind index.
//!
//! Key hierarchy: a 256-bit master key (file or environment) derives, with
//! HKDF-SHA256, a key-wrapping key and a blind-index key. Each profile has a
//! random 256-bit data key, stored only wrapped. Destroying a profile's wrapped
//! data key makes every sealed value of that person unreadable
//! (crypto-shredding), even in backups.
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

use crate::{Error, Result};

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

/// A profile's unwrapped data key.
pub type DataKey = Arc<LessSafeKey>;

pub struct Vault {
    wrap: LessSafeKey,
    bidx: hmac::Key,
    sign: hmac::Key,
    rng: SystemRandom,
    cache: Mutex<LruCache<i64, DataKey>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

impl Vault {
    /// `cache_capacity` bounds how many unwrapped data keys stay in memory.
    pub fn new(master: &MasterKey, cache_capacity: usize) -> Self {
        let wrap = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &derive(master, b"key wrapping"))
                .expect("32 bytes is an AES-256 key"),
        );
        let bidx = hmac::Key::new(hmac::HMAC_SHA256, &derive(master, b"blind index"));
        let sign = hmac::Key::new(hmac::HMAC_SHA256, &derive(master, b"signing"));
        Self {
            wrap,
            bidx,
            sign,
            rng: SystemRandom::new(),
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
        self.rng
            .fill(&mut b)
            .map_err(|_| Error::Crypto("no randomness"))?;
        Ok(b)
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN]> {
        let mut n = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut n)
            .map_err(|_| Error::Crypto("no randomness"))?;
        Ok(n)
    }

    /// Make a new data key for `owner`; returns it and its wrapped form.
    pub fn new_data_key(&self, owner: i64) -> Result<(DataKey, Vec<u8>)> {
        let mut raw = [0u8; 32];
        self.rng
            .fill(&mut raw)
            .map_err(|_| Error::Crypto("no randomness"))?;
        let key = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).expect("32 bytes is an AES-256 key"),
        ));
        let wrapped = seal_with(&self.wrap, self.nonce()?, &wrap_aad(owner), &raw)?;
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
        owner: i64,
        load: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<DataKey>> {
        if let Some(k) = self.cache.lock().expect("vault cache").get(&owner) {
            return Ok(Some(k.clone()));
        }
        let Some(wrapped) = load()? else {
            return Ok(None);
        };
        let mut raw = open_with(&self.wrap, &wrap_aad(owner), &wrapped)?;
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

    /// Drop a key from memory (after its profile was erased, or a rollback).
    pub fn forget(&self, owner: i64) {
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
        owner: i64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        seal_with(key, self.nonce()?, &place.aad(owner), plaintext)
    }

    pub fn open(
        &self,
        key: &LessSafeKey,
        place: Place,
        owner: i64,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        open_with(key, &place.aad(owner), sealed)
    }

    /// A value sealed with the installation's wrapping key, for data that
    /// belongs to no single person (and so is not shredded with one).
    pub fn seal_system(&self, place: Place, plaintext: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.wrap, self.nonce()?, &place.aad(0), plaintext)
    }

    pub fn open_system(&self, place: Place, sealed: &[u8]) -> Result<Vec<u8>> {
        open_with(&self.wrap, &place.aad(0), sealed)
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

    #[test]
    fn sealed_values_open_only_in_their_place_and_for_their_owner() {
        let v = Vault::new(&MasterKey::generate().unwrap(), 10);
        let (k, _) = v.new_data_key(7).unwrap();
        let s = v.seal(&k, Place::EventBody, 7, b"hello").unwrap();
        assert_eq!(v.open(&k, Place::EventBody, 7, &s).unwrap(), b"hello");
        assert!(v.open(&k, Place::EventBody, 8, &s).is_err());
        assert!(v.open(&k, Place::ProfileTraits, 7, &s).is_err());
        assert!(!s.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn wrapped_keys_unwrap_for_their_owner_only_and_cache_is_bounded() {
        let m = MasterKey::generate().unwrap();
        let v = Vault::new(&m, 1);
        let (k, wrapped) = v.new_data_key(1).unwrap();
        let s = v.seal(&k, Place::EventBody, 1, b"x").unwrap();
        let v2 = Vault::new(&MasterKey::from_hex(&m.to_hex()).unwrap(), 1);
        let k2 = v2
            .data_key(1, || Ok(Some(wrapped.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(v2.open(&k2, Place::EventBody, 1, &s).unwrap(), b"x");
        assert!(v2.data_key(2, || Ok(Some(wrapped.clone()))).is_err());
        v.new_data_key(2).unwrap();
        // capacity 1: key 1 was evicted, so it must be loaded again
        let mut loaded = false;
        v.data_key(1, || {
            loaded = true;
            Ok(Some(wrapped.clone()))
        })
        .unwrap();
        assert!(loaded);
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
