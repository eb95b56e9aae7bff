//! `GET /api/v1/decisions` and single-entry `POST /api/v1/consents` (32
//! clients, and one) over loopback against a release `tarmo serve` on
//! the embedded store, driven by wrk (Debian package `wrk`) with random
//! people, next to the raw limit of the same run: wrk against a static route
//! that touches neither keys nor the store (`/.well-known/gpc.json`). Also
//! times the seeding through `POST /api/v1/consents` (batches of 1,000,
//! creating each person's profile).
//!
//! cargo bench -p tarmo-cli --bench decisions   (env: PEOPLE, SECONDS, CONNECTIONS,
//! TARMO_BIN: another `tarmo` binary to measure, e.g. an older build, for an
//! A/B comparison in the same session)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: bool,
}

fn ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        f64::NAN
    }
}

fn wrk(url: &str, script: Option<&std::path::Path>, seconds: u64, conns: u64) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args([
        // wrk needs at least one connection per thread.
        &format!("-t{}", conns.min(2)),
        &format!("-c{conns}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is needed: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    };
    Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50_ms: ms(&field("50%")),
        p99_ms: ms(&field("99%")),
        errors: text.contains("Non-2xx") || text.contains("Socket errors"),
    }
}

fn main() {
    let people = env_or("PEOPLE", 100_000);
    let seconds = env_or("SECONDS", 10);
    let conns = env_or("CONNECTIONS", 32);
    let bin = std::env::var("TARMO_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tarmo").to_owned());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // DATABASE_URL=postgres://... measures the PostgreSQL store instead.
    let db_args: Vec<String> = std::env::var("DATABASE_URL")
        .ok()
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
    let admin = keys["admin_key"].as_str().unwrap().to_owned();
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(&db_args)
        .env("TARMO_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into();
    let t = Instant::now();
    for start in (0..people).step_by(1000) {
        let entries: Vec<Value> = (start..(start + 1000).min(people))
            .map(|i| {
                json!({"subject": {"type": "email", "value": format!("p{i}@example.com")},
                    "purpose": "email_marketing",
                    "decision": if i % 5 == 0 { "withdrawn" } else { "granted" },
                    "method": "web_form", "source": "bench form",
                    "evidence": {"ip": "198.51.100.7", "user_agent": "Mozilla/5.0"}})
            })
            .collect();
        let r = agent
            .post(format!("{base}/api/v1/consents"))
            .header("Authorization", &format!("Bearer {admin}"))
            .header("Content-Type", "application/json")
            .send(json!({"entries": entries}).to_string().as_bytes())
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let seed_rate = people as f64 / t.elapsed().as_secs_f64();

    let script = |query: &str| {
        let path = dir.path().join(format!("{}.lua", query.len()));
        std::fs::write(
            &path,
            format!(
                "wrk.headers[\"Authorization\"] = \"Bearer {admin}\"\n\
                 math.randomseed(42)\n\
                 request = function()\n  local i = math.random(0, {})\n  \
                 return wrk.format(\"GET\", \"/api/v1/decisions?purpose=email_marketing&channel=email&{query}\")\nend\n",
                people - 1
            ),
        )
        .unwrap();
        path
    };
    let by_email = script("type=email&value=p\" .. i .. \"%40example.com");
    let by_id = script("profile=\" .. (i + 1) .. \"");
    // Warm up the server's caches and the page cache.
    wrk(&base, Some(&by_email), 2, conns);
    let raw = wrk(
        &format!("{base}/.well-known/gpc.json"),
        None,
        seconds,
        conns,
    );
    let email = wrk(&base, Some(&by_email), seconds, conns);
    let id = wrk(&base, Some(&by_id), seconds, conns);
    // Single-entry consent writes from many clients at once: each request
    // is a transaction job of its own, and those waiting together share a
    // transaction and a flush.
    let writes_script = dir.path().join("writes.lua");
    std::fs::write(
        &writes_script,
        format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {admin}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             math.randomseed(7)\n\
             local n = 0\n\
             request = function()\n  local i = math.random(0, {})\n  n = n + 1\n  \
             local d = (n % 2 == 0) and \"granted\" or \"withdrawn\"\n  \
             local body = '{{\"subject\":{{\"type\":\"email\",\"value\":\"p' .. i .. '@example.com\"}},\"purpose\":\"email_marketing\",\"decision\":\"' .. d .. '\",\"method\":\"web_form\",\"source\":\"bench form\",\"evidence\":{{\"ip\":\"198.51.100.7\",\"user_agent\":\"Mozilla/5.0\"}}}}'\n  \
             return wrk.format(\"POST\", \"/api/v1/consents\", nil, body)\nend\n",
            people - 1
        ),
    )
    .unwrap();
    let metric = |name: &str| -> f64 {
        let body = agent
            .get(format!("{base}/metrics"))
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = (
        metric("tarmo_store_tx_jobs_total"),
        metric("tarmo_store_tx_commits_total"),
    );
    let writes = wrk(&base, Some(&writes_script), seconds, conns);
    let jobs_per_commit = (metric("tarmo_store_tx_jobs_total") - before.0)
        / (metric("tarmo_store_tx_commits_total") - before.1).max(1.0);
    let writes_one = wrk(&base, Some(&writes_script), seconds, 1);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!email.errors && !id.errors, "wrk saw errors");
    assert!(
        !writes.errors && !writes_one.errors,
        "wrk saw errors writing"
    );
    // The disk's raw limit in the same run: small appends, each made
    // durable (fdatasync) before the next, as one commit at a time would be.
    let fsync_rate = {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.path().join("fsync.bin")).unwrap();
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < 3.0 {
            f.write_all(&[7u8; 128]).unwrap();
            f.sync_data().unwrap();
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };

    // With PostgreSQL, its own raw limits in the same run (pgbench and
    // psql, which come with it): single-row INSERT transactions from as
    // many clients as the writes had, 1,000-row INSERTs from one client (as
    // the seeding sends), and COPY.
    let pg_raw = std::env::var("DATABASE_URL")
        .ok()
        .map(|url| pg_raw_limits(&url, dir.path(), seconds, conns));

    println!("people with a recorded consent: {people}");
    println!(
        "seeding through POST /api/v1/consents (1,000 a request, new profiles): {seed_rate:.0} entries/s"
    );
    println!(
        "wrk, 2 threads, {conns} connections, {seconds} s each, load generator on the same 2 cores:"
    );
    println!(
        "  raw limit: GET /.well-known/gpc.json  {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
        raw.rps, raw.p50_ms, raw.p99_ms
    );
    println!("  raw limit: fdatasync'd 128-byte appends, one at a time: {fsync_rate:.0}/s");
    for (name, w, c) in [
        ("single-entry consent writes", &writes, conns),
        ("single-entry consent writes", &writes_one, 1),
    ] {
        println!(
            "  POST /api/v1/consents {name}, {c} connection(s): {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ({:.1} per fdatasync of the raw limit)",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.rps / fsync_rate
        );
    }
    println!("  the writer, {conns} connections: {jobs_per_commit:.1} writes a transaction");
    if let Some((single, multi, copy)) = pg_raw {
        println!(
            "  raw limit (PostgreSQL): single-row INSERT transactions, {conns} clients: {single:.0}/s; \
             1,000-row INSERTs, one client: {multi:.0} rows/s; COPY: {copy:.0} rows/s"
        );
    }
    for (name, w) in [("by email", &email), ("by profile id", &id)] {
        println!(
            "  GET /api/v1/decisions {name:<14} {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ratio {:.2}",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.rps / raw.rps
        );
    }
}

/// PostgreSQL's raw limits beside the consent writes, on a table of rows
/// the size of a ledger entry: committed single-row INSERT transactions a
/// second from `conns` clients (pgbench), rows a second as 1,000-row
/// INSERTs from one client (pgbench), and rows a second by COPY (psql).
fn pg_raw_limits(url: &str, dir: &std::path::Path, seconds: u64, conns: u64) -> (f64, f64, f64) {
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(
        "DROP TABLE IF EXISTS raw_limit; CREATE TABLE raw_limit (seq BIGSERIAL PRIMARY KEY, \
         profile_id BIGINT NOT NULL, purpose_id TEXT NOT NULL, decision TEXT NOT NULL, \
         at_ms BIGINT NOT NULL, evidence BYTEA NOT NULL)",
    );
    let row = "(random() * 100000)::bigint, 'email_marketing', 'granted', 1764979200000, \
               decode(repeat('ab', 160), 'hex')";
    let pgbench = |script: &str, clients: u64| -> f64 {
        let path = dir.join(format!("pgbench-{clients}.sql"));
        std::fs::write(&path, script).unwrap();
        let out = Command::new("pgbench")
            .args([
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-f",
            ])
            .arg(&path)
            .arg(url)
            .output()
            .expect("pgbench runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr)))
    };
    let single = pgbench(
        &format!(
            "INSERT INTO raw_limit (profile_id, purpose_id, decision, at_ms, evidence) VALUES ({row});\n"
        ),
        conns,
    );
    let multi = 1000.0
        * pgbench(
            &format!(
                "INSERT INTO raw_limit (profile_id, purpose_id, decision, at_ms, evidence) \
                 SELECT {row} FROM generate_series(1, 1000);\n"
            ),
            1,
        );
    let csv = dir.join("raw.csv");
    let rows = 200_000;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        let evidence = format!("\\x{}", "ab".repeat(160));
        for i in 0..rows {
            writeln!(
                f,
                "{},email_marketing,granted,1764979200000,{evidence}",
                i % 100_000
            )
            .unwrap();
        }
    }
    let t = Instant::now();
    psql(&format!(
        "\\copy raw_limit (profile_id, purpose_id, decision, at_ms, evidence) FROM '{}' WITH (FORMAT csv)",
        csv.display()
    ));
    let copy = rows as f64 / t.elapsed().as_secs_f64();
    psql("DROP TABLE raw_limit");
    (single, multi, copy)
}
