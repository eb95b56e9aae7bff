//! Segments at scale on the embedded store: PROFILES people with EVENTS
//! events (orders and product views over two years), half of them
//! consenting to email and to ad audiences. Measures, in one run:
//!
//! - the engine's start (everyone's facts opened from the store) and its
//!   memory;
//! - the count of "≥ 3 orders in 365 days, revenue > 500, and email
//!   consent" over everyone, beside the same question as hand-written SQL
//!   over a plaintext events table in SQLite (covering index) — the raw
//!   limit of answering it from a database;
//! - live membership: time from an acknowledged event to the person's
//!   membership, while a background load ingests LOAD events a second with
//!   20 segments defined;
//! - an audience sync of everyone with an email who allows ads.
//!
//! cargo bench -p tarmo-store --bench segments   (env: PROFILES, EVENTS, LOAD,
//! LOADERS; SKIP_LIVE=1 leaves out the 20 segments and live membership)
//!
//! With `DATA_DIR`, the stored data (and the bench's own master key, mode
//! 0600) are kept there and reused by later runs with the same sizes, so the
//! ingestion is paid once; `SETUP_ONLY=1` stops after it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_core::identity::IdentityConfig;
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_core::segments::audience::AudienceFormat;
use tarmo_core::segments::{LifecycleConfig, Rule, text};
use tarmo_store::conn::ProfileId;
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::segments::SegmentDef;
use tarmo_store::segments::audiences::AudienceDef;
use tarmo_store::segments::engine::SegmentEngine;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store, now_ms};

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

/// A field of `/proc/self/status` in kB, as MB (0 where there is none).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// The RSS in anonymous memory (the heap: facts, caches) and in pages of
/// files mapped, in MB.
fn rss_split() -> (f64, f64) {
    (status_mb("RssAnon:"), status_mb("RssFile:"))
}

