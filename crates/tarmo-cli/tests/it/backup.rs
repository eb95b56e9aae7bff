//! Backups that erasure still reaches: back up while serving, erase, restore
//! with the erasures replayed; the master key from a command; a damaged
//! backup refused before anything is written.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::common::*;

fn tarmo(args: &[&str], dir_args: &[&Path], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for d in dir_args {
        c.arg(d);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("TARMO_LOG", "warn").output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output, needle: &str) {
    assert!(!o.status.success(), "should have failed");
    let err = String::from_utf8_lossy(&o.stderr);
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

fn erase(s: &Server, email: &str) {
    let (st, r) = admin(
        s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "email", "value": email}})),
    );
    assert_eq!(st, 201, "{r}");
    let (st, r) = admin(
        s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "signed letter"})),
    );
    assert_eq!((st, r["status"].as_str()), (200, Some("completed")), "{r}");
}

fn lookup(s: &Server, email: &str) -> (u16, Value) {
    admin(
        s,
        "GET",
        &format!("/api/v1/profiles/lookup?type=email&value={email}"),
        None,
    )
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_restored_backup_does_not_bring_back_a_person_erased_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("live");
    let (a, w) = init(&data);
    let s = trusted(start(&data, &a, &w));
    ingest(
        &s,
        json!({"batch": [
            {"type": "identify", "userId": "b-1", "traits": {"email": "leaves@example.fi", "city": "Oulu"}},
            {"type": "identify", "userId": "b-2", "traits": {"email": "stays@example.fi", "city": "Turku"}},
            {"type": "track", "userId": "b-1", "event": "Order Completed", "properties": {"revenue": 10}}
        ]}),
    );
    let (st, leaver) = lookup(&s, "leaves@example.fi");
    assert_eq!(st, 200);
    let leaver_id = leaver["id"].as_i64().unwrap();

    // Online: the server keeps serving while the copy is made.
    let b1 = tmp.path().join("backup-1");
    let k1 = tmp.path().join("keyring-1");
    failed(&tarmo(&["backup", "--data-dir"], &[&data], &[]), "--to");
    // The keys never go beside the data.
    failed(
        &tarmo(
            &["backup", "--to"],
            &[
                &b1,
                Path::new("--keyring-to"),
                &b1.join("k"),
                Path::new("--data-dir"),
                &data,
            ],
            &[],
        ),
        "apart",
    );
    ok(&tarmo(
        &["backup", "--to"],
        &[
            &b1,
            Path::new("--keyring-to"),
            &k1,
            Path::new("--data-dir"),
            &data,
        ],
        &[],
    ));
    let names: Vec<String> = std::fs::read_dir(&b1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"tarmo.db".to_owned()), "{names:?}");
    assert!(names.contains(&"backup.json".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("master")),
        "the master key is never in a backup: {names:?}"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&b1), 0o700);
        assert_eq!(mode(&b1.join("tarmo.db")), 0o600);
        assert_eq!(mode(&k1.join("keyring.db")), 0o600);
        assert_eq!(mode(&data.join("keyring.db")), 0o600);
    }
    // Neither the live data file nor the data backup holds a data key;
    // the keyring backup holds them all, as the live keyring file does.
    let count = |db: &Path, sql: &str| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let key_table = "SELECT count(*) FROM sqlite_master WHERE name = 'data_keys'";
    assert_eq!(count(&b1.join("tarmo.db"), key_table), 0);
    assert_eq!(count(&data.join("tarmo.db"), key_table), 0);
    let with_key = "SELECT count(*) FROM data_keys WHERE length(wrapped) > 0";
    assert!(count(&k1.join("keyring.db"), with_key) >= 2);
    assert_eq!(
        count(&k1.join("keyring.db"), with_key),
        count(&data.join("keyring.db"), with_key)
    );
    // The installation keys (wrapped by the master key) go with the data
    // keys: the data backup and the master key alone open nothing.
    let record = "SELECT count(*) FROM meta WHERE key = 'installation_keys'";
    assert_eq!(count(&b1.join("tarmo.db"), record), 0);
    assert_eq!(count(&k1.join("keyring.db"), record), 1);
    // A backup never writes over another.
    failed(
        &tarmo(
            &["backup", "--to"],
            &[
                &b1,
                Path::new("--keyring-to"),
                &tmp.path().join("k-x"),
                Path::new("--data-dir"),
                &data,
            ],
            &[],
        ),
        "not empty",
    );

    // After the backup: one person is erased, and someone new arrives.
    erase(&s, "leaves@example.fi");
    ingest(
        &s,
        json!({"batch": [{"type": "identify", "userId": "b-3", "traits": {"email": "late@example.fi"}}]}),
    );

    // The master key comes from a command (a KMS client, say): the new
    // directory holds no key file.
    let key_cmd = format!("cat '{}'", data.join("master.key").display());
    let restored = tmp.path().join("restored");

    // Without naming the live store (or saying it is lost), nothing happens.
    failed(
        &tarmo(
            &["restore", "--from"],
            &[&b1, Path::new("--data-dir"), &restored],
            &[("TARMO_MASTER_KEY_COMMAND", &key_cmd)],
        ),
        "--replay-from",
    );
    assert!(!restored.exists(), "a refused restore writes nothing");

    // A damaged backup is refused before anything is written.
    let damaged = tmp.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for n in ["tarmo.db", "backup.json"] {
        std::fs::copy(b1.join(n), damaged.join(n)).unwrap();
    }
    let mut db = std::fs::read(damaged.join("tarmo.db")).unwrap();
    let mid = db.len() / 2;
    db[mid] ^= 0x55;
    std::fs::write(damaged.join("tarmo.db"), db).unwrap();
    failed(
        &tarmo(
            &["restore", "--from"],
            &[
                &damaged,
                Path::new("--data-dir"),
                &restored,
                Path::new("--replay-from"),
                &data,
            ],
            &[("TARMO_MASTER_KEY_COMMAND", &key_cmd)],
        ),
        "damaged",
    );
    assert!(!restored.exists(), "a refused restore writes nothing");

    // A command that fails stops the restore too.
    failed(
        &tarmo(
            &["restore", "--from"],
            &[
                &b1,
                Path::new("--data-dir"),
                &restored,
                Path::new("--replay-from"),
                &data,
            ],
            &[("TARMO_MASTER_KEY_COMMAND", "exit 3")],
        ),
        "master key command",
    );
    assert!(!restored.exists(), "a refused restore writes nothing");

    let out = ok(&tarmo(
        &["restore", "--from"],
        &[
            &b1,
            Path::new("--data-dir"),
            &restored,
            Path::new("--replay-from"),
            &data,
        ],
        &[("TARMO_MASTER_KEY_COMMAND", &key_cmd)],
    ));
    let report: Value = serde_json::from_str(&out).unwrap();
    let replay = &report["replay"];
    assert_eq!(replay["erasures"], 1, "{report}");
    assert_eq!(replay["profiles_erased"], 1, "{report}");
    assert!(
        replay["suppressions_added"].as_u64().unwrap() >= 1,
        "{report}"
    );
    // Keys from the live store: the erased person's was gone already, and
    // the replayed log erased them before anyone was found keyless.
    assert_eq!(report["keys"]["missing"], 1, "{report}");
    assert_eq!(report["erased_without_key"], 0, "{report}");

    // The live store lost: the data backup with a keyring backup taken
    // after the erasure. The erased person has no key in it, so what the
    // data backup holds of them is noise, and the restore removes it.
    let b2 = tmp.path().join("backup-2");
    let k2 = tmp.path().join("keyring-2");
    ok(&tarmo(
        &["backup", "--to"],
        &[
            &b2,
            Path::new("--keyring-to"),
            &k2,
            Path::new("--data-dir"),
            &data,
        ],
        &[],
    ));
    drop(s);
    let from_keyring = tmp.path().join("from-keyring");
    failed(
        &tarmo(
            &["restore", "--no-replay", "--from"],
            &[&b1, Path::new("--data-dir"), &from_keyring],
            &[("TARMO_MASTER_KEY_COMMAND", &key_cmd)],
        ),
        "--keyring",
    );
    let out = ok(&tarmo(
        &["restore", "--no-replay", "--from"],
        &[
            &b1,
            Path::new("--keyring"),
            &k2,
            Path::new("--data-dir"),
            &from_keyring,
        ],
        &[("TARMO_MASTER_KEY_COMMAND", &key_cmd)],
    ));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["keys"]["missing"], 1, "{report}");
    assert_eq!(report["erased_without_key"], 1, "{report}");
    std::fs::copy(data.join("master.key"), from_keyring.join("master.key")).unwrap();
    let r = start(&from_keyring, &a, &w);
    assert_eq!(lookup(&r, "leaves@example.fi").0, 404);
    let (st, p) = lookup(&r, "stays@example.fi");
    assert_eq!(
        (st, p["traits"]["city"].as_str()),
        (200, Some("Turku")),
        "{p}"
    );
    drop(r);

    // The restored store, served: the erased person is gone and suppressed,
    // the other is as the backup had them, and what came later is not there.
    std::fs::copy(data.join("master.key"), restored.join("master.key")).unwrap();
    let r = start(&restored, &a, &w);
    assert_eq!(lookup(&r, "leaves@example.fi").0, 404);
    let (_, d) = admin(
        &r,
        "GET",
        "/api/v1/decisions?purpose=email_marketing&type=email&value=leaves@example.fi",
        None,
    );
    assert_eq!(d["reason"], "suppressed", "{d}");
    let (st, p) = lookup(&r, "stays@example.fi");
    assert_eq!(st, 200);
    assert_eq!(p["traits"]["city"], "Turku");
    assert_eq!(lookup(&r, "late@example.fi").0, 404);
    drop(r);

    // On disk: no data key and no row of the erased profile is left.
    let rows_of = |db: &Path, table: &str, col: &str| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE {col} = ?1"),
                [leaver_id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        rows_of(&restored.join("keyring.db"), "data_keys", "owner_id"),
        0,
        "the restored keyring holds the erased person's key"
    );
    for (table, col) in [
        ("profiles", "id"),
        ("identifiers", "profile_id"),
        ("events", "profile_id"),
    ] {
        assert_eq!(
            rows_of(&restored.join("tarmo.db"), table, col),
            0,
            "{table} still holds the erased profile"
        );
    }
    // ... while the backups themselves still do: it is the replay that erased.
    assert_eq!(rows_of(&b1.join("tarmo.db"), "profiles", "id"), 1);
    assert_eq!(rows_of(&k1.join("keyring.db"), "data_keys", "owner_id"), 1);
}

