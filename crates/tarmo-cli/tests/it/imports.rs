//! The offline register end to end: customers and orders imported from the
//! till's and the CRM's files with `tarmo import` and over HTTP, their
//! errors by line, provenance in the access bundle, idempotence, orders
//! replaced rather than duplicated, erased people kept out, and the
//! stock-aware segment.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tarmo_store::imports::CHUNK;

use crate::common::*;

/// Run `tarmo import KIND FILE ...`: exit code, stdout, stderr.
fn import(data: &Path, kind: &str, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["import", kind])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .args(["--source", "till export 2026-11"])
        .args(["--documentation", "loyalty forms, archive box 12"])
        .args(extra)
        .env("TARMO_DEFAULT_REGION", "FI")
        .env("TARMO_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lookup(s: &Server, kind: &str, value: &str) -> Option<Value> {
    let (st, v) = admin(
        s,
        "GET",
        &format!("/api/v1/profiles/lookup?type={kind}&value={value}"),
        None,
    );
    (st == 200).then_some(v)
}

fn events(s: &Server, id: i64) -> Vec<Value> {
    let (st, v) = admin(s, "GET", &format!("/api/v1/profiles/{id}/events"), None);
    assert_eq!(st, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

fn orders(evs: &[Value]) -> Vec<Value> {
    evs.iter()
        .filter(|e| e["message"]["event"] == "Order Completed")
        .cloned()
        .collect()
}

const CUSTOMERS: &str = "\
email,phone,loyalty_card,first_name,city,birthday,preferred_store
anna@example.fi,040 123 4567,LC-1001,Anna,Tampere,1990-04-02,S1
bob@example.fi,,LC-1002,Bob,Helsinki,,
";

const ORDERS: &str = "\
order_id,ordered_at,loyalty_card,store_id,currency,product_id,quantity,price
A1,2026-11-20T10:00:00Z,LC-1001,S1,EUR,P-TEA,2,4.50
A1,2026-11-20T10:00:00Z,LC-1001,S1,EUR,P-MUG,1,12.00
A2,2026-11-21,LC-1002,S2,EUR,P-TEA,1,4.50
A3,2026-11-21,,S2,EUR,P-MUG,1,12.00
";

#[test]
fn customers_and_orders_from_files_with_provenance_idempotence_and_suppression() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    // A file with errors: every bad row is named by its line, nothing goes in.
    let bad = file(
        "customers-bad.csv",
        &format!("{CUSTOMERS}carl-at-example,,LC-1003,Carl,Turku,1991-13-40,\n,,,Dora,Oulu,,\n"),
    );
    let (code, _, err) = import(&data, "customers", &bad, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("customers-bad.csv:4: `email`"), "{err}");
    assert!(err.contains("customers-bad.csv:4: `birthday`"), "{err}");
    assert!(err.contains("customers-bad.csv:5: no identifier"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    // A dry run counts, and writes nothing.
    let customers = file("customers.csv", CUSTOMERS);
    let (code, out, err) = import(&data, "customers", &customers, &["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dry run") && out.contains("2 new"), "{out}");
    let s = start(&data, &a, &w);
    assert!(
        lookup(&s, "email", "anna@example.fi").is_none(),
        "neither the bad file nor the dry run wrote anyone"
    );
    drop(s);

    // The file, then the same file again: the second changes nothing.
    let (code, out, err) = import(&data, "customers", &customers, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 new"), "{out}");
    let (code, out, _) = import(&data, "customers", &customers, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("0 new, 0 updated, 2 unchanged"), "{out}");
    // With --skip-invalid the good rows of the bad file are the same people.
    let (code, out, err) = import(&data, "customers", &bad, &["--skip-invalid"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 unchanged") && out.contains("2 invalid rows"),
        "{out}"
    );

    // Orders, a line per row; the anonymous sale is skipped and counted.
    let orders_csv = file("orders.csv", ORDERS);
    let (code, out, err) = import(&data, "orders", &orders_csv, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 orders: 2 new"), "{out}");
    assert!(out.contains("1 skipped (no customer)"), "{out}");
    // The till corrects A1 (the mug was returned): updated, not duplicated.
    let corrected = file(
        "orders-2.csv",
        &ORDERS.replace("A1,2026-11-20T10:00:00Z,LC-1001,S1,EUR,P-MUG,1,12.00\n", ""),
    );
    let (code, out, err) = import(&data, "orders", &corrected, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 new, 1 updated, 1 unchanged"), "{out}");

    let s = start(&data, &a, &w);
    let anna = lookup(&s, "email", "anna@example.fi").expect("Anna was imported");
    let id = anna["id"].as_i64().unwrap();
    assert_eq!(anna["traits"]["city"], "Tampere");
    assert_eq!(anna["traits"]["birthday"], "1990-04-02");
    let ids = anna["identifiers"].as_array().unwrap();
    assert_eq!(ids.len(), 3, "{anna}");
    assert!(
        ids.iter().all(|i| i["verified"] == true),
        "a till or CRM file is a trusted source: {anna}"
    );
    assert!(
        ids.iter()
            .any(|i| i["type"] == "phone" && i["value"] == "+358401234567"),
        "{anna}"
    );
    let evs = events(&s, id);
    let o = orders(&evs);
    assert_eq!(o.len(), 1, "one event for order A1, replaced: {o:#?}");
    let props = &o[0]["message"]["properties"];
    assert_eq!(props["order_id"], "A1");
    assert_eq!(props["revenue"], 9, "2 × 4.50 after the correction");
    assert_eq!(props["products"].as_array().unwrap().len(), 1);
    assert_eq!(props["store_id"], "S1");
    assert_eq!(o[0]["timestamp"], "2026-11-20T10:00:00Z");
    assert_eq!(
        o[0]["message"]["context"]["import"]["source"],
        "till export 2026-11"
    );
    assert_eq!(anna["event_count"], evs.len());
    // Lifecycle and RFM see the till purchase.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, p) = admin(&s, "GET", &format!("/api/v1/profiles/{id}"), None);
        if p["lifecycle"]["orders"] == 1 {
            assert_eq!(p["lifecycle"]["revenue"], 9.0, "{p}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lifecycle never saw the order: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The access bundle says where the data came from.
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "access", "subject": {"type": "email", "value": "anna@example.fi"}})),
    );
    assert_eq!(st, 201, "{r}");
    let (st, r) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "card shown at the till"})),
    );
    assert_eq!(st, 200, "{r}");
    let (st, bundle) = admin(
        &s,
        "GET",
        &format!("/api/v1/requests/{}/export?format=json", r["id"]),
        None,
    );
    assert_eq!(st, 200, "{bundle}");
    let imports = bundle["imports"].as_array().unwrap();
    let kinds: Vec<&str> = imports
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"customers") && kinds.contains(&"orders"),
        "{imports:#?}"
    );
    for i in imports {
        assert_eq!(i["source"], "till export 2026-11");
        assert_eq!(i["documentation"], "loyalty forms, archive box 12");
    }
    assert!(
        bundle["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["message"]["context"]["import"]["line"].is_u64()),
        "every event names its file and line"
    );

    // Bob is erased; a re-import of the same files does not bring him back.
    let (_, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "email", "value": "bob@example.fi"}})),
    );
    let (st, r) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "asked at the counter"})),
    );
    assert_eq!((st, r["status"].as_str()), (200, Some("completed")), "{r}");
    drop(s);
    let (code, out, err) = import(&data, "customers", &customers, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 unchanged, 1 skipped (erased people)"),
        "{out}"
    );
    let (code, out, _) = import(&data, "orders", &orders_csv, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("1 skipped (erased people)"), "{out}");
    let s = start(&data, &a, &w);
    assert!(lookup(&s, "loyalty_card", "LC-1002").is_none());
    assert!(lookup(&s, "email", "bob@example.fi").is_none());
    let anna2 = lookup(&s, "email", "anna@example.fi").unwrap();
    assert_eq!(
        orders(&events(&s, id)).len(),
        1,
        "re-importing A1's first version replaced it again, still one: {anna2}"
    );
}

