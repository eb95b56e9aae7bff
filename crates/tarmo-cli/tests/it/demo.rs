//! `tarmo demo`: a new data directory with a believable shop, served, with
//! staff accounts that sign in.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_json(base: &str, path: &str, key: &str) -> Value {
    let mut r = agent()
        .get(format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn the_demo_shop_is_made_served_and_signed_into() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shop");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--customers",
            "150",
            "--listen",
            &listen,
            "--data-dir",
        ])
        .arg(&data)
        .env("TARMO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let demo = Demo(child);
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let (mut admin_key, mut password, mut ready) = (None, None, false);
    let mut seen = Vec::new();
    while !ready {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the demo did not get ready: {seen:#?}"));
        assert!(!line.starts_with("error"), "{line}\n{seen:#?}");
        if line.contains("admin key") {
            admin_key = line.split_whitespace().last().map(str::to_owned);
        }
        if let Some(rest) = line.split("(password ").nth(1) {
            password = rest.split(')').next().map(str::to_owned);
        }
        ready |= line.starts_with("The demo shop is ready");
        seen.push(line);
    }
    let key = admin_key.expect("the admin key is printed");
    let password = password.expect("the staff password is printed");
    let base = format!("http://{listen}");

    // A shop with customers, orders, lifecycle stages and segments.
    let life = get_json(&base, "/api/v1/lifecycle", &key);
    assert!(
        life["quintiles"]["customers"].as_u64().unwrap() > 50,
        "{life}"
    );
    let segs = get_json(&base, "/api/v1/segments", &key);
    let segs = segs["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 5);
    for id in ["vip", "lapsed_buyers", "viewed_not_bought"] {
        let s = segs.iter().find(|s| s["id"] == id).unwrap();
        assert!(s["count"].as_u64().unwrap() > 0, "{s}");
    }
    // Rights: people erased, requests open.
    let reqs = get_json(&base, "/api/v1/requests", &key);
    let reqs = reqs["requests"].as_array().unwrap();
    assert!(
        reqs.iter()
            .any(|r| r["status"] == "completed" && r["type"] == "erasure")
    );
    assert!(reqs.iter().any(|r| r["status"] == "awaiting_verification"));
    assert_eq!(
        get_json(&base, "/api/v1/processors", &key)["processors"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The till's register: loyalty customers who never shopped online came
    // in by import, with their receipts as orders and the import as provenance.
    let till = get_json(
        &base,
        "/api/v1/profiles/lookup?type=loyalty_card&value=LC-20001",
        &key,
    );
    assert!(till["traits"]["preferred_store"].is_string(), "{till}");
    let imports = (1..=5)
        .map(|id| get_json(&base, &format!("/api/v1/imports/{id}"), &key))
        .collect::<Vec<_>>();
    assert!(imports.iter().all(|i| i["status"] == "done"), "{imports:?}");
    // The marketer's automations and a campaign waiting for next week.
    let autos = get_json(&base, "/api/v1/automations", &key);
    let autos = autos["automations"].as_array().unwrap();
    assert_eq!(autos.len(), 3, "{autos:?}");
    assert!(autos.iter().all(|a| a["status"] == "active"), "{autos:?}");
    let campaign = get_json(&base, "/api/v1/campaigns/vip_spring_preview", &key);
    assert_eq!(campaign["status"], "scheduled", "{campaign}");
    // A customer, whole: identifiers, traits, consent.
    let p = get_json(
        &base,
        "/api/v1/profiles/lookup?type=user_id&value=cust-000001",
        &key,
    );
    assert!(p["traits"]["first_name"].is_string(), "{p}");
    assert!(p["event_count"].as_u64().unwrap() >= 3, "{p}");

    // The staff accounts sign in with the printed password, each with its role.
    for (name, role) in [("demo-support", "support"), ("demo-dpo", "dpo")] {
        let mut r = agent()
            .post(format!("{base}/api/v1/sessions"))
            .send(
                json!({"name": name, "password": password})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["roles"], json!([role]));
    }
    drop(demo);

    // A demo never overwrites a store.
    let out = Command::new(BIN)
        .args([
            "demo",
            "--customers",
            "150",
            "--listen",
            &listen,
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a store"));
}
