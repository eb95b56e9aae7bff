//! Strangers on the network: what a client that stalls, a far-future clock
//! or a webhook into the internal network can and cannot do.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn processor(webhook: &str) -> serde_json::Value {
    json!({
        "name": "Mailer Oy",
        "role": "email delivery",
        "country": "FI",
        "dpa_reference": "DPA-2024-7",
        "dpa_signed_on": "2024-05-02",
        "purposes": ["email_marketing"],
        "data_categories": ["contact"],
        "erasure_webhook": webhook,
    })
}

#[test]
fn a_client_that_never_says_hello_does_not_hold_up_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.signing_key.serialize_pem()).unwrap();
    let s = start_with(
        &data,
        &a,
        &w,
        &[
            "--tls-cert".into(),
            cp.display().to_string(),
            "--tls-key".into(),
            kp.display().to_string(),
        ],
    );
    let addr = s.base.trim_start_matches("https://").to_owned();
    // Two connections that never send a ClientHello.
    let _silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let root = ureq::tls::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    root.to_owned(),
                ])))
                .build(),
        )
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let t = Instant::now();
    let r = agent.get(format!("{}/healthz", s.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a TLS client waited {:?} behind silent connections",
        t.elapsed()
    );
}

#[test]
fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let (_d, s) = server();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(20) {
        if slow.write_all(b"X-Drip: 1\r\n").is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            // Whatever the server answers before closing.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        let (st, _) = get(&s, "/healthz");
        assert_eq!(st, 200, "a slow client held others up");
    }
    assert!(
        cut,
        "a client sending its headers forever kept its connection"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn a_far_future_trait_can_be_rectified() {
    let (_d, s) = server();
    let (st, v) = post(
        &s,
        "/v1/identify",
        Some(basic(&s.write)),
        json!({"userId": "time-traveller", "timestamp": "9999-12-31T23:59:59Z",
            "traits": {"lastName": "Wrong"}})
        .to_string()
        .as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "rectification",
            "subject": {"type": "user_id", "value": "time-traveller"},
            "corrected": {"lastName": "Right"}})),
    );
    assert_eq!(st, 201, "{r}");
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "customer service call"})),
    );
    assert_eq!(st, 200, "{v}");
    let (_, p) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=time-traveller",
        None,
    );
    assert_eq!(p["traits"]["lastName"], "Right", "{p}");
    // A sender whose clock is decades fast: its event lands at about now,
    // after the rectification.
    let (st, _) = post(
        &s,
        "/v1/batch",
        Some(basic(&s.write)),
        json!({"sentAt": "2100-01-02T00:00:00Z", "batch": [
            {"type": "identify", "userId": "time-traveller", "timestamp": "2100-01-02T00:00:00Z",
             "traits": {"lastName": "Later"}}]})
        .to_string()
        .as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    let (_, p) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=time-traveller",
        None,
    );
    assert_eq!(p["traits"]["lastName"], "Later", "{p}");
}

#[test]
fn webhooks_into_the_internal_network_are_refused() {
    let (_d, s) = server();
    for (url, code) in [
        ("http://hooks.example.org/erase", "webhook_url_not_https"),
        ("https://127.0.0.1:8443/erase", "webhook_target_private"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "webhook_target_private",
        ),
        ("https://[::1]/erase", "webhook_target_private"),
        ("https://10.0.0.5/erase", "webhook_target_private"),
        ("https://localhost/erase", "webhook_target_private"),
    ] {
        let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&processor(url)));
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{url}: {v}");
    }
    let (_, v) = admin(&s, "GET", "/api/v1/processors", None);
    assert_eq!(v["processors"], json!([]), "nothing was registered");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(&processor("https://hooks.example.org/erase")),
    );
    assert_eq!(st, 201, "{v}");
    // Changing it to a private target is refused too.
    let (st, v) = admin(
        &s,
        "PUT",
        &format!("/api/v1/processors/{}", v["id"]),
        Some(&processor("https://192.168.0.1/erase")),
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("webhook_target_private"))
    );

    // With allow_private_webhooks in tarmo.toml, the operator's own
    // network is fine.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    std::fs::write(data.join("tarmo.toml"), "allow_private_webhooks = true\n").unwrap();
    let s = start(&data, &a, &w);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(&processor("http://10.0.0.5/erase")),
    );
    assert_eq!(st, 201, "{v}");
}

#[test]
fn an_sms_gateway_on_loopback_needs_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data);
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sms-webhook-url",
            "http://127.0.0.1:9/sms",
            "--data-dir",
        ])
        .arg(&data)
        .env("TARMO_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sms-webhook-url") && err.contains("https"),
        "{err}"
    );
}

