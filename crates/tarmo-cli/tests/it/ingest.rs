//! Ingestion as the public SDKs do it, durability across kill -9, and no
//! plaintext on disk.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A batch as analytics-python sends it: writeKey in the body, no auth header,
/// gzip, batch-level `sentAt`, and per-message `context.library`.
#[test]
fn python_sdk_batch_with_write_key_in_body_and_gzip() {
    let (_d, s) = server();
    let body = json!({
        "batch": [{
            "type": "identify", "userId": "py-user", "traits": {"email": "Py@Example.org", "plan": "gold"},
            "messageId": "4f2b6c52-0d5c-4c0e-9a51-3a5b0f3e9a10", "timestamp": "2024-05-01T10:00:00.123456+00:00",
            "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}, "integrations": {}
        }, {
            "type": "track", "userId": "py-user", "event": "Order Completed",
            "properties": {"revenue": 12.5, "currency": "EUR"},
            "messageId": "1c9f3d0e-2a1b-4b3c-8d4e-5f6a7b8c9d0e", "timestamp": "2024-05-01T10:01:00+00:00",
            "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}, "integrations": {}
        }],
        "sentAt": "2024-05-01T10:01:01.000000+00:00",
        "writeKey": s.write,
    });
    let (st, v) = post(&s, "/v1/batch", None, body.to_string().as_bytes(), true);
    assert_eq!((st, v["success"].as_bool()), (200, Some(true)), "{v}");
    let (st, p) = get(
        &s,
        "/api/v1/profiles/lookup?type=email&value=py@example.ORG",
    );
    assert_eq!(st, 404, "local part is case-sensitive: {p}");
    let (st, p) = get(
        &s,
        "/api/v1/profiles/lookup?type=email&value=Py@example.ORG",
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["event_count"], 2);
    assert_eq!(p["traits"]["plan"], "gold");
    let id = p["id"].as_i64().unwrap();
    let (_, ev) = get(&s, &format!("/api/v1/profiles/{id}/events"));
    assert_eq!(ev["events"][0]["message"]["event"], "Order Completed");
    assert_eq!(ev["events"][0]["message"]["properties"]["currency"], "EUR");
}

