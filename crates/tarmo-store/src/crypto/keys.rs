//! API keys and staff accounts.
//!
//! A key is a 160-bit random secret stored only as its SHA-256 (a slow hash
//! adds nothing for secrets of that entropy); it holds roles and may be
//! bound to purposes and expire. A staff account has an Argon2id password
//! hash and roles; logging in makes a short-lived key with the account's
//! roles.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::digest;
use serde::Serialize;
use tarmo_core::codes::Code;

use tarmo_core::identity::Trust;

use crate::conn::{Conn, KeyId, P, Row};
use crate::vault::{Vault, ct_eq};
use crate::{Error, Result, rfc3339};

/// What a new key is.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub roles: Vec<String>,
    /// Purposes the key acts for; empty: not bound.
    pub purposes: Vec<String>,
    pub name: String,
    pub user_id: Option<i64>,
    pub expires_ms: Option<i64>,
    /// Write keys only: `client` (the default) or `server`.
    pub trust: Option<Trust>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub id: KeyId,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    pub name: String,
    pub user_id: Option<i64>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    /// A write key's trust level: `client` (shipped in a web page or an
    /// app: what it says about identity is a claim) or `server`; absent for
    /// other keys.
    #[serde(serialize_with = "trust_name")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "client"))]
    pub trust: Option<Trust>,
}

fn trust_name<S: serde::Serializer>(
    t: &Option<Trust>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(t.as_str()),
        None => s.serialize_none(),
    }
}

impl ApiKey {
    /// Only ingestion: the key an SDK holds.
    pub fn is_write_key(&self) -> bool {
        self.roles.iter().all(|r| r == "ingest")
    }

    /// How far what this key sends about identity is trusted: a write key
    /// made before trust levels existed is a client key (it may be in a web
    /// page).
    pub fn source_trust(&self) -> Trust {
        self.trust.unwrap_or(Trust::Client)
    }
}

pub fn key_hash(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

const KEY_COLUMNS: &str =
    "id, role, roles, purposes, name, user_id, created_ms, revoked_ms, expires_ms, key_hash, trust";

fn key_of(r: &Row) -> Result<ApiKey> {
    // Keys made before roles were lists have their one role in `role`.
    let roles = match r.opt_text(2)? {
        Some(j) => serde_json::from_str(&j).map_err(|e| Error::Corrupt(e.to_string()))?,
        None => vec![r.text(1)?],
    };
    let purposes = match r.opt_text(3)? {
        Some(j) => serde_json::from_str(&j).map_err(|e| Error::Corrupt(e.to_string()))?,
        None => Vec::new(),
    };
    let write_key = roles.iter().all(|r| r == "ingest");
    let trust = match r.opt_text(10)? {
        Some(t) => Some(
            Trust::parse(&t).ok_or_else(|| Error::Corrupt(format!("unknown key trust {t:?}")))?,
        ),
        None => write_key.then_some(Trust::Client),
    };
    Ok(ApiKey {
        trust,
        id: KeyId(r.int(0)?),
        roles,
        purposes,
        name: r.text(4)?,
        user_id: r.opt_int(5)?,
        created_ms: r.int(6)?,
        revoked_ms: r.opt_int(7)?,
        expires_ms: r.opt_int(8)?,
    })
}

/// Make a key; the secret is returned once.
pub fn create(
    conn: &mut dyn Conn,
    vault: &Vault,
    spec: &KeySpec,
    now_ms: i64,
) -> Result<(String, KeyId)> {
    if spec.roles.is_empty() {
        return Err(Error::rejected(
            Code::InvalidRole,
            "a key needs at least one role",
        ));
    }
    let write_key = spec.roles.iter().all(|r| r == "ingest");
    let trust = match (write_key, spec.trust) {
        (true, t) => Some(t.unwrap_or(Trust::Client)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(Error::rejected(
                Code::InvalidTrust,
                "only write keys (role ingest alone) have a trust level",
            ));
        }
    };
    let raw: [u8; 20] = vault.random()?;
    let prefix = if write_key { "tkw" } else { "tka" };
    let secret = format!("{prefix}_{}", hex::encode(raw));
    let id = conn
        .query_opt(
            "INSERT INTO api_keys (key_hash, role, roles, purposes, name, user_id, created_ms, expires_ms, trust)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                P::Blob(&key_hash(&secret)),
                P::Text(&spec.roles[0]),
                P::Text(&serde_json::to_string(&spec.roles).expect("serialises")),
                P::Text(&serde_json::to_string(&spec.purposes).expect("serialises")),
                P::Text(&spec.name),
                P::from(spec.user_id),
                P::Int(now_ms),
                P::from(spec.expires_ms),
                P::from(trust.map(Trust::as_str)),
            ],
        )?
        .ok_or_else(|| Error::Backend("INSERT ... RETURNING gave no row".into()))?
        .int(0)?;
    Ok((secret, KeyId(id)))
}

