//! The master key rotated while Tarmo serves (SQLite and PostgreSQL): the
//! serving node goes on, a restart needs the new key and finds everything,
//! the old key is refused with a clear message, a wrong current key changes
//! nothing; and a store made before installation keys existed upgrades in
//! place, its blind indexes, ledger and access log intact.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tarmo_store::vault::{INSTALLATION_KEYS, MasterKey, Place, Vault};

use crate::common::*;
use crate::pg_faults::init_pg;

fn tarmo(args: &[&str], data: &Path, url: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).arg("--data-dir").arg(data);
    if let Some(u) = url {
        c.args(["--database-url", u]);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("TARMO_LOG", "warn").output().unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn failed(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should have failed: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

fn ingest(s: &Server, body: Value) {
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(&s.write)),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn subscribe(s: &Server, email: &str) {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/subscriptions",
        Some(&json!({"email": email, "purposes": ["email_marketing"], "source": "form"})),
    );
    assert_eq!(st, 202, "{v}");
}

/// The person's city, read through the API (an audited read).
fn city(s: &Server, email: &str) -> String {
    let (st, v) = admin(
        s,
        "GET",
        &format!("/api/v1/profiles/lookup?type=email&value={email}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["traits"]["city"].as_str().unwrap_or_default().to_owned()
}

/// Ledger and access log both verify.
fn verified(data: &Path, url: Option<&str>) {
    let l = ok(&tarmo(&["ledger", "verify", "--json"], data, url, &[]));
    assert_eq!(l["ok"], true, "{l}");
    assert!(l["entries"].as_u64().unwrap() >= 1, "{l}");
    let a = ok(&tarmo(&["audit", "verify", "--json"], data, url, &[]));
    assert_eq!(a["ok"], true, "{a}");
    // A read just before the server was killed may still wait in the
    // access journal: it joins the log at the next start.
    let journaled = a["waiting_in_journal"].as_u64().unwrap_or(0);
    assert!(a["records"].as_u64().unwrap() + journaled >= 1, "{a}");
}

/// `tarmo serve` that must refuse to start: its stderr.
fn refused_to_serve(data: &Path, url: Option<&str>) -> String {
    let mut c = Command::new(BIN);
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("TARMO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(u) = url {
        c.args(["--database-url", u]);
    }
    let mut child = c.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!st.success());
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("tarmo serve started with the old master key");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rotation_while_serving(url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (a, w) = match url {
        Some(u) => init_pg(&data, u),
        None => init(&data),
    };
    let extra: Vec<String> = url
        .map(|u| vec!["--database-url".into(), u.into()])
        .unwrap_or_default();
    let s = trusted(start_with(&data, &a, &w, &extra));
    ingest(
        &s,
        json!({"batch": [{"type": "identify", "userId": "r-1", "traits": {"email": "before@example.fi", "city": "Kuopio"}}]}),
    );
    subscribe(&s, "before@example.fi");
    assert_eq!(city(&s, "before@example.fi"), "Kuopio");

    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    // A backup before the rotation (SQLite): its keyring holds the
    // installation keys wrapped by the old master key.
    let old_key = secrets.join("old.key");
    std::fs::copy(data.join("master.key"), &old_key).unwrap();
    let (b0, k0) = (tmp.path().join("b0"), tmp.path().join("k0"));
    if url.is_none() {
        ok(&tarmo(
            &[
                "backup",
                "--to",
                b0.to_str().unwrap(),
                "--keyring-to",
                k0.to_str().unwrap(),
            ],
            &data,
            None,
            &[],
        ));
    }
    let new_key = secrets.join("new.key");
    let new = new_key.to_str().unwrap();
    // A wrong current key: refused with its code, nothing written, not even
    // the new key file.
    let wrong = MasterKey::generate().unwrap().to_hex();
    failed(
        &tarmo(
            &[
                "keys",
                "rotate-master",
                "--new-master-key-file",
                new,
                "--generate",
            ],
            &data,
            url,
            &[("TARMO_MASTER_KEY", &wrong)],
        ),
        "master_key_mismatch",
    );
    assert!(!new_key.exists());
    // The current key as the new one: refused with its code.
    let current = data.join("master.key");
    failed(
        &tarmo(
            &[
                "keys",
                "rotate-master",
                "--new-master-key-file",
                current.to_str().unwrap(),
            ],
            &data,
            url,
            &[],
        ),
        "master_key_unchanged",
    );

    // Rotate while the server serves.
    let r = ok(&tarmo(
        &[
            "keys",
            "rotate-master",
            "--new-master-key-file",
            new,
            "--generate",
        ],
        &data,
        url,
        &[],
    ));
    assert_eq!(r["rotated"], true, "{r}");
    assert_eq!(r["data_keys_rewritten"], 0, "{r}");
    // A generated key file is never written over.
    failed(
        &tarmo(
            &[
                "keys",
                "rotate-master",
                "--new-master-key-file",
                new,
                "--generate",
            ],
            &data,
            url,
            &[(
                "TARMO_MASTER_KEY",
                &std::fs::read_to_string(&new_key).unwrap(),
            )],
        ),
        "exists",
    );
    // The serving node goes on: writes, reads, consent.
    ingest(
        &s,
        json!({"batch": [{"type": "identify", "userId": "r-2", "traits": {"email": "after@example.fi", "city": "Kemi"}}]}),
    );
    subscribe(&s, "after@example.fi");
    assert_eq!(city(&s, "before@example.fi"), "Kuopio");
    assert_eq!(city(&s, "after@example.fi"), "Kemi");
    drop(s);

    // The old key: refused with a clear message.
    let err = refused_to_serve(&data, url);
    assert!(err.contains("master_key_mismatch"), "{err}");
    assert!(err.contains("rotate-master"), "{err}");
    failed(
        &tarmo(&["ledger", "verify"], &data, url, &[]),
        "master_key_mismatch",
    );

    // The new key: everything is there.
    std::fs::rename(&new_key, data.join("master.key")).unwrap();
    let s = start_with(&data, &a, &w, &extra);
    assert_eq!(city(&s, "before@example.fi"), "Kuopio");
    assert_eq!(city(&s, "after@example.fi"), "Kemi");
    drop(s);
    verified(&data, url);
    if url.is_some() {
        return;
    }
    // Restoring the backup made before the rotation: its keyring backup
    // opens with the master key of its time only; with the keys from the
    // live store, the new key opens it.
    let restore = |dir: &str, key: &Path, keys: &[&str]| {
        let cmd = format!("cat '{}'", key.display());
        let mut args = vec!["restore", "--from", b0.to_str().unwrap()];
        args.extend_from_slice(keys);
        tarmo(
            &args,
            &tmp.path().join(dir),
            None,
            &[("TARMO_MASTER_KEY_COMMAND", cmd.as_str())],
        )
    };
    let k0s = k0.to_str().unwrap();
    let live = data.to_str().unwrap();
    let current = data.join("master.key");
    failed(
        &restore("r1", &current, &["--keyring", k0s, "--no-replay"]),
        "master_key_mismatch",
    );
    let r = ok(&restore(
        "r2",
        &old_key,
        &["--keyring", k0s, "--replay-from", live],
    ));
    assert_eq!(r["keys"]["missing"], 0, "{r}");
    let r = ok(&restore("r3", &current, &["--replay-from", live]));
    assert_eq!(r["keys"]["missing"], 0, "{r}");
    let cmd = format!("cat '{}'", current.display());
    let l = ok(&tarmo(
        &["ledger", "verify", "--json"],
        &tmp.path().join("r3"),
        None,
        &[("TARMO_MASTER_KEY_COMMAND", cmd.as_str())],
    ));
    assert_eq!(l["ok"], true, "{l}");
}

#[test]
fn the_master_key_rotates_while_serving_on_sqlite() {
    rotation_while_serving(None);
}

#[test]
fn the_master_key_rotates_while_serving_on_postgresql() {
    let db = PgDb::new("rotate");
    rotation_while_serving(Some(&db.url()));
}

struct PgDb(String);

impl PgDb {
    fn new(tag: &str) -> Self {
        let name = format!("tarmo_it_{tag}_{}", std::process::id());
        let mut c = postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)
            .expect("PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth)");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Self(name)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1/{}", self.0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) =
            postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
        }
    }
}

fn new_key(data: &Path, roles: &str, trust: Option<&str>) -> String {
    let mut args = vec!["keys", "create", "--json", "--role", roles];
    if let Some(t) = trust {
        args.extend(["--trust", t]);
    }
    let v = ok(&tarmo(&args, data, None, &[]));
    v["key"].as_str().unwrap().to_owned()
}

#[test]
fn a_store_made_before_installation_keys_upgrades_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // What the old `tarmo init` left: a master key, and a store whose
    // canary is sealed with the keys the master key derives.
    let master = MasterKey::generate().unwrap();
    master.create_file(&data.join("master.key")).unwrap();
    let old = Vault::new(&master, 1);
    tarmo_store::Backend::open(&data, None)
        .unwrap()
        .connect()
        .unwrap()
        .meta_set(
            "vault_check",
            old.seal_system(Place::VaultCheck, b"tarmo")
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
    let a = new_key(&data, "admin", None);
    let w = new_key(&data, "ingest", Some("server"));
    let s = start(&data, &a, &w);
    ingest(
        &s,
        json!({"batch": [{"type": "identify", "userId": "l-1", "traits": {"email": "old@example.fi", "city": "Pori"}}]}),
    );
    subscribe(&s, "old@example.fi");
    assert_eq!(city(&s, "old@example.fi"), "Pori");
    drop(s);
    let db = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    // Everything was written with the derived keys, as the old code did:
    // without the record, the file is what the old code left.
    let bidx = old.blind_index("email", "old@example.fi");
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM identifiers WHERE bidx = ?1",
            [&bidx.0[..]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    db.execute("DELETE FROM meta WHERE key = ?1", [INSTALLATION_KEYS])
        .unwrap();
    let has_record = || -> i64 {
        db.query_row(
            "SELECT count(*) FROM meta WHERE key = ?1",
            [INSTALLATION_KEYS],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(has_record(), 0);

    // The new code opens it, verifies it, finds the person; the record is
    // written once.
    verified(&data, None);
    assert_eq!(has_record(), 1);
    let s = start(&data, &a, &w);
    assert_eq!(city(&s, "old@example.fi"), "Pori");
    drop(s);
    verified(&data, None);
}