const PG: &str = "host=127.0.0.1 user=postgres";

/// A new, empty database on the test machine's PostgreSQL; its URL.
fn fresh_pg_database(tag: &str) -> String {
    let name = format!("tarmo_it_{tag}_{}", std::process::id());
    let mut c = postgres::Client::connect(PG, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    format!("postgres://postgres@127.0.0.1/{name}")
}

#[test]
fn on_postgresql_a_restored_dump_replays_the_erasures_of_the_live_database() {
    let live = fresh_pg_database("bk_live");
    let rest = fresh_pg_database("bk_rest");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let out = ok(&tarmo(
        &["init", "--json", "--database-url", &live, "--data-dir"],
        &[&data],
        &[],
    ));
    let keys: Value = serde_json::from_str(&out).unwrap();
    let (a, w) = (
        keys["admin_key"].as_str().unwrap(),
        keys["write_key"].as_str().unwrap(),
    );
    // Served from PostgreSQL: authenticated requests (admin and write
    // keys) read the store off the async workers.
    let s = trusted(start_with(
        &data,
        a,
        w,
        &["--database-url".into(), live.clone()],
    ));
    ingest(
        &s,
        json!({"batch": [
            {"type": "identify", "userId": "p-1", "traits": {"email": "leaves@example.fi"}},
            {"type": "identify", "userId": "p-2", "traits": {"email": "stays@example.fi"}}
        ]}),
    );
    let dump = tmp.path().join("dump");
    let o = Command::new("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&live)
        .output()
        .unwrap();
    ok(&o);
    erase(&s, "leaves@example.fi");
    drop(s);
    let o = Command::new("pg_restore")
        .args(["--no-owner", "-d", &rest])
        .arg(&dump)
        .output()
        .unwrap();
    ok(&o);

    let out = ok(&tarmo(
        &[
            "restore",
            "--database-url",
            &rest,
            "--replay-database-url",
            &live,
            "--data-dir",
        ],
        &[&data],
        &[],
    ));
    let report: Value = serde_json::from_str(&out).unwrap();
    let replay = &report["replay"];
    assert_eq!(
        (
            replay["erasures"].as_u64(),
            replay["profiles_erased"].as_u64()
        ),
        (Some(1), Some(1)),
        "{replay}"
    );

    let r = start_with(&data, a, w, &["--database-url".into(), rest.clone()]);
    assert_eq!(lookup(&r, "leaves@example.fi").0, 404);
    assert_eq!(lookup(&r, "stays@example.fi").0, 200);
}
