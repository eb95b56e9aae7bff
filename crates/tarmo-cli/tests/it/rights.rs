//! The rights of the person end to end: the forensic erasure test, access
//! and erasure from the person's own page, and the requests API's errors.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tarmo_notify::testing::{HttpSink, SmtpSink};

use crate::common::*;

fn smtp_args(sink: &SmtpSink) -> Vec<String> {
    vec!["--smtp-url".into(), sink.url()]
}

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

fn batch(s: &Server, body: Value, headers: &[(&str, &str)]) {
    let mut r = agent()
        .post(format!("{}/v1/batch", s.base))
        .header("Authorization", &basic(&s.write))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send(body.to_string().as_bytes()).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// Every form a value could take on disk: as written, lower and upper case,
/// JSON-escaped (non-ASCII as \u escapes), and base64 (standard and URL-safe,
/// at each of the three alignments a value can have inside a longer text).
fn forms(m: &str) -> Vec<Vec<u8>> {
    let mut out = vec![
        m.as_bytes().to_vec(),
        m.to_lowercase().into_bytes(),
        m.to_uppercase().into_bytes(),
    ];
    let escaped: String = m
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    out.push(escaped.into_bytes());
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for pad in 0..3 {
            let mut raw = vec![b'x'; pad];
            raw.extend_from_slice(m.as_bytes());
            let enc = engine.encode(&raw);
            // Skip the characters the prefix influences and the last, which
            // depends on what follows.
            let start = (pad * 4).div_ceil(3);
            let end = enc.len().saturating_sub(2);
            if end > start + 8 {
                out.push(enc.as_bytes()[start..end].to_vec());
            }
        }
    }
    out
}

fn scan(dir: &Path, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    walk(dir)
        .iter()
        .flat_map(|f| scan_file(f, needles))
        .collect()
}

/// The needles found in one file (none when it does not exist).
fn scan_file(f: &Path, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let Ok(bytes) = std::fs::read(f) else {
        return Vec::new();
    };
    needles
        .iter()
        .filter(|(_, n)| bytes.windows(n.len()).any(|w| w == &n[..]))
        .map(|(name, _)| format!("{name} in {}", f.display()))
        .collect()
}

