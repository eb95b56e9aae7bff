//! Imports of the offline register on the embedded store: CUSTOMERS
//! customers and ORDER_LINES order lines (1-5 lines an order) from CSV,
//! through the whole use case (parse and check every row on every core,
//! blind indexes, identity resolution, sealing, writer transactions of
//! `imports::CHUNK` records with a checkpoint each), then the same files
//! again unchanged. Beside them, in the same run, the raw limit: plain
//! SQLite inserts of 400-byte rows with a unique index on a random text
//! key, in transactions of 1000 (as `limits.md` measures it).
//!
//! cargo bench -p tarmo-store --bench imports   (env: CUSTOMERS, ORDER_LINES;
//! PARSE_ONLY=1 stops after parsing, AGAIN=0 skips the unchanged re-imports)

mod common;

use std::fmt::Write as _;
use std::time::Instant;

use tarmo_core::identity::IdentityConfig;
use tarmo_store::imports::{self, Format, ImportKind, ImportSpec, Mapping};
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// splitmix64: the same data every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const CITIES: [&str; 5] = ["Helsinki", "Tampere", "Turku", "Oulu", "Espoo"];

fn customers_csv(n: u64) -> String {
    let mut s = String::from("email,loyalty_card,first_name,city,birthday\n");
    for i in 0..n {
        let r = mix(i);
        let _ = writeln!(
            s,
            "c{i}@example.fi,LC-{i:08},Name{},{},19{}-0{}-1{}",
            r % 1000,
            CITIES[(r % 5) as usize],
            50 + r % 50,
            1 + r % 9,
            r % 10
        );
    }
    s
}

fn orders_csv(customers: u64, lines: u64) -> String {
    let mut s = String::from(
        "order_id,ordered_at,loyalty_card,store_id,currency,product_id,quantity,price\n",
    );
    let (mut written, mut order) = (0u64, 0u64);
    while written < lines {
        let r = mix(order + 1_000_000_007);
        let n = (1 + r % 5).min(lines - written);
        let day = 1 + r % 28;
        for l in 0..n {
            let _ = writeln!(
                s,
                "R{order},2026-10-{day:02}T1{}:00:00Z,LC-{:08},S{},EUR,P{},{},{}.{:02}",
                r % 10,
                r % customers,
                r % 40,
                mix(r + l) % 5000,
                1 + l % 3,
                1 + mix(r ^ l) % 60,
                mix(l) % 100
            );
        }
        written += n;
        order += 1;
    }
    s
}

/// Plain SQLite: 400-byte rows, unique index on a random text key,
/// transactions of 1000.
fn raw_sqlite(dir: &std::path::Path, n: u64) -> f64 {
    let c = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, body BLOB NOT NULL);",
    )
    .unwrap();
    let body = vec![7u8; 400];
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        c.execute_batch("BEGIN").unwrap();
        {
            let mut st = c
                .prepare_cached("INSERT INTO t (k, body) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..1000.min(n - i) {
                st.execute(rusqlite::params![format!("{:016x}", mix(i)), &body])
                    .unwrap();
                i += 1;
            }
        }
        c.execute_batch("COMMIT").unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The process's peak resident memory so far (VmHWM), in MB.
fn peak_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn spec(kind: ImportKind) -> ImportSpec {
    ImportSpec {
        kind,
        format: Format::Csv,
        mapping: Mapping::default(),
        source: "bench".into(),
        documentation: "bench".into(),
        file_name: format!("{}.csv", kind.as_str()),
        skip_invalid: false,
        dry_run: false,
    }
}

fn main() {
    let customers = env_or("CUSTOMERS", 20_000);
    let lines = env_or("ORDER_LINES", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        Backend::open(dir.path(), None).unwrap(),
        &MasterKey::generate().unwrap(),
        200_000,
    )
    .unwrap();
    store
        .transact_direct(|c, _| tarmo_store::consent::seed_defaults(c, 1_000))
        .unwrap();
    let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
    let cfg = IdentityConfig::new(Some("FI"), &["loyalty_card".into()]).unwrap();

    let raw_n = customers.clamp(10_000, 200_000);
    let raw = raw_sqlite(dir.path(), raw_n);
    println!("raw SQLite inserts ({raw_n} rows, txn 1000): {raw:.0} rows/s");

    let c = customers_csv(customers);
    let o = orders_csv(customers, lines);
    println!(
        "files: {} MB of customers, {} MB of order lines (peak RSS so far {} MB)",
        c.len() >> 20,
        o.len() >> 20,
        peak_mb()
    );
    let run = |kind: ImportKind, csv: &str, what: &str| -> f64 {
        let t = Instant::now();
        let done = imports::run(
            &store,
            &writer,
            &cfg,
            spec(kind),
            csv.as_bytes(),
            None,
            |_, _| {},
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let r = &done.report;
        assert_eq!(r.invalid, 0, "{:?}", r.errors.first());
        println!(
            "{what}: {} rows in {secs:.2} s = {:.0} rows/s ({} records: {} new, {} updated, {} unchanged; peak RSS so far {} MB)",
            r.rows,
            r.rows as f64 / secs,
            r.records,
            r.created,
            r.updated,
            r.unchanged,
            peak_mb()
        );
        secs
    };
    // Where the time goes: parsing and checking alone (blind indexes,
    // keyed row hashes), which a re-import of an unchanged file mostly is.
    for (kind, csv, what) in [
        (ImportKind::Customers, &c, "customers"),
        (ImportKind::Orders, &o, "order lines"),
    ] {
        let t = Instant::now();
        let p = imports::parse(
            &spec(kind),
            csv.as_bytes(),
            &cfg,
            store.vault(),
            tarmo_store::now_ms(),
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{what}, parse and check only: {} rows in {secs:.2} s = {:.0} rows/s (peak RSS so far {} MB)",
            p.report.rows,
            p.report.rows as f64 / secs,
            peak_mb()
        );
    }
    if env_or("PARSE_ONLY", 0) == 1 {
        return;
    }
    let again = env_or("AGAIN", 1) == 1;
    let first_c = run(ImportKind::Customers, &c, "customers, first import");
    if again {
        let again = run(ImportKind::Customers, &c, "customers, unchanged re-import");
        println!(
            "customers re-import: {:.1}× faster than the first",
            first_c / again
        );
    }
    let first_o = run(ImportKind::Orders, &o, "order lines, first import");
    if again {
        let again = run(ImportKind::Orders, &o, "order lines, unchanged re-import");
        println!(
            "orders re-import: {:.1}× faster than the first",
            first_o / again
        );
    }
    println!(
        "both files, first import: {} rows in {:.2} s = {:.0} rows/s",
        customers + lines,
        first_c + first_o,
        (customers + lines) as f64 / (first_c + first_o)
    );
    drop(writer);
    join.join().unwrap();
}
