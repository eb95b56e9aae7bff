//! The consent engine end to end: double opt-in over a real SMTP conversation
//! (STARTTLS and AUTH) followed like a person would, one-click unsubscribe,
//! SMS confirmation through the webhook, crash safety of the outbox, GPC,
//! the preference page, bad input, `tarmo ledger verify` and CSV imports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tarmo_notify::testing::{HttpSink, SmtpSink};

use crate::common::*;

fn smtp_args(sink: &SmtpSink, dir: &Path) -> Vec<String> {
    let ca = dir.join("smtp-ca.pem");
    std::fs::write(&ca, sink.cert_pem()).unwrap();
    vec![
        "--smtp-url".into(),
        sink.url(),
        "--smtp-ca".into(),
        ca.display().to_string(),
        "--mail-from".into(),
        "Kauppa Tarmo <hello@kauppa.example>".into(),
        "--organisation".into(),
        "Kauppa Tarmo".into(),
    ]
}

/// The first link in a text that starts with `prefix`.
fn link(text: &str, prefix: &str) -> String {
    let i = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} link in: {text}"));
    text[i..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>')
        .next()
        .unwrap()
        .to_owned()
}

fn metrics(s: &Server) -> String {
    agent()
        .get(format!("{}/metrics", s.base))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Wait until /metrics shows `needle`.
fn wait_metric(s: &Server, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !metrics(s).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "{needle} not in {}",
            metrics(s)
        );
        // /metrics answers a key 2 a second (bursts of 10).
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn decision(s: &Server, purpose: &str, kind: &str, value: &str) -> Value {
    let (st, v) = admin(
        s,
        "GET",
        &format!(
            "/api/v1/decisions?purpose={purpose}&type={kind}&value={}",
            value.replace('+', "%2B").replace('@', "%40")
        ),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn double_opt_in_over_smtp_with_starttls_and_auth_confirms_on_a_button_press() {
    let sink = SmtpSink::builder()
        .credentials("tarmo", "s3cret pass")
        .require_tls_for_auth()
        .start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": "Aino@Example.FI", "purposes": ["email_marketing", "personalisation"],
            "language": "fi", "source": "newsletter form in the footer",
            "ip": "198.51.100.23", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "pending_confirmation");
    assert_eq!(
        decision(&s, "email_marketing", "email", "Aino@example.fi")["reason"],
        "pending_confirmation"
    );

    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    assert!(
        mail.tls && mail.auth.is_some(),
        "STARTTLS and AUTH were used"
    );
    assert_eq!(mail.rcpt_to, ["Aino@example.fi"]);
    let text = mail.text_body().unwrap();
    let html = mail.html_body().unwrap();
    assert!(
        text.contains("Lähetämme sinulle uutisia"),
        "the Finnish notice text: {text}"
    );
    assert!(html.contains("Kauppa Tarmo"));
    let url = link(&text, &format!("{}/c/", s.base));
    assert!(html.contains(&url));

    // A mail scanner fetching the link confirms nothing.
    for _ in 0..2 {
        let (st, body) = page("GET", &url, None, &[]);
        assert_eq!(st, 200);
        assert!(body.contains("<form method=\"post\">"), "{body}");
        assert!(body.contains("Lähetämme sinulle uutisia"));
    }
    assert_eq!(
        decision(&s, "email_marketing", "email", "Aino@example.fi")["allowed"],
        false
    );
    // The person presses the button.
    let (st, body) = page("POST", &url, Some(""), &[("User-Agent", "Firefox/140")]);
    assert_eq!(st, 200, "{body}");
    let d = decision(&s, "email_marketing", "email", "Aino@example.fi");
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(true), Some("consent_granted"))
    );
    assert_eq!(
        decision(&s, "personalisation", "email", "Aino@example.fi")["allowed"],
        true
    );

    // The ledger holds the pending and the confirmation, with evidence.
    let id = d["profile_id"].as_i64().unwrap();
    let (_, c) = admin(&s, "GET", &format!("/api/v1/profiles/{id}/consents"), None);
    let ledger = c["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 4);
    assert_eq!(ledger[0]["decision"], "pending_confirmation");
    assert_eq!(ledger[0]["evidence"]["ip"], "198.51.100.23");
    assert_eq!(ledger[3]["decision"], "granted");
    assert_eq!(ledger[3]["method"], "double_opt_in_email");
    assert_eq!(ledger[3]["evidence"]["user_agent"], "Firefox/140");
    assert_eq!(ledger[3]["evidence"]["ip"], "127.0.0.1");
    assert_eq!(
        ledger[3]["evidence"]["confirmation_token_id"],
        ledger[0]["evidence"]["confirmation_token_id"]
    );

    // The link works once; a replay is refused and changes nothing.
    let (st, body) = page("POST", &url, Some(""), &[]);
    assert_eq!(st, 410, "{body}");
    let (_, c2) = admin(&s, "GET", &format!("/api/v1/profiles/{id}/consents"), None);
    assert_eq!(c2["ledger"].as_array().unwrap().len(), 4);
    let (st, _) = page("POST", &format!("{}/c/not-a-token", s.base), Some(""), &[]);
    assert_eq!(st, 404);
    // Confirming again sends nothing more.
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": "Aino@example.fi", "purposes": ["email_marketing"], "source": "footer"}),
        ),
    );
    assert_eq!((st, v["status"].as_str()), (200, Some("already_granted")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn an_expired_confirmation_link_is_refused() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let mut args = smtp_args(&sink, dir.path());
    args.extend(["--confirmation-ttl-hours".into(), "0".into()]);
    let s = start_with(&data, &a, &w, &args);
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": "late@example.fi", "purposes": ["email_marketing"], "source": "form"}),
        ),
    );
    assert_eq!(st, 202);
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    let url = link(&mail.text_body().unwrap(), &format!("{}/c/", s.base));
    let (st, body) = page("POST", &url, Some(""), &[("Accept-Language", "de-DE")]);
    assert_eq!(st, 410);
    assert!(body.contains("abgelaufen"), "{body}");
    assert_eq!(
        decision(&s, "email_marketing", "email", "late@example.fi")["reason"],
        "pending_confirmation"
    );
}