/// Poll an import until it is no longer queued or running.
fn wait_import(s: &Server, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = admin(s, "GET", &format!("/api/v1/imports/{id}"), None);
        assert_eq!(st, 200, "{v}");
        if v["status"] != "queued" && v["status"] != "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "import {id} never finished: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_imports_run_in_the_background_and_report_errors_by_line() {
    let (_dir, s) = server();
    let jsonl = concat!(
        r#"{"crm_id": "C-1", "email": "eva@example.fi", "points": "120", "city": "Espoo"}"#,
        "\n",
        r#"{"crm_id": "C-2", "email": "not-an-address", "points": "many"}"#,
        "\n",
        r#"{"crm_id": "C-3", "email": "frank@example.fi", "points": 7}"#,
        "\n",
    );
    let mapping = json!({
        "key": "loyalty_card",
        "identifiers": {"loyalty_card": "crm_id", "email": "email"},
        "traits": {"points": {"column": "points", "type": "number"}, "city": "city"}
    });
    let body = |skip: bool| {
        json!({
            "kind": "customers", "format": "jsonl", "file_name": "crm.jsonl",
            "source": "CRM nightly sync", "documentation": "CRM consent records",
            "mapping": mapping, "content": jsonl, "skip_invalid": skip
        })
    };
    let (st, q) = admin(&s, "POST", "/api/v1/imports", Some(&body(false)));
    assert_eq!(st, 202, "{q}");
    let v = wait_import(&s, q["id"].as_i64().unwrap());
    assert_eq!(v["status"], "invalid", "{v}");
    let errors = v["report"]["errors"].as_array().unwrap();
    assert!(errors.iter().all(|e| e["line"] == 2), "{errors:#?}");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(v["source"], "CRM nightly sync");
    assert!(
        lookup(&s, "email", "eva@example.fi").is_none(),
        "all or nothing"
    );

    let (st, q) = admin(&s, "POST", "/api/v1/imports", Some(&body(true)));
    assert_eq!(st, 202, "{q}");
    let v = wait_import(&s, q["id"].as_i64().unwrap());
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["report"]["created"], 2, "{v}");
    assert_eq!(v["report"]["invalid"], 1, "{v}");
    let eva = lookup(&s, "loyalty_card", "C-1").expect("imported");
    assert_eq!(eva["traits"]["points"], 120);
    assert_eq!(eva["traits"]["city"], "Espoo");

    // Bad requests are refused whole and record nothing.
    for (b, code) in [
        (
            json!({"kind": "pets", "source": "x", "content": ""}),
            "invalid_import_kind",
        ),
        (
            json!({"kind": "customers", "source": "", "documentation": "d", "content": "email\n"}),
            "invalid_import_source",
        ),
        (
            json!({"kind": "customers", "source": "s", "content": "email\n"}),
            "invalid_import_documentation",
        ),
        (
            json!({"kind": "orders", "source": "s", "documentation": "d", "content": "email,total\n"}),
            "invalid_mapping",
        ),
        (
            json!({"kind": "customers", "source": "s", "documentation": "d", "content": "x", "mapping": {"colour": 1}}),
            "invalid_mapping",
        ),
        (json!({"kind": "customers"}), "invalid_import"),
    ] {
        let (st, v) = admin(&s, "POST", "/api/v1/imports", Some(&b));
        assert_eq!(
            (st, v["code"].as_str().unwrap_or("")),
            (400, code),
            "{b}: {v}"
        );
    }
    let (st, v) = admin(&s, "GET", "/api/v1/imports/9999", None);
    assert_eq!((st, v["code"].as_str()), (404, Some("import_not_found")));

    // Imports are an admin's: a marketer key may not start one.
    let (_, k) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&json!({"roles": ["marketer"], "name": "m"})),
    );
    let mut m = agent()
        .post(format!("{}/api/v1/imports", s.base))
        .header(
            "Authorization",
            &format!("Bearer {}", k["key"].as_str().unwrap()),
        )
        .header("Content-Type", "application/json")
        .send(body(true).to_string().as_bytes())
        .unwrap();
    assert_eq!(m.status().as_u16(), 403);
    let v: Value = serde_json::from_str(&m.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["code"], "forbidden", "{v}");
}

