//! Automations and campaigns on each backend: one send per (flow, person,
//! occurrence) by the database's own key; claims that two nodes cannot
//! share; the decision, caps and quiet hours taken at send time; bad
//! definitions refused with nothing saved.

use serde_json::{Value, json};
use tarmo_core::automations::template::Template;
use tarmo_core::automations::{Automation, Campaign};
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_store::automations::follow::{follow, insert_due};
use tarmo_store::automations::send::send_due;
use tarmo_store::automations::{self as flows, SendConfig};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::outbox::OutboxMessage;

use super::Harness;

fn grant(h: &Harness, profile: ProfileId, purpose: &str, d: ConsentDecision) {
    let e = NewEntry {
        channel: None,
        profile_id: profile,
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        decision: d,
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

fn template(h: &Harness, t: Value) -> tarmo_store::Result<()> {
    let t: Template = serde_json::from_value(t).unwrap();
    h.writer.transact_blocking(move |ctx| {
        flows::template_put(ctx.conn, &ctx.catalog, t, true, ctx.now_ms).map(|_| ())
    })
}

fn automation(h: &Harness, a: Value) -> tarmo_store::Result<()> {
    let a = Automation::from_json(&a, None).unwrap();
    h.writer.transact_blocking(move |ctx| {
        flows::automation_put(
            ctx.conn,
            &ctx.catalog,
            &SendConfig::default(),
            a,
            true,
            ctx.now_ms,
        )
        .map(|_| ())
    })
}

/// One scheduler pass at `at`: follow, then send. (sent, skipped, waiting)
fn pass(h: &Harness, at: i64) -> (u64, u64, u64) {
    let cfg = SendConfig::default();
    h.writer
        .transact_blocking(move |ctx| {
            follow(ctx.conn, ctx.vault, &cfg, at)?;
            let s = send_due(ctx.conn, ctx.vault, &ctx.catalog, &cfg, at, 1000)?;
            Ok((s.sent, s.skipped, s.waiting))
        })
        .unwrap()
}

fn sends(h: &Harness, flow: &str) -> Vec<(ProfileId, String, String, Option<String>)> {
    h.store
        .conn()
        .unwrap()
        .query(
            "SELECT profile_id, occurrence, status, reason FROM sends WHERE flow_id = $1
             ORDER BY profile_id, occurrence",
            &[P::Text(flow)],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                ProfileId(r.int(0).unwrap()),
                r.text(1).unwrap(),
                r.text(2).unwrap(),
                r.opt_text(3).unwrap(),
            )
        })
        .collect()
}

fn outbox_of(h: &Harness, channel: &str) -> Vec<tarmo_store::outbox::Claimed> {
    let ch = channel.to_owned();
    h.writer
        .transact_blocking(move |ctx| {
            tarmo_store::outbox::claim_due(
                ctx.conn,
                ctx.vault,
                &tarmo_store::lease::Claimant::new("node-test", std::time::Duration::from_secs(60)),
                &ch,
                i64::MAX / 2,
                10_000,
            )
        })
        .unwrap()
}

fn welcome() -> Value {
    json!({"id": "welcome", "channel": "email", "languages": {
        "en": {"subject": "Still thinking, {{ traits.first_name }}?", "text": "Hi {{ traits.first_name }}", "html": "<p>Hi {{ traits.first_name }}</p>"},
        "fi": {"subject": "Mietitkö vielä, {{ traits.first_name }}?", "text": "Hei {{ traits.first_name }}"}}})
}

fn view(user: &str) -> Value {
    json!({"type": "track", "userId": user, "event": "Product Viewed"})
}

