//! Faults on one node: a disk that fills up, and readiness with the queues
//! that wait. (Panicking jobs are tested in the store, where a test can make
//! one panic: no route can.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// A tmpfs of the test's own with a size limit, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` when this machine does not let the test mount (not root).
    fn mount(dir: &Path, megabytes: u32) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self {
            dir: dir.to_owned(),
        })
    }

    fn resize(&self, megabytes: u32) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file must not leave it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn status_of(s: &Server, path: &str, body: &Value) -> (u16, Value, Option<String>) {
    let mut r = agent()
        .post(format!("{}{}", s.base, path))
        .header("Content-Type", "application/json")
        .header("Authorization", &basic(&s.write))
        .send(body.to_string().as_bytes())
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        r.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
        retry,
    )
}

fn track(user: &str, id: &str, filler: usize) -> Value {
    json!({"type": "track", "userId": user, "event": "Page Read", "messageId": id,
           "properties": {"text": noise(id, filler)}})
}

/// `len` hex digits that differ with `id` (a splitmix64 stream): text the
/// store cannot compress away. Event bodies are packed with zstd before
/// they are sealed, and a filler of repeated letters packed to a few
/// bytes, so whether 400 batches filled the disk depended on how large
/// the log happened to be.
fn noise(id: &str, len: usize) -> String {
    let mut z = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.push_str(&format!("{:016x}", x ^ (x >> 31)));
    }
    out.truncate(len);
    out
}