#[test]
fn forensic_erasure_leaves_no_trace_of_the_person_in_any_file() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink));
    let email = "forensic.9x@example.fi";
    let markers = [
        "ForensicUser9x",
        email,
        "+358409191919",
        "ForensicAnon9x",
        "ForensicDev9x",
        "ForensicLC9x",
        "Förensic Trait 9x",
        "ForensicProp9x",
        "ForensicEvent9x",
        "203.0.113.199",
        "ForensicAgent9x/1.0",
        "ForensicFixed9x",
    ];
    // Through ingestion, with a GPC header (a ledger entry with evidence).
    batch(
        &s,
        json!({"batch": [
            {"type": "identify", "userId": markers[0], "anonymousId": markers[3],
             "traits": {"email": email, "phone": "040 9191919", "nickname": markers[6], "loyalty_card": markers[5]},
             "context": {"device": {"id": markers[4]}, "ip": markers[9], "userAgent": markers[10]}},
            {"type": "track", "userId": markers[0], "event": markers[8], "properties": {"note": markers[7]}},
        ]}),
        &[("Sec-GPC", "1"), ("User-Agent", markers[10])],
    );
    // Someone else, who must stay.
    batch(
        &s,
        json!({"batch": [{"type": "identify", "userId": "bystander", "traits": {"email": "by@example.fi", "nickname": "Stays"}},
                         {"type": "track", "userId": "bystander", "event": "Stayed"}]}),
        &[],
    );
    // Through the consent API, a subscription confirmed by the person, and a
    // marketing email.
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": email}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "checkout",
            "evidence": {"ip": markers[9], "user_agent": markers[10]}}),
        ),
    );
    assert_eq!(st, 200);
    let (st, _) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": email, "purposes": ["personalisation"], "source": "form",
            "ip": markers[9], "user_agent": markers[10]}),
        ),
    );
    assert_eq!(st, 202);
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    let url = link(&mail.text_body().unwrap(), &format!("{}/c/", s.base));
    let (st, _) = page("POST", &url, Some(""), &[("User-Agent", markers[10])]);
    assert_eq!(st, 200);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/messages/email",
        Some(
            &json!({"recipient": {"type": "email", "value": email}, "purpose": "email_marketing",
            "subject": "Hello", "text": format!("Dear {}", markers[6])}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    sink.wait_for(2, Duration::from_secs(20));
    // A rectification, so a corrected value went through a request too.
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(
            &json!({"type": "rectification", "subject": {"type": "user_id", "value": markers[0]},
            "corrected": {"lastName": markers[11]}}),
        ),
    );
    assert_eq!(st, 201, "{r}");
    let (st, _) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "customer service call, account PIN"})),
    );
    assert_eq!(st, 200);
    let (_, p) = admin(
        &s,
        "GET",
        &format!("/api/v1/profiles/lookup?type=email&value={email}"),
        None,
    );
    assert_eq!(p["traits"]["lastName"], markers[11]);
    let profile = p["id"].as_i64().unwrap();
    // A segment the person is in, whose rule names one of their values.
    let (st, seg) = admin(
        &s,
        "POST",
        "/api/v1/segments",
        Some(
            &json!({"id": "forensic", "name": "Forensic", "purpose": "personalisation",
            "rule": {"event": markers[8], "within": "365d"}}),
        ),
    );
    assert_eq!((st, seg["count"].as_i64()), (201, Some(1)), "{seg}");

    // What an attacker with the files might look for besides the values:
    // the person's wrapped data key and their sealed values.
    let db = rusqlite::Connection::open(data.join("tarmo.db")).unwrap();
    let keyring = rusqlite::Connection::open(data.join("keyring.db")).unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let wrapped: Vec<u8> = keyring
        .query_row(
            "SELECT wrapped FROM data_keys WHERE owner_id = ?1",
            [profile],
            |r| r.get(0),
        )
        .unwrap();
    drop(keyring);
    secrets.push(("the wrapped data key".into(), wrapped.clone()));
    let mut st2 = db
        .prepare("SELECT body FROM events WHERE profile_id = ?1")
        .unwrap();
    for b in st2
        .query_map([profile], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
    {
        secrets.push(("a sealed event".into(), b.unwrap()));
    }
    let mut st3 = db
        .prepare("SELECT sealed FROM identifiers WHERE profile_id = ?1")
        .unwrap();
    for b in st3
        .query_map([profile], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
    {
        secrets.push(("a sealed identifier".into(), b.unwrap()));
    }
    drop(st2);
    drop(st3);
    drop(db);
    assert!(secrets.len() >= 8, "{}", secrets.len());

    // Erase.
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "phone", "value": "+358409191919"}})),
    );
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["status"], "awaiting_verification");
    let (st, r) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "passport seen in store"})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "completed");
    // By the answer, the key is gone from the keyring file and its log:
    // what is left of the person anywhere is noise.
    let key = [("the wrapped data key".to_owned(), wrapped)];
    for f in ["keyring.db", "keyring.db-wal"] {
        let found = scan_file(&data.join(f), &key);
        assert!(found.is_empty(), "{f} right after the erasure: {found:?}");
    }
    kill9(s);
    let s = start(&data, &a, &w);
    let (st, _) = admin(&s, "GET", &format!("/api/v1/profiles/{profile}"), None);
    assert_eq!(st, 404);
    let (_, d) = admin(
        &s,
        "GET",
        &format!("/api/v1/decisions?purpose=email_marketing&type=email&value={email}"),
        None,
    );
    assert_eq!(d["reason"], "suppressed");
    // Out of the segment, whose rule stays sealed.
    let (_, seg) = admin(&s, "GET", "/api/v1/segments/forensic", None);
    assert_eq!(seg["count"], 0, "{seg}");
    assert_eq!(seg["rule"]["event"], markers[8]);
    drop(s);

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for m in markers {
        for f in forms(m) {
            needles.push((format!("{m:?}"), f));
        }
    }
    needles.extend(secrets);
    let found = scan(&data, &needles);
    assert!(found.is_empty(), "after erasure: {found:#?}");

    // The bystander is untouched.
    let s = start(&data, &a, &w);
    let (st, p) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=bystander",
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(
        (p["traits"]["nickname"].as_str(), p["event_count"].as_i64()),
        (Some("Stays"), Some(2))
    );
    let verify = std::process::Command::new(BIN)
        .args(["ledger", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn the_person_downloads_their_data_and_erases_it_from_their_own_page() {
    let sink = SmtpSink::builder().without_starttls().start();
    let (_d, s0) = server();
    drop(s0);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    // The shop's back end knows the person's address: it receives links.
    let s = trusted(start_with(&data, &a, &w, &smtp_args(&sink)));
    batch(
        &s,
        json!({"batch": [
            {"type": "identify", "userId": "self-1", "anonymousId": "anon-s1", "traits": {"email": "self@example.fi", "city": "Oulu"}},
            {"type": "track", "userId": "self-1", "event": "Order Completed", "properties": {"total": 42}},
            {"type": "page", "anonymousId": "anon-s2"},
            {"type": "alias", "previousId": "anon-s2", "userId": "self-1"}]}),
        &[],
    );
    admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "self-1"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "checkout", "evidence": {"ip": "192.0.2.5"}}),
        ),
    );
    let (_, p) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=self-1",
        None,
    );
    let (_, l) = admin(
        &s,
        "POST",
        &format!("/api/v1/profiles/{}/preference-link", p["id"]),
        None,
    );
    let prefs = l["url"].as_str().unwrap().to_owned();
    let (_, body) = page("GET", &prefs, None, &[]);
    assert!(body.contains("type\" value=\"access\""), "{body}");

    // Access: ask, confirm by the link in the email, download.
    let (st, body) = page(
        "POST",
        &format!("{prefs}/request"),
        Some("type=access"),
        &[],
    );
    assert_eq!(st, 200, "{body}");
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    assert_eq!(mail.rcpt_to, ["self@example.fi"]);
    let url = link(&mail.text_body().unwrap(), &format!("{}/r/", s.base));
    let (st, _) = page("GET", &url, None, &[]);
    assert_eq!(st, 200);
    let (st, body) = page("POST", &url, Some(""), &[]);
    assert_eq!(st, 200, "{body}");
    let download = link(&body, &format!("{}/r/download/", s.base));
    let mut r = agent().get(&download).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut zip_bytes = Vec::new();
    r.body_mut()
        .as_reader()
        .read_to_end(&mut zip_bytes)
        .unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut names: Vec<String> = z.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.txt",
            "bundle.json",
            "consents.csv",
            "events.csv",
            "identifiers.csv",
            "imports.csv",
            "merges.csv",
            "purposes.csv",
            "recipients.csv",
            "segments.csv",
            "sources.csv",
            "traits.csv"
        ]
    );
    let mut json_text = String::new();
    z.by_name("bundle.json")
        .unwrap()
        .read_to_string(&mut json_text)
        .unwrap();
    let b: Value = serde_json::from_str(&json_text).unwrap();
    let kinds: Vec<&str> = b["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    for k in ["user_id", "email", "anonymous_id"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert_eq!(b["traits"]["city"], "Oulu");
    assert_eq!(b["events"].as_array().unwrap().len(), 4);
    let consent = &b["consents"][0];
    assert_eq!(consent["evidence"]["ip"], "192.0.2.5");
    assert!(
        consent["notice_text"]["en"]
            .as_str()
            .unwrap()
            .contains("unsubscribe")
    );
    assert!(
        b["merges"].as_array().unwrap().len() == 1,
        "{}",
        b["merges"]
    );
    let em = b["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "email_marketing")
        .unwrap()
        .clone();
    assert_eq!(
        (
            em["legal_basis"].as_str(),
            em["retention_days"].as_u64(),
            em["your_decision"].as_str()
        ),
        (Some("consent"), Some(730), Some("granted"))
    );
    assert_eq!(b["sources"][0]["name"], "back end");
    assert_eq!(b["sources"][0]["events"], 4);
    let mut csv = String::new();
    z.by_name("events.csv")
        .unwrap()
        .read_to_string(&mut csv)
        .unwrap();
    assert!(
        csv.starts_with("id,type,timestamp") && csv.contains("Order Completed"),
        "{csv}"
    );
    // Staff see it completed, and can download it too.
    let (_, list) = admin(&s, "GET", "/api/v1/requests?type=access", None);
    let req = &list["requests"][0];
    assert_eq!(
        (req["status"].as_str(), req["origin"].as_str()),
        (Some("completed"), Some("self_service"))
    );
    let mut r = agent()
        .get(format!(
            "{}/api/v1/requests/{}/export?format=json",
            s.base, req["id"]
        ))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let staff: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(staff["profile_id"], b["profile_id"]);

    // Erasure, the same way.
    let (st, _) = page(
        "POST",
        &format!("{prefs}/request"),
        Some("type=erasure"),
        &[],
    );
    assert_eq!(st, 200);
    let mail = sink.wait_for(2, Duration::from_secs(20)).remove(1);
    let url = link(&mail.text_body().unwrap(), &format!("{}/r/", s.base));
    let (st, _) = page("POST", &url, Some(""), &[]);
    assert_eq!(st, 200);
    let (st, _) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=self-1",
        None,
    );
    assert_eq!(st, 404);
    let (_, d) = admin(
        &s,
        "GET",
        "/api/v1/decisions?purpose=email_marketing&type=email&value=self@example.fi",
        None,
    );
    assert_eq!(d["reason"], "suppressed");
    // The page link, and the download link, now open nothing.
    let (st, _) = page("GET", &prefs, None, &[]);
    assert_eq!(st, 404);
    let (st, _) = page("GET", &download, None, &[]);
    assert_eq!(st, 404);
}