pub fn automations_send_once_per_occurrence_and_decide_at_send_time(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "first_name": "Ann", "language": "fi"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
        json!({"type": "identify", "userId": "cy", "traits": {"email": "cy@example.fi"}}),
        json!({"type": "identify", "userId": "dee"}),
    ]);
    let [ann, bob, cy, dee] = ["ann", "bob", "cy", "dee"].map(|u| h.lookup("user_id", u).unwrap());
    for p in [ann, bob, cy, dee] {
        grant(h, p, "email_marketing", ConsentDecision::Granted);
    }
    template(h, welcome()).unwrap();
    automation(
        h,
        json!({"id": "reminder", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"event": "Product Viewed", "delay": "2s", "unless": {"event": "Order Completed", "within": "1h"}}}),
    )
    .unwrap();
    h.ingest(vec![
        view("ann"),
        view("bob"),
        json!({"type": "track", "userId": "bob", "event": "Order Completed"}),
        view("cy"),
        view("dee"),
    ]);
    let now = tarmo_store::now_ms();
    // Due in two seconds: nothing yet.
    assert_eq!(pass(h, now), (0, 0, 0));
    assert_eq!(sends(h, "reminder").len(), 4);
    // Cy withdraws between scheduling and sending.
    grant(h, cy, "email_marketing", ConsentDecision::Withdrawn);
    assert_eq!(pass(h, now + 3000), (1, 3, 0));
    let by: Vec<(ProfileId, String, Option<String>)> = sends(h, "reminder")
        .into_iter()
        .map(|(p, _, s, r)| (p, s, r))
        .collect();
    assert!(by.contains(&(ann, "sent".into(), None)), "{by:?}");
    assert!(
        by.contains(&(bob, "skipped".into(), Some("converted".into()))),
        "{by:?}"
    );
    assert!(
        by.contains(&(cy, "skipped".into(), Some("withdrawn".into()))),
        "{by:?}"
    );
    assert!(
        by.contains(&(dee, "skipped".into(), Some("missing_contact".into()))),
        "{by:?}"
    );

    // Once: another pass, and the same occurrence queued again, send nothing.
    assert_eq!(pass(h, now + 10_000), (0, 0, 0));
    let occ = sends(h, "reminder")
        .into_iter()
        .find(|s| s.0 == ann)
        .unwrap()
        .1;
    let again = h
        .writer
        .transact_blocking(move |ctx| insert_due(ctx.conn, "reminder", ann, &occ, 0, 0, 0))
        .unwrap();
    assert_eq!(
        again, 0,
        "the (flow, person, occurrence) key refuses a second send"
    );
    assert_eq!(pass(h, now + 20_000), (0, 0, 0));

    let mail = outbox_of(h, "email");
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].profile_id, ann);
    let OutboxMessage::Marketing {
        to,
        subject,
        text,
        unsubscribe,
        ..
    } = &mail[0].message
    else {
        panic!("a marketing email")
    };
    assert_eq!(to, "ann@example.fi");
    assert_eq!(subject, "Mietitkö vielä, Ann?");
    assert!(text.starts_with("Hei Ann"), "{text}");
    assert!(
        text.contains("/p/") && text.contains(&format!("/u/{unsubscribe}")),
        "{text}"
    );

    let c = flows::counters(&mut *h.store.conn().unwrap(), "reminder", "email_marketing").unwrap();
    assert_eq!(c.sent, 1);
    assert_eq!(c.skipped.get("converted"), Some(&1));
    assert_eq!(c.skipped.get("withdrawn"), Some(&1));
    assert_eq!(c.pending, 0);
}

