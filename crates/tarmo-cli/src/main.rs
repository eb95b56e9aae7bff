//! The `tarmo` binary: a thin layer over the library crates. Configuration is
//! layered: `tarmo.toml` (in the data directory, or `--config`), then
//! `TARMO_*` environment variables, then flags.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use tarmo_core::consent::{PurposeId, PurposeSpec, SignalMap, SignalSources};
use tarmo_core::identity::IdentityConfig;
use tarmo_store::keys::KeySpec;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store};

mod access;
mod backup;
mod demo;
mod import;
mod ledger;

#[derive(Parser)]
#[command(
    name = "tarmo",
    version,
    about = "Tarmo: a privacy-first customer data platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the store and the master key; print the first keys.
    Init {
        #[command(flatten)]
        common: Common,
        /// Print {"admin_key": ..., "write_key": ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the API (initialising an empty data directory first).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, env = "TARMO_LISTEN")]
        listen: Option<String>,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// Check and repair the consent ledger.
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
    /// Delete what has outlived its retention (see `tarmo retention run --help`).
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Import data from files.
    Import {
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// Manage API keys (roles, purposes, expiry).
    Keys {
        #[command(subcommand)]
        command: access::KeysCommand,
    },
    /// Manage staff accounts.
    Users {
        #[command(subcommand)]
        command: access::UsersCommand,
    },
    /// Check the access log.
    Audit {
        #[command(subcommand)]
        command: access::AuditCommand,
    },
    /// Make a new data directory holding a believable demo shop and serve it
    /// (see `tarmo demo --help`).
    Demo(Box<demo::DemoArgs>),
    /// Copy the store, while it serves, into a new directory (see `tarmo backup --help`).
    Backup(backup::BackupArgs),
    /// Make a new data directory from a backup, replaying the erasures made
    /// since (see `tarmo restore --help`).
    Restore(backup::RestoreArgs),
    /// Decode and encode IAB TCF v2 TC strings (`tarmo tcf --help`).
    #[command(disable_help_flag = true)]
    Tcf {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Decode and encode IAB GPP strings (`tarmo gpp --help`).
    #[command(disable_help_flag = true)]
    Gpp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Sweep now: delete events past their retention, record lapsed consent
    /// as expired, erase people nothing keeps any more. Prints counts.
    Run {
        #[command(flatten)]
        common: Common,
        /// Count what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Where the SQLite file and the master key live.
    #[arg(long, env = "TARMO_DATA_DIR", default_value = "./tarmo-data")]
    data_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite file: postgres://user@host/db
    #[arg(long, env = "TARMO_DATABASE_URL")]
    database_url: Option<String>,
    /// A tarmo.toml to read (default: DATA_DIR/tarmo.toml, if present).
    #[arg(long, env = "TARMO_CONFIG")]
    config: Option<PathBuf>,
    /// Region for phone numbers written without a country code (ISO 3166, e.g. FI).
    #[arg(long, env = "TARMO_DEFAULT_REGION")]
    default_region: Option<String>,
    /// Requests a second one key may make (default 100,000; 429 beyond).
    #[arg(long, env = "TARMO_RATE_LIMIT_PER_KEY")]
    rate_limit_per_key: Option<f64>,
    /// A command that prints the master key (64 hexadecimal characters) on
    /// its standard output, run with `sh -c`: a KMS or secrets-manager
    /// client, instead of DATA_DIR/master.key. TARMO_MASTER_KEY (the key
    /// itself) comes first when set.
    #[arg(long, env = "TARMO_MASTER_KEY_COMMAND")]
    master_key_command: Option<String>,
}

/// What `serve` needs beyond the store: where people reach it, and how it
/// sends them messages.
#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// The base URL people reach this server at, for links in messages
    /// (default: http://LISTEN). Use https in production.
    #[arg(long, env = "TARMO_PUBLIC_URL")]
    public_url: Option<String>,
    /// SMTP server for confirmation and marketing email:
    /// smtp://[user:pass@]host[:port][?tls=none|starttls|opportunistic] or smtps://...
    #[arg(long, env = "TARMO_SMTP_URL")]
    smtp_url: Option<String>,
    /// A PEM certificate to trust for the SMTP server (a private CA).
    #[arg(long, env = "TARMO_SMTP_CA")]
    smtp_ca: Option<PathBuf>,
    /// The sender of Tarmo's email: an address, with an optional name as "Name <address>".
    #[arg(long, env = "TARMO_MAIL_FROM")]
    mail_from: Option<String>,
    /// An HTTP(S) endpoint that sends SMS: Tarmo POSTs {"to", "body", "id"}.
    #[arg(long, env = "TARMO_SMS_WEBHOOK_URL")]
    sms_webhook_url: Option<String>,
    /// Bearer token for the SMS webhook.
    #[arg(long, env = "TARMO_SMS_WEBHOOK_TOKEN", hide_env_values = true)]
    sms_webhook_token: Option<String>,
    /// Bearer token the SMS provider sends to `POST /v1/sms/inbound` (replies, STOP).
    #[arg(long, env = "TARMO_SMS_INBOUND_TOKEN", hide_env_values = true)]
    sms_inbound_token: Option<String>,
    /// The organisation's name in messages and pages.
    #[arg(long, env = "TARMO_ORGANISATION")]
    organisation: Option<String>,
    /// How long a confirmation link works, in hours (default 48).
    #[arg(long, env = "TARMO_CONFIRMATION_TTL_HOURS")]
    confirmation_ttl_hours: Option<u64>,
    /// Minutes between retention sweeps (default 60; 0 turns them off).
    #[arg(long, env = "TARMO_RETENTION_INTERVAL_MINUTES")]
    retention_interval_minutes: Option<u64>,
    /// Seconds between looks at the queues (outbox, erasure notifications):
    /// a queue that grows with nothing to drain it is warned about at each
    /// look (default 60).
    #[arg(long, env = "TARMO_QUEUE_WATCH_SECONDS")]
    queue_watch_seconds: Option<u64>,
    /// Serve HTTPS: a PEM certificate chain (with --tls-key).
    #[arg(long, env = "TARMO_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "TARMO_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The controller's contact details, for the record of processing.
    #[arg(long, env = "TARMO_CONTROLLER_CONTACT")]
    controller_contact: Option<String>,
    /// The data protection officer's contact details, for the record of processing.
    #[arg(long, env = "TARMO_DPO_CONTACT")]
    dpo_contact: Option<String>,
    /// SQLite: flush the log inside every commit instead of on the flusher
    /// thread (same durability, lower throughput; for comparisons).
    #[arg(long, env = "TARMO_SYNC_IN_COMMIT")]
    sync_in_commit: bool,
    /// Let webhooks (processors' erasure webhooks, the SMS gateway) use
    /// plain http and reach private, loopback and link-local addresses.
    #[arg(long, env = "TARMO_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// This node's name among several on one PostgreSQL (default: made once
    /// and kept in DATA_DIR/node.id). A restarted node takes back the work
    /// it had claimed under this name.
    #[arg(long, env = "TARMO_NODE_ID")]
    node_id: Option<String>,
    /// How long a node's claim on queued work (a message, an erasure
    /// notification) lasts; another node takes the work over once a dead
    /// node's claim has run out (default 60).
    #[arg(long, env = "TARMO_WORK_LEASE_SECONDS")]
    work_lease_seconds: Option<u64>,
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

struct Settings {
    data_dir: PathBuf,
    master_key_command: Option<String>,
    database_url: Option<String>,
    identity: IdentityConfig,
    key_cache: usize,
    listen: String,
    serve: ServeArgs,
    purposes: Vec<(PurposeId, PurposeSpec, bool)>,
    consent_signals: SignalMap,
    data_subject_categories: Vec<String>,
    roles: tarmo_server::auth::Roles,
    limits: tarmo_server::auth::RateLimits,
    commerce: tarmo_core::segments::LifecycleConfig,
    default_timezone: tarmo_core::automations::clock::TimeZone,
    frequency_caps: tarmo_core::automations::FrequencyCaps,
}

/// Roles from `tarmo.toml`: `[roles.NAME]` with `permissions` and `data`
/// (the kinds of a person's data it sees), next to the built-in ones.
fn file_roles(t: toml::Table) -> anyhow::Result<tarmo_server::auth::Roles> {
    let mut roles = tarmo_server::auth::Roles::default();
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

fn settings(c: &Common, listen: Option<String>) -> anyhow::Result<Settings> {
    settings_with(c, listen, ServeArgs::default())
}

fn settings_with(c: &Common, listen: Option<String>, serve: ServeArgs) -> anyhow::Result<Settings> {
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
    let serve = ServeArgs {
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
            let mut l = tarmo_server::auth::RateLimits::default();
            if let Some(r) = c.rate_limit_per_key.or(file.rate_limit_per_key) {
                anyhow::ensure!(r > 0.0, "the rate limit per key must be above 0");
                l.per_key = tarmo_server::auth::Limit {
                    rate: r,
                    burst: r * 2.0,
                };
            }
            if let Some(r) = file.rate_limit_per_ip {
                anyhow::ensure!(r > 0.0, "the rate limit per address must be above 0");
                l.per_ip = tarmo_server::auth::Limit {
                    rate: r,
                    burst: r * 3.0,
                };
            }
            l
        },
    })
}

const MASTER_KEY_FILE: &str = "master.key";

fn master_key(s: &Settings) -> anyhow::Result<MasterKey> {
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
fn master_key_from_command(cmd: &str) -> anyhow::Result<MasterKey> {
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

fn is_initialised(s: &Settings) -> bool {
    std::env::var("TARMO_MASTER_KEY").is_ok()
        || s.master_key_command.is_some()
        || s.data_dir.join(MASTER_KEY_FILE).exists()
}

fn open_store(s: &Settings) -> anyhow::Result<Store> {
    let master = master_key(s)?;
    let backend = Backend::open(&s.data_dir, s.database_url.as_deref())?;
    Ok(Store::open(backend, &master, s.key_cache)?)
}

struct FirstKeys {
    admin: String,
    write: String,
}

fn init(s: &Settings) -> anyhow::Result<FirstKeys> {
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
fn apply_purposes(store: &Store, s: &Settings) -> anyhow::Result<()> {
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

fn print_keys(k: &FirstKeys, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"admin_key": k.admin, "write_key": k.write})
        );
    } else {
        println!("Tarmo is initialised. These keys are shown once; store them now.");
        println!(
            "  admin key (staff API, Authorization: Bearer): {}",
            k.admin
        );
        println!(
            "  write key (SDKs, Basic auth user name):       {}",
            k.write
        );
        println!(
            "  (a client key, for web pages and apps: identities it sends are claims;\n   for a back end: tarmo keys create --role ingest --trust server)"
        );
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TARMO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Init { common, json } => {
            let s = settings(&common, None)?;
            let keys = init(&s)?;
            print_keys(&keys, json);
        }
        Command::Serve {
            common,
            listen,
            serve: args,
        } => {
            let s = settings_with(&common, listen, *args)?;
            if !is_initialised(&s) {
                let keys = init(&s)?;
                print_keys(&keys, false);
            }
            serve(s)?;
        }
        Command::Keys { command } => return access::keys(command),
        Command::Users { command } => return access::users(command),
        Command::Audit { command } => return access::audit(command),
        Command::Ledger { command } => return ledger::run(command),
        Command::Retention {
            command: RetentionCommand::Run { common, dry_run },
        } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            let (writer, join) = store.start_writer(WriterConfig::default())?;
            let report = tarmo_store::retention::sweep(&writer, tarmo_store::now_ms(), dry_run)?;
            drop(writer);
            join.join()
                .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Import { command } => return import::run(command),
        Command::Backup(args) => backup::backup(args)?,
        Command::Demo(args) => demo::run(*args)?,
        Command::Restore(args) => backup::restore(args)?,
        Command::Tcf { args } => return Ok(codec(tarmo_tcf::cli::tcf_main, &args)),
        Command::Gpp { args } => return Ok(codec(tarmo_tcf::cli::gpp_main, &args)),
    }
    Ok(0)
}

type CodecMain = fn(&[String], &mut dyn std::io::BufRead, &mut dyn Write, &mut dyn Write) -> i32;

fn codec(main: CodecMain, args: &[String]) -> u8 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    main(args, &mut input, &mut out, &mut err).clamp(0, 255) as u8
}

fn server_config(
    s: &Settings,
    bound: std::net::SocketAddr,
) -> anyhow::Result<tarmo_server::ServerConfig> {
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
    let defaults = tarmo_server::ServerConfig::default();
    Ok(tarmo_server::ServerConfig {
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

fn webhook_targets(s: &Settings) -> tarmo_notify::WebhookTargets {
    if s.serve.allow_private_webhooks {
        tarmo_notify::WebhookTargets::Any
    } else {
        tarmo_notify::WebhookTargets::Public
    }
}

/// "Name <address>" or a bare address.
fn mailbox(raw: &str, organisation: &str) -> tarmo_notify::Mailbox {
    match raw.rsplit_once('<') {
        Some((name, rest)) => tarmo_notify::Mailbox::new(
            rest.trim_end_matches('>').trim(),
            name.trim().trim_matches('"'),
        ),
        None => tarmo_notify::Mailbox::new(raw.trim(), organisation),
    }
}

fn mail_worker(
    s: &Settings,
    store: Arc<Store>,
    writer: tarmo_store::writer::WriterHandle,
    config: tarmo_server::ServerConfig,
    signal: Arc<tarmo_server::mail::OutboxSignal>,
    claimant: tarmo_store::lease::Claimant,
) -> anyhow::Result<tarmo_server::mail::MailWorker> {
    let email: Option<Box<dyn tarmo_notify::Deliver>> = match &s.serve.smtp_url {
        None => {
            tracing::warn!(
                "no --smtp-url: confirmation and marketing email wait in the outbox until one is set"
            );
            None
        }
        Some(url) => {
            let mut cfg = tarmo_notify::SmtpConfig::parse(url)?;
            if let Some(ca) = &s.serve.smtp_ca {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                cfg = cfg.with_root_certificate(&pem)?;
            }
            Some(Box::new(tarmo_notify::SmtpMailer::new(&cfg)?))
        }
    };
    let sms: Option<Box<dyn tarmo_notify::DeliverSms>> = match &s.serve.sms_webhook_url {
        None => None,
        Some(url) => {
            let mut w = tarmo_notify::SmsWebhook::new(url, webhook_targets(s))
                .context("--sms-webhook-url")?;
            if let Some(t) = &s.serve.sms_webhook_token {
                w = w.with_bearer_token(t);
            }
            Some(Box::new(w))
        }
    };
    let from = mailbox(
        s.serve.mail_from.as_deref().unwrap_or("tarmo@localhost"),
        &config.organisation,
    );
    Ok(tarmo_server::mail::MailWorker {
        store,
        writer,
        config,
        email,
        sms,
        webhook: Some(tarmo_notify::WebhookClient::new(
            std::time::Duration::from_secs(10),
            webhook_targets(s),
        )),
        from,
        signal,
        poll: std::time::Duration::from_secs(2),
        claimant,
    })
}

/// The retention sweep, every `minutes` (0: never; `tarmo retention run`
/// then does it on demand).
struct Sweeper {
    stop: Option<std::sync::mpsc::Sender<()>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    fn stop(mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.stop.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Several nodes on one store sweep in turn: each turn, the node that takes
/// the `retention` lease sweeps, and the others skip.
fn retention_thread(
    writer: tarmo_store::writer::WriterHandle,
    minutes: Option<u64>,
    node: String,
) -> Sweeper {
    let minutes = minutes.unwrap_or(60);
    if minutes == 0 {
        return Sweeper {
            stop: None,
            stopped: Arc::default(),
            join: None,
        };
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut_short = stopped.clone();
    let health = writer.health().clone();
    let every = std::time::Duration::from_secs(minutes * 60);
    // Restarted after a backoff should a sweep panic.
    let join = tarmo_store::health::supervise(
        health,
        "retention",
        move || cut_short.load(std::sync::atomic::Ordering::SeqCst),
        move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                let me = node.clone();
                // Held until just before this node's next turn.
                let hold = every.as_millis() as i64 - 1000;
                match writer.transact_blocking(move |ctx| {
                    tarmo_store::lease::take_job(
                        ctx.conn,
                        "retention",
                        &me,
                        ctx.now_ms,
                        ctx.now_ms + hold,
                    )
                }) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("another node sweeps this turn");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "taking the retention lease failed");
                        continue;
                    }
                }
                match tarmo_store::retention::sweep(&writer, tarmo_store::now_ms(), false) {
                    Ok(r) => tracing::info!(
                        events_deleted = r.events_deleted,
                        consents_expired = r.consents_expired,
                        profiles_erased = r.profiles_erased,
                        millis = r.millis,
                        "retention sweep"
                    ),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
        },
    )
    .expect("spawn the retention thread");
    Sweeper {
        stop: Some(tx),
        stopped,
        join: Some(join),
    }
}

fn serve(s: Settings) -> anyhow::Result<()> {
    let store = Arc::new(open_store(&s)?);
    apply_purposes(&store, &s)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&s.listen))
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let addr = listener.local_addr()?;
    let config = server_config(&s, addr)?;
    if !config.public_url.starts_with("https://") {
        tracing::warn!(public_url = %config.public_url, "links in messages are not https; set --public-url to the https address people reach");
    }
    let tls = match (&s.serve.tls_cert, &s.serve.tls_key) {
        (Some(c), Some(k)) => Some(tarmo_server::tls::acceptor(c, k).map_err(anyhow::Error::msg)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let node = match &s.serve.node_id {
        Some(n) => n.clone(),
        None => tarmo_store::lease::node_id_of(&s.data_dir)
            .with_context(|| format!("keeping the node id in {}", s.data_dir.display()))?,
    };
    let claimant = tarmo_store::lease::Claimant::new(
        node.clone(),
        std::time::Duration::from_secs(s.serve.work_lease_seconds.unwrap_or(60).max(1)),
    );
    let (writer, join) = store.start_writer(WriterConfig {
        pipelined: !s.serve.sync_in_commit,
        ..WriterConfig::default()
    })?;
    let (access, access_thread) = tarmo_store::access_log::AccessLogger::spawn(writer.clone());
    let segments = tarmo_store::segments::engine::SegmentEngine::start(
        store.clone(),
        writer.clone(),
        s.commerce.clone(),
    )?;
    let segments_thread = {
        let (engine, watched) = (segments.clone(), segments.clone());
        tarmo_store::health::supervise(
            store.health.clone(),
            "segments",
            move || watched.is_stopped(),
            move || engine.run(),
        )?
    };
    let queues_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let queue_watch = tarmo_store::health::watch_queues(
        store.clone(),
        std::time::Duration::from_secs(s.serve.queue_watch_seconds.unwrap_or(60).max(1)),
        queues_stop.clone(),
    )?;
    let state = tarmo_server::AppState::new(
        store.clone(),
        writer.clone(),
        s.identity.clone(),
        config.clone(),
        access,
        segments.clone(),
    );
    let writer_for_sweeps = writer.clone();
    let notices = tarmo_server::notices::spawn(tarmo_server::notices::NoticeWorker {
        writer: writer.clone(),
        client: tarmo_notify::WebhookClient::new(
            std::time::Duration::from_secs(10),
            webhook_targets(&s),
        ),
        signal: state.notices.clone(),
        poll: std::time::Duration::from_secs(2),
        retry: Default::default(),
        claimant: claimant.clone(),
    });
    let scheduler = tarmo_server::scheduler::spawn(tarmo_server::scheduler::Scheduler {
        writer: writer.clone(),
        config: config.send_config(),
        outbox: state.outbox.clone(),
        tick: std::time::Duration::from_secs(1),
        batch: 200,
        health: store.health.clone(),
    });
    let mailer = tarmo_server::mail::spawn(mail_worker(
        &s,
        store.clone(),
        writer,
        config,
        state.outbox.clone(),
        claimant,
    )?);
    let sweeper = retention_thread(writer_for_sweeps, s.serve.retention_interval_minutes, node);
    let backend = store.backend_name();
    rt.block_on(async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, store = backend, scheme, "tarmo is serving");
        // Machine-readable line for scripts and tests that listen on port 0.
        println!("listening on {scheme}://{addr}");
        let app = tarmo_server::app(state);
        tarmo_server::serve::run(listener, tls, app, shutdown(), Default::default()).await;
        anyhow::Ok(())
    })?;
    // The access log's last counts are written once every request is done.
    access_thread.join();
    // The workers hold writer handles: stop them first. Then every handle
    // is gone, so the writer drains its queue and stops.
    segments.stop();
    let _ = segments_thread.join();
    drop(segments);
    scheduler.stop();
    mailer.stop();
    sweeper.stop();
    notices.stop();
    queues_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = queue_watch.join();
    join.join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    store.checkpoint()?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