/// POST a file itself as an import's body, the rest in the query.
fn post_file(s: &Server, query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{}/api/v1/imports?{query}", s.base))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    let st = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A nightly file larger than the 1 MB every other request is held to
/// goes as the body itself (CSV or JSON Lines, the rest in the query),
/// up to 32 MiB; over that it is refused whole, and nothing is recorded.
#[test]
fn http_imports_take_the_file_itself_past_the_wire_limit() {
    let (_dir, s) = server();
    // 600 customers with a note of 1,900 bytes each: 1.2 MB.
    let note = "n".repeat(1900);
    let mut csv = String::from("email,card,note\n");
    for i in 0..600 {
        csv.push_str(&format!("c{i}@example.fi,LC-{i},{note}\n"));
    }
    assert!(csv.len() > 1024 * 1024);
    let q = "kind=customers&source=CRM%20nightly%20sync&documentation=CRM%20consent%20records&file_name=crm.csv&mapping=%7B%22identifiers%22%3A%20%7B%22email%22%3A%20%22email%22%2C%20%22loyalty_card%22%3A%20%22card%22%7D%7D";
    let (st, v) = post_file(&s, q, "text/csv; charset=utf-8", csv.as_bytes());
    assert_eq!(st, 202, "{v}");
    let v = wait_import(&s, v["id"].as_i64().unwrap());
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["report"]["created"], 600, "{v}");
    assert_eq!(v["source"], "CRM nightly sync");
    let last = lookup(&s, "loyalty_card", "LC-599").expect("imported");
    assert_eq!(last["traits"]["note"], note.as_str());

    // JSON Lines, the mapping as TOML text in the query.
    let jsonl = "{\"crm_id\": \"C-9\", \"email\": \"gil@example.fi\"}\n";
    let toml =
        "key = \"loyalty_card\"\n[identifiers]\nloyalty_card = \"crm_id\"\nemail = \"email\"\n";
    let q = format!(
        "kind=customers&source=CRM&documentation=records&mapping={}",
        toml.bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (st, v) = post_file(&s, &q, "application/x-ndjson", jsonl.as_bytes());
    assert_eq!(st, 202, "{v}");
    let v = wait_import(&s, v["id"].as_i64().unwrap());
    assert_eq!(
        (v["status"].as_str(), v["report"]["created"].as_i64()),
        (Some("done"), Some(1)),
        "{v}"
    );
    assert!(lookup(&s, "loyalty_card", "C-9").is_some());

    // The file's kind and provenance are checked as in the JSON form.
    let (st, v) = post_file(&s, "source=CRM", "text/csv", b"email\nx@example.fi\n");
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("invalid_import_kind")),
        "{v}"
    );

    // Over 32 MiB: refused whole, nothing recorded.
    let big = vec![b'a'; 32 * 1024 * 1024 + 1];
    let (st, v) = post_file(
        &s,
        "kind=customers&source=CRM&documentation=d",
        "text/csv",
        &big,
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    let (_, v) = admin_get(&s, "/api/v1/imports/3");
    assert_eq!(v["code"], "import_not_found", "{v}");
}

