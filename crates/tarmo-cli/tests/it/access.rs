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
        "delete" => a.delete(&url).header("Authorization", &auth).call(),
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
        // The SMS provider's callback takes its own token, no key.
        ("post", "/v1/sms/inbound") => &[],
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
        ("get", "/api/v1/profiles/{id}/segments") => &staff,
        ("get", "/api/v1/segments" | "/api/v1/segments/{id}" | "/api/v1/segments/{id}/members") => {
            &["admin", "dpo", "marketer", "analyst"]
        }
        (_, p) if p.starts_with("/api/v1/segments") => &["admin", "marketer"],
        ("get", "/api/v1/lifecycle") => &["admin", "dpo", "marketer", "analyst"],
        ("get", "/api/v1/audiences" | "/api/v1/audiences/{id}") => {
            &["admin", "dpo", "marketer", "analyst"]
        }
        ("post", "/api/v1/audiences") => &["admin", "marketer"],
        (_, p) if p.starts_with("/api/v1/audiences") => &["admin", "marketer"],
        ("get", "/metrics") => &["admin", "monitoring"],
        (_, p) if p.starts_with("/api/v1/imports") => &["admin"],
        (_, p)
            if p.starts_with("/api/v1/templates")
                || p.starts_with("/api/v1/automations")
                || p.starts_with("/api/v1/campaigns") =>
        {
            &["admin", "marketer"]
        }
        _ => return true,
    };
    roles.contains(&role)
}

#[test]
fn every_route_in_the_openapi_document_answers_each_role_as_the_issue_says() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let roles = [
        "admin",
        "dpo",
        "marketer",
        "support",
        "analyst",
        "ingest",
        "monitoring",
    ];
    let keys: BTreeMap<&str, String> = roles.iter().map(|r| (*r, key(&data, &[r], &[]))).collect();
    let s = start(&data, &a, &w);
    let mut r = agent()
        .get(format!("{}/api/openapi.json", s.base))
        .call()
        .unwrap();
    let doc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let public =
            !path.starts_with("/api/v1/") && !path.starts_with("/v1/") && path != "/metrics";
        // Logging in needs no key; signing out ends the key it is called
        // with (its own test is in network.rs).
        if public || path.starts_with("/api/v1/sessions") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let url = path.replace("{id}", "1").replace("{n}", "1");
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
    assert_eq!(h.get("referrer-policy").unwrap(), "same-origin");
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

/// Every number a response gives under a name that means a person.
fn profile_ids(v: &Value, out: &mut Vec<i64>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                // `profiles` is a list of ids in the access log, a count in
                // the aggregates.
                match (k.as_str(), x) {
                    ("profile_id", Value::Number(n)) => out.extend(n.as_i64()),
                    ("profiles", Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_i64)),
                    _ => {}
                }
                profile_ids(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| profile_ids(x, out)),
        _ => {}
    }
}

