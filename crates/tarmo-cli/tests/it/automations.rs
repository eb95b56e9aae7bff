//! Automations and campaigns end to end, with the real binary and a real
//! SMTP listener on loopback: a birthday mail for the person who consented
//! only; the "viewed, did not buy" reminder after its delay and not after
//! an order; a withdrawal between scheduling and sending; win-back once; a
//! kill -9 in the middle of a campaign; SMS STOP; bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tarmo_notify::testing::SmtpSink;

use crate::common::*;

fn smtp_args(sink: &SmtpSink, dir: &Path) -> Vec<String> {
    let ca = dir.join("smtp-ca.pem");
    std::fs::write(&ca, sink.cert_pem()).unwrap();
    vec![
        "--smtp-url".into(),
        sink.url(),
        "--smtp-ca".into(),
        ca.display().to_string(),
        "--organisation".into(),
        "Kauppa".into(),
    ]
}

fn batch(s: &Server, msgs: Vec<Value>) {
    let body = json!({ "batch": msgs }).to_string();
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(&s.write)),
        body.as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn consent(s: &Server, email: &str, purpose: &str, decision: &str) {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": email}, "purpose": purpose,
            "decision": decision, "method": "web_form", "source": "checkout form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
}

fn setup(s: &Server) {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/templates",
        Some(&json!({"id": "hello", "channel": "email", "languages": {
            "en": {"subject": "Hello {{ traits.first_name }}", "text": "Dear {{ traits.first_name }}, <3",
                   "html": "<p>Dear {{ traits.first_name }}</p>"},
            "fi": {"subject": "Hei {{ traits.first_name }}", "text": "Hei {{ traits.first_name }}"}}})),
    );
    assert_eq!(st, 201, "{v}");
}

fn automation(s: &Server, id: &str, trigger: Value) {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/automations",
        Some(
            &json!({"id": id, "name": id, "purpose": "email_marketing", "channel": "email",
            "template": "hello", "trigger": trigger}),
        ),
    );
    assert_eq!(st, 201, "{v}");
}

fn to_of(m: &tarmo_notify::testing::ReceivedMail) -> String {
    m.header("To").unwrap_or_default()
}

fn started() -> (SmtpSink, tempfile::TempDir, Server) {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    (sink, dir, s)
}

#[test]
fn a_birthday_mail_goes_to_the_person_who_consented_and_not_to_the_other() {
    let (sink, _dir, s) = started();
    setup(&s);
    let today = &tarmo_store::rfc3339(tarmo_store::now_ms())[5..10];
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi",
                "first_name": "Ann", "birthday": format!("1990-{today}"), "timezone": "UTC", "language": "fi"}}),
            json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi",
                "first_name": "Bob", "birthday": today}}),
        ],
    );
    consent(&s, "ann@example.fi", "email_marketing", "granted");
    automation(&s, "bday", json!({"birthday": {"local_time": "00:00"}}));
    let mail = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert!(to_of(m).contains("ann@example.fi"), "{:?}", m.header("To"));
    assert_eq!(m.header("Subject").as_deref(), Some("Hei Ann"));
    assert_eq!(
        m.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(m.header("List-Unsubscribe").unwrap().contains("/u/"));
    assert!(m.text_body().unwrap().contains(&format!("{}/p/", s.base)));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.messages().len(), 1, "bob did not consent");
    let (st, v) = admin(&s, "GET", "/api/v1/automations/bday", None);
    assert_eq!(st, 200);
    assert_eq!(v["counters"]["sent"], 1, "{v}");
    assert_eq!(v["counters"]["skipped"]["no_consent"], 1, "{v}");
    assert_eq!(v["counters"]["unsubscribed"], 0, "{v}");
    // Ann unsubscribes with one click: counted as an unsubscribe that followed.
    let lu = m.header("List-Unsubscribe").unwrap();
    let url = lu.trim_start_matches('<').trim_end_matches('>').to_owned();
    let (st, _) = page("POST", &url, Some("List-Unsubscribe=One-Click"), &[]);
    assert_eq!(st, 200);
    let (_, v) = admin(&s, "GET", "/api/v1/automations/bday", None);
    assert_eq!(v["counters"]["unsubscribed"], 1, "{v}");
}

