//! The register of processors, exports and disclosures, and erasure
//! notifications, on each backend.

use serde_json::{Value, json};
use std::time::Duration;
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_core::processor::ProcessorInput;
use tarmo_store::conn::{P, ProcessorId, ProfileId, RequestId};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::processors::{self, ExportView, ProcessorView, SubjectKey};

use super::Harness;

fn def(name: &str, purposes: &[&str], categories: &[&str], webhook: Option<&str>) -> Value {
    json!({
        "name": name,
        "role": "email delivery",
        "country": "fi",
        "dpa_reference": "DPA-7",
        "dpa_signed_on": "2024-05-02",
        "purposes": purposes,
        "data_categories": categories,
        "erasure_webhook": webhook,
    })
}

fn register(h: &Harness, v: Value) -> tarmo_store::Result<ProcessorView> {
    let input: ProcessorInput = serde_json::from_value(v).unwrap();
    let spec = input.parse(tarmo_store::now_ms()).unwrap();
    h.writer.transact_blocking(move |ctx| {
        processors::register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms)
    })
}

fn update(h: &Harness, id: ProcessorId, v: Value) -> tarmo_store::Result<ProcessorView> {
    let input: ProcessorInput = serde_json::from_value(v).unwrap();
    let spec = input.parse(tarmo_store::now_ms()).unwrap();
    h.writer.transact_blocking(move |ctx| {
        processors::update(ctx.conn, ctx.vault, &ctx.catalog, id, &spec, ctx.now_ms)
    })
}

