//! The `tarmo` binary: a thin layer over the library crates. Configuration is
//! layered: `tarmo.toml` (in the data directory, or `--config`), then
//! `TARMO_*` environment variables, then flags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use tarmo_core::identity::IdentityConfig;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, KeyRole, Store};

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
}

struct Settings {
    data_dir: PathBuf,
    database_url: Option<String>,
    identity: IdentityConfig,
    key_cache: usize,
    listen: String,
}

fn settings(c: &Common, listen: Option<String>) -> anyhow::Result<Settings> {
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
    Ok(Settings {
        data_dir: c.data_dir.clone(),
        database_url: c.database_url.clone().or(file.database_url),
        identity,
        key_cache: file.key_cache.unwrap_or(100_000),
        listen: listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
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
    let (admin, _) = store.create_api_key(KeyRole::Admin, "first admin key")?;
    let (write, _) = store.create_api_key(KeyRole::Ingest, "first source")?;
    Ok(FirstKeys { admin, write })
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
        Command::Serve { common, listen } => {
            let s = settings(&common, listen)?;
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
    let store = Arc::new(open_store(&s)?);
    let (writer, join) = store.start_writer(WriterConfig::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = store.clone();
    rt.block_on(async move {
        let store = served;
        let listener = tokio::net::TcpListener::bind(&s.listen)
            .await
            .with_context(|| format!("cannot listen on {}", s.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, store = store.backend_name(), "tarmo is serving");
        // Machine-readable line for scripts and tests that listen on port 0.
        println!("listening on http://{addr}");
        let state = tarmo_server::AppState::new(store.clone(), writer, s.identity.clone());
        axum::serve(listener, tarmo_server::app(state))
            .with_graceful_shutdown(shutdown())
            .await?;
        anyhow::Ok(())
    })?;
    // Every request handler is gone, so the writer drains its queue and stops.
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
