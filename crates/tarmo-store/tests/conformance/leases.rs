//! Several nodes on one store: queued work is claimed under leases, only
//! the holder acts on it, a dead node's work is taken over once its lease
//! ran out, and a restarted node takes back only its own claims.

use std::time::Duration;

use serde_json::json;
use tarmo_store::lease::{self, Claimant};
use tarmo_store::outbox::{self, OutboxMessage};

use super::{Harness, stored};

fn queue_two(h: &Harness, now: i64) -> Vec<i64> {
    let p = stored(&h.ingest(vec![json!({"type": "identify", "userId": "lease-1"})])[0]);
    h.store
        .transact_direct(|c, v| {
            (0..2)
                .map(|i| {
                    outbox::enqueue(
                        c,
                        v,
                        p,
                        "email",
                        &OutboxMessage::Marketing {
                            to: "lease@example.com".into(),
                            purpose: tarmo_core::consent::PurposeId::parse("email_marketing")
                                .unwrap(),
                            subject: format!("s{i}"),
                            text: "t".into(),
                            html: None,
                            unsubscribe: "u".into(),
                        },
                        now,
                    )
                })
                .collect()
        })
        .unwrap()
}

pub fn outbox_claims_are_leases_only_their_node_acts_on(h: &Harness) {
    let now = tarmo_store::now_ms();
    let ids = queue_two(h, now);
    let a = Claimant::new("node-a", Duration::from_secs(10));
    let b = Claimant::new("node-b", Duration::from_secs(10));
    let claim = |who: &Claimant, at: i64| {
        let who = who.clone();
        h.store
            .transact_direct(move |c, v| outbox::claim_due(c, v, &who, "email", at, 10))
            .unwrap()
    };
    assert_eq!(claim(&a, now).len(), 2);
    assert!(
        claim(&b, now + 9_000).is_empty(),
        "a live claim is not taken"
    );
    // Node A dies; its lease runs out and B takes its messages over.
    let taken = claim(&b, now + 10_001);
    assert_eq!(taken.len(), 2, "a dead node's work is taken over");
    assert!(taken.iter().all(|m| m.attempts == 2));
    let (first, second) = (ids[0], ids[1]);
    let sent = |who: &Claimant, id: i64| {
        let who = who.clone();
        h.store
            .transact_direct(move |c, _| outbox::mark_sent(c, &who, id, now))
            .unwrap()
    };
    assert!(!sent(&a, first), "A no longer holds the claim");
    assert!(sent(&b, first));
    // A comes back: it takes back only its own claims (it has none now).
    let recovered = |who: &Claimant| {
        let who = who.clone();
        h.store
            .transact_direct(move |c, _| outbox::recover(c, &who))
            .unwrap()
    };
    assert_eq!(recovered(&a), 0, "another node's claims are left alone");
    let renewed = h
        .store
        .transact_direct({
            let b = b.clone();
            move |c, _| outbox::renew(c, &b, &[first, second], now + 15_000)
        })
        .unwrap();
    assert_eq!(renewed, vec![second], "a sent message is no longer claimed");
    assert!(
        claim(&a, now + 20_001).is_empty(),
        "the renewed lease holds"
    );
    assert_eq!(recovered(&b), 1);
    assert_eq!(claim(&a, now + 20_001).len(), 1);
}

pub fn a_periodic_job_runs_on_one_node_per_turn(h: &Harness) {
    let take = |node: &'static str, at: i64, until: i64| {
        h.store
            .transact_direct(move |c, _| lease::take_job(c, "retention", node, at, until))
            .unwrap()
    };
    assert!(take("node-a", 1_000, 2_000));
    assert!(!take("node-b", 1_500, 2_500), "held by A");
    assert!(take("node-a", 1_500, 2_600), "A renews its own");
    assert!(!take("node-b", 2_599, 3_000));
    assert!(take("node-b", 2_600, 3_600), "A's turn ran out: B takes it");
}

/// On PostgreSQL, a node claiming skips rows another node's open claim
/// transaction holds, instead of waiting for it.
pub fn claims_skip_rows_another_node_is_claiming(h: &Harness) {
    if h.store.backend_name() != "postgres" {
        return;
    }
    let now = tarmo_store::now_ms();
    queue_two(h, now);
    let a = Claimant::new("node-a", Duration::from_secs(10));
    let b = Claimant::new("node-b", Duration::from_secs(10));
    let mut ca = h.store.conn().unwrap();
    let mut cb = h.store.conn().unwrap();
    ca.begin().unwrap();
    let got_a = outbox::claim_due(&mut *ca, h.store.vault(), &a, "email", now, 1).unwrap();
    assert_eq!(got_a.len(), 1);
    cb.begin().unwrap();
    let started = std::time::Instant::now();
    let got_b = outbox::claim_due(&mut *cb, h.store.vault(), &b, "email", now, 10).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "B waited for A");
    assert_eq!(got_b.len(), 1, "B takes the row A is not holding");
    assert_ne!(got_a[0].id, got_b[0].id);
    ca.commit().unwrap();
    cb.commit().unwrap();
}