#[test]
fn marketing_email_carries_rfc_8058_one_click_unsubscribe_that_withdraws_at_once() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": "olli@example.fi"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "checkout form v3",
            "evidence": {"ip": "203.0.113.5"}}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let send = |subject: &str| {
        admin(
            &s,
            "POST",
            "/api/v1/messages/email",
            Some(
                &json!({"recipient": {"type": "email", "value": "olli@example.fi"},
                "purpose": "email_marketing", "subject": subject, "text": "Avocados are in."}),
            ),
        )
    };
    let (st, v) = send("Avocados!");
    assert_eq!((st, v["queued"].as_bool()), (202, Some(true)), "{v}");
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    assert_eq!(mail.header("Subject").as_deref(), Some("Avocados!"));
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let lu = mail.header("List-Unsubscribe").unwrap();
    let url = lu.trim_start_matches('<').trim_end_matches('>').to_owned();
    assert!(url.starts_with(&format!("{}/u/", s.base)), "{url}");

    // The page behind the link changes nothing until the button is pressed.
    let (st, body) = page("GET", &url, None, &[]);
    assert_eq!(st, 200);
    assert!(body.contains("List-Unsubscribe"));
    assert_eq!(
        decision(&s, "email_marketing", "email", "olli@example.fi")["allowed"],
        true
    );
    // A forged link does nothing.
    let forged = format!("{}x", &url[..url.len() - 1]);
    let (st, _) = page("POST", &forged, Some("List-Unsubscribe=One-Click"), &[]);
    assert_eq!(st, 404);
    // The mail client's one-click POST: no key, no cookie.
    let (st, _) = page("POST", &url, Some("List-Unsubscribe=One-Click"), &[]);
    assert_eq!(st, 200);
    let d = decision(&s, "email_marketing", "email", "olli@example.fi");
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("withdrawn"))
    );
    // Nothing more is sent for that purpose.
    let (st, v) = send("More avocados");
    assert_eq!((st, v["queued"].as_bool()), (200, Some(false)));
    assert_eq!(v["decision"]["reason"], "withdrawn");
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{}/consents", d["profile_id"]),
        None,
    );
    let last = c["ledger"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["method"], "one_click_unsubscribe");
}