pub fn caps_and_quiet_hours_are_applied_at_send_time(h: &Harness) {
    h.ingest(vec![json!({"type": "identify", "userId": "ann",
        "traits": {"email": "ann@example.fi", "timezone": "UTC"}})]);
    let ann = h.lookup("user_id", "ann").unwrap();
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    template(h, welcome()).unwrap();
    let now = tarmo_store::now_ms();
    let minute_of_day = ((now / 60_000) % 1440) as u32;
    let hhmm = |m: u32| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    // Quiet from an hour ago to an hour from now, in the person's zone.
    automation(
        h,
        json!({"id": "quiet", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"event": "Product Viewed", "delay": "1s"},
            "quiet_hours": {"start": hhmm(minute_of_day + 1380), "end": hhmm(minute_of_day + 60)}}),
    )
    .unwrap();
    automation(
        h,
        json!({"id": "capped", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"event": "Product Viewed", "delay": "1s"},
            "caps": {"per_person_per_day": 1, "per_person_per_week": 3}}),
    )
    .unwrap();
    h.ingest(vec![view("ann"), view("ann")]);
    // capped: the first view is sent, the second capped; quiet: both wait.
    // This automation's own caps; the caps across flows are lifted here.
    let own = SendConfig {
        frequency_caps: tarmo_core::automations::FrequencyCaps {
            per_day: 0,
            per_week: 0,
        },
        ..SendConfig::default()
    };
    assert_eq!(pass_with(h, own.clone(), now + 2000), (1, 1, 2));
    let quiet = sends(h, "quiet");
    assert!(quiet.iter().all(|s| s.2 == "due"), "{quiet:?}");
    let capped: Vec<Option<String>> = sends(h, "capped").into_iter().map(|s| s.3).collect();
    assert!(capped.contains(&Some("capped".into())), "{capped:?}");
    let due: Vec<i64> = h
        .store
        .conn()
        .unwrap()
        .query(
            "SELECT due_ms FROM sends WHERE flow_id = 'quiet'",
            &[P::Null; 0],
        )
        .unwrap()
        .iter()
        .map(|r| r.int(0).unwrap())
        .collect();
    let end = (now / 60_000 + 60) * 60_000;
    assert!(
        due.iter().all(|d| (*d - end).abs() <= 1000),
        "{due:?} vs {end}"
    );
    // After the quiet hours: both sent (this one has no caps).
    assert_eq!(pass_with(h, own, end + 1000), (2, 0, 0));
    let c = flows::counters(&mut *h.store.conn().unwrap(), "quiet", "email_marketing").unwrap();
    assert_eq!((c.sent, c.deferred_quiet_hours), (2, 2));
}

pub fn due_sends_are_claimed_by_one_node_only(h: &Harness) {
    let msgs: Vec<Value> = (0..40)
        .map(|i| json!({"type": "identify", "userId": format!("u{i}"), "traits": {"email": format!("u{i}@example.fi")}}))
        .collect();
    h.ingest(msgs);
    let ids: Vec<ProfileId> = (0..40)
        .map(|i| h.lookup("user_id", &format!("u{i}")).unwrap())
        .collect();
    for &p in &ids {
        grant(h, p, "email_marketing", ConsentDecision::Granted);
    }
    template(h, welcome()).unwrap();
    h.store
        .conn()
        .unwrap()
        .exec(
            "INSERT INTO segments (id, name, purpose_id, rule, created_ms, updated_ms) VALUES ('all', 'all', 'email_marketing', $1, 0, 0)",
            &[P::Blob(b"unused by this test")],
        )
        .unwrap();
    for &p in &ids {
        h.store
            .conn()
            .unwrap()
            .exec(
                "INSERT INTO segment_members (segment_id, profile_id, since_ms) VALUES ('all', $1, 0)",
                &[P::Int(p.0)],
            )
            .unwrap();
    }
    let now = tarmo_store::now_ms();
    let c = Campaign::from_json(
        &json!({"id": "launch", "segment": "all", "template": "welcome", "purpose": "email_marketing",
            "channel": "email", "per_minute": 100_000}),
        now,
    )
    .unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            flows::campaign_create(ctx.conn, &ctx.catalog, c, ctx.now_ms).map(|_| ())
        })
        .unwrap();
    let cfg = SendConfig::default();
    let c2 = cfg.clone();
    h.writer
        .transact_blocking(move |ctx| follow(ctx.conn, ctx.vault, &c2, now + 1000))
        .unwrap();
    assert_eq!(sends(h, "launch").len(), 40);
    // Two "nodes" on their own connections, at once, in batches of five.
    let catalog = h.store.catalog().unwrap();
    let total: u64 = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (store, catalog, cfg) = (h.store.clone(), catalog.clone(), cfg.clone());
                s.spawn(move || {
                    let mut n = 0;
                    for _ in 0..40 {
                        match store
                            .transact_direct(|c, v| send_due(c, v, &catalog, &cfg, now + 60_000, 5))
                        {
                            Ok(r) => n += r.sent,
                            // SQLite's single writer may be busy: try again.
                            Err(e) if e.is_transient() => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    n
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum()
    });
    assert_eq!(total, 40);
    assert_eq!(
        outbox_of(h, "email").len(),
        40,
        "one message each, none twice"
    );
    let c = flows::counters(&mut *h.store.conn().unwrap(), "launch", "email_marketing").unwrap();
    assert_eq!((c.sent, c.pending), (40, 0));
}

pub fn birthdays_are_scheduled_a_year_at_a_time(h: &Harness) {
    let now = tarmo_store::now_ms();
    let today = tarmo_store::rfc3339(now);
    let md = &today[5..10];
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "birthday": format!("1990-{md}"), "timezone": "UTC"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi", "birthday": md}}),
    ]);
    let (ann, bob) = (
        h.lookup("user_id", "ann").unwrap(),
        h.lookup("user_id", "bob").unwrap(),
    );
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    template(h, welcome()).unwrap();
    automation(
        h,
        json!({"id": "bday", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"birthday": {"local_time": "00:00"}}}),
    )
    .unwrap();
    // The day's due set: an index range.
    assert_eq!(pass(h, now), (1, 1, 0));
    let s = sends(h, "bday");
    let year: i64 = today[..4].parse().unwrap();
    assert!(
        s.contains(&(ann, format!("b{year}"), "sent".into(), None)),
        "{s:?}"
    );
    assert!(
        s.contains(&(
            bob,
            format!("b{year}"),
            "skipped".into(),
            Some("no_consent".into())
        )),
        "{s:?}"
    );
    // Next year's greetings wait.
    assert!(
        s.contains(&(ann, format!("b{}", year + 1), "due".into(), None)),
        "{s:?}"
    );
    // An identify later today does not greet again.
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"first_name": "Ann"}}),
    ]);
    assert_eq!(pass(h, now + 1000), (0, 0, 0));
    assert_eq!(outbox_of(h, "email").len(), 1);
}

