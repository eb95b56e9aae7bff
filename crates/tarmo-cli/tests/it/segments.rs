//! Segments end to end: a marketer's first segment over HTTP, live
//! membership after ingestion, withdrawal, previews, the profile view and
//! the access bundle, purpose-bound keys, and bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

fn ago(days: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ms = now - (days * 86_400_000.0) as i64;
    time_of(ms)
}

/// RFC 3339 of a millisecond time, without pulling a date crate into tests.
fn time_of(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn batch(s: &Server, msgs: Vec<Value>) {
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(&s.write)),
        json!({"batch": msgs}).to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn order(user: &str, revenue: f64, days_ago: f64) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed",
        "properties": {"revenue": revenue}, "timestamp": ago(days_ago)})
}

fn consent(s: &Server, email: &str, decision: &str) {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": email}, "purpose": "email_marketing",
            "decision": decision, "method": "web_form", "source": "newsletter form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
}

fn lookup(s: &Server, user: &str) -> Value {
    let (st, v) = admin(
        s,
        "GET",
        &format!("/api/v1/profiles/lookup?type=user_id&value={user}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn delete(s: &Server, path: &str, key: &str) -> (u16, Value) {
    let mut r = agent()
        .delete(format!("{}{path}", s.base))
        .header("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    let st = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn a_marketers_first_segment_is_live_and_follows_consent() {
    let (_d, s) = server();
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.fi", "city": "Tampere"}}),
            json!({"type": "identify", "userId": "bob", "traits": {"email": "bob@example.fi"}}),
            order("ann", 300.0, 200.0),
            order("ann", 150.0, 100.0),
            order("ann", 100.0, 10.0),
            order("bob", 20.0, 3.0),
        ],
    );
    consent(&s, "ann@example.fi", "granted");
    consent(&s, "bob@example.fi", "granted");
    let ann = lookup(&s, "ann")["id"].as_i64().unwrap();
    let bob = lookup(&s, "bob")["id"].as_i64().unwrap();

    let (st, seg) = admin(
        &s,
        "POST",
        "/api/v1/segments",
        Some(
            &json!({"id": "big_spenders", "name": "Big spenders", "purpose": "email_marketing",
            "rule_text": "event \"Order Completed\" in 365d count >= 3 and event \"Order Completed\" in 365d sum revenue > 500 and consent(email_marketing, email)"}),
        ),
    );
    assert_eq!(st, 201, "{seg}");
    assert_eq!(seg["count"], 1);
    assert_eq!(seg["rule"]["all"][0]["count"]["gte"], 3);
    assert!(
        seg["rule_text"]
            .as_str()
            .unwrap()
            .starts_with("event \"Order Completed\" in 365d count >= 3")
    );

    // Live: Bob's orders move him in within a second of the acknowledgement.
    batch(&s, vec![order("bob", 400.0, 2.0), order("bob", 300.0, 1.0)]);
    let took = wait_for("bob joins", || {
        admin(&s, "GET", "/api/v1/segments/big_spenders", None).1["count"] == 2
    });
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let (_, page) = admin(
        &s,
        "GET",
        "/api/v1/segments/big_spenders/members?limit=1",
        None,
    );
    assert_eq!(page["members"].as_array().unwrap().len(), 1);
    let next = page["next"].as_i64().unwrap();
    let (_, rest) = admin(
        &s,
        "GET",
        &format!("/api/v1/segments/big_spenders/members?limit=10&after={next}"),
        None,
    );
    let mut all: Vec<i64> = [&page, &rest]
        .iter()
        .flat_map(|p| {
            p["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["profile_id"].as_i64().unwrap())
        })
        .collect();
    all.sort();
    assert_eq!(all, {
        let mut v = vec![ann, bob];
        v.sort();
        v
    });
    assert!(rest["next"].is_null());

    // The person's view: segments, lifecycle stage and scores.
    let v = lookup(&s, "ann");
    assert_eq!(v["segments"][0]["id"], "big_spenders");
    assert_eq!(v["lifecycle"]["orders"], 3);
    assert_eq!(v["lifecycle"]["stage"], "active");
    let (st, mine) = admin(&s, "GET", &format!("/api/v1/profiles/{ann}/segments"), None);
    assert_eq!(
        (st, mine["segments"][0]["id"].as_str()),
        (200, Some("big_spenders"))
    );
    let (st, lc) = admin(&s, "GET", "/api/v1/lifecycle", None);
    assert_eq!(st, 200, "{lc}");
    assert_eq!(
        lc["stages"]["active"].as_u64().unwrap() + lc["stages"]["new"].as_u64().unwrap(),
        2
    );

    // The access bundle names the segment.
    let (st, req) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "access", "subject": {"type": "user_id", "value": "ann"}})),
    );
    assert_eq!(st, 201, "{req}");
    let id = req["id"].as_i64().unwrap();
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{id}/verify"),
        Some(&json!({"reason": "caller answered security questions"})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, bundle) = admin(
        &s,
        "GET",
        &format!("/api/v1/requests/{id}/export?format=json"),
        None,
    );
    assert_eq!(st, 200, "{bundle}");
    assert_eq!(bundle["segments"][0]["id"], "big_spenders");
    assert_eq!(bundle["segments"][0]["purpose"], "email_marketing");

    // A withdrawal takes her out at once.
    consent(&s, "ann@example.fi", "withdrawn");
    wait_for("ann leaves", || {
        admin(&s, "GET", "/api/v1/segments/big_spenders", None).1["count"] == 1
    });

    // A preview counts without saving; the JSON form works as the text one.
    let (st, p) = admin(
        &s,
        "POST",
        "/api/v1/segments/preview",
        Some(&json!({"purpose": "email_marketing", "rule": {"all": [
            {"event": "Order Completed", "within": "365d"},
            {"not": {"event": "Order Completed", "within": "5d"}}]}})),
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["count"], 1, "only Ann has no order in the last 5 days");
    assert_eq!(p["sample"], json!([ann]));
    assert_eq!(
        admin(&s, "GET", "/api/v1/segments", None).1["segments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Change and delete.
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/segments/big_spenders",
        Some(
            &json!({"name": "Anyone who ordered", "purpose": "email_marketing",
            "rule": {"event": "Order Completed", "within": "365d"}}),
        ),
    );
    assert_eq!((st, v["count"].as_i64()), (200, Some(2)), "{v}");
    assert_eq!(delete(&s, "/api/v1/segments/big_spenders", &s.admin).0, 204);
    assert_eq!(
        admin(&s, "GET", "/api/v1/segments/big_spenders", None).0,
        404
    );
}