#[test]
fn every_route_walked_with_a_purpose_bound_key_of_each_role_returns_nothing_outside_its_grant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let roles = [
        "admin",
        "dpo",
        "marketer",
        "support",
        "analyst",
        "monitoring",
    ];
    let keys: BTreeMap<&str, String> = roles
        .iter()
        .map(|r| (*r, key(&data, &[r], &["email_marketing"])))
        .collect();
    let s = start(&data, &a, &w);
    // Two people: one who allows email marketing, one who refused it. Each
    // value is a marker that must come back only where the grant allows.
    let body = json!({"batch": [
        {"type": "identify", "userId": "uid-yes-7f3", "traits": {"email": "yes@example.fi", "firstName": "Ulla", "tier": "tier-gold-marker"}},
        {"type": "track", "userId": "uid-yes-7f3", "event": "Bought", "properties": {"sku": "sku-avocado-marker"}, "context": {"ip": "198.51.100.5"}},
        {"type": "identify", "userId": "uid-no-2b9", "traits": {"email": "no@example.fi", "firstName": "Noora", "tier": "tier-silver-marker"}},
        {"type": "track", "userId": "uid-no-2b9", "event": "Bought", "properties": {"sku": "sku-kale-marker"}},
    ]});
    let r = agent()
        .post(format!("{}/v1/batch", s.base))
        .header("Authorization", &basic(&s.write))
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for (who, purpose, decision, ip) in [
        (
            "yes@example.fi",
            "email_marketing",
            "granted",
            "198.51.100.77",
        ),
        ("yes@example.fi", "sms_marketing", "granted", "203.0.113.99"),
        ("no@example.fi", "email_marketing", "denied", "192.0.2.201"),
    ] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/consents",
            Some(
                &json!({"subject": {"type": "email", "value": who}, "purpose": purpose,
                "decision": decision, "method": "web_form", "source": "walk form",
                "evidence": {"ip": ip, "user_agent": "EvidenceAgent/9"}}),
            ),
        );
        assert_eq!(st, 200, "{v}");
    }
    let id_of = |email: &str| {
        admin(
            &s,
            "GET",
            &format!("/api/v1/profiles/lookup?type=email&value={email}"),
            None,
        )
        .1["id"]
            .as_i64()
            .unwrap()
    };
    let (yes, no) = (id_of("yes@example.fi"), id_of("no@example.fi"));
    let (st, proc_) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(
            &json!({"name": "Mailer Oy", "role": "email delivery", "country": "FI",
            "dpa_reference": "DPA-1", "dpa_signed_on": "2024-05-02",
            "purposes": ["email_marketing"],
            "data_categories": ["contact", "identifiers", "traits", "purchase_history"]}),
        ),
    );
    assert_eq!(st, 201, "{proc_}");
    let processor = proc_["id"].as_i64().unwrap();
    let mut requests = BTreeMap::new();
    for (target, email) in [(yes, "yes@example.fi"), (no, "no@example.fi")] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/requests",
            Some(&json!({"type": "access", "subject": {"type": "email", "value": email}})),
        );
        assert_eq!(st, 201, "{v}");
        requests.insert(target, v["id"].as_i64().unwrap());
    }
    let (_, spare) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["dpo"], "name": "spare"})),
    );
    let spare = spare["id"].as_i64().unwrap();

    let mut r = agent()
        .get(format!("{}/api/openapi.json", s.base))
        .call()
        .unwrap();
    let doc: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    // Never, for any purpose-bound key: the refusing person's values, the
    // kinds email marketing does not use (identifiers, other traits,
    // consent evidence), and another purpose's ledger entries.
    let never = [
        "no@example.fi",
        "Noora",
        "uid-no-2b9",
        "tier-silver-marker",
        "sku-kale-marker",
        "192.0.2.201",
        "uid-yes-7f3",
        "tier-gold-marker",
        "198.51.100.77",
        "198.51.100.5",
        "EvidenceAgent/9",
        "203.0.113.99",
    ];
    let mut checked = 0;
    let mut seen_contact = BTreeMap::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let staff = path.starts_with("/api/v1/") && path != "/api/v1/sessions";
        if !staff && path != "/metrics" {
            continue;
        }
        for (method, op) in ops.as_object().unwrap() {
            for (target, email) in [(yes, "yes@example.fi"), (no, "no@example.fi")] {
                let id = if path.starts_with("/api/v1/requests/") {
                    requests[&target].to_string()
                } else if path.starts_with("/api/v1/processors/") {
                    processor.to_string()
                } else if path.starts_with("/api/v1/purposes/") {
                    "email_marketing".into()
                } else if path.starts_with("/api/v1/keys/") {
                    spare.to_string()
                } else {
                    target.to_string()
                };
                let mut query = Vec::new();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] != "query" {
                        continue;
                    }
                    let v = match p["name"].as_str().unwrap() {
                        "profile" => target.to_string(),
                        "type" => "email".into(),
                        "value" => email.into(),
                        "purpose" => "email_marketing".into(),
                        "channel" => "email".into(),
                        "limit" => "10".into(),
                        _ => continue,
                    };
                    query.push(format!("{}={v}", p["name"].as_str().unwrap()));
                }
                let url = format!(
                    "{}{}{}{}",
                    s.base,
                    path.replace("{id}", &id),
                    if query.is_empty() { "" } else { "?" },
                    query.join("&")
                );
                let subject = json!({"profile": target});
                let body = match path.as_str() {
                    "/api/v1/decisions" => {
                        json!({"purpose": "email_marketing", "subjects": [subject, {"type": "email", "value": email}]})
                    }
                    "/api/v1/consents" => json!({"subject": {"type": "email", "value": email},
                        "purpose": "email_marketing", "decision": if target == yes { "granted" } else { "denied" },
                        "source": "walk"}),
                    "/api/v1/consents/signals" => {
                        json!({"subject": subject, "tc_string": "not a string", "source": "walk"})
                    }
                    "/api/v1/subscriptions" => {
                        json!({"email": email, "purposes": ["email_marketing"], "source": "walk"})
                    }
                    "/api/v1/messages/email" => {
                        json!({"recipient": {"type": "email", "value": email},
                        "purpose": "email_marketing", "subject": "Hi", "text": "Hello"})
                    }
                    "/api/v1/processors/{id}/exports" => {
                        json!({"purpose": "email_marketing", "subjects": [subject, {"type": "email", "value": email}]})
                    }
                    "/api/v1/requests" => {
                        json!({"type": "access", "subject": {"type": "email", "value": email}})
                    }
                    p if p.starts_with("/api/v1/requests/") => json!({"reason": "walk"}),
                    "/api/v1/keys" => json!({"roles": ["admin"]}),
                    _ => json!({}),
                };
                for role in roles {
                    let auth = format!("Bearer {}", keys[role]);
                    let resp = match method.as_str() {
                        "get" => agent().get(&url).header("Authorization", &auth).call(),
                        "put" => agent()
                            .put(&url)
                            .header("Authorization", &auth)
                            .send(body.to_string().as_bytes()),
                        _ => agent()
                            .post(&url)
                            .header("Authorization", &auth)
                            .send(body.to_string().as_bytes()),
                    };
                    let mut resp = resp.unwrap();
                    let st = resp.status().as_u16();
                    let bytes = resp.body_mut().read_to_vec().unwrap();
                    let text = String::from_utf8_lossy(&bytes);
                    let what = format!("{role} {method} {url}: {st} {text}");
                    for m in never {
                        assert!(!text.contains(m), "{m} in {what}");
                    }
                    let grant = tarmo_core::access::builtin_role(role).unwrap().data;
                    if !grant.contains(&tarmo_core::access::DataKind::Contact) {
                        assert!(
                            !text.contains("yes@example.fi") && !text.contains("Ulla"),
                            "contact data in {what}"
                        );
                    } else if text.contains("yes@example.fi") {
                        *seen_contact.entry(role).or_insert(0) += 1;
                    }
                    if !grant.contains(&tarmo_core::access::DataKind::Behaviour) {
                        assert!(!text.contains("sku-avocado-marker"), "events in {what}");
                    }
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let mut ids = Vec::new();
                    profile_ids(&v, &mut ids);
                    if path.starts_with("/api/v1/profiles/") && st == 200 {
                        ids.extend(v["id"].as_i64());
                    }
                    assert!(!ids.contains(&no), "the refusing person's id in {what}");
                    // Routes that reach people regardless of a purpose, or
                    // step out of the binding, are closed to bound keys.
                    // (A preference link opens every purpose's page.)
                    if path.starts_with("/api/v1/requests")
                        || path.starts_with("/api/v1/keys")
                        || path == "/api/v1/audit"
                        || path == "/api/v1/profiles/{id}/preference-link"
                        || (method == "put" && path.starts_with("/api/v1/purposes/"))
                    {
                        assert!(st == 403, "{what}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "{checked}");
    // The walk saw what the grant does allow: the consenting person's
    // address for the roles that see contact data.
    for role in ["admin", "dpo", "marketer", "support"] {
        assert!(seen_contact.get(role).is_some_and(|n| *n > 0), "{role}");
    }
    // A purpose-bound support key reads its purpose's ledger entry, without
    // the evidence its purpose does not use.
    let (st, v) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{yes}/consents"),
        &keys["support"],
        None,
    );
    assert_eq!(st, 200, "{v}");
    let purposes: Vec<&str> = v["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["purpose"].as_str().unwrap())
        .collect();
    assert!(
        !purposes.is_empty() && purposes.iter().all(|p| *p == "email_marketing"),
        "{v}"
    );
    assert!(v["ledger"][0]["evidence"].is_null(), "{v}");
    assert!(
        v["states"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["purpose"] == "email_marketing")
    );
}

#[test]
fn purpose_bound_keys_subscribe_and_record_cmp_strings_only_for_their_purposes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let marketer = key(&data, &["marketer"], &["email_marketing"]);
    let support = key(&data, &["support"], &["email_marketing"]);
    let s = start(&data, &a, &w);
    let (st, v) = call(
        &s.base,
        "post",
        "/api/v1/subscriptions",
        &marketer,
        Some(&json!({"email": "ann@example.fi", "purposes": ["sms_marketing"], "source": "form"})),
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("purpose_not_permitted")),
        "{v}"
    );
    let (st, v) = call(
        &s.base,
        "post",
        "/api/v1/subscriptions",
        &marketer,
        Some(
            &json!({"email": "ann@example.fi", "purposes": ["email_marketing"], "source": "form"}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    assert!(
        v["profile_id"].is_null(),
        "pending: not yet a person it may see: {v}"
    );
    // A TC string speaks for personalisation, ads and analytics: not the
    // email marketing key's to record.
    let (st, v) = call(
        &s.base,
        "post",
        "/api/v1/consents/signals",
        &support,
        Some(
            &json!({"subject": {"type": "email", "value": "ann@example.fi"},
            "tc_string": crate::signals::accept_all(1), "source": "CMP"}),
        ),
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("purpose_not_permitted")),
        "{v}"
    );
    let (_, c) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=email&value=ann@example.fi",
        None,
    );
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{}/consents", c["id"]),
        None,
    );
    assert!(
        c["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["method"] != "tcf"),
        "nothing recorded: {c}"
    );
}

#[test]
fn an_export_by_a_marketer_carries_no_identifiers_its_role_excludes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let marketer = key(&data, &["marketer"], &[]);
    let s = start(&data, &a, &w);
    seed_two_people(&s);
    let (st, p) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(&json!({"name": "Crm Oy", "role": "crm", "country": "FI",
            "dpa_reference": "DPA-2", "dpa_signed_on": "2024-05-02",
            "purposes": ["email_marketing"], "data_categories": ["contact", "identifiers", "purchase_history"]})),
    );
    assert_eq!(st, 201, "{p}");
    // email_marketing uses contact and purchase history: add identifiers.
    let (_, purpose) = admin(&s, "GET", "/api/v1/purposes/email_marketing", None);
    let mut def = purpose["definition"].clone();
    def["data_categories"] = json!(["contact", "identifiers", "purchase_history"]);
    let (st, v) = admin(&s, "PUT", "/api/v1/purposes/email_marketing", Some(&def));
    assert_eq!(st, 200, "{v}");
    let body = json!({"purpose": "email_marketing", "subjects": [{"type": "email", "value": "yes@example.fi"}]});
    let path = format!("/api/v1/processors/{}/exports", p["id"]);
    let (st, v) = admin(&s, "POST", &path, Some(&body));
    assert_eq!(st, 200, "{v}");
    let kinds = |v: &Value| -> Vec<String> {
        v["exported"][0]["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        kinds(&v).contains(&"user_id".to_owned()),
        "the admin sees every identifier: {v}"
    );
    let (st, v) = call(&s.base, "post", &path, &marketer, Some(&body));
    assert_eq!(st, 200, "{v}");
    assert_eq!(kinds(&v), ["email"], "{v}");
    assert!(!v.to_string().contains("consented"), "no user id: {v}");
}

