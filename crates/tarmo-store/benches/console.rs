//! What the staff console's two heavy pages cost the store, on the embedded
//! store: the customer 360 (the profile view, the first timeline page of a
//! person with 10,000 events, their consent states and ledger, their
//! disclosures) among PROFILES people, and the consent dashboard (the
//! daily aggregates of migration 16, and the expiring-consent counts) at
//! two ledger sizes, to show it does not grow with the ledger. The naive
//! aggregate over the ledger itself is timed in the same run as the limit
//! the pre-aggregation avoids.
//!
//! cargo bench -p tarmo-store --bench console   (env: PROFILES, EVENTS, LEDGER_ENTRIES)

mod common;

use std::time::Instant;

use serde_json::json;
use tarmo_core::access::{Grant, builtin_role};
use tarmo_core::identity::IdentityConfig;
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_store::conn::P;
use tarmo_store::consent;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store, dashboard, now_ms};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}

fn main() {
    let profiles = env_or("PROFILES", 100_000);
    let events = env_or("EVENTS", 10_000);
    let ledger = env_or("LEDGER_ENTRIES", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        Backend::open(dir.path(), None).unwrap(),
        &MasterKey::generate().unwrap(),
        200_000,
    )
    .unwrap();
    store
        .transact_direct(|c, _| consent::seed_defaults(c, 1))
        .unwrap();
    let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
    let cfg = IdentityConfig::default();
    let now = now_ms();
    let send = |batch: Vec<serde_json::Value>| {
        let prepared = batch
            .into_iter()
            .enumerate()
            .map(|(k, v)| {
                store.prepare(
                    parse_message(v, k, None, BatchDefaults::default(), now, &cfg).unwrap(),
                    tarmo_core::ids::KeyId(1),
                )
            })
            .collect();
        writer.submit_blocking(prepared).unwrap();
    };

    // ---------------------------------------------------------- the 360
    let t = Instant::now();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..profiles {
        batch.push(json!({"type": "identify", "userId": format!("u{i}"),
            "traits": {"email": format!("person{i}@example.com"), "tier": "silver"}}));
        if batch.len() == 5000 {
            send(std::mem::take(&mut batch));
        }
    }
    send(std::mem::take(&mut batch));
    eprintln!("{profiles} profiles in {:.0} s", t.elapsed().as_secs_f64());
    let names = [
        "Product Viewed",
        "Order Completed",
        "Cart Viewed",
        "Signed In",
    ];
    for j in 0..events {
        batch.push(
            json!({"type": "track", "userId": "u7", "messageId": format!("p7-{j}"),
            "event": names[(j % 4) as usize],
            "timestamp": tarmo_store::rfc3339(now - (events - j) as i64 * 60_000),
            "properties": {"sku": format!("sku-{}", j % 300), "revenue": (j % 97) as f64}}),
        );
        if batch.len() == 5000 {
            send(std::mem::take(&mut batch));
        }
    }
    send(std::mem::take(&mut batch));
    let person = store
        .find_profile(&cfg.identifier(cfg.kind("user_id").unwrap(), "u7").unwrap())
        .unwrap()
        .unwrap();
    let admin = Grant::new(&[builtin_role("admin").unwrap()], vec![]);
    let mut times = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        let v = store.profile_view_for(&admin, person).unwrap().unwrap();
        let page = store
            .events_page_for(&admin, person, None, 50)
            .unwrap()
            .unwrap();
        let mut c = store.conn().unwrap();
        let states = consent::states(&mut *c, person).unwrap();
        let history = consent::history(
            &mut *c,
            store.vault(),
            &tarmo_store::crypto::person::Sight::duty(
                tarmo_store::crypto::person::Duty::ConsentProof,
            ),
            person,
        )
        .unwrap();
        let disclosures = tarmo_store::processors::disclosures_of(&mut *c, person).unwrap();
        drop(c);
        assert_eq!(page.events.len(), 50);
        // The identify that made the person is an event too.
        assert_eq!(v.event_count as u64, events + 1);
        std::hint::black_box((states, history, disclosures));
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (p50, p99) = percentiles(times);
    // The floor: the same first page of event ids, read without opening.
    let mut raw = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let rows = store
            .conn()
            .unwrap()
            .query(
                "SELECT id FROM events WHERE profile_id = $1 ORDER BY id DESC LIMIT 50",
                &[P::Int(person.0)],
            )
            .unwrap();
        assert_eq!(rows.len(), 50);
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (r50, r99) = percentiles(raw);
    println!(
        "360 (store): {profiles} people, person with {events} events: p50 {p50:.2} ms, p99 {p99:.2} ms; raw first page of ids p50 {r50:.3} ms, p99 {r99:.3} ms"
    );
    drop(writer);
    join.join().unwrap();

    // ----------------------------------------------------- the dashboard
    let mut filled = 0u64;
    for size in [100_000u64, ledger] {
        if size <= filled {
            continue;
        }
        let t = Instant::now();
        fill_ledger(&store, filled, size, profiles.max(1), now);
        filled = size;
        let fill_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        backfill(&store);
        let backfill_s = t.elapsed().as_secs_f64();
        let catalog = store.catalog().unwrap();
        let lifetimes: Vec<(String, u32)> = catalog
            .entries()
            .into_iter()
            .filter_map(|p| p.spec.consent_lifetime_days.map(|d| (p.id.to_string(), d)))
            .collect();
        let mut times = Vec::new();
        for i in 0..60 {
            let t = Instant::now();
            let mut c = store.conn().unwrap();
            let d = dashboard::dashboard(&mut *c, now, 90).unwrap();
            let mut expiring = 0;
            for (p, days) in &lifetimes {
                expiring += dashboard::expiring(&mut *c, p, *days, now, 30 * 86_400_000).unwrap();
            }
            std::hint::black_box((d, expiring));
            if i >= 10 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let (p50, p99) = percentiles(times);
        let t = Instant::now();
        let naive = store
            .conn()
            .unwrap()
            .query(
                "SELECT at_ms / 86400000, method, decision, count(*) FROM consent_ledger
                 WHERE at_ms >= $1 GROUP BY 1, 2, 3",
                &[P::Int(now - 90 * 86_400_000)],
            )
            .unwrap()
            .len();
        let naive_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "dashboard: {size} ledger entries ({:.0} s to write, {backfill_s:.1} s to backfill as migration 16): p50 {p50:.2} ms, p99 {p99:.2} ms; naive 90-day GROUP BY over the ledger {naive_ms:.0} ms ({naive} rows)",
            fill_s
        );
    }
}