#[test]
fn a_purpose_bound_key_sees_only_its_segments_and_allowed_members() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let out = std::process::Command::new(BIN)
        .args([
            "keys",
            "create",
            "--json",
            "--role",
            "marketer",
            "--purpose",
            "sms_marketing",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let bound: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bound = bound["key"].as_str().unwrap().to_owned();
    let s = start(&data, &a, &w);
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "cat", "traits": {"email": "cat@example.fi", "phone": "+358401234567"}}),
        ],
    );
    for (id, purpose) in [("by_email", "email_marketing"), ("by_sms", "sms_marketing")] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/segments",
            Some(
                &json!({"id": id, "name": id, "purpose": purpose, "rule": {"identifier": "phone"}}),
            ),
        );
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["count"], 1);
    }
    let call = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        let url = format!("{}{path}", s.base);
        let auth = format!("Bearer {bound}");
        let mut r = match method {
            "GET" => agent().get(&url).header("Authorization", &auth).call(),
            _ => agent()
                .post(&url)
                .header("Authorization", &auth)
                .send(body.unwrap_or_default().to_string().as_bytes()),
        }
        .unwrap();
        let st = r.status().as_u16();
        (
            st,
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
        )
    };
    let (_, list) = call("GET", "/api/v1/segments", None);
    let ids: Vec<&str> = list["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["by_sms"]);
    assert_eq!(call("GET", "/api/v1/segments/by_email", None).0, 404);
    assert_eq!(
        call("GET", "/api/v1/segments/by_email/members", None).0,
        404
    );
    // The member has not consented to texts: the bound key lists nobody.
    let (st, m) = call("GET", "/api/v1/segments/by_sms/members", None);
    assert_eq!(
        (st, m["members"].as_array().unwrap().len()),
        (200, 0),
        "{m}"
    );
    let (st, v) = call(
        "POST",
        "/api/v1/segments",
        Some(
            json!({"id": "mine", "name": "x", "purpose": "email_marketing", "rule": {"identifier": "phone"}}),
        ),
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("purpose_not_permitted"))
    );
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "cat"}, "purpose": "sms_marketing",
            "decision": "granted", "method": "web_form", "source": "sms form"}),
        ),
    );
    assert_eq!(st, 200);
    wait_for("the consent reaches the engine", || {
        call("GET", "/api/v1/segments/by_sms/members", None).1["members"]
            .as_array()
            .is_some_and(|m| m.len() == 1)
    });
}

