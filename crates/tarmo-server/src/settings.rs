//! Configuration: `tarmo.toml`, then `TARMO_*` environment variables, then
//! flags, layered into one [`Settings`] (the binary parses the flags and the
//! environment; tests build [`Sources`] and [`ServeSettings`] directly), and
//! what opening a data directory takes: the master key, the store, the
//! first keys, the purpose catalog of `tarmo.toml`.
//!
//! What it must keep: flags and environment win over the file; a master
//! key is never echoed in an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use tarmo_core::consent::{PurposeId, PurposeSpec, SignalMap, SignalSources};
use tarmo_core::identity::IdentityConfig;
use tarmo_store::keys::KeySpec;
use tarmo_store::vault::MasterKey;
use tarmo_store::{Backend, Store};

/// Where the store is and how it is opened: flags and environment common to
/// every command, before `tarmo.toml` is read.
#[derive(Clone, Default)]
pub struct Sources {
    /// Where the SQLite file and the master key live.
    pub data_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite file.
    pub database_url: Option<String>,
    /// A tarmo.toml to read (default: DATA_DIR/tarmo.toml, if present).
    pub config: Option<PathBuf>,
    /// Region for phone numbers written without a country code.
    pub default_region: Option<String>,
    /// Requests a second one key may make.
    pub rate_limit_per_key: Option<f64>,
    /// A command that prints the master key.
    pub master_key_command: Option<String>,
}

/// What `serve` needs beyond the store: where people reach it, and how it
/// sends them messages. Flags and environment (`tarmo serve --help` says
/// what each is); those left `None` come from `tarmo.toml`.
#[derive(Clone, Default)]
pub struct ServeSettings {
    /// The base URL people reach this server at, for links in messages
    /// (default: http://LISTEN). Use https in production.
    pub public_url: Option<String>,
    /// SMTP server for confirmation and marketing email:
    /// smtp://[user:pass@]host[:port][?tls=none|starttls|opportunistic] or smtps://...
    pub smtp_url: Option<String>,
    /// A PEM certificate to trust for the SMTP server (a private CA).
    pub smtp_ca: Option<PathBuf>,
    /// The sender of Tarmo's email: an address, with an optional name as "Name <address>".
    pub mail_from: Option<String>,
    /// An HTTP(S) endpoint that sends SMS: Tarmo POSTs {"to", "body", "id"}.
    pub sms_webhook_url: Option<String>,
    /// Bearer token for the SMS webhook.
    pub sms_webhook_token: Option<String>,
    /// Bearer token the SMS provider sends to `POST /v1/sms/inbound` (replies, STOP).
    pub sms_inbound_token: Option<String>,
    /// The organisation's name in messages and pages.
    pub organisation: Option<String>,
    /// How long a confirmation link works, in hours (default 48).
    pub confirmation_ttl_hours: Option<u64>,
    /// Minutes between retention sweeps (default 60; 0 turns them off).
    pub retention_interval_minutes: Option<u64>,
    /// Seconds between looks at the queues (outbox, erasure notifications):
    /// a queue that grows with nothing to drain it is warned about at each
    /// look (default 60).
    pub queue_watch_seconds: Option<u64>,
    /// Serve HTTPS: a PEM certificate chain (with --tls-key).
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    pub tls_key: Option<PathBuf>,
    /// The controller's contact details, for the record of processing.
    pub controller_contact: Option<String>,
    /// The data protection officer's contact details, for the record of processing.
    pub dpo_contact: Option<String>,
    /// SQLite: flush the log inside every commit instead of on the flusher
    /// thread (same durability, lower throughput; for comparisons).
    pub sync_in_commit: bool,
    /// Let webhooks (processors' erasure webhooks, the SMS gateway) use
    /// plain http and reach private, loopback and link-local addresses.
    pub allow_private_webhooks: bool,
    /// This node's name among several on one PostgreSQL (default: made once
    /// and kept in DATA_DIR/node.id). A restarted node takes back the work
    /// it had claimed under this name.
    pub node_id: Option<String>,
    /// How long a node's claim on queued work (a message, an erasure
    /// notification) lasts; another node takes the work over once a dead
    /// node's claim has run out (default 60).
    pub work_lease_seconds: Option<u64>,
    /// SQLite: the size of the access log's journal in KiB, where a read's
    /// record is made durable before the read is answered (default 8192).
    pub access_journal_kib: Option<u64>,
}