#[test]
fn sms_confirmation_goes_through_the_webhook() {
    let gw = HttpSink::start();
    gw.fail_next(1, 503);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let args = vec![
        "--allow-private-webhooks".to_string(),
        "--sms-webhook-url".to_string(),
        format!("{}/sms", gw.url()),
        "--sms-webhook-token".into(),
        "gw-token".into(),
    ];
    let s = start_with(&data, &a, &w, &args);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"phone": "040 1234567", "purposes": ["sms_marketing"], "language": "fi", "source": "till"}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    // The gateway's first answer is a 503: the message stays in the outbox
    // for a later attempt, and the link it carried works already.
    let reqs = gw.wait_for(1, Duration::from_secs(20));
    assert_eq!(reqs[0].status, 503);
    assert_eq!(reqs[0].header("Authorization"), Some("Bearer gw-token"));
    let body = reqs[0].json();
    assert_eq!(body["to"], "+358401234567");
    wait_metric(&s, "tarmo_outbox_messages{status=\"pending\"} 1");
    let url = link(body["body"].as_str().unwrap(), &format!("{}/c/", s.base));
    let (st, _) = page("POST", &url, Some(""), &[]);
    assert_eq!(st, 200);
    let d = decision(&s, "sms_marketing", "phone", "+358401234567");
    assert_eq!(d["allowed"], true, "{d}");
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{}/consents", d["profile_id"]),
        None,
    );
    assert_eq!(
        c["ledger"].as_array().unwrap().last().unwrap()["method"],
        "double_opt_in_sms"
    );
}

/// kill -9 right after the subscription was acknowledged, before any mail
/// server was reachable: after the restart exactly one confirmation goes out,
/// and a further restart sends no second one.
#[test]
fn a_crash_neither_loses_nor_duplicates_a_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    for i in 0..3 {
        let (st, _) = admin(
            &s,
            "POST",
            "/api/v1/subscriptions",
            Some(
                &json!({"email": format!("crash{i}@example.fi"), "purposes": ["email_marketing"], "source": "form"}),
            ),
        );
        assert_eq!(st, 202);
    }
    kill9(s);
    let sink = SmtpSink::builder().without_starttls().start();
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    let mails = sink.wait_for(3, Duration::from_secs(20));
    let mut to: Vec<_> = mails.iter().map(|m| m.rcpt_to[0].clone()).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "crash0@example.fi",
            "crash1@example.fi",
            "crash2@example.fi"
        ]
    );
    let ids: std::collections::HashSet<_> = mails.iter().map(|m| m.header("Message-ID")).collect();
    assert_eq!(ids.len(), 3);
    // Once the outbox says all three are sent, a crash sends none again.
    wait_metric(&s, "tarmo_outbox_messages{status=\"sent\"} 3");
    kill9(s);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.messages().len(), 3, "no confirmation was sent twice");
    drop(s);
}

