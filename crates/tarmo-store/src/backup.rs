//! Backups, restores, and the erasures a restore must not undo.
//!
//! A backup of the embedded store is one consistent copy of the SQLite file,
//! made while Tarmo serves (`VACUUM INTO` reads inside one read transaction:
//! the copy is the database as of one commit, without free pages), a
//! `tarmo.toml` if there is one, and `backup.json`: when it was taken, the
//! last erasure it holds, and a SHA-256 of each file. The master key is never
//! part of a backup: it is kept apart, so a stolen backup is sealed bytes.
//!
//! The people's wrapped data keys are not in the data backup either: they go
//! to a keyring backup in a directory of its own (`keyring.db`,
//! `keyring.json`), kept on a short retention, with the installation keys
//! (wrapped by the master key current when it was made): the live store keeps
//! them in a file of its own (`keyring.db` beside `tarmo.db`), copied after
//! the data so that every profile in the data copy finds its key unless it
//! was erased meanwhile. A restore takes the
//! keys from a keyring backup or from the live store; a person erased since
//! that keyring was copied has no key in it, so their values in every older
//! data backup are noise, and the restore erases what is left of them. An
//! erasure thus reaches every data backup once the keyring backups older
//! than it have expired.
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
use crate::vault::INSTALLATION_KEYS;
use crate::writer::WriterHandle;
use crate::{Error, Result};

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "backup.json";
/// The copy of the database inside a backup directory.
pub const DATABASE: &str = "tarmo.db";
/// The configuration file, copied when the data directory has one.
pub const CONFIG: &str = "tarmo.toml";
/// The keyring backup's manifest and database, in a directory of their own.
pub const KEYRING_MANIFEST: &str = "keyring.json";
pub const KEYRING: &str = "keyring.db";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// 1: this layout.
    pub format: u32,
    /// `data` (the store without its data keys) or `keyring` (only them).
    pub contents: String,
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

