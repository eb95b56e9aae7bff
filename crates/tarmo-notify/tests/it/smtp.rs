use std::time::{Duration, Instant};

use tarmo_notify::testing::{ReceivedMail, SmtpSink};
use tarmo_notify::{Deliver, Email, SendError, SmtpConfig, SmtpMailer, TlsMode};

use crate::{WAIT, closed_port, email, silent_listener};

fn mailer_for(sink: &SmtpSink) -> SmtpMailer {
    let config = SmtpConfig::parse(&sink.url())
        .unwrap()
        .with_root_certificate(sink.cert_pem().as_bytes())
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    SmtpMailer::new(&config).unwrap()
}

fn send_one(sink: &SmtpSink, email: &Email) -> ReceivedMail {
    mailer_for(sink).send_email(email).unwrap();
    sink.wait_for(1, WAIT).remove(0)
}

const FINNISH: &str = "Hyvää päivää! Vahvistathan tilauksesi – kiitos, että olet mukana.";
const MIXED: &str = "Grüße aus Köln · Hilsen fra Tromsø og Ærø · שלום וברכה · Günaydın, İstanbul'dan selamlar (ğüşıöç)";
const HEBREW: &str = "שלום! נא לאשר את ההרשמה שלך. ללא אישורך שום דבר לא יקרה. תודה רבה ויום נעים.";

#[test]
fn plain_smtp_carries_headers_and_both_parts() {
    let sink = SmtpSink::builder().without_starttls().start();
    assert!(sink.url().ends_with("?tls=none"));
    let mut message = email("ann@example.com", "outbox-42");
    message.subject = format!("{FINNISH} {MIXED}");
    message.text = format!("{FINNISH}\n\n{MIXED}\n\n.leading dot survives\n");
    message.html = format!("<p>{FINNISH}</p>\n<p dir=\"auto\">{MIXED}</p>\n");
    message.list_unsubscribe =
        Some("https://tarmo.example/unsubscribe?token=abc123&list=news".into());

    let mail = send_one(&sink, &message);

    assert_eq!(mail.mail_from, "hello@example.org");
    assert_eq!(mail.rcpt_to, ["ann@example.com"]);
    assert!(!mail.tls);
    assert_eq!(mail.auth, None);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some(message.subject.as_str())
    );
    assert_eq!(
        mail.header("Message-ID").as_deref(),
        Some("<outbox-42@example.org>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe").as_deref(),
        Some("<https://tarmo.example/unsubscribe?token=abc123&list=news>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(mail.header("To").as_deref(), Some("ann@example.com"));
    let from = mail.header("From").unwrap();
    assert!(
        from.contains("Kahvila Ilo") && from.contains("<hello@example.org>"),
        "{from}"
    );
    assert!(mail.header("Date").is_some());
    assert_eq!(mail.header("MIME-Version").as_deref(), Some("1.0"));
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{:?}",
        mail.header("Content-Type")
    );

    let parts = mail.parts();
    let kinds: Vec<&str> = parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["text/plain", "text/html"],
        "plain text first, then HTML"
    );
    for part in &parts {
        assert_eq!(
            part.charset
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("utf-8")
        );
    }
    assert_eq!(mail.text_body().unwrap(), message.text);
    assert_eq!(mail.html_body().unwrap(), message.html);
}

#[test]
fn quoted_printable_and_base64_bodies_both_decode() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mailer = mailer_for(&sink);
    // Mostly ASCII goes quoted-printable; mostly Hebrew goes base64.
    let mut latin = email("ann@example.com", "qp");
    latin.text = format!("{FINNISH}\n");
    latin.html = format!("<p>{FINNISH}</p>\n");
    let mut hebrew = email("ann@example.com", "b64");
    hebrew.subject = HEBREW.to_owned();
    hebrew.text = format!("{HEBREW}\n{HEBREW}\n");
    hebrew.html = format!("<p dir=\"rtl\">{HEBREW}</p>\n");
    mailer.send_email(&latin).unwrap();
    mailer.send_email(&hebrew).unwrap();

    let mails = sink.wait_for(2, WAIT);
    let encodings: Vec<String> = mails
        .iter()
        .flat_map(|m| m.parts())
        .map(|p| p.transfer_encoding)
        .collect();
    assert!(
        encodings.iter().any(|e| e == "quoted-printable"),
        "{encodings:?}"
    );
    assert!(encodings.iter().any(|e| e == "base64"), "{encodings:?}");
    for (mail, sent) in mails.iter().zip([&latin, &hebrew]) {
        assert_eq!(mail.header("Subject").unwrap(), sent.subject);
        assert_eq!(mail.text_body().unwrap(), sent.text);
        assert_eq!(mail.html_body().unwrap(), sent.html);
    }
}

