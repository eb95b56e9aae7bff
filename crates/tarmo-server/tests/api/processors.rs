//! Processors over HTTP, in process.

use serde_json::{Value, json};

use crate::helpers::*;

fn mailer() -> Value {
    json!({
        "name": "Mailer Oy",
        "role": "email delivery",
        "country": "FI",
        "dpa_reference": "DPA-2024-7",
        "dpa_signed_on": "2024-05-02",
        "purposes": ["email_marketing"],
        "data_categories": ["contact"],
        "erasure_webhook": "https://mailer.example/erase",
        "webhook_token": "tok-never-shown",
    })
}

fn processors(s: &TestApp) -> Vec<Value> {
    let (st, v) = get(s, "/api/v1/processors");
    assert_eq!(st, 200, "{v}");
    v["processors"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_are_registered_and_each_bad_field_is_refused_with_its_code() {
    let s = spawn_app().await;
    let (st, p) = admin(&s, "POST", "/api/v1/processors", Some(&mailer()));
    assert_eq!(st, 201, "{p}");
    assert_eq!(p["country"], "FI");
    assert_eq!(p["in_eea"], true);
    assert_eq!(p["webhook_token_set"], true);
    assert!(!p.to_string().contains("tok-never-shown"));
    let id = p["id"].as_i64().unwrap();

    let cases: Vec<(&str, Value, &str)> = vec![
        ("name", json!(""), "invalid_processor_name"),
        ("name", json!("x".repeat(201)), "invalid_processor_name"),
        ("role", json!(" "), "invalid_processor_role"),
        ("country", json!("XX"), "invalid_country"),
        ("country", json!("USA"), "invalid_country"),
        ("country", json!("US"), "transfer_safeguard_required"),
        (
            "transfer_safeguard",
            json!(""),
            "invalid_transfer_safeguard",
        ),
        ("dpa_reference", json!(""), "invalid_dpa_reference"),
        (
            "dpa_signed_on",
            json!("02.05.2024"),
            "invalid_dpa_signed_on",
        ),
        (
            "dpa_signed_on",
            json!("2999-01-01"),
            "dpa_signed_on_in_future",
        ),
        ("purposes", json!([]), "invalid_processor_purposes"),
        ("purposes", json!(["no_such_purpose"]), "unknown_purpose"),
        ("data_categories", json!([]), "invalid_data_categories"),
        (
            "data_categories",
            json!(["Contact Info"]),
            "invalid_data_categories",
        ),
        (
            "erasure_webhook",
            json!("mailto:x@example.com"),
            "invalid_erasure_webhook",
        ),
        ("webhook_token", json!("has space"), "invalid_webhook_token"),
        ("surprise", json!(1), "invalid_processor"),
    ];
    for (field, value, code) in cases {
        let mut b = mailer();
        b["name"] = json!("Another");
        b[field] = value;
        let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&b));
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{field}: {v}");
    }
    let mut dup = mailer();
    dup["name"] = json!("mailer oy");
    let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&dup));
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("processor_name_taken"))
    );
    assert_eq!(processors(&s).len(), 1, "no refusal wrote anything");

    // Outside the EEA with a safeguard.
    let mut us = mailer();
    us["name"] = json!("Cloud Inc");
    us["country"] = json!("us");
    us["transfer_safeguard"] = json!("SCC 2021/914");
    let (st, v) = admin(&s, "POST", "/api/v1/processors", Some(&us));
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["country"].as_str(), v["in_eea"].as_bool()),
        (Some("US"), Some(false))
    );

    // A change keeps the token unless told otherwise.
    let mut change = mailer();
    change.as_object_mut().unwrap().remove("webhook_token");
    change["role"] = json!("newsletter delivery");
    let (st, v) = admin(
        &s,
        "PUT",
        &format!("/api/v1/processors/{id}"),
        Some(&change),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["role"].as_str(), v["webhook_token_set"].as_bool()),
        (Some("newsletter delivery"), Some(true))
    );
    let (st, v) = get(&s, &format!("/api/v1/processors/{id}"));
    assert_eq!((st, v["role"].as_str()), (200, Some("newsletter delivery")));
    let (st, v) = get(&s, "/api/v1/processors/abc");
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("invalid_processor_id"))
    );
    let (st, v) = get(&s, "/api/v1/processors/999");
    assert_eq!((st, v["code"].as_str()), (404, Some("processor_not_found")));
    let (st, v) = admin(&s, "PUT", "/api/v1/processors/999", Some(&change));
    assert_eq!((st, v["code"].as_str()), (404, Some("processor_not_found")));
    let r = agent()
        .get(format!("{}/api/v1/processors", s.base))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