#[test]
fn the_reminder_arrives_after_its_delay_and_not_when_an_order_came_first() {
    let (sink, _dir, s) = started();
    setup(&s);
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "first_name": "Ann"}}),
            json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi", "first_name": "Bob"}}),
        ],
    );
    consent(&s, "ann@example.fi", "email_marketing", "granted");
    consent(&s, "bob@example.fi", "email_marketing", "granted");
    automation(
        &s,
        "reminder",
        json!({"event": "Product Viewed", "delay": "2s",
            "unless": {"event": "Order Completed", "within": "1h"}}),
    );
    let viewed = Instant::now();
    batch(
        &s,
        vec![
            json!({"type": "track", "userId": "ann", "event": "Product Viewed", "properties": {"sku": "A1"}}),
            json!({"type": "track", "userId": "bob", "event": "Product Viewed", "properties": {"sku": "B2"}}),
            json!({"type": "track", "userId": "bob", "event": "Order Completed", "properties": {"revenue": 10}}),
        ],
    );
    let mail = sink.wait_for(1, Duration::from_secs(20));
    assert!(
        viewed.elapsed() >= Duration::from_secs(2),
        "not before its delay"
    );
    assert_eq!(mail.len(), 1);
    assert!(to_of(&mail[0]).contains("ann@example.fi"));
    assert_eq!(mail[0].header("Subject").as_deref(), Some("Hello Ann"));
    // HTML is escaped, text is not.
    assert!(mail[0].text_body().unwrap().contains("Dear Ann, <3"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.messages().len(), 1, "bob ordered: no reminder");
    let (_, v) = admin(&s, "GET", "/api/v1/automations/reminder", None);
    assert_eq!(v["counters"]["skipped"]["converted"], 1, "{v}");
}

