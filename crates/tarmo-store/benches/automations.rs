//! Automations on the embedded store. Measures, in one run:
//!
//! - the day's birthday due set among PEOPLE waiting greetings spread over
//!   the year (the index range the scheduler reads), beside the raw limit:
//!   the same range over a plain SQLite table of (due, id) with an index;
//! - the send pipeline for SENDS people of a campaign — the decision for
//!   (purpose, channel), the contact and traits opened, the template
//!   rendered, the message sealed into the outbox, the send marked — in
//!   writer transactions of 200, and the share of that time the consent
//!   decision alone takes.
//!
//! - reminder latency: one reminder per person falling due over three
//!   seconds while PENDING others wait, taken by the scheduler's loop
//!   (a pass, a one-second sleep when idle): due time to outbox row.
//!
//! cargo bench -p tarmo-store --bench automations   (env: PEOPLE, SENDS, PENDING)

mod common;

use std::time::Instant;

use serde_json::json;
use tarmo_core::automations::Campaign;
use tarmo_core::automations::template::Template;
use tarmo_core::consent::{Channel, ConsentDecision, Method, decide};
use tarmo_core::identity::IdentityConfig;
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_store::automations::follow::follow;
use tarmo_store::automations::send::send_due;
use tarmo_store::automations::{self as flows, SendConfig};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry, Subject};
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store, now_ms};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const DAY: i64 = 86_400_000;

