//! The consent ledger on the embedded store: durable appends in batches
//! through the writer (sealing the evidence, chaining, folding into the
//! state), the raw SQLite limit for rows of the same size measured in the same
//! run, and the time to verify the whole chain and to fold it again.
//!
//! cargo bench -p tarmo-store --bench ledger   (env: LEDGER_ENTRIES, PROFILES, BATCH, PRODUCERS)

mod common;

use std::time::Instant;

use serde_json::json;
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_core::identity::{IdentifierKind, IdentityConfig};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

const PURPOSES: [&str; 4] = [
    "email_marketing",
    "sms_marketing",
    "personalisation",
    "ad_audiences",
];
const DECISIONS: [ConsentDecision; 4] = [
    ConsentDecision::Granted,
    ConsentDecision::Withdrawn,
    ConsentDecision::Denied,
    ConsentDecision::Granted,
];

/// The `k`th entry of the run: a pseudo-random person, purpose and decision.
fn entry(k: u64, ids: &[tarmo_core::ids::ProfileId], profiles: u64) -> NewEntry {
    let r = k.wrapping_mul(0x9e3779b97f4a7c15);
    let mut ev = serde_json::Map::new();
    ev.insert(
        "ip".into(),
        json!(format!("198.51.{}.{}", r % 250, (r >> 8) % 250)),
    );
    ev.insert(
        "user_agent".into(),
        json!("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"),
    );
    NewEntry {
        channel: None,
        profile_id: ids[(r % profiles) as usize],
        purpose: tarmo_core::consent::PurposeId::parse(PURPOSES[((r >> 16) % 4) as usize]).unwrap(),
        decision: DECISIONS[((r >> 24) % 4) as usize],
        method: Method::WebForm,
        notice_version: None,
        at_ms: None,
        source: "checkout form v3".into(),
        evidence: ev,
    }
}

fn main() {
    let total = env_or("LEDGER_ENTRIES", 1_000_000);
    let profiles = env_or("PROFILES", 100_000);
    let batch = env_or("BATCH", 1000);
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

    // People first (each with a data key that seals their evidence).
    let t = Instant::now();
    let mut ids = Vec::with_capacity(profiles as usize);
    for chunk in (0..profiles).collect::<Vec<_>>().chunks(5000) {
        let prepared: Vec<_> = chunk
            .iter()
            .map(|i| {
                let id = cfg
                    .identifier(IdentifierKind::Email, &format!("person{i}@example.com"))
                    .unwrap();
                store.prepare_identifier(&id)
            })
            .collect();
        let got = writer
            .transact_blocking(move |ctx| {
                prepared
                    .iter()
                    .map(|p| ctx.resolve(std::slice::from_ref(p)))
                    .collect::<tarmo_store::Result<Vec<_>>>()
            })
            .unwrap();
        ids.extend(got);
    }
    eprintln!("{profiles} profiles in {:.1} s", t.elapsed().as_secs_f64());

    // Producers: one, as a single client batching its writes, or several
    // at once, as the clients of a busy installation are (their batches
    // then share the writer's transactions and flushes).
    let producers = env_or("PRODUCERS", 1).max(1);
    let batches = total.div_ceil(batch);
    let next = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..producers {
            let writer = writer.clone();
            let (ids, next, done) = (&ids, &next, &done);
            s.spawn(move || {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= batches {
                        break;
                    }
                    let first = b * batch;
                    let n = batch.min(total - first);
                    let entries: Vec<NewEntry> = (first..first + n)
                        .map(|k| entry(k + 1, ids, profiles))
                        .collect();
                    writer
                        .transact_blocking(move |ctx| {
                            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
                        })
                        .unwrap();
                    let before = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    if (before + n) / 1_000_000 > before / 1_000_000 {
                        eprintln!(
                            "{} entries, {:.0}/s",
                            before + n,
                            (before + n) as f64 / t.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    let append_secs = t.elapsed().as_secs_f64();
    drop(writer);
    join.join().unwrap();
    // The log keeps its size while the writer runs (it is truncated at a
    // lull): measure the store once it is folded in and truncated.
    rusqlite::Connection::open(dir.path().join("tarmo.db"))
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let db_bytes = std::fs::metadata(dir.path().join("tarmo.db"))
        .unwrap()
        .len()
        + std::fs::metadata(dir.path().join("tarmo.db-wal")).map_or(0, |m| m.len());

    let t = Instant::now();
    let mut conn = store.conn().unwrap();
    let report = consent::verify(&mut *conn, store.vault(), &mut |_| {}).unwrap();
    let verify_secs = t.elapsed().as_secs_f64();
    assert_eq!((report.entries, report.first_broken), (total, None));
    let t = Instant::now();
    let folded = consent::fold_all(&mut *conn).unwrap();
    let fold_secs = t.elapsed().as_secs_f64();
    assert_eq!(folded, consent::materialised(&mut *conn).unwrap());
    drop(conn);

    // The raw limit: rows of the same size into a table with an integer key,
    // WAL, synchronous=FULL, one transaction per batch. No crypto, no chain,
    // no state.
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = rusqlite::Connection::open(raw_dir.path().join("raw.db")).unwrap();
    raw.pragma_update(None, "journal_mode", "WAL").unwrap();
    raw.pragma_update(None, "synchronous", "FULL").unwrap();
    raw.execute_batch("CREATE TABLE l (seq INTEGER PRIMARY KEY, profile INTEGER, body BLOB)")
        .unwrap();
    let row = vec![7u8; 330];
    let t = Instant::now();
    let raw_n = total.min(1_000_000);
    let mut seq = 0i64;
    while (seq as u64) < raw_n {
        let tx = raw.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO l (seq, profile, body) VALUES (?1, ?2, ?3)")
                .unwrap();
            for _ in 0..batch.min(raw_n - seq as u64) {
                seq += 1;
                st.execute(rusqlite::params![seq, seq % 1000, &row])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let raw_rate = raw_n as f64 / t.elapsed().as_secs_f64();

    let rate = total as f64 / append_secs;
    println!(
        "ledger entries:             {total} over {profiles} people, batches of {batch}, {producers} producer(s)"
    );
    println!("append (durable, sealed, chained, folded): {rate:.0} entries/s");
    println!(
        "raw SQLite, same-size rows: {raw_rate:.0} rows/s   ratio {:.2}",
        rate / raw_rate
    );
    println!(
        "store size (checkpointed):  {:.0} bytes/entry",
        db_bytes as f64 / total as f64
    );
    println!(
        "verify the whole chain:     {verify_secs:.1} s ({:.0} entries/s)",
        total as f64 / verify_secs
    );
    println!("fold the whole ledger:      {fold_secs:.1} s");
}