/// The process's peak RSS so far.
fn hwm_mb() -> f64 {
    status_mb("VmHWM:")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let profiles = env_or("PROFILES", 100_000);
    let events = env_or("EVENTS", 1_000_000);
    let load = env_or("LOAD", 10_000);
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var("DATA_DIR").ok().map(|d| {
        let d = std::path::PathBuf::from(d).join(format!("p{profiles}-e{events}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let path = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let ready = kept.as_ref().is_some_and(|d| d.join("ready").exists());
    let master = match &kept {
        Some(d) if ready => MasterKey::load(&d.join("master.key")).unwrap(),
        Some(d) => {
            // A setup that did not finish starts over.
            for f in std::fs::read_dir(d).unwrap() {
                let f = f.unwrap().path();
                if f.is_dir() {
                    std::fs::remove_dir_all(&f).unwrap();
                } else {
                    std::fs::remove_file(&f).unwrap();
                }
            }
            let k = MasterKey::generate().unwrap();
            k.create_file(&d.join("master.key")).unwrap();
            k
        }
        None => MasterKey::generate().unwrap(),
    };
    let dir = path.as_path();
    // The server's default key cache (`key_cache`, 100,000 keys).
    let store = Arc::new(Store::open(Backend::open(dir, None).unwrap(), &master, 100_000).unwrap());
    if !ready {
        store
            .transact_direct(|c, _| consent::seed_defaults(c, 1))
            .unwrap();
    }
    let (writer, _join) = store.start_writer(WriterConfig::default()).unwrap();
    let cfg = IdentityConfig::default();
    let now = now_ms();
    let day = 86_400_000i64;

    // The plaintext twin, for the raw limit.
    let plain = rusqlite::Connection::open(dir.join("plain.db")).unwrap();
    if !ready {
        plain
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE events (profile_id INTEGER NOT NULL, name TEXT NOT NULL, ts INTEGER NOT NULL, revenue REAL);
             CREATE TABLE consent (profile_id INTEGER PRIMARY KEY, granted INTEGER NOT NULL);",
        )
        .unwrap();

        let t = Instant::now();
        let per = (events / profiles).max(1);
        let mut batch = Vec::with_capacity(5000);
        let mut plain_rows: Vec<(u64, &str, i64, Option<f64>)> = Vec::with_capacity(100_000);
        let flush_plain = |rows: &mut Vec<(u64, &str, i64, Option<f64>)>| {
            let tx = plain.unchecked_transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4)")
                    .unwrap();
                for (p, n, ts, r) in rows.drain(..) {
                    st.execute(rusqlite::params![p as i64, n, ts, r]).unwrap();
                }
            }
            tx.commit().unwrap();
        };
        for i in 0..profiles {
            batch.push(
                json!({"type": "identify", "userId": format!("u{i}"), "messageId": format!("i{i}"),
            "traits": {"email": format!("person{i}@example.com"), "city": "Tampere"}}),
            );
            for j in 1..per {
                let h = mix(i * 1000 + j);
                let ts = now - (h % (730 * day as u64)) as i64;
                let order = h % 10 < 3;
                let name = if order {
                    "Order Completed"
                } else {
                    "Product Viewed"
                };
                let revenue = order.then(|| 10.0 + (h >> 20) as f64 % 290.0);
                batch.push(
                json!({"type": "track", "userId": format!("u{i}"), "messageId": format!("e{i}-{j}"),
                "event": name, "timestamp": tarmo_store::rfc3339(ts),
                "properties": {"revenue": revenue, "sku": format!("sku-{}", h % 500)}}),
            );
                plain_rows.push((i, name, ts, revenue));
            }
            if batch.len() >= 5000 {
                let prepared = batch
                    .drain(..)
                    .enumerate()
                    .map(|(k, v)| {
                        store.prepare(
                            parse_message(v, k, None, BatchDefaults::default(), now, &cfg).unwrap(),
                            tarmo_core::ids::KeyId(1),
                        )
                    })
                    .collect();
                writer.submit_blocking(prepared).unwrap();
            }
            if plain_rows.len() >= 100_000 {
                flush_plain(&mut plain_rows);
            }
        }
        let prepared = batch
            .drain(..)
            .enumerate()
            .map(|(k, v)| {
                store.prepare(
                    parse_message(v, k, None, BatchDefaults::default(), now, &cfg).unwrap(),
                    tarmo_core::ids::KeyId(1),
                )
            })
            .collect();
        writer.submit_blocking(prepared).unwrap();
        flush_plain(&mut plain_rows);
        eprintln!(
            "{profiles} people, {} events ingested in {:.0} s",
            profiles * per,
            t.elapsed().as_secs_f64()
        );
        // Half consent to email and to ad audiences (profile ids are 1..=N in order).
        let t = Instant::now();
        let ids: Vec<i64> = (1..=profiles as i64)
            .filter(|p| mix(*p as u64).is_multiple_of(2))
            .collect();
        for chunk in ids.chunks(5000) {
            let entries: Vec<NewEntry> = chunk
                .iter()
                .flat_map(|p| {
                    ["email_marketing", "ad_audiences"].map(|purpose| NewEntry {
                        channel: None,
                        profile_id: ProfileId(*p),
                        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
                        decision: ConsentDecision::Granted,
                        method: Method::WebForm,
                        notice_version: None,
                        at_ms: None,
                        source: "bench".into(),
                        evidence: Default::default(),
                    })
                })
                .collect();
            writer
                .transact_blocking(move |ctx| {
                    consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
                })
                .unwrap();
        }
        {
            let tx = plain.unchecked_transaction().unwrap();
            for p in &ids {
                // The plaintext profile ids are 0-based.
                tx.execute("INSERT INTO consent VALUES (?1, 1)", [p - 1])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        plain
            .execute_batch(
                "CREATE INDEX events_q ON events(name, ts, profile_id, revenue); ANALYZE;",
            )
            .unwrap();
        eprintln!("consents in {:.0} s", t.elapsed().as_secs_f64());
        if let Some(d) = &kept {
            std::fs::write(d.join("ready"), b"").unwrap();
        }
    }
    let per = (events / profiles).max(1);
    if std::env::var("SETUP_ONLY").is_ok() {
        return;
    }

    // A reused store forgets the audiences of earlier runs (each run's
    // first sync adds half a million rows to what the platform holds and
    // to the disclosures, which would make every later run's sync slower).
    if ready {
        store
            .transact_direct(|c, _| {
                for t in [
                    "audience_members",
                    "audience_syncs",
                    "audiences",
                    "disclosures",
                    "processor_notifications",
                ] {
                    c.exec(&format!("DELETE FROM {t}"), &[])?;
                }
                Ok(())
            })
            .unwrap();
    }
    // FRESH_SEGMENTS=1: a reused store forgets the definitions of earlier
    // runs, so start keeps the order facts only and the first definition
    // on product views reads everyone again (the memory high-water mark).
    if std::env::var("FRESH_SEGMENTS").is_ok() {
        store
            .transact_direct(|c, _| {
                for t in ["segment_members", "segments"] {
                    c.exec(&format!("DELETE FROM {t}"), &[])?;
                }
                Ok(())
            })
            .unwrap();
    }
    // The engine's start.
    let rss0 = rss_mb();
    let t = Instant::now();
    let engine =
        SegmentEngine::start(store.clone(), writer.clone(), LifecycleConfig::default()).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let rule_text = r#"event "Order Completed" in 365d count >= 3 and event "Order Completed" in 365d sum revenue > 500 and consent(email_marketing, email)"#;
    let rule: Rule = text::parse(rule_text).unwrap();
    let def = |id: &str, purpose: &str, rule: Rule| SegmentDef {
        id: id.into(),
        name: id.into(),
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        rule,
        created_ms: now,
        updated_ms: now,
    };
    // The first definition needs the order facts, which start already loads.
    let t = Instant::now();
    let (_, members) = engine
        .put(def("big", "email_marketing", rule.clone()))
        .unwrap();
    let put_s = t.elapsed().as_secs_f64();
    let (people, held) = engine.size();
    let rss1 = rss_mb();

    let mut ours = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let t = Instant::now();
        n = engine.count(&rule).unwrap();
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    assert_eq!(n, members);
    let sql = "SELECT COUNT(*) FROM (SELECT e.profile_id FROM events e
                 WHERE e.name = 'Order Completed' AND e.ts > ?1
                 GROUP BY e.profile_id HAVING COUNT(*) >= 3 AND SUM(e.revenue) > 500) q
               JOIN consent c ON c.profile_id = q.profile_id AND c.granted = 1";
    let mut raw = Vec::new();
    let mut m = 0i64;
    for _ in 0..5 {
        let t = Instant::now();
        m = plain
            .query_row(sql, [now_ms() - 365 * day], |r| r.get(0))
            .unwrap();
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (ours_ms, raw_ms) = (pct(&mut ours, 0.5), pct(&mut raw, 0.5));
    println!(
        "people {people}, events held {held}, events stored {}",
        profiles * per
    );
    println!(
        "engine start (facts opened): {load_s:.1} s; first segment defined: {put_s:.2} s; RSS {rss0:.0} -> {rss1:.0} MB (anon {:.0}, file-mapped {:.0})",
        rss_split().0,
        rss_split().1
    );
    println!(
        "count (orders >= 3 in 365 d, revenue > 500, email consent): {n} people in {ours_ms:.1} ms (median of 5); \
         plaintext SQL over SQLite (covering index): {m} in {raw_ms:.1} ms; {:.1}x",
        raw_ms / ours_ms
    );

    let runner = {
        let e = engine.clone();
        std::thread::spawn(move || e.run())
    };
    // SKIP_LIVE=1 goes straight to the audience sync.
    if std::env::var("SKIP_LIVE").is_err() {
        // Twenty segments, then live membership under load.
        for k in 0..18 {
            let r = text::parse(&format!(
                "event \"Product Viewed\" where sku = \"sku-{k}\" in {}d",
                30 + k
            ))
            .unwrap();
            engine
                .put(def(&format!("viewers_{k}"), "personalisation", r))
                .unwrap();
        }
        engine
            .put(def(
                "probed",
                "personalisation",
                text::parse("event \"Probe\" in 1d").unwrap(),
            ))
            .unwrap();
        // A reused store (DATA_DIR) also holds the audience segment of an earlier run.
        assert!(engine.list().len() >= 20);
        let (_, held20) = engine.size();
        println!(
            "20 segments defined (18 on view properties): events held {held20}, RSS {:.0} MB (anon {:.0}, file-mapped {:.0}; high-water mark {:.0} MB)",
            rss_mb(),
            rss_split().0,
            rss_split().1,
            hwm_mb()
        );
        let stop = Arc::new(AtomicBool::new(false));
        // The load: LOADERS threads (default 4), each sending batches of 100
        // at its share of LOAD events a second. One thread alone cannot: it
        // waits for each batch's durable ack before preparing the next.
        let loaders = env_or("LOADERS", 4).max(1);
        let background: Vec<_> = (0..loaders)
            .map(|t| {
                let (store, writer, stop, cfg) =
                    (store.clone(), writer.clone(), stop.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let mut k = 0u64;
                    let started = Instant::now();
                    let rate = load as f64 / loaders as f64;
                    while !stop.load(Ordering::Relaxed) {
                        // 100 events every 100/rate seconds.
                        let due = Duration::from_secs_f64(k as f64 / rate);
                        if let Some(w) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(w);
                        }
                        let b: Vec<_> = (0..100)
                            .map(|x| {
                                let h = mix(k + x + 7_000_000 + t * 1_000_000_000);
                                let v = json!({"type": "track", "userId": format!("u{}", h % profiles),
                                    "event": "Product Viewed", "properties": {"sku": format!("sku-{}", h % 500)}});
                                store.prepare(parse_message(v, 0, None, BatchDefaults::default(), now_ms(), &cfg).unwrap(), tarmo_core::ids::KeyId(1))
                            })
                            .collect();
                        writer.submit_blocking(b).unwrap();
                        k += 100;
                    }
                    (k, started.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut lat = Vec::new();
        for i in 0..100u64 {
            // Other people each run: a reused store has the earlier probes.
            let user = mix(i + now as u64) % profiles;
            let v = json!({"type": "track", "userId": format!("u{user}"), "event": "Probe"});
            let p = store.prepare(
                parse_message(v, 0, None, BatchDefaults::default(), now_ms(), &cfg).unwrap(),
                tarmo_core::ids::KeyId(1),
            );
            let out = writer.submit_blocking(vec![p]).unwrap();
            let acked = Instant::now();
            let profile = match out[0] {
                tarmo_store::resolve::Outcome::Stored(p) => p,
                ref o => panic!("{o:?}"),
            };
            while !engine
                .of_profile(profile)
                .iter()
                .any(|(s, _, _)| s == "probed")
            {
                assert!(
                    acked.elapsed() < Duration::from_secs(30),
                    "probe {i} never joined"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            lat.push(acked.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(30));
        }
        stop.store(true, Ordering::Relaxed);
        let (mut sent, mut secs) = (0u64, 0f64);
        for b in background {
            let (k, s) = b.join().unwrap();
            sent += k;
            secs = secs.max(s);
        }
        println!(
            "live membership under {:.0} events/s with 20 segments: ack -> member p50 {:.0} ms, p99 {:.0} ms (100 probes)",
            sent as f64 / secs,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }

    // An audience of everyone with an email, for a processor of ad audiences.
    engine
        .put(def(
            "with_email",
            "ad_audiences",
            text::parse("has email").unwrap(),
        ))
        .unwrap();
    let input: tarmo_core::processor::ProcessorInput = serde_json::from_value(json!({
        "name": format!("Ads {now}"), "role": "advertising", "country": "ie", "dpa_reference": "D",
        "dpa_signed_on": "2024-01-01", "purposes": ["ad_audiences"], "data_categories": ["contact"]}))
    .unwrap();
    let spec = input.parse(now_ms()).unwrap();
    let processor = writer
        .transact_blocking(move |ctx| {
            tarmo_store::processors::register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms)
        })
        .unwrap()
        .id;
    let audience = format!("ads_{now}");
    engine
        .create_audience(AudienceDef {
            id: audience.clone(),
            segment: "with_email".into(),
            processor_id: processor,
            format: AudienceFormat::MetaCustomAudience,
            created_ms: now,
        })
        .unwrap();
    eprintln!("audience sync: started (pid {})", std::process::id());
    let t = Instant::now();
    let r = engine.sync_audience(&audience).unwrap().unwrap();
    println!(
        "audience sync of {} members: {} added, excluded {:?}, in {:.1} s ({:?})",
        engine.get("with_email").unwrap().1,
        r.added,
        r.excluded,
        t.elapsed().as_secs_f64(),
        r.timings
    );
    // Again, nothing changed: everything the platform holds is opened and
    // compared, nothing added or removed.
    let t = Instant::now();
    let r = engine.sync_audience(&audience).unwrap().unwrap();
    println!(
        "audience sync again, nothing changed: {} added, {} removed, in {:.1} s ({:?})",
        r.added,
        r.removed,
        t.elapsed().as_secs_f64(),
        r.timings
    );
    engine.stop();
    runner.join().unwrap();
}