pub fn bad_automations_are_refused_and_nothing_is_saved(h: &Harness) {
    template(h, welcome()).unwrap();
    template(
        h,
        json!({"id": "sms_hi", "channel": "sms", "languages": {"en": {"text": "Hi"}}}),
    )
    .unwrap();
    template(h, json!({"id": "city", "channel": "email", "languages": {"en": {"subject": "x", "text": "{{ traits.city }}"}}})).unwrap();
    let base = json!({"id": "a", "purpose": "email_marketing", "channel": "email", "template": "welcome",
        "trigger": {"event": "Product Viewed", "delay": "1h"}});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (a, code) in [
        (with("purpose", json!("nope")), "unknown_purpose"),
        (with("template", json!("nope")), "unknown_template"),
        (
            with("template", json!("sms_hi")),
            "template_channel_mismatch",
        ),
        (
            with("template", json!("city")),
            "template_field_not_permitted",
        ),
        (
            with("purpose", json!("sms_marketing")),
            "channel_not_covered",
        ),
        (
            with("trigger", json!({"segment_entered": "nope"})),
            "unknown_segment",
        ),
        (
            with(
                "trigger",
                json!({"schedule": {"cron": "0 0 31 2 *", "segment": "nope"}}),
            ),
            "cron_never_fires",
        ),
    ] {
        match automation(h, a) {
            Err(tarmo_store::Error::Rejected { code: c, .. }) => assert_eq!(c.as_str(), code),
            other => panic!("{code}: {other:?}"),
        }
    }
    assert!(
        flows::flows(&mut *h.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );
    // A template in use may not start reading what its purpose does not allow.
    automation(h, base).unwrap();
    let bad: Template = serde_json::from_value(json!({"id": "welcome", "channel": "email",
        "languages": {"en": {"subject": "x", "text": "{{ traits.city }}"}}}))
    .unwrap();
    let r = h.writer.transact_blocking(move |ctx| {
        flows::template_put(ctx.conn, &ctx.catalog, bad, false, ctx.now_ms).map(|_| ())
    });
    assert!(
        matches!(
            r,
            Err(tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::TemplateFieldNotPermitted,
                ..
            })
        ),
        "{r:?}"
    );
    let r = h
        .writer
        .transact_blocking(|ctx| flows::template_delete(ctx.conn, "welcome"));
    assert!(matches!(
        r,
        Err(tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::TemplateInUse,
            ..
        })
    ));
}

