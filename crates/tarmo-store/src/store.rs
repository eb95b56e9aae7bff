//! The store as the server and the CLI see it: one backend, the vault, a pool
//! of read connections, and views that open sealed values for an authorised
//! caller.

use std::path::Path;
use std::sync::Arc;
use tarmo_core::codes::Code;

use serde::Serialize;
use serde_json::{Map, Value};
use tarmo_core::identity::Identifier;
use tarmo_core::segment::Message;

use std::collections::BTreeSet;

use tarmo_core::access::{CONTACT_TRAITS, DataKind, Grant};

use crate::conn::P;
use crate::conn::{Conn, KeyId, ProfileId, StoreCounts};
use crate::consent::{Catalog, CatalogCache};
use crate::crypto::packed;
use crate::crypto::person::{self, Duty, Sight};
use crate::keys::{ApiKey, KeySpec};
use crate::metrics::WriterMetrics;
use crate::pool::{DbHealth, PooledConn};
use crate::postgres::PostgresBackend;
use crate::resolve::{PreparedEvent, PreparedIdentifier};
use crate::sqlite::SqliteBackend;
use crate::vault::{INSTALLATION_KEYS, InstallationKeys, MasterKey, Place, Sealed, Vault};
use crate::writer::{self, WriterConfig, WriterHandle};
use crate::{Error, Result, rfc3339};

/// The SQLite file's name inside the data directory.
pub const SQLITE_FILE: &str = "tarmo.db";

pub enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

