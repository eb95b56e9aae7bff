//! Who may see what, end to end: every route in the OpenAPI document walked
//! with a key of each role; purpose-bound keys; what an analyst sees; the
//! access log; and a suite of bad requests, each refused with nothing changed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

fn key(data: &std::path::Path, roles: &[&str], purposes: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["keys", "create", "--json", "--data-dir"])
        .arg(data);
    for r in roles {
        cmd.args(["--role", r]);
    }
    for p in purposes {
        cmd.args(["--purpose", p]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

fn call(base: &str, method: &str, path: &str, key: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("{base}{path}");
    let a = agent();
    let auth = format!("Bearer {key}");
    let resp = match method {
        "get" => a.get(&url).header("Authorization", &auth).call(),
        "put" => a.put(&url).header("Authorization", &auth).send(
            body.map(|b| b.to_string())
                .unwrap_or_else(|| "{}".into())
                .as_bytes(),
        ),
        _ => a.post(&url).header("Authorization", &auth).send(
            body.map(|b| b.to_string())
                .unwrap_or_else(|| "{}".into())
                .as_bytes(),
        ),
    };
    let mut r = resp.unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(Value::Null),
    )
}

/// What the issue says each role may do, route by route, written out here
/// independently of the server's own table.
fn allowed(role: &str, method: &str, path: &str) -> bool {
    let staff = ["admin", "dpo", "marketer", "support", "analyst"];
    let roles: &[&str] = match (method, path) {
        (_, p) if p.starts_with("/v1/") => &["ingest"],
        (
            "get",
            "/api/v1/profiles/lookup" | "/api/v1/profiles/{id}" | "/api/v1/profiles/{id}/events",
        ) => &staff,
        ("get", "/api/v1/profiles/{id}/consents") => &["admin", "dpo", "support"],
        ("post", "/api/v1/profiles/{id}/preference-link") => &["admin", "dpo", "support"],
        ("get", "/api/v1/stats") => &["admin", "dpo", "marketer", "analyst"],
        ("get", "/api/v1/purposes" | "/api/v1/purposes/{id}") => &staff,
        ("put", "/api/v1/purposes/{id}") => &["admin"],
        ("post", "/api/v1/consents" | "/api/v1/consents/signals") => &["admin", "dpo", "support"],
        (_, "/api/v1/decisions") => &["admin", "dpo", "marketer", "support"],
        ("post", "/api/v1/subscriptions" | "/api/v1/messages/email") => &["admin", "marketer"],
        ("post", "/api/v1/requests") => &["admin", "dpo", "support"],
        (_, p) if p.starts_with("/api/v1/requests") => &["admin", "dpo"],
        ("post", "/api/v1/processors/{id}/exports") => &["admin", "marketer"],
        (_, p) if p.starts_with("/api/v1/processors") => &["admin", "dpo"],
        ("get", "/api/v1/records-of-processing" | "/api/v1/audit") => &["admin", "dpo"],
        (_, p) if p.starts_with("/api/v1/keys") => &["admin"],
        _ => return true,
    };
    roles.contains(&role)
}

#[test]
fn every_route_in_the_openapi_document_answers_each_role_as_the_issue_says() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let roles = ["admin", "dpo", "marketer", "support", "analyst", "ingest"];
    let keys: BTreeMap<&str, String> = roles.iter().map(|r| (*r, key(&data, &[r], &[]))).collect();
    let s = start(&data, &a, &w);
    let mut r = agent()
        .get(format!("{}/api/openapi.json", s.base))
        .call()
        .unwrap();
    let doc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let public = !path.starts_with("/api/v1/") && !path.starts_with("/v1/");
        // Logging in needs no key; signing out ends the key it is called
        // with (its own test is in network.rs).
        if public || path.starts_with("/api/v1/sessions") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let url = path.replace("{id}", "1");
            for role in roles {
                let (st, v) = if path.starts_with("/v1/") {
                    let body =
                        json!({"userId": "walker", "event": "E", "type": "track", "batch": []});
                    let resp = agent()
                        .post(format!("{}{url}", s.base))
                        .header("Authorization", &basic(&keys[role]))
                        .send(body.to_string().as_bytes())
                        .unwrap();
                    (resp.status().as_u16(), Value::Null)
                } else {
                    call(&s.base, method, &url, &keys[role], None)
                };
                if allowed(role, method, path) {
                    assert!(st != 401 && st != 403, "{role} {method} {path}: {st} {v}");
                } else if path.starts_with("/v1/") {
                    assert_eq!(st, 401, "{role} {method} {path}");
                } else {
                    assert_eq!(
                        (st, v["code"].as_str()),
                        (403, Some("forbidden")),
                        "{role} {method} {path}: {v}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "{checked}");
    // Without a key, every staff route answers 401.
    let (st, v) = call(&s.base, "get", "/api/v1/purposes", "", None);
    assert_eq!((st, v["code"].as_str()), (401, Some("invalid_api_key")));
}

fn seed_two_people(s: &Server) {
    let body = json!({"batch": [
        {"type": "identify", "userId": "consented", "traits": {"email": "yes@example.fi", "firstName": "Ulla", "tier": "gold"},
         "context": {"ip": "192.0.2.44"}},
        {"type": "track", "userId": "consented", "event": "Bought", "properties": {"sku": "avocado"}, "context": {"ip": "192.0.2.44"}},
        {"type": "identify", "userId": "silent", "traits": {"email": "no@example.fi", "tier": "silver"}},
    ]});
    let r = agent()
        .post(format!("{}/v1/batch", s.base))
        .header("Authorization", &basic(&s.write))
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, _) = admin(
        s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "consented"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "form"}),
        ),
    );
    assert_eq!(st, 200);
}