#[test]
fn a_full_disk_answers_507_keeps_the_store_whole_and_serves_again_once_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(dir.path(), 12) else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (the test needs root)");
        return;
    };
    let data = fs.dir.join("data");
    let (a, w) = init(&data);
    // A small access journal, so that it fills while the disk is full.
    let mut s = start_with(
        &data,
        &a,
        &w,
        &[
            "--retention-interval-minutes".into(),
            "0".into(),
            "--access-journal-kib".into(),
            "64".into(),
        ],
    );
    let s2 = trusted_copy(&s);
    s.write = s2;

    // Someone to read later, and a consent in the ledger.
    let (st, v, _) = status_of(
        &s,
        "/v1/identify",
        &json!({"userId": "full-1", "messageId": "full-id-0", "traits": {"email": "full@example.fi"}}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "full-1"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "before the disk filled"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = get(&s, "/api/v1/profiles/lookup?type=user_id&value=full-1");
    assert_eq!(st, 200, "{v}");
    let profile = v["id"].as_i64().unwrap();
    let mut acked = 1u64;
    let mut reads_answered = 1u64;

    // Fill the disk with batches until ingestion is refused.
    let mut n = 0u64;
    let refusal = loop {
        let batch: Vec<Value> = (0..100)
            .map(|i| track("full-1", &format!("full-{n}-{i}"), 1500))
            .collect();
        let (st, v, retry) = status_of(&s, "/v1/batch", &json!({"batch": batch}));
        match st {
            200 => acked += 100,
            507 => break (v, retry),
            other => panic!("ingestion answered {other}: {v}"),
        }
        n += 1;
        assert!(n < 400, "the disk never filled");
    };
    assert!(n >= 3, "only {n} batches fitted: the test measures nothing");
    assert_eq!(refusal.0["code"], "storage_full", "{}", refusal.0);
    assert!(refusal.1.is_some(), "507 carries Retry-After");
    assert!(s.child.try_wait().unwrap().is_none(), "the server survived");

    // Small writes too, until nothing fits. Reads are answered while their
    // records fit in the access journal (its space was written when it was
    // made); once it is full of records the database cannot take, reads are
    // refused, never answered unlogged.
    let mut refused_reads = 0;
    for i in 0..300 {
        let (st, v, _) = status_of(&s, "/v1/track", &track("full-1", &format!("small-{i}"), 10));
        match st {
            200 => acked += 1,
            507 => {}
            other => panic!("a small write answered {other}: {v}"),
        }
        let (st, v) = get(&s, &format!("/api/v1/profiles/{profile}"));
        match st {
            200 => reads_answered += 1,
            507 => {
                assert_eq!(v["code"], "storage_full");
                refused_reads += 1;
                if refused_reads >= 3 {
                    break;
                }
            }
            other => panic!("a read answered {other}: {v}"),
        }
    }
    assert!(
        refused_reads >= 3,
        "reads were never refused on a full disk"
    );
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "full-1"}, "purpose": "email_marketing",
            "decision": "withdrawn", "method": "web_form", "source": "while the disk was full"}),
        ),
    );
    assert_eq!((st, v["code"].as_str()), (507, Some("storage_full")), "{v}");
    // The access journal's copier keeps trying, and a small copy that finds
    // a free page clears the flag until the next refusal: ask again after a
    // refused write, a few times.
    let mut flagged = Value::Null;
    for i in 0..10 {
        let (st, v) = get_public(&s, "/readyz");
        assert_eq!(
            st, 200,
            "a full disk does not take the node out: reads work: {v}"
        );
        if v["storage_full_since"].is_string() {
            flagged = v;
            break;
        }
        let (st, v, _) = status_of(&s, "/v1/track", &track("full-1", &format!("flag-{i}"), 10));
        match st {
            200 => acked += 1,
            507 => {}
            other => panic!("a small write answered {other}: {v}"),
        }
    }
    assert!(flagged["storage_full_since"].is_string(), "never flagged");

    // Room again: the same server takes writes and reads.
    fs.resize(64);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, v, _) = status_of(&s, "/v1/track", &track("full-1", "after-freed", 10));
        if st == 200 {
            acked += 1;
            break;
        }
        assert_eq!(st, 507, "{v}");
        assert!(
            Instant::now() < deadline,
            "never wrote again after space was freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, v) = get(&s, &format!("/api/v1/profiles/{profile}"));
    assert_eq!(st, 200, "{v}");
    reads_answered += 1;
    let (st, v) = get_public(&s, "/readyz");
    assert_eq!((st, &v["storage_full_since"]), (200, &Value::Null), "{v}");

    // Every acknowledged message is stored, no refused one is.
    let (_, stats) = get(&s, "/api/v1/stats");
    assert_eq!(stats["events"].as_u64(), Some(acked), "{stats}");
    // Every read answered is in the access log; no refused one.
    let (_, audit) = get(&s, &format!("/api/v1/audit?profile={profile}&limit=1000"));
    let logged = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["route"] == "/api/v1/profiles/{id}" || r["route"] == "/api/v1/profiles/lookup"
        })
        .count() as u64;
    assert_eq!(logged, reads_answered, "{audit}");

    // Crash it, then check the files.
    kill9(s);
    let db = data.join("tarmo.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(c);
    for what in [["ledger", "verify"], ["audit", "verify"]] {
        let out = Command::new(BIN)
            .args(what)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tarmo {} {}: {}{}",
            what[0],
            what[1],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A read is answered once its access record is durable in the access
/// journal, without waiting for the database: here another process holds
/// SQLite's write lock, so no record can reach the table. The reads are
/// answered, the server is killed -9, and after a restart every one of them
/// is in the access log, once, and the log's chain verifies.
#[test]
fn reads_answered_while_the_database_is_locked_are_in_the_log_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let mut s = start(&data, &a, &w);
    s.write = trusted_copy(&s);
    let (st, v, _) = status_of(
        &s,
        "/v1/identify",
        &json!({"userId": "locked-1", "messageId": "locked-id-0", "traits": {"email": "locked@example.fi"}}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = get(&s, "/api/v1/profiles/lookup?type=user_id&value=locked-1");
    assert_eq!(st, 200, "{v}");
    let profile = v["id"].as_i64().unwrap();

    let db = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let began = Instant::now();
    for _ in 0..20 {
        let (st, v) = get(&s, &format!("/api/v1/profiles/{profile}"));
        assert_eq!(st, 200, "{v}");
    }
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "the reads waited for the database: {:?}",
        began.elapsed()
    );
    let in_table: i64 = db
        .query_row(
            "SELECT count(*) FROM access_log WHERE route = '/api/v1/profiles/{id}'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_table, 0, "the lock kept every record out of the table");
    kill9(s);
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    // They are in the journal only, and said so.
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let waiting = v["waiting_in_journal"].as_u64().unwrap();
    assert!((20..=21).contains(&waiting), "{v}");

    let s = start(&data, &a, &w);
    let (st, audit) = get(&s, &format!("/api/v1/audit?profile={profile}&limit=1000"));
    assert_eq!(st, 200, "{audit}");
    let reads = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"] == "/api/v1/profiles/{id}")
        .count();
    assert_eq!(reads, 20, "{audit}");
    drop(s);
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL whose data volume fills up: Tarmo's tables live in a
/// tablespace on a small tmpfs of the test's own (the write-ahead log stays
/// on the big disk, as on a server whose data volume is full), so extending
/// a table fails with SQLSTATE 53100. Tarmo must answer 507 `storage_full`,
/// stay up, lose nothing it acknowledged, and write again once there is room.
#[test]
fn a_full_postgresql_data_volume_answers_507_and_writes_again_once_grown() {
    let cluster = crate::pg_faults::Cluster::start(&[]);
    let ts = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(ts.path(), 10) else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (the test needs root)");
        return;
    };
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&fs.dir)
        .status()
        .unwrap();
    assert!(status.success());
    cluster.sql(
        "postgres",
        &format!("CREATE TABLESPACE small LOCATION '{}'", fs.dir.display()),
    );
    cluster.sql("postgres", "CREATE DATABASE tarmo");
    cluster.sql(
        "postgres",
        "ALTER DATABASE tarmo SET default_tablespace = small",
    );
    let url = format!("postgres://postgres@127.0.0.1:{}/tarmo", cluster.port);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = crate::pg_faults::init_pg(&data, &url);
    let mut s = start_with(&data, &a, &w, &["--database-url".into(), url]);
    let s2 = trusted_copy(&s);
    s.write = s2;
    let (st, v, _) = status_of(
        &s,
        "/v1/identify",
        &json!({"userId": "pgfull-1", "messageId": "pgfull-id-0", "traits": {"email": "pgfull@example.fi"}}),
    );
    assert_eq!(st, 200, "{v}");
    let mut acked = 1u64;

    let mut n = 0u64;
    let refusal = loop {
        let batch: Vec<Value> = (0..100)
            .map(|i| track("pgfull-1", &format!("pgfull-{n}-{i}"), 1500))
            .collect();
        let (st, v, retry) = status_of(&s, "/v1/batch", &json!({"batch": batch}));
        match st {
            200 => acked += 100,
            507 => break (v, retry),
            other => panic!("ingestion answered {other}: {v}"),
        }
        n += 1;
        assert!(n < 400, "the data volume never filled");
    };
    assert!(n >= 3, "only {n} batches fitted: the test measures nothing");
    assert_eq!(refusal.0["code"], "storage_full", "{}", refusal.0);
    assert!(refusal.1.is_some(), "507 carries Retry-After");
    assert!(s.child.try_wait().unwrap().is_none(), "the server survived");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "pgfull-1"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "while the volume was full"}),
        ),
    );
    assert_eq!((st, v["code"].as_str()), (507, Some("storage_full")), "{v}");

    fs.resize(64);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v, _) = status_of(&s, "/v1/track", &track("pgfull-1", "pg-after-grown", 10));
        if st == 200 {
            acked += 1;
            break;
        }
        assert!(matches!(st, 503 | 507), "{st}: {v}");
        assert!(
            Instant::now() < deadline,
            "never wrote again after the volume grew"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, v) = get_public(&s, "/readyz");
    assert_eq!((st, &v["storage_full_since"]), (200, &Value::Null), "{v}");
    // Every acknowledged message is stored, no refused one is.
    let (_, stats) = get(&s, "/api/v1/stats");
    assert_eq!(stats["events"].as_u64(), Some(acked), "{stats}");
    drop(s);
    drop(cluster);
}