fn admin_get(s: &Server, path: &str) -> (u16, Value) {
    admin(s, "GET", path, None)
}

/// Wait until `segment`'s members are `want` (profile ids, sorted).
fn wait_members(s: &Server, segment: &str, want: &[i64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = admin(
            s,
            "GET",
            &format!("/api/v1/segments/{segment}/members"),
            None,
        );
        assert_eq!(st, 200, "{v}");
        let mut got: Vec<i64> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["profile_id"].as_i64().unwrap())
            .collect();
        got.sort_unstable();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment}: members {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_viewed_but_not_bought_reminder_goes_only_where_the_product_is_in_stock() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let products = file(
        "products.csv",
        "product_id,name_fi,name_en,category,price\nP1,Vihreä tee,Green tea,tea,4.50\nP2,Muki,Mug,kitchen,12\n",
    );
    let stores = file(
        "stores.csv",
        "store_id,name,city,latitude,longitude\nS1,Keskusta,Tampere,61.4981,23.7610\nS3,Kamppi,Helsinki,60.1690,24.9320\n",
    );
    let stock = file(
        "stock.csv",
        "store_id,product_id,quantity\nS1,P1,5\nS3,P1,2\nS3,P2,0\n",
    );
    let customers = file(
        "customers.csv",
        "user_id,email,city,preferred_store\nu-anna,anna@example.fi,Tampere,S1\nu-bob,bob@example.fi,Helsinki,\n",
    );
    for (kind, f) in [
        ("products", &products),
        ("stores", &stores),
        ("stock", &stock),
        ("customers", &customers),
    ] {
        let (code, out, err) = import(&data, kind, f, &[]);
        assert_eq!(code, 0, "{kind}: {out}{err}");
    }
    let s = trusted(start(&data, &a, &w));
    // A purpose that may read where people shop (a profile trait) and
    // what they viewed and bought.
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/store_offers",
        Some(
            &json!({"name": "Offers from your store", "legal_basis": "consent",
            "channels": ["email"], "data_categories": ["contact", "profile", "purchase_history"],
            "retention_days": 365, "consent_lifetime_days": 365, "direct_marketing": true,
            "notice": {"en": "Offers on what you looked at, from your store."}}),
        ),
    );
    assert!(st == 200 || st == 201, "{v}");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/segments",
        Some(
            &json!({"id": "in_stock_reminder", "name": "Viewed, not bought, in stock near them",
            "purpose": "store_offers",
            "rule_text": "event \"Product Viewed\" in 2d and not event \"Order Completed\" in 2d and in_stock(viewed, preferred)"}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["rule"]["all"][2],
        json!({"in_stock": {"product": "viewed", "store": "preferred"}})
    );
    let view = |user: &str, product: &str| {
        let body = json!({"type": "track", "userId": user, "event": "Product Viewed",
            "properties": {"product_id": product}});
        let (st, v) = post(
            &s,
            "/v1/track",
            Some(basic(&s.write)),
            body.to_string().as_bytes(),
            false,
        );
        assert_eq!(st, 200, "{v}");
    };
    let id_of = |user: &str| lookup(&s, "user_id", user).unwrap()["id"].as_i64().unwrap();
    let (anna, bob) = (id_of("u-anna"), id_of("u-bob"));
    // Anna views tea, in stock at her store; Bob a mug, out in Helsinki.
    view("u-anna", "P1");
    view("u-bob", "P2");
    wait_members(&s, "in_stock_reminder", &[anna]);
    // The nightly stock file brings mugs to Kamppi: Bob enters.
    let restock = file("stock-2.csv", "store_id,product_id,quantity\nS3,P2,4\n");
    let (code, out, err) = import(&data, "stock", &restock, &[]);
    assert_eq!(code, 0, "{out}{err}");
    wait_members(&s, "in_stock_reminder", &[anna, bob]);
    // Anna buys at the till: she leaves (no reminder for what she bought).
    let orders = file(
        "orders.csv",
        &format!(
            "order_id,ordered_at,user_id,store_id,product_id,quantity,price\nR9,{},u-anna,S1,P1,1,4.50\n",
            tarmo_store::rfc3339(tarmo_store::now_ms() - 60_000)
        ),
    );
    let (code, out, err) = import(&data, "orders", &orders, &[]);
    assert_eq!(code, 0, "{out}{err}");
    wait_members(&s, "in_stock_reminder", &[bob]);
    // Mugs sell out at Kamppi: Bob leaves too.
    let sold_out = file("stock-3.csv", "store_id,product_id,quantity\nS3,P2,0\n");
    assert_eq!(import(&data, "stock", &sold_out, &[]).0, 0);
    wait_members(&s, "in_stock_reminder", &[]);
}

