//! Segments on each backend: membership follows events, consent, time and
//! erasure; bad definitions are refused and nothing is saved.

use serde_json::{Value, json};
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_core::segments::{LifecycleConfig, Rule, text};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::segments::SegmentDef;
use tarmo_store::segments::engine::SegmentEngine;

use super::Harness;

fn ago(days: f64) -> String {
    let ms = tarmo_store::now_ms() - (days * 86_400_000.0) as i64;
    tarmo_store::rfc3339(ms)
}

fn def(id: &str, purpose: &str, rule: Value) -> SegmentDef {
    SegmentDef {
        id: id.into(),
        name: format!("{id} segment"),
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        rule: Rule::from_json(&rule).unwrap(),
        created_ms: tarmo_store::now_ms(),
        updated_ms: tarmo_store::now_ms(),
    }
}

fn consent(h: &Harness, profile: ProfileId, purpose: &str, d: ConsentDecision) {
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

fn members(e: &SegmentEngine, id: &str) -> Vec<ProfileId> {
    e.members(id, None, 1000, None)
        .unwrap()
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.0)
        .collect()
}

fn stored_members(h: &Harness, id: &str) -> Vec<ProfileId> {
    h.store
        .conn()
        .unwrap()
        .query(
            "SELECT profile_id FROM segment_members WHERE segment_id = $1 ORDER BY profile_id",
            &[P::Text(id)],
        )
        .unwrap()
        .into_iter()
        .map(|r| ProfileId(r.int(0).unwrap()))
        .collect()
}

fn history(h: &Harness, profile: ProfileId) -> Vec<(String, i64)> {
    h.store
        .conn()
        .unwrap()
        .query(
            "SELECT segment_id, entered FROM segment_history WHERE profile_id = $1 ORDER BY id",
            &[P::Int(profile.0)],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.text(0).unwrap(), r.int(1).unwrap()))
        .collect()
}

fn order(user: &str, revenue: f64, days_ago: f64) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed",
        "properties": {"revenue": revenue}, "timestamp": ago(days_ago)})
}

