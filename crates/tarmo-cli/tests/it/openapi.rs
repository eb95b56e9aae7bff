use std::process::Command;

use serde_json::Value;

use crate::common::*;

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
        "/api/v1/profiles/{id}/consents",
        "/api/v1/purposes",
        "/api/v1/purposes/{id}",
        "/api/v1/consents",
        "/api/v1/consents/signals",
        "/api/v1/decisions",
        "/api/v1/subscriptions",
        "/api/v1/messages/email",
        "/c/{token}",
        "/u/{token}",
        "/p/{token}",
        "/.well-known/gpc.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/api/v1/profiles/{id}/preference-link",
        "/api/v1/processors",
        "/api/v1/processors/{id}",
        "/api/v1/processors/{id}/exports",
        "/api/v1/records-of-processing",
        "/api/v1/requests",
        "/api/v1/requests/{id}",
        "/api/v1/requests/{id}/verify",
        "/api/v1/requests/{id}/refuse",
        "/api/v1/requests/{id}/extend",
        "/api/v1/requests/{id}/lift",
        "/api/v1/requests/{id}/export",
        "/p/{token}/request",
        "/r/{token}",
        "/r/download/{token}",
        "/api/v1/sessions",
        "/api/v1/sessions/current",
        "/api/v1/audit",
        "/api/v1/stats",
        "/api/v1/keys",
        "/api/v1/keys/{id}/revoke",
        "/api/v1/segments",
        "/api/v1/segments/preview",
        "/api/v1/segments/{id}",
        "/api/v1/segments/{id}/members",
        "/api/v1/profiles/{id}/segments",
        "/api/v1/lifecycle",
        "/api/v1/audiences",
        "/api/v1/audiences/{id}",
        "/api/v1/audiences/{id}/sync",
        "/api/v1/audiences/{id}/syncs/{n}/file",
        "/api/v1/imports",
        "/api/v1/imports/{id}",
        "/api/v1/templates",
        "/api/v1/templates/{id}",
        "/api/v1/automations",
        "/api/v1/automations/{id}",
        "/api/v1/automations/{id}/dry-run",
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}",
        "/api/v1/campaigns/{id}/cancel",
        "/v1/sms/inbound",
    ];
    let mut documented: Vec<_> = paths.keys().map(String::as_str).collect();
    documented.sort();
    let mut expected = stable.to_vec();
    expected.sort();
    assert_eq!(documented, expected);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                s.base,
                path.replace("{id}", "1")
                    .replace("{n}", "1")
                    .replace("{token}", "not-a-token")
            );
            let mut resp = match method.as_str() {
                "get" => agent().get(&url).call().unwrap(),
                "post" => agent().post(&url).send(&b"{}"[..]).unwrap(),
                "put" => agent().put(&url).send(&b"{}"[..]).unwrap(),
                "delete" => agent().delete(&url).call().unwrap(),
                m => panic!("unexpected method {m}"),
            };
            let st = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            // A 404 may be the route's own answer (an unknown link), never
            // the fallback's.
            assert!(
                !body.contains("route_not_found") && st != 405,
                "{method} {path} answered {st}: {body}"
            );
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

/// Arrays of plain strings (`required`, `tags`, enum values) sorted, so the
/// comparison ignores the order utoipa happens to emit; everything else as is.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let mut a = a.clone();
            a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            Value::Array(a)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The API document is the committed `docs/openapi.json`, so a change to
/// any route's shape is seen in review. To accept a deliberate change:
/// `TARMO_WRITE_OPENAPI=1 cargo nextest run -p tarmo-cli -E 'test(committed)'`.
#[test]
fn the_api_document_is_the_committed_one() {
    let (_d, s) = server();
    let mut r = agent()
        .get(format!("{}/api/openapi.json", s.base))
        .call()
        .unwrap();
    let served: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    if std::env::var_os("TARMO_WRITE_OPENAPI").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&served).unwrap() + "\n").unwrap();
        return;
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json")).unwrap();
    let (a, b) = (canonical(&served), canonical(&committed));
    if a != b {
        // Name the first place they differ, not two 300 KB documents.
        fn first_diff(a: &Value, b: &Value, at: String) -> String {
            match (a, b) {
                (Value::Object(x), Value::Object(y)) => {
                    for k in x.keys().chain(y.keys()) {
                        match (x.get(k), y.get(k)) {
                            (Some(p), Some(q)) if p != q => {
                                return first_diff(p, q, format!("{at}/{k}"));
                            }
                            (Some(_), None) => return format!("{at}/{k}: served only"),
                            (None, Some(_)) => return format!("{at}/{k}: committed only"),
                            _ => {}
                        }
                    }
                    at
                }
                _ => format!("{at}: served {a} committed {b}"),
            }
        }
        panic!(
            "the served API document differs from docs/openapi.json at {}; \
             if the change is meant, rerun with TARMO_WRITE_OPENAPI=1",
            first_diff(&a, &b, String::new())
        );
    }
}