/// Counts in the data directory's database, read beside a running import.
fn counts(db: &Path) -> (String, i64, i64, i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let status = c
        .query_row(
            "SELECT status FROM imports ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap_or_default();
    (
        status,
        n("SELECT count(*) FROM import_rows"),
        n("SELECT count(*) FROM profiles"),
        n("SELECT count(*) FROM events"),
    )
}

#[test]
fn an_import_killed_mid_way_resumes_and_ends_as_if_never_stopped() {
    const N: u64 = 4 * CHUNK as u64;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data);
    let db = data.join("tarmo.db");
    let mut text = String::from("email,loyalty_card,first_name,city\n");
    for i in 0..N {
        text.push_str(&format!("k{i}@example.fi,LC-{i:08},Name{},Oulu\n", i % 97));
    }
    let file = dir.path().join("crm.csv");
    std::fs::write(&file, &text).unwrap();

    let mut child = Command::new(BIN)
        .args(["import", "customers"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        // As `import` gives them: the resumed import keeps its provenance.
        .args(["--source", "till export 2026-11"])
        .args(["--documentation", "loyalty forms, archive box 12"])
        .env("TARMO_DEFAULT_REGION", "FI")
        .env("TARMO_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some chunks have committed, well before the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no chunk committed");
        if db.exists() {
            let (status, rows, _, _) = counts(&db);
            assert_ne!(status, "done", "the import ended before it could be killed");
            if rows >= CHUNK as i64 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (status, rows, profiles, events) = counts(&db);
    assert_eq!(status, "running");
    assert!(rows > 0 && rows < N as i64, "{rows}");
    // Each chunk committed whole: a person, their identify event and their
    // import row together, or none of them.
    assert_eq!(rows % CHUNK as i64, 0, "{rows}");
    assert_eq!((profiles, events), (rows, rows));

    // The same file again resumes that import (same id), and the outcome is
    // the one an uninterrupted run gives.
    let (code, out, err) = import(&data, "customers", &file, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("import 1: ") && out.contains(&format!("{N} new, 0 updated, 0 unchanged")),
        "{out}"
    );
    assert_eq!(
        counts(&db),
        ("done".to_owned(), N as i64, N as i64, N as i64)
    );
    let (code, out, err) = import(&data, "customers", &file, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("0 new, 0 updated, {N} unchanged")),
        "{out}"
    );
    assert_eq!(counts(&db).1, N as i64);
}