/// The key a secret names, unless unknown, revoked or expired. Found by the
/// secret's SHA-256, then compared in constant time.
pub fn find(conn: &mut dyn Conn, secret: &str, now_ms: i64) -> Result<Option<ApiKey>> {
    let hash = key_hash(secret);
    let Some(r) = conn.query_opt(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"),
        &[P::Blob(&hash)],
    )?
    else {
        return Ok(None);
    };
    if !ct_eq(&r.blob(9)?, &hash) {
        return Ok(None);
    }
    let mut k = key_of(&r)?;
    if k.revoked_ms.is_some() || k.expires_ms.is_some_and(|e| now_ms >= e) {
        return Ok(None);
    }
    // A staff account's keys (its sessions) hold what the account holds
    // now, not what it held at login: a change of roles or a disabled
    // account bites on live sessions at once.
    if let Some(user) = k.user_id {
        let Some(u) = conn.query_opt(
            "SELECT roles, purposes FROM users WHERE id = $1 AND disabled_ms IS NULL",
            &[P::Int(user)],
        )?
        else {
            return Ok(None);
        };
        k.roles = serde_json::from_str(&u.text(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
        k.purposes =
            serde_json::from_str(&u.text(1)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    }
    Ok(Some(k))
}

pub fn list(conn: &mut dyn Conn) -> Result<Vec<ApiKey>> {
    conn.query(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"),
        &[],
    )?
    .iter()
    .map(key_of)
    .collect()
}

pub fn revoke(conn: &mut dyn Conn, id: KeyId, now_ms: i64) -> Result<bool> {
    let revoked = conn.exec(
        "UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
        &[P::from(id), P::Int(now_ms)],
    )? == 1;
    if revoked {
        bump_epoch(conn)?;
    }
    Ok(revoked)
}

/// Revoke the key a secret names (someone holding a leaked secret may not
/// know its id): its id, or `None` when no active key has that secret.
pub fn revoke_by_secret(conn: &mut dyn Conn, secret: &str, now_ms: i64) -> Result<Option<KeyId>> {
    let hash = key_hash(secret);
    let Some(r) = conn.query_opt(
        "SELECT id, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_ms IS NULL",
        &[P::Blob(&hash)],
    )?
    else {
        return Ok(None);
    };
    if !ct_eq(&r.blob(1)?, &hash) {
        return Ok(None);
    }
    let id = KeyId(r.int(0)?);
    Ok(revoke(conn, id, now_ms)?.then_some(id))
}

/// The `meta` entry that changes whenever a key stops working before its
/// time (a revocation, a disabled account). Servers read it on every
/// request, so a revocation made by any process or node on the same store
/// bites at once, while their key caches stay valid otherwise.
const KEYS_EPOCH: &str = "keys_epoch";

/// A new random value, not a counter: two processes revoking at once need
/// no read-modify-write, and any change is all a reader looks for.
fn bump_epoch(conn: &mut dyn Conn) -> Result<()> {
    let mut v = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut v)
        .map_err(|_| Error::Crypto("random"))?;
    conn.meta_set(KEYS_EPOCH, &v)
}

/// The current revocation epoch (empty before the first revocation).
pub fn epoch(conn: &mut dyn Conn) -> Result<Vec<u8>> {
    // Through the prepared-statement cache (`meta_get` is not prepared on
    // PostgreSQL): this runs on every staff request.
    Ok(conn
        .query_opt(
            "SELECT value FROM meta WHERE key = $1",
            &[P::Text(KEYS_EPOCH)],
        )?
        .map(|r| r.blob(0))
        .transpose()?
        .unwrap_or_default())
}

/// The longest a key may be made to last: ten years. Also keeps the
/// expiry time far from overflowing.
pub const MAX_EXPIRES_IN_HOURS: u64 = 10 * 366 * 24;

/// When a key made now and lasting `hours` expires; refused (and nothing
/// made) beyond [`MAX_EXPIRES_IN_HOURS`].
pub fn expiry(now_ms: i64, hours: u64) -> Result<i64> {
    if hours > MAX_EXPIRES_IN_HOURS {
        return Err(Error::rejected(
            Code::InvalidExpiry,
            format!("`expires_in_hours` is at most {MAX_EXPIRES_IN_HOURS} (ten years)"),
        ));
    }
    // At most ~3.2e11 ms after now: no overflow for any time before 2262.
    Ok(now_ms.saturating_add(hours as i64 * 3_600_000))
}

// ------------------------------------------------------------------- users

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: i64,
    pub name: String,
    pub roles: Vec<String>,
    pub purposes: Vec<String>,
    pub created_at: String,
    pub disabled_at: Option<String>,
}

/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

fn argon2() -> argon2::Argon2<'static> {
    // Argon2id, 19 MiB, 2 passes: OWASP's recommended minimum.
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters"),
    )
}

