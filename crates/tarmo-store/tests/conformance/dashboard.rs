//! The consent dashboard's aggregates on each backend: after appends,
//! a merge, an erasure and a rebuild, the per-day tables add up to the
//! ledger and to the materialised state.

use std::collections::BTreeMap;

use serde_json::json;
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::dashboard;

use super::Harness;

fn entry(profile: ProfileId, purpose: &str, decision: ConsentDecision, method: Method) -> NewEntry {
    NewEntry {
        channel: None,
        profile_id: profile,
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        decision,
        method,
        notice_version: None,
        at_ms: None,
        source: "dashboard test".into(),
        evidence: Default::default(),
    }
}

fn append(h: &Harness, entries: Vec<NewEntry>) {
    h.writer
        .transact_blocking(move |ctx| {
            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
        })
        .unwrap();
}

/// People per purpose and decision.
type Totals = BTreeMap<String, BTreeMap<String, i64>>;

/// The dashboard's totals now, and what the state table says.
fn totals(h: &Harness) -> (Totals, Totals) {
    let mut c = h.store.conn().unwrap();
    let d = dashboard::dashboard(&mut *c, tarmo_store::now_ms(), 30).unwrap();
    let mut now = d.now;
    for m in now.values_mut() {
        m.retain(|_, n| *n != 0);
    }
    now.retain(|_, m| !m.is_empty());
    let mut truth: Totals = BTreeMap::new();
    for r in c
        .query(
            "SELECT purpose_id, decision, count(*) FROM consent_state GROUP BY purpose_id, decision",
            &[] as &[P<'_>],
        )
        .unwrap()
    {
        truth
            .entry(r.text(0).unwrap())
            .or_default()
            .insert(r.text(1).unwrap(), r.int(2).unwrap());
    }
    (now, truth)
}

fn entries_match(h: &Harness) {
    let mut c = h.store.conn().unwrap();
    let d = dashboard::dashboard(&mut *c, tarmo_store::now_ms(), 30).unwrap();
    let from_table: i64 = d.entries.iter().map(|e| e.n).sum();
    let ledger = c
        .query("SELECT count(*) FROM consent_ledger", &[] as &[P<'_>])
        .unwrap()[0]
        .int(0)
        .unwrap();
    assert_eq!(from_table, ledger);
}

pub fn the_dashboard_aggregates_follow_every_consent_change(h: &Harness) {
    let people: Vec<ProfileId> = (0..4)
        .map(|i| {
            h.ingest(vec![
                json!({"type": "identify", "userId": format!("dash-{i}"),
                "anonymousId": format!("anon-dash-{i}")}),
            ]);
            h.lookup("user_id", &format!("dash-{i}")).unwrap()
        })
        .collect();
    append(
        h,
        vec![
            entry(
                people[0],
                "email_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
            entry(
                people[1],
                "email_marketing",
                ConsentDecision::Granted,
                Method::Import,
            ),
            entry(
                people[1],
                "email_marketing",
                ConsentDecision::Withdrawn,
                Method::OneClickUnsubscribe,
            ),
            entry(
                people[2],
                "sms_marketing",
                ConsentDecision::PendingConfirmation,
                Method::DoubleOptInSms,
            ),
            entry(
                people[3],
                "email_marketing",
                ConsentDecision::Granted,
                Method::Staff,
            ),
        ],
    );
    let (now, truth) = totals(h);
    assert_eq!(now, truth);
    assert_eq!(now["email_marketing"]["granted"], 2);
    assert_eq!(now["email_marketing"]["withdrawn"], 1);
    assert_eq!(now["sms_marketing"]["pending_confirmation"], 1);
    entries_match(h);
    let mut c = h.store.conn().unwrap();
    let d = dashboard::dashboard(&mut *c, tarmo_store::now_ms(), 30).unwrap();
    let rate = d.rates["email_marketing"].last().unwrap();
    assert_eq!((rate.granted, rate.total), (2, 3));
    let unsub: i64 = d
        .entries
        .iter()
        .filter(|e| e.method == "one_click_unsubscribe")
        .map(|e| e.n)
        .sum();
    assert_eq!(unsub, 1);
    drop(c);

    // One batch that moves several people between the same decisions: the
    // changes are summed per purpose and decision (two that cancel write
    // nothing) and still match the state. Then the same moves back.
    let swap = |a: ConsentDecision, b: ConsentDecision, c: ConsentDecision| {
        vec![
            entry(people[0], "email_marketing", a, Method::WebForm),
            entry(people[1], "email_marketing", b, Method::WebForm),
            entry(people[3], "email_marketing", c, Method::Staff),
        ]
    };
    append(
        h,
        swap(
            ConsentDecision::Withdrawn,
            ConsentDecision::Granted,
            ConsentDecision::Denied,
        ),
    );
    let (now, truth) = totals(h);
    assert_eq!(now, truth, "after a batch of changes");
    assert_eq!(now["email_marketing"]["granted"], 1);
    assert_eq!(now["email_marketing"]["withdrawn"], 1);
    assert_eq!(now["email_marketing"]["denied"], 1);
    append(
        h,
        swap(
            ConsentDecision::Granted,
            ConsentDecision::Withdrawn,
            ConsentDecision::Granted,
        ),
    );
    let (now, truth) = totals(h);
    assert_eq!(now, truth, "after the changes back");
    assert_eq!(now["email_marketing"]["granted"], 2);
    assert!(!now["email_marketing"].contains_key("denied"));
    entries_match(h);

    // A merge makes two people's states one person's.
    h.ingest(vec![
        json!({"type": "alias", "userId": "dash-0", "previousId": "anon-dash-2"}),
    ]);
    append(
        h,
        vec![entry(
            people[0],
            "sms_marketing",
            ConsentDecision::Granted,
            Method::WebForm,
        )],
    );
    let (now, truth) = totals(h);
    assert_eq!(now, truth, "after a merge");

    // An erasure takes the person's states out of the totals.
    h.writer
        .transact_blocking(move |ctx| {
            tarmo_store::erasure::erase_profile(ctx, people[3], None, true).map(|_| ())
        })
        .unwrap();
    let (now, truth) = totals(h);
    assert_eq!(now, truth, "after an erasure");
    assert_eq!(now["email_marketing"].get("granted"), Some(&1));

    // A rebuild of the materialised state leaves the totals true.
    let mut c = h.store.conn().unwrap();
    c.begin().unwrap();
    consent::rebuild(&mut *c).unwrap();
    c.commit().unwrap();
    drop(c);
    let (now, truth) = totals(h);
    assert_eq!(now, truth, "after a rebuild");
    entries_match(h);
}
