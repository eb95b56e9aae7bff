//! Ingestion benchmark: drives `/v1/batch` of a release `tarmo serve` over
//! loopback with realistic Segment payloads (100 events a batch, identify +
//! track mix, CUSTOMERS distinct customers), then measures the raw limit in the
//! same run: SQLite inserts of rows of the same size, no HTTP, no crypto, no
//! identity work. Also times profile lookups by email over HTTP.
//!
//! cargo bench -p tarmo-cli --bench ingest   (env: EVENTS, CUSTOMERS, CLIENTS, RAW_ROWS, DATABASE_URL, NODES)
//!
//! TARMO_BIN: another `tarmo` binary to measure (an older build), for an A/B
//! on the same machine in the same session.
//!
//! With DATABASE_URL, NODES=n starts n `tarmo serve` nodes on that database
//! (the same master key), the clients spread over them, and the raw limit is
//! PostgreSQL's multi-row INSERT of the same rows.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// The customer of the n-th event: spread evenly (splitmix64), so that the
/// identifies (every tenth event) reach all customers, not a residue class.
fn customer(n: u64, customers: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    (z ^ (z >> 31)) % customers
}

fn batch(seed: u64, customers: u64, identify_every: u64) -> Value {
    let events: Vec<Value> = (0..100)
        .map(|i| {
            let n = seed * 100 + i;
            let c = customer(n, customers);
            if n.is_multiple_of(identify_every) {
                json!({"type": "identify", "userId": format!("user-{c}"), "anonymousId": format!("anon-{c}"),
                    "messageId": format!("msg-{n}"), "timestamp": "2026-11-01T10:00:00.000Z",
                    "traits": {"email": format!("customer{c}@example.com"), "firstName": "Aino", "plan": "gold"},
                    "context": {"library": {"name": "analytics.js", "version": "5.2.0"}, "locale": "fi-FI"}})
            } else {
                json!({"type": "track", "userId": format!("user-{c}"), "event": "Product Viewed",
                    "messageId": format!("msg-{n}"), "timestamp": "2026-11-01T10:00:01.000Z",
                    "properties": {"product_id": format!("sku-{}", n % 5000), "price": 19.9, "currency": "EUR", "category": "produce"},
                    "context": {"library": {"name": "analytics.js", "version": "5.2.0"}, "page": {"path": "/p/avocado"}}})
            }
        })
        .collect();
    json!({"batch": events, "sentAt": "2026-11-01T10:00:02.000Z"})
}