#[test]
fn a_withdrawal_between_scheduling_and_sending_stops_the_send() {
    let (sink, _dir, s) = started();
    setup(&s);
    batch(
        &s,
        vec![json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi"}})],
    );
    consent(&s, "ann@example.fi", "email_marketing", "granted");
    automation(
        &s,
        "later",
        json!({"event": "Product Viewed", "delay": "3s"}),
    );
    batch(
        &s,
        vec![json!({"type": "track", "userId": "ann", "event": "Product Viewed"})],
    );
    // Scheduled: the dry run sees it waiting.
    std::thread::sleep(Duration::from_millis(1500));
    let (st, v) = admin(&s, "POST", "/api/v1/automations/later/dry-run", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["would_send"], 1, "{v}");
    consent(&s, "ann@example.fi", "email_marketing", "withdrawn");
    std::thread::sleep(Duration::from_secs(5));
    assert!(sink.messages().is_empty());
    let (_, v) = admin(&s, "GET", "/api/v1/automations/later", None);
    assert_eq!(v["counters"]["skipped"]["withdrawn"], 1, "{v}");
    assert_eq!(v["counters"]["sent"], 0, "{v}");
}

#[test]
fn win_back_fires_once_per_absence() {
    let (sink, _dir, s) = started();
    setup(&s);
    batch(
        &s,
        vec![json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi"}})],
    );
    consent(&s, "ann@example.fi", "email_marketing", "granted");
    automation(
        &s,
        "winback",
        json!({"absence": {"event": "Order Completed", "for": "2s"}}),
    );
    batch(
        &s,
        vec![json!({"type": "track", "userId": "ann", "event": "Order Completed"})],
    );
    assert_eq!(sink.wait_for(1, Duration::from_secs(20)).len(), 1);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sink.messages().len(), 1, "once per absence");
}

#[test]
fn kill_9_in_the_middle_of_a_campaign_neither_loses_nor_doubles_a_message() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let args = smtp_args(&sink, dir.path());
    let s = start_with(&data, &a, &w, &args);
    setup(&s);
    let n = 30;
    batch(
        &s,
        (0..n)
            .map(|i| json!({"type": "identify", "userId": format!("u{i}"), "traits": {"email": format!("u{i}@example.fi")}}))
            .collect(),
    );
    for i in 0..n {
        consent(
            &s,
            &format!("u{i}@example.fi"),
            "email_marketing",
            "granted",
        );
    }
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/segments",
        Some(
            &json!({"id": "everyone", "name": "Everyone", "purpose": "email_marketing",
            "rule": {"identifier": "email"}}),
        ),
    );
    assert_eq!((st, v["count"].as_u64()), (201, Some(n)), "{v}");
    // Ten a second: three seconds for everyone.
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/campaigns",
        Some(
            &json!({"id": "launch", "segment": "everyone", "template": "hello",
            "purpose": "email_marketing", "channel": "email", "per_minute": 600}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let before = sink.wait_for(5, Duration::from_secs(20)).len();
    assert!(before < n as usize, "killed mid-campaign");
    kill9(s);
    let s = start_with(&data, &a, &w, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut by_to: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while Instant::now() < deadline {
        by_to.clear();
        for m in sink.messages() {
            by_to
                .entry(to_of(&m))
                .or_default()
                .push(m.header("Message-ID").unwrap_or_default());
        }
        if by_to.len() == n as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(by_to.len(), n as usize, "nobody lost");
    for (to, ids) in &by_to {
        // A message the server accepted just before the kill may be sent
        // again after it, with the same Message-ID; never a second message.
        assert!(ids.iter().all(|i| *i == ids[0]), "{to}: {ids:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (_, v) = admin(&s, "GET", "/api/v1/campaigns/launch", None);
    assert_eq!(v["counters"]["sent"], n, "{v}");
    assert_eq!(v["status"], "done", "{v}");
}

#[test]
fn sms_stop_withdraws_the_numbers_sms_purposes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(
        &data,
        &a,
        &w,
        &["--sms-inbound-token".into(), "provider-secret".into()],
    );
    batch(
        &s,
        vec![json!({"type": "identify", "userId": "ann", "traits": {"phone": "+358401234567"}})],
    );
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "phone", "value": "+358401234567"}, "purpose": "sms_marketing",
            "decision": "granted", "method": "web_form", "source": "till"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let inbound = |token: &str, body: &str| {
        post(
            &s,
            "/v1/sms/inbound",
            Some(format!("Bearer {token}")),
            json!({"from": "+358401234567", "body": body})
                .to_string()
                .as_bytes(),
            false,
        )
    };
    assert_eq!(inbound("wrong", "STOP").0, 401);
    let (st, v) = inbound("provider-secret", "hello there");
    assert_eq!((st, v["stop"].as_bool()), (200, Some(false)), "{v}");
    let (st, v) = inbound("provider-secret", "Lopeta");
    assert_eq!((st, v["withdrawn"].as_u64()), (200, Some(1)), "{v}");
    let (_, v) = admin(
        &s,
        "GET",
        "/api/v1/decisions?purpose=sms_marketing&channel=sms&type=phone&value=%2B358401234567",
        None,
    );
    assert_eq!(v["reason"], "withdrawn", "{v}");
}

#[test]
fn bad_automations_get_their_own_codes_and_nothing_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    setup(&s);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/templates",
        Some(
            &json!({"id": "city", "channel": "email", "languages": {"en": {"subject": "x", "text": "{{ traits.city }}"}}}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let base = json!({"id": "a", "purpose": "email_marketing", "channel": "email", "template": "hello",
        "trigger": {"event": "Product Viewed", "delay": "1h"}});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, code) in [
        (
            with("template", json!("city")),
            "template_field_not_permitted",
        ),
        (with("template", json!("nope")), "unknown_template"),
        (with("purpose", json!("nope")), "unknown_purpose"),
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
                json!({"schedule": {"cron": "0 0 30 2 *", "segment": "x"}}),
            ),
            "cron_never_fires",
        ),
        (
            with("quiet_hours", json!({"start": "08:00", "end": "08:00"})),
            "quiet_hours_whole_day",
        ),
        (with("channel", json!("fax")), "invalid_channel"),
    ] {
        let (st, v) = admin(&s, "POST", "/api/v1/automations", Some(&body));
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{v}");
    }
    let (_, v) = admin(&s, "GET", "/api/v1/automations", None);
    assert_eq!(v["automations"], json!([]));
}

#[test]
fn a_marketing_sms_ends_with_the_opt_out_text_of_its_language() {
    let gw = tarmo_notify::testing::HttpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(
        &data,
        &a,
        &w,
        &[
            "--allow-private-webhooks".into(),
            "--sms-webhook-url".into(),
            format!("{}/sms", gw.url()),
        ],
    );
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/templates",
        Some(&json!({"id": "sms_hi", "channel": "sms", "languages": {
            "en": {"text": "Hi {{ traits.first_name }}, your cart misses you."},
            "fi": {"text": "Hei {{ traits.first_name }}, ostoskorisi odottaa."}}})),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/automations",
        Some(
            &json!({"id": "sms_reminder", "purpose": "sms_marketing", "channel": "sms",
            "template": "sms_hi", "trigger": {"event": "Product Viewed", "delay": "1s"}}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "ann", "traits": {"phone": "+358401234567",
            "first_name": "Ann", "language": "fi"}}),
        ],
    );
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "phone", "value": "+358401234567"}, "purpose": "sms_marketing",
            "decision": "granted", "method": "web_form", "source": "till"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    batch(
        &s,
        vec![json!({"type": "track", "userId": "ann", "event": "Product Viewed"})],
    );
    let reqs = gw.wait_for(1, Duration::from_secs(20));
    let body = reqs[0].json();
    assert_eq!(body["to"], "+358401234567");
    // The SMS links to the person's preference page, which opens in the
    // language of the message whatever the browser asks for.
    let text = body["body"].as_str().unwrap();
    let prefix = format!(
        "Hei Ann, ostoskorisi odottaa. Peru viestit: vastaa STOP {}/p/",
        s.base
    );
    assert!(text.starts_with(&prefix), "{body}");
    let (st, html) = page(
        "GET",
        text.rsplit(' ').next().unwrap(),
        None,
        &[("Accept-Language", "de")],
    );
    assert_eq!(st, 200);
    assert!(html.contains("<html lang=\"fi\" dir=\"ltr\">"), "{html}");
    assert!(
        html.contains("Tekstiviestillä") || html.contains("tekstiviestillä"),
        "{html}"
    );
}