/// Where a restore takes the people's data keys from.
pub enum Keys<'a> {
    /// A keyring backup directory made by [`backup_sqlite`].
    Keyring(&'a Path),
    /// The live store.
    Live(&'a mut dyn Conn),
}

/// What putting the keys back did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeysRestored {
    pub keys: u64,
    /// Keys the source no longer has: their people were erased after the
    /// data backup was taken, and are erased from the restored store.
    pub missing: u64,
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

fn manifest_of(contents: &str, erasure_seq: i64, files: Vec<BackupFile>) -> Manifest {
    Manifest {
        format: 1,
        contents: contents.into(),
        tarmo_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: crate::now_ms(),
        erasure_seq,
        files,
    }
}

fn write_manifest(dir: &Path, name: &str, m: &Manifest) -> Result<()> {
    let mut f = private_file(&dir.join(name))?;
    f.write_all(&serde_json::to_vec_pretty(m).expect("a manifest serialises"))?;
    f.sync_all()?;
    sync_dir(dir)
}

fn listed(dir: &Path, name: &str) -> Result<BackupFile> {
    let (bytes, sha256) = sha256_file(&dir.join(name))?;
    Ok(BackupFile {
        name: name.into(),
        bytes,
        sha256,
    })
}

/// Back up the SQLite database `db` (and `config`, if given) into the new
/// directory `to`, and its data keys into the new directory `keyring_to`,
/// while the store keeps serving. Returns the two manifests.
pub fn backup_sqlite(
    db: &Path,
    config: Option<&Path>,
    to: &Path,
    keyring_to: &Path,
) -> Result<(Manifest, Manifest)> {
    let (a, b) = (std::path::absolute(to)?, std::path::absolute(keyring_to)?);
    if a.starts_with(&b) || b.starts_with(&a) {
        return Err(fail(
            "the keyring backup must go to a directory apart from the data backup (it is kept on a shorter retention)",
        ));
    }
    fresh_dir(to, "the backup directory", &[])?;
    fresh_dir(keyring_to, "the keyring backup directory", &[])?;
    let copy = to.join(DATABASE);
    let keyring = keyring_to.join(KEYRING);
    drop(private_file(&copy)?);
    drop(private_file(&keyring)?);
    // The data first, then the keyring: every profile in the data copy
    // has its key in the later keyring copy, unless it was erased
    // meanwhile (then its values in the copy are noise, as they should be).
    {
        let c = rusqlite::Connection::open(db)?;
        c.busy_timeout(std::time::Duration::from_secs(30))?;
        c.execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])?;
    }
    {
        let live = crate::sqlite::keyring_path(db);
        let c = rusqlite::Connection::open(&live)?;
        c.busy_timeout(std::time::Duration::from_secs(30))?;
        c.execute_batch(crate::sqlite::KEYRING_SCHEMA)?;
        c.execute("VACUUM INTO ?1", [keyring.to_string_lossy().as_ref()])?;
    }
    let erasure_seq = {
        let mut c = rusqlite::Connection::open(&copy)?;
        c.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA secure_delete = ON;")?;
        c.execute("ATTACH ?1 AS k", [keyring.to_string_lossy().as_ref()])?;
        c.execute_batch("PRAGMA k.journal_mode = DELETE;")?;
        let tx = c.transaction()?;
        // The installation keys (wrapped by the master key) go with the
        // data keys: a data backup and the master key alone open nothing,
        // not even a blind index.
        tx.execute_batch(
            "CREATE TABLE k.meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             INSERT INTO k.meta SELECT key, value FROM main.meta WHERE key = 'installation_keys';
             DELETE FROM main.meta WHERE key = 'installation_keys';",
        )?;
        // A store a release before the keyring file left unopened still
        // holds its keys in the data file: they move out of the copy.
        let old: bool = tx
            .prepare(
                "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'data_keys'",
            )?
            .exists([])?;
        if old {
            tx.execute_batch(
                "INSERT OR IGNORE INTO k.data_keys (owner_id, wrapped)
                     SELECT owner_id, wrapped FROM main.data_keys WHERE length(wrapped) > 0;
                 DROP TABLE main.data_keys;",
            )?;
        }
        tx.commit()?;
        // Zeroed pages, then a VACUUM, leave no trace of them in the copy.
        c.execute_batch("DETACH k; VACUUM;")?;
        c.query_row("SELECT coalesce(max(seq), 0) FROM erasure_log", [], |r| {
            r.get::<_, i64>(0)
        })?
    };
    std::fs::File::open(&copy)?.sync_all()?;
    std::fs::File::open(&keyring)?.sync_all()?;
    let mut files = vec![listed(to, DATABASE)?];
    if let Some(cfg) = config.filter(|p| p.exists()) {
        let dst = to.join(CONFIG);
        let mut out = private_file(&dst)?;
        out.write_all(&std::fs::read(cfg)?)?;
        out.sync_all()?;
        files.push(listed(to, CONFIG)?);
    }
    let data = manifest_of("data", erasure_seq, files);
    let keys = manifest_of("keyring", erasure_seq, vec![listed(keyring_to, KEYRING)?]);
    write_manifest(keyring_to, KEYRING_MANIFEST, &keys)?;
    write_manifest(to, MANIFEST, &data)?;
    Ok((data, keys))
}

/// Read a backup's manifest and check every file it names against its
/// hash, before anything is restored.
pub fn verify(from: &Path) -> Result<Manifest> {
    verify_as(from, MANIFEST, "data", DATABASE)
}

/// The same for a keyring backup.
pub fn verify_keyring(from: &Path) -> Result<Manifest> {
    verify_as(from, KEYRING_MANIFEST, "keyring", KEYRING)
}