fn main() {
    let people = env_or("PEOPLE", 1_000_000);
    let sends = env_or("SENDS", 2_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        Backend::open(dir.path(), None).unwrap(),
        &MasterKey::generate().unwrap(),
        100_000,
    )
    .unwrap();
    store
        .transact_direct(|c, _| consent::seed_defaults(c, 1))
        .unwrap();
    let year_start = 1_798_761_600_000i64; // 2027-01-01T00:00:00Z
    let due = |i: u64| year_start + (mix(i) % 365) as i64 * DAY + 9 * 3_600_000;

    // ---- the day's birthday due set
    let t = Instant::now();
    for chunk in (0..people).collect::<Vec<_>>().chunks(20_000) {
        store
            .transact_direct(|c, _| {
                for &i in chunk {
                    c.exec(
                        "INSERT INTO sends (flow_id, profile_id, occurrence, due_ms, since_ms, status, created_ms)
                         VALUES ('bday', $1, 'b2027', $2, $2, 'due', 0)",
                        &[P::Int(i as i64 + 1), P::Int(due(i))],
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }
    let load_s = t.elapsed().as_secs_f64();
    let day = year_start + 100 * DAY;
    let mut runs = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let mut c = store.conn().unwrap();
        n = c
            .query(
                "SELECT profile_id FROM sends WHERE status = 'due' AND due_ms >= $1 AND due_ms < $2",
                &[P::Int(day), P::Int(day + DAY)],
            )
            .unwrap()
            .len();
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let due_ms = median(runs);

    // The raw limit: the same rows and range in a plain table.
    let plain = rusqlite::Connection::open(dir.path().join("plain.db")).unwrap();
    plain
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE due (id INTEGER PRIMARY KEY, due_ms INTEGER NOT NULL);",
        )
        .unwrap();
    let t = Instant::now();
    {
        let tx = plain.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare("INSERT INTO due VALUES (?1, ?2)").unwrap();
            for i in 0..people {
                st.execute(rusqlite::params![i as i64 + 1, due(i)]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    plain
        .execute_batch("CREATE INDEX due_ms ON due(due_ms);")
        .unwrap();
    let raw_load_s = t.elapsed().as_secs_f64();
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut st = plain
            .prepare_cached("SELECT id FROM due WHERE due_ms >= ?1 AND due_ms < ?2")
            .unwrap();
        let k = st
            .query_map(rusqlite::params![day, day + DAY], |r| r.get::<_, i64>(0))
            .unwrap()
            .count();
        assert_eq!(k, n);
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let raw_ms = median(runs);
    println!(
        "birthday due set: {n} of {people} waiting greetings in {due_ms:.1} ms (loaded in {load_s:.0} s); \
         raw limit, plain indexed table: {raw_ms:.1} ms (loaded in {raw_load_s:.1} s)"
    );

    // ---- the send pipeline
    let (writer, _join) = store.start_writer(WriterConfig::default()).unwrap();
    let cfg = IdentityConfig::default();
    let now = now_ms();
    let msgs: Vec<_> = (0..sends)
        .map(|i| {
            json!({"type": "identify", "userId": format!("s{i}"), "messageId": format!("s{i}"),
                "traits": {"email": format!("person{i}@example.com"), "first_name": format!("P{i}"), "language": "fi"}})
        })
        .collect();
    for chunk in msgs.chunks(2000) {
        let prepared = chunk
            .iter()
            .enumerate()
            .map(|(k, v)| {
                store.prepare(
                    parse_message(v.clone(), k, None, BatchDefaults::default(), now, &cfg).unwrap(),
                    tarmo_core::ids::KeyId(1),
                )
            })
            .collect();
        writer.submit_blocking(prepared).unwrap();
    }
    let ids: Vec<i64> = store
        .conn()
        .unwrap()
        .query(
            "SELECT id FROM profiles WHERE merged_into IS NULL ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.int(0).unwrap())
        .collect();
    for chunk in ids.chunks(1000) {
        let entries: Vec<NewEntry> = chunk
            .iter()
            .map(|&p| NewEntry {
                channel: None,
                profile_id: ProfileId(p),
                purpose: tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
                decision: ConsentDecision::Granted,
                method: Method::WebForm,
                notice_version: None,
                at_ms: None,
                source: "bench".into(),
                evidence: Default::default(),
            })
            .collect();
        writer
            .transact_blocking(move |ctx| {
                consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
            })
            .unwrap();
    }
    let members = ids.clone();
    writer
        .transact_blocking(move |ctx| {
            ctx.conn.exec(
                "INSERT INTO segments (id, name, purpose_id, rule, created_ms, updated_ms) VALUES ('all', 'all', 'email_marketing', $1, 0, 0)",
                &[P::Blob(b"-")],
            )?;
            for p in members {
                ctx.conn.exec(
                    "INSERT INTO segment_members (segment_id, profile_id, since_ms) VALUES ('all', $1, 0)",
                    &[P::Int(p)],
                )?;
            }
            let t: Template = serde_json::from_value(json!({"id": "hello", "channel": "email", "languages": {
                "en": {"subject": "Hello {{ traits.first_name }}", "text": "Dear {{ traits.first_name }}", "html": "<p>Dear {{ traits.first_name }}</p>"},
                "fi": {"subject": "Hei {{ traits.first_name }}", "text": "Hei {{ traits.first_name }}"}}})).unwrap();
            flows::template_put(ctx.conn, &ctx.catalog, t, true, ctx.now_ms)?;
            let c = Campaign::from_json(&json!({"id": "launch", "segment": "all", "template": "hello",
                "purpose": "email_marketing", "channel": "email", "per_minute": 100_000}), ctx.now_ms).unwrap();
            flows::campaign_create(ctx.conn, &ctx.catalog, c, ctx.now_ms)?;
            follow(ctx.conn, ctx.vault, &SendConfig::default(), ctx.now_ms + 1000)
        })
        .unwrap();
    let t = Instant::now();
    let mut sent = 0;
    loop {
        let r = writer
            .transact_blocking(|ctx| {
                send_due(
                    ctx.conn,
                    ctx.vault,
                    &ctx.catalog,
                    &SendConfig::default(),
                    ctx.now_ms + 3_600_000,
                    200,
                )
            })
            .unwrap();
        sent += r.sent;
        if r.sent + r.skipped == 0 {
            break;
        }
    }
    let pipeline_s = t.elapsed().as_secs_f64();
    assert_eq!(sent, ids.len() as u64);
    // The decision alone, the same reads, for everyone.
    let catalog = store.catalog().unwrap();
    let entry = catalog.get("email_marketing").unwrap();
    let (rule, email_marketing) = (entry.rule, entry.id.clone());
    let t = Instant::now();
    let mut c = store.conn().unwrap();
    let mut allowed = 0;
    for &p in &ids {
        if let Subject::Known(_, st, fl) =
            consent::subject_by_id(&mut *c, ProfileId(p), &email_marketing).unwrap()
            && decide(&rule, Some(Channel::Email), st.as_ref(), fl, now_ms()).allowed
        {
            allowed += 1;
        }
    }
    let decide_s = t.elapsed().as_secs_f64();
    assert_eq!(allowed, ids.len());
    println!(
        "send pipeline: {sent} sends in {pipeline_s:.2} s = {:.0} sends/s into the outbox; \
         the consent decision alone {:.1} ms = {:.1} % of it",
        sent as f64 / pipeline_s,
        decide_s * 1000.0,
        decide_s / pipeline_s * 100.0
    );

    // ---- reminder latency: PENDING reminders waiting (due in an hour),
    // and one reminder per person falling due over three seconds, taken by
    // the scheduler's loop (a pass, then a one-second sleep when idle).
    let pending = env_or("PENDING", 100_000);
    let start = now_ms() + 1000;
    let people = ids.clone();
    writer
        .transact_blocking(move |ctx| {
            let a = tarmo_core::automations::Automation::from_json(
                &json!({"id": "reminder", "purpose": "email_marketing", "channel": "email",
                    "template": "hello", "trigger": {"event": "Product Viewed", "delay": "1h"}}),
                None,
            )
            .unwrap();
            flows::automation_put(ctx.conn, &ctx.catalog, &SendConfig::default(), a, true, ctx.now_ms)?;
            for i in 0..pending as i64 {
                ctx.conn.exec(
                    "INSERT INTO sends (flow_id, profile_id, occurrence, due_ms, since_ms, status, created_ms)
                     VALUES ('reminder', $1, 'waiting', $2, 0, 'due', 0)",
                    &[P::Int(10_000_000 + i), P::Int(start + 3_600_000)],
                )?;
            }
            for (i, p) in people.iter().enumerate() {
                ctx.conn.exec(
                    "INSERT INTO sends (flow_id, profile_id, occurrence, due_ms, since_ms, status, created_ms)
                     VALUES ('reminder', $1, 'now', $2, 0, 'due', 0)",
                    &[P::Int(*p), P::Int(start + (i as i64 * 3000) / people.len() as i64)],
                )?;
            }
            Ok(())
        })
        .unwrap();
    loop {
        let r = writer
            .transact_blocking(|ctx| {
                send_due(
                    ctx.conn,
                    ctx.vault,
                    &ctx.catalog,
                    &SendConfig::default(),
                    ctx.now_ms,
                    200,
                )
            })
            .unwrap();
        if !r.more {
            let left = store
                .conn()
                .unwrap()
                .query_opt(
                    "SELECT count(*) FROM sends WHERE flow_id = 'reminder' AND occurrence = 'now' AND status = 'due'",
                    &[],
                )
                .unwrap()
                .unwrap()
                .int(0)
                .unwrap();
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let mut lat: Vec<f64> = store
        .conn()
        .unwrap()
        .query(
            "SELECT done_ms - due_ms FROM sends WHERE flow_id = 'reminder' AND occurrence = 'now'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.int(0).unwrap() as f64)
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "reminder latency after the delay, {} reminders with {pending} others waiting: \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        lat[lat.len() / 2],
        lat[(lat.len() as f64 * 0.99) as usize],
        lat[lat.len() - 1]
    );
}