/// `tarmo.toml`. Every key is optional; flags and environment win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    default_region: Option<String>,
    /// Custom identifier types (default: loyalty_card, social_handle).
    identifier_types: Option<Vec<String>>,
    /// Unwrapped data keys kept in memory.
    key_cache: Option<usize>,
    public_url: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    sms_webhook_url: Option<String>,
    /// Webhooks may be http and reach private networks (default false).
    allow_private_webhooks: Option<bool>,
    organisation: Option<String>,
    confirmation_ttl_hours: Option<u64>,
    retention_interval_minutes: Option<u64>,
    controller_contact: Option<String>,
    dpo_contact: Option<String>,
    /// Categories of data subjects in the record of processing (default:
    /// derived from the purposes).
    data_subject_categories: Option<Vec<String>>,
    /// The purpose catalog: `[purposes.email_marketing]` tables.
    purposes: Option<toml::Table>,
    /// Custom roles: `[roles.NAME]` tables.
    roles: Option<toml::Table>,
    /// Requests a second per key (default 100,000).
    rate_limit_per_key: Option<f64>,
    /// Requests a second per client address on the pages (default 20).
    rate_limit_per_ip: Option<f64>,
    /// What feeds each purpose from CMP strings: `[consent_signals.analytics]`
    /// tables; replaces the default mapping.
    consent_signals: Option<BTreeMap<PurposeId, SignalSources>>,
    /// Orders and lifecycle thresholds: `[commerce]`.
    commerce: Option<tarmo_core::segments::LifecycleConfig>,
    /// IANA time zone for people without a `timezone` trait and for cron
    /// schedules (default UTC).
    default_timezone: Option<String>,
    /// Marketing messages a person may get per channel across every
    /// automation and campaign: `[frequency_caps]` `per_day`, `per_week`.
    frequency_caps: Option<tarmo_core::automations::FrequencyCaps>,
}

/// Everything Tarmo runs with: `tarmo.toml`, then `TARMO_*` environment
/// variables, then flags (see [`Settings::load`]).
pub struct Settings {
    pub data_dir: PathBuf,
    pub master_key_command: Option<String>,
    pub database_url: Option<String>,
    pub identity: IdentityConfig,
    pub key_cache: usize,
    pub listen: String,
    pub serve: ServeSettings,
    pub purposes: Vec<(PurposeId, PurposeSpec, bool)>,
    pub consent_signals: SignalMap,
    pub data_subject_categories: Vec<String>,
    pub roles: crate::auth::Roles,
    pub limits: crate::auth::RateLimits,
    pub commerce: tarmo_core::segments::LifecycleConfig,
    pub default_timezone: tarmo_core::automations::clock::TimeZone,
    pub frequency_caps: tarmo_core::automations::FrequencyCaps,
}