pub fn sms_stop_withdraws_the_numbers_sms_purposes(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"phone": "+358401234567"}}),
    ]);
    let ann = h.lookup("user_id", "ann").unwrap();
    grant(h, ann, "sms_marketing", ConsentDecision::Granted);
    let k = h.cfg.kind("phone").unwrap();
    let id = h.cfg.identifier(k, "+358401234567").unwrap();
    let bidx = h.store.vault().blind_index(id.kind().as_str(), id.value());
    let withdrawn = h
        .writer
        .transact_blocking(move |ctx| {
            flows::sms_stop(ctx.conn, ctx.vault, &ctx.catalog, &bidx, "STOP", ctx.now_ms)
        })
        .unwrap();
    assert_eq!(withdrawn, vec!["sms_marketing".to_owned()]);
    let st = consent::state(
        &mut *h.store.conn().unwrap(),
        ann,
        &tarmo_core::consent::PurposeId::parse("sms_marketing").unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(st.decision, ConsentDecision::Withdrawn);
}

fn pass_with(h: &Harness, cfg: SendConfig, at: i64) -> (u64, u64, u64) {
    h.writer
        .transact_blocking(move |ctx| {
            follow(ctx.conn, ctx.vault, &cfg, at)?;
            let s = send_due(ctx.conn, ctx.vault, &ctx.catalog, &cfg, at, 1000)?;
            Ok((s.sent, s.skipped, s.waiting))
        })
        .unwrap()
}

pub fn frequency_caps_hold_across_automations_per_channel(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "phone": "+358401234567"}}),
    ]);
    let ann = h.lookup("user_id", "ann").unwrap();
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    grant(h, ann, "sms_marketing", ConsentDecision::Granted);
    template(h, welcome()).unwrap();
    template(
        h,
        json!({"id": "sms_hi", "channel": "sms", "languages": {"en": {"text": "Hi"}}}),
    )
    .unwrap();
    // Three email automations and one SMS, each uncapped on its own.
    for (id, purpose, channel, t) in [
        ("one", "email_marketing", "email", "welcome"),
        ("two", "email_marketing", "email", "welcome"),
        ("three", "email_marketing", "email", "welcome"),
        ("text", "sms_marketing", "sms", "sms_hi"),
    ] {
        automation(
            h,
            json!({"id": id, "purpose": purpose, "channel": channel, "template": t,
                "trigger": {"event": "Product Viewed", "delay": "1s"}}),
        )
        .unwrap();
    }
    h.ingest(vec![view("ann")]);
    let now = tarmo_store::now_ms();
    let mut cfg = SendConfig::default();
    cfg.frequency_caps.per_day = 2;
    // Two emails, the third capped across automations; the SMS is its own channel.
    assert_eq!(pass_with(h, cfg.clone(), now + 2000), (3, 1, 0));
    let skipped: Vec<String> = ["one", "two", "three"]
        .iter()
        .flat_map(|f| sends(h, f))
        .filter_map(|s| s.3)
        .collect();
    assert_eq!(skipped, vec!["frequency_capped".to_owned()]);
    assert_eq!(outbox_of(h, "email").len(), 2);
    assert_eq!(outbox_of(h, "sms").len(), 1);
    // The week's cap counts the same sends: 2 a week stops the next day's too.
    cfg.frequency_caps = tarmo_core::automations::FrequencyCaps {
        per_day: 0,
        per_week: 2,
    };
    h.ingest(vec![view("ann")]);
    let (sent, skipped, _) = pass_with(h, cfg, now + 86_400_000 + 5000);
    assert_eq!((sent, skipped), (1, 3), "sms sent, every email capped");
}