#[test]
fn purpose_bound_keys_see_only_allowed_people_and_the_data_the_purpose_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let marketer = key(&data, &["marketer"], &["email_marketing"]);
    let analyst = key(&data, &["analyst"], &[]);
    let support = key(&data, &["support"], &[]);
    let s = start(&data, &a, &w);
    seed_two_people(&s);
    let (_, yes) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=email&value=yes@example.fi",
        None,
    );
    let (_, no) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=email&value=no@example.fi",
        None,
    );
    let (yes, no) = (yes["id"].as_i64().unwrap(), no["id"].as_i64().unwrap());

    // The marketer bound to email marketing: the consented person, with
    // contact and purchase data (the purpose's categories), not the rest.
    let (st, p) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{yes}"),
        &marketer,
        None,
    );
    assert_eq!(st, 200, "{p}");
    let kinds: Vec<&str> = p["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["email"],
        "user ids are not a category email marketing uses"
    );
    assert_eq!(p["traits"]["firstName"], "Ulla");
    assert!(
        p["traits"].get("tier").is_none(),
        "traits are not a category email marketing uses: {p}"
    );
    let (_, ev) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{yes}/events"),
        &marketer,
        None,
    );
    assert_eq!(ev["events"].as_array().unwrap().len(), 2);
    // The person without consent reads as absent, not as forbidden.
    let (st, v) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{no}"),
        &marketer,
        None,
    );
    assert_eq!((st, v["code"].as_str()), (404, Some("profile_not_found")));
    let (st, _) = call(
        &s.base,
        "get",
        "/api/v1/profiles/lookup?type=email&value=no@example.fi",
        &marketer,
        None,
    );
    assert_eq!(st, 404);
    // It acts for its purpose only.
    let (st, v) = call(
        &s.base,
        "get",
        &format!("/api/v1/decisions?purpose=sms_marketing&profile={yes}"),
        &marketer,
        None,
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("purpose_not_permitted"))
    );
    let (st, _) = call(
        &s.base,
        "get",
        &format!("/api/v1/decisions?purpose=email_marketing&profile={yes}"),
        &marketer,
        None,
    );
    assert_eq!(st, 200);

    // The analyst: pseudonymous data only.
    let (st, p) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{yes}"),
        &analyst,
        None,
    );
    assert_eq!(st, 200);
    assert!(p["identifiers"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(p["traits"]["tier"], "gold");
    assert!(p["traits"].get("firstName").is_none() && p["traits"].get("email").is_none());
    let (_, ev) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{yes}/events"),
        &analyst,
        None,
    );
    let m = &ev["events"][0]["message"];
    assert!(
        m.get("userId").is_none() && m["context"].get("ip").is_none(),
        "{m}"
    );
    assert_eq!(ev["events"][0]["message"]["properties"]["sku"], "avocado");
    let (st, _) = call(
        &s.base,
        "get",
        "/api/v1/profiles/lookup?type=email&value=yes@example.fi",
        &analyst,
        None,
    );
    assert_eq!(st, 404, "an analyst cannot find a person by their email");
    let (st, v) = call(&s.base, "get", "/api/v1/stats", &analyst, None);
    assert_eq!((st, v["profiles"].as_i64()), (200, Some(2)));

    // Support sees one person by exact identifier; the DPO sees who looked.
    let (st, _) = call(
        &s.base,
        "get",
        "/api/v1/profiles/lookup?type=email&value=yes@example.fi",
        &support,
        None,
    );
    assert_eq!(st, 200);
    let (st, audit) = admin(&s, "GET", &format!("/api/v1/audit?profile={yes}"), None);
    assert_eq!(st, 200);
    let records = audit["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["roles"] == json!(["support"]) && r["route"] == "/api/v1/profiles/lookup"),
        "{audit}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["roles"] == json!(["marketer"])
                && r["purposes"] == json!(["email_marketing"]))
    );
    assert!(records.iter().any(|r| r["roles"] == json!(["analyst"])));
    let (_, audit_no) = admin(&s, "GET", &format!("/api/v1/audit?profile={no}"), None);
    assert!(
        audit_no["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["roles"] != json!(["marketer"])),
        "a person hidden from the marketer was not read by it"
    );
    drop(s);
    let verify = |data: &std::path::Path| {
        Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    };
    let out = verify(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("access log intact"));
    let db = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    db.execute("UPDATE access_log SET key_id = 999 WHERE seq = 2", [])
        .unwrap();
    drop(db);
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at record 2"));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let dpo = key(&data, &["dpo"], &[]);
    let expired = {
        let out = Command::new(BIN)
            .args([
                "keys",
                "create",
                "--role",
                "admin",
                "--expires-in-hours",
                "0",
                "--json",
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let s = start_with(&data, &a, &w, &["--rate-limit-per-key".into(), "20".into()]);
    let purposes_before = admin(&s, "GET", "/api/v1/purposes", None).1;
    let new_purpose = json!({"name": "X", "legal_basis": "contract", "retention_days": 1});
    // Missing, wrong, expired keys; a key of another role.
    for (k, st, code) in [
        ("", 401, "invalid_api_key"),
        (
            "tka_0000000000000000000000000000000000000000",
            401,
            "invalid_api_key",
        ),
        (expired.as_str(), 401, "invalid_api_key"),
        (w.as_str(), 403, "forbidden"),
        (dpo.as_str(), 403, "forbidden"),
    ] {
        let (got, v) = call(
            &s.base,
            "put",
            "/api/v1/purposes/sneaky",
            k,
            Some(&new_purpose),
        );
        assert_eq!((got, v["code"].as_str()), (st, Some(code)), "{k}");
    }
    // A revoked key stops at once.
    let (st, made) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["dpo"], "name": "temp"})),
    );
    assert_eq!(st, 201, "{made}");
    let temp = made["key"].as_str().unwrap();
    assert_eq!(call(&s.base, "get", "/api/v1/purposes", temp, None).0, 200);
    let (st, _) = admin(
        &s,
        "POST",
        &format!("/api/v1/keys/{}/revoke", made["id"]),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(call(&s.base, "get", "/api/v1/purposes", temp, None).0, 401);
    // Oversized bodies, path tricks, wrong methods.
    let big = "x".repeat(1_100_000);
    let (st, v) = call(
        &s.base,
        "post",
        "/api/v1/consents",
        &s.admin,
        Some(&json!({"x": big})),
    );
    assert_eq!((st, v["code"].as_str()), (413, Some("body_too_large")));
    for path in [
        "/api/v1/profiles/../purposes",
        "/api/v1/profiles/%2e%2e%2fkeys",
        "/api//v1/purposes",
        "/api/v1/purposes/x/../../keys",
    ] {
        let (st, v) = call(&s.base, "get", path, &dpo, None);
        assert!(matches!(st, 400 | 404), "{path}: {st} {v}");
        assert!(v["code"].is_string(), "{path}: {v}");
    }
    let (st, v) = call(&s.base, "put", "/api/v1/decisions", &s.admin, None);
    assert_eq!((st, v["code"].as_str()), (405, Some("method_not_allowed")));
    // A form posted from another site is refused.
    let r = agent()
        .post(format!("{}/c/some-token", s.base))
        .header("Origin", "https://evil.example")
        .send(&b""[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Rate limits: beyond 20 a second (burst 40), 429 with Retry-After.
    let mut limited = None;
    for _ in 0..200 {
        let r = agent()
            .get(format!("{}/api/v1/purposes", s.base))
            .header("Authorization", &format!("Bearer {dpo}"))
            .call()
            .unwrap();
        if r.status().as_u16() == 429 {
            limited = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            break;
        }
    }
    assert!(limited.is_some_and(|v| v.parse::<u32>().unwrap() >= 1));
    std::thread::sleep(Duration::from_millis(1100));
    // Nothing above changed the catalog.
    assert_eq!(
        admin(&s, "GET", "/api/v1/purposes", None).1,
        purposes_before
    );
    // Pages carry their security headers.
    let r = agent()
        .get(format!("{}/u/not-a-token", s.base))
        .call()
        .unwrap();
    let h = r.headers();
    assert!(
        h.get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
}

#[test]
fn staff_log_in_with_a_password_and_get_an_expiring_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let mut child = Command::new(BIN)
        .args([
            "users",
            "create",
            "--name",
            "dana",
            "--role",
            "dpo",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let s = start(&data, &a, &w);
    let login = |pw: &str| {
        let r = agent()
            .post(format!("{}/api/v1/sessions", s.base))
            .send(
                json!({"name": "dana", "password": pw})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        let st = r.status().as_u16();
        let mut r = r;
        (
            st,
            serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    let (st, v) = login("wrong password here");
    assert_eq!((st, v["code"].as_str()), (401, Some("invalid_api_key")));
    let (st, v) = login("correct horse battery staple");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["roles"], json!(["dpo"]));
    let k = v["key"].as_str().unwrap();
    assert_eq!(
        call(&s.base, "get", "/api/v1/records-of-processing", k, None).0,
        200
    );
    assert_eq!(call(&s.base, "put", "/api/v1/purposes/x", k, None).0, 403);
}

#[test]
fn tls_serves_https_when_given_a_certificate() {
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
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let root = ureq::tls::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    root.to_owned(),
                ])))
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(format!("{}/healthz", s.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("ok"));
    // Plain HTTP to the TLS port gets no answer.
    let plain = s.base.replace("https://", "http://");
    assert!(agent.get(format!("{plain}/healthz")).call().is_err());
}

#[test]
fn custom_roles_from_tarmo_toml_grant_what_they_list() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    std::fs::write(
        data.join("tarmo.toml"),
        "[roles.auditor]\npermissions = [\"audit_read\", \"records_read\", \"profiles_read\"]\ndata = [\"traits\"]\n",
    )
    .unwrap();
    let auditor = key(&data, &["auditor"], &[]);
    let bad = Command::new(BIN)
        .args(["keys", "create", "--role", "overlord", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role `overlord`"));
    let s = start(&data, &a, &w);
    seed_two_people(&s);
    assert_eq!(call(&s.base, "get", "/api/v1/audit", &auditor, None).0, 200);
    assert_eq!(
        call(
            &s.base,
            "get",
            "/api/v1/records-of-processing",
            &auditor,
            None
        )
        .0,
        200
    );
    let (st, v) = call(
        &s.base,
        "get",
        "/api/v1/decisions?purpose=email_marketing&profile=1",
        &auditor,
        None,
    );
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")));
    let (st, p) = call(&s.base, "get", "/api/v1/profiles/1", &auditor, None);
    assert_eq!(st, 200);
    assert!(
        p["identifiers"].as_array().unwrap().is_empty(),
        "only traits: {p}"
    );
    assert!(p["traits"].get("tier").is_some() && p["traits"].get("email").is_none());
    drop(s);
    // A role that redefines a built-in one is refused at start.
    std::fs::write(
        data.join("tarmo.toml"),
        "[roles.admin]\npermissions = []\ndata = []\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["keys", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in role"));
}
