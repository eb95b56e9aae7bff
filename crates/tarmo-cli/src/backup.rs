//! `tarmo backup` and `tarmo restore`: see `tarmo_store::backup`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tarmo_store::backup;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, SQLITE_FILE};

use crate::{Common, settings};

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// A new (or empty) directory for the backup: the database as of one
    /// moment, `tarmo.toml`, and `backup.json` with the files' SHA-256. The
    /// master key is not copied: keep it apart from the backups.
    #[arg(long)]
    to: PathBuf,
    /// A new (or empty) directory, apart from `--to`, for the people's
    /// data keys (`keyring.db`). Keep keyring backups on a short retention
    /// (say 30 days): once every keyring backup older than an erasure has
    /// expired, no data backup can bring the erased person back.
    #[arg(long)]
    keyring_to: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The new data directory (`--data-dir`), or with `--database-url` a
    /// PostgreSQL database already restored with `pg_restore`. Its master
    /// key is the one the backup was made with: DATA_DIR/master.key (copy
    /// it there first), TARMO_MASTER_KEY or --master-key-command.
    #[command(flatten)]
    common: Common,
    /// The backup directory made by `tarmo backup` (SQLite). Leave it out
    /// with `--database-url` to only replay erasures into a database
    /// restored with `pg_restore`.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A keyring backup directory (`tarmo backup --keyring-to`) to take the
    /// data keys from; without it they come from the live store.
    #[arg(long, requires = "from")]
    keyring: Option<PathBuf>,
    /// The live data directory, whose erasure log is replayed into the
    /// restored store: everyone erased after the backup was taken stays
    /// erased.
    #[arg(long, conflicts_with = "replay_database_url")]
    replay_from: Option<PathBuf>,
    /// The live PostgreSQL database whose erasure log is replayed.
    #[arg(long)]
    replay_database_url: Option<String>,
    /// Restore without replaying erasures, when the live store is lost. The
    /// people erased after the backup was taken come back: erase them again
    /// from your records of their requests.
    #[arg(long, conflicts_with_all = ["replay_from", "replay_database_url"])]
    no_replay: bool,
}

pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let s = settings(&a.common, None)?;
    if s.database_url.is_some() {
        bail!(
            "`tarmo backup` copies the embedded SQLite store; back up PostgreSQL with pg_dump (see the README's \"Backups\")"
        );
    }
    let db = s.data_dir.join(SQLITE_FILE);
    if !db.exists() {
        bail!(
            "{} holds no Tarmo store ({SQLITE_FILE})",
            s.data_dir.display()
        );
    }
    let config = a
        .common
        .config
        .clone()
        .unwrap_or_else(|| s.data_dir.join("tarmo.toml"));
    let (m, k) = backup::backup_sqlite(&db, Some(&config), &a.to, &a.keyring_to)
        .with_context(|| format!("backing up into {}", a.to.display()))?;
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    eprintln!(
        "backed up {} ({} files, {bytes} bytes, last erasure #{}) into {}, its data keys ({} bytes) into {}",
        s.data_dir.display(),
        m.files.len(),
        m.erasure_seq,
        a.to.display(),
        k.files.iter().map(|f| f.bytes).sum::<u64>(),
        a.keyring_to.display()
    );
    Ok(())
}

pub fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    if a.replay_from.is_none() && a.replay_database_url.is_none() && !a.no_replay {
        bail!(
            "name the live store whose erasures must not be undone (--replay-from DATA_DIR or --replay-database-url URL), or pass --no-replay if it is lost"
        );
    }
    let s = settings(&a.common, None)?;
    // Everything that can be checked before a file is written.
    let manifest = match (&a.from, &s.database_url) {
        (Some(from), None) => Some(backup::verify(from)?),
        (None, Some(_)) => None,
        (Some(_), Some(_)) => bail!(
            "--from restores a backup of the embedded store; restore PostgreSQL with pg_restore, then run `tarmo restore --database-url ...` to replay erasures"
        ),
        (None, None) => bail!("--from BACKUP_DIR is needed"),
    };
    if let Some(k) = &a.keyring {
        backup::verify_keyring(k)?;
    } else if manifest.is_some() && a.no_replay {
        bail!(
            "the backup holds no data keys: name a keyring backup (--keyring DIR) or the live store (--replay-from DATA_DIR)"
        );
    }
    let master = crate::master_key(&s)
        .context("the restored store is opened with the master key the backup was made with")?;
    let source = match (&a.replay_from, &a.replay_database_url) {
        (Some(dir), _) => {
            if !dir.join(SQLITE_FILE).exists() {
                bail!("{} holds no Tarmo store ({SQLITE_FILE})", dir.display());
            }
            if std::fs::canonicalize(dir).ok() == std::fs::canonicalize(&s.data_dir).ok() {
                bail!("--replay-from is the live store, not the directory to restore into");
            }
            Some(Backend::open(dir, None)?)
        }
        (None, Some(url)) => Some(Backend::open(&s.data_dir, Some(url))?),
        (None, None) => None,
    };

    let mut out = serde_json::Map::new();
    if let (Some(from), Some(m)) = (&a.from, &manifest) {
        let db = backup::restore_files(from, m, &s.data_dir, &[crate::MASTER_KEY_FILE])
            .with_context(|| format!("restoring into {}", s.data_dir.display()))?;
        let keys = match (&a.keyring, &source) {
            (Some(k), _) => backup::restore_keys(&db, backup::Keys::Keyring(k))?,
            (None, Some(src)) => {
                backup::restore_keys(&db, backup::Keys::Live(&mut *src.connect()?))?
            }
            (None, None) => unreachable!("a keyring or a live store was required above"),
        };
        eprintln!(
            "restored the backup of {} into {}",
            tarmo_store::rfc3339(m.created_ms),
            s.data_dir.display()
        );
        out.insert("keys".into(), serde_json::to_value(&keys)?);
    }
    let store = tarmo_store::Store::open(
        Backend::open(&s.data_dir, s.database_url.as_deref())?,
        &master,
        s.key_cache,
    )?;
    let (writer, join) = store.start_writer(WriterConfig::default())?;
    let result = (|| -> anyhow::Result<()> {
        // The log first: it goes on from the copy's last erasure.
        if let Some(source) = &source {
            let mut src = source.connect()?;
            let mut dst = store.conn()?;
            let replay = backup::replay_erasures(&mut *src, &mut *dst, &writer)
                .context("replaying erasures")?;
            out.insert("replay".into(), serde_json::to_value(&replay)?);
        }
        if manifest.is_some() {
            let n = backup::erase_keyless(&writer).context("erasing people without a key")?;
            out.insert("erased_without_key".into(), n.into());
        }
        Ok(())
    })();
    drop(writer);
    join.join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    result?;
    store.checkpoint()?;
    if source.is_none() {
        eprintln!(
            "warning: no erasure log was replayed; people erased after the keyring backup was taken are in the restored store"
        );
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