pub fn segments_follow_events_consent_time_and_erasure(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "city": "Tampere"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
        order("ann", 300.0, 200.0),
        order("ann", 150.0, 100.0),
        order("ann", 100.0, 10.0),
        order("ann", 999.0, 500.0),
        order("bob", 20.0, 3.0),
    ]);
    let ann = h.lookup("user_id", "ann").unwrap();
    let bob = h.lookup("user_id", "bob").unwrap();
    consent(h, ann, "email_marketing", ConsentDecision::Granted);
    consent(h, bob, "email_marketing", ConsentDecision::Granted);

    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    // The issue's example, in the text form.
    let rule = text::parse(
        r#"event "Order Completed" in 365d count >= 3 and event "Order Completed" in 365d sum revenue > 500 and consent(email_marketing, email)"#,
    )
    .unwrap();
    let big = SegmentDef {
        rule,
        ..def(
            "big_spenders",
            "email_marketing",
            json!({"identifier": "email"}),
        )
    };
    let (_, n) = engine.put(big).unwrap();
    assert_eq!(n, 1);
    assert_eq!(members(&engine, "big_spenders"), vec![ann]);
    assert_eq!(stored_members(h, "big_spenders"), vec![ann]);
    assert_eq!(history(h, ann), vec![("big_spenders".into(), 1)]);

    // The count agrees with the segment.
    let r = engine.get("big_spenders").unwrap().0.rule;
    assert_eq!(engine.count(&r).unwrap(), 1);

    // Bob's orders arrive: he joins within a tick of the commit.
    h.ingest(vec![order("bob", 400.0, 2.0), order("bob", 300.0, 1.0)]);
    engine.tick().unwrap();
    assert_eq!(
        members(&engine, "big_spenders"),
        vec![ann.min(bob), ann.max(bob)]
    );

    // A withdrawal takes Ann out at the next tick; the history says when.
    consent(h, ann, "email_marketing", ConsentDecision::Withdrawn);
    engine.tick().unwrap();
    assert_eq!(members(&engine, "big_spenders"), vec![bob]);
    assert_eq!(stored_members(h, "big_spenders"), vec![bob]);
    assert_eq!(
        history(h, ann),
        vec![("big_spenders".into(), 1), ("big_spenders".into(), 0)]
    );

    // A segment on another, and one whose window passes without any event.
    engine
        .put(def(
            "recent_viewers",
            "personalisation",
            json!({"all": [
            {"event": "Product Viewed", "within": "3s"},
            {"not": {"segment": "big_spenders"}}]}),
        ))
        .unwrap();
    h.ingest(vec![
        json!({"type": "track", "userId": "ann", "event": "Product Viewed",
        "properties": {"sku": "A1"}, "timestamp": ago(0.0)}),
    ]);
    engine.tick().unwrap();
    assert_eq!(members(&engine, "recent_viewers"), vec![ann]);
    std::thread::sleep(std::time::Duration::from_millis(3300));
    engine.tick().unwrap();
    assert!(
        members(&engine, "recent_viewers").is_empty(),
        "the window passed"
    );

    // Lifecycle and RFM from the orders.
    let lc = engine.lifecycle_of(ann).unwrap();
    assert_eq!(lc.orders, 4);
    assert!(lc.rfm.is_some());
    let sum = engine.lifecycle_summary();
    assert_eq!(sum.stages.values().sum::<u64>(), 2);

    // Erasure: out of every segment, history gone, and the engine forgets.
    h.writer
        .transact_blocking(move |ctx| tarmo_store::erasure::erase_profile(ctx, bob, None, true))
        .unwrap();
    engine.tick().unwrap();
    assert!(members(&engine, "big_spenders").is_empty());
    assert!(stored_members(h, "big_spenders").is_empty());
    assert!(history(h, bob).is_empty());
    assert!(engine.lifecycle_of(bob).is_none());

    // A restarted engine finds the same members.
    drop(engine);
    let again = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    assert_eq!(again.list().len(), 2);
    assert!(members(&again, "big_spenders").is_empty());
}

fn view(user: &str, sku: Option<&str>, days_ago: f64) -> Value {
    let props = match sku {
        Some(s) => json!({"sku": s}),
        None => json!({"colour": "red"}),
    };
    json!({"type": "track", "userId": user, "event": "Product Viewed",
        "properties": props, "timestamp": ago(days_ago)})
}

fn tip(user: &str, amount: f64, days_ago: f64) -> Value {
    json!({"type": "track", "userId": user, "event": "Tip Given",
        "properties": {"amount": amount}, "timestamp": ago(days_ago)})
}