#[test]
fn an_audience_sync_sends_hashes_of_consented_members_and_removes_withdrawals() {
    let sink = tarmo_notify::testing::HttpSink::start();
    // The sink is on loopback, over http.
    let (_d, s) = server_allowing_private_webhooks();
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "dee", "traits": {"email": "Dee.Doe@gmail.com"}}),
            json!({"type": "identify", "userId": "eve", "traits": {"email": "eve@example.fi"}}),
        ],
    );
    for (user, decision) in [("dee", "granted"), ("eve", "denied")] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/consents",
            Some(
                &json!({"subject": {"type": "user_id", "value": user}, "purpose": "ad_audiences",
                "decision": decision, "method": "web_form", "source": "cookie banner"}),
            ),
        );
        assert_eq!(st, 200, "{v}");
    }
    let (st, p) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(
            &json!({"name": "Ads Inc", "role": "advertising", "country": "ie", "dpa_reference": "DPA-9",
            "dpa_signed_on": "2024-01-02", "purposes": ["ad_audiences"], "data_categories": ["contact"],
            "erasure_webhook": format!("{}/audiences", sink.url()), "webhook_token": "ads-token"}),
        ),
    );
    assert_eq!(st, 201, "{p}");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/segments",
        Some(
            &json!({"id": "has_email", "name": "Has email", "purpose": "ad_audiences", "rule_text": "has email"}),
        ),
    );
    assert_eq!((st, v["count"].as_i64()), (201, Some(2)), "{v}");
    let bad = [
        (
            json!({"id": "x", "segment": "has_email", "processor": p["id"], "format": "tiktok"}),
            "unknown_format",
        ),
        (
            json!({"id": "x", "segment": "nope", "processor": p["id"], "format": "meta_custom_audience"}),
            "unknown_segment",
        ),
        (
            json!({"id": "x", "segment": "has_email", "processor": 999, "format": "meta_custom_audience"}),
            "unknown_processor",
        ),
    ];
    for (body, code) in bad {
        let (st, v) = admin(&s, "POST", "/api/v1/audiences", Some(&body));
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
    }
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/audiences",
        Some(
            &json!({"id": "meta", "segment": "has_email", "processor": p["id"], "format": "meta_custom_audience"}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let (st, r) = admin(&s, "POST", "/api/v1/audiences/meta/sync", None);
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["sync"].as_i64(), r["added"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["excluded"]["denied"], 1, "{r}");
    let file = |n: i64| {
        let mut resp = agent()
            .get(format!("{}/api/v1/audiences/meta/syncs/{n}/file", s.base))
            .header("Authorization", &format!("Bearer {}", s.admin))
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.body_mut().read_to_string().unwrap()
    };
    // Meta: trimmed, lower-cased, SHA-256 hex; the dots stay.
    let dee = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(b"dee.doe@gmail.com"))
    };
    let f = file(1);
    assert_eq!(f, format!("action,EMAIL,PHONE\nadd,{dee},\n"));
    // The processor's webhook receives the same file.
    assert_eq!(r["pushed"], true);
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].header("Authorization"), Some("Bearer ads-token"));
    let pushed = got[0].json();
    assert_eq!(
        (
            pushed["type"].as_str(),
            pushed["audience"].as_str(),
            pushed["sync"].as_i64()
        ),
        (Some("audience_sync"), Some("meta"), Some(1))
    );
    assert_eq!(pushed["file"].as_str(), Some(f.as_str()));
    // Dee withdraws; the next sync removes her.
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "dee"}, "purpose": "ad_audiences",
            "decision": "withdrawn", "method": "web_form", "source": "preference page"}),
        ),
    );
    assert_eq!(st, 200);
    let (_, r) = admin(&s, "POST", "/api/v1/audiences/meta/sync", None);
    assert_eq!(
        (r["added"].as_u64(), r["removed"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(file(2), format!("action,EMAIL,PHONE\nremove,{dee},\n"));
    let (_, a) = admin(&s, "GET", "/api/v1/audiences/meta", None);
    assert_eq!(a["syncs"].as_array().unwrap().len(), 2, "{a}");
    assert_eq!(
        admin(&s, "GET", "/api/v1/audiences/meta/syncs/9/file", None).0,
        404
    );
}

#[test]
fn the_order_event_and_stage_thresholds_come_from_tarmo_toml() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    // Thresholds that contradict each other are refused at start.
    std::fs::write(data.join("tarmo.toml"), "[commerce]\nat_risk_days = 200\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at_risk_days < lapsed_days"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        data.join("tarmo.toml"),
        "[commerce]\norder_event = \"Purchase\"\nrevenue_property = \"total\"\nloyal_orders = 2\nnew_days = 1\n",
    )
    .unwrap();
    let s = start(&data, &a, &w);
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "fay", "traits": {"email": "fay@example.fi"}}),
            json!({"type": "track", "userId": "fay", "event": "Purchase", "properties": {"total": 40}, "timestamp": ago(20.0)}),
            json!({"type": "track", "userId": "fay", "event": "Purchase", "properties": {"total": 2}, "timestamp": ago(2.0)}),
            json!({"type": "track", "userId": "fay", "event": "Order Completed", "properties": {"revenue": 999}}),
        ],
    );
    let v = wait_for_lifecycle(&s, "fay");
    assert_eq!(v["orders"], 2, "{v}");
    assert_eq!(v["revenue"], 42.0, "{v}");
    assert_eq!(v["stage"], "loyal", "{v}");
}

fn wait_for_lifecycle(s: &Server, user: &str) -> Value {
    let mut last = Value::Null;
    wait_for("the orders reach the engine", || {
        last = lookup(s, user)["lifecycle"].clone();
        last["orders"].as_u64().unwrap_or(0) > 0
    });
    last
}