/// As RudderStack and analytics.js send it: Basic auth, single-message
/// routes, batch context merged into each message.
#[test]
fn rudderstack_style_basic_auth_single_routes_and_batch_context() {
    let (_d, s) = server();
    let auth = Some(basic(&s.write));
    let page = json!({"anonymousId": "anon-rs-1", "name": "Home", "properties": {"path": "/"},
        "messageId": "rs-1", "originalTimestamp": "2024-05-01T10:00:00.000Z", "channel": "web"});
    let (st, v) = post(
        &s,
        "/v1/page",
        auth.clone(),
        page.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
    let identify = json!({"anonymousId": "anon-rs-1", "userId": "rs-user", "traits": {"phone": "040 7654321"},
        "messageId": "rs-2", "context": {"traits": {"firstName": "Aino"}}});
    let (st, _) = post(
        &s,
        "/v1/identify",
        auth.clone(),
        identify.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    let batch = json!({"batch": [{"type": "track", "userId": "rs-user", "event": "Clicked", "messageId": "rs-3"}],
        "context": {"locale": "fi-FI"}, "integrations": {"All": true}});
    let (st, _) = post(
        &s,
        "/v1/import",
        auth.clone(),
        batch.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    // A retry of the same messageId is acknowledged and not stored twice.
    let (st, _) = post(&s, "/v1/import", auth, batch.to_string().as_bytes(), false);
    assert_eq!(st, 200);
    let (st, p) = get(
        &s,
        "/api/v1/profiles/lookup?type=phone&value=%2B358407654321",
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["event_count"], 3);
    assert_eq!(p["traits"]["firstName"], "Aino");
    let (_, ev) = get(&s, &format!("/api/v1/profiles/{}/events?limit=1", p["id"]));
    assert_eq!(ev["events"][0]["message"]["context"]["locale"], "fi-FI");
    assert_eq!(ev["events"][0]["message"]["integrations"]["All"], true);
}

#[test]
fn bad_input_gets_its_own_code_and_stores_nothing() {
    let (_d, s) = server();
    let auth = Some(basic(&s.write));
    type Case<'a> = (&'a str, Option<String>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v1/batch", auth.clone(), b"{not json".to_vec(), 400, "invalid_json"),
        ("/v1/batch", None, br#"{"batch":[]}"#.to_vec(), 401, "missing_write_key"),
        ("/v1/batch", Some(basic("tkw_wrong")), br#"{"batch":[]}"#.to_vec(), 401, "invalid_write_key"),
        ("/v1/batch", Some(basic(&s.admin)), br#"{"batch":[]}"#.to_vec(), 401, "invalid_write_key"),
        ("/v1/track", auth.clone(), br#"{"userId":"u","event":"E","properties":[1]}"#.to_vec(), 400, "invalid_field_type"),
        ("/v1/track", auth.clone(), br#"{"userId":"u"}"#.to_vec(), 400, "missing_event_name"),
        ("/v1/batch", auth.clone(), br#"{"batch":[{"type":"teleport","userId":"u"}]}"#.to_vec(), 400, "invalid_message_type"),
        ("/v1/batch", auth.clone(),
            br#"{"batch":[{"type":"page","userId":"u","context":{"externalIds":[{"id":"1","type":"shoe_size"}]}}]}"#.to_vec(),
            400, "invalid_identifier"),
    ];
    for (path, a, body, status, code) in cases {
        let (st, v) = post(&s, path, a, &body, false);
        assert_eq!(
            (st, v["code"].as_str().unwrap_or("")),
            (status, code),
            "{path} {v}"
        );
        assert!(v["message"].is_string());
    }
    // A batch whose second message is too large names it, and stores neither.
    let big = "x".repeat(33 * 1024);
    let body = json!({"batch": [
        {"type": "track", "userId": "ok-user", "event": "E"},
        {"type": "track", "userId": "u", "event": "E", "properties": {"blob": big}}]});
    let (st, v) = post(
        &s,
        "/v1/batch",
        auth.clone(),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(
        (st, v["code"].as_str().unwrap()),
        (400, "message_too_large")
    );
    assert!(v["message"].as_str().unwrap().contains("message 1"), "{v}");
    let too_many: Vec<Value> = (0..2501)
        .map(|i| json!({"type": "track", "userId": "u", "event": format!("e{i}")}))
        .collect();
    let (st, v) = post(
        &s,
        "/v1/batch",
        auth.clone(),
        json!({"batch": too_many}).to_string().as_bytes(),
        true,
    );
    assert_eq!((st, v["code"].as_str().unwrap()), (400, "batch_too_large"));
    let (st, _) = get(&s, "/api/v1/profiles/lookup?type=user_id&value=ok-user");
    assert_eq!(st, 404);
    let (st, v) = get(&s, "/api/v1/profiles/lookup?type=shoe_size&value=1");
    assert_eq!(
        (st, v["code"].as_str().unwrap()),
        (400, "unknown_identifier_type")
    );
    let (st, v) = get(&s, "/api/v1/profiles/lookup?type=email&value=nope");
    assert_eq!((st, v["code"].as_str().unwrap()), (400, "invalid_email"));
    let (st, v) = get(&s, "/api/v1/profiles/abc");
    assert_eq!(
        (st, v["code"].as_str().unwrap()),
        (400, "invalid_profile_id")
    );
    let mut r = agent()
        .get(format!("{}/api/v1/profiles/1", s.base))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["code"], "invalid_api_key");
    let mut m = agent()
        .get(format!("{}/metrics", s.base))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let metrics = m.body_mut().read_to_string().unwrap();
    assert!(
        metrics.contains("tarmo_events_ingested_total 0"),
        "{metrics}"
    );
}

/// kill -9 while clients are sending: every batch that got a 200 is there
/// after a restart.
#[test]
fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    let base = s.base.clone();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (base, w, acked) = (base.clone(), w.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            for b in 0..10_000 {
                let batch: Vec<Value> = (0..20)
                    .map(|i| json!({"type": "track", "userId": format!("k{t}-{b}"), "event": "E", "messageId": format!("{t}-{b}-{i}")}))
                    .collect();
                let r = agent()
                    .post(format!("{base}/v1/batch"))
                    .header("Authorization", &basic(&w))
                    .send(json!({"batch": batch}).to_string().as_bytes());
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => acked.lock().unwrap().push(format!("k{t}-{b}")),
                    _ => return,
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = s;
    unsafe { libc_kill(s.child.id() as i32) };
    let _ = s.child.wait();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few acknowledged batches to prove anything: {}",
        acked.len()
    );
    let s2 = start(&data, &a, &w);
    for user in acked
        .iter()
        .step_by((acked.len() / 200).max(1))
        .chain(acked.last())
    {
        let (st, p) = get(
            &s2,
            &format!("/api/v1/profiles/lookup?type=user_id&value={user}"),
        );
        assert_eq!(st, 200, "acknowledged batch for {user} lost");
        assert_eq!(p["event_count"], 20, "{user}");
        // Its key made it too (the keyring commits before the data): the
        // sealed identifier opens.
        assert_eq!(
            p["identifiers"][0]["value"].as_str(),
            Some(user.as_str()),
            "{user}'s identifier does not open: {p}"
        );
    }
}

/// Unique markers go in through every field kind; no byte of any file in
/// the data directory holds one of them.
#[test]
fn no_personal_value_in_plaintext_on_disk() {
    let (d, s) = server();
    let auth = Some(basic(&s.write));
    let markers = [
        "MarkerUser7f3a",
        "marker.email.9c1d@example.com",
        "+358409998877",
        "MarkerAnon55e1",
        "MarkerTrait2b8c",
        "MarkerProp4e6f",
        "MarkerLoyalty1a2b",
        "MarkerDevice3c4d",
        "MarkerEvent8d9e",
    ];
    let body = json!({"batch": [
        {"type": "identify", "userId": markers[0], "anonymousId": markers[3],
         "traits": {"email": markers[1], "phone": markers[2], "nickname": markers[4], "loyalty_card": markers[6]},
         "context": {"device": {"id": markers[7]}}},
        {"type": "track", "userId": markers[0], "event": markers[8], "properties": {"note": markers[5]}},
    ]});
    let (st, _) = post(&s, "/v1/batch", auth, body.to_string().as_bytes(), false);
    assert_eq!(st, 200);
    let (st, p) = get(
        &s,
        &format!(
            "/api/v1/profiles/lookup?type=loyalty_card&value={}",
            markers[6]
        ),
    );
    assert_eq!(st, 200);
    assert_eq!(p["traits"]["nickname"], markers[4]);
    let mut files = 0;
    for entry in walk(d.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        for m in markers {
            for form in [
                m.to_owned(),
                m.to_lowercase(),
                m.trim_start_matches('+').to_owned(),
            ] {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "{form} found in plaintext in {}",
                    entry.display()
                );
            }
        }
    }
    assert!(
        files >= 3,
        "expected the database, its WAL and the key file, saw {files}"
    );
}

/// A data directory made by the release before the recent messageId
/// tables (bc923d1, migrations up to 24: one person, three events, made by
/// `tarmo init` and one `POST /v1/batch` of `batch.json`) migrates on
/// start: the person and the events read back, the messageIds it holds
/// are still deduplicated, and new ones are stored.
#[test]
fn a_data_directory_from_the_previous_release_migrates_on_start() {
    use std::os::unix::fs::PermissionsExt;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/data-bc923d1");
    let d = tempfile::tempdir().unwrap();
    for f in ["master.key", "tarmo.db", "keyring.db", "node.id"] {
        let to = d.path().join(f);
        std::fs::copy(fixture.join(f), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let keys: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("keys.json")).unwrap()).unwrap();
    let s = start(
        d.path(),
        keys["admin_key"].as_str().unwrap(),
        keys["write_key"].as_str().unwrap(),
    );
    let lookup = || {
        let (st, p) = get(
            &s,
            "/api/v1/profiles/lookup?type=email&value=fixture.person%40example.com",
        );
        assert_eq!(st, 200, "{p}");
        p
    };
    let p = lookup();
    assert_eq!(p["event_count"], 3, "{p}");
    assert_eq!(p["traits"]["firstName"], "Aino");

    // The same batch again: every messageId is known, nothing is stored.
    let auth = Some(basic(&s.write));
    let again = std::fs::read(fixture.join("batch.json")).unwrap();
    let (st, _) = post(&s, "/v1/batch", auth.clone(), &again, false);
    assert_eq!(st, 200);
    // A new message for the same person is stored.
    let new = json!({"type": "track", "userId": "fx-user", "event": "Order Completed", "messageId": "fx-m4",
        "timestamp": "2026-12-02T10:00:00Z", "properties": {"total": 5}});
    let (st, _) = post(
        &s,
        "/v1/track",
        auth.clone(),
        new.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    // Twice: the second is deduplicated by the new tables.
    let (st, _) = post(&s, "/v1/track", auth, new.to_string().as_bytes(), false);
    assert_eq!(st, 200);
    let p = lookup();
    assert_eq!(p["event_count"], 4, "{p}");
    let (st, ev) = get(&s, &format!("/api/v1/profiles/{}/events?limit=10", p["id"]));
    assert_eq!(st, 200, "{ev}");
    let names: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"]["event"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{ev}");
    assert!(names.contains(&"Product Viewed"), "{ev}");
}
