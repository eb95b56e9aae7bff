//! `tarmo keys`, `tarmo users` and `tarmo audit`: who may see what.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use tarmo_store::keys::KeySpec;
use tarmo_store::vault::MasterKey;

use crate::{Common, Settings, open_store, settings};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key; its secret is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        common: Common,
        /// A role: admin, dpo, marketer, support, analyst, ingest, or one
        /// configured in tarmo.toml. Repeat for several.
        #[arg(long, required = true)]
        role: Vec<String>,
        /// Bind the key to a purpose: it then sees only people whose
        /// decision for it allows it, and only the data it uses. Repeat for several.
        #[arg(long)]
        purpose: Vec<String>,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// The key stops working after this many hours.
        #[arg(long)]
        expires_in_hours: Option<u64>,
        /// A write key's trust level: `client` (the default: a key shipped
        /// in a web page or an app, whose identifiers are claims) or
        /// `server` (a back end, a till, a CRM: its identifiers are verified
        /// and may merge known people).
        #[arg(long, value_parser = ["client", "server"])]
        trust: Option<String>,
        /// Print {"key": ..., "id": ..., "roles": [...], "purposes": [...], "trust": ...}.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a key, with immediate effect (also in a running server on the
    /// same store): by its id, or by its secret (`-` reads the secret from
    /// standard input, which keeps it out of the shell's history).
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The key's id (`tarmo keys list`), its secret, or `-`.
        key: String,
    },
    /// Re-wrap the installation keys under a new master key, in one
    /// transaction, while Tarmo serves. No data key, blind index or MAC is
    /// rewritten. Running nodes go on with the keys they hold; each needs the
    /// new master key at its next start. The current key comes from where
    /// it always does (DATA_DIR/master.key, TARMO_MASTER_KEY or
    /// --master-key-command).
    #[command(name = "rotate-master")]
    RotateMaster {
        #[command(flatten)]
        common: Common,
        /// A file holding the new master key (64 hexadecimal characters,
        /// mode 0600); with --generate, a new file to generate it into.
        #[arg(
            long,
            required_unless_present = "new_master_key_command",
            conflicts_with = "new_master_key_command"
        )]
        new_master_key_file: Option<PathBuf>,
        /// Generate the new master key into --new-master-key-file (which
        /// must not exist yet).
        #[arg(long, requires = "new_master_key_file")]
        generate: bool,
        /// A command printing the new master key (a KMS or secrets-manager
        /// client), run with `sh -c`.
        #[arg(long)]
        new_master_key_command: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Make a staff account; the password is read from standard input
    /// (at least 12 characters) and stored as an Argon2id hash.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        /// Repeat for several roles.
        #[arg(long, required = true)]
        role: Vec<String>,
        #[arg(long)]
        purpose: Vec<String>,
    },
    /// List staff accounts.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Give an account other roles (and purposes); its live sessions
    /// follow at once (within a second in a running server).
    Roles {
        #[command(flatten)]
        common: Common,
        id: i64,
        /// Repeat for several roles.
        #[arg(long, required = true)]
        role: Vec<String>,
        #[arg(long)]
        purpose: Vec<String>,
    },
    /// Disable an account and revoke its keys at once.
    Disable {
        #[command(flatten)]
        common: Common,
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the access log's hash chain and signed head; exit 1 naming the
    /// first broken record.
    Verify {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
}

fn check_roles_and_purposes(
    s: &Settings,
    store: &tarmo_store::Store,
    roles: &[String],
    purposes: &[String],
) -> anyhow::Result<()> {
    for r in roles {
        if !s.roles.0.contains_key(r) {
            let mut known: Vec<&String> = s.roles.0.keys().collect();
            known.sort();
            bail!(
                "unknown role `{r}` (known: {})",
                known
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let catalog = store.catalog()?;
    for p in purposes {
        catalog.require(p)?;
    }
    Ok(())
}

pub fn keys(cmd: KeysCommand) -> anyhow::Result<u8> {
    match cmd {
        KeysCommand::Create {
            common,
            role,
            purpose,
            name,
            expires_in_hours,
            trust,
            json,
        } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            check_roles_and_purposes(&s, &store, &role, &purpose)?;
            let spec = KeySpec {
                roles: role.clone(),
                purposes: purpose.clone(),
                name,
                user_id: None,
                expires_ms: expires_in_hours
                    .map(|h| tarmo_store::keys::expiry(tarmo_store::now_ms(), h))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("invalid_expiry: {e}"))?,
                trust: trust
                    .as_deref()
                    .and_then(tarmo_core::identity::Trust::parse),
            };
            let (secret, id) = store.create_api_key(&spec)?;
            let trust = role
                .iter()
                .all(|r| r == "ingest")
                .then(|| trust.unwrap_or_else(|| "client".into()));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key": secret, "id": id, "roles": role, "purposes": purpose, "trust": trust})
                );
            } else {
                println!("{secret}");
                eprintln!(
                    "key {id} ({}) created; the secret above is shown once",
                    role.join(", ")
                );
            }
        }
        KeysCommand::List { common } => {
            let s = settings(&common, None)?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:>5}  {:<20}  {:<20}  {:<6}  {:<25}  {:<25}  name",
                "id", "roles", "purposes", "trust", "created", "revoked / expires"
            )?;
            for k in open_store(&s)?.api_keys()? {
                let end = match (k.revoked_ms, k.expires_ms) {
                    (Some(r), _) => format!("revoked {}", tarmo_store::rfc3339(r)),
                    (None, Some(e)) => format!("expires {}", tarmo_store::rfc3339(e)),
                    _ => "-".into(),
                };
                writeln!(
                    out,
                    "{:>5}  {:<20}  {:<20}  {:<6}  {:<25}  {:<25}  {}",
                    k.id,
                    k.roles.join(","),
                    if k.purposes.is_empty() {
                        "-".into()
                    } else {
                        k.purposes.join(",")
                    },
                    k.trust.map_or("-", |t| t.as_str()),
                    tarmo_store::rfc3339(k.created_ms),
                    end,
                    k.name
                )?;
            }
        }
        KeysCommand::RotateMaster {
            common,
            new_master_key_file,
            generate,
            new_master_key_command,
        } => rotate_master(
            &common,
            new_master_key_file.as_deref(),
            generate,
            new_master_key_command.as_deref(),
        )?,
        KeysCommand::Revoke { common, key } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            if let Ok(id) = key.parse::<tarmo_core::ids::KeyId>() {
                if !store.revoke_api_key(id)? {
                    bail!("key_not_found: no active key with id {id}");
                }
                eprintln!("key {id} revoked");
            } else {
                let secret = if key == "-" {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim().to_owned()
                } else {
                    key
                };
                match store.revoke_api_key_by_secret(&secret)? {
                    Some(id) => eprintln!("key {id} revoked"),
                    None => bail!("key_not_found: no active key has that secret"),
                }
            }
        }
    }
    Ok(0)
}