impl Settings {
    /// Layer `tarmo.toml` (`c.config`, or DATA_DIR/tarmo.toml if present)
    /// under what the environment and flags gave (`c`, `listen`, `serve`).
    pub fn load(
        c: &Sources,
        listen: Option<String>,
        serve: ServeSettings,
    ) -> anyhow::Result<Settings> {
        let path = c
            .config
            .clone()
            .unwrap_or_else(|| c.data_dir.join("tarmo.toml"));
        let file: FileConfig = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid tarmo.toml", path.display()))?
        } else if c.config.is_some() {
            bail!("the configuration file {} does not exist", path.display());
        } else {
            FileConfig::default()
        };
        let region = c.default_region.clone().or(file.default_region);
        let kinds = file
            .identifier_types
            .unwrap_or_else(|| vec!["loyalty_card".into(), "social_handle".into()]);
        let identity = IdentityConfig::new(region.as_deref(), &kinds)?;
        let serve = ServeSettings {
            public_url: serve.public_url.or(file.public_url),
            smtp_url: serve.smtp_url.or(file.smtp_url),
            smtp_ca: serve.smtp_ca,
            mail_from: serve.mail_from.or(file.mail_from),
            sms_webhook_url: serve.sms_webhook_url.or(file.sms_webhook_url),
            sms_webhook_token: serve.sms_webhook_token,
            sms_inbound_token: serve.sms_inbound_token,
            organisation: serve.organisation.or(file.organisation),
            confirmation_ttl_hours: serve.confirmation_ttl_hours.or(file.confirmation_ttl_hours),
            retention_interval_minutes: serve
                .retention_interval_minutes
                .or(file.retention_interval_minutes),
            queue_watch_seconds: serve.queue_watch_seconds,
            tls_cert: serve.tls_cert,
            tls_key: serve.tls_key,
            controller_contact: serve.controller_contact.or(file.controller_contact),
            dpo_contact: serve.dpo_contact.or(file.dpo_contact),
            sync_in_commit: serve.sync_in_commit,
            allow_private_webhooks: serve.allow_private_webhooks
                || file.allow_private_webhooks.unwrap_or(false),
            node_id: serve.node_id,
            work_lease_seconds: serve.work_lease_seconds,
            access_journal_kib: serve.access_journal_kib,
        };
        Ok(Settings {
            data_dir: c.data_dir.clone(),
            master_key_command: c.master_key_command.clone(),
            database_url: c.database_url.clone().or(file.database_url),
            identity,
            key_cache: file.key_cache.unwrap_or(100_000),
            listen: listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            serve,
            purposes: file
                .purposes
                .map(file_purposes)
                .transpose()?
                .unwrap_or_default(),
            consent_signals: file
                .consent_signals
                .map(SignalMap::new)
                .transpose()?
                .unwrap_or_default(),
            data_subject_categories: file.data_subject_categories.unwrap_or_default(),
            commerce: {
                let c = file.commerce.unwrap_or_default();
                c.validate().map_err(anyhow::Error::msg)?;
                c
            },
            default_timezone: match &file.default_timezone {
                None => tarmo_core::automations::clock::TimeZone::UTC,
                Some(z) => tarmo_core::automations::clock::zone(z).with_context(|| {
                    format!("default_timezone `{z}` is not an IANA time zone (\"Europe/Helsinki\")")
                })?,
            },
            frequency_caps: file.frequency_caps.unwrap_or_default(),
            roles: file.roles.map(file_roles).transpose()?.unwrap_or_default(),
            limits: {
                let mut l = crate::auth::RateLimits::default();
                if let Some(r) = c.rate_limit_per_key.or(file.rate_limit_per_key) {
                    anyhow::ensure!(r > 0.0, "the rate limit per key must be above 0");
                    l.per_key = crate::auth::Limit {
                        rate: r,
                        burst: r * 2.0,
                    };
                }
                if let Some(r) = file.rate_limit_per_ip {
                    anyhow::ensure!(r > 0.0, "the rate limit per address must be above 0");
                    l.per_ip = crate::auth::Limit {
                        rate: r,
                        burst: r * 3.0,
                    };
                }
                l
            },
        })
    }
}

/// Roles from `tarmo.toml`: `[roles.NAME]` with `permissions` and `data`
/// (the kinds of a person's data it sees), next to the built-in ones.
fn file_roles(t: toml::Table) -> anyhow::Result<crate::auth::Roles> {
    let mut roles = crate::auth::Roles::default();
    for (name, v) in t {
        if !tarmo_core::access::valid_role_name(&name) {
            bail!("[roles.{name}]: a role name is lower-case letters, digits and underscores");
        }
        if tarmo_core::access::builtin_role(&name).is_some() {
            bail!("[roles.{name}]: `{name}` is a built-in role and cannot be redefined");
        }
        let role: tarmo_core::access::Role = v
            .try_into()
            .with_context(|| format!("[roles.{name}] (permissions = [...], data = [...])"))?;
        roles.0.insert(name, role);
    }
    Ok(roles)
}

