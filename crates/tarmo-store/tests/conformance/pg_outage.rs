//! Connections that PostgreSQL closed (a restart, an administrator, a
//! network fault) are noticed and replaced: the pool never hands a lost
//! connection out twice, and the writer reconnects by itself. SQLite has no
//! server to lose; the tests return at once there.

use std::time::{Duration, Instant};

use serde_json::json;
use tarmo_store::Error;

use super::Harness;

/// Close every other connection of this database, as a restart would.
fn cut_connections(h: &Harness) -> u64 {
    let mut c = h.store.conn().unwrap();
    let rows = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    rows.len() as u64
}

pub fn lost_connections_are_replaced_and_say_unavailable(h: &Harness) {
    if h.store.backend_name() != "postgres" {
        return;
    }
    h.ingest(vec![json!({"type": "identify", "userId": "before-cut"})]);
    // Hold two pooled connections, so that the cut finds them idle in the pool.
    {
        let _a = h.store.conn().unwrap();
        let _b = h.store.conn().unwrap();
    }
    assert!(cut_connections(h) >= 2, "the writer's and the pool's");
    // A lost pooled connection fails as unavailable, and is not given back.
    let mut failures = 0;
    for _ in 0..4 {
        match h.store.conn().and_then(|mut c| c.meta_get("vault_check")) {
            Ok(_) => {}
            Err(Error::Unavailable(_)) => failures += 1,
            Err(e) => panic!("a lost connection must read as unavailable, not {e}"),
        }
    }
    assert!(failures <= 2, "a lost connection was handed out again");
    assert!(h.store.conn().unwrap().meta_get("vault_check").is_ok());

    // The writer: what it could not commit is answered unavailable, and it
    // is writing again by itself.
    let started = Instant::now();
    let mut unavailable = 0;
    loop {
        let events = {
            let m = tarmo_core::segment::parse_message(
                json!({"type": "identify", "userId": "after-cut", "messageId": "after-cut-1"}),
                0,
                None,
                Default::default(),
                tarmo_store::now_ms(),
                &h.cfg,
            )
            .unwrap();
            vec![h.store.prepare(m, tarmo_core::ids::KeyId(1))]
        };
        match h.writer.submit_blocking(events) {
            Ok(_) => break,
            Err(Error::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("the writer's lost connection must read as unavailable, not {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the writer did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(unavailable <= 20);
    assert!(h.lookup("user_id", "after-cut").is_some());
    assert!(h.store.database_ready() || h.store.probe_database());
}
