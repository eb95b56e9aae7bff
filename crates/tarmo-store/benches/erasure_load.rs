//! Erasure latency while the store ingests as fast as it can (issue 16:
//! erasure p99 under 100 ms under load): two threads ingest batches of 500
//! events for LOAD_SECONDS; meanwhile one person is erased every 200 ms
//! (rows, data keys, suppression, truncating checkpoint), timed from the
//! queueing of the job to its answer. Then the same erasures on the idle
//! store. Raw limit in the same run: one fsync'd commit of a small row
//! (SQLite, WAL, synchronous=FULL), p99.
//!
//! cargo bench -p tarmo-store --bench erasure_load   (env: LOAD_SECONDS, PEOPLE)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tarmo_core::identity::{IdentifierKind, IdentityConfig};
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_store::conn::ProfileId;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store, consent, erasure};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let load_seconds = env_or("LOAD_SECONDS", 20);
    let people = env_or("PEOPLE", 100);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            Backend::open(dir.path(), None).unwrap(),
            &MasterKey::generate().unwrap(),
            200_000,
        )
        .unwrap(),
    );
    store
        .transact_direct(|c, _| consent::seed_defaults(c, 1))
        .unwrap();
    let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
    let cfg = Arc::new(IdentityConfig::default());

    let prepare = |v: serde_json::Value| {
        store.prepare(
            parse_message(v, 0, None, BatchDefaults::default(), 1, &cfg).unwrap(),
            tarmo_core::ids::KeyId(1),
        )
    };
    // The people to erase: an address, traits and 20 events each.
    let mut ids = Vec::new();
    for p in 0..people {
        let mut batch = vec![prepare(
            json!({"type": "identify", "userId": format!("erase-{p}"),
            "messageId": format!("e{p}"), "traits": {"email": format!("erase{p}@example.com"), "city": "Oulu"}}),
        )];
        for i in 0..20 {
            batch.push(prepare(json!({"type": "track", "userId": format!("erase-{p}"),
                "event": "Product Viewed", "messageId": format!("e{p}-{i}"), "properties": {"sku": i}})));
        }
        writer.submit_blocking(batch).unwrap();
        ids.push(
            store
                .find_profile(
                    &cfg.identifier(IdentifierKind::UserId, &format!("erase-{p}"))
                        .unwrap(),
                )
                .unwrap()
                .unwrap(),
        );
    }

    let erase = |id: i64| {
        let t = Instant::now();
        writer
            .transact_blocking(move |ctx| erasure::erase_profile(ctx, ProfileId(id), None, true))
            .unwrap();
        t.elapsed().as_secs_f64() * 1000.0
    };

    // Heavy ingestion on two threads.
    let stop = Arc::new(AtomicBool::new(false));
    let ingested = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..2u64)
        .map(|t| {
            let (stop, ingested, writer, store, cfg) = (
                stop.clone(),
                ingested.clone(),
                writer.clone(),
                store.clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<_> = (0..500)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            n += 1;
                            let v = json!({"type": "track", "userId": format!("u{}", x % 200_000),
                                "event": "Page Viewed", "messageId": format!("l{t}-{n}"),
                                "properties": {"path": format!("/p/{}", x % 1000), "ms": x % 5000}});
                            store.prepare(
                                parse_message(v, 0, None, BatchDefaults::default(), 1, &cfg)
                                    .unwrap(),
                                tarmo_core::ids::KeyId(1),
                            )
                        })
                        .collect();
                    writer.submit_blocking(batch).unwrap();
                    ingested.fetch_add(500, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let half = ids.len() / 2;
    let began = Instant::now();
    // Let the log grow first, as after minutes of ingestion.
    std::thread::sleep(Duration::from_secs(load_seconds / 4));
    let per = Duration::from_secs(load_seconds) * 3 / 4 / half.max(1) as u32;
    let mut loaded: Vec<f64> = Vec::new();
    for &id in &ids[..half] {
        std::thread::sleep(per.max(Duration::from_millis(200)));
        loaded.push(erase(id.0));
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let rate = ingested.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64();
    let ckpt = &store.metrics.checkpoint_seconds;
    let (load_n, load_ms) = (ckpt.count(), ckpt.sum_seconds() * 1000.0);
    let mut idle: Vec<f64> = ids[half..]
        .iter()
        .map(|&id| {
            std::thread::sleep(Duration::from_millis(20));
            erase(id.0)
        })
        .collect();
    let (ckpt_n, ckpt_ms) = (ckpt.count() - load_n, ckpt.sum_seconds() * 1000.0 - load_ms);
    drop(writer);
    join.join().unwrap();

    // Raw: one small fsync'd commit.
    let raw = {
        let c = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let mut v: Vec<f64> = (0..300)
            .map(|i| {
                let t = Instant::now();
                c.execute(
                    "INSERT INTO t (id, v) VALUES (?1, ?2)",
                    rusqlite::params![i, vec![7u8; 200]],
                )
                .unwrap();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        pct(&mut v, 0.99)
    };

    // The slowest five of each, and where they fell in their series.
    let slowest = |v: &[f64]| -> String {
        let mut at: Vec<(usize, f64)> = v.iter().copied().enumerate().collect();
        at.sort_by(|a, b| b.1.total_cmp(&a.1));
        at.iter()
            .take(5)
            .map(|(i, ms)| format!("#{i} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (slow_loaded, slow_idle) = (slowest(&loaded), slowest(&idle));
    println!("ingestion during the run: {rate:.0} events/s (two threads, batches of 500)");
    println!(
        "erasure under load ({} people): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        loaded.len(),
        pct(&mut loaded, 0.5),
        pct(&mut loaded, 0.99),
        pct(&mut loaded, 1.0)
    );
    println!(
        "erasure idle ({} people): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        idle.len(),
        pct(&mut idle, 0.5),
        pct(&mut idle, 0.99),
        pct(&mut idle, 1.0)
    );
    println!("slowest under load: {slow_loaded}; idle: {slow_idle}");
    println!(
        "truncating checkpoint: {:.1} ms on average under load ({load_n}), {:.1} ms idle ({ckpt_n})",
        load_ms / load_n.max(1) as f64,
        ckpt_ms / ckpt_n.max(1) as f64
    );
    println!("raw limit: fsync'd commit of one small row, p99 {raw:.1} ms");
}