/// Purposes from `tarmo.toml`: each table is a purpose definition, plus an
/// optional `requires_reconsent = true` for a material change of its notice.
fn file_purposes(t: toml::Table) -> anyhow::Result<Vec<(PurposeId, PurposeSpec, bool)>> {
    let mut out = Vec::new();
    for (id, v) in t {
        let pid = PurposeId::parse(&id).with_context(|| format!("[purposes.{id}]"))?;
        let toml::Value::Table(mut table) = v else {
            bail!("[purposes.{id}] must be a table");
        };
        let reconsent = match table.remove("requires_reconsent") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => bail!("[purposes.{id}] requires_reconsent must be true or false"),
        };
        let spec: PurposeSpec = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("[purposes.{id}]"))?;
        spec.validate()
            .with_context(|| format!("[purposes.{id}]"))?;
        out.push((pid, spec, reconsent));
    }
    Ok(out)
}

/// The master key's file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// The master key: TARMO_MASTER_KEY, the master key command, or the file.
pub fn master_key(s: &Settings) -> anyhow::Result<MasterKey> {
    if let Ok(hex) = std::env::var("TARMO_MASTER_KEY") {
        return Ok(MasterKey::from_hex(&hex)?);
    }
    if let Some(cmd) = &s.master_key_command {
        return master_key_from_command(cmd);
    }
    let path = s.data_dir.join(MASTER_KEY_FILE);
    MasterKey::load(&path).with_context(|| {
        format!(
            "cannot read the master key {}; run `tarmo init` first, or set TARMO_MASTER_KEY or --master-key-command",
            path.display()
        )
    })
}

/// The master key printed by `cmd` (a KMS or secrets-manager client). Its
/// output is the key itself, so it is never echoed in an error.
pub fn master_key_from_command(cmd: &str) -> anyhow::Result<MasterKey> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the master key command `{cmd}`"))?;
    if !out.status.success() {
        bail!("the master key command `{cmd}` failed ({})", out.status);
    }
    let text = String::from_utf8(out.stdout).map_err(|_| {
        anyhow::anyhow!("the master key command `{cmd}` printed something that is not text")
    })?;
    MasterKey::from_hex(text.trim()).with_context(|| {
        format!("the master key command `{cmd}` must print the key as 64 hexadecimal characters")
    })
}

pub fn is_initialised(s: &Settings) -> bool {
    std::env::var("TARMO_MASTER_KEY").is_ok()
        || s.master_key_command.is_some()
        || s.data_dir.join(MASTER_KEY_FILE).exists()
}

pub fn open_store(s: &Settings) -> anyhow::Result<Store> {
    let master = master_key(s)?;
    let backend = Backend::open(&s.data_dir, s.database_url.as_deref())?;
    Ok(Store::open(backend, &master, s.key_cache)?)
}

/// The keys `init` makes, shown once.
pub struct FirstKeys {
    pub admin: String,
    pub write: String,
}