/// The webhook channel: a call list goes to the processor's webhook (its
/// bearer token, an id to deduplicate by), only for the person who agreed
/// to be called, and is recorded as a disclosure to that processor so an
/// erasure later reaches it.
#[test]
fn a_call_list_goes_to_the_processors_webhook_as_a_disclosure() {
    let sink = tarmo_notify::testing::HttpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &["--allow-private-webhooks".into()]);
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/phone_marketing",
        Some(
            &json!({"name": "Offers by phone", "legal_basis": "consent", "channels": ["phone"],
            "data_categories": ["contact"], "retention_days": 365, "consent_lifetime_days": 365,
            "direct_marketing": true, "notice": {"en": "We may call you with offers."}}),
        ),
    );
    assert!(st == 200 || st == 201, "{st} {v}");
    let (st, p) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(
            &json!({"name": "Soitto Oy", "role": "call centre", "country": "FI",
            "dpa_reference": "DPA-9", "dpa_signed_on": "2026-01-02",
            "purposes": ["phone_marketing"], "data_categories": ["contact"],
            "erasure_webhook": format!("{}/calls", sink.url()), "webhook_token": "call-centre-token"}),
        ),
    );
    assert_eq!(st, 201, "{p}");
    let processor = p["id"].as_i64().unwrap();
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/templates",
        Some(&json!({"id": "script", "channel": "sms", "languages": {
            "en": {"text": "Call {{ traits.first_name }} about the autumn sale"}}})),
    );
    assert_eq!(st, 201, "{v}");
    let flow = |extra: Value| {
        let mut f = json!({"id": "calls", "purpose": "phone_marketing", "channel": "webhook",
            "template": "script", "trigger": {"event": "Product Viewed", "delay": "1s"}});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    // Bad input: each its own code, nothing saved.
    for (extra, code) in [
        (json!({}), "invalid_webhook"),
        (
            json!({"webhook": {"processor": 999, "list": "call"}}),
            "unknown_processor",
        ),
        (
            json!({"webhook": {"processor": processor, "list": "push"}}),
            "channel_not_covered",
        ),
        (
            json!({"purpose": "email_marketing", "webhook": {"processor": processor, "list": "call"}}),
            "channel_not_covered",
        ),
    ] {
        let (st, v) = admin(&s, "POST", "/api/v1/automations", Some(&flow(extra)));
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{v}");
    }
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/automations",
        Some(&flow(
            json!({"webhook": {"processor": processor, "list": "call"}}),
        )),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["definition"]["webhook"],
        json!({"processor": processor, "list": "call"}),
        "{v}"
    );
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "ann", "traits": {"phone": "+358401234567", "first_name": "Ann"}}),
            json!({"type": "identify", "userId": "bob", "traits": {"phone": "+358401234568", "first_name": "Bob"}}),
        ],
    );
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "phone", "value": "+358401234567"}, "purpose": "phone_marketing",
            "decision": "granted", "method": "web_form", "source": "checkout form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    batch(
        &s,
        vec![
            json!({"type": "track", "userId": "ann", "event": "Product Viewed"}),
            json!({"type": "track", "userId": "bob", "event": "Product Viewed"}),
        ],
    );
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].path, "/calls");
    assert_eq!(
        got[0].header("Authorization"),
        Some("Bearer call-centre-token")
    );
    let body = got[0].json();
    assert_eq!(body["list"], "call");
    assert_eq!(body["recipient"], json!({"phone": "+358401234567"}));
    assert_eq!(body["text"], "Call Ann about the autumn sale");
    assert_eq!(body["purpose"], "phone_marketing");
    assert!(
        body["id"].as_str().unwrap().starts_with("tarmo-outbox-"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.requests().len(), 1, "bob did not agree to be called");
    let (_, v) = admin(&s, "GET", "/api/v1/automations/calls", None);
    assert_eq!(v["counters"]["sent"], 1, "{v}");
    assert_eq!(v["counters"]["skipped"]["no_consent"], 1, "{v}");
    // A disclosure to the processor, which an erasure will notify.
    let (st, ann) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=ann",
        None,
    );
    assert_eq!(st, 200, "{ann}");
    let ann = ann["id"].as_i64().unwrap();
    let master = tarmo_store::vault::MasterKey::load(&data.join("master.key")).unwrap();
    let store = tarmo_store::Store::open(
        tarmo_store::Backend::open(&data, None).unwrap(),
        &master,
        100,
    )
    .unwrap();
    let d = tarmo_store::processors::disclosures_of(
        &mut *store.conn().unwrap(),
        tarmo_store::conn::ProfileId(ann),
    )
    .unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (
            d[0].processor_id,
            d[0].purpose.as_str(),
            d[0].categories.clone()
        ),
        (
            tarmo_core::ids::ProcessorId(processor),
            "phone_marketing",
            vec!["contact".to_owned()]
        )
    );
}
