//! Trust boundaries of write keys: what a key shipped in a web page can and
//! cannot say about who a person is, through the real binary.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tarmo_notify::testing::SmtpSink;

use crate::common::*;

fn send(s: &Server, key: &str, body: Value) {
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(key)),
        json!({ "batch": [body] }).to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn profile_of(s: &Server, kind: &str, value: &str) -> Option<Value> {
    let (st, v) = admin(
        s,
        "GET",
        &format!("/api/v1/profiles/lookup?type={kind}&value={value}"),
        None,
    );
    (st == 200).then_some(v)
}

fn keys_create(data: &std::path::Path, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .args(["keys", "create", "--json", "--data-dir"])
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn write_keys_have_a_trust_level_and_init_prints_a_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let (ok, v, err) = keys_create(&data, &["--role", "ingest", "--trust", "server"]);
    assert!(ok, "{err}");
    assert_eq!(v["trust"], "server");
    assert!(v["key"].as_str().unwrap().starts_with("tkw_"));
    let (ok, v, err) = keys_create(&data, &["--role", "ingest"]);
    assert!(ok, "{err}");
    assert_eq!(
        v["trust"], "client",
        "a write key is a client key unless said otherwise"
    );
    let (ok, _, err) = keys_create(&data, &["--role", "admin", "--trust", "server"]);
    assert!(!ok, "only write keys have a trust level");
    assert!(err.contains("trust"), "{err}");
    let (ok, _, _) = keys_create(&data, &["--role", "ingest", "--trust", "browser"]);
    assert!(!ok);

    let out = Command::new(BIN)
        .args(["keys", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][3], "trust", "{list}");
    assert_eq!(rows[1][3], "-", "the admin key: {list}");
    assert_eq!(rows[2][3], "client", "init's write key: {list}");
    assert_eq!(rows[3][3], "server", "{list}");

    let s = start(&data, &a, &w);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["ingest"], "trust": "server", "name": "till"})),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["trust"], "server");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["ingest"], "trust": "root"})),
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_trust")));
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["marketer"], "trust": "server"})),
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_trust")));
    let (_, list) = admin(&s, "GET", "/api/v1/keys", None);
    let trusts: Vec<(String, Value)> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap().to_owned(), k["trust"].clone()))
        .collect();
    assert_eq!(trusts[0].1, Value::Null, "the admin key has no trust level");
    assert_eq!(trusts[1].1, "client", "init's write key: {trusts:?}");
    assert!(trusts.contains(&("till".into(), json!("server"))));
}

#[test]
fn a_public_write_key_cannot_claim_a_known_persons_address() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, client) = init(&data);
    let (ok, v, err) = keys_create(&data, &["--role", "ingest", "--trust", "server"]);
    assert!(ok, "{err}");
    let server = v["key"].as_str().unwrap().to_owned();
    let s = start_with(&data, &a, &client, &["--smtp-url".into(), sink.url()]);

    // The shop's back end knows the victim.
    send(
        &s,
        &server,
        json!({"type": "identify", "userId": "victim-1",
        "traits": {"email": "victim@shop.example", "name": "Vera"}}),
    );
    let victim = profile_of(&s, "email", "victim@shop.example").unwrap();
    // Mallory, with the write key from the page source.
    send(
        &s,
        &client,
        json!({"type": "identify", "anonymousId": "mallory-browser",
        "traits": {"email": "mallory@evil.example"},
        "context": {"externalIds": [{"type": "email", "id": "victim@shop.example"}]}}),
    );
    assert!(
        profile_of(&s, "email", "mallory@evil.example").is_none(),
        "mallory's address joins no one"
    );
    let v = profile_of(&s, "email", "victim@shop.example").unwrap();
    assert_eq!(v["id"], victim["id"]);
    assert!(
        v["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["value"] != "mallory@evil.example"),
        "{v}"
    );
    assert!(
        v["merges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["outcome"] == "refused"
                && m["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("client write key")),
        "{v}"
    );
    // Two strong identifiers in one client message do not merge two people.
    send(
        &s,
        &server,
        json!({"type": "identify", "userId": "other-1",
        "traits": {"email": "other@shop.example"}}),
    );
    send(
        &s,
        &client,
        json!({"type": "identify", "userId": "victim-1",
        "traits": {"email": "other@shop.example"}}),
    );
    let other = profile_of(&s, "email", "other@shop.example").unwrap();
    assert_ne!(other["id"], victim["id"]);

    // Mallory asks for "her" data as mallory@evil: no link goes anywhere
    // she reads, and the victim's data cannot follow.
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(
            &json!({"type": "access", "subject": {"type": "email", "value": "mallory@evil.example"}}),
        ),
    );
    assert_eq!(st, 201, "{r}");
    assert_ne!(r["profile_id"], victim["id"]);
    // Her newsletter subscription gives a preference link to her own page.
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": "mallory@evil.example", "purposes": ["email_marketing"],
            "language": "en", "source": "footer form"}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    assert_ne!(v["profile_id"], victim["id"]);
    let mail = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(
        mail.len(),
        1,
        "only the confirmation: {:?}",
        mail.iter().map(|m| &m.rcpt_to).collect::<Vec<_>>()
    );
    assert_eq!(mail[0].rcpt_to, ["mallory@evil.example"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 1, "no verification link was sent");
    let v = profile_of(&s, "email", "victim@shop.example").unwrap();
    assert!(
        v["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["value"] != "mallory@evil.example"),
        "{v}"
    );
}
