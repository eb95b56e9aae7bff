//! Several `tarmo serve` nodes on one PostgreSQL database (the machine's,
//! on 5432, a fresh database per test) with the same master key: queued
//! messages go out once and survive a node's death, merges racing on two
//! nodes end in one profile, a node killed mid-load loses nothing it
//! acknowledged, and revocations and purpose changes reach every node
//! within a second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tarmo_notify::testing::SmtpSink;

use crate::common::*;
use crate::pg_faults::{batch_body, init_pg, send_with_retries, stored_message_ids};

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of the test's own on the shared server, dropped at the end.
struct Db {
    name: String,
}

impl Db {
    fn new(tag: &str) -> Self {
        let name = format!("tarmo_nodes_{tag}_{}", std::process::id());
        let mut c = postgres::Client::connect(PG_ADMIN, postgres::NoTls)
            .expect("PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth)");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(PG_ADMIN, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Two nodes' data directories on one database: the second holds a copy
/// of the first's master key, and each makes its own node id.
struct Cluster {
    _tmp: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    url: String,
    admin: String,
    write: String,
    _db: Db,
}

impl Cluster {
    fn new(tag: &str, nodes: usize) -> Self {
        let db = Db::new(tag);
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..nodes)
            .map(|i| tmp.path().join(format!("node{i}")))
            .collect();
        let (admin, write) = init_pg(&dirs[0], &db.url());
        for d in &dirs[1..] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::copy(dirs[0].join("master.key"), d.join("master.key")).unwrap();
        }
        Self {
            _tmp: tmp,
            dirs,
            url: db.url(),
            admin,
            write,
            _db: db,
        }
    }

    fn start(&self, i: usize, extra: &[String]) -> Server {
        let mut args = vec![
            "--database-url".to_owned(),
            self.url.clone(),
            "--work-lease-seconds".into(),
            "3".into(),
        ];
        args.extend_from_slice(extra);
        start_with(&self.dirs[i], &self.admin, &self.write, &args)
    }
}

fn smtp(sink: &SmtpSink) -> Vec<String> {
    vec!["--smtp-url".into(), sink.url()]
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

/// Messages received by recipient, and each one's Message-IDs.
fn by_recipient(sink: &SmtpSink) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in sink.messages() {
        out.entry(m.rcpt_to.join(","))
            .or_default()
            .push(m.header("Message-ID").unwrap_or_default());
    }
    out
}

#[test]
fn confirmations_go_out_once_across_nodes_and_a_dead_nodes_are_taken_over() {
    let sink = SmtpSink::builder().without_starttls().start();
    let c = Cluster::new("mail", 2);
    let n0 = c.start(0, &smtp(&sink));
    let n1 = c.start(1, &smtp(&sink));

    // Both nodes live: subscriptions on each, one confirmation each.
    let first: Vec<String> = (0..20).map(|i| format!("both{i}@example.fi")).collect();
    for (i, e) in first.iter().enumerate() {
        subscribe(if i % 2 == 0 { &n0 } else { &n1 }, e);
    }
    sink.wait_for(20, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let got = by_recipient(&sink);
    assert_eq!(got.len(), 20, "{got:?}");
    assert!(
        got.values().all(|ids| ids.len() == 1),
        "a confirmation went out twice while both nodes lived: {got:?}"
    );

    // A slow mail server: node 0 is killed with messages claimed and unsent.
    sink.set_data_delay(Duration::from_millis(300));
    let second: Vec<String> = (0..20).map(|i| format!("dies{i}@example.fi")).collect();
    for e in &second {
        subscribe(&n0, e);
    }
    sink.wait_for(22, Duration::from_secs(30));
    kill9(n0);
    let killed_at = Instant::now();
    sink.set_data_delay(Duration::ZERO);
    // The survivor takes the dead node's claims over once their 3 s lease
    // ran out.
    sink.wait_for(40, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let got = by_recipient(&sink);
    let everyone: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    let reached: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(reached, everyone, "every subscriber got a confirmation");
    let twice: Vec<_> = got.iter().filter(|(_, ids)| ids.len() > 1).collect();
    // The one message in flight when the node died may go again, with the
    // same Message-ID (so the mail system drops the copy); nothing else.
    assert!(twice.len() <= 1, "sent twice: {twice:?}");
    for (_, ids) in twice {
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }
    assert!(killed_at.elapsed() < Duration::from_secs(40));
    drop(n1);
}

#[test]
fn merges_racing_on_two_nodes_end_in_one_profile_with_both_histories() {
    let c = Cluster::new("merge", 2);
    let n0 = c.start(0, &[]);
    let n1 = c.start(1, &[]);
    const PEOPLE: usize = 8;
    let send = |s: &Server, msgs: Vec<Value>| {
        let (st, v) = post(
            s,
            "/v1/batch",
            Some(basic(&s.write)),
            json!({"batch": msgs}).to_string().as_bytes(),
            false,
        );
        assert_eq!(st, 200, "{v}");
    };
    // Each person first as a visitor on node 0 and as a known user on node 1.
    for i in 0..PEOPLE {
        send(
            &n0,
            vec![json!({"type": "track", "event": "Viewed", "anonymousId": format!("anon-{i}")})],
        );
        send(
            &n1,
            vec![
                json!({"type": "identify", "userId": format!("user-{i}"), "traits": {"plan": "gold"}}),
            ],
        );
    }
    // Then both nodes hear, at the same moment, that they are one person.
    let n0 = Arc::new(n0);
    let n1 = Arc::new(n1);
    let racers: Vec<_> = [n0.clone(), n1.clone()]
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            std::thread::spawn(move || {
                let msgs: Vec<Value> = (0..PEOPLE)
                    .map(|i| {
                        json!({"type": "identify", "userId": format!("user-{i}"),
                               "anonymousId": format!("anon-{i}"), "messageId": format!("login-{k}-{i}")})
                    })
                    .collect();
                let body = json!({"batch": msgs}).to_string();
                let deadline = Instant::now() + Duration::from_secs(30);
                let seen = Mutex::new(BTreeMap::new());
                assert!(
                    send_with_retries(std::slice::from_ref(&s.base), &s.write, body.as_bytes(), deadline, &seen),
                    "{seen:?}"
                );
            })
        })
        .collect();
    for r in racers {
        r.join().unwrap();
    }
    for i in 0..PEOPLE {
        let (st, a) = get(
            &n0,
            &format!("/api/v1/profiles/lookup?type=anonymous_id&value=anon-{i}"),
        );
        assert_eq!(st, 200, "{a}");
        let (st, u) = get(
            &n1,
            &format!("/api/v1/profiles/lookup?type=user_id&value=user-{i}"),
        );
        assert_eq!(st, 200, "{u}");
        assert_eq!(a["id"], u["id"], "person {i} is one profile on both nodes");
        // Both histories: the visit, the first identify, and both logins.
        assert_eq!(u["event_count"], 4, "{u}");
        let merged = u["merges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["outcome"] == "merged")
            .count();
        assert_eq!(merged, 1, "one merge, recorded once: {u}");
    }
}

#[test]
fn a_node_killed_mid_load_loses_nothing_it_acknowledged() {
    let c = Cluster::new("kill", 2);
    let n0 = c.start(0, &[]);
    let n1 = c.start(1, &[]);
    const USERS: usize = 4;
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 20;
    let deadline = Instant::now() + Duration::from_secs(90);
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let seen = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    // As behind a load balancer: each batch goes to one node, and a retry
    // to the other.
    let bases = vec![n0.base.clone(), n1.base.clone()];
    let write = c.write.clone();
    let load: Vec<_> = (0..USERS)
        .map(|u| {
            let (acked, seen, done) = (acked.clone(), seen.clone(), done.clone());
            let (mut bases, write) = (bases.clone(), write.clone());
            std::thread::spawn(move || {
                let user = format!("kill-user-{u}");
                for b in 0..BATCHES {
                    bases.rotate_left(1);
                    let (body, ids) = batch_body(&user, b, PER_BATCH);
                    if send_with_retries(&bases, &write, &body, deadline, &seen) {
                        acked.lock().unwrap().extend(ids);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < USERS * BATCHES / 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(n0);
    for t in load {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        USERS * BATCHES * PER_BATCH,
        "the survivor took every batch ({:?})",
        seen.lock().unwrap()
    );
    let mut stored = Vec::new();
    for u in 0..USERS {
        stored.extend(stored_message_ids(&n1, &format!("kill-user-{u}")));
    }
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a message was stored twice");
    assert_eq!(unique, acked, "every acknowledged message is stored");
}

#[test]
fn revocations_and_purpose_changes_reach_every_node_within_a_second() {
    let c = Cluster::new("keys", 2);
    let n0 = c.start(0, &[]);
    let n1 = c.start(1, &[]);
    let (st, made) = admin(
        &n0,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["dpo"], "name": "temp"})),
    );
    assert_eq!(st, 201, "{made}");
    let temp = made["key"].as_str().unwrap().to_owned();
    let with_temp = |s: &Server| {
        agent()
            .get(format!("{}/api/v1/purposes", s.base))
            .header("Authorization", &format!("Bearer {temp}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    // Node 1 knows the key (and caches it).
    assert_eq!(with_temp(&n1), 200);
    assert_eq!(with_temp(&n1), 200);
    let (st, v) = admin(
        &n0,
        "POST",
        &format!("/api/v1/keys/{}/revoke", made["id"]),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let revoked = Instant::now();
    while with_temp(&n1) != 401 {
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "node 1 still takes a key revoked on node 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A purpose changed on node 0 reads changed on node 1 within a second.
    let (_, purpose) = admin(&n1, "GET", "/api/v1/purposes/email_marketing", None);
    let mut def = purpose["definition"].clone();
    def["name"] = json!("Offers by email, changed on node 0");
    let (st, v) = admin(&n0, "PUT", "/api/v1/purposes/email_marketing", Some(&def));
    assert_eq!(st, 200, "{v}");
    let changed = Instant::now();
    loop {
        let (_, p) = admin(&n1, "GET", "/api/v1/purposes/email_marketing", None);
        if p["definition"]["name"] == "Offers by email, changed on node 0" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "node 1 still shows the old purpose: {p}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
