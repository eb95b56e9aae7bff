//! Data subject requests at scale on the embedded store: the access bundle
//! and the erasure of one person with 10,000 events in a store of PROFILES
//! people, then a retention sweep over EVENTS events.
//!
//! cargo bench -p tarmo-store --bench dsr   (env: PROFILES, PERSON_EVENTS, EVENTS)

mod common;

use std::time::Instant;

use serde_json::json;
use tarmo_core::identity::{IdentifierKind, IdentityConfig};
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_store::consent;
use tarmo_store::requests::{self, NewRequest, RequestKind};
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let profiles = env_or("PROFILES", 1_000_000);
    let person_events = env_or("PERSON_EVENTS", 10_000);
    let sweep_events = env_or("EVENTS", 1_000_000);
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

    let t = Instant::now();
    for chunk in (0..profiles).collect::<Vec<_>>().chunks(10_000) {
        let prepared: Vec<_> = chunk
            .iter()
            .map(|i| {
                let id = cfg
                    .identifier(IdentifierKind::Email, &format!("person{i}@example.com"))
                    .unwrap();
                store.prepare_identifier(&id)
            })
            .collect();
        writer
            .transact_blocking(move |ctx| {
                for p in &prepared {
                    ctx.resolve(std::slice::from_ref(p))?;
                }
                Ok(())
            })
            .unwrap();
    }
    eprintln!("{profiles} people in {:.0} s", t.elapsed().as_secs_f64());

    // The person: identified, 10,000 events, consents.
    let msg = |i: u64| {
        let v = if i == 0 {
            json!({"type": "identify", "userId": "subject-1", "messageId": format!("s{i}"),
                "traits": {"email": "subject@example.com", "firstName": "Aino", "city": "Oulu"}})
        } else {
            json!({"type": "track", "userId": "subject-1", "event": "Product Viewed", "messageId": format!("s{i}"),
                "properties": {"sku": format!("sku-{}", i % 500), "price": 19.9}})
        };
        store.prepare(
            parse_message(v, 0, None, BatchDefaults::default(), 1, &cfg).unwrap(),
            tarmo_core::ids::KeyId(1),
        )
    };
    for start in (0..person_events).step_by(1000) {
        let batch: Vec<_> = (start..(start + 1000).min(person_events))
            .map(msg)
            .collect();
        writer.submit_blocking(batch).unwrap();
    }
    let subject = store
        .find_profile(&cfg.identifier(IdentifierKind::UserId, "subject-1").unwrap())
        .unwrap()
        .unwrap();

    let t = Instant::now();
    let bundle = store.bundle(subject).unwrap().unwrap();
    let bundle_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(bundle.events.len() as u64, person_events);
    let json_bytes = serde_json::to_vec(&bundle).unwrap().len();

    let sub =
        store.prepare_identifier(&cfg.identifier(IdentifierKind::UserId, "subject-1").unwrap());
    let id = writer
        .transact_blocking(move |ctx| {
            requests::create(
                ctx,
                NewRequest {
                    kind: RequestKind::Erasure,
                    subject: sub,
                    corrected: None,
                    purposes: None,
                    language: "en".into(),
                    origin: "staff",
                    actor: "bench".into(),
                },
                3_600_000,
            )
        })
        .unwrap();
    let t = Instant::now();
    writer
        .transact_blocking(move |ctx| requests::verify(ctx, id, "bench", "benchmark"))
        .unwrap();
    // The checkpoint runs after the commit, on the writer: wait for it.
    writer.transact_blocking(|_| Ok(())).unwrap();
    let erase_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        store
            .profile_view(
                &tarmo_store::crypto::person::Sight::duty(
                    tarmo_store::crypto::person::Duty::PersonsRequest
                ),
                subject
            )
            .unwrap()
            .is_none()
    );

    // Retention: EVENTS events received long ago, swept.
    let t = Instant::now();
    let mut n = 0u64;
    while n < sweep_events {
        let k = n;
        let batch: Vec<_> = (0..5000.min(sweep_events - n))
            .map(|i| {
                let j = k + i;
                let v = json!({"type": "track", "userId": format!("old-{}", j % 50_000), "event": "Old",
                    "messageId": format!("o{j}"), "properties": {"n": j}});
                store.prepare(parse_message(v, 0, None, BatchDefaults::default(), 1, &cfg).unwrap(), tarmo_core::ids::KeyId(1))
            })
            .collect();
        n += batch.len() as u64;
        writer.submit_blocking(batch).unwrap();
    }
    eprintln!(
        "{sweep_events} old events in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    store
        .conn()
        .unwrap()
        .exec(
            "UPDATE events SET received_ms = 1 WHERE profile_id <> 0",
            &[],
        )
        .unwrap();
    let t = Instant::now();
    let r = tarmo_store::retention::sweep(&writer, tarmo_store::now_ms(), false).unwrap();
    let sweep_s = t.elapsed().as_secs_f64();
    assert!(r.events_deleted >= sweep_events, "{r:?}");
    drop(writer);
    join.join().unwrap();

    println!("store: {profiles} people; the person: {person_events} events");
    println!("access bundle (opened, JSON {json_bytes} bytes): {bundle_ms:.0} ms");
    println!("erasure (rows, keys, suppression, checkpoint): {erase_ms:.0} ms");
    println!(
        "retention sweep: {} events deleted in {sweep_s:.1} s = {:.0} events/s",
        r.events_deleted,
        r.events_deleted as f64 / sweep_s
    );
}