pub fn init(s: &Settings) -> anyhow::Result<FirstKeys> {
    if is_initialised(s) {
        bail!(
            "{} is already initialised (it holds {MASTER_KEY_FILE}); use `tarmo keys create` for more keys",
            s.data_dir.display()
        );
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating {}", s.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let master = MasterKey::generate()?;
    master.create_file(&s.data_dir.join(MASTER_KEY_FILE))?;
    let backend = Backend::open(&s.data_dir, s.database_url.as_deref())?;
    let store = Store::open(backend, &master, s.key_cache)?;
    apply_purposes(&store, s)?;
    let (admin, _) = store.create_api_key(&KeySpec {
        roles: vec!["admin".into()],
        name: "first admin key".into(),
        ..Default::default()
    })?;
    // The first write key is the one pasted into a web page: a client key,
    // whose identifiers are claims. Back ends get theirs with
    // `tarmo keys create --role ingest --trust server`.
    let (write, _) = store.create_api_key(&KeySpec {
        roles: vec!["ingest".into()],
        name: "first source".into(),
        trust: Some(tarmo_core::identity::Trust::Client),
        ..Default::default()
    })?;
    Ok(FirstKeys { admin, write })
}

/// Bring the catalog in line with `tarmo.toml`; with no purposes there and
/// none in the store, start from the default catalog.
pub fn apply_purposes(store: &Store, s: &Settings) -> anyhow::Result<()> {
    let now = tarmo_store::now_ms();
    if s.purposes.is_empty() {
        let n = store.transact_direct(|c, _| tarmo_store::consent::seed_defaults(c, now))?;
        if n > 0 {
            tracing::info!(
                purposes = n,
                "the default purpose catalog was added; change it in tarmo.toml or with PUT /api/v1/purposes/{{id}}"
            );
        }
    }
    for (id, spec, reconsent) in &s.purposes {
        let change = store
            .transact_direct(|c, _| {
                tarmo_store::consent::upsert_purpose(c, id, spec, *reconsent, now)
            })
            .with_context(|| format!("purpose {id} in tarmo.toml"))?;
        if change.outcome != "unchanged" {
            tracing::info!(purpose = %id, outcome = change.outcome, version = change.version, "purpose from tarmo.toml");
        }
    }
    store.catalog_changed();
    let catalog = store.catalog()?;
    for (id, _) in s.consent_signals.purposes() {
        if catalog.get(id.as_str()).is_none() {
            tracing::warn!(purpose = %id, "[consent_signals] maps CMP strings to a purpose the catalog does not have; its entries are left out");
        }
    }
    Ok(())
}

/// The server's configuration once it is bound to `bound`.
pub fn server_config(
    s: &Settings,
    bound: std::net::SocketAddr,
) -> anyhow::Result<crate::ServerConfig> {
    let public_url = s
        .serve
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        bail!("--public-url must start with http:// or https://");
    }
    let defaults = crate::ServerConfig::default();
    Ok(crate::ServerConfig {
        public_url,
        token_ttl: s
            .serve
            .confirmation_ttl_hours
            .map(|h| std::time::Duration::from_secs(h * 3600))
            .unwrap_or(defaults.token_ttl),
        organisation: s
            .serve
            .organisation
            .clone()
            .unwrap_or(defaults.organisation),
        consent_signals: s.consent_signals.clone(),
        controller_contact: s.serve.controller_contact.clone(),
        dpo_contact: s.serve.dpo_contact.clone(),
        data_subject_categories: s.data_subject_categories.clone(),
        roles: s.roles.clone(),
        limits: s.limits,
        webhook_targets: webhook_targets(s),
        default_timezone: s.default_timezone.clone(),
        frequency_caps: s.frequency_caps,
        sms_inbound_token: s.serve.sms_inbound_token.clone(),
    })
}

/// What webhooks may point at (`allow_private_webhooks`).
pub fn webhook_targets(s: &Settings) -> tarmo_notify::WebhookTargets {
    if s.serve.allow_private_webhooks {
        tarmo_notify::WebhookTargets::Any
    } else {
        tarmo_notify::WebhookTargets::Public
    }
}

/// "Name <address>" or a bare address.
pub(crate) fn mailbox(raw: &str, organisation: &str) -> tarmo_notify::Mailbox {
    match raw.rsplit_once('<') {
        Some((name, rest)) => tarmo_notify::Mailbox::new(
            rest.trim_end_matches('>').trim(),
            name.trim().trim_matches('"'),
        ),
        None => tarmo_notify::Mailbox::new(raw.trim(), organisation),
    }
}
