//! The `tarmo` binary: a thin layer over the library crates. It parses flags
//! and `TARMO_*` environment variables; `tarmo_server::settings` layers them
//! over `tarmo.toml` (in the data directory, or `--config`), and
//! `tarmo_server::startup::Application` is what `tarmo serve` runs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tarmo_server::settings::{
    FirstKeys, MASTER_KEY_FILE, ServeSettings, Settings, Sources, init, is_initialised, master_key,
    master_key_from_command, open_store,
};
use tarmo_server::startup::Application;
use tarmo_store::writer::WriterConfig;

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

impl Common {
    fn sources(&self) -> Sources {
        Sources {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            config: self.config.clone(),
            default_region: self.default_region.clone(),
            rate_limit_per_key: self.rate_limit_per_key,
            master_key_command: self.master_key_command.clone(),
        }
    }
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
    /// SQLite: the size of the access log's journal, in KiB, where the
    /// record of a read is made durable before the read is answered; the
    /// space is written once when the journal is made (default 8192).
    #[arg(long, env = "TARMO_ACCESS_JOURNAL_KIB", value_parser = clap::value_parser!(u64).range(4..=1_048_576))]
    access_journal_kib: Option<u64>,
}

impl From<ServeArgs> for ServeSettings {
    fn from(a: ServeArgs) -> Self {
        Self {
            public_url: a.public_url,
            smtp_url: a.smtp_url,
            smtp_ca: a.smtp_ca,
            mail_from: a.mail_from,
            sms_webhook_url: a.sms_webhook_url,
            sms_webhook_token: a.sms_webhook_token,
            sms_inbound_token: a.sms_inbound_token,
            organisation: a.organisation,
            confirmation_ttl_hours: a.confirmation_ttl_hours,
            retention_interval_minutes: a.retention_interval_minutes,
            queue_watch_seconds: a.queue_watch_seconds,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            controller_contact: a.controller_contact,
            dpo_contact: a.dpo_contact,
            sync_in_commit: a.sync_in_commit,
            allow_private_webhooks: a.allow_private_webhooks,
            node_id: a.node_id,
            work_lease_seconds: a.work_lease_seconds,
            access_journal_kib: a.access_journal_kib,
        }
    }
}

fn settings(c: &Common, listen: Option<String>) -> anyhow::Result<Settings> {
    settings_with(c, listen, ServeArgs::default())
}

fn settings_with(c: &Common, listen: Option<String>, serve: ServeArgs) -> anyhow::Result<Settings> {
    Settings::load(&c.sources(), listen, serve.into())
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

/// mimalloc, not the C library's allocator: parsing a 10M-line import
/// spent 30 % of its time in glibc's malloc and free (blocks allocated on
/// one thread and freed on another), and was a third faster with it
/// (BENCHMARKS.md, "the allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn serve(s: Settings) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let app = Application::build(s)?;
    // Machine-readable line for scripts and tests that listen on port 0.
    println!("listening on {}://{}", app.scheme(), app.address());
    rt.block_on(app.run_until_stopped(shutdown()))
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