#[test]
fn gpc_opts_out_of_sale_and_sharing_and_the_preference_page_lets_the_person_choose() {
    let (_d, s) = server();
    let (st, v) = admin(&s, "GET", "/.well-known/gpc.json", None);
    assert_eq!((st, v["gpc"].as_bool()), (200, Some(true)));
    admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(&json!({"entries": [
            {"subject": {"type": "user_id", "value": "gpc-1"}, "purpose": "ad_audiences", "decision": "granted", "method": "web_form", "source": "cookie banner"},
            {"subject": {"type": "user_id", "value": "gpc-1"}, "purpose": "email_marketing", "decision": "granted", "method": "web_form", "source": "cookie banner"}]})),
    );
    assert_eq!(
        decision(&s, "ad_audiences", "user_id", "gpc-1")["allowed"],
        true
    );
    let r = agent()
        .post(format!("{}/v1/track", s.base))
        .header("Authorization", &basic(&s.write))
        .header("Sec-GPC", "1")
        .header("Content-Type", "application/json")
        .send(
            json!({"userId": "gpc-1", "event": "Viewed", "messageId": "g1"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let d = decision(&s, "ad_audiences", "user_id", "gpc-1");
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("opted_out"))
    );
    assert_eq!(
        decision(&s, "email_marketing", "user_id", "gpc-1")["allowed"],
        true
    );

    // The person's own page: their explicit choice stands over GPC.
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/profiles/{}/preference-link", d["profile_id"]),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_owned();
    let (st, body) = page(
        "GET",
        &url,
        None,
        &[("Sec-GPC", "1"), ("Accept-Language", "fi")],
    );
    assert_eq!(st, 200);
    assert!(body.contains("Global Privacy Control"), "{body}");
    assert!(body.contains("value=\"email_marketing\" checked"));
    assert!(!body.contains("value=\"ad_audiences\" checked"));
    let (st, _) = page(
        "POST",
        &url,
        Some("purpose=ad_audiences&purpose=personalisation"),
        &[("Sec-GPC", "1")],
    );
    assert_eq!(st, 200);
    assert_eq!(
        decision(&s, "ad_audiences", "user_id", "gpc-1")["allowed"],
        true
    );
    assert_eq!(
        decision(&s, "personalisation", "user_id", "gpc-1")["allowed"],
        true
    );
    assert_eq!(
        decision(&s, "email_marketing", "user_id", "gpc-1")["reason"],
        "withdrawn",
        "unticked: withdrawn"
    );
    // The browser keeps sending GPC; the explicit choice still stands.
    agent()
        .post(format!("{}/v1/track", s.base))
        .header("Authorization", &basic(&s.write))
        .header("Sec-GPC", "1")
        .header("Content-Type", "application/json")
        .send(
            json!({"userId": "gpc-1", "event": "Viewed", "messageId": "g2"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        decision(&s, "ad_audiences", "user_id", "gpc-1")["allowed"],
        true
    );
    // A forged preference link opens nothing.
    let (st, _) = page(
        "GET",
        &format!("{}/p/AAAA{}", s.base, &url[url.len() - 20..]),
        None,
        &[],
    );
    assert_eq!(st, 404);
}

#[test]
fn bad_consent_input_gets_its_own_code_and_writes_nothing() {
    let (_d, s) = server();
    let entry = |purpose: &str, decision: &str, method: &str, subject: Value| json!({"subject": subject, "purpose": purpose, "decision": decision, "method": method, "source": "form"});
    let email = json!({"type": "email", "value": "bad@example.fi"});
    let cases = vec![
        (
            "POST",
            "/api/v1/consents",
            entry("no_such", "granted", "api", email.clone()),
            400,
            "unknown_purpose",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry("order_fulfilment", "granted", "api", email.clone()),
            400,
            "purpose_not_consent_based",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry("email_marketing", "maybe", "api", email.clone()),
            400,
            "unknown_decision",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry(
                "email_marketing",
                "granted",
                "double_opt_in_email",
                email.clone(),
            ),
            400,
            "unknown_method",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry(
                "email_marketing",
                "granted",
                "api",
                json!({"type": "email", "value": "not-an-email"}),
            ),
            400,
            "invalid_email",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry(
                "email_marketing",
                "granted",
                "api",
                json!({"type": "shoe", "value": "42"}),
            ),
            400,
            "unknown_identifier_type",
        ),
        (
            "POST",
            "/api/v1/consents",
            entry(
                "email_marketing",
                "granted",
                "api",
                json!({"profile": 999999}),
            ),
            404,
            "profile_not_found",
        ),
        (
            "POST",
            "/api/v1/consents",
            json!({"subject": email, "purpose": "email_marketing", "decision": "granted", "source": "f", "notice_version": "feed"}),
            400,
            "unknown_notice_version",
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            json!({"email": "x@example.fi", "purposes": ["order_fulfilment"], "source": "f"}),
            400,
            "purpose_not_consent_based",
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            json!({"email": "x@example.fi", "phone": "0401234567", "purposes": ["email_marketing"], "source": "f"}),
            400,
            "invalid_subscription",
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            json!({"email": "x@example.fi", "purposes": [], "source": "f"}),
            400,
            "missing_purposes",
        ),
        (
            "PUT",
            "/api/v1/purposes/health_tips",
            json!({"name": "Health tips", "legal_basis": "legitimate_interests", "balancing_note": "x", "data_categories": ["health"], "retention_days": 30}),
            400,
            "special_category_needs_consent",
        ),
        (
            "PUT",
            "/api/v1/purposes/Bad-Id",
            json!({}),
            400,
            "invalid_purpose_id",
        ),
        (
            "PUT",
            "/api/v1/purposes/no_notice",
            json!({"name": "N", "legal_basis": "consent", "retention_days": 30}),
            400,
            "invalid_purpose",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (st, v) = admin(&s, method, path, Some(&body));
        assert_eq!(
            (st, v["code"].as_str().unwrap_or("")),
            (status, code),
            "{path} {body}: {v}"
        );
    }
    let (st, v) = admin(
        &s,
        "GET",
        "/api/v1/decisions?purpose=email_marketing&type=email&value=bad@example.fi",
        None,
    );
    assert_eq!(
        (st, v["reason"].as_str()),
        (200, Some("unknown_profile")),
        "nothing was created: {v}"
    );
    let (st, v) = admin(
        &s,
        "GET",
        "/api/v1/decisions?purpose=email_marketing&channel=pigeon&profile=1",
        None,
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("unknown_channel")));
    let (st, v) = admin(
        &s,
        "GET",
        "/api/v1/decisions?purpose=email_marketing&profile=1&type=email&value=a@b.fi",
        None,
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_subject")));
    let (st, v) = admin(&s, "GET", "/api/v1/purposes/health_tips", None);
    assert_eq!(st, 404, "{v}");
    // A good entry in a batch with a bad one is not written either.
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(&json!({"entries": [
            entry("email_marketing", "granted", "api", json!({"type": "email", "value": "good@example.fi"})),
            entry("no_such", "granted", "api", json!({"type": "email", "value": "good@example.fi"}))]})),
    );
    assert_eq!(st, 400);
    let d = decision(&s, "email_marketing", "email", "good@example.fi");
    assert_eq!(d["reason"], "unknown_profile");
}

#[test]
fn ledger_verify_finds_the_first_altered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    let entries: Vec<Value> = (0..30)
        .map(|i| json!({"subject": {"type": "user_id", "value": format!("v{}", i % 7)},
            "purpose": (["email_marketing", "sms_marketing", "personalisation"][i % 3]),
            "decision": if i % 4 == 0 { "withdrawn" } else { "granted" }, "method": "api", "source": "app"}))
        .collect();
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(&json!({"entries": entries})),
    );
    assert_eq!(st, 200, "{v}");
    drop(s);
    let verify = || {
        Command::new(BIN)
            .args(["ledger", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ledger intact: 30 entries"), "{text}");
    assert!(text.contains("consent state: matches the ledger"), "{text}");

    let db = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    db.execute(
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 17",
        [],
    )
    .unwrap();
    drop(db);
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ledger BROKEN at entry 17"), "{text}");
}

#[test]
fn csv_import_checks_every_row_first_then_imports_all_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let csv = dir.path().join("till.csv");
    std::fs::write(
        &csv,
        "email,loyalty_card,purpose,decision,consented_at\n\
         maija@example.fi,LC-1,email_marketing,granted,2026-10-01\n\
         not-an-email,,email_marketing,granted,2026-10-01\n\
         pekka@example.fi,,no_such_purpose,granted,\n\
         ,LC-3,sms_marketing,granted,2099-01-01\n\
         ,LC-4,order_fulfilment,granted,\n",
    )
    .unwrap();
    let import = |file: &Path| {
        Command::new(BIN)
            .args([
                "import",
                "consents",
                "--source",
                "till system export",
                "--documentation",
                "paper forms, archive box 7",
                "--data-dir",
            ])
            .arg(&data)
            .arg(file)
            .output()
            .unwrap()
    };
    let out = import(&csv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for line in [":3: ", ":4: ", ":5: ", ":6: "] {
        assert!(err.contains(line), "line {line} reported: {err}");
    }
    assert!(err.contains("nothing was imported"));
    let verify = Command::new(BIN)
        .args(["ledger", "verify", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(v["entries"], 0, "a bad file writes nothing");

    std::fs::write(
        &csv,
        "email,loyalty_card,purpose,decision,consented_at\n\
         maija@example.fi,LC-1,email_marketing,granted,2026-10-01\n\
         ,LC-1,sms_marketing,denied,\n\
         pekka@example.fi,,email_marketing,withdrawn,2026-09-30T12:00:00Z\n",
    )
    .unwrap();
    let out = import(&csv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("imported 3 consent entries for 2 people"),
        "{text}"
    );
    let s = start(&data, &a, &w);
    let d = decision(&s, "email_marketing", "loyalty_card", "LC-1");
    assert_eq!(d["allowed"], true, "{d}");
    assert!(
        d["since"].as_str().unwrap().starts_with("2026-10-01"),
        "{d}"
    );
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{}/consents", d["profile_id"]),
        None,
    );
    let e = &c["ledger"][0];
    assert_eq!(e["method"], "import");
    assert_eq!(e["source"], "till system export");
    assert_eq!(e["evidence"]["documentation"], "paper forms, archive box 7");
    assert_eq!(e["evidence"]["line"], 2);
    assert_eq!(e["evidence"]["file_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        decision(&s, "email_marketing", "email", "pekka@example.fi")["reason"],
        "withdrawn"
    );
    // An erased person is not brought back by the next import of the list.
    let (_, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(
            &json!({"type": "erasure", "subject": {"type": "email", "value": "pekka@example.fi"}}),
        ),
    );
    let (st, _) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "letter"})),
    );
    assert_eq!(st, 200);
    drop(s);
    let out = import(&csv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 rows skipped"), "{text}");
    let s = start(&data, &a, &w);
    assert_eq!(
        decision(&s, "email_marketing", "email", "pekka@example.fi")["reason"],
        "suppressed"
    );
}

#[test]
fn a_mailbox_providers_multipart_one_click_unsubscribe_withdraws() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": "maija@example.fi"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "footer form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/messages/email",
        Some(
            &json!({"recipient": {"type": "email", "value": "maija@example.fi"},
            "purpose": "email_marketing", "subject": "News", "text": "Kale is in."}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    let lu = mail.header("List-Unsubscribe").unwrap();
    let url = lu.trim_start_matches('<').trim_end_matches('>').to_owned();
    let post = |ctype: &str, body: &[u8]| {
        agent()
            .post(&url)
            .header("Content-Type", ctype)
            .send(body)
            .unwrap()
            .status()
            .as_u16()
    };
    // A body that is not what it says is refused and changes nothing.
    let broken =
        b"--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click";
    assert_eq!(post("multipart/form-data; boundary=b0undary", broken), 400);
    assert_eq!(
        decision(&s, "email_marketing", "email", "maija@example.fi")["allowed"],
        true
    );
    // What RFC 8058 §3.1 says a mailbox provider SHOULD send.
    let body = b"--XyZ-0fT9\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ-0fT9--\r\n";
    assert_eq!(
        post("multipart/form-data; boundary=\"XyZ-0fT9\"", body),
        200
    );
    let d = decision(&s, "email_marketing", "email", "maija@example.fi");
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("withdrawn"))
    );
}

/// A body that does not parse names the field at fault and never a Rust
/// type; an empty body says what is needed (issue 11's error catalog).
#[test]
fn a_bad_body_names_the_field_and_an_empty_one_says_what_is_needed() {
    let (_d, s) = server();
    let good = json!({"subject": {"type": "email", "value": "a@example.fi"},
        "purpose": "email_marketing", "decision": "granted", "method": "api", "source": "form"});
    let mut no_source = good.clone();
    no_source.as_object_mut().unwrap().remove("source");
    let cases = [
        (json!(no_source), "missing field `source`", ""),
        (
            json!({"entries": [good.clone(), no_source.clone()]}),
            "missing field `source`",
            "`entries[1]`",
        ),
        (
            json!({"entries": [{"subject": "x", "purpose": "email_marketing", "decision": "granted", "source": "f"}]}),
            "invalid type",
            "`entries[0].subject`",
        ),
    ];
    for (body, says, path) in cases {
        let (st, v) = admin(&s, "POST", "/api/v1/consents", Some(&body));
        let m = v["message"].as_str().unwrap();
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("invalid_consent")),
            "{m}"
        );
        assert!(m.contains(says) && m.contains(path), "{body}: {m}");
        for rust in ["ConsentBody", "ConsentInput", "struct", "enum", "untagged"] {
            assert!(!m.contains(rust), "{body}: {m}");
        }
    }
    // Nothing was written by the refused batch with one good entry.
    let (_, c) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=email&value=a@example.fi",
        None,
    );
    assert!(c.get("profile_id").is_none(), "{c}");

    // Routes that need a body say so when it is empty.
    for (path, code, needed) in [
        (
            "/api/v1/consents",
            "invalid_consent",
            "a JSON body is needed: a consent entry",
        ),
        (
            "/api/v1/requests/1/verify",
            "invalid_request",
            "a JSON body is needed: {\"reason\"",
        ),
        (
            "/api/v1/subscriptions",
            "invalid_subscription",
            "a JSON body is needed:",
        ),
    ] {
        let (st, v) = admin(&s, "POST", path, None);
        let m = v["message"].as_str().unwrap_or_default();
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{path}: {v}");
        assert!(m.starts_with(needed) && !m.contains("EOF"), "{path}: {m}");
    }
}

