//! CMP strings (IAB TCF TC strings, GPP strings) into the consent ledger: on
//! ingestion and through `POST /api/v1/consents/signals`.

use serde_json::{Value, json};
use tarmo_tcf::gpp::{Choice, GppString, Section, UsNat};
use tarmo_tcf::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, LanguageCode, PolicyVersion,
    PublisherRestrictions, PurposeSet, SpecialFeatureSet, TcString, VendorListVersion, VendorSet,
};

use crate::common::*;

/// A TC string as a CMP writes it (through the repository's encoder, which
/// the cross-check test holds byte-identical to `@iabtechlabtcf/core`).
/// `stamp` makes otherwise equal choices a different string, as re-saving
/// them in a CMP does.
fn tc(consents: &[u8], legitimate_interests: &[u8], policy: u8, stamp: u64) -> String {
    TcString {
        created: Deciseconds::new(17_300_000_000).unwrap(),
        last_updated: Deciseconds::new(17_300_000_000 + stamp).unwrap(),
        cmp_id: CmpId::new(300).unwrap(),
        cmp_version: CmpVersion::new(7).unwrap(),
        consent_screen: ConsentScreen::new(1).unwrap(),
        consent_language: LanguageCode::parse("FI").unwrap(),
        vendor_list_version: VendorListVersion::new(90).unwrap(),
        policy_version: PolicyVersion::new(policy).unwrap(),
        is_service_specific: true,
        use_non_standard_texts: false,
        special_feature_optins: SpecialFeatureSet::new(),
        purpose_consents: PurposeSet::from_ids(consents.iter().copied()).unwrap(),
        purpose_legitimate_interests: PurposeSet::from_ids(legitimate_interests.iter().copied())
            .unwrap(),
        purpose_one_treatment: false,
        publisher_country_code: CountryCode::parse("FI").unwrap(),
        vendor_consents: VendorSet::new(),
        vendor_legitimate_interests: VendorSet::new(),
        publisher_restrictions: PublisherRestrictions::new(),
        vendors_disclosed: None,
        publisher_tc: None,
    }
    .encode()
}

/// Everything consented, legitimate interests standing: accept all.
pub(crate) fn accept_all(stamp: u64) -> String {
    let all: Vec<u8> = (1..=11).collect();
    tc(&all, &[2, 7, 8, 9, 10], 4, stamp)
}

/// A GPP string with a US national section.
fn gpp_usnat(sale: Choice, sharing: Choice, targeted: Choice) -> String {
    let mut g = GppString::new();
    g.insert(Section::UsNat(UsNat {
        sale_opt_out: sale,
        sharing_opt_out: sharing,
        targeted_advertising_opt_out: targeted,
        ..Default::default()
    }));
    g.encode()
}