pub fn create_user(
    conn: &mut dyn Conn,
    vault: &Vault,
    name: &str,
    password: &str,
    roles: &[String],
    purposes: &[String],
    now_ms: i64,
) -> Result<i64> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(Error::rejected(
            Code::InvalidUser,
            "a user name is 1 to 100 characters",
        ));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(Error::rejected(
            Code::WeakPassword,
            format!("a password has at least {MIN_PASSWORD} characters"),
        ));
    }
    if roles.is_empty() {
        return Err(Error::rejected(
            Code::InvalidRole,
            "a user needs at least one role",
        ));
    }
    let salt_bytes: [u8; 16] = vault.random()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| Error::Crypto("salt"))?;
    let hash = argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|_| Error::Crypto("password hashing failed"))?
        .to_string();
    let r = conn.query_opt(
        "INSERT INTO users (name, password_hash, roles, purposes, created_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        &[
            P::Text(name),
            P::Text(&hash),
            P::Text(&serde_json::to_string(roles).expect("serialises")),
            P::Text(&serde_json::to_string(purposes).expect("serialises")),
            P::Int(now_ms),
        ],
    )?;
    match r {
        Some(r) => r.int(0),
        None => Err(Error::Rejected {
            code: Code::UserExists,
            message: "a user with that name exists".into(),
        }),
    }
}

/// A fixed hash to verify against when the user does not exist, so that
/// timing does not tell who has an account.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$4bHCA8eI5qEJY3z4v6Jm+9gAyXgtVDKvl4Q8dWb9Qwo";