#[test]
fn no_unsubscribe_headers_unless_asked() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mail = send_one(&sink, &email("ann@example.com", "m1"));
    assert_eq!(mail.header("List-Unsubscribe"), None);
    assert_eq!(mail.header("List-Unsubscribe-Post"), None);
}

#[test]
fn a_resend_carries_the_same_message_id() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mailer = mailer_for(&sink);
    let message = email("ann@example.com", "outbox-7@tarmo.example");
    mailer.send_email(&message).unwrap();
    mailer.send_email(&message).unwrap();
    let ids: Vec<_> = sink
        .wait_for(2, WAIT)
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    assert_eq!(
        ids,
        ["<outbox-7@tarmo.example>", "<outbox-7@tarmo.example>"]
    );
}

#[test]
fn starttls_then_auth_plain() {
    let sink = SmtpSink::builder()
        .credentials("notify@example.org", "pä55:w/rd@x")
        .require_tls_for_auth()
        .start();
    let config = SmtpConfig::parse(&sink.url()).unwrap();
    assert_eq!(config.tls(), TlsMode::StartTls);
    assert_eq!(config.username(), Some("notify@example.org"));

    let mail = send_one(&sink, &email("ann@example.com", "m1"));
    assert!(mail.tls, "the message must have come over TLS");
    assert_eq!(
        mail.auth,
        Some(("notify@example.org".into(), "PLAIN".into()))
    );
}

#[test]
fn starttls_then_auth_login() {
    let sink = SmtpSink::builder()
        .credentials("notify", "secret")
        .auth_mechanisms(&["LOGIN"])
        .start();
    let mail = send_one(&sink, &email("ann@example.com", "m1"));
    assert!(mail.tls);
    assert_eq!(mail.auth, Some(("notify".into(), "LOGIN".into())));
}

#[test]
fn implicit_tls_with_auth() {
    let sink = SmtpSink::builder()
        .implicit_tls()
        .credentials("notify", "secret")
        .start();
    assert!(sink.url().starts_with("smtps://"));
    let mail = send_one(&sink, &email("ann@example.com", "m1"));
    assert!(mail.tls);
    assert_eq!(mail.auth, Some(("notify".into(), "PLAIN".into())));
}

#[test]
fn opportunistic_tls_upgrades_when_offered() {
    let sink = SmtpSink::start();
    let config = SmtpConfig::parse(&format!("smtp://{}", sink.addr()))
        .unwrap()
        .with_root_certificate(sink.cert_pem().as_bytes())
        .unwrap();
    assert_eq!(config.tls(), TlsMode::Opportunistic);
    SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap();
    assert!(sink.wait_for(1, WAIT)[0].tls);
}

#[test]
fn an_untrusted_certificate_is_refused_and_retried_later() {
    let sink = SmtpSink::start();
    let config = SmtpConfig::parse(&format!("smtp://{}?tls=starttls", sink.addr())).unwrap();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err();
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(sink.messages().is_empty());
}