pub fn a_reminder_names_the_viewed_product_its_price_and_the_store_that_has_it(h: &Harness) {
    use tarmo_store::imports::{self, Format, ImportKind, ImportSpec, Mapping};
    let import = |kind: ImportKind, csv: &str| {
        let spec = ImportSpec {
            kind,
            format: Format::Csv,
            mapping: Mapping::default(),
            source: "till".into(),
            documentation: "forms".into(),
            file_name: format!("{}.csv", kind.as_str()),
            skip_invalid: false,
            dry_run: false,
        };
        imports::run(
            &h.store,
            &h.writer,
            &h.cfg,
            spec,
            csv.as_bytes(),
            None,
            |_, _| {},
        )
        .unwrap()
    };
    // Offers read where people shop (traits) and what they did.
    let mut spec = h
        .store
        .catalog()
        .unwrap()
        .require("email_marketing")
        .unwrap()
        .spec
        .clone();
    spec.data_categories
        .push(tarmo_core::consent::DataCategory::parse("profile").unwrap());
    let id = tarmo_core::consent::PurposeId::parse("email_marketing").unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            consent::upsert_purpose(ctx.conn, &id, &spec, false, ctx.now_ms)
        })
        .unwrap();
    h.store.catalog_changed();
    import(
        ImportKind::Products,
        "product_id,name_fi,name_en,category,price\nP1,Vihreä tee,Green tea,tea,4.50\n",
    );
    import(
        ImportKind::Stores,
        "store_id,name,city\nS1,Tarmo Keskusta,Tampere\nS2,Tarmo Itis,Helsinki\n",
    );
    import(
        ImportKind::Stock,
        "store_id,product_id,quantity\nS1,P1,5\nS2,P1,0\n",
    );
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "first_name": "Ann", "preferred_store": "S1", "language": "en"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi", "first_name": "Bob", "preferred_store": "S2", "language": "en"}}),
    ]);
    let (ann, bob) = (
        h.lookup("user_id", "ann").unwrap(),
        h.lookup("user_id", "bob").unwrap(),
    );
    grant(h, ann, "email_marketing", ConsentDecision::Granted);
    grant(h, bob, "email_marketing", ConsentDecision::Granted);
    template(
        h,
        json!({"id": "offer", "channel": "email", "languages": {"en": {
            "subject": "{{ offer.product.name }} is waiting",
            "text": "Hi {{ traits.first_name }}, {% if offer %}{{ offer.product.name }} ({{ offer.product.price }} €) is in stock at {{ offer.store.name }}.{% else %}have a look again.{% endif %}",
            "html": "<p>{{ offer.product.name }} at {{ offer.store.name }}</p>"}}}),
    )
    .unwrap();
    automation(
        h,
        json!({"id": "viewed", "purpose": "email_marketing", "channel": "email", "template": "offer",
            "trigger": {"event": "Product Viewed", "delay": "1s", "unless": {"event": "Order Completed", "within": "1h"}}}),
    )
    .unwrap();
    h.ingest(vec![
        json!({"type": "track", "userId": "ann", "event": "Product Viewed", "properties": {"product_id": "P1"}}),
        json!({"type": "track", "userId": "bob", "event": "Product Viewed", "properties": {"product_id": "P1"}}),
    ]);
    assert_eq!(pass(h, tarmo_store::now_ms() + 2000), (2, 0, 0));
    let mail = outbox_of(h, "email");
    let text_of = |p: i64| {
        let m = mail.iter().find(|m| m.profile_id == ProfileId(p)).unwrap();
        let OutboxMessage::Marketing { subject, text, .. } = &m.message else {
            panic!("a marketing email")
        };
        (subject.clone(), text.clone())
    };
    let (subject, text) = text_of(ann.0);
    assert_eq!(subject, "Green tea is waiting");
    assert!(
        text.starts_with("Hi Ann, Green tea (4.5 €) is in stock at Tarmo Keskusta."),
        "{text}"
    );
    // Sold out at Bob's store: no offer, the template's other branch.
    let (_, text) = text_of(bob.0);
    assert!(text.starts_with("Hi Bob, have a look again."), "{text}");
}

