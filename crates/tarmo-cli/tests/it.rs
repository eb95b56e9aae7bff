//! End-to-end tests of the real `tarmo` binary over real sockets: payloads as
//! the public SDKs send them, durability across kill -9, no plaintext on disk,
//! and the OpenAPI document. Each test has its own data directory and port.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tarmo");

struct Server {
    child: Child,
    base: String,
    admin: String,
    write: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init(dir: &Path) -> (String, String) {
    let out = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["admin_key"].as_str().unwrap().to_owned(),
        v["write_key"].as_str().unwrap().to_owned(),
    )
}

fn start(dir: &Path, admin: &str, write: &str) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("TARMO_DEFAULT_REGION", "FI")
        .env("TARMO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    Server {
        child,
        base,
        admin: admin.into(),
        write: write.into(),
    }
}

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    (dir, s)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn post(s: &Server, path: &str, auth: Option<String>, body: &[u8], gzip: bool) -> (u16, Value) {
    let mut req = agent()
        .post(format!("{}{}", s.base, path))
        .header("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.header("Authorization", &a);
    }
    let body = if gzip {
        req = req.header("Content-Encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    } else {
        body.to_vec()
    };
    let mut r = req.send(&body[..]).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent()
        .get(format!("{}{}", s.base, path))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

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
    let mut m = agent().get(format!("{}/metrics", s.base)).call().unwrap();
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
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

unsafe fn libc_kill(pid: i32) {
    unsafe {
        kill(pid, 9);
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

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The document is valid OpenAPI 3.1 (checked by openapi-spec-validator when
/// it is installed; CI installs it) and every route answers as documented.
#[test]
fn openapi_document_covers_every_route() {
    let (d, s) = server();
    let mut r = agent()
        .get(format!("{}/api/openapi.json", s.base))
        .call()
        .unwrap();
    let doc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let stable = [
        "/v1/identify",
        "/v1/track",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/import",
        "/api/v1/profiles/lookup",
        "/api/v1/profiles/{id}",
        "/api/v1/profiles/{id}/events",
        "/healthz",
        "/metrics",
        "/api/openapi.json",
    ];
    let mut documented: Vec<_> = paths.keys().map(String::as_str).collect();
    documented.sort();
    let mut expected = stable.to_vec();
    expected.sort();
    assert_eq!(documented, expected);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{}", s.base, path.replace("{id}", "1"));
            let resp = match method.as_str() {
                "get" => agent().get(&url).call().unwrap(),
                "post" => agent().post(&url).send(&b"{}"[..]).unwrap(),
                m => panic!("unexpected method {m}"),
            };
            let st = resp.status().as_u16();
            assert!(st != 404 && st != 405, "{method} {path} answered {st}");
            let documented: Vec<&String> = ops[method]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .collect();
            assert!(
                documented.iter().any(|c| c.as_str() == st.to_string()),
                "{method} {path}: {st} not documented in {documented:?}"
            );
        }
    }
    let file = d.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let check = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    if stderr.contains("No module named") && std::env::var("CI").is_err() {
        eprintln!("openapi-spec-validator not installed; structural checks only");
        return;
    }
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr
    );
}