/// The count (passes over the columns of facts) and a segment's members
/// (each person's rule evaluated on its own) must agree for every kind of
/// event condition, and go on agreeing once people's facts are dropped
/// (an erasure) and their place is taken by someone new.
pub fn columnar_counts_agree_with_membership_through_erasure_and_reuse(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi"}}),
        json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
        json!({"type": "identify", "userId": "cy"}),
        order("ann", 300.0, 200.0),
        json!({"type": "track", "userId": "ann", "event": "Order Completed",
            "properties": {"revenue": "150.5"}, "timestamp": ago(100.0)}),
        order("ann", 100.0, 10.0),
        order("ann", 999.0, 500.0),
        order("bob", 20.0, 3.0),
        order("bob", 450.0, 2.0),
        order("bob", 60.0, 1.0),
        view("ann", Some("A1"), 1.0),
        view("bob", Some("A1"), 2.0),
        view("bob", Some("B2"), 40.0),
        view("cy", None, 1.0),
        // Arriving newest first: summed in time order 0.1 + 0.2 + 0.3 is
        // 0.6000000000000001 in floating point, in arrival order 0.6.
        tip("eve", 0.3, 1.0),
        tip("eve", 0.2, 2.0),
        tip("eve", 0.1, 3.0),
    ]);
    let bob = h.lookup("user_id", "bob").unwrap();
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    let rules = [
        (
            "a1_viewers",
            json!({"event": "Product Viewed", "where": [{"property": "sku", "op": "eq", "value": "A1"}], "within": "30d"}),
        ),
        (
            "not_a1",
            json!({"event": "Product Viewed", "where": [{"property": "sku", "op": "ne", "value": "A1"}], "within": "60d"}),
        ),
        (
            "sku_known",
            json!({"event": "Product Viewed", "where": [{"property": "sku", "op": "exists"}], "within": "60d"}),
        ),
        (
            "no_orders",
            json!({"not": {"event": "Order Completed", "within": "365d"}}),
        ),
        (
            "quiet",
            json!({"event": "Order Completed", "within": "5d", "count": {"eq": 0}}),
        ),
        (
            "spenders",
            json!({"event": "Order Completed", "within": "365d", "sum": {"property": "revenue", "gte": 530}}),
        ),
        (
            "three",
            json!({"all": [
            {"event": "Order Completed", "within": "365d", "count": {"gte": 3}},
            {"any": [{"event": "Order Completed", "within": "5d"}, {"event": "Product Viewed", "within": "2d"}]}]}),
        ),
        // A sum at its boundary is the same by both roads (exact, in any order).
        (
            "tips_over",
            json!({"event": "Tip Given", "within": "30d", "sum": {"property": "amount", "gt": 0.6}}),
        ),
        (
            "tips_at",
            json!({"event": "Tip Given", "within": "30d", "sum": {"property": "amount", "gte": 0.6}}),
        ),
    ];
    for (id, r) in &rules {
        engine.put(def(id, "personalisation", r.clone())).unwrap();
    }
    let check = |engine: &SegmentEngine, want: &[(&str, usize)]| {
        for (id, n) in want {
            let (d, held) = engine.get(id).unwrap();
            assert_eq!(held, *n, "{id}: members");
            assert_eq!(engine.count(&d.rule).unwrap(), *n, "{id}: count");
            assert_eq!(engine.preview(&d, 10).unwrap().0, *n, "{id}: preview");
        }
    };
    // ann: orders 150.5 + 300 + 100 in the year, A1 yesterday; bob: three
    // orders (530) this week, A1 and B2; cy: a view without a sku; eve:
    // tips of exactly 0.6 and no orders.
    check(
        &engine,
        &[
            ("a1_viewers", 2),
            ("not_a1", 2),
            ("sku_known", 2),
            ("no_orders", 2),
            ("quiet", 3),
            ("spenders", 2),
            ("three", 2),
            ("tips_over", 0),
            ("tips_at", 1),
        ],
    );
    // Bob is erased; dan arrives after him (and may take his place in
    // memory) with one view of A1 and no orders: none of Bob's facts count
    // for him.
    h.writer
        .transact_blocking(move |ctx| tarmo_store::erasure::erase_profile(ctx, bob, None, true))
        .unwrap();
    engine.tick().unwrap();
    h.ingest(vec![
        json!({"type": "identify", "userId": "dan", "traits": {"email": "dan@example.fi"}}),
        view("dan", Some("A1"), 0.5),
    ]);
    engine.tick().unwrap();
    check(
        &engine,
        &[
            ("a1_viewers", 2),
            ("not_a1", 1),
            ("sku_known", 2),
            ("no_orders", 3),
            ("quiet", 4),
            ("spenders", 1),
            ("three", 1),
        ],
    );
    // A person read again (a rectification) keeps one copy of their facts.
    let ann = h.lookup("user_id", "ann").unwrap();
    h.writer
        .transact_blocking(move |ctx| tarmo_store::segments::touch(ctx.conn, ann, ctx.now_ms))
        .unwrap();
    engine.tick().unwrap();
    check(&engine, &[("a1_viewers", 2), ("three", 1), ("quiet", 4)]);
    assert_eq!(engine.lifecycle_of(ann).unwrap().orders, 4);
}