pub fn a_new_win_back_looks_back_at_orders_made_before_it(h: &Harness) {
    let now = tarmo_store::now_ms();
    let days_ago = |d: i64| tarmo_store::rfc3339(now - d * 86_400_000);
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
        json!({"type": "identify", "userId": "cy", "traits": {"email": "cy@example.fi"}}),
        // Ann stopped buying 200 days ago; Bob bought 200 and 10 days ago.
        json!({"type": "track", "userId": "ann", "event": "Order Completed", "timestamp": days_ago(300)}),
        json!({"type": "track", "userId": "ann", "event": "Order Completed", "timestamp": days_ago(200)}),
        json!({"type": "track", "userId": "bob", "event": "Order Completed", "timestamp": days_ago(200)}),
        json!({"type": "track", "userId": "bob", "event": "Order Completed", "timestamp": days_ago(10)}),
        json!({"type": "track", "userId": "cy", "event": "Product Viewed", "timestamp": days_ago(200)}),
    ]);
    let [ann, bob, cy] = ["ann", "bob", "cy"].map(|u| h.lookup("user_id", u).unwrap());
    for p in [ann, bob, cy] {
        grant(h, p, "email_marketing", ConsentDecision::Granted);
    }
    template(h, welcome()).unwrap();
    automation(
        h,
        json!({"id": "winback", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"absence": {"event": "Order Completed", "for": "180d"}}}),
    )
    .unwrap();
    // The look-back: Ann's absence is long over, Bob's starts anew 10 days ago.
    assert_eq!(pass(h, now + 1000), (1, 0, 0));
    let s = sends(h, "winback");
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().any(|r| r.0 == ann && r.2 == "sent"), "{s:?}");
    assert!(s.iter().any(|r| r.0 == bob && r.2 == "due"), "{s:?}");
    // Once per absence: later passes do not send Ann another.
    assert_eq!(pass(h, now + 5000), (0, 0, 0));
    assert_eq!(outbox_of(h, "email").len(), 1);
    // Bob's comes when his 180 days have passed.
    assert_eq!(pass(h, now + 171 * 86_400_000), (1, 0, 0));
}

