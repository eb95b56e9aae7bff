//! The `tarmo` binary: a thin layer over the library crates. Configuration is
//! layered: `tarmo.toml` (in the data directory, or `--config`), then
//! `TARMO_*` environment variables, then flags.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use tarmo_core::consent::{PurposeId, PurposeSpec, SignalMap, SignalSources};
use tarmo_core::identity::IdentityConfig;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, KeyRole, Store};

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
        serve: ServeArgs,
    },
    /// Check and repair the consent ledger.
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
    /// Import data from files.
    Import {
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
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
enum KeysCommand {
    /// Make a key; its secret is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        common: Common,
        /// admin (staff API) or ingest (write key for the /v1 tracking routes).
        #[arg(long)]
        role: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a key by id, with immediate effect.
    Revoke {
        #[command(flatten)]
        common: Common,
        id: i64,
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
    /// The organisation's name in messages and pages.
    #[arg(long, env = "TARMO_ORGANISATION")]
    organisation: Option<String>,
    /// How long a confirmation link works, in hours (default 48).
    #[arg(long, env = "TARMO_CONFIRMATION_TTL_HOURS")]
    confirmation_ttl_hours: Option<u64>,
    /// The controller's contact details, for the record of processing.
    #[arg(long, env = "TARMO_CONTROLLER_CONTACT")]
    controller_contact: Option<String>,
    /// The data protection officer's contact details, for the record of processing.
    #[arg(long, env = "TARMO_DPO_CONTACT")]
    dpo_contact: Option<String>,
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
    organisation: Option<String>,
    confirmation_ttl_hours: Option<u64>,
    controller_contact: Option<String>,
    dpo_contact: Option<String>,
    /// Categories of data subjects in the record of processing (default:
    /// derived from the purposes).
    data_subject_categories: Option<Vec<String>>,
    /// The purpose catalog: `[purposes.email_marketing]` tables.
    purposes: Option<toml::Table>,
    /// What feeds each purpose from CMP strings: `[consent_signals.analytics]`
    /// tables; replaces the default mapping.
    consent_signals: Option<BTreeMap<PurposeId, SignalSources>>,
}

struct Settings {
    data_dir: PathBuf,
    database_url: Option<String>,
    identity: IdentityConfig,
    key_cache: usize,
    listen: String,
    serve: ServeArgs,
    purposes: Vec<(PurposeId, PurposeSpec, bool)>,
    consent_signals: SignalMap,
    data_subject_categories: Vec<String>,
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
        organisation: serve.organisation.or(file.organisation),
        confirmation_ttl_hours: serve.confirmation_ttl_hours.or(file.confirmation_ttl_hours),
        controller_contact: serve.controller_contact.or(file.controller_contact),
        dpo_contact: serve.dpo_contact.or(file.dpo_contact),
    };
    Ok(Settings {
        data_dir: c.data_dir.clone(),
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
    })
}

const MASTER_KEY_FILE: &str = "master.key";

fn master_key(dir: &Path) -> anyhow::Result<MasterKey> {
    if let Ok(hex) = std::env::var("TARMO_MASTER_KEY") {
        return Ok(MasterKey::from_hex(&hex)?);
    }
    let path = dir.join(MASTER_KEY_FILE);
    MasterKey::load(&path).with_context(|| {
        format!(
            "cannot read the master key {}; run `tarmo init` first or set TARMO_MASTER_KEY",
            path.display()
        )
    })
}

fn is_initialised(s: &Settings) -> bool {
    std::env::var("TARMO_MASTER_KEY").is_ok() || s.data_dir.join(MASTER_KEY_FILE).exists()
}

fn open_store(s: &Settings) -> anyhow::Result<Store> {
    let master = master_key(&s.data_dir)?;
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
    let (admin, _) = store.create_api_key(KeyRole::Admin, "first admin key")?;
    let (write, _) = store.create_api_key(KeyRole::Ingest, "first source")?;
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
            let s = settings_with(&common, listen, args)?;
            if !is_initialised(&s) {
                let keys = init(&s)?;
                print_keys(&keys, false);
            }
            serve(s)?;
        }
        Command::Keys { command } => match command {
            KeysCommand::Create {
                common,
                role,
                name,
                json,
            } => {
                let s = settings(&common, None)?;
                let role = KeyRole::parse(&role)?;
                let (secret, id) = open_store(&s)?.create_api_key(role, &name)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"key": secret, "id": id, "role": role.as_str()})
                    );
                } else {
                    println!("{secret}");
                    eprintln!(
                        "key {id} ({}) created; the secret above is shown once",
                        role.as_str()
                    );
                }
            }
            KeysCommand::List { common } => {
                let s = settings(&common, None)?;
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:>5}  {:<7}  {:<25}  {:<25}  name",
                    "id", "role", "created", "revoked"
                )?;
                for k in open_store(&s)?.api_keys()? {
                    writeln!(
                        out,
                        "{:>5}  {:<7}  {:<25}  {:<25}  {}",
                        k.id,
                        k.role,
                        tarmo_store::rfc3339(k.created_ms),
                        k.revoked_ms
                            .map(tarmo_store::rfc3339)
                            .unwrap_or_else(|| "-".into()),
                        k.name
                    )?;
                }
            }
            KeysCommand::Revoke { common, id } => {
                let s = settings(&common, None)?;
                if !open_store(&s)?.revoke_api_key(id)? {
                    bail!("no active key with id {id}");
                }
                eprintln!("key {id} revoked");
            }
        },
        Command::Ledger { command } => return ledger::run(command),
        Command::Import { command } => return import::run(command),
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
    })
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
            let mut w = tarmo_notify::SmsWebhook::new(url)?;
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
        from,
        signal,
        poll: std::time::Duration::from_secs(2),
    })
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
    let (writer, join) = store.start_writer(WriterConfig::default())?;
    let state = tarmo_server::AppState::new(
        store.clone(),
        writer.clone(),
        s.identity.clone(),
        config.clone(),
    );
    let notices = tarmo_server::notices::spawn(tarmo_server::notices::NoticeWorker {
        writer: writer.clone(),
        client: tarmo_notify::WebhookClient::default(),
        signal: state.notices.clone(),
        poll: std::time::Duration::from_secs(2),
        retry: Default::default(),
    });
    let mailer = tarmo_server::mail::spawn(mail_worker(
        &s,
        store.clone(),
        writer,
        config,
        state.outbox.clone(),
    )?);
    let backend = store.backend_name();
    rt.block_on(async move {
        tracing::info!(%addr, store = backend, "tarmo is serving");
        // Machine-readable line for scripts and tests that listen on port 0.
        println!("listening on http://{addr}");
        axum::serve(
            listener,
            tarmo_server::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown())
        .await?;
        anyhow::Ok(())
    })?;
    // The workers hold writer handles: stop them first. Then every handle
    // is gone, so the writer drains its queue and stops.
    mailer.stop();
    notices.stop();
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