fn rotate_master(
    common: &Common,
    file: Option<&Path>,
    generate: bool,
    command: Option<&str>,
) -> anyhow::Result<()> {
    let s = settings(common, None)?;
    let current = crate::master_key(&s)?;
    let backend = tarmo_store::Backend::open(&s.data_dir, s.database_url.as_deref())?;
    let new = match (file, command) {
        (Some(f), _) if generate => {
            let k = MasterKey::generate()?;
            k.create_file(f).map_err(|e| {
                anyhow::anyhow!("cannot create the new master key file {}: {e}", f.display())
            })?;
            k
        }
        (Some(f), _) => MasterKey::load(f)
            .with_context(|| format!("reading the new master key {}", f.display()))?,
        (None, Some(cmd)) => crate::master_key_from_command(cmd)?,
        (None, None) => {
            bail!("name the new master key: --new-master-key-file or --new-master-key-command")
        }
    };
    if let Err(e) = tarmo_store::rotate_master(&backend, &current, &new) {
        if let (true, Some(f)) = (generate, file) {
            // Never used: a key nothing is wrapped under.
            let _ = std::fs::remove_file(f);
        }
        match e {
            tarmo_store::Error::WrongMasterKey => bail!(
                "master_key_mismatch: the current master key ({}) does not open this store's installation keys; nothing was changed",
                current_source(&s)
            ),
            tarmo_store::Error::Rejected { code, message, .. } => {
                bail!("{code}: {message}; nothing was changed")
            }
            e => return Err(e).context("rotating the master key; nothing was changed"),
        }
    }
    println!(
        "{}",
        serde_json::json!({"rotated": true, "installation_keys": "re-wrapped", "data_keys_rewritten": 0})
    );
    let where_ = match (file, command) {
        (Some(f), _) => format!(
            "put {} where the current key was read from ({})",
            f.display(),
            current_source(&s)
        ),
        _ => format!(
            "make the new key the one each node reads ({})",
            current_source(&s)
        ),
    };
    eprintln!(
        "the master key is rotated. Running nodes go on serving; before any node's next start, {where_}. The old key no longer opens this store (keep it only as long as keyring backups made before now)."
    );
    Ok(())
}