/// The sync reads and writes its members a page (500) at a time: with
/// 1,101 people every page's decisions, hashes, rows and disclosures count.
pub fn an_audience_sync_of_more_than_a_page_of_members_takes_them_all(h: &Harness) {
    use tarmo_core::segments::audience::AudienceFormat;
    use tarmo_core::segments::audience::hashed;
    use tarmo_store::segments::audiences::{self, AudienceDef};
    const N: usize = 1101;
    h.ingest(
        (0..N)
            .map(|i| json!({"type": "identify", "userId": format!("p{i}"), "traits": {"email": format!("p{i}@example.fi")}}))
            .collect(),
    );
    // Ten have a phone too.
    h.ingest(
        (0..10)
            .map(|i| json!({"type": "identify", "userId": format!("p{i}"), "traits": {"phone": format!("+35840000000{i}")}}))
            .collect(),
    );
    let ids: Vec<ProfileId> = (0..N)
        .map(|i| h.lookup("user_id", &format!("p{i}")).unwrap())
        .collect();
    // Two in three allow ad audiences.
    let grant = |people: Vec<ProfileId>, d: ConsentDecision| {
        let entries: Vec<NewEntry> = people
            .into_iter()
            .map(|p| NewEntry {
                channel: None,
                profile_id: p,
                purpose: tarmo_core::consent::PurposeId::parse("ad_audiences").unwrap(),
                decision: d,
                method: Method::WebForm,
                notice_version: None,
                at_ms: None,
                source: "test form".into(),
                evidence: Default::default(),
            })
            .collect();
        h.writer
            .transact_blocking(move |ctx| {
                consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
            })
            .unwrap();
    };
    let allowed: Vec<ProfileId> = ids.iter().copied().filter(|p| p.0 % 3 != 0).collect();
    grant(allowed.clone(), ConsentDecision::Granted);
    let input: tarmo_core::processor::ProcessorInput = serde_json::from_value(json!({
        "name": "Ad platform", "role": "advertising", "country": "ie", "dpa_reference": "DPA-ads",
        "dpa_signed_on": "2024-05-02", "purposes": ["ad_audiences"], "data_categories": ["contact"]}))
    .unwrap();
    let spec = input.parse(tarmo_store::now_ms()).unwrap();
    let processor = h
        .writer
        .transact_blocking(move |ctx| {
            tarmo_store::processors::register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms)
        })
        .unwrap()
        .id;
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    engine
        .put(def(
            "with_email",
            "ad_audiences",
            json!({"identifier": "email"}),
        ))
        .unwrap();
    engine
        .create_audience(AudienceDef {
            id: "meta".into(),
            segment: "with_email".into(),
            processor_id: processor,
            format: AudienceFormat::MetaCustomAudience,
            created_ms: 1,
        })
        .unwrap();
    let count = |sql: &str| -> i64 {
        h.store
            .conn()
            .unwrap()
            .query_opt(sql, &[P::from(processor)])
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap()
    };
    let r = engine.sync_audience("meta").unwrap().unwrap();
    let n = allowed.len() as u64;
    assert_eq!((r.added, r.removed), (n, 0), "{r:?}");
    assert_eq!(r.excluded.get("no_consent"), Some(&(N as u64 - n)));
    let members_sql = "SELECT COUNT(*) FROM audience_members m JOIN audiences a ON a.id = m.audience_id WHERE a.processor_id = $1";
    assert_eq!(count(members_sql), n as i64);
    assert_eq!(
        count("SELECT COUNT(*) FROM disclosures WHERE processor_id = $1"),
        n as i64
    );
    // Both roads to members' identifiers — one pass over everyone's (for
    // many members) and the index by profile (for a few) — give each the
    // same line.
    let format = AudienceFormat::MetaCustomAudience;
    let scan = audiences::prepare(&h.store, format, &ids, ids.len(), Default::default()).unwrap();
    let index = audiences::prepare(&h.store, format, &ids, usize::MAX, Default::default()).unwrap();
    for p in &ids {
        assert!(scan.line_of(*p).is_some_and(|l| l.is_some()), "{p}");
        assert_eq!(scan.line_of(*p), index.line_of(*p), "{p}");
    }
    assert_eq!(
        scan.line_of(ids[3]),
        Some(Some(
            format!("{},{}", hashed("p3@example.fi"), hashed("358400000003")).as_str()
        ))
    );
    // 600 withdraw: removed over two pages.
    grant(allowed[..600].to_vec(), ConsentDecision::Withdrawn);
    let r = engine.sync_audience("meta").unwrap().unwrap();
    assert_eq!((r.added, r.removed), (0, 600), "{r:?}");
    assert_eq!(count(members_sql), n as i64 - 600);
}