impl Backend {
    /// PostgreSQL when a URL is given, otherwise the SQLite file in `data_dir`.
    pub fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Self> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Backend::Postgres(PostgresBackend::open(url)?))
            }
            Some(url) => Err(Error::Config(format!(
                "unsupported database URL scheme in `{}`: use postgres://",
                url.split(':').next().unwrap_or("")
            ))),
            None => Ok(Backend::Sqlite(SqliteBackend::open(
                &data_dir.join(SQLITE_FILE),
            )?)),
        }
    }

    pub fn connect(&self) -> Result<Box<dyn Conn>> {
        Ok(match self {
            Backend::Sqlite(b) => Box::new(b.connect()?),
            Backend::Postgres(b) => Box::new(b.connect()?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

pub struct Store {
    backend: Arc<Backend>,
    vault: Arc<Vault>,
    pool: r2d2::Pool<crate::pool::Manager>,
    db_health: Arc<DbHealth>,
    catalog: Arc<CatalogCache>,
    pub metrics: Arc<WriterMetrics>,
    /// Which of this node's parts work (see [`crate::health`]).
    pub health: Arc<crate::health::Health>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IdentifierView {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub first_seen: String,
    /// Shown to be the person's (a server source, a confirmation link,
    /// staff); a claim from a client write key is not, and no link that
    /// opens the person's data goes to it.
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MergeView {
    /// The profile that remained.
    pub into_profile: ProfileId,
    /// The profile that was merged into it (or would have been).
    pub from_profile: ProfileId,
    /// The kind of identifier the two profiles shared.
    pub identifier_type: String,
    pub at: String,
    /// `merged`, or `refused` when the identity rules kept them apart.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProfileView {
    pub id: ProfileId,
    pub created_at: String,
    pub updated_at: String,
    pub event_count: i64,
    pub identifiers: Vec<IdentifierView>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub traits: Map<String, Value>,
    pub merges: Vec<MergeView>,
    /// The segments the person is in (a purpose-bound key sees those of its
    /// purposes only).
    pub segments: Vec<MembershipView>,
    /// Lifecycle stage and RFM scores from their orders; shown with
    /// behaviour data only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleView>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipView {
    pub id: String,
    /// When they entered.
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LifecycleView {
    /// new, active, loyal, at_risk or lapsed; absent without orders.
    pub stage: Option<String>,
    /// Recency, frequency and monetary scores, 1-5 (quintiles of the customer base).
    pub r: Option<u8>,
    pub f: Option<u8>,
    pub m: Option<u8>,
    pub orders: u64,
    pub revenue: f64,
    pub last_order_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub received_at: String,
    /// The message as it was received, batch context merged in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub message: Value,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsPage {
    pub profile_id: ProfileId,
    pub events: Vec<EventView>,
    /// Pass as `before` to read the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

const VAULT_CHECK: &str = "vault_check";

/// The store's installation keys, unwrapped with `master`. A store without
/// the record gets one: a store made before installation keys existed keeps
/// the keys its master key derives (checked against its vault canary), so
/// nothing stored changes; a new store gets random ones. Of two nodes
/// opening a new PostgreSQL store at once, the first record written wins
/// and both use it.
pub(crate) fn installation_record(conn: &mut dyn Conn) -> Result<Option<Vec<u8>>> {
    let sql = format!("SELECT value FROM {} WHERE key = $1", conn.keyring_meta());
    conn.query_opt(&sql, &[P::Text(INSTALLATION_KEYS)])?
        .map(|r| r.blob(0))
        .transpose()
}

fn installation_keys(conn: &mut dyn Conn, master: &MasterKey) -> Result<InstallationKeys> {
    if let Some(record) = installation_record(conn)? {
        return InstallationKeys::unwrap_under(master, &record);
    }
    let keys = match conn.meta_get(VAULT_CHECK)? {
        Some(sealed) => {
            let keys = InstallationKeys::derived(master);
            Vault::with_keys(&keys, 1)
                .open_system(Place::VaultCheck, &Sealed::from_db(sealed))
                .map_err(|_| Error::WrongMasterKey)?;
            keys
        }
        None => InstallationKeys::generate()?,
    };
    let record = keys.wrap_under(master)?;
    let sql = format!(
        "INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        conn.keyring_meta()
    );
    let added = conn.exec(&sql, &[P::Text(INSTALLATION_KEYS), P::Blob(&record)])?;
    if added == 1 {
        return Ok(keys);
    }
    let record = installation_record(conn)?
        .ok_or_else(|| Error::Corrupt("the installation keys record vanished".into()))?;
    InstallationKeys::unwrap_under(master, &record)
}

/// Re-wrap the installation keys of the store behind `backend` under the
/// master key `new`, in one transaction: `current` must open them
/// (`Error::WrongMasterKey` otherwise, and nothing changes). No data key,
/// blind index or MAC changes: they depend on the installation keys only.
/// Running nodes keep the unwrapped keys in memory and go on serving; each
/// needs `new` at its next start.
pub fn rotate_master(backend: &Backend, current: &MasterKey, new: &MasterKey) -> Result<()> {
    if current.same_as(new) {
        return Err(Error::rejected(
            Code::MasterKeyUnchanged,
            "the new master key is the current one",
        ));
    }
    let mut conn = backend.connect()?;
    conn.begin()?;
    let result = (|| {
        // Upgrades a store without the record first, in this transaction.
        let keys = installation_keys(&mut *conn, current)?;
        let old = installation_record(&mut *conn)?
            .ok_or_else(|| Error::Corrupt("the installation keys record vanished".into()))?;
        // Read again: the record replaced must be one `current` opens.
        drop(InstallationKeys::unwrap_under(current, &old)?);
        let record = keys.wrap_under(new)?;
        // Only over the record just opened: of two rotations at once on
        // PostgreSQL, the second finds it changed and changes nothing.
        let sql = format!(
            "UPDATE {} SET value = $2 WHERE key = $1 AND value = $3",
            conn.keyring_meta()
        );
        let n = conn.exec(
            &sql,
            &[P::Text(INSTALLATION_KEYS), P::Blob(&record), P::Blob(&old)],
        )?;
        if n != 1 {
            return Err(Error::rejected(
                Code::MasterKeyRotationConflict,
                "another rotation of the master key ran at the same time",
            ));
        }
        // The new record must open before it is committed.
        InstallationKeys::unwrap_under(new, &record)?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.commit(),
        Err(e) => {
            conn.rollback()?;
            Err(e)
        }
    }
}

/// Take out of a message what names or reaches the person, unless the
/// viewer may see it.
fn scrub(message: &mut Value, sight: &Sight) {
    let Value::Object(m) = message else { return };
    if !sight.sees(DataKind::Identifiers) {
        for k in ["userId", "anonymousId", "previousId", "groupId"] {
            m.remove(k);
        }
        if let Some(Value::Object(ctx)) = m.get_mut("context") {
            for k in ["device", "externalIds", "ip", "userAgent"] {
                ctx.remove(k);
            }
        }
    }
    // Traits ride in identify and group messages: each goes with its kind
    // (a purpose that uses contact data does not open the other traits).
    let (contact, traits) = (sight.sees(DataKind::Contact), sight.sees(DataKind::Traits));
    let keep = |t: &mut serde_json::Map<String, Value>| {
        t.retain(|k, _| {
            if CONTACT_TRAITS.contains(&k.as_str()) {
                contact
            } else {
                traits
            }
        })
    };
    if let Some(Value::Object(t)) = m.get_mut("traits") {
        keep(t);
    }
    if let Some(Value::Object(ctx)) = m.get_mut("context") {
        if let Some(Value::Object(t)) = ctx.get_mut("traits") {
            keep(t);
        }
        if !contact {
            ctx.remove("traits");
            ctx.remove("ip");
        }
    }
}

impl Store {
    /// Open a store: `master` must open its installation keys (a store
    /// without them gets them, see [`installation_keys`]), and they must
    /// open the canary sealed at creation.
    pub fn open(backend: Backend, master: &MasterKey, key_cache: usize) -> Result<Self> {
        let mut conn = backend.connect()?;
        let vault = Arc::new(Vault::with_keys(
            &installation_keys(&mut *conn, master)?,
            key_cache,
        ));
        match conn.meta_get(VAULT_CHECK)? {
            Some(sealed) => {
                vault
                    .open_system(Place::VaultCheck, &Sealed::from_db(sealed))
                    .map_err(|_| Error::WrongMasterKey)?;
            }
            None => {
                let sealed = vault.seal_system(Place::VaultCheck, b"tarmo")?;
                conn.meta_set(VAULT_CHECK, sealed.as_bytes())?;
            }
        }
        drop(conn);
        let backend = Arc::new(backend);
        let health = Arc::new(DbHealth::default());
        Ok(Self {
            pool: crate::pool::build(backend.clone(), health.clone()),
            db_health: health,
            backend,
            vault,
            catalog: Arc::new(CatalogCache::default()),
            metrics: Arc::new(WriterMetrics::default()),
            health: Arc::default(),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// A connection of the pool; `Error::Unavailable` when none can be had
    /// within the pool's checkout timeout.
    pub fn conn(&self) -> Result<PooledConn> {
        crate::pool::checkout(&self.pool, &self.db_health)
    }

    /// Whether the writer and the read pool last reached the database.
    pub fn database_ready(&self) -> bool {
        self.db_health.ready()
    }

    /// Whether the writer has a working connection: ingestion is refused
    /// at once (503) while it has none.
    pub fn writer_ready(&self) -> bool {
        self.db_health.writer_ready()
    }

    /// Ask the database now (one pooled connection, one round trip) and
    /// update what [`Store::database_ready`] says.
    pub fn probe_database(&self) -> bool {
        let ok = self.conn().and_then(|mut c| c.ping()).is_ok();
        self.db_health.set_pool(ok);
        ok && self.db_health.writer_ready()
    }

    /// Start the group-commit writer on its own connection.
    pub fn start_writer(
        &self,
        mut cfg: WriterConfig,
    ) -> Result<(WriterHandle, std::thread::JoinHandle<()>)> {
        if matches!(*self.backend, Backend::Postgres(_)) {
            // Other nodes may merge profiles: never trust a cached mapping.
            cfg.cache_capacity = None;
        }
        let backend = self.backend.clone();
        Ok(writer::spawn_reconnecting(
            self.backend.connect()?,
            writer::Reconnect {
                connect: Box::new(move || backend.connect()),
                health: self.db_health.clone(),
            },
            self.vault.clone(),
            self.catalog.clone(),
            self.metrics.clone(),
            self.health.clone(),
            cfg,
        ))
    }

    /// The purpose catalog (reloaded when another writer changed it).
    pub fn catalog(&self) -> Result<Arc<Catalog>> {
        // Most calls find it fresh and need no connection.
        if let Some(c) = self.catalog.fresh() {
            return Ok(c);
        }
        self.catalog.get(&mut *self.conn()?)
    }

    /// Forget the loaded catalog, after a change made here.
    pub fn catalog_changed(&self) {
        self.catalog.invalidate();
    }

    /// Run `f` in one transaction on a connection of the pool, for commands
    /// that run without the writer (the CLI). With a server running on the
    /// same SQLite file this waits for its write lock.
    pub fn transact_direct<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn, &Vault) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        conn.begin()?;
        match f(&mut *conn, &self.vault) {
            Ok(v) => {
                conn.commit()?;
                Ok(v)
            }
            Err(e) => {
                conn.rollback()?;
                self.vault.forget_all();
                Err(e)
            }
        }
    }

    /// Everything about a message that needs no store: blind indexes, the
    /// dedup key, the serialised body.
    pub fn prepare(&self, m: Message, source: KeyId) -> PreparedEvent {
        let identifiers = m
            .identifiers
            .into_iter()
            .map(|i| PreparedIdentifier {
                bidx: self.vault.blind_index(i.kind().as_str(), i.value()),
                kind: i.kind().clone(),
                value: i.value().to_owned(),
            })
            .collect();
        PreparedEvent {
            source: crate::conn::Source::Key(source),
            // A claim until the caller says the source is a trusted server.
            trust: tarmo_core::identity::Trust::Client,
            dedup: m
                .message_id
                .as_deref()
                .map(|id| self.vault.dedup_hash(source.0, id)),
            kind: m.kind,
            timestamp_ms: m.timestamp_ms,
            identifiers,
            traits: m.traits,
            body: packed::pack(serde_json::to_vec(&m.body).expect("JSON values serialise")),
            consent: None,
        }
    }

    /// An identifier ready for resolution: its blind index and value.
    pub fn prepare_identifier(&self, id: &Identifier) -> PreparedIdentifier {
        PreparedIdentifier {
            bidx: self.vault.blind_index(id.kind().as_str(), id.value()),
            kind: id.kind().clone(),
            value: id.value().to_owned(),
        }
    }

    pub fn find_profile(&self, id: &Identifier) -> Result<Option<ProfileId>> {
        let b = self.vault.blind_index(id.kind().as_str(), id.value());
        Ok(self.conn()?.identifiers_lookup(&[b])?.pop().flatten())
    }

    /// The profile with its identifiers, traits and merge history, as
    /// `sight` sees it: only what it may see is opened (no events counted
    /// without behaviour).
    pub fn profile_view(&self, sight: &Sight, id: ProfileId) -> Result<Option<ProfileView>> {
        let mut conn = self.conn()?;
        let Some(p) = conn.profile_get(id)? else {
            return Ok(None);
        };
        let traits = match &p.traits {
            None => Map::new(),
            Some(s) => person::traits(&mut *conn, &self.vault, sight, p.id, s)?.to_object(),
        };
        let mut identifiers = Vec::new();
        for row in conn.identifiers_of(p.id)? {
            let Some(value) = person::identifier(&mut *conn, &self.vault, sight, &row)? else {
                continue;
            };
            identifiers.push(IdentifierView {
                value,
                kind: row.kind,
                first_seen: rfc3339(row.first_seen_ms),
                verified: row.verified_ms.is_some(),
            });
        }
        let merges = conn
            .merges_of(p.id)?
            .into_iter()
            .map(|m| MergeView {
                into_profile: m.into_profile,
                from_profile: m.from_profile,
                identifier_type: m.identifier_kind,
                at: rfc3339(m.at_ms),
                outcome: if m.refused { "refused" } else { "merged" }.into(),
                reason: m.reason,
            })
            .collect();
        Ok(Some(ProfileView {
            id: p.id,
            created_at: rfc3339(p.created_ms),
            updated_at: rfc3339(p.updated_ms),
            event_count: if sight.sees(DataKind::Behaviour) {
                p.event_count
            } else {
                0
            },
            identifiers,
            traits,
            merges,
            segments: Vec::new(),
            lifecycle: None,
        }))
    }

    /// Everything held about a person, for an access or portability request.
    pub fn bundle(&self, profile: ProfileId) -> Result<Option<crate::bundle::Bundle>> {
        let Some(view) = self.profile_view(&Sight::duty(Duty::PersonsRequest), profile)? else {
            return Ok(None);
        };
        let catalog = self.catalog()?;
        let mut conn = self.conn()?;
        crate::bundle::collect(
            &mut *conn,
            &self.vault,
            &catalog,
            view.id,
            view,
            crate::now_ms(),
        )
        .map(Some)
    }

    /// The kinds of this person's data `grant` may see, or `None` when the
    /// person is not visible to it at all (a purpose-bound key sees only
    /// people whose decision for one of its purposes allows it). The one
    /// place where purpose binding is applied to reads.
    pub fn visible_kinds(
        &self,
        grant: &Grant,
        profile: ProfileId,
    ) -> Result<Option<(ProfileId, BTreeSet<DataKind>)>> {
        let mut conn = self.conn()?;
        let Some(current) = crate::doi::current_profile(&mut *conn, profile)? else {
            return Ok(None);
        };
        if !grant.bound() {
            return Ok(Some((current, grant.data.clone())));
        }
        let catalog = self.catalog()?;
        let now = crate::now_ms();
        let mut categories: Vec<String> = Vec::new();
        for purpose in &grant.purposes {
            let Some(c) = catalog.get(purpose) else {
                continue;
            };
            if let crate::consent::Subject::Known(_, st, flags) =
                crate::consent::subject_by_id(&mut *conn, current, &c.id)?
                && tarmo_core::consent::decide(&c.rule, None, st.as_ref(), flags, now).allowed
            {
                categories.extend(c.spec.data_categories.iter().map(|d| d.as_str().to_owned()));
            }
        }
        if categories.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&str> = categories.iter().map(String::as_str).collect();
        Ok(Some((current, grant.visible(&refs))))
    }

    /// A profile as `grant` may see it: only the data kinds it may see;
    /// `None` when the person is not visible to it.
    pub fn profile_view_for(&self, grant: &Grant, id: ProfileId) -> Result<Option<ProfileView>> {
        let Some((current, kinds)) = self.visible_kinds(grant, id)? else {
            return Ok(None);
        };
        self.profile_view(&Sight::granted(&kinds), current)
    }

    /// A page of events as `grant` may see it: none without `behaviour`, and
    /// identifiers and contact traits taken out of each message unless the
    /// grant sees them.
    pub fn events_page_for(
        &self,
        grant: &Grant,
        id: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Option<EventsPage>> {
        let Some((current, kinds)) = self.visible_kinds(grant, id)? else {
            return Ok(None);
        };
        self.events_page(&Sight::granted(&kinds), current, before, limit)
    }

    /// A page of the profile's events, newest first, as `sight` sees them:
    /// none without `behaviour`, and identifiers and contact traits taken
    /// out of each message unless it sees them.
    pub fn events_page(
        &self,
        sight: &Sight,
        id: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Option<EventsPage>> {
        let mut conn = self.conn()?;
        let Some(p) = conn.profile_get(id)? else {
            return Ok(None);
        };
        if !sight.sees(DataKind::Behaviour) {
            return Ok(Some(EventsPage {
                profile_id: p.id,
                events: Vec::new(),
                next_before: None,
            }));
        }
        let rows = conn.events_page(p.id, before, limit)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in rows {
            let mut message = person::open_json(
                &mut *conn,
                &self.vault,
                sight,
                r.key_owner,
                Place::EventBody,
                &r.sealed,
            )?;
            scrub(&mut message, sight);
            events.push(EventView {
                id: r.id,
                kind: r.kind,
                timestamp: rfc3339(r.timestamp_ms),
                received_at: rfc3339(r.received_ms),
                message,
            });
        }
        let next_before = if events.len() as u32 == limit {
            events.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Some(EventsPage {
            profile_id: p.id,
            events,
            next_before,
        }))
    }

    /// Make a key; the secret is returned once and stored only as a hash.
    pub fn create_api_key(&self, spec: &KeySpec) -> Result<(String, KeyId)> {
        crate::keys::create(&mut *self.conn()?, &self.vault, spec, crate::now_ms())
    }

    /// The key a secret belongs to, unless unknown, revoked or expired.
    pub fn authenticate(&self, secret: &str) -> Result<Option<ApiKey>> {
        crate::keys::find(&mut *self.conn()?, secret, crate::now_ms())
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        crate::keys::list(&mut *self.conn()?)
    }

    /// Log a staff account in: the password is checked outside any
    /// transaction (Argon2 is slow on purpose; a transaction would hold
    /// SQLite's write lock meanwhile), then the session key is written in a
    /// short one. `None` for a wrong name or password or a disabled account.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        ttl_ms: i64,
    ) -> Result<Option<(String, ApiKey)>> {
        let Some(user) = crate::keys::check_password(&mut *self.conn()?, name, password)? else {
            return Ok(None);
        };
        self.transact_direct(|c, v| crate::keys::start_session(c, v, user, ttl_ms, crate::now_ms()))
    }

    pub fn revoke_api_key(&self, id: KeyId) -> Result<bool> {
        crate::keys::revoke(&mut *self.conn()?, id, crate::now_ms())
    }

    /// Revoke the key a secret names; its id, `None` when no active key has it.
    pub fn revoke_api_key_by_secret(&self, secret: &str) -> Result<Option<KeyId>> {
        crate::keys::revoke_by_secret(&mut *self.conn()?, secret, crate::now_ms())
    }

    /// Changes whenever a key is revoked: see [`crate::keys::epoch`].
    pub fn keys_epoch(&self) -> Result<Vec<u8>> {
        crate::keys::epoch(&mut *self.conn()?)
    }

    /// [`Store::keys_epoch`] for a caller that must not wait (an async
    /// worker): on the embedded store with a connection idle, a point read
    /// of a local file (microseconds, never a wait for the network or a
    /// lock: WAL readers do not wait for the writer); else `None`, and the
    /// caller reads it from a blocking thread. A request's hop to a
    /// blocking thread and back cost more than its consent write (`perf`).
    pub fn keys_epoch_now(&self) -> Option<Result<Vec<u8>>> {
        if !matches!(*self.backend, Backend::Sqlite(_)) {
            return None;
        }
        let mut c = crate::pool::try_checkout(&self.pool)?;
        Some(crate::keys::epoch(&mut *c))
    }

    /// The purpose catalog when it is loaded and fresh (no connection
    /// needed); `None` when it must be read again ([`Store::catalog`]).
    pub fn catalog_fresh(&self) -> Option<Arc<Catalog>> {
        self.catalog.fresh()
    }

    pub fn counts(&self) -> Result<StoreCounts> {
        self.conn()?.counts()
    }

    /// Fold the SQLite WAL into the database file (no-op on PostgreSQL).
    pub fn checkpoint(&self) -> Result<()> {
        if let Backend::Sqlite(b) = &*self.backend {
            b.connect()?.checkpoint()?;
        }
        Ok(())
    }
}