fn main() {
    let total = env_or("EVENTS", 200_000);
    let customers = env_or("CUSTOMERS", 100_000);
    let clients = env_or("CLIENTS", 8);
    // One identify in IDENTIFY_EVERY messages (10: the identify-heavy mix
    // of every earlier figure; 100: track-heavy traffic).
    let identify_every = env_or("IDENTIFY_EVERY", 10).max(1);
    let bin = std::env::var("TARMO_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tarmo").to_owned());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // DATABASE_URL=postgres://... measures the PostgreSQL store instead.
    let db_url = std::env::var("DATABASE_URL").ok();
    let db_args: Vec<String> = db_url
        .iter()
        .flat_map(|u| ["--database-url".to_owned(), u.clone()])
        .collect();
    let out = Command::new(&bin)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .args(&db_args)
        .output()
        .unwrap();
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (admin, write) = (
        keys["admin_key"].as_str().unwrap().to_owned(),
        keys["write_key"].as_str().unwrap().to_owned(),
    );
    let nodes = if db_url.is_some() {
        env_or("NODES", 1).max(1)
    } else {
        1
    };
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for i in 0..nodes {
        let dir_i = if i == 0 {
            data.clone()
        } else {
            let d = dir.path().join(format!("data{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(data.join("master.key"), d.join("master.key")).unwrap();
            d
        };
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir_i)
            .args(&db_args)
            .env("TARMO_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        bases.push(
            line.trim()
                .strip_prefix("listening on ")
                .unwrap()
                .to_owned(),
        );
        children.push(child);
    }
    let base = bases[0].clone();
    let mut child = children.remove(0);
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write}:"))
    );

    let batches = total / 100;
    let bodies: Vec<Arc<Vec<u8>>> = (0..batches)
        .map(|b| Arc::new(batch(b, customers, identify_every).to_string().into_bytes()))
        .collect();
    let avg_bytes = bodies.iter().map(|b| b.len()).sum::<usize>() / bodies.len() / 100;
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (next, lat, bodies, base, auth) = (
                next.clone(),
                lat.clone(),
                bodies.clone(),
                bases[k as usize % bases.len()].clone(),
                auth.clone(),
            );
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() as u64 {
                        break;
                    }
                    let t = Instant::now();
                    let r = agent
                        .post(format!("{base}/v1/batch"))
                        .header("Authorization", &auth)
                        .header("Content-Type", "application/json")
                        .send(&bodies[i as usize][..])
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    mine.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    // Lookups by email while the burst runs, one every 20 ms, of customers
    // whose identify was already sent: a profile view during ingestion
    // (it reads the segment engine's state, which the engine's ticks take).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = {
        let (next, done, base, admin) = (next.clone(), done.clone(), base.clone(), admin.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let (mut found, mut missing) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                // Identifies in the batches at least 2 s old at this rate.
                let sent = next.load(Ordering::Relaxed).saturating_sub(clients * 4) * 100;
                let identifies = sent / identify_every;
                if identifies == 0 {
                    continue;
                }
                i += 1;
                let c = customer(((i * 7919) % identifies) * identify_every, customers);
                match lookup(&agent, &base, &admin, c) {
                    Some(ms) => found.push(ms),
                    None => missing += 1,
                }
            }
            (found, missing)
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (mut found, missing) = during.join().unwrap();
    let mut l = lat.lock().unwrap().clone();
    let ingest_rate = (batches * 100) as f64 / secs;
    println!(
        "ingest: {} events ({avg_bytes} B avg JSON each, one identify in {identify_every}), {clients} clients, {customers} customers, {nodes} node(s)",
        batches * 100
    );
    println!(
        "ingest: {:.0} events/s; batch latency p50 {:.1} ms, p99 {:.1} ms",
        ingest_rate,
        pct(&mut l, 0.5),
        pct(&mut l, 0.99)
    );
    if !found.is_empty() {
        println!(
            "lookup by email over HTTP during ingestion: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} found, {missing} without an email)",
            pct(&mut found, 0.5),
            pct(&mut found, 0.99),
            pct(&mut found, 1.0),
            found.len()
        );
    }

    // Lookup by email over HTTP.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // 2,000 lookups that find someone (a p99 of fewer is a handful of the
    // slowest), one after another.
    let lookups = |when: &str| {
        let mut ll = Vec::new();
        let mut not_found = 0;
        let identifies = batches * 100 / identify_every;
        let mut i = 0u64;
        while ll.len() < 2000 && i < 100 * 2000 {
            // A customer who was identified (with an email): the k-th identify.
            let k = (i * 7919) % identifies;
            i += 1;
            let c = customer(k * identify_every, customers);
            // A client key's claims do not add an email to a known person (the
            // trust model), so some customers have none: count them apart.
            match lookup(&agent, &base, &admin, c) {
                Some(ms) => ll.push(ms),
                None => not_found += 1,
            }
        }
        if when.is_empty() {
            println!(
                "lookup by email: {not_found} of {i} customers hold no email (client-key claims)"
            );
        }
        let over = ll.iter().filter(|ms| **ms > 2.0).count();
        println!(
            "lookup by email over HTTP{when}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {over} of {} over 2 ms",
            pct(&mut ll, 0.5),
            pct(&mut ll, 0.99),
            pct(&mut ll, 1.0),
            ll.len()
        );
    };
    // Right after the last batch, while the checkpointer copies the burst's
    // log into the database (each lookup's flush waits behind that copy).
    lookups("");
    // Again once the log is folded in and cut back (the embedded store):
    // lookups on a quiet store.
    let wal = data.join("tarmo.db-wal");
    if wal.exists() {
        let waited = Instant::now();
        while std::fs::metadata(&wal).map_or(0, |m| m.len()) > 4 << 20
            && waited.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        let log_mb = std::fs::metadata(&wal).map_or(0, |m| m.len()) as f64 / 1e6;
        lookups(&format!(
            " after the log was folded in ({:.0} s later, log {log_mb:.1} MB)",
            waited.elapsed().as_secs_f64()
        ));
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .map(|s| {
            // VmRSS, and how much of it is the database's pages mapped in
            // (RssFile: page cache, given back under memory pressure).
            s.lines()
                .filter(|l| {
                    ["VmRSS", "RssAnon", "RssFile"]
                        .iter()
                        .any(|k| l.starts_with(k))
                })
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!("server {rss}");
    // Where the writer's time went: groups, events a group, time to commit a
    // group, time to flush the log.
    let metrics = agent
        .get(format!("{base}/metrics"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let sum_count = |name: &str| -> (f64, f64) {
        let get = |suffix: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("{name}{suffix}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (get("_sum"), get("_count"))
    };
    let (commit_s, groups) = sum_count("tarmo_store_commit_seconds");
    let (group_ev, _) = sum_count("tarmo_store_group_events");
    let (flush_s, flushes) = sum_count("tarmo_store_flush_seconds");
    println!(
        "writer: {groups:.0} groups, {:.0} events a group, {:.1} ms to commit a group (busy {:.0} % of the run); {flushes:.0} log flushes, {:.1} ms each",
        group_ev / groups.max(1.0),
        commit_s * 1000.0 / groups.max(1.0),
        commit_s * 100.0 / secs,
        flush_s * 1000.0 / flushes.max(1.0),
    );
    // How long the segment engine's ticks held its state at a time (a
    // profile view or lookup waits for it): holds, in all, and how many
    // over 10 ms.
    let (held_s, holds) = sum_count("tarmo_segment_engine_held_seconds");
    let under_10ms = metrics
        .lines()
        .find(|l| l.starts_with("tarmo_segment_engine_held_seconds_bucket{le=\"0.01\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if holds > 0.0 {
        println!(
            "segment engine: held its state {holds:.0} times, {:.2} s in all ({:.1} % of the burst's time), {:.0} times over 10 ms",
            held_s,
            held_s * 100.0 / secs,
            holds - under_10ms
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    if db_url.is_none() {
        disk_per_event(&data);
    }
    packing(customers);
    if let Some(url) = &db_url {
        // PostgreSQL's raw limit in the same run: the same rows, a unique
        // random messageId index, multi-row INSERTs of 1000 in transactions
        // of 1000.
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.batch_execute(
            "DROP TABLE IF EXISTS raw_limit;
             CREATE TABLE raw_limit (id BIGSERIAL PRIMARY KEY, mid TEXT NOT NULL UNIQUE, body BYTEA NOT NULL)",
        )
        .unwrap();
        let body = vec![7u8; avg_bytes];
        let n = env_or("RAW_ROWS", batches * 100).min(batches * 100);
        let t = Instant::now();
        for chunk in 0..(n / 1000).max(1) {
            let mids: Vec<String> = (0..1000u64)
                .map(|i| {
                    let k = (chunk * 1000 + i).wrapping_mul(0x9E3779B97F4A7C15);
                    format!("{k:016x}-msg")
                })
                .collect();
            let bodies: Vec<&[u8]> = (0..1000).map(|_| &body[..]).collect();
            let mut tx = c.transaction().unwrap();
            tx.execute(
                "INSERT INTO raw_limit (mid, body) SELECT * FROM unnest($1::text[], $2::bytea[])",
                &[&mids, &bodies],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let raw_rate = n as f64 / t.elapsed().as_secs_f64();
        // The same rows again through COPY (text format, the body as hex),
        // 1000 a transaction, into the emptied table.
        c.batch_execute("TRUNCATE raw_limit").unwrap();
        let hex_body = format!("\\\\x{}", hex_of(&body));
        let t = Instant::now();
        for chunk in 0..(n / 1000).max(1) {
            let mut text = String::with_capacity(1000 * (hex_body.len() + 32));
            for i in 0..1000u64 {
                let k = (chunk * 1000 + i).wrapping_mul(0x9E3779B97F4A7C15);
                text.push_str(&format!("{k:016x}-msg\t{hex_body}\n"));
            }
            let mut tx = c.transaction().unwrap();
            let mut w = tx.copy_in("COPY raw_limit (mid, body) FROM STDIN").unwrap();
            std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
            w.finish().unwrap();
            tx.commit().unwrap();
        }
        let copy_rate = n as f64 / t.elapsed().as_secs_f64();
        c.batch_execute("DROP TABLE raw_limit").unwrap();
        println!(
            "raw PostgreSQL limit (same rows, multi-row INSERT of 1000, no HTTP/crypto/identity): {raw_rate:.0} rows/s"
        );
        println!("raw PostgreSQL COPY (same rows, 1000 a transaction): {copy_rate:.0} rows/s");
        println!(
            "ratio tarmo/raw: {:.2} (to COPY: {:.2})",
            ingest_rate / raw_rate,
            ingest_rate / copy_rate
        );
        return;
    }

    // The raw limit in the same run: same row count and size, one unique
    // random messageId index, transactions of 1000, WAL, synchronous=FULL.
    let raw = dir.path().join("raw.db");
    let c = rusqlite::Connection::open(&raw).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    // Two tables: `e` with a unique random messageId index (the raw limit
    // of every earlier figure), `a` the same rows appended in arrival
    // order with no index beside the rowid (what a layout without random
    // writes could reach).
    c.execute_batch(
        "CREATE TABLE e (id INTEGER PRIMARY KEY, mid TEXT NOT NULL UNIQUE, body BLOB NOT NULL);
         CREATE TABLE a (id INTEGER PRIMARY KEY, mid TEXT NOT NULL, body BLOB NOT NULL);",
    )
    .unwrap();
    let body = vec![7u8; avg_bytes];
    // RAW_ROWS caps it for very large runs (it then flatters the raw limit:
    // a smaller index is faster to insert into).
    let n = env_or("RAW_ROWS", batches * 100).min(batches * 100);
    let rate = |table: &str| {
        let t = Instant::now();
        for chunk in 0..(n / 1000).max(1) {
            let tx = c.unchecked_transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached(&format!("INSERT INTO {table} (mid, body) VALUES (?1, ?2)"))
                    .unwrap();
                for i in 0..1000u64 {
                    let k = (chunk * 1000 + i).wrapping_mul(0x9E3779B97F4A7C15);
                    st.execute(rusqlite::params![format!("{k:016x}-msg"), &body])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let raw_rate = rate("e");
    let append_rate = rate("a");
    println!("raw SQLite limit (same rows, no HTTP/crypto/identity): {raw_rate:.0} rows/s");
    println!("raw SQLite appends (same rows in arrival order, no index): {append_rate:.0} rows/s");
    println!(
        "ratio tarmo/raw: {:.2} (to appends: {:.2})",
        ingest_rate / raw_rate,
        ingest_rate / append_rate
    );
    // The access journal's raw limit: one 512-byte write and fdatasync at a
    // time into space written beforehand (what a lookup's record waits for).
    let path = dir.path().join("raw.journal");
    let f = std::fs::File::create(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 1 << 20], 0).unwrap();
    f.sync_all().unwrap();
    let t = Instant::now();
    for i in 0..2000u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 512], (i % 2048) * 512).unwrap();
        f.sync_data().unwrap();
    }
    println!(
        "raw flushes (512 B written and fdatasync'd into pre-written space, one at a time): {:.0}/s",
        2000.0 / t.elapsed().as_secs_f64()
    );
}

/// Bytes as lowercase hex (PostgreSQL's bytea text form after `\x`).
fn hex_of(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(2 * b.len()), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Bytes on disk per event once the log is folded in: the whole store
/// (`tarmo.db` and `keyring.db`) and each table's and index's share, from
/// SQLite's `dbstat` (pages actually used, so free pages do not count).
fn disk_per_event(data: &std::path::Path) {
    let c = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let events: i64 = c
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let body: f64 = c
        .query_row("SELECT avg(length(body)) FROM events", [], |r| r.get(0))
        .unwrap();
    let mut st = c
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .unwrap();
    let parts: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let keyring = std::fs::metadata(data.join("keyring.db"))
        .map(|m| m.len())
        .unwrap_or(0) as i64;
    let total = parts.iter().map(|p| p.1).sum::<i64>() + keyring;
    let per = |b: i64| b as f64 / events.max(1) as f64;
    println!(
        "disk: {:.0} B an event after a checkpoint ({events} events; {:.1} MB in tables and indexes, keyring {:.1} MB); sealed body {body:.0} B on average",
        per(total),
        total as f64 / 1e6,
        keyring as f64 / 1e6,
    );
    let top: Vec<String> = parts
        .iter()
        .take(8)
        .map(|(n, b)| format!("{n} {:.0}", per(*b)))
        .collect();
    println!("disk: B an event by table: {}", top.join(", "));
}

/// What packing an event body costs, in this process, on the bench's own
/// messages serialised as the server keeps them (keys sorted, no spaces).
fn packing(customers: u64) {
    use tarmo_store::crypto::packed::{pack, unpack};
    let msgs: Vec<Vec<u8>> = (0..20u64)
        .flat_map(|b| {
            batch(b, customers, 10)["batch"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| serde_json::to_vec(m).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let rounds = 50;
    let t = Instant::now();
    let mut packed = Vec::new();
    for _ in 0..rounds {
        packed = msgs.iter().map(|m| pack(m.clone())).collect();
    }
    let pack_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * msgs.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in &packed {
            std::hint::black_box(unpack(p.clone()).unwrap());
        }
    }
    let unpack_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * msgs.len()) as f64;
    let json: usize = msgs.iter().map(Vec::len).sum();
    let small: usize = packed.iter().map(Vec::len).sum();
    println!(
        "packing: {:.0} B of JSON to {:.0} B ({:.2}x); pack {pack_us:.2} µs, unpack {unpack_us:.2} µs a message (one thread)",
        json as f64 / msgs.len() as f64,
        small as f64 / msgs.len() as f64,
        json as f64 / small as f64,
    );
}

/// Look customer `c` up by email: milliseconds taken, or `None` when no one
/// holds that email.
fn lookup(agent: &ureq::Agent, base: &str, admin: &str, c: u64) -> Option<f64> {
    let t = Instant::now();
    let r = agent
        .get(format!(
            "{base}/api/v1/profiles/lookup?type=email&value=customer{c}%40example.com"
        ))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    match r.status().as_u16() {
        200 => Some(t.elapsed().as_secs_f64() * 1000.0),
        404 => None,
        other => panic!("lookup answered {other}"),
    }
}
