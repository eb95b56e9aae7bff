//! PostgreSQL goes away under load: a cluster of the test's own (its own
//! port and directory; the shared server on 5432 is not touched) is stopped
//! hard in the middle of an SDK-like load and started again. Tarmo must
//! answer 503 `database_unavailable` with Retry-After meanwhile, report not
//! ready, stay live, recover by itself, and keep every acknowledged message
//! exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of the test's own, run as the `postgres` user.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    _tmp: tempfile::TempDir,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser (the test runs as root, as CI does)");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// `initdb` a new cluster and start it on a free port.
    pub fn start(conf: &[&str]) -> Self {
        Self::start_with(conf, None, &[])
    }

    /// Also: a `pg_hba.conf` in place of initdb's, and files (certificates)
    /// in the cluster's directory.
    pub fn start_with(conf: &[&str], hba: Option<&str>, files: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        let initdb = format!("{PG_BIN}/initdb");
        as_postgres(&[
            &initdb,
            "-D",
            dir.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]);
        let mut extra = String::new();
        for c in conf {
            extra.push_str(c);
            extra.push('\n');
        }
        std::fs::write(dir.join("postgresql.auto.conf"), extra).unwrap();
        if let Some(h) = hba {
            std::fs::write(dir.join("pg_hba.conf"), h).unwrap();
        }
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        let c = Self {
            dir,
            port: free_port(),
            _tmp: tmp,
        };
        c.up();
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let mut all = vec![pg_ctl.as_str(), "-D", self.dir.to_str().unwrap()];
        all.extend_from_slice(args);
        as_postgres(&all);
    }

    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.ctl(&["-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    /// Run SQL as the superuser in `database`.
    pub fn sql(&self, database: &str, sql: &str) {
        let port = self.port.to_string();
        as_postgres(&[
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ]);
    }

    /// Stop as a crash would: no checkpoint, connections cut.
    pub fn crash(&self) {
        self.ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &pg_ctl, "-D"])
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Initialise a data directory for `url`; the first keys.
pub fn init_pg(dir: &Path, url: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["init", "--json", "--database-url", url, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["admin_key"].as_str().unwrap().to_owned(),
        v["write_key"].as_str().unwrap().to_owned(),
    )
}

/// What a send answered: the status, the error code and `Retry-After`.
pub struct Answer {
    pub status: u16,
    pub code: Option<String>,
    pub retry_after: Option<String>,
}

/// POST a batch; `None` when no HTTP answer came at all.
pub fn send_batch(base: &str, write: &str, body: &[u8]) -> Option<Answer> {
    let r = agent()
        .post(format!("{base}/v1/batch"))
        .header("Content-Type", "application/json")
        .header("Authorization", &basic(write))
        .send(body);
    let mut r = r.ok()?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    Some(Answer {
        status,
        code,
        retry_after,
    })
}

/// Send one batch as the SDKs do: retry on no answer, 429 and 5xx with
/// the same body (so the same messageIds), until acknowledged or the
/// deadline. Every answer that was not a 200 is counted by status/code.
pub fn send_with_retries(
    bases: &[String],
    write: &str,
    body: &[u8],
    deadline: Instant,
    seen: &Mutex<BTreeMap<String, usize>>,
) -> bool {
    let mut i = 0;
    while Instant::now() < deadline {
        let base = &bases[i % bases.len()];
        i += 1;
        match send_batch(base, write, body) {
            Some(a) if a.status == 200 => return true,
            Some(a) if a.status == 429 || a.status >= 500 => {
                let key = format!(
                    "{} {} retry-after={}",
                    a.status,
                    a.code.unwrap_or_default(),
                    a.retry_after.is_some()
                );
                *seen.lock().unwrap().entry(key).or_default() += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(a) => panic!("batch refused with {} {:?}", a.status, a.code),
            None => {
                *seen.lock().unwrap().entry("no answer".into()).or_default() += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    false
}

/// Every messageId stored for a user id's profile, by reading its events.
pub fn stored_message_ids(s: &Server, user: &str) -> Vec<String> {
    let (st, p) = get(
        s,
        &format!("/api/v1/profiles/lookup?type=user_id&value={user}"),
    );
    if st == 404 {
        return Vec::new();
    }
    assert_eq!(st, 200, "{p}");
    let id = p["id"].as_i64().unwrap();
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/v1/profiles/{id}/events?limit=1000&before={b}"),
            None => format!("/api/v1/profiles/{id}/events?limit=1000"),
        };
        let (st, page) = get(s, &path);
        assert_eq!(st, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            out.push(e["message"]["messageId"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    out
}

/// A batch of `n` track events for `user`, with ids `{user}-{batch}-{i}`.
pub fn batch_body(user: &str, batch: usize, n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{user}-{batch}-{i}")).collect();
    let msgs: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"type": "track", "event": "Load", "userId": user, "messageId": id,
                   "properties": {"n": 1}})
        })
        .collect();
    (json!({"batch": msgs}).to_string().into_bytes(), ids)
}

fn status_of(base: &str, path: &str) -> Option<u16> {
    agent()
        .get(format!("{base}{path}"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn postgres_restart_mid_load_loses_nothing_acknowledged_and_recovers_by_itself() {
    let cluster = Cluster::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = cluster.url();
    let (admin, write) = init_pg(&data, &url);
    let mut s = start_with(&data, &admin, &write, &["--database-url".into(), url]);
    assert_eq!(status_of(&s.base, "/readyz"), Some(200));

    const USERS: usize = 4;
    const BATCHES: usize = 30;
    const PER_BATCH: usize = 20;
    let deadline = Instant::now() + Duration::from_secs(120);
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let seen = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let batches_done = Arc::new(AtomicUsize::new(0));
    let bases = vec![s.base.clone()];
    let load: Vec<_> = (0..USERS)
        .map(|u| {
            let (acked, seen, done) = (acked.clone(), seen.clone(), batches_done.clone());
            let (bases, write) = (bases.clone(), write.clone());
            std::thread::spawn(move || {
                let user = format!("load-user-{u}");
                for b in 0..BATCHES {
                    let (body, ids) = batch_body(&user, b, PER_BATCH);
                    if send_with_retries(&bases, &write, &body, deadline, &seen) {
                        acked.lock().unwrap().extend(ids);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // A quarter of the way in, PostgreSQL crashes; it is away two seconds.
    while batches_done.load(Ordering::SeqCst) < USERS * BATCHES / 4 {
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.crash();
    let down_at = Instant::now();
    let mut not_ready = false;
    let mut live = true;
    while down_at.elapsed() < Duration::from_secs(2) || !not_ready {
        assert!(
            down_at.elapsed() < Duration::from_secs(30),
            "/readyz never said not ready while PostgreSQL was down"
        );
        not_ready |= status_of(&s.base, "/readyz") == Some(503);
        live &= status_of(&s.base, "/healthz") == Some(200);
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it is down, ingestion says why and when to come back.
    let (body, _) = batch_body("probe", 0, 1);
    let a = send_batch(&s.base, &write, &body).expect("an answer while the database is down");
    assert_eq!(a.status, 503);
    assert_eq!(a.code.as_deref(), Some("database_unavailable"));
    assert!(a.retry_after.is_some(), "503 without Retry-After");
    // So do staff reads: the database is away, not broken.
    let (st, v) = get(&s, "/api/v1/profiles/lookup?type=user_id&value=load-user-0");
    assert_eq!(
        (st, v["code"].as_str()),
        (503, Some("database_unavailable")),
        "{v}"
    );
    cluster.up();
    let up_at = Instant::now();
    loop {
        if status_of(&s.base, "/readyz") == Some(200) {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(30),
            "Tarmo did not become ready again after PostgreSQL came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in load {
        t.join().unwrap();
    }
    assert!(
        live,
        "/healthz must stay a liveness probe while the database is away"
    );
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "Tarmo must recover without a restart"
    );

    let acked = acked.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        USERS * BATCHES * PER_BATCH,
        "every batch is acknowledged in the end (retries seen: {seen:?})"
    );
    assert!(
        seen.keys()
            .any(|k| k.starts_with("503 database_unavailable retry-after=true")),
        "the load met the outage: {seen:?}"
    );
    let mut stored = Vec::new();
    for u in 0..USERS {
        stored.extend(stored_message_ids(&s, &format!("load-user-{u}")));
    }
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a message was stored twice");
    let missing: Vec<_> = acked.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    // The probe was refused, and nothing else crept in.
    assert_eq!(unique, acked);
    s.child.kill().unwrap();
}

fn init_output(dir: &Path, url: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["init", "--json", "--database-url", url, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn sslmode_is_honoured_with_rustls() {
    let server =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cluster = Cluster::start_with(
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ],
        // Only TLS connections are let in over TCP.
        Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n"),
        &[
            ("server.crt", &server.cert.pem()),
            ("server.key", &server.signing_key.serialize_pem()),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, server.cert.pem()).unwrap();
    let wrong = tmp.path().join("wrong.pem");
    std::fs::write(&wrong, stranger.cert.pem()).unwrap();
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);

    // Without TLS the server does not let Tarmo in.
    let out = init_output(&tmp.path().join("plain"), &base);
    assert!(!out.status.success(), "a plain connection was let in");
    // verify-full refuses a certificate that no trusted root signed ...
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", wrong.display());
    let out = init_output(&tmp.path().join("wrong"), &url);
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );
    // ... and a certificate for another name.
    let other_name = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        wrong.display()
    );
    assert!(
        !init_output(&tmp.path().join("other"), &other_name)
            .status
            .success()
    );
    // verify-full with the right root: Tarmo serves and stores over TLS.
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let data = tmp.path().join("data");
    let out = init_output(&data, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (admin, write) = (
        v["admin_key"].as_str().unwrap().to_owned(),
        v["write_key"].as_str().unwrap().to_owned(),
    );
    let s = start_with(&data, &admin, &write, &["--database-url".into(), url]);
    assert_eq!(status_of(&s.base, "/readyz"), Some(200));
    let (body, ids) = batch_body("tls-user", 0, 3);
    let a = send_batch(&s.base, &write, &body).unwrap();
    assert_eq!(a.status, 200);
    let mut stored = stored_message_ids(&s, "tls-user");
    stored.sort();
    assert_eq!(stored, ids);
    // require encrypts without checking the certificate (libpq's meaning).
    let out = Command::new(BIN)
        .args([
            "keys",
            "list",
            "--database-url",
            &format!("{base}?sslmode=require"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