fn create_user(data: &std::path::Path, name: &str, role: &str) -> i64 {
    let mut child = Command::new(BIN)
        .args([
            "users",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--data-dir",
        ])
        .arg(data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// One request from a chosen loopback address (127.0.0.0/8 all reaches
/// this machine); the status.
fn login_from(base: &str, from: std::net::Ipv4Addr, name: &str, password: &str) -> u16 {
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((from, 0).into()).unwrap();
        sock.connect(addr).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    let body = json!({"name": name, "password": password}).to_string();
    let mut stream = stream;
    write!(
        stream,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn call(s: &Server, method: &str, path: &str, key: &str) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", s.base);
    let auth = format!("Bearer {key}");
    let a = agent();
    let r = match method {
        "DELETE" => a.delete(&url).header("Authorization", &auth).call(),
        _ => a.get(&url).header("Authorization", &auth).call(),
    };
    let mut r = r.unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(serde_json::Value::Null),
    )
}

fn login(s: &Server, name: &str) -> String {
    let mut r = agent()
        .post(format!("{}/api/v1/sessions", s.base))
        .send(
            json!({"name": name, "password": "correct horse battery staple"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[test]
fn sign_out_ends_a_session_at_once_and_sessions_follow_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let dana = create_user(&data, "dana", "dpo");
    let s = start(&data, &a, &w);

    // Sign-out: the key stops working on the very next request.
    let k = login(&s, "dana");
    assert_eq!(call(&s, "GET", "/api/v1/records-of-processing", &k).0, 200);
    assert_eq!(call(&s, "DELETE", "/api/v1/sessions/current", &k).0, 204);
    let (st, v) = call(&s, "GET", "/api/v1/records-of-processing", &k);
    assert_eq!((st, v["code"].as_str()), (401, Some("invalid_api_key")));
    // Only sessions sign out: a service's key is not ended by a stray call.
    let (st, v) = call(&s, "DELETE", "/api/v1/sessions/current", &s.admin);
    assert_eq!((st, v["code"].as_str()), (400, Some("not_a_session")));
    assert_eq!(call(&s, "GET", "/api/v1/keys", &s.admin).0, 200);

    // Staff revoke a session like any key.
    let k = login(&s, "dana");
    let (_, keys) = call(&s, "GET", "/api/v1/keys", &s.admin);
    let id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["user_id"] == dana && k["revoked_ms"].is_null())
        .map(|k| k["id"].as_i64().unwrap())
        .next()
        .unwrap();
    let (st, _) = admin(&s, "POST", &format!("/api/v1/keys/{id}/revoke"), None);
    assert_eq!(st, 200);
    assert_eq!(call(&s, "GET", "/api/v1/records-of-processing", &k).0, 401);

    // A change of the account's roles bites on its live session.
    let k = login(&s, "dana");
    assert_eq!(call(&s, "GET", "/api/v1/records-of-processing", &k).0, 200);
    let out = Command::new(BIN)
        .args([
            "users",
            "roles",
            &dana.to_string(),
            "--role",
            "analyst",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another process changed it: the server's key cache holds a key for
    // at most a second.
    std::thread::sleep(Duration::from_millis(1_200));
    let (st, v) = call(&s, "GET", "/api/v1/records-of-processing", &k);
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    assert_eq!(call(&s, "GET", "/api/v1/stats", &k).0, 200);
    // Disabled: the session ends.
    let out = Command::new(BIN)
        .args(["users", "disable", &dana.to_string(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(call(&s, "GET", "/api/v1/stats", &k).0, 401);
}

#[test]
fn logins_are_limited_per_account_from_any_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    create_user(&data, "dana", "dpo");
    create_user(&data, "erik", "dpo");
    let s = start(&data, &a, &w);
    let addr = |i: u8| std::net::Ipv4Addr::new(127, 0, 1, i);
    // A guesser with a fresh address for every try: each address is far
    // under its own limit, the account is not.
    let mut statuses = Vec::new();
    for i in 1..=12 {
        statuses.push(login_from(&s.base, addr(i), "erik", "not the password"));
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
    // Another account is not held up by it.
    assert_eq!(
        login_from(&s.base, addr(50), "dana", "correct horse battery staple"),
        200
    );
    // One address is limited on its own: five tries, then a wait.
    let one = addr(99);
    let statuses: Vec<u16> = (0..7)
        .map(|i| login_from(&s.base, one, &format!("nobody-{i}"), "x"))
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
}