pub fn a_segment_that_a_flow_names_is_not_deleted(h: &Harness) {
    template(h, welcome()).unwrap();
    let mut c = h.store.conn().unwrap();
    for s in ["vip", "spare"] {
        c.exec(
            "INSERT INTO segments (id, name, purpose_id, rule, created_ms, updated_ms) VALUES ($1, $1, 'email_marketing', $2, 0, 0)",
            &[P::Text(s), P::Blob(b"unused by this test")],
        )
        .unwrap();
    }
    drop(c);
    automation(
        h,
        json!({"id": "welcome_vip", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"segment_entered": "vip"}}),
    )
    .unwrap();
    let c = Campaign::from_json(
        &json!({"id": "launch", "segment": "vip", "template": "welcome", "purpose": "email_marketing",
            "channel": "email", "send_at": "2099-01-01T00:00:00Z"}),
        0,
    )
    .unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            flows::campaign_create(ctx.conn, &ctx.catalog, c, ctx.now_ms).map(|_| ())
        })
        .unwrap();
    let r = h
        .writer
        .transact_blocking(|ctx| tarmo_store::segments::delete(ctx.conn, "vip"));
    match r {
        Err(tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::SegmentInUse,
            message,
        }) => assert!(
            message.contains("automation `welcome_vip`") && message.contains("campaign `launch`"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    let n = h
        .store
        .conn()
        .unwrap()
        .query("SELECT id FROM segments", &[])
        .unwrap()
        .len();
    assert_eq!(n, 2, "nothing deleted");
    // A segment no flow names goes.
    assert!(
        h.writer
            .transact_blocking(|ctx| tarmo_store::segments::delete(ctx.conn, "spare"))
            .unwrap()
    );
}

/// PostgreSQL: transaction A takes a lower event id and waits, B takes a
/// higher one and commits, the followers read, then A commits. The late
/// event still schedules its reminder and changes a segment's membership,
/// once.
pub fn an_event_committed_after_a_later_id_is_still_followed(h: &Harness) {
    use tarmo_core::segments::{LifecycleConfig, text};
    use tarmo_store::segments::SegmentDef;
    use tarmo_store::segments::engine::SegmentEngine;

    let db = &h.pg.as_ref().expect("PostgreSQL only").name;
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
    ]);
    let [ann, bob] = ["ann", "bob"].map(|u| h.lookup("user_id", u).unwrap());
    for p in [ann, bob] {
        grant(h, p, "email_marketing", ConsentDecision::Granted);
    }
    h.ingest(vec![view("bob")]);
    let max_event = || {
        h.store
            .conn()
            .unwrap()
            .query_opt("SELECT MAX(id) FROM events", &[])
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap()
    };
    let bob_view = max_event();
    template(h, welcome()).unwrap();
    automation(
        h,
        json!({"id": "reminder", "purpose": "email_marketing", "channel": "email", "template": "welcome",
            "trigger": {"event": "Product Viewed", "delay": "1h"}}),
    )
    .unwrap();
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    let now = tarmo_store::now_ms();
    engine
        .put(SegmentDef {
            id: "twice".into(),
            name: "viewed twice".into(),
            purpose: tarmo_core::consent::PurposeId::parse("personalisation").unwrap(),
            rule: text::parse(r#"event "Product Viewed" in 1d count >= 2"#).unwrap(),
            created_ms: now,
            updated_ms: now,
        })
        .unwrap();
    let members = || -> Vec<ProfileId> {
        engine
            .members("twice", None, 1000, None)
            .unwrap()
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.0)
            .collect()
    };
    assert!(members().is_empty());
    let cfg = SendConfig::default();
    pass_with(h, cfg.clone(), now);
    let before = sends(h, "reminder");

    // A: Bob views again (a copy of his stored view), and waits.
    let mut a = ::postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ::postgres::NoTls,
    )
    .unwrap();
    let mut tx = a.transaction().unwrap();
    let late: i64 = tx
        .query_one(
            "INSERT INTO events (profile_id, key_owner, kind, ts_ms, received_ms, body, source_id)
             SELECT profile_id, key_owner, kind, ts_ms, received_ms, body, source_id
             FROM events WHERE id = $1 RETURNING id",
            &[&bob_view],
        )
        .unwrap()
        .get(0);
    // B: Ann views, with a higher id, and commits first.
    h.ingest(vec![view("ann")]);
    assert!(max_event() > late);
    pass_with(h, cfg.clone(), now);
    engine.tick().unwrap();
    let ann_due = (ann, format!("e{}", max_event()), "due".to_owned(), None);
    assert!(sends(h, "reminder").contains(&ann_due));
    assert!(members().is_empty());

    // A commits: the followers read it at their next pass.
    tx.commit().unwrap();
    pass_with(h, cfg.clone(), now);
    engine.tick().unwrap();
    let bob_due = (bob, format!("e{late}"), "due".to_owned(), None);
    let after = sends(h, "reminder");
    assert!(after.contains(&bob_due), "{after:?}");
    assert_eq!(after.len(), before.len() + 2, "{after:?}");
    assert_eq!(members(), vec![bob]);

    // Nothing twice: more passes (and a fresh process) add nothing.
    pass_with(h, cfg, now);
    pass_with(h, SendConfig::default(), now);
    engine.tick().unwrap();
    assert_eq!(sends(h, "reminder"), after);
    assert_eq!(members(), vec![bob]);
    assert_eq!(
        h.store
            .conn()
            .unwrap()
            .query_opt(
                "SELECT COUNT(*) FROM segment_history WHERE segment_id = 'twice'",
                &[]
            )
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap(),
        1
    );
}
