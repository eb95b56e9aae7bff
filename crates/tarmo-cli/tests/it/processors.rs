//! Processors end to end: the register and its refusals, exports limited to
//! purposes, categories and decisions with their disclosures, the record of
//! processing as JSON and as a page, and erasure notifications delivered to
//! a processor's webhook — by the running server, and by the notice worker
//! through failures and retries.
//!
//! The delivery tests queue notifications directly with
//! `tarmo_store::processors::enqueue_erasure_notifications` (as the erasure
//! does) to drive the worker through failures; the full path from an
//! erasure request is in `rights.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tarmo_notify::testing::HttpSink;
use tarmo_store::conn::{ProfileId, RequestId};
use tarmo_store::processors::{self, NotificationView};
use tarmo_store::vault::MasterKey;
use tarmo_store::{Backend, Store};

use crate::common::*;

fn mailer() -> Value {
    json!({
        "name": "Mailer Oy",
        "role": "email delivery",
        "country": "FI",
        "dpa_reference": "DPA-2024-7",
        "dpa_signed_on": "2024-05-02",
        "purposes": ["email_marketing"],
        "data_categories": ["contact"],
        "erasure_webhook": "https://mailer.example/erase",
        "webhook_token": "tok-never-shown",
    })
}

fn batch(s: &Server, messages: Vec<Value>) {
    let body = json!({"batch": messages});
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(&s.write)),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn profile_id(s: &Server, user: &str) -> i64 {
    let (st, p) = get(
        s,
        &format!("/api/v1/profiles/lookup?type=user_id&value={user}"),
    );
    assert_eq!(st, 200, "{p}");
    p["id"].as_i64().unwrap()
}

/// The server's store, opened next to it as another process would.
fn open_store(data: &Path) -> Store {
    let master = MasterKey::load(&data.join("master.key")).unwrap();
    Store::open(Backend::open(data, None).unwrap(), &master, 100).unwrap()
}

fn export(s: &Server, processor: i64, body: &Value) -> (u16, Value) {
    admin(
        s,
        "POST",
        &format!("/api/v1/processors/{processor}/exports"),
        Some(body),
    )
}