fn batch(s: &Server, messages: Vec<Value>) {
    let body = json!({"batch": messages});
    let (st, v) = post(
        s,
        "/v1/batch",
        Some(basic(&s.write)),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
}

fn profile_id(s: &Server, user: &str) -> i64 {
    let (st, p) = get(
        s,
        &format!("/api/v1/profiles/lookup?type=user_id&value={user}"),
    );
    assert_eq!(st, 200, "{p}");
    p["id"].as_i64().unwrap()
}

fn ledger(s: &Server, profile: i64) -> Vec<Value> {
    let (st, v) = get(s, &format!("/api/v1/profiles/{profile}/consents"));
    assert_eq!(st, 200, "{v}");
    v["ledger"].as_array().unwrap().clone()
}

fn decision(s: &Server, purpose: &str, user: &str) -> (bool, String) {
    let (st, v) = get(
        s,
        &format!("/api/v1/decisions?purpose={purpose}&type=user_id&value={user}"),
    );
    assert_eq!(st, 200, "{v}");
    (
        v["allowed"].as_bool().unwrap(),
        v["reason"].as_str().unwrap().to_owned(),
    )
}

fn metric(s: &Server, line_start: &str) -> u64 {
    let mut r = agent()
        .get(format!("{}/metrics", s.base))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn invalid_metric(s: &Server, kind: &str) -> u64 {
    metric(
        s,
        &format!("tarmo_consent_signals_invalid_total{{kind=\"{kind}\"}}"),
    )
}

fn signal(s: &Server, body: &Value) -> (u16, Value) {
    admin(s, "POST", "/api/v1/consents/signals", Some(body))
}

/// A TC string with an event decides for the person, is in the ledger with
/// method `tcf` and the string as evidence, and is written only once.
#[test]
fn a_tc_string_on_an_event_is_recorded_once_and_decides() {
    let (_d, s) = server();
    let first = accept_all(0);
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "tcf-1", "traits": {"email": "tcf-1@example.com"},
            "context": {"consent": {"tcString": first}, "ip": "198.51.100.4"}}),
        ],
    );
    assert_eq!(
        decision(&s, "personalisation", "tcf-1"),
        (true, "consent_granted".into())
    );
    assert_eq!(
        decision(&s, "ad_audiences", "tcf-1"),
        (true, "consent_granted".into())
    );
    assert_eq!(
        decision(&s, "analytics", "tcf-1"),
        (true, "legitimate_interests".into())
    );
    assert_eq!(
        decision(&s, "email_marketing", "tcf-1"),
        (false, "no_consent".into()),
        "a cookie banner is no consent to email marketing"
    );
    let p = profile_id(&s, "tcf-1");
    let entries = ledger(&s, p);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in &entries {
        assert_eq!(e["method"], "tcf");
        assert_eq!(e["decision"], "granted");
        assert_eq!(e["source"], "context.consent.tcString on ingestion");
        assert_eq!(e["evidence"]["tc_string"], first.as_str());
        assert_eq!(e["evidence"]["policy_version"], 4);
        assert_eq!(e["evidence"]["outdated"], false);
        assert_eq!(e["evidence"]["cmp_id"], 300);
        assert_eq!(e["evidence"]["ip"], "198.51.100.4");
    }
    let (_, consents) = get(&s, &format!("/api/v1/profiles/{p}/consents"));
    let states = consents["states"].as_array().unwrap();
    assert!(
        states
            .iter()
            .all(|st| st["method"] == "tcf" && st["decision"] == "granted"),
        "{states:?}"
    );

    // The same string again, on more events and in batch-level context:
    // nothing new.
    let body = json!({"batch": [
        {"type": "page", "userId": "tcf-1", "name": "Home"},
        {"type": "track", "userId": "tcf-1", "event": "Viewed"},
    ], "context": {"consent": {"tcString": first}}});
    let (st, _) = post(
        &s,
        "/v1/batch",
        Some(basic(&s.write)),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    assert_eq!(ledger(&s, p).len(), 2);

    // The person changes their mind in the CMP: a new string, new entries.
    let second = tc(&[1, 3, 4], &[2, 7, 8, 9], 4, 1);
    batch(
        &s,
        vec![
            json!({"type": "page", "userId": "tcf-1", "context": {"consent": {"tcString": second}}}),
        ],
    );
    let entries = ledger(&s, p);
    assert_eq!(entries.len(), 5, "{entries:?}");
    let newest: Vec<(&str, &str)> = entries[2..]
        .iter()
        .map(|e| {
            (
                e["purpose"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        newest,
        [
            ("ad_audiences", "granted"),
            ("analytics", "objected"),
            ("personalisation", "denied")
        ]
    );
    assert_eq!(
        decision(&s, "personalisation", "tcf-1"),
        (false, "denied".into())
    );
    assert_eq!(
        decision(&s, "analytics", "tcf-1"),
        (false, "objected".into())
    );
    // A CMP grant does not lift the objection: only the person's own act does.
    batch(
        &s,
        vec![
            json!({"type": "page", "userId": "tcf-1", "context": {"consent": {"tcString": accept_all(2)}}}),
        ],
    );
    assert_eq!(
        decision(&s, "personalisation", "tcf-1"),
        (true, "consent_granted".into())
    );
    assert_eq!(
        decision(&s, "analytics", "tcf-1"),
        (false, "objected".into())
    );
    assert_eq!(invalid_metric(&s, "tc_string"), 0);
}

/// A GPP string with a US sale opt-out denies the purpose it feeds, even
/// after a grant; not opting out grants nothing.
#[test]
fn a_gpp_usnat_sale_opt_out_denies_ad_audiences() {
    let (_d, s) = server();
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "user_id", "value": "gpp-1"}, "purpose": "ad_audiences",
            "decision": "granted", "method": "web_form", "source": "signup form"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        decision(&s, "ad_audiences", "gpp-1"),
        (true, "consent_granted".into())
    );
    // Not opting out says nothing.
    let stays = gpp_usnat(Choice::Allowed, Choice::Allowed, Choice::Allowed);
    let (st, _) = post(
        &s,
        "/v1/track",
        Some(basic(&s.write)),
        json!({"userId": "gpp-1", "event": "Viewed", "context": {"consent": {"gppString": stays}}})
            .to_string()
            .as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    let p = profile_id(&s, "gpp-1");
    assert_eq!(ledger(&s, p).len(), 1);

    let opted_out = gpp_usnat(Choice::Denied, Choice::Allowed, Choice::NotApplicable);
    let (st, _) = post(
        &s,
        "/v1/track",
        Some(basic(&s.write)),
        json!({"userId": "gpp-1", "event": "Viewed", "context": {"consent": {"gppString": opted_out}}})
            .to_string()
            .as_bytes(),
        false,
    );
    assert_eq!(st, 200);
    assert_eq!(
        decision(&s, "ad_audiences", "gpp-1"),
        (false, "denied".into())
    );
    let entries = ledger(&s, p);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let e = &entries[1];
    assert_eq!(
        (
            e["purpose"].as_str(),
            e["decision"].as_str(),
            e["method"].as_str()
        ),
        (Some("ad_audiences"), Some("denied"), Some("gpp"))
    );
    assert_eq!(e["evidence"]["gpp_string"], opted_out.as_str());
    assert_eq!(e["evidence"]["sections"], json!(["usnat"]));
    assert_eq!(e["evidence"]["outdated"], false);
    assert_eq!(e["evidence"]["policy_version"], Value::Null);
    assert_eq!(e["source"], "context.consent.gppString on ingestion");
}

/// An undecodable string is counted and dropped; the event is stored.
#[test]
fn an_undecodable_string_keeps_the_event_and_writes_nothing() {
    let (_d, s) = server();
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "bad-1", "traits": {"plan": "gold"},
                "context": {"consent": {"tcString": "CQ!!not-a-tc-string", "gppString": "DBABMA~garbage"}}}),
            json!({"type": "track", "userId": "bad-1", "event": "Bought",
                "context": {"consent": {"tcString": 42}}}),
            json!({"type": "track", "userId": "bad-1", "event": "Bought again",
                "context": {"consent": {"tcString": "", "gppString": null}}}),
        ],
    );
    let (_, p) = get(&s, "/api/v1/profiles/lookup?type=user_id&value=bad-1");
    assert_eq!(p["event_count"], 3, "{p}");
    assert_eq!(p["traits"]["plan"], "gold");
    let id = p["id"].as_i64().unwrap();
    assert!(ledger(&s, id).is_empty());
    assert_eq!(invalid_metric(&s, "tc_string"), 2);
    assert_eq!(invalid_metric(&s, "gpp_string"), 1);
}