#[test]
fn lookup_by_address_needs_a_purpose_that_uses_contact_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    // Personalisation uses behaviour and purchases, not contact data.
    let marketer = key(&data, &["marketer"], &["personalisation"]);
    let s = start(&data, &a, &w);
    seed_two_people(&s);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": "yes@example.fi"}, "purpose": "personalisation",
            "decision": "granted", "method": "web_form", "source": "form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let id = v["recorded"][0]["profile_id"].as_i64().unwrap();
    let (st, _) = call(
        &s.base,
        "get",
        &format!("/api/v1/profiles/{id}"),
        &marketer,
        None,
    );
    assert_eq!(st, 200, "the person is visible to the personalisation key");
    let (st, v) = call(
        &s.base,
        "get",
        "/api/v1/profiles/lookup?type=email&value=yes@example.fi",
        &marketer,
        None,
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("profile_not_found")),
        "{v}"
    );
}

#[test]
fn every_file_tarmo_writes_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    seed_two_people(&s);
    let files = crate::common::walk(&data);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["tarmo.db", "tarmo.db-wal", "tarmo.db-shm", "master.key"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", f.display());
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_key_revoked_by_its_secret_on_the_command_line_stops_at_once_in_a_running_server() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let dpo = key(&data, &["dpo"], &[]);
    let other = key(&data, &["dpo"], &[]);
    let s = start(&data, &a, &w);
    // Both keys are in the server's cache now.
    assert_eq!(call(&s.base, "get", "/api/v1/purposes", &dpo, None).0, 200);
    assert_eq!(
        call(&s.base, "get", "/api/v1/purposes", &other, None).0,
        200
    );
    let revoke = |arg: &str, stdin: &str| {
        let mut child = Command::new(BIN)
            .args(["keys", "revoke", arg, "--data-dir"])
            .arg(&data)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // The secret on standard input, kept out of the shell's history.
    let out = revoke("-", &format!("{dpo}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    assert_eq!(
        call(&s.base, "get", "/api/v1/purposes", &dpo, None).0,
        401,
        "no second of grace"
    );
    assert_eq!(
        call(&s.base, "get", "/api/v1/purposes", &other, None).0,
        200
    );
    // The secret as the argument works too; an unknown one is an error.
    let out = revoke(&other, "");
    assert!(out.status.success());
    assert_eq!(
        call(&s.base, "get", "/api/v1/purposes", &other, None).0,
        401
    );
    let out = revoke("tka_0000000000000000000000000000000000000000", "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_not_found"));
}

#[test]
fn an_expiry_beyond_ten_years_is_refused_with_a_code_and_makes_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--role",
            "dpo",
            "--expires-in-hours",
            "18446744073709551615",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid_expiry") && !err.contains("panicked"),
        "{err}"
    );
    let s = start(&data, &a, &w);
    let before = admin(&s, "GET", "/api/v1/keys", None).1;
    for hours in [
        json!(18446744073709551615u64),
        json!(1u64 << 62),
        json!(87_841),
    ] {
        let (st, v) = admin(
            &s,
            "POST",
            "/api/v1/keys",
            Some(&json!({"roles": ["dpo"], "expires_in_hours": hours})),
        );
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("invalid_expiry")),
            "{v}"
        );
    }
    assert_eq!(admin(&s, "GET", "/api/v1/keys", None).1, before);
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["dpo"], "expires_in_hours": 87_840})),
    );
    assert_eq!(st, 201);
}

