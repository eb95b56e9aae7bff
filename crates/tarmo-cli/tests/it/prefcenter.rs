//! The end customer's preference center over real sockets: the language
//! (the person's own, then Accept-Language by weight), purpose names and
//! fallbacks marked with their language, legitimate interests shown as an
//! objection, who the controller is, what is held and with whom, and
//! changes taking effect in the next decision. Bad input changes nothing.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tarmo_notify::testing::SmtpSink;

use crate::common::*;

fn decision(s: &Server, purpose: &str, email: &str) -> Value {
    let (st, v) = admin(
        s,
        "GET",
        &format!(
            "/api/v1/decisions?purpose={purpose}&type=email&value={}",
            email.replace('@', "%40")
        ),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v
}

/// A person with consent to email marketing, and their preference link.
fn person(s: &Server, email: &str, language: Option<&str>) -> String {
    let (st, v) = admin(
        s,
        "POST",
        "/api/v1/consents",
        Some(
            &json!({"subject": {"type": "email", "value": email}, "purpose": "email_marketing",
            "decision": "granted", "method": "web_form", "source": "shop footer"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let id = decision(s, "email_marketing", email)["profile_id"].clone();
    let q = language.map_or(String::new(), |l| format!("?language={l}"));
    let (st, v) = admin(
        s,
        "POST",
        &format!("/api/v1/profiles/{id}/preference-link{q}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["url"].as_str().unwrap().to_owned()
}

fn server_with(args: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let (a, w) = init(dir.path());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let s = start_with(dir.path(), &a, &w, &args);
    (dir, s)
}

#[test]
fn the_preference_center_speaks_the_persons_language_and_says_who_holds_what() {
    let (_d, s) = server_with(&[
        "--organisation",
        "Kauppa Tarmo Oy",
        "--controller-contact",
        "tietosuoja@kauppa.example",
    ]);
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/processors",
        Some(
            &json!({"name": "Mailer Oy", "role": "email delivery", "country": "FI",
            "dpa_reference": "DPA-7", "dpa_signed_on": "2024-05-02",
            "purposes": ["email_marketing"], "data_categories": ["contact"]}),
        ),
    );
    assert_eq!(st, 201, "{v}");

    // Subscribed in Finnish; the browser prefers German: the page is Finnish.
    let url = person(&s, "aino@example.fi", Some("fi"));
    let (st, html) = page("GET", &url, None, &[("Accept-Language", "de, en;q=0.5")]);
    assert_eq!(st, 200);
    assert!(html.contains("<html lang=\"fi\" dir=\"ltr\">"), "{html}");
    for finnish in [
        "Uutiset ja tarjoukset sähköpostilla",
        "Sivustomme käytön mittaaminen",
        "Lähetämme sinulle uutisia",
        "Vastustan",
        "Kauppa Tarmo Oy</bdi> on henkilötietojesi rekisterinpitäjä",
        "tietosuoja@kauppa.example",
        "sähköpostiosoitteesi ja puhelinnumerosi",
        "<bdi>Mailer Oy</bdi> (<bdi>email delivery</bdi>, FI)",
        "Säilytetään enintään 730 päivää.",
        "Lähetä minulle kopio tiedoistani",
        "Poista kaikki tietoni",
        "Tilaustesi toimittaminen",
    ] {
        assert!(html.contains(finnish), "{finnish} missing: {html}");
    }
    assert!(!html.contains(" lang=\"en\""), "nothing falls back: {html}");
    // Legitimate interests: an objection, not a consent box.
    assert!(html.contains("name=\"object\" value=\"analytics\""));
    assert!(!html.contains("name=\"purpose\" value=\"analytics\""));
    assert!(html.contains("name=\"purpose\" value=\"email_marketing\" checked"));
    // A contract is explained, with no control.
    assert!(!html.contains("value=\"order_fulfilment\""));

    // Without a language of their own: Accept-Language by weight.
    let url2 = person(&s, "ayse@example.com", None);
    let (_, html) = page(
        "GET",
        &url2,
        None,
        &[("Accept-Language", "en;q=0.3, sv, tr;q=0.9")],
    );
    assert!(html.contains("<html lang=\"tr\" dir=\"ltr\">"), "{html}");
    assert!(html.contains("E-postayla haberler ve fırsatlar"));
    let (_, html) = page("GET", &url2, None, &[("Accept-Language", "he-IL,he;q=0.9")]);
    assert!(html.contains("<html lang=\"he\" dir=\"rtl\">"), "{html}");
    assert!(
        html.contains("מחיקת כל המידע שלי"),
        "rights in Hebrew: {html}"
    );

    // An operator's purpose written only in English: marked where it falls back.
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/loyalty_club",
        Some(
            &json!({"name": "Loyalty club", "legal_basis": "consent", "channels": ["email"],
            "data_categories": ["contact", "loyalty_points"], "retention_days": 365,
            "notice": {"en": "We keep your points and send you member offers."}}),
        ),
    );
    assert!(st == 200 || st == 201, "{v}");
    let (_, html) = page("GET", &url2, None, &[("Accept-Language", "he")]);
    assert!(
        html.contains("<h3 lang=\"en\" dir=\"ltr\">Loyalty club</h3>"),
        "{html}"
    );
    assert!(html.contains(
        "<p class=\"notice\" lang=\"en\" dir=\"ltr\">We keep your points and send you member offers.</p>"
    ));
    assert!(html.contains("<span lang=\"en\" dir=\"ltr\">loyalty points</span>"));
    // Given a Hebrew name, it is no longer a fallback.
    let (st, v) = admin(
        &s,
        "PUT",
        "/api/v1/purposes/loyalty_club",
        Some(
            &json!({"name": "Loyalty club", "names": {"he": "מועדון הלקוחות"},
            "legal_basis": "consent", "channels": ["email"],
            "data_categories": ["contact"], "retention_days": 365,
            "notice": {"en": "We keep your points and send you member offers."}}),
        ),
    );
    assert!(st == 200 || st == 201, "{v}");
    let (_, html) = page("GET", &url2, None, &[("Accept-Language", "he")]);
    assert!(html.contains("<h3>מועדון הלקוחות</h3>"), "{html}");
}

#[test]
fn withdrawal_and_objection_on_the_page_take_effect_in_the_next_decision() {
    let (_d, s) = server();
    let email = "ola@example.no";
    let url = person(&s, email, Some("nb"));
    assert_eq!(decision(&s, "analytics", email)["allowed"], true);
    assert_eq!(decision(&s, "email_marketing", email)["allowed"], true);

    // Bad input: each refused, nothing changed.
    for bad in [
        "purpose=analytics",
        "object=email_marketing",
        "purpose=no_such_purpose&purpose=email_marketing",
        "object=order_fulfilment",
    ] {
        let (st, body) = page("POST", &url, Some(bad), &[]);
        assert_eq!(st, 400, "{bad}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "unknown_purpose", "{bad}");
    }
    assert_eq!(decision(&s, "analytics", email)["allowed"], true);
    assert_eq!(decision(&s, "email_marketing", email)["allowed"], true);

    // Untick email marketing, object to analytics.
    let (st, html) = page("POST", &url, Some("object=analytics"), &[]);
    assert_eq!(st, 200);
    assert!(html.contains("role=\"status\">Lagret."), "{html}");
    assert!(html.contains("Du har protestert mot dette."), "{html}");
    assert!(!html.contains("value=\"email_marketing\" checked"));
    let d = decision(&s, "email_marketing", email);
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("withdrawn"))
    );
    let d = decision(&s, "analytics", email);
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("objected"))
    );

    // And back: ticking grants the consent again.
    let (st, _) = page("POST", &url, Some("purpose=email_marketing"), &[]);
    assert_eq!(st, 200);
    assert_eq!(decision(&s, "email_marketing", email)["allowed"], true);
    assert_eq!(
        decision(&s, "analytics", email)["allowed"],
        false,
        "the objection stands"
    );

    // A language that is not a tag is refused when the link is made.
    let id = decision(&s, "email_marketing", email)["profile_id"].clone();
    let (st, v) = admin(
        &s,
        "POST",
        &format!("/api/v1/profiles/{id}/preference-link?language=Norsk!"),
        None,
    );
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_language")));
}

fn smtp_args(sink: &SmtpSink, dir: &Path) -> Vec<String> {
    let ca = dir.join("smtp-ca.pem");
    std::fs::write(&ca, sink.cert_pem()).unwrap();
    vec![
        "--smtp-url".into(),
        sink.url(),
        "--smtp-ca".into(),
        ca.display().to_string(),
        "--mail-from".into(),
        "Kauppa <hello@kauppa.example>".into(),
    ]
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

#[test]
fn a_finnish_subscriber_confirms_and_manages_everything_in_finnish() {
    let sink = SmtpSink::builder().without_starttls().start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &smtp_args(&sink, dir.path()));
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/subscriptions",
        Some(
            &json!({"email": "aino@example.fi", "purposes": ["email_marketing"],
            "language": "fi", "source": "newsletter form"}),
        ),
    );
    assert_eq!(st, 202, "{v}");
    let mail = sink.wait_for(1, Duration::from_secs(20)).remove(0);
    let text = mail.text_body().unwrap();
    assert!(
        text.contains("Uutiset ja tarjoukset sähköpostilla"),
        "{text}"
    );
    let url = link(&text, &format!("{}/c/", s.base));
    // An English browser: the page follows the language of the subscription.
    let (st, html) = page("GET", &url, None, &[("Accept-Language", "en-GB")]);
    assert_eq!(st, 200);
    assert!(html.contains("<html lang=\"fi\""), "{html}");
    assert!(
        html.contains("<h2>Uutiset ja tarjoukset sähköpostilla</h2>"),
        "{html}"
    );
    let (st, html) = page("POST", &url, Some(""), &[("Accept-Language", "en-GB")]);
    assert_eq!(st, 200);
    assert!(html.contains("Kiitos — vahvistettu"), "{html}");
    let prefs = link(&html, &format!("{}/p/", s.base));
    let (st, html) = page("GET", &prefs, None, &[("Accept-Language", "en-GB")]);
    assert_eq!(st, 200);
    assert!(html.contains("<html lang=\"fi\""), "{html}");
    assert!(html.contains("value=\"email_marketing\" checked"), "{html}");
    // A used link's page in the browser's language.
    let (st, html) = page("GET", &url, None, &[("Accept-Language", "tr;q=0.8, xx")]);
    assert_eq!(st, 410);
    assert!(html.contains("Bu bağlantı zaten kullanıldı."), "{html}");
}