/// TCF 2.0 and 2.1 strings (policy versions 2 and 3) are recorded, flagged
/// outdated.
#[test]
fn outdated_policy_versions_are_recorded_and_flagged() {
    let (_d, s) = server();
    let old = tc(&[1, 3, 4, 5, 6], &[2, 7, 8, 9, 10], 2, 0);
    batch(
        &s,
        vec![
            json!({"type": "identify", "userId": "old-1", "context": {"consent": {"tcString": old}}}),
        ],
    );
    let entries = ledger(&s, profile_id(&s, "old-1"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in &entries {
        assert_eq!(e["evidence"]["outdated"], true);
        assert_eq!(e["evidence"]["policy_version"], 2);
        assert_eq!(e["decision"], "granted");
    }
    assert_eq!(
        decision(&s, "ad_audiences", "old-1"),
        (true, "consent_granted".into())
    );
    let (st, v) = signal(
        &s,
        &json!({"subject": {"type": "user_id", "value": "old-2"}, "tc_string": tc(&[5, 6], &[], 3, 0),
            "source": "CMP on the home page"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["outdated"].as_bool(), v["policy_version"].as_u64()),
        (Some(true), Some(3))
    );
}

/// The `euconsent-v2` cookie, forwarded in `context.cookies` or sent by the
/// browser through a first-party proxy, counts as the message's TC string
/// when `context.consent.tcString` is absent.
#[test]
fn the_euconsent_cookie_is_read_from_the_context_and_the_cookie_header() {
    let (_d, s) = server();
    let in_context = tc(&[5, 6], &[8, 10], 4, 0);
    batch(
        &s,
        vec![json!({"type": "page", "userId": "cookie-1",
            "context": {"cookies": {"euconsent-v2": in_context, "_ga": "GA1.1.1"}}})],
    );
    let entries = ledger(&s, profile_id(&s, "cookie-1"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["source"], "euconsent-v2 cookie on ingestion");
    assert_eq!(entries[0]["evidence"]["tc_string"], in_context.as_str());

    let in_header = tc(&[3, 4], &[8, 10], 4, 0);
    let explicit = tc(&[], &[8, 10], 4, 0);
    let body = json!({"batch": [
        {"type": "page", "userId": "cookie-2"},
        {"type": "page", "userId": "cookie-3", "context": {"consent": {"tcString": explicit}}},
    ]});
    let r = agent()
        .post(format!("{}/v1/batch", s.base))
        .header("Authorization", &basic(&s.write))
        .header("Content-Type", "application/json")
        .header("Cookie", &format!("_ga=GA1.1.2; euconsent-v2={in_header}"))
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        decision(&s, "ad_audiences", "cookie-2"),
        (true, "consent_granted".into())
    );
    assert_eq!(
        decision(&s, "ad_audiences", "cookie-3"),
        (false, "denied".into()),
        "context.consent.tcString wins over the cookie"
    );
}

/// The signals route: first arrival writes, a repeat is a duplicate, bad
/// input is refused with a stable code and writes nothing.
#[test]
fn the_signals_route_records_once_and_refuses_bad_input() {
    let (_d, s) = server();
    let string = tc(&[1, 3, 4], &[2, 7, 9, 10], 4, 0);
    let body = json!({"subject": {"type": "email", "value": "Sig@Example.com"}, "tc_string": string,
        "source": "CMP on the checkout page", "evidence": {"ip": "192.0.2.8", "user_agent": "Mozilla/5.0"}});
    let (st, v) = signal(&s, &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["method"], "tcf");
    assert_eq!(v["duplicate"], false);
    assert_eq!(v["outdated"], false);
    assert_eq!(v["suppressed"], false);
    let entries: Vec<(&str, &str)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["purpose"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("ad_audiences", "granted"),
            ("analytics", "objected"),
            ("personalisation", "denied")
        ]
    );
    let p = v["profile_id"].as_i64().unwrap();
    let l = ledger(&s, p);
    assert_eq!(l.len(), 3);
    assert_eq!(l[0]["seq"], v["entries"][0]["seq"]);
    assert_eq!(l[0]["source"], "CMP on the checkout page");
    assert_eq!(l[0]["evidence"]["tc_string"], string.as_str());
    assert_eq!(l[0]["evidence"]["user_agent"], "Mozilla/5.0");

    let (st, v) = signal(&s, &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["entries"], json!([]));
    assert_eq!(v["profile_id"], p);
    assert_eq!(ledger(&s, p).len(), 3);

    // By profile id, a GPP string.
    let gpp = gpp_usnat(Choice::Allowed, Choice::Denied, Choice::Allowed);
    let (st, v) = signal(
        &s,
        &json!({"subject": {"profile": p}, "gpp_string": gpp, "source": "US CMP"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["method"], "gpp");
    assert_eq!(v["entries"][0]["purpose"], "ad_audiences");
    assert_eq!(v["entries"][0]["decision"], "denied");
    assert_eq!(v["policy_version"], Value::Null);
    assert_eq!(ledger(&s, p).len(), 4);

    // The same string for another person is their first.
    let (st, v) = signal(
        &s,
        &json!({"subject": {"type": "user_id", "value": "sig-other"}, "tc_string": string, "source": "CMP"}),
    );
    assert_eq!((st, v["duplicate"].as_bool()), (200, Some(false)), "{v}");

    let bad = [
        (
            json!({"subject": {"profile": p}, "tc_string": "CQ!!", "source": "CMP"}),
            400,
            "invalid_tc_string",
        ),
        (
            json!({"subject": {"profile": p}, "tc_string": &string[..20], "source": "CMP"}),
            400,
            "invalid_tc_string",
        ),
        (
            json!({"subject": {"profile": p}, "gpp_string": "DBABMA~!!", "source": "CMP"}),
            400,
            "invalid_gpp_string",
        ),
        (
            json!({"subject": {"profile": p}, "tc_string": string, "gpp_string": gpp, "source": "CMP"}),
            400,
            "invalid_signal",
        ),
        (
            json!({"subject": {"profile": p}, "source": "CMP"}),
            400,
            "invalid_signal",
        ),
        (
            json!({"subject": {"profile": p}, "tc_string": string, "source": "CMP", "vendor": 1}),
            400,
            "invalid_signal",
        ),
        (
            json!({"subject": {"type": "shoe_size", "value": "44"}, "tc_string": accept_all(9), "source": "CMP"}),
            400,
            "unknown_identifier_type",
        ),
        (
            json!({"subject": {"type": "email", "value": "x@example.com", "profile": p}, "tc_string": accept_all(9), "source": "CMP"}),
            400,
            "invalid_subject",
        ),
        (
            json!({"subject": {"profile": p}, "tc_string": accept_all(9), "source": " "}),
            400,
            "invalid_source",
        ),
        (
            json!({"subject": {"profile": 999_999}, "tc_string": accept_all(9), "source": "CMP"}),
            404,
            "profile_not_found",
        ),
    ];
    for (body, status, code) in bad {
        let (st, v) = signal(&s, &body);
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let (st, v) = signal(
        &s,
        &json!({"subject": {"profile": p}, "tc_string": &string[..20], "source": "CMP"}),
    );
    assert!(
        v["message"].as_str().unwrap().contains("bit"),
        "the decoder says where: {v}"
    );
    assert_eq!(st, 400);
    assert_eq!(
        ledger(&s, p).len(),
        4,
        "nothing written by refused requests"
    );
    let r = agent()
        .post(format!("{}/api/v1/consents/signals", s.base))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The strings are personal data: sealed in the ledger's evidence and in
/// the stored events, never in plaintext on disk.
#[test]
fn cmp_strings_are_sealed_on_disk() {
    let (d, s) = server();
    let on_event = accept_all(11);
    let on_route = tc(&[1, 2, 3], &[8], 4, 12);
    let gpp = gpp_usnat(Choice::Denied, Choice::Denied, Choice::Denied);
    batch(
        &s,
        vec![json!({"type": "identify", "userId": "sealed-1",
            "context": {"consent": {"tcString": on_event, "gppString": gpp}}})],
    );
    let (st, v) = signal(
        &s,
        &json!({"subject": {"type": "user_id", "value": "sealed-1"}, "tc_string": on_route, "source": "CMP"}),
    );
    assert_eq!(st, 200, "{v}");
    let p = profile_id(&s, "sealed-1");
    let l = ledger(&s, p);
    assert!(l.len() >= 4, "{l:?}");
    let mut files = 0;
    for path in walk(d.path()) {
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for marker in [&on_event, &on_route, &gpp] {
            // The core segment alone would give the string away.
            let core = marker.split(['.', '~']).next().unwrap();
            let core = if core.len() < 12 {
                marker.as_str()
            } else {
                core
            };
            assert!(
                !bytes.windows(core.len()).any(|w| w == core.as_bytes()),
                "a CMP string in plaintext in {}",
                path.display()
            );
        }
    }
    assert!(files >= 3);
}

/// What was recorded stays recorded: after kill -9 and a restart (an empty
/// cache), the same string is still a repeat.
#[test]
fn a_recorded_string_is_still_a_repeat_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    let string = accept_all(21);
    let msg =
        json!({"type": "page", "userId": "crash-1", "context": {"consent": {"tcString": string}}});
    batch(&s, vec![msg.clone()]);
    let p = profile_id(&s, "crash-1");
    assert_eq!(ledger(&s, p).len(), 2);
    kill9(s);
    let s = start(&data, &a, &w);
    batch(&s, vec![msg]);
    assert_eq!(ledger(&s, p).len(), 2);
    let (_, profile) = get(&s, &format!("/api/v1/profiles/{p}"));
    assert_eq!(profile["event_count"], 2);
}

/// `[consent_signals]` in tarmo.toml replaces the default mapping; ids the
/// IAB does not define are refused at start.
#[test]
fn the_mapping_is_configured_in_tarmo_toml() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    std::fs::write(
        data.join("tarmo.toml"),
        "[consent_signals.personalisation]\ntcf_purposes = [1]\nspecial_features = [1]\n\n\
         [consent_signals.ad_audiences]\nus_opt_outs = [\"sharing\"]\n",
    )
    .unwrap();
    let s = start(&data, &a, &w);
    // Purposes 5 and 6 no longer feed personalisation; 1 and special feature 1 do.
    batch(
        &s,
        vec![json!({"type": "page", "userId": "conf-1",
            "context": {"consent": {"tcString": tc(&[1, 3, 4, 5, 6], &[], 4, 0)}}})],
    );
    let l = ledger(&s, profile_id(&s, "conf-1"));
    let got: Vec<(&str, &str)> = l
        .iter()
        .map(|e| {
            (
                e["purpose"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("personalisation", "denied")], "no special feature 1");
    let (st, v) = signal(
        &s,
        &json!({"subject": {"type": "user_id", "value": "conf-1"},
            "gpp_string": gpp_usnat(Choice::Denied, Choice::Allowed, Choice::Denied), "source": "CMP"}),
    );
    assert_eq!(
        (st, v["entries"].clone()),
        (200, json!([])),
        "only sharing counts now: {v}"
    );
    drop(s);

    std::fs::write(
        data.join("tarmo.toml"),
        "[consent_signals.personalisation]\ntcf_purposes = [12]\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("tarmo serve started with an invalid [consent_signals]");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("TCF purpose 12"), "{err}");
}
