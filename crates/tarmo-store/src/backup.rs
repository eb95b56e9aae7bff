//! Backups, restores, and the erasures a restore must not undo.
//!
//! A backup of the embedded store is one consistent copy of the SQLite file,
//! made while Tarmo serves (`VACUUM INTO` reads inside one read transaction:
//! the copy is the database as of one commit, without free pages), a
//! `tarmo.toml` if there is one, and `backup.json`: when it was taken, the
//! last erasure it holds, and a SHA-256 of each file. The master key is never
//! part of a backup: it is kept apart, so a stolen backup is sealed bytes.
//!
//! Erasure must reach a backup taken before it. Each erasure writes the
//! profile ids it removed to `erasure_log` (ids and a time, never a value),
//! and the suppression list keeps the erased identifiers' blind indexes. A
//! restore replays, from the live store, every erasure logged after the
//! backup's last one and copies the suppression list, so a restored store
//! never brings an erased person back. PostgreSQL is backed up with
//! `pg_dump`; the same replay then runs against the restored database.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::conn::{Conn, P, ProfileId};
use crate::writer::WriterHandle;
use crate::{Error, Result};

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "backup.json";
/// The copy of the database inside a backup directory.
pub const DATABASE: &str = "tarmo.db";
/// The configuration file, copied when the data directory has one.
pub const CONFIG: &str = "tarmo.toml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// 1: this layout.
    pub format: u32,
    /// The version of Tarmo that made it.
    pub tarmo_version: String,
    pub created_ms: i64,
    /// The highest `erasure_log` sequence number inside the copy: a restore
    /// replays every erasure after it.
    pub erasure_seq: i64,
    pub files: Vec<BackupFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// What a replay did to the restored store.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Replay {
    /// Erasures found in the live store's log after the backup's last one.
    pub erasures: u64,
    /// Of those, profiles the restored copy still held (now erased again).
    pub profiles_erased: u64,
    /// Suppression-list entries the restored copy lacked.
    pub suppressions_added: u64,
}

fn fail(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// An empty file only the owner may read, for a copy to be written into.
fn private_file(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            fail(format!("{} already exists", path.display()))
        } else {
            e.into()
        }
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A directory that does not exist yet or holds nothing but the files named
/// in `allowed`: a backup or a restore never writes over anything.
fn fresh_dir(dir: &Path, what: &str, allowed: &[&str]) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(it) => {
            let mut it = it.filter(|e| {
                e.as_ref()
                    .map_or(true, |e| !allowed.iter().any(|a| e.file_name() == **a))
            });
            if it.next().is_some() {
                return Err(fail(format!(
                    "{what} {} is not empty: choose a new directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
        }
        Err(e) => return Err(e.into()),
    }
    private_dir(dir)
}

/// The last erasure a database holds.
pub fn erasure_seq(conn: &mut dyn Conn) -> Result<i64> {
    Ok(conn
        .query("SELECT coalesce(max(seq), 0) FROM erasure_log", &[])?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

/// Back up the SQLite database `db` (and `config`, if given) into the new
/// directory `to`, while the store keeps serving.
pub fn backup_sqlite(db: &Path, config: Option<&Path>, to: &Path) -> Result<Manifest> {
    fresh_dir(to, "the backup directory", &[])?;
    let copy = to.join(DATABASE);
    drop(private_file(&copy)?);
    {
        let c = rusqlite::Connection::open(db)?;
        c.busy_timeout(std::time::Duration::from_secs(30))?;
        c.execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])?;
    }
    std::fs::File::open(&copy)?.sync_all()?;
    let erasure_seq = {
        let c = rusqlite::Connection::open_with_flags(
            &copy,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        c.query_row("SELECT coalesce(max(seq), 0) FROM erasure_log", [], |r| {
            r.get(0)
        })?
    };
    let mut files = Vec::new();
    let (bytes, sha256) = sha256_file(&copy)?;
    files.push(BackupFile {
        name: DATABASE.into(),
        bytes,
        sha256,
    });
    if let Some(cfg) = config.filter(|p| p.exists()) {
        let dst = to.join(CONFIG);
        let mut out = private_file(&dst)?;
        out.write_all(&std::fs::read(cfg)?)?;
        out.sync_all()?;
        let (bytes, sha256) = sha256_file(&dst)?;
        files.push(BackupFile {
            name: CONFIG.into(),
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: 1,
        tarmo_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: crate::now_ms(),
        erasure_seq,
        files,
    };
    let mut f = private_file(&to.join(MANIFEST))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"))?;
    f.sync_all()?;
    sync_dir(to)?;
    Ok(manifest)
}

/// Read a backup's manifest and check every file it names against its
/// hash, before anything is restored.
pub fn verify(from: &Path) -> Result<Manifest> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        fail(format!(
            "{} is not a Tarmo backup ({}: {e})",
            from.display(),
            path.display()
        ))
    })?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("{} is not a valid manifest: {e}", path.display())))?;
    if m.format != 1 {
        return Err(fail(format!(
            "backup format {} is not known to this version of Tarmo",
            m.format
        )));
    }
    if !m.files.iter().any(|f| f.name == DATABASE) {
        return Err(fail(format!("{} names no {DATABASE}", path.display())));
    }
    for f in &m.files {
        if f.name.contains('/') || f.name.contains('\\') || f.name.starts_with('.') {
            return Err(fail(format!("the manifest names an odd file `{}`", f.name)));
        }
        let (bytes, sha) = sha256_file(&from.join(&f.name))
            .map_err(|e| fail(format!("{}: {e}", from.join(&f.name).display())))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(fail(format!(
                "{} does not match its manifest: the backup is damaged",
                from.join(&f.name).display()
            )));
        }
    }
    Ok(m)
}