fn current_source(s: &Settings) -> String {
    if std::env::var("TARMO_MASTER_KEY").is_ok() {
        "TARMO_MASTER_KEY".into()
    } else if let Some(c) = &s.master_key_command {
        format!("the secret behind --master-key-command `{c}`")
    } else {
        s.data_dir
            .join(crate::MASTER_KEY_FILE)
            .display()
            .to_string()
    }
}

pub fn users(cmd: UsersCommand) -> anyhow::Result<u8> {
    match cmd {
        UsersCommand::Create {
            common,
            name,
            role,
            purpose,
        } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            check_roles_and_purposes(&s, &store, &role, &purpose)?;
            if std::io::stdin().is_terminal() {
                eprint!(
                    "password (at least {} characters): ",
                    tarmo_store::keys::MIN_PASSWORD
                );
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            let id = store.transact_direct(|c, v| {
                tarmo_store::keys::create_user(
                    c,
                    v,
                    &name,
                    password,
                    &role,
                    &purpose,
                    tarmo_store::now_ms(),
                )
            })?;
            println!(
                "{}",
                serde_json::json!({"id": id, "name": name, "roles": role})
            );
        }
        UsersCommand::List { common } => {
            let s = settings(&common, None)?;
            let users = tarmo_store::keys::users(&mut *open_store(&s)?.conn()?)?;
            println!("{}", serde_json::to_string_pretty(&users)?);
        }
        UsersCommand::Roles {
            common,
            id,
            role,
            purpose,
        } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            check_roles_and_purposes(&s, &store, &role, &purpose)?;
            if !store
                .transact_direct(|c, _| tarmo_store::keys::set_user_roles(c, id, &role, &purpose))?
            {
                bail!("no active user with id {id}");
            }
            println!(
                "{}",
                serde_json::json!({"id": id, "roles": role, "purposes": purpose})
            );
        }
        UsersCommand::Disable { common, id } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            if !store.transact_direct(|c, _| {
                tarmo_store::keys::disable_user(c, id, tarmo_store::now_ms())
            })? {
                bail!("no active user with id {id}");
            }
            eprintln!("user {id} disabled; their keys are revoked");
        }
    }
    Ok(0)
}

pub fn audit(cmd: AuditCommand) -> anyhow::Result<u8> {
    let AuditCommand::Verify { common, json } = cmd;
    let s = settings(&common, None)?;
    let store = open_store(&s)?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !json;
    let report = tarmo_store::access_log::verify(&mut *store.conn()?, store.vault(), &mut |n| {
        if tty {
            eprint!("\rverified {n} records");
        }
    })?;
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = report.first_broken.is_none();
    let waiting = tarmo_store::access_log::waiting_in_journal(
        &mut *store.conn()?,
        &s.data_dir.join(tarmo_store::access_log::JOURNAL_FILE),
    )?;
    if waiting > 0 && !json {
        eprintln!(
            "{waiting} records wait in the access journal (a server stopped before it copied them); they join the log when the server starts"
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": ok, "records": report.entries, "first_broken": report.first_broken, "seconds": secs, "waiting_in_journal": waiting})
        );
    } else {
        match &report.first_broken {
            None => println!(
                "access log intact: {} records verified in {secs:.2} s",
                report.entries
            ),
            Some(b) => println!(
                "access log BROKEN at record {}: {} ({} records verified before it)",
                b.seq, b.problem, report.entries
            ),
        }
    }
    Ok(if ok { 0 } else { 1 })
}