pub fn bad_segment_definitions_are_refused_and_nothing_is_saved(h: &Harness) {
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    let code = |d: SegmentDef| match engine.put(d) {
        Err(tarmo_store::Error::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        code(def("a", "no_such_purpose", json!({"identifier": "email"}))),
        tarmo_core::codes::Code::UnknownPurpose
    );
    // email_marketing uses contact and purchase history, not other traits.
    assert_eq!(
        code(def(
            "a",
            "email_marketing",
            json!({"trait": "city", "value": "Tampere"})
        )),
        tarmo_core::codes::Code::RuleDataNotPermitted
    );
    assert_eq!(
        code(def("a", "email_marketing", json!({"consent": "nope"}))),
        tarmo_core::codes::Code::UnknownPurpose
    );
    assert_eq!(
        code(def("a", "email_marketing", json!({"segment": "missing"}))),
        tarmo_core::codes::Code::UnknownSegment
    );
    assert_eq!(
        code(def("a", "email_marketing", json!({"segment": "a"}))),
        tarmo_core::codes::Code::SegmentCycle
    );
    engine
        .put(def("b", "email_marketing", json!({"identifier": "email"})))
        .unwrap();
    engine
        .put(def("c", "email_marketing", json!({"segment": "b"})))
        .unwrap();
    assert_eq!(
        code(def("b", "email_marketing", json!({"segment": "c"}))),
        tarmo_core::codes::Code::SegmentCycle
    );
    // Still only the two good ones, and `b` as it was.
    let n: i64 = h
        .store
        .conn()
        .unwrap()
        .query_opt("SELECT COUNT(*) FROM segments", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        engine.get("b").unwrap().0.rule,
        Rule::from_json(&json!({"identifier": "email"})).unwrap()
    );
    // A segment another names cannot be deleted.
    assert!(matches!(
        engine.delete("b"),
        Err(tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::SegmentInUse,
            ..
        })
    ));
    assert!(engine.delete("c").unwrap());
    assert!(engine.delete("b").unwrap());
}