#[test]
fn metrics_need_a_key_with_their_permission_and_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let monitoring = key(&data, &["monitoring"], &[]);
    let dpo = key(&data, &["dpo"], &[]);
    let s = start(&data, &a, &w);
    let scrape = |k: &str| {
        let mut r = agent().get(format!("{}/metrics", s.base));
        if !k.is_empty() {
            r = r.header("Authorization", &format!("Bearer {k}"));
        }
        let mut r = r.call().unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    assert_eq!(scrape("").0, 401);
    assert_eq!(scrape(&dpo).0, 403);
    let (st, text) = scrape(&monitoring);
    assert_eq!(st, 200);
    assert!(text.contains("tarmo_events_ingested_total"), "{text}");
    // The monitoring key reads nothing else.
    assert_eq!(
        call(&s.base, "get", "/api/v1/purposes", &monitoring, None).0,
        403
    );
    let limited = (0..30).map(|_| scrape(&monitoring).0).any(|st| st == 429);
    assert!(limited, "a burst of scrapes is limited");
}

#[test]
fn a_form_post_is_accepted_only_from_our_exact_origin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    let post = |origin: &str| {
        let r = agent()
            .post(format!("{}/c/some-token", s.base))
            .header("Origin", origin)
            .send(&b""[..])
            .unwrap();
        r.status().as_u16()
    };
    // `null` (a sandboxed frame anywhere), a prefix of ours, ours with more.
    let prefix = &s.base[..s.base.len() - 1];
    for origin in [
        "null",
        prefix,
        &format!("{}.evil.example", s.base),
        "https://evil.example",
    ] {
        assert_eq!(post(origin), 403, "{origin}");
    }
    // Our own origin passes the check (and the made-up token is not found).
    assert_eq!(post(&s.base), 404);
}