#[test]
fn request_api_errors_have_codes_and_change_nothing() {
    let (_d, s) = server();
    let s = trusted(s);
    batch(
        &s,
        json!({"batch": [{"type": "identify", "userId": "q-1", "traits": {"email": "q1@example.fi"}}]}),
        &[],
    );
    let cases = vec![
        (
            json!({"type": "forget", "subject": {"type": "email", "value": "q1@example.fi"}}),
            400,
            "unknown_request_type",
        ),
        (
            json!({"type": "access", "subject": {"profile": 1}}),
            400,
            "invalid_subject",
        ),
        (
            json!({"type": "access", "subject": {"type": "email", "value": "nope"}}),
            400,
            "invalid_email",
        ),
        (
            json!({"type": "access", "subject": {"type": "shoe", "value": "1"}}),
            400,
            "unknown_identifier_type",
        ),
        (
            json!({"type": "rectification", "subject": {"type": "email", "value": "q1@example.fi"}}),
            400,
            "missing_corrections",
        ),
        (
            json!({"type": "objection", "subject": {"type": "email", "value": "q1@example.fi"}, "purposes": ["order_fulfilment"]}),
            400,
            "objection_not_applicable",
        ),
        (
            json!({"type": "access", "subject": {"type": "email", "value": "q1@example.fi"}, "extra": 1}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (st, v) = admin(&s, "POST", "/api/v1/requests", Some(&body));
        assert_eq!(
            (st, v["code"].as_str().unwrap_or("")),
            (status, code),
            "{body}: {v}"
        );
    }
    let (_, list) = admin(&s, "GET", "/api/v1/requests", None);
    assert_eq!(
        list["requests"].as_array().unwrap().len(),
        0,
        "nothing was recorded"
    );
    let (st, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "user_id", "value": "q-1"}})),
    );
    assert_eq!(st, 201);
    let id = r["id"].as_i64().unwrap();
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "email", "value": "q1@example.fi"}})),
    );
    assert_eq!((st, v["code"].as_str()), (409, Some("duplicate_request")));
    let (st, v) = admin(&s, "GET", &format!("/api/v1/requests/{id}/export"), None);
    assert_eq!((st, v["code"].as_str()), (409, Some("no_bundle")));
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{id}/verify"),
        Some(&json!({"reason": ""})),
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("missing_reason")));
    let (st, v) = admin(&s, "GET", "/api/v1/requests/99999", None);
    assert_eq!((st, v["code"].as_str()), (404, Some("request_not_found")));
    let (st, v) = admin(&s, "GET", "/api/v1/requests?status=lost", None);
    assert_eq!((st, v["code"].as_str()), (400, Some("unknown_status")));
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{id}/refuse"),
        Some(&json!({"reason": "Art. 17(3)(e): a legal claim is pending"})),
    );
    assert_eq!((st, v["status"].as_str()), (200, Some("refused")), "{v}");
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    let (st, _) = admin(
        &s,
        "GET",
        "/api/v1/profiles/lookup?type=user_id&value=q-1",
        None,
    );
    assert_eq!(st, 200, "a refused erasure erases nothing");
    let out = std::process::Command::new(BIN)
        .args(["retention", "run", "--dry-run", "--data-dir"])
        .arg(walk_root(&_d))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["dry_run"].as_bool(), r["events_deleted"].as_u64()),
        (Some(true), Some(0))
    );
}