/// A server write key (a back end), so the test's identify is trusted.
fn trusted_copy(s: &Server) -> String {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["ingest"], "trust": "server", "name": "back end"})),
    );
    assert_eq!(st, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

fn get_public(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent().get(format!("{}{}", s.base, path)).call().unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn queue<'a>(ready: &'a Value, name: &str) -> &'a Value {
    ready["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {ready}"))
}

#[test]
fn readyz_shows_every_part_and_the_queues_and_a_stuck_outbox_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let log = dir.path().join("stderr.log");
    // Started here rather than with `start_with`: the test reads the log.
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("TARMO_LOG", "warn")
        .env("TARMO_QUEUE_WATCH_SECONDS", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while !line.ends_with('\n') {
        assert_eq!(out.read(&mut b).unwrap(), 1, "the server ended: {line}");
        line.push(b[0] as char);
    }
    let s = Server {
        base: line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned(),
        child,
        admin: a,
        write: w,
    };

    // The workers register as their threads start: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (st, ready) = get_public(&s, "/readyz");
        assert_eq!(
            (st, ready["status"].as_str()),
            (200, Some("ready")),
            "{ready}"
        );
        if ready["components"].as_array().unwrap().len() >= 7 || Instant::now() > deadline {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let parts: Vec<&str> = ready["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["up"], true, "{c}");
            c["name"].as_str().unwrap()
        })
        .collect();
    for part in [
        "writer",
        "access-log",
        "segments",
        "mail",
        "notices",
        "retention",
        "queue-watch",
    ] {
        assert!(parts.contains(&part), "{part} missing from {parts:?}");
    }
    let email = queue(&ready, "outbox_email");
    assert_eq!(
        (email["depth"].as_i64(), email["state"].as_str()),
        (Some(0), Some("empty"))
    );
    assert_eq!(
        email["consumer"], false,
        "no --smtp-url: nothing sends email"
    );
    assert_eq!(queue(&ready, "processor_notifications")["consumer"], true);

    // Without --smtp-url, confirmations pile up.
    for i in 0..2 {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/subscriptions",
            Some(
                &json!({"email": format!("wait{i}@example.fi"), "purposes": ["email_marketing"],
                "language": "en", "source": "footer form"}),
            ),
        );
        assert_eq!(st, 202, "{v}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (_, ready) = get_public(&s, "/readyz");
    let email = queue(&ready, "outbox_email");
    assert_eq!(
        (email["depth"].as_i64(), email["state"].as_str()),
        (Some(2), Some("stuck")),
        "{ready}"
    );
    assert!(
        email["oldest_age_seconds"].as_i64().unwrap() >= 1,
        "{email}"
    );
    let metrics = metrics_text(&s);
    assert!(
        metrics.contains("tarmo_queue_depth{queue=\"outbox_email\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tarmo_queue_consumer{queue=\"outbox_email\"} 0"));
    assert!(metrics.contains("tarmo_queue_oldest_age_seconds{queue=\"outbox_email\"} "));
    assert!(metrics.contains("tarmo_component_up{component=\"writer\"} 1"));

    // A warning at each look while it grows: one for each subscription.
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("nothing drains it") && l.contains("outbox_email"))
        .count();
    assert!(
        warnings >= 2,
        "expected a warning per growth, got {warnings}:\n{text}"
    );
    assert!(text.contains("--smtp-url"), "the warning says what to do");
    assert!(!text.contains("wait0@example.fi"), "no address in the log");
}

fn metrics_text(s: &Server) -> String {
    let mut r = agent()
        .get(format!("{}/metrics", s.base))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.body_mut().read_to_string().unwrap()
}