/// Check a password; the account's id when it is right and the account is
/// active. The same answer for an unknown user and a wrong password, and
/// the same work (a hash is always verified). Call it outside any
/// transaction: Argon2 takes tens of milliseconds on purpose, and on SQLite
/// a transaction would hold the one write lock, and ingestion, meanwhile.
pub fn check_password(conn: &mut dyn Conn, name: &str, password: &str) -> Result<Option<i64>> {
    let row = conn.query_opt(
        "SELECT id, password_hash, disabled_ms FROM users WHERE name = $1",
        &[P::Text(name)],
    )?;
    let stored = match &row {
        Some(r) => r.text(1)?,
        None => DUMMY_HASH.to_owned(),
    };
    let parsed = PasswordHash::new(&stored).map_err(|_| Error::Corrupt("password hash".into()))?;
    let ok = argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let Some(r) = row.filter(|_| ok) else {
        return Ok(None);
    };
    if r.opt_int(2)?.is_some() {
        return Ok(None);
    }
    Ok(Some(r.int(0)?))
}

/// Make a session key for an account whose password was checked, with its
/// roles (which it keeps following: see [`find`]), expiring after `ttl_ms`.
/// `None` if the account was disabled meanwhile.
pub fn start_session(
    conn: &mut dyn Conn,
    vault: &Vault,
    user_id: i64,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<Option<(String, ApiKey)>> {
    let Some(r) = conn.query_opt(
        "SELECT name, roles, purposes FROM users WHERE id = $1 AND disabled_ms IS NULL",
        &[P::Int(user_id)],
    )?
    else {
        return Ok(None);
    };
    let roles: Vec<String> =
        serde_json::from_str(&r.text(1)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let purposes: Vec<String> =
        serde_json::from_str(&r.text(2)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let spec = KeySpec {
        roles,
        purposes,
        name: format!("session of {}", r.text(0)?),
        user_id: Some(user_id),
        expires_ms: Some(now_ms + ttl_ms),
        trust: None,
    };
    let (secret, id) = create(conn, vault, &spec, now_ms)?;
    let key = ApiKey {
        id,
        roles: spec.roles,
        purposes: spec.purposes,
        name: spec.name,
        user_id: spec.user_id,
        created_ms: now_ms,
        revoked_ms: None,
        expires_ms: spec.expires_ms,
        trust: None,
    };
    Ok(Some((secret, key)))
}

pub fn users(conn: &mut dyn Conn) -> Result<Vec<User>> {
    conn.query(
        "SELECT id, name, roles, purposes, created_ms, disabled_ms FROM users ORDER BY id",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(User {
            id: r.int(0)?,
            name: r.text(1)?,
            roles: serde_json::from_str(&r.text(2)?).unwrap_or_default(),
            purposes: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
            created_at: rfc3339(r.int(4)?),
            disabled_at: r.opt_int(5)?.map(rfc3339),
        })
    })
    .collect()
}

/// Give an account other roles (and purposes); its live sessions follow at
/// once. `false` if there is no active account with that id.
pub fn set_user_roles(
    conn: &mut dyn Conn,
    id: i64,
    roles: &[String],
    purposes: &[String],
) -> Result<bool> {
    if roles.is_empty() {
        return Err(Error::rejected(
            Code::InvalidRole,
            "a user needs at least one role",
        ));
    }
    Ok(conn.exec(
        "UPDATE users SET roles = $2, purposes = $3 WHERE id = $1 AND disabled_ms IS NULL",
        &[
            P::Int(id),
            P::Text(&serde_json::to_string(roles).expect("serialises")),
            P::Text(&serde_json::to_string(purposes).expect("serialises")),
        ],
    )? == 1)
}

/// Disable an account and revoke every key it holds, at once.
pub fn disable_user(conn: &mut dyn Conn, id: i64, now_ms: i64) -> Result<bool> {
    let n = conn.exec(
        "UPDATE users SET disabled_ms = $2 WHERE id = $1 AND disabled_ms IS NULL",
        &[P::Int(id), P::Int(now_ms)],
    )?;
    if conn.exec(
        "UPDATE api_keys SET revoked_ms = $2 WHERE user_id = $1 AND revoked_ms IS NULL",
        &[P::Int(id), P::Int(now_ms)],
    )? > 0
    {
        bump_epoch(conn)?;
    }
    Ok(n == 1)
}