#[test]
fn exports_are_limited_to_purposes_categories_and_decisions_and_recorded() {
    let (d, s) = server();
    let person = |user: &str, email: &str| {
        json!([
            {"type": "identify", "userId": user, "traits": {"email": email, "phone": "040 1234567",
                "plan": "gold", "address": {"city": "Oulu"}}},
            {"type": "track", "userId": user, "event": "Order Completed", "properties": {"total": 12.5},
                "context": {"ip": "192.0.2.9", "userAgent": "Mozilla/5.0 secret-agent"}},
            {"type": "page", "userId": user, "name": "Home"},
        ])
    };
    let mut msgs = Vec::new();
    for (u, e) in [
        ("ann", "ann@example.com"),
        ("bob", "bob@example.com"),
        ("cat", "cat@example.com"),
    ] {
        msgs.extend(person(u, e).as_array().unwrap().clone());
    }
    batch(&s, msgs);
    let (ann, bob, cat) = (
        profile_id(&s, "ann"),
        profile_id(&s, "bob"),
        profile_id(&s, "cat"),
    );
    for (who, decision) in [("ann", "granted"), ("cat", "granted"), ("cat", "withdrawn")] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/consents",
            Some(
                &json!({"subject": {"type": "user_id", "value": who}, "purpose": "email_marketing",
                "decision": decision, "method": "web_form", "source": "footer form"}),
            ),
        );
        assert_eq!(st, 200, "{v}");
    }
    let (_, m) = admin(&s, "POST", "/api/v1/processors", Some(&mailer()));
    let m = m["id"].as_i64().unwrap();

    // Outside its purposes: 403, nothing exported.
    let (st, v) = export(
        &s,
        m,
        &json!({"purpose": "analytics", "subjects": [{"profile": ann}]}),
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("purpose_not_permitted")),
        "{v}"
    );
    let (st, v) = export(&s, 999, &json!({"purpose": "analytics", "subjects": []}));
    assert_eq!((st, v["code"].as_str()), (404, Some("processor_not_found")));
    let (st, v) = export(
        &s,
        m,
        &json!({"purpose": "email_marketing", "subjects": [{"type": "email", "value": "not an address"}]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with("subject 0:"),
        "{v}"
    );
    let (st, v) = export(
        &s,
        m,
        &json!({"purpose": "email_marketing", "subjects": [], "fields": ["all"]}),
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_export")));

    let (st, v) = export(
        &s,
        m,
        &json!({"purpose": "email_marketing", "subjects": [
            {"type": "email", "value": "ann@example.com"},
            {"profile": bob},
            {"type": "email", "value": "cat@example.com"},
            {"type": "email", "value": "nobody@example.com"},
            {"type": "user_id", "value": "ann"},
        ]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["categories"], json!(["contact"]));
    assert_eq!(
        v["exported"],
        json!([{"position": 0, "profile_id": ann, "identifiers": [
            {"type": "email", "value": "ann@example.com"},
            {"type": "phone", "value": "+358401234567"},
        ]}])
    );
    assert_eq!(
        v["excluded"],
        json!([
            {"position": 1, "reason": "no_consent"},
            {"position": 2, "reason": "withdrawn"},
            {"position": 3, "reason": "unknown_profile"},
            {"position": 4, "reason": "duplicate"},
        ])
    );
    let text = v.to_string();
    for hidden in ["bob@", "cat@", "gold", "Oulu", "Order Completed", "\"ann\""] {
        assert!(!text.contains(hidden), "{hidden} exported: {text}");
    }

    // A contract purpose: everyone known; the shared categories are the
    // address trait and track events, without their context.
    let mut wh = mailer();
    wh["name"] = json!("Warehouse AB");
    wh["country"] = json!("SE");
    wh["purposes"] = json!(["order_fulfilment"]);
    wh["data_categories"] = json!(["address", "purchase_history", "behaviour_scores"]);
    let (st, w) = admin(&s, "POST", "/api/v1/processors", Some(&wh));
    assert_eq!(st, 201, "{w}");
    let w = w["id"].as_i64().unwrap();
    let (st, v) = export(
        &s,
        w,
        &json!({"purpose": "order_fulfilment", "subjects": [{"profile": ann}, {"profile": bob}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["categories"], json!(["address", "purchase_history"]));
    let a = &v["exported"][0];
    assert!(a.get("identifiers").is_none(), "{a}");
    assert_eq!(a["traits"], json!({"address": {"city": "Oulu"}}));
    let events = a["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "track");
    assert_eq!(events[0]["event"], "Order Completed");
    assert_eq!(events[0]["properties"], json!({"total": 12.5}));
    assert!(!v.to_string().contains("secret-agent") && !v.to_string().contains("192.0.2.9"));

    // A disclosure for each person exported, and for nobody else.
    let store = open_store(&d.path().join("data"));
    let mut c = store.conn().unwrap();
    let of = |c: &mut dyn tarmo_store::conn::Conn, p: i64| {
        processors::disclosures_of(c, ProfileId(p))
            .unwrap()
            .into_iter()
            .map(|d| (d.processor, d.purpose.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&mut *c, ann),
        [
            ("Mailer Oy".to_owned(), "email_marketing".to_owned()),
            ("Warehouse AB".to_owned(), "order_fulfilment".to_owned())
        ]
    );
    assert_eq!(
        of(&mut *c, bob),
        [("Warehouse AB".to_owned(), "order_fulfilment".to_owned())]
    );
    assert!(of(&mut *c, cat).is_empty());
}

fn html(s: &Server, path: &str, accept: &str) -> (u16, String, String, String) {
    let mut r = agent()
        .get(format!("{}{}", s.base, path))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .header("Accept", accept)
        .call()
        .unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (ct, csp) = (header("content-type"), header("content-security-policy"));
    let status = r.status().as_u16();
    (status, ct, csp, r.body_mut().read_to_string().unwrap())
}

#[test]
fn the_record_of_processing_lists_purposes_recipients_and_transfers_as_json_and_as_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    std::fs::write(
        data.join("tarmo.toml"),
        r#"
organisation = "Kauppa <Tarmo> & Co"
controller_contact = "privacy@kauppa.example, Tarmokatu 1, Oulu"
data_subject_categories = ["customers", "newsletter readers"]
"#,
    )
    .unwrap();
    let s = start_with(
        &data,
        &a,
        &w,
        &["--dpo-contact".into(), "dpo@kauppa.example".into()],
    );
    let mut m = mailer();
    m["name"] = json!("Mailer <Oy>");
    let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&m));
    assert_eq!(st, 201, "{v}");
    let mut us = mailer();
    us["name"] = json!("Cloud & Co");
    us["role"] = json!("hosting");
    us["country"] = json!("US");
    us["transfer_safeguard"] = json!("SCC 2021/914");
    us["purposes"] = json!(["analytics", "email_marketing"]);
    let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&us));
    assert_eq!(st, 201, "{v}");
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/health_tips",
        Some(
            &json!({"name": "Health tips", "legal_basis": "consent", "channels": ["email"],
            "data_categories": ["health", "contact"], "retention_days": 90,
            "notice": {"en": "We send you tips about your health."}}),
        ),
    );
    assert_eq!(st, 200, "{v}");

    let (st, r) = get(&s, "/api/v1/records-of-processing");
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["controller"],
        json!({"name": "Kauppa <Tarmo> & Co", "contact": "privacy@kauppa.example, Tarmokatu 1, Oulu",
            "dpo_contact": "dpo@kauppa.example"})
    );
    let purpose = |id: &str| {
        r["purposes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {r}"))
            .clone()
    };
    let an = purpose("analytics");
    assert_eq!(an["legal_basis"], "legitimate_interests");
    assert_eq!(an["legal_basis_article"], "Art. 6(1)(f)");
    assert!(an["balancing_note"].as_str().unwrap().contains("Aggregate"));
    assert_eq!(an["recipients"], json!(["Cloud & Co"]));
    assert_eq!(
        purpose("email_marketing")["recipients"],
        json!(["Cloud & Co", "Mailer <Oy>"])
    );
    assert_eq!(
        purpose("health_tips")["special_categories"],
        json!(["health"])
    );
    assert_eq!(
        purpose("order_fulfilment")["legal_basis_article"],
        "Art. 6(1)(b)"
    );
    let health = r["data_categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "health")
        .unwrap();
    assert_eq!(health["special"], true);
    let contact = r["data_categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "contact")
        .unwrap();
    assert_eq!(contact["special"], false);
    assert_eq!(
        r["data_subject_categories"],
        json!([{"name": "customers", "purposes": []}, {"name": "newsletter readers", "purposes": []}])
    );
    assert_eq!(r["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(r["recipients"][0]["name"], "Cloud & Co");
    assert_eq!(r["recipients"][0]["dpa_reference"], "DPA-2024-7");
    assert_eq!(r["recipients"][0]["dpa_signed_on"], "2024-05-02");
    assert_eq!(
        r["transfers"],
        json!([{"recipient": "Cloud & Co", "country": "US", "safeguard": "SCC 2021/914"}])
    );
    let retention = r["retention"].as_array().unwrap();
    assert!(
        retention
            .iter()
            .any(|t| t["purpose"] == "email_marketing" && t["retention_days"] == 730)
    );
    let measures = r["security_measures"].to_string();
    for m in [
        "AES-256-GCM",
        "blind index",
        "hash-chained",
        "crypto-shredding",
        "SHA-256 hashes",
    ] {
        assert!(measures.contains(m), "{m} missing from {measures}");
    }
    assert!(
        !r.to_string().contains("mailer.example"),
        "webhooks are not in the record"
    );

    for (path, accept) in [
        (
            "/api/v1/records-of-processing",
            "text/html,application/xhtml+xml,*/*;q=0.8",
        ),
        ("/api/v1/records-of-processing?format=html", "*/*"),
    ] {
        let (st, ct, csp, page) = html(&s, path, accept);
        assert_eq!(st, 200, "{page}");
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(page.contains("Kauppa &lt;Tarmo&gt; &amp; Co"));
        assert!(page.contains("Mailer &lt;Oy&gt;") && page.contains("Cloud &amp; Co"));
        assert!(!page.contains("<Tarmo>") && !page.contains("Mailer <Oy>"));
        assert!(page.contains("SCC 2021/914") && page.contains("Art. 6(1)(f)"));
        assert!(page.contains("Special categories (Art. 9)"));
        assert!(page.contains("newsletter readers"));
    }
    let (st, ct, _, _) = html(&s, "/api/v1/records-of-processing?format=json", "text/html");
    assert_eq!((st, ct.starts_with("application/json")), (200, true));
    let (st, v) = get(&s, "/api/v1/records-of-processing?format=xml");
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_query")));
    let r = agent()
        .get(format!(
            "{}/api/v1/records-of-processing?format=html",
            s.base
        ))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The request's notifications, once each status has its count.
fn wait_statuses(
    store: &Store,
    request: RequestId,
    want: &[(&str, usize)],
) -> Vec<NotificationView> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v =
            processors::notifications_for_request(&mut *store.conn().unwrap(), request).unwrap();
        let done = want
            .iter()
            .all(|(status, n)| v.iter().filter(|x| x.status == *status).count() == *n);
        if done {
            return v;
        }
        assert!(Instant::now() < deadline, "not {want:?}: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The running server delivers a queued erasure notification to the
/// processor's webhook with its bearer token, and records it delivered;
/// the token is never on disk in plaintext.
#[test]
fn the_server_delivers_erasure_notifications_to_the_processors_webhook() {
    let sink = HttpSink::start();
    let (d, s) = server_allowing_private_webhooks();
    let data = d.path().join("data");
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "erin", "traits": {"email": "erin@example.com"}}),
        ],
    );
    let erin = profile_id(&s, "erin");
    let mut p = mailer();
    p["purposes"] = json!(["order_fulfilment"]);
    p["erasure_webhook"] = json!(format!("{}/tarmo/erasures", sink.url()));
    p["webhook_token"] = json!("s3cret-processor-token");
    let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&p));
    assert_eq!(st, 201, "{v}");
    let (st, v) = export(
        &s,
        v["id"].as_i64().unwrap(),
        &json!({"purpose": "order_fulfilment", "subjects": [{"profile": erin}]}),
    );
    assert_eq!(
        (st, v["exported"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );

    let store = open_store(&data);
    let queued = store
        .transact_direct(|c, vault| {
            processors::enqueue_erasure_notifications(
                c,
                vault,
                RequestId(4242),
                &[ProfileId(erin)],
                &[("email", "erin@example.com"), ("user_id", "erin")],
                tarmo_store::now_ms(),
            )
        })
        .unwrap();
    assert_eq!(queued, 1);
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/tarmo/erasures");
    assert_eq!(
        got[0].header("Authorization"),
        Some("Bearer s3cret-processor-token")
    );
    let body = got[0].json();
    assert_eq!(body["type"], "erasure");
    assert_eq!(body["request_id"], 4242);
    assert_eq!(body["profile_id"], erin);
    assert_eq!(
        body["identifiers"],
        json!([{"type": "email", "value": "erin@example.com"}]),
        "only what the processor received"
    );
    assert!(body["requested_at"].as_str().unwrap().contains('T'));
    let v = wait_statuses(&store, RequestId(4242), &[("delivered", 1)]);
    assert_eq!((v[0].attempts, v[0].processor.as_str()), (1, "Mailer Oy"));
    drop(store);
    drop(s);
    for path in walk(&data) {
        let bytes = std::fs::read(&path).unwrap();
        for secret in ["s3cret-processor-token", "erin@example.com"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in plaintext in {}",
                path.display()
            );
        }
    }
}

/// The notice worker retries a failing webhook with backoff until it
/// answers, gives up at once on a permanent refusal, and gives up after its
/// attempts on one that never recovers; each outcome is recorded.
#[test]
fn the_notice_worker_retries_until_delivered_and_gives_up_when_it_must() {
    use tarmo_server::notices::{NoticeWorker, RetryPolicy};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            Backend::open(dir.path(), None).unwrap(),
            &MasterKey::generate().unwrap(),
            100,
        )
        .unwrap(),
    );
    store
        .transact_direct(|c, _| tarmo_store::consent::seed_defaults(c, 1_000))
        .unwrap();
    let (writer, join) = store.start_writer(Default::default()).unwrap();
    let flaky = HttpSink::start();
    flaky.fail_next(2, 503);
    let gone = HttpSink::start();
    gone.set_status(404);
    let down = HttpSink::start();
    down.set_status(502);
    let cfg = tarmo_core::identity::IdentityConfig::new(None, &[]).unwrap();
    let email = cfg
        .identifier(cfg.kind("email").unwrap(), "dana@example.com")
        .unwrap();
    let prepared = store.prepare_identifier(&email);
    let dana = writer
        .transact_blocking(move |ctx| ctx.resolve(&[prepared]))
        .unwrap();
    let mut ids = Vec::new();
    for (name, sink) in [("Flaky", &flaky), ("Gone", &gone), ("Down", &down)] {
        let mut p = mailer();
        p["name"] = json!(name);
        p["erasure_webhook"] = json!(sink.url());
        p["webhook_token"] = json!(format!("token-{name}"));
        let spec = serde_json::from_value::<tarmo_core::processor::ProcessorInput>(p)
            .unwrap()
            .parse(tarmo_store::now_ms())
            .unwrap();
        let id = writer
            .transact_blocking(move |ctx| {
                let p = processors::register(ctx.conn, ctx.vault, &ctx.catalog, &spec, ctx.now_ms)?;
                processors::record_disclosure(
                    ctx.conn,
                    dana,
                    p.id,
                    &tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
                    &["contact"],
                    ctx.now_ms,
                )?;
                Ok(p.id)
            })
            .unwrap();
        ids.push(id);
    }
    let n = writer
        .transact_blocking(move |ctx| {
            processors::enqueue_erasure_notifications(
                ctx.conn,
                ctx.vault,
                RequestId(7),
                &[dana],
                &[("email", "dana@example.com")],
                ctx.now_ms,
            )
        })
        .unwrap();
    assert_eq!(n, 3);
    let signal = Arc::new(tarmo_server::mail::OutboxSignal::default());
    let worker = tarmo_server::notices::spawn(NoticeWorker {
        writer: writer.clone(),
        client: tarmo_notify::WebhookClient::new(
            Duration::from_secs(5),
            tarmo_notify::WebhookTargets::Any,
        ),
        signal: signal.clone(),
        poll: Duration::from_millis(20),
        retry: RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_attempts: 3,
        },
        claimant: Default::default(),
    });
    signal.ring();
    let started = Instant::now();
    let got = flaky.wait_for(3, Duration::from_secs(20));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "backoff: 100 ms, then 200 ms"
    );
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    for r in &got {
        assert_eq!(r.header("Authorization"), Some("Bearer token-Flaky"));
        assert_eq!(
            r.json()["identifiers"],
            json!([{"type": "email", "value": "dana@example.com"}])
        );
    }
    let views = wait_statuses(&store, RequestId(7), &[("failed", 2), ("delivered", 1)]);
    let by = |name: &str| views.iter().find(|v| v.processor == name).unwrap().clone();
    let f = by("Flaky");
    assert_eq!(
        (f.status.as_str(), f.attempts, f.last_error.as_deref()),
        ("delivered", 3, None)
    );
    let g = by("Gone");
    assert_eq!(
        (g.status.as_str(), g.attempts, g.last_error.as_deref()),
        ("failed", 1, Some("refused with HTTP 404"))
    );
    assert_eq!(
        gone.requests().len(),
        1,
        "a permanent refusal is not retried"
    );
    let d = by("Down");
    assert_eq!(
        (d.status.as_str(), d.attempts, d.last_error.as_deref()),
        (
            "failed",
            3,
            Some("HTTP 502: try again later; given up after 3 attempts")
        )
    );
    assert_eq!(down.requests().len(), 3);
    let left = store
        .conn()
        .unwrap()
        .query(
            "SELECT count(*) FROM processor_notifications WHERE payload IS NOT NULL",
            &[],
        )
        .unwrap()[0]
        .int(0)
        .unwrap();
    assert_eq!(left, 0, "payloads wiped once delivered or given up");
    worker.stop();
    drop(writer);
    join.join().unwrap();
}
