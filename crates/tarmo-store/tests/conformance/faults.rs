//! Faults that must not stop the work behind them: a message that does not
//! open, and queues that are seen as they grow.

use serde_json::json;
use tarmo_store::conn::P;
use tarmo_store::health::queue_states;
use tarmo_store::lease::Claimant;
use tarmo_store::outbox::{self, OutboxMessage};

use super::{Harness, stored};

/// This node, as the outbox worker would claim.
fn me() -> Claimant {
    Claimant::new("node-test", std::time::Duration::from_secs(60))
}

fn message(n: u32) -> OutboxMessage {
    OutboxMessage::RequestVerification {
        to: format!("park{n}@example.fi"),
        language: "en".into(),
        token: format!("token-{n}"),
        request_type: "access".into(),
        request_id: tarmo_core::ids::RequestId(n as i64),
    }
}

pub fn an_outbox_message_that_does_not_open_is_parked_and_the_rest_go(h: &Harness) {
    let p = stored(&h.ingest(vec![json!({"type": "identify", "userId": "parked-1"})])[0]);
    let now = tarmo_store::now_ms() - 1_000;
    let ids: Vec<i64> = (0..4)
        .map(|n| {
            h.store
                .transact_direct(|c, v| {
                    outbox::enqueue(c, v, p, "email", &message(n), now + n as i64)
                })
                .unwrap()
        })
        .collect();
    // The first three are broken, each its own way; the fourth is sound.
    h.store
        .transact_direct(|c, _| {
            c.exec(
                "UPDATE outbox SET payload = $1 WHERE id = $2",
                &[
                    P::Blob(b"not a sealed payload at all, but longer than a nonce"),
                    P::Int(ids[0]),
                ],
            )?;
            c.exec(
                "UPDATE outbox SET payload = NULL WHERE id = $1",
                &[P::Int(ids[1])],
            )?;
            c.exec(
                "UPDATE outbox SET key_owner = 987654321 WHERE id = $1",
                &[P::Int(ids[2])],
            )
        })
        .unwrap();
    let claimed = h
        .store
        .transact_direct(|c, v| outbox::claim_due(c, v, &me(), "email", tarmo_store::now_ms(), 10))
        .expect("broken rows do not fail the claim");
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[3]]);
    assert_eq!(claimed[0].message, message(3));
    let rows = h
        .store
        .conn()
        .unwrap()
        .query(
            "SELECT id, status, last_error FROM outbox WHERE id <= $1 ORDER BY id",
            &[P::Int(ids[2])],
        )
        .unwrap();
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.text(1).unwrap(),
                r.opt_text(2).unwrap().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("failed".into(), "the sealed payload does not open".into()),
            ("failed".into(), "the payload is missing".into()),
            ("failed".into(), "the person's data key is gone".into()),
        ]
    );
    // Parked rows are not claimed again.
    let again = h
        .store
        .transact_direct(|c, v| outbox::claim_due(c, v, &me(), "email", tarmo_store::now_ms(), 10))
        .unwrap();
    assert!(again.is_empty());
}

pub fn queues_show_depth_age_and_whether_anything_drains_them(h: &Harness) {
    let health = h.store.health.clone();
    let states = |now| queue_states(&mut *h.store.conn().unwrap(), &health, now).unwrap();
    let empty = states(tarmo_store::now_ms());
    assert!(
        empty.iter().all(|q| q.depth == 0 && q.state == "empty"),
        "{empty:?}"
    );
    assert!(empty.iter().any(|q| q.name == "processor_notifications"));

    let p = stored(&h.ingest(vec![json!({"type": "identify", "userId": "queued-1"})])[0]);
    let t0 = tarmo_store::now_ms();
    for n in 0..3 {
        h.store
            .transact_direct(|c, v| {
                outbox::enqueue(c, v, p, "email", &message(n), t0 - 60_000 + n as i64)
            })
            .unwrap();
    }
    let q = |v: Vec<tarmo_store::health::QueueView>| {
        v.into_iter().find(|q| q.name == "outbox_email").unwrap()
    };
    let email = q(states(t0));
    assert_eq!(
        (
            email.depth,
            email.oldest_age_seconds,
            email.consumer,
            email.state
        ),
        (3, Some(60), false, "stuck")
    );
    health.set_consumer("outbox_email", true);
    assert_eq!(q(states(t0)).state, "draining");
    // Sent and failed messages no longer wait.
    let claimed = h
        .store
        .transact_direct(|c, v| outbox::claim_due(c, v, &me(), "email", t0, 2))
        .unwrap();
    h.store
        .transact_direct(|c, _| {
            outbox::mark_sent(c, &me(), claimed[0].id, t0)?;
            outbox::mark_failed(c, &me(), claimed[1].id, "test")
        })
        .unwrap();
    let email = q(states(t0));
    assert_eq!((email.depth, email.oldest_age_seconds), (1, Some(59)));

    // Automations' sends wait from their due time; one due next year is
    // not work yet.
    for (occ, due) in [("past", t0 - 30_000), ("next_year", t0 + 365 * 86_400_000)] {
        h.store
            .transact_direct(|c, _| {
                tarmo_store::automations::follow::insert_due(c, "bday", p, occ, due, due, t0)
            })
            .unwrap();
    }
    let sends = states(t0)
        .into_iter()
        .find(|q| q.name == "automation_sends")
        .unwrap();
    assert_eq!(
        (sends.depth, sends.oldest_age_seconds, sends.state),
        (1, Some(30), "stuck")
    );
    health.set_consumer("automation_sends", true);
    assert!(
        states(t0)
            .iter()
            .any(|q| q.name == "automation_sends" && q.state == "draining")
    );
}