fn walk_root(d: &tempfile::TempDir) -> std::path::PathBuf {
    d.path().join("data")
}

/// A person's data went to a processor: their access bundle names it, and
/// their erasure reaches its webhook with what it received, delivered and
/// recorded on the request.
#[test]
fn erasure_reaches_every_processor_that_received_the_data() {
    let hook = HttpSink::start();
    hook.fail_next(1, 503);
    let (_d, s) = server_allowing_private_webhooks();
    batch(
        &s,
        json!({"batch": [{"type": "identify", "userId": "shared-1", "traits": {"email": "shared@example.fi", "phone": "040 5550001"}}]}),
        &[],
    );
    admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "shared-1"}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "form"}),
        ),
    );
    let (st, p) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(
            &json!({"name": "Mailer Oy", "role": "email delivery", "country": "FI",
            "dpa_reference": "DPA-1", "dpa_signed_on": "2024-05-02", "purposes": ["email_marketing"],
            "data_categories": ["contact"], "erasure_webhook": format!("{}/erase", hook.url()),
            "webhook_token": "hook-secret"}),
        ),
    );
    assert_eq!(st, 201, "{p}");
    let (st, x) = admin(
        &s,
        "POST",
        &format!("/api/v1/processors/{}/exports", p["id"]),
        Some(
            &json!({"purpose": "email_marketing", "subjects": [{"type": "user_id", "value": "shared-1"}]}),
        ),
    );
    assert_eq!(st, 200, "{x}");
    // Access: the recipient is in the bundle.
    let (_, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "access", "subject": {"type": "user_id", "value": "shared-1"}})),
    );
    admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "phone call, PIN"})),
    );
    let mut resp = agent()
        .get(format!(
            "{}/api/v1/requests/{}/export?format=json",
            s.base, r["id"]
        ))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let b: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(b["recipients"][0]["processor"], "Mailer Oy");
    assert_eq!(b["recipients"][0]["purpose"], "email_marketing");
    // Erasure: the processor is told, through a failure and a retry.
    let (_, r) = admin(
        &s,
        "POST",
        "/api/v1/requests",
        Some(&json!({"type": "erasure", "subject": {"type": "user_id", "value": "shared-1"}})),
    );
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/requests/{}/verify", r["id"]),
        Some(&json!({"reason": "signed letter"})),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        v["outcome"]
            .as_str()
            .unwrap()
            .contains("1 processors to notify"),
        "{v}"
    );
    let got = hook.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].status, 503);
    assert_eq!(got[0].header("Authorization"), Some("Bearer hook-secret"));
    let body = got[0].json();
    assert_eq!(body["type"], "erasure");
    let kinds: Vec<&str> = body["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"email") && kinds.contains(&"phone") && !kinds.contains(&"user_id"),
        "only what it received: {kinds:?}"
    );
    let (_, v) = admin(&s, "GET", &format!("/api/v1/requests/{}", r["id"]), None);
    assert_eq!(v["processors"][0]["processor"], "Mailer Oy");
    assert!(
        matches!(
            v["processors"][0]["status"].as_str(),
            Some("pending") | Some("sending")
        ),
        "{v}"
    );
    assert_eq!(v["processors"][0]["attempts"], 1);
}