pub fn audiences_carry_only_hashes_of_people_allowed_now_and_removals(h: &Harness) {
    use tarmo_core::segments::audience::{AudienceFormat, hashed};
    use tarmo_store::segments::audiences::{self, AudienceDef};
    h.ingest(vec![
        json!({"type": "identify", "userId": "u1", "traits": {"email": "Ann.Lee@Gmail.com", "phone": "040 1234567"}}),
        json!({"type": "identify", "userId": "u2", "traits": {"email": "bob@example.fi"}}),
        json!({"type": "identify", "userId": "u3", "traits": {"email": "cid@example.fi"}}),
        json!({"type": "identify", "userId": "u4"}),
    ]);
    let [u1, u2, u3, u4] = ["u1", "u2", "u3", "u4"].map(|u| h.lookup("user_id", u).unwrap());
    for p in [u1, u3, u4] {
        consent(h, p, "ad_audiences", ConsentDecision::Granted);
    }
    let input: tarmo_core::processor::ProcessorInput = serde_json::from_value(json!({
        "name": "Ad platform", "role": "advertising", "country": "ie", "dpa_reference": "DPA-ads",
        "dpa_signed_on": "2024-05-02", "purposes": ["ad_audiences"], "data_categories": ["contact"]}))
    .unwrap();
    let spec = input.parse(tarmo_store::now_ms()).unwrap();
    let processor = h
        .writer
        .transact_blocking(move |ctx| {
            tarmo_store::processors::register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms)
        })
        .unwrap()
        .id;
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    engine
        .put(def(
            "everyone",
            "ad_audiences",
            json!({"any": [{"identifier": "email"}, {"not": {"identifier": "email"}}]}),
        ))
        .unwrap();
    let audience = |id: &str, processor_id: tarmo_core::ids::ProcessorId| AudienceDef {
        id: id.into(),
        segment: "everyone".into(),
        processor_id,
        format: AudienceFormat::GoogleCustomerMatch,
        created_ms: 1,
    };
    // A processor not registered for the purpose is refused.
    assert!(matches!(
        engine.create_audience(audience(
            "nope",
            tarmo_core::ids::ProcessorId(processor.0 + 100)
        )),
        Err(tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::UnknownProcessor,
            ..
        })
    ));
    engine
        .create_audience(audience("google", processor))
        .unwrap();
    let r = engine.sync_audience("google").unwrap().unwrap();
    assert_eq!((r.sync, r.added, r.removed), (1, 2, 0), "{r:?}");
    assert_eq!(r.excluded.get("no_consent"), Some(&1), "{r:?}");
    assert_eq!(r.excluded.get("missing_contact"), Some(&1), "{r:?}");
    let file = |n: i64| {
        String::from_utf8(
            audiences::file(&mut *h.store.conn().unwrap(), h.store.vault(), "google", n)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    };
    let f1 = file(1);
    let ann = hashed("annlee@gmail.com");
    assert!(f1.starts_with("action,Email,Phone\n"), "{f1}");
    assert!(
        f1.contains(&format!("add,{ann},{}", hashed("+358401234567"))),
        "{f1}"
    );
    assert!(
        f1.contains(&format!("add,{},", hashed("cid@example.fi"))),
        "{f1}"
    );
    for plain in ["Ann", "ann", "gmail", "example.fi", "358401234567", "bob"] {
        assert!(!f1.contains(plain), "plaintext {plain} in {f1}");
    }
    // Each person added is a disclosure to the processor.
    let disclosures = |p: i64| {
        tarmo_store::processors::disclosures_of(&mut *h.store.conn().unwrap(), ProfileId(p))
            .unwrap()
            .len()
    };
    assert_eq!((disclosures(u1.0), disclosures(u2.0)), (1, 0));

    // Nothing changed: nothing added or removed.
    let r = engine.sync_audience("google").unwrap().unwrap();
    assert_eq!((r.sync, r.added, r.removed), (2, 0, 0));

    // Ann withdraws, Cid is erased: both are removals in the next file.
    consent(h, u1, "ad_audiences", ConsentDecision::Withdrawn);
    h.writer
        .transact_blocking(move |ctx| tarmo_store::erasure::erase_profile(ctx, u3, None, true))
        .unwrap();
    engine.tick().unwrap();
    let r = engine.sync_audience("google").unwrap().unwrap();
    assert_eq!((r.added, r.removed), (0, 2), "{r:?}");
    let f3 = file(3);
    assert!(f3.contains(&format!("remove,{ann},")), "{f3}");
    assert!(
        f3.contains(&format!("remove,{},", hashed("cid@example.fi"))),
        "{f3}"
    );
    let left: i64 = h
        .store
        .conn()
        .unwrap()
        .query_opt("SELECT COUNT(*) FROM audience_members", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(left, 0, "what the platform was told to remove is not kept");

    // The lines are worked out before the writer's transaction, from what
    // the engine last saw; a withdrawal between the two still keeps the
    // person out: the transaction decides again.
    consent(h, u1, "ad_audiences", ConsentDecision::Granted);
    let def = audiences::get(&mut *h.store.conn().unwrap(), "google")
        .unwrap()
        .unwrap();
    let prepared = audiences::prepare(&h.store, def.format, &[u1], 4, Default::default()).unwrap();
    consent(h, u1, "ad_audiences", ConsentDecision::Withdrawn);
    let purpose = tarmo_core::consent::PurposeId::parse("ad_audiences").unwrap();
    let r = h
        .writer
        .transact_blocking(move |ctx| audiences::sync(ctx, &def, &purpose, &[u1], prepared))
        .unwrap();
    assert_eq!((r.added, r.removed), (0, 0), "{r:?}");
    assert_eq!(r.excluded.get("withdrawn"), Some(&1), "{r:?}");
    assert!(
        !file(r.sync).contains(&ann),
        "withdrawn just before: not sent"
    );
    let _ = (u2, u4);
}

/// A tick reads without holding the engine's state, in two halves: the
/// events (a person new to the engine is noted, to be read whole), then
/// the people noted. An order that commits between the halves is in the
/// store when the person is read whole, and the cursor hands it out
/// again at the next tick: it must count once. So must consent given
/// between the halves, and everything must agree with an engine that
/// read the store afresh.
pub fn what_commits_between_a_ticks_halves_counts_once(h: &Harness) {
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    let at_least = |n: u32| SegmentDef {
        rule: text::parse(&format!(
            r#"event "Order Completed" in 365d count >= {n} and consent(email_marketing, email)"#
        ))
        .unwrap(),
        ..def(
            &format!("orders_{n}"),
            "email_marketing",
            json!({"identifier": "email"}),
        )
    };
    for n in [3, 4] {
        engine.put(at_least(n)).unwrap();
    }

    // Eve and Finn are new to the engine; Gus it holds already.
    h.ingest(vec![
        json!({"type": "identify", "userId": "gus", "traits": {"email": "gus@example.fi"}}),
        order("gus", 10.0, 3.0),
        order("gus", 10.0, 2.0),
    ]);
    engine.tick().unwrap();
    let gus = h.lookup("user_id", "gus").unwrap();
    consent(h, gus, "email_marketing", ConsentDecision::Granted);
    engine.tick().unwrap();
    h.ingest(vec![
        json!({"type": "identify", "userId": "eve", "traits": {"email": "eve@example.fi"}}),
        order("eve", 10.0, 3.0),
        order("eve", 10.0, 2.0),
        json!({"type": "identify", "userId": "finn", "traits": {"email": "finn@example.fi"}}),
        order("finn", 10.0, 3.0),
        order("finn", 10.0, 2.0),
        order("finn", 10.0, 1.0),
    ]);
    let eve = h.lookup("user_id", "eve").unwrap();
    let finn = h.lookup("user_id", "finn").unwrap();
    consent(h, eve, "email_marketing", ConsentDecision::Granted);

    engine.tick_gather().unwrap();
    // Between the halves: Eve's and Gus's third orders, Finn's consent.
    h.ingest(vec![order("eve", 10.0, 1.0), order("gus", 10.0, 1.0)]);
    consent(h, finn, "email_marketing", ConsentDecision::Granted);
    engine.tick_read_people().unwrap();
    engine.tick().unwrap();
    engine.tick().unwrap();

    let mut three = vec![eve, finn, gus];
    three.sort();
    assert_eq!(members(&engine, "orders_3"), three, "three orders each");
    assert_eq!(
        members(&engine, "orders_4"),
        Vec::<ProfileId>::new(),
        "no order counted twice"
    );
    assert_eq!(stored_members(h, "orders_3"), three);
    assert_eq!(stored_members(h, "orders_4"), Vec::<ProfileId>::new());

    // An engine that reads the store afresh agrees.
    let fresh = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    assert_eq!(members(&fresh, "orders_3"), three);
    assert_eq!(members(&fresh, "orders_4"), Vec::<ProfileId>::new());
}