/// Ledger rows `from..to` and the state they leave, written directly (the
/// dashboard reads neither their seals nor their chain).
fn fill_ledger(store: &Store, from: u64, to: u64, people: u64, now: i64) {
    store
        .transact_direct(|c, _| {
            c.exec(
                "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)
                 INSERT INTO consent_ledger (seq, profile_id, key_owner, purpose_id, decision, method,
                     notice_version, notice_seq, at_ms, recorded_ms, source, evidence, prev_hash, hash)
                 SELECT i + 1000000000, i % $3 + 1, i % $3 + 1,
                   CASE i % 4 WHEN 0 THEN 'email_marketing' WHEN 1 THEN 'sms_marketing'
                       WHEN 2 THEN 'personalisation' ELSE 'ad_audiences' END,
                   CASE (i / 4) % 5 WHEN 0 THEN 'granted' WHEN 1 THEN 'withdrawn' WHEN 2 THEN 'granted'
                       WHEN 3 THEN 'denied' ELSE 'pending_confirmation' END,
                   CASE (i / 20) % 6 WHEN 0 THEN 'web_form' WHEN 1 THEN 'double_opt_in_email'
                       WHEN 2 THEN 'import' WHEN 3 THEN 'tcf' WHEN 4 THEN 'gpc' ELSE 'one_click_unsubscribe' END,
                   'v1', 1, $4 - (i * 6364136223) % 63072000000, $4, '(sealed)', x'00', x'00', x'00'
                 FROM n",
                &[
                    P::Int(from as i64),
                    P::Int(to as i64 - 1),
                    P::Int(people as i64),
                    P::Int(now),
                ],
            )?;
            c.exec("DELETE FROM consent_state", &[])?;
            c.exec(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
                 INSERT INTO consent_state (profile_id, purpose_id, decision, method, at_ms, notice_seq, seq)
                 SELECT i / 4 + 1,
                   CASE i % 4 WHEN 0 THEN 'email_marketing' WHEN 1 THEN 'sms_marketing'
                       WHEN 2 THEN 'personalisation' ELSE 'ad_audiences' END,
                   CASE (i * 13) % 5 WHEN 0 THEN 'granted' WHEN 1 THEN 'withdrawn' WHEN 2 THEN 'granted'
                       WHEN 3 THEN 'denied' ELSE 'pending_confirmation' END,
                   'web_form', $2 - (i * 6364136223) % 63072000000, 1, i
                 FROM n",
                &[P::Int((people * 4) as i64 - 1), P::Int(now)],
            )?;
            Ok(())
        })
        .unwrap();
}

/// The aggregates rebuilt from the ledger and the state by migration 16's
/// own statements (copied here: the migration runs them once).
fn backfill(store: &Store) {
    store
        .transact_direct(|c, _| {
            c.exec("DELETE FROM consent_daily_entries", &[])?;
            c.exec("DELETE FROM consent_daily_states", &[])?;
            c.exec(
                "INSERT INTO consent_daily_entries (day, purpose_id, method, decision, n)
                 SELECT at_ms / 86400000, purpose_id, method, decision, count(*) FROM consent_ledger
                 GROUP BY at_ms / 86400000, purpose_id, method, decision",
                &[],
            )?;
            c.exec(
                "INSERT INTO consent_daily_states (day, purpose_id, decision, delta)
                 SELECT at_ms / 86400000, purpose_id, decision, count(*) FROM consent_state
                 GROUP BY at_ms / 86400000, purpose_id, decision",
                &[],
            )?;
            Ok(())
        })
        .unwrap();
}