#[test]
fn credentials_are_never_sent_without_tls_unless_tls_none() {
    let sink = SmtpSink::builder()
        .without_starttls()
        .credentials("notify", "secret")
        .start();
    // Opportunistic with credentials acts as required STARTTLS.
    let config = SmtpConfig::parse(&format!("smtp://notify:secret@{}", sink.addr())).unwrap();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err();
    assert!(matches!(error, SendError::Protocol { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(sink.messages().is_empty());

    // With tls=none, the operator asked for plain text.
    let mail = send_one(&sink, &email("ann@example.com", "m2"));
    assert!(!mail.tls);
    assert_eq!(mail.auth, Some(("notify".into(), "PLAIN".into())));
}

fn send_error(sink: &SmtpSink) -> SendError {
    mailer_for(sink)
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err()
}

#[test]
fn rcpt_550_is_permanent_and_scrubbed() {
    let sink = SmtpSink::builder()
        .rcpt_reply(550, "5.1.1 <ann@example.com>: Recipient address rejected")
        .start();
    let error = send_error(&sink);
    assert!(
        matches!(error, SendError::Rejected { code: 550, .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("ann@"),
        "the error leaks the address: {shown}"
    );
    assert!(shown.contains("Recipient address rejected"), "{shown}");
    assert!(sink.messages().is_empty());
}

#[test]
fn rcpt_451_is_transient_and_a_retry_succeeds() {
    let sink = SmtpSink::builder()
        .rcpt_reply(451, "4.7.1 Greylisted, try again later")
        .start();
    let error = send_error(&sink);
    assert!(
        matches!(error, SendError::Deferred { code: 451, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(error.code(), Some(451));

    sink.set_rcpt_reply(None);
    mailer_for(&sink)
        .send_email(&email("ann@example.com", "m1"))
        .unwrap();
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
}

#[test]
fn data_replies_are_classified() {
    let sink = SmtpSink::builder()
        .data_reply(554, "5.7.1 Message rejected as spam")
        .start();
    let error = send_error(&sink);
    assert!(
        matches!(error, SendError::Rejected { code: 554, .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());

    sink.set_data_reply(Some((452, "4.3.1 Insufficient system storage")));
    let error = send_error(&sink);
    assert!(
        matches!(error, SendError::Deferred { code: 452, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(sink.messages().is_empty());
}

#[test]
fn a_closed_port_is_transient() {
    let config =
        SmtpConfig::parse(&format!("smtp://127.0.0.1:{}?tls=none", closed_port())).unwrap();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err();
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[test]
fn a_silent_server_times_out() {
    let (_listener, port) = silent_listener();
    let config = SmtpConfig::parse(&format!("smtp://127.0.0.1:{port}?tls=none"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[test]
fn a_wrong_password_is_a_permanent_auth_failure() {
    let sink = SmtpSink::builder().credentials("notify", "right").start();
    let config = SmtpConfig::parse(&format!("smtp://notify:wrong@{}?tls=starttls", sink.addr()))
        .unwrap()
        .with_root_certificate(sink.cert_pem().as_bytes())
        .unwrap();
    let error = SmtpMailer::new(&config)
        .unwrap()
        .send_email(&email("ann@example.com", "m1"))
        .unwrap_err();
    assert!(matches!(error, SendError::Auth { .. }), "{error:?}");
    assert!(error.is_permanent());
    assert!(!format!("{error} {error:?}").contains("wrong"));
    assert!(sink.messages().is_empty());
}

#[test]
fn no_usable_auth_mechanism_is_an_auth_failure() {
    // The server offers AUTH only after STARTTLS, which it does not offer.
    let sink = SmtpSink::builder()
        .without_starttls()
        .require_tls_for_auth()
        .credentials("notify", "secret")
        .start();
    let error = send_error(&sink);
    assert!(matches!(error, SendError::Auth { .. }), "{error:?}");
    assert!(error.is_permanent());
}

#[test]
fn an_invalid_message_is_permanent_and_never_sent() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mailer = mailer_for(&sink);
    let mut cases = Vec::new();
    cases.push(email("not an address", "m1"));
    let mut m = email("ann@example.com", "m2");
    m.list_unsubscribe = Some("http://tarmo.example/u".into());
    cases.push(m);
    let mut m = email("ann@example.com", "m3");
    m.subject = "Hello\r\nBcc: eve@example.net".into();
    cases.push(m);
    for message in cases {
        let error = mailer.send_email(&message).unwrap_err();
        assert!(
            matches!(error, SendError::InvalidMessage { .. }),
            "{error:?}"
        );
        assert!(error.is_permanent());
        assert!(!format!("{error}").contains("not an address"));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(sink.messages().is_empty());
}

#[test]
fn one_connection_carries_a_burst_without_a_nagle_stall_per_message() {
    // Without TCP_NODELAY each message waits ~40 ms for the server's delayed
    // ACK before its final <CRLF>.<CRLF> leaves: 100 messages took 4 s or more.
    for sink in [
        SmtpSink::builder().without_starttls().start(),
        SmtpSink::builder().credentials("notify", "secret").start(),
        SmtpSink::builder()
            .implicit_tls()
            .credentials("notify", "secret")
            .start(),
    ] {
        let mailer = mailer_for(&sink);
        let started = Instant::now();
        for i in 0..100 {
            mailer
                .send_email(&email("ann@example.com", &format!("burst-{i}")))
                .unwrap();
        }
        let elapsed = started.elapsed();
        assert_eq!(sink.wait_for(100, WAIT).len(), 100);
        assert!(
            elapsed < Duration::from_secs(2),
            "{}: {elapsed:?}",
            sink.url()
        );
    }
}

#[test]
fn sending_from_async_code_blocks_a_thread_of_its_own() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mailer = mailer_for(&sink);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            mailer.send_email(&email("ann@example.com", "m1")).unwrap();
            mailer.send_email(&email("ann@example.com", "m2")).unwrap();
        });
    assert_eq!(sink.wait_for(2, WAIT).len(), 2);
}