/// Copy a verified backup's files into the new data directory `to`, which
/// may already hold the master key (named in `keep`) and nothing else.
/// Returns the path of the restored database file.
pub fn restore_files(
    from: &Path,
    manifest: &Manifest,
    to: &Path,
    keep: &[&str],
) -> Result<PathBuf> {
    fresh_dir(to, "the data directory to restore into", keep)?;
    for f in &manifest.files {
        let dst = to.join(&f.name);
        let tmp = to.join(format!(".{}.partial", f.name));
        let mut out = private_file(&tmp)?;
        std::io::copy(&mut std::fs::File::open(from.join(&f.name))?, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
    }
    sync_dir(to)?;
    Ok(to.join(DATABASE))
}

/// Bring the erasures and suppressions of the live store (`source`) into a
/// restored one: every profile erased in the live store after the restored
/// copy's last erasure is erased again (through `writer`, the restored
/// store's), and the suppression list is completed, so that nobody erased
/// comes back and no erased identifier is recreated by later imports.
pub fn replay_erasures(
    source: &mut dyn Conn,
    target: &mut dyn Conn,
    writer: &WriterHandle,
) -> Result<Replay> {
    let after = erasure_seq(target)?;
    let logged: Vec<ProfileId> = source
        .query(
            "SELECT profile_id FROM erasure_log WHERE seq > $1 ORDER BY seq",
            &[P::Int(after)],
        )?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_>>()?;
    let mut report = Replay {
        erasures: logged.len() as u64,
        ..Default::default()
    };
    let suppressed: Vec<(Vec<u8>, String, i64)> = source
        .query("SELECT bidx, kind, at_ms FROM suppression", &[])?
        .iter()
        .map(|r| Ok((r.blob(0)?, r.text(1)?, r.int(2)?)))
        .collect::<Result<_>>()?;
    report.suppressions_added = writer.transact_blocking(move |ctx| {
        let mut added = 0;
        for (bidx, kind, at) in &suppressed {
            added += ctx.conn.exec(
                "INSERT INTO suppression (bidx, kind, at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[P::Blob(bidx), P::Text(kind), P::Int(*at)],
            )?;
        }
        Ok(added)
    })?;
    for profile in logged {
        let erased = writer.transact_blocking(move |ctx| {
            let held = !ctx
                .conn
                .query("SELECT 1 FROM profiles WHERE id = $1", &[P::Int(profile)])?
                .is_empty();
            // No request: the processors were told when the live store
            // erased the person. Logged even when the copy no longer holds
            // the profile, so the restored log goes on where the live one was.
            crate::erasure::erase_profile(ctx, profile, None, false)?;
            Ok(held)
        })?;
        report.profiles_erased += u64::from(erased);
    }
    Ok(report)
}