fn verify_as(from: &Path, name: &str, contents: &str, main: &str) -> Result<Manifest> {
    let path = from.join(name);
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
    if m.contents != contents || !m.files.iter().any(|f| f.name == main) {
        return Err(fail(format!(
            "{} is not a {contents} backup's manifest",
            path.display()
        )));
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

/// Put the people's data keys back beside a restored copy of the embedded
/// store (the file `db`, not yet opened by a store): its keyring file is
/// made from a keyring backup or from the live store, with the keys of the
/// profiles the copy holds. Keys the source lacks stay missing: see
/// [`erase_keyless`], which must run next.
pub fn restore_keys(db: &Path, keys: Keys<'_>) -> Result<KeysRestored> {
    let kpath = crate::sqlite::keyring_path(db);
    drop(private_file(&kpath)?);
    let mut k = rusqlite::Connection::open(&kpath)?;
    k.execute_batch("PRAGMA secure_delete = ON;")?;
    k.execute_batch(crate::sqlite::KEYRING_SCHEMA)?;
    k.execute("ATTACH ?1 AS d", [db.to_string_lossy().as_ref()])?;
    match keys {
        Keys::Keyring(dir) => {
            verify_keyring(dir)?;
            k.execute(
                "ATTACH ?1 AS s",
                [dir.join(KEYRING).to_string_lossy().as_ref()],
            )?;
            let tx = k.transaction()?;
            tx.execute(
                "INSERT INTO main.data_keys (owner_id, wrapped)
                 SELECT owner_id, wrapped FROM s.data_keys
                 WHERE length(wrapped) > 0 AND owner_id IN (SELECT id FROM d.profiles)",
                [],
            )?;
            // Keyring backups made before installation keys existed have
            // no record: their store's keys derive from its master key.
            let has_meta: i64 = tx.query_row(
                "SELECT count(*) FROM s.sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )?;
            if has_meta > 0 {
                tx.execute(
                    "INSERT INTO d.meta (key, value) SELECT key, value FROM s.meta WHERE key = ?1
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [INSTALLATION_KEYS],
                )?;
            }
            tx.commit()?;
            k.execute_batch("DETACH s")?;
        }
        Keys::Live(src) => {
            let tx = k.transaction()?;
            if let Some(record) = crate::store::installation_record(&mut *src)? {
                tx.execute(
                    "INSERT INTO d.meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    rusqlite::params![INSTALLATION_KEYS, record],
                )?;
            }
            let mut after = 0i64;
            loop {
                let rows = src.data_keys_after(after, 10_000)?;
                if rows.is_empty() {
                    break;
                }
                let mut st = tx.prepare_cached(
                    "INSERT INTO main.data_keys (owner_id, wrapped) SELECT ?1, ?2
                     WHERE length(?2) > 0 AND EXISTS (SELECT 1 FROM d.profiles WHERE id = ?1)",
                )?;
                for (owner, wrapped) in &rows {
                    after = *owner;
                    st.execute(rusqlite::params![owner, wrapped])?;
                }
            }
            tx.commit()?;
        }
    }
    let count =
        |sql: &str| -> Result<u64> { Ok(k.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
    let restored = KeysRestored {
        keys: count("SELECT count(*) FROM main.data_keys")?,
        missing: count(
            "SELECT count(*) FROM d.profiles p
             WHERE NOT EXISTS (SELECT 1 FROM main.data_keys k WHERE k.owner_id = p.id)",
        )?,
    };
    k.execute_batch("DETACH d")?;
    drop(k);
    std::fs::File::open(&kpath)?.sync_all()?;
    Ok(restored)
}

/// Erase, in a restored store, everyone with a profile whose data key the
/// keyring no longer had: they were erased after the data backup was
/// taken, and their sealed values are noise. Returns how many people went.
pub fn erase_keyless(writer: &WriterHandle) -> Result<u64> {
    writer.transact_blocking(|ctx| {
        let mut holders = std::collections::BTreeSet::new();
        let mut after = 0i64;
        loop {
            let rows = ctx.conn.query(
                "SELECT id, coalesce(merged_into, id) FROM profiles WHERE id > $1 ORDER BY id LIMIT 500",
                &[P::Int(after)],
            )?;
            let Some(last) = rows.last() else { break };
            after = last.int(0)?;
            let ids: Vec<ProfileId> = rows
                .iter()
                .map(|r| r.int(0).map(ProfileId))
                .collect::<Result<_>>()?;
            for (r, key) in rows.iter().zip(ctx.conn.data_keys_get(&ids)?) {
                if key.is_none() {
                    holders.insert(r.int(1)?);
                }
            }
        }
        for &p in &holders {
            crate::erasure::erase_profile(ctx, ProfileId(p), None, false)?;
        }
        Ok(holders.len() as u64)
    })
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
        .map(|r| r.int(0).map(ProfileId))
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
                .query("SELECT 1 FROM profiles WHERE id = $1", &[P::Int(profile.0)])?
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