/// The decision for one channel of a purpose, for a person by email.
fn decision_on(s: &Server, purpose: &str, channel: &str, email: &str) -> (bool, String) {
    let (st, v) = admin(
        s,
        "GET",
        &format!(
            "/api/v1/decisions?purpose={purpose}&channel={channel}&type=email&value={}",
            email.replace('@', "%40")
        ),
        None,
    );
    assert_eq!(st, 200, "{v}");
    (
        v["allowed"].as_bool().unwrap(),
        v["reason"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_person_keeps_email_and_stops_sms_within_one_purpose_by_api_and_on_their_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/offers",
        Some(
            &json!({"name": "Offers by email and text message", "legal_basis": "consent",
            "channels": ["email", "sms"], "data_categories": ["contact"], "retention_days": 365,
            "direct_marketing": true, "notice": {"en": "We send you offers by email and by text message."}}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let email = "kanavat@example.fi";
    let subject = json!({"type": "email", "value": email});
    let record = |body: Value| admin(&s, "POST", "/api/v1/consents", Some(&body));

    // Bad channel input: its own code each, nothing written or created.
    let bad = [
        (
            json!({"subject": subject, "purpose": "offers", "decision": "withdrawn",
            "source": "app", "channel": "pigeon"}),
            "unknown_channel",
        ),
        (
            json!({"subject": subject, "purpose": "email_marketing", "decision": "withdrawn",
            "source": "app", "channel": "sms"}),
            "channel_not_covered",
        ),
        (
            json!({"subject": subject, "purpose": "offers", "decision": "objected",
            "source": "app", "channel": "sms"}),
            "invalid_channel_decision",
        ),
        (
            json!({"subject": subject, "purpose": "offers", "decision": "withdrawn",
            "source": "app", "channel": "sms"}),
            "channel_without_consent",
        ),
    ];
    for (body, code) in bad {
        let (st, v) = record(body);
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{v}");
    }
    assert_eq!(decision_on(&s, "offers", "sms", email).1, "unknown_profile");

    // Granted for the purpose, then SMS stopped through the API.
    let (st, v) = record(
        json!({"subject": subject, "purpose": "offers", "decision": "granted",
        "method": "web_form", "source": "checkout"}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = record(
        json!({"subject": subject, "purpose": "offers", "decision": "withdrawn",
        "source": "app settings", "channel": "sms"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        decision_on(&s, "offers", "sms", email),
        (false, "channel_withdrawn".into())
    );
    assert_eq!(
        decision_on(&s, "offers", "email", email),
        (true, "consent_granted".into())
    );
    let profile = decision(&s, "offers", "email", email)["profile_id"].clone();
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{profile}/consents"),
        None,
    );
    let offers = c["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["purpose"] == "offers")
        .unwrap()
        .clone();
    assert_eq!(offers["channels_off"], json!(["sms"]), "{c}");
    assert_eq!(offers["decision"], "granted");
    let last = c["ledger"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["channel"].as_str(), last["decision"].as_str()),
        (Some("sms"), Some("withdrawn"))
    );

    // The person's page shows a box per channel, SMS unticked; ticking SMS
    // and unticking email there swaps them, as ledger entries of the page.
    let (_, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/profiles/{profile}/preference-link"),
        None,
    );
    let url = v["url"].as_str().unwrap().to_owned();
    let (st, body) = page("GET", &url, None, &[("Accept-Language", "en")]);
    assert_eq!(st, 200);
    assert!(body.contains("value=\"offers:email\" checked"), "{body}");
    assert!(body.contains("value=\"offers:sms\">"), "{body}");
    assert!(body.contains("Channels you allow"), "{body}");
    for (form, code) in [
        ("purpose=offers&channel=offers:push", "channel_not_covered"),
        ("purpose=offers&channel=offers:pigeon", "unknown_channel"),
        (
            "purpose=offers&channel=email_marketing:email",
            "unknown_purpose",
        ),
    ] {
        let (st, body) = page("POST", &url, Some(form), &[]);
        assert_eq!(st, 400, "{form}");
        assert!(body.contains(code), "{form}: {body}");
    }
    assert_eq!(
        decision_on(&s, "offers", "sms", email).1,
        "channel_withdrawn"
    );
    // A form without the channel boxes (an older page) leaves them alone.
    let (st, _) = page("POST", &url, Some("purpose=offers"), &[]);
    assert_eq!(st, 200);
    assert!(decision_on(&s, "offers", "email", email).0);
    let (st, _) = page(
        "POST",
        &url,
        Some("purpose=offers&channels_shown=offers&channel=offers%3Asms"),
        &[],
    );
    assert_eq!(st, 200);
    assert_eq!(
        decision_on(&s, "offers", "sms", email),
        (true, "consent_granted".into())
    );
    assert_eq!(
        decision_on(&s, "offers", "email", email),
        (false, "channel_withdrawn".into())
    );
    let (_, c) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/{profile}/consents"),
        None,
    );
    let tail: Vec<(String, String, String)> = c["ledger"].as_array().unwrap()[2..]
        .iter()
        .map(|e| {
            (
                e["channel"].as_str().unwrap_or("").to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
                e["method"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            (
                "email".into(),
                "withdrawn".into(),
                "preference_center".into()
            ),
            ("sms".into(), "granted".into(), "preference_center".into()),
        ]
    );

    // The chain and the materialised state hold, old entries and new.
    drop(s);
    let out = Command::new(BIN)
        .args(["ledger", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ledger intact: 4 entries"), "{text}");
    assert!(text.contains("consent state: matches the ledger"), "{text}");
}

/// One request naming people several ways, resolved together: the same
/// address twice (one person; the later decision is the state), an erased
/// person (recorded for nobody, in its place), a profile id, and a new
/// address — each answer in its entry's place.
#[test]
fn a_batch_of_decisions_names_each_person_once_and_skips_the_erased() {
    let (_d, s) = server();
    let entry = |purpose: &str, decision: &str, subject: Value| json!({"subject": subject, "purpose": purpose, "decision": decision, "method": "api", "source": "form"});
    let email = |v: &str| json!({"type": "email", "value": v});
    let one = |e: Value| {
        let (st, v) = admin(&s, "POST", "/api/v1/consents", Some(&e));
        assert_eq!(st, 200, "{v}");
        v["recorded"][0].clone()
    };
    let gone = one(entry(
        "email_marketing",
        "granted",
        email("gone@example.fi"),
    ));
    let known = one(entry(
        "email_marketing",
        "granted",
        email("known@example.fi"),
    ));
    let (_, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": email("gone@example.fi")})),
    );
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "letter"})),
    );
    assert_eq!(st, 200, "{v}");

    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(&json!({"entries": [
            entry("email_marketing", "granted", email("same@example.fi")),
            entry("email_marketing", "granted", email("gone@example.fi")),
            entry("sms_marketing", "granted", json!({"profile": known["profile_id"]})),
            entry("email_marketing", "withdrawn", email("same@EXAMPLE.fi")),
            entry("sms_marketing", "granted", email("new@example.fi")),
        ]})),
    );
    assert_eq!(st, 200, "{v}");
    let rec = v["recorded"].as_array().unwrap();
    assert_eq!(rec.len(), 5, "{v}");
    assert_eq!(
        rec[0]["profile_id"], rec[3]["profile_id"],
        "one person: {v}"
    );
    assert_eq!(
        (rec[1]["suppressed"].as_bool(), rec[1]["seq"].is_null()),
        (Some(true), true),
        "{v}"
    );
    assert_ne!(rec[1]["profile_id"], gone["profile_id"], "{v}");
    assert_eq!(rec[2]["profile_id"], known["profile_id"], "{v}");
    let ids: std::collections::HashSet<String> = [0, 2, 4]
        .iter()
        .map(|&i| rec[i]["profile_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 3, "three people: {v}");
    // Four entries written, in order, after the two before.
    let seqs: Vec<i64> = [0, 2, 3, 4]
        .iter()
        .map(|&i| rec[i]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6], "{v}");
    assert_eq!(
        decision(&s, "email_marketing", "email", "same@example.fi")["reason"],
        "withdrawn"
    );
    assert_eq!(
        decision(&s, "email_marketing", "email", "gone@example.fi")["reason"],
        "suppressed"
    );
    assert_eq!(
        decision(&s, "sms_marketing", "email", "new@example.fi")["allowed"],
        true
    );
}