fn code(r: tarmo_store::Result<impl std::fmt::Debug>) -> (u16, &'static str) {
    match r {
        Err(tarmo_store::Error::Rejected { code, .. }) => (code.status(), code.as_str()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn count(h: &Harness, table: &str) -> i64 {
    h.store
        .conn()
        .unwrap()
        .query(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()[0]
        .int(0)
        .unwrap()
}

fn token_column(h: &Harness, id: ProcessorId) -> Option<Vec<u8>> {
    h.store
        .conn()
        .unwrap()
        .query(
            "SELECT webhook_token FROM processors WHERE id = $1",
            &[P::from(id)],
        )
        .unwrap()[0]
        .opt_blob(0)
        .unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub fn processors_are_registered_checked_and_their_tokens_sealed(h: &Harness) {
    let mut v = def(
        "Mailer Oy",
        &["email_marketing", "email_marketing"],
        &["contact"],
        Some("https://mailer.example/erase"),
    );
    v["webhook_token"] = json!("tok-secret-123");
    let p = register(h, v.clone()).unwrap();
    assert_eq!(p.name, "Mailer Oy");
    assert_eq!((p.country.as_str(), p.in_eea), ("FI", true));
    assert_eq!(p.purposes, ["email_marketing"]);
    assert_eq!(p.dpa_signed_on, "2024-05-02");
    assert!(p.webhook_token_set);
    let sealed = token_column(h, p.id).unwrap();
    assert!(!contains(&sealed, "tok-secret-123"), "the token is sealed");
    assert!(!serde_json::to_string(&p).unwrap().contains("tok-secret"));

    // The name is taken whatever its case; a purpose must be in the catalog.
    let taken = def("MAILER OY", &["analytics"], &["behaviour"], None);
    assert_eq!(code(register(h, taken)), (409, "processor_name_taken"));
    let unknown = def("Other", &["no_such_purpose"], &["contact"], None);
    assert_eq!(code(register(h, unknown)), (400, "unknown_purpose"));
    assert_eq!(count(h, "processors"), 1, "nothing written by a refusal");

    // A change without `webhook_token` keeps the token; null removes it.
    let mut changed = def(
        "Mailer Oy",
        &["email_marketing", "sms_marketing"],
        &["contact"],
        Some("https://mailer.example/v2/erase"),
    );
    let p2 = update(h, p.id, changed.clone()).unwrap();
    assert!(p2.webhook_token_set);
    assert_eq!(token_column(h, p.id).unwrap(), sealed);
    assert_eq!(p2.purposes, ["email_marketing", "sms_marketing"]);
    changed["webhook_token"] = json!("tok-new");
    update(h, p.id, changed.clone()).unwrap();
    assert_ne!(token_column(h, p.id).unwrap(), sealed);
    changed["webhook_token"] = Value::Null;
    assert!(!update(h, p.id, changed.clone()).unwrap().webhook_token_set);
    // Removing the webhook removes any token with it.
    changed["webhook_token"] = json!("tok-again");
    update(h, p.id, changed.clone()).unwrap();
    changed["erasure_webhook"] = Value::Null;
    changed.as_object_mut().unwrap().remove("webhook_token");
    let p3 = update(h, p.id, changed.clone()).unwrap();
    assert!(p3.erasure_webhook.is_none() && !p3.webhook_token_set);

    // Outside the EEA, with a safeguard.
    let mut us = def("Cloud Inc", &["analytics"], &["behaviour"], None);
    us["country"] = json!("US");
    us["transfer_safeguard"] = json!("EU-US DPF");
    let c = register(h, us).unwrap();
    assert!(!c.in_eea);
    assert_eq!(c.transfer_safeguard.as_deref(), Some("EU-US DPF"));
    assert_eq!(
        code(update(
            h,
            c.id,
            def("mailer oy", &["analytics"], &["behaviour"], None)
        )),
        (409, "processor_name_taken")
    );
    assert_eq!(
        code(update(
            h,
            ProcessorId(9999),
            def("Ghost", &["analytics"], &["behaviour"], None)
        )),
        (404, "processor_not_found")
    );
    let all = processors::list(&mut *h.store.conn().unwrap()).unwrap();
    let names: Vec<_> = all.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Cloud Inc", "Mailer Oy"]);
    assert!(
        processors::get(&mut *h.store.conn().unwrap(), ProcessorId(9999))
            .unwrap()
            .is_none()
    );
}

fn grant(h: &Harness, profile: ProfileId, purpose: &str, decision: ConsentDecision) {
    let e = NewEntry {
        channel: None,
        profile_id: profile,
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        decision,
        method: Method::WebForm,
        notice_version: None,
        at_ms: None,
        source: "test form".into(),
        evidence: Default::default(),
    };
    h.writer
        .transact_blocking(move |ctx| {
            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &[e], ctx.now_ms)
        })
        .unwrap();
}

fn export(
    h: &Harness,
    processor: ProcessorId,
    purpose: &str,
    subjects: Vec<SubjectKey>,
) -> tarmo_store::Result<ExportView> {
    let purpose = tarmo_core::consent::PurposeId::parse(purpose).unwrap();
    h.writer.transact_blocking(move |ctx| {
        processors::export(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            processor,
            &purpose,
            &subjects,
            &tarmo_core::access::DataKind::ALL.into_iter().collect(),
            ctx.now_ms,
        )
    })
}

fn person(h: &Harness, user: &str, email: &str) -> ProfileId {
    h.ingest(vec![
        json!({"type": "identify", "userId": user, "traits": {"email": email, "phone": "040 1234567", "plan": "gold"}}),
        json!({"type": "track", "userId": user, "event": "Order Completed", "properties": {"total": 12.5}, "context": {"ip": "192.0.2.9"}}),
        json!({"type": "page", "userId": user, "name": "Home"}),
    ]);
    h.lookup("user_id", user).unwrap()
}

fn by_email(h: &Harness, email: &str) -> SubjectKey {
    SubjectKey::Identifier(h.store.vault().blind_index("email", email))
}

pub fn exports_follow_purposes_categories_and_decisions(h: &Harness) {
    let ann = person(h, "ann", "ann@example.com");
    let bob = person(h, "bob", "bob@example.com");
    let cat = person(h, "cat", "cat@example.com");
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    grant(h, cat, "email_marketing", ConsentDecision::Granted);
    grant(h, cat, "email_marketing", ConsentDecision::Withdrawn);
    let mailer = register(
        h,
        def(
            "Mailer",
            &["email_marketing", "order_fulfilment"],
            &["contact", "traits"],
            None,
        ),
    )
    .unwrap()
    .id;

    // Not one of its purposes: refused, nothing recorded.
    assert_eq!(
        code(export(
            h,
            mailer,
            "analytics",
            vec![SubjectKey::Profile(ann)]
        )),
        (403, "purpose_not_permitted")
    );
    assert_eq!(
        code(export(h, ProcessorId(9999), "analytics", vec![])),
        (404, "processor_not_found")
    );

    let out = export(
        h,
        mailer,
        "email_marketing",
        vec![
            by_email(h, "ann@example.com"),
            SubjectKey::Profile(bob),
            by_email(h, "cat@example.com"),
            by_email(h, "nobody@example.com"),
            SubjectKey::Profile(ann),
        ],
    )
    .unwrap();
    // email_marketing uses contact and purchase_history; the processor
    // takes contact and traits: only contact goes.
    assert_eq!(out.categories, ["contact"]);
    assert_eq!(out.exported.len(), 1);
    let a = &out.exported[0];
    assert_eq!((a.position, a.profile_id), (0, ann));
    let mut ids: Vec<_> = a
        .identifiers
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| (i.kind.as_str(), i.value.as_str()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [("email", "ann@example.com"), ("phone", "+358401234567")]
    );
    assert!(a.traits.is_none() && a.events.is_none());
    let excluded: Vec<_> = out
        .excluded
        .iter()
        .map(|e| (e.position, e.reason))
        .collect();
    assert_eq!(
        excluded,
        [
            (1, "no_consent"),
            (2, "withdrawn"),
            (3, "unknown_profile"),
            (4, "duplicate")
        ]
    );
    let text = serde_json::to_string(&out).unwrap();
    assert!(!text.contains("bob@") && !text.contains("cat@") && !text.contains("gold"));

    // A contract purpose allows everyone known. order_fulfilment uses
    // contact, address and purchase_history; this processor takes the last
    // two: the address trait (none here) and track events, without context.
    let mut spec = def(
        "Shop analytics",
        &["order_fulfilment"],
        &["purchase_history", "address"],
        None,
    );
    let shop = register(h, spec.clone()).unwrap().id;
    let out = export(
        h,
        shop,
        "order_fulfilment",
        vec![SubjectKey::Profile(bob), SubjectKey::Profile(ann)],
    )
    .unwrap();
    assert_eq!(out.categories, ["address", "purchase_history"]);
    assert_eq!(out.exported.len(), 2);
    let b = &out.exported[0];
    assert!(b.identifiers.is_none());
    assert_eq!(
        b.traits.as_ref().unwrap().len(),
        0,
        "no address trait, and nothing else"
    );
    let events = b.events.as_ref().unwrap();
    assert_eq!(events.len(), 1, "track events only: {events:?}");
    assert_eq!(events[0]["event"], "Order Completed");
    assert_eq!(events[0]["properties"]["total"], 12.5);
    assert!(events[0].get("context").is_none());

    // No category in common: refused.
    spec["data_categories"] = json!(["health"]);
    update(h, shop, spec).unwrap();
    assert_eq!(
        code(export(
            h,
            shop,
            "order_fulfilment",
            vec![SubjectKey::Profile(ann)]
        )),
        (403, "no_common_data_categories")
    );

    // A disclosure per person exported, in the same transaction.
    assert_eq!(count(h, "disclosures"), 3);
    let d = processors::disclosures_of(&mut *h.store.conn().unwrap(), ann).unwrap();
    let seen: Vec<_> = d
        .iter()
        .map(|d| {
            (
                d.processor.as_str(),
                d.purpose.as_str(),
                d.categories.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("Mailer", "email_marketing", vec!["contact".to_owned()]),
            (
                "Shop analytics",
                "order_fulfilment",
                vec!["address".to_owned(), "purchase_history".to_owned()]
            ),
        ]
    );
    assert!(
        processors::disclosures_of(&mut *h.store.conn().unwrap(), cat)
            .unwrap()
            .is_empty()
    );
}

pub fn disclosures_follow_a_merge(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "anonymousId": "x1", "traits": {"email": "m@shop.fi"}}),
    ]);
    let email_profile = h.lookup("email", "m@shop.fi").unwrap();
    h.ingest(vec![
        json!({"type": "track", "anonymousId": "x2", "event": "Viewed"}),
    ]);
    let anon = h.lookup("anonymous_id", "x2").unwrap();
    assert_ne!(anon, email_profile);
    let p = register(
        h,
        def(
            "Fulfil",
            &["order_fulfilment"],
            &["contact"],
            Some("https://f.example/e"),
        ),
    )
    .unwrap()
    .id;
    let out = export(h, p, "order_fulfilment", vec![SubjectKey::Profile(anon)]).unwrap();
    assert_eq!(out.exported.len(), 1);
    h.ingest(vec![
        json!({"type": "identify", "anonymousId": "x2", "traits": {"email": "m@shop.fi"}}),
    ]);
    assert_eq!(h.lookup("anonymous_id", "x2"), Some(email_profile));
    let d = processors::disclosures_of(&mut *h.store.conn().unwrap(), email_profile).unwrap();
    assert_eq!(d.len(), 1);
    let n = h
        .writer
        .transact_blocking(move |ctx| {
            processors::enqueue_erasure_notifications(
                ctx.conn,
                ctx.vault,
                RequestId(7),
                &[email_profile],
                &[("email", "m@shop.fi")],
                ctx.now_ms,
            )
        })
        .unwrap();
    assert_eq!(n, 1, "the merged person's processor is found");
}

pub fn erasure_notifications_are_queued_once_sealed_and_wiped(h: &Harness) {
    let ann = person(h, "ann", "ann@example.com");
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    let mut mailer = def(
        "Mailer",
        &["email_marketing"],
        &["contact"],
        Some("https://mailer.example/erase"),
    );
    mailer["webhook_token"] = json!("tok-1");
    let mailer = register(h, mailer).unwrap().id;
    let shop = register(
        h,
        def(
            "Shop",
            &["order_fulfilment"],
            &["purchase_history"],
            Some("https://shop.example/erase"),
        ),
    )
    .unwrap()
    .id;
    let post = register(h, def("Post", &["order_fulfilment"], &["contact"], None))
        .unwrap()
        .id;
    let idle = register(
        h,
        def(
            "Idle",
            &["email_marketing"],
            &["contact"],
            Some("https://idle.example/erase"),
        ),
    )
    .unwrap()
    .id;
    export(h, mailer, "email_marketing", vec![SubjectKey::Profile(ann)]).unwrap();
    export(h, mailer, "email_marketing", vec![SubjectKey::Profile(ann)]).unwrap();
    export(h, shop, "order_fulfilment", vec![SubjectKey::Profile(ann)]).unwrap();
    export(h, post, "order_fulfilment", vec![SubjectKey::Profile(ann)]).unwrap();

    let ids = vec![
        ("email".to_owned(), "ann@example.com".to_owned()),
        ("phone".to_owned(), "+358401234567".to_owned()),
        ("user_id".to_owned(), "ann".to_owned()),
    ];
    let enqueue = |h: &Harness| {
        let ids = ids.clone();
        h.writer
            .transact_blocking(move |ctx| {
                processors::enqueue_erasure_notifications(
                    ctx.conn,
                    ctx.vault,
                    RequestId(42),
                    &[ann],
                    &ids,
                    ctx.now_ms,
                )
            })
            .unwrap()
    };
    assert_eq!(enqueue(h), 2, "Mailer and Shop have webhooks");
    assert_eq!(enqueue(h), 0, "a retried erasure queues nothing twice");

    let views = processors::notifications_for_request(&mut *h.store.conn().unwrap(), RequestId(42))
        .unwrap();
    let seen: Vec<_> = views
        .iter()
        .map(|v| (v.processor.as_str(), v.status.as_str(), v.attempts))
        .collect();
    assert_eq!(
        seen,
        [
            ("Mailer", "pending", 0),
            ("Post", "manual", 0),
            ("Shop", "pending", 0)
        ]
    );
    assert!(views.iter().all(|v| v.processor_id != idle));
    assert!(
        processors::notifications_for_request(&mut *h.store.conn().unwrap(), RequestId(43))
            .unwrap()
            .is_empty()
    );
    // The payloads are sealed.
    for r in h
        .store
        .conn()
        .unwrap()
        .query(
            "SELECT payload FROM processor_notifications WHERE payload IS NOT NULL",
            &[],
        )
        .unwrap()
    {
        let b = r.blob(0).unwrap();
        assert!(!contains(&b, "ann@example.com") && !contains(&b, "erasure"));
    }

    let claim = |h: &Harness, at: i64| {
        h.writer
            .transact_blocking(move |ctx| {
                processors::claim_due_notifications(
                    ctx.conn,
                    ctx.vault,
                    &Default::default(),
                    at,
                    10,
                )
            })
            .unwrap()
    };
    let now = tarmo_store::now_ms();
    let claimed = claim(h, now + 1000);
    assert_eq!(claimed.len(), 2);
    let m = claimed.iter().find(|c| c.processor_id == mailer).unwrap();
    let s = claimed.iter().find(|c| c.processor_id == shop).unwrap();
    assert_eq!(m.attempts, 1);
    assert_eq!(m.webhook.as_deref(), Some("https://mailer.example/erase"));
    assert_eq!(m.token.as_ref().map(|t| t.expose()), Some("tok-1"));
    assert!(s.token.is_none());
    assert_eq!(m.payload["type"], "erasure");
    assert_eq!(m.payload["request_id"], 42);
    assert_eq!(m.payload["profile_id"], ann.0);
    assert!(m.payload["requested_at"].as_str().unwrap().ends_with('Z'));
    // Each processor hears only the identifiers it received.
    assert_eq!(
        m.payload["identifiers"],
        json!([{"type": "email", "value": "ann@example.com"}, {"type": "phone", "value": "+358401234567"}])
    );
    assert_eq!(s.payload["identifiers"], json!([]));
    assert!(
        !format!("{m:?}").contains("ann@"),
        "Debug hides the payload"
    );
    assert!(claim(h, now + 1000).is_empty(), "claimed once");
    let other = tarmo_store::lease::Claimant::new("another-node", Duration::from_secs(60));
    let by_other = {
        let other = other.clone();
        h.writer
            .transact_blocking(move |ctx| {
                processors::claim_due_notifications(ctx.conn, ctx.vault, &other, now + 1000, 10)
            })
            .unwrap()
    };
    assert!(
        by_other.is_empty(),
        "another node does not take a live claim"
    );

    let (mid, sid) = (m.id, s.id);
    h.writer
        .transact_blocking(move |ctx| {
            processors::mark_retry(
                ctx.conn,
                &Default::default(),
                mid,
                now + 60_000,
                "HTTP 503: try again later",
            )?;
            processors::mark_delivered(ctx.conn, &Default::default(), sid, ctx.now_ms)
        })
        .unwrap();
    assert!(claim(h, now + 59_000).is_empty(), "not due yet");
    let again = claim(h, now + 60_000);
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    // Another node's restart leaves this node's claims alone.
    let n = h
        .writer
        .transact_blocking(move |ctx| processors::recover_notifications(ctx.conn, &other))
        .unwrap();
    assert_eq!(n, 0);
    // A crash mid-delivery: the notification is due again.
    let n = h
        .writer
        .transact_blocking(|ctx| processors::recover_notifications(ctx.conn, &Default::default()))
        .unwrap();
    assert_eq!(n, 1);
    let again = claim(h, now + 60_000);
    assert_eq!(again[0].attempts, 3);
    h.writer
        .transact_blocking(move |ctx| {
            processors::mark_failed(ctx.conn, &Default::default(), mid, "refused with HTTP 404")
        })
        .unwrap();

    let views = processors::notifications_for_request(&mut *h.store.conn().unwrap(), RequestId(42))
        .unwrap();
    let m = views.iter().find(|v| v.processor == "Mailer").unwrap();
    assert_eq!(
        (m.status.as_str(), m.attempts, m.last_error.as_deref()),
        ("failed", 3, Some("refused with HTTP 404"))
    );
    let s = views.iter().find(|v| v.processor == "Shop").unwrap();
    assert_eq!(s.status, "delivered");
    assert!(s.delivered_at.is_some() && s.last_error.is_none());
    assert_eq!(
        h.store
            .conn()
            .unwrap()
            .query(
                "SELECT count(*) FROM processor_notifications WHERE payload IS NOT NULL",
                &[]
            )
            .unwrap()[0]
            .int(0)
            .unwrap(),
        0,
        "delivered and failed payloads are wiped"
    );
    let counts = processors::notification_counts(&mut *h.store.conn().unwrap()).unwrap();
    assert_eq!(
        counts,
        [
            ("delivered".to_owned(), 1),
            ("failed".to_owned(), 1),
            ("manual".to_owned(), 1)
        ]
    );

    // A payload that does not open is given up, not left to block the queue.
    let ids = vec![("email", "ann@example.com")];
    let n = h
        .writer
        .transact_blocking(move |ctx| {
            processors::enqueue_erasure_notifications(
                ctx.conn,
                ctx.vault,
                RequestId(43),
                &[ann],
                &ids,
                ctx.now_ms,
            )
        })
        .unwrap();
    assert_eq!(n, 2);
    h.store
        .conn()
        .unwrap()
        .exec(
            "UPDATE processor_notifications SET payload = $1 WHERE request_id = 43 AND processor_id = $2",
            &[P::Blob(&[7u8; 40]), P::from(mailer)],
        )
        .unwrap();
    let claimed = claim(h, tarmo_store::now_ms() + 1000);
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].processor_id, shop);
    let views = processors::notifications_for_request(&mut *h.store.conn().unwrap(), RequestId(43))
        .unwrap();
    let m = views.iter().find(|v| v.processor == "Mailer").unwrap();
    assert_eq!(
        (m.status.as_str(), m.last_error.as_deref()),
        ("failed", Some("the sealed payload or token does not open"))
    );
}
