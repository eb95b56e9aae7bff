use std::time::{Duration, Instant};

use serde_json::json;
use tarmo_notify::testing::HttpSink;
use tarmo_notify::{DeliverSms, SendError, SmsWebhook, WebhookClient, WebhookTargets, WebhookUrl};

use crate::{WAIT, closed_port, silent_listener};

const BODY: &str = "Kahvila Ilo: vahvista valintasi: https://tarmo.example/c/abc Mitään ei tapahdu, ellet vahvista.";

#[test]
fn posts_json_with_the_bearer_token() {
    let sink = HttpSink::start();
    let sms = SmsWebhook::new(&format!("{}/v1/sms", sink.url()), WebhookTargets::Any)
        .unwrap()
        .with_bearer_token("tok-123");
    sms.send_sms("+358401234567", BODY, "outbox-7").unwrap();

    let request = sink.wait_for(1, WAIT).remove(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/sms");
    assert_eq!(request.header("Authorization"), Some("Bearer tok-123"));
    assert_eq!(request.header("Content-Type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({ "to": "+358401234567", "body": BODY, "id": "outbox-7" })
    );
    assert_eq!(request.status, 200);
}

#[test]
fn no_token_no_authorization_header() {
    let sink = HttpSink::start();
    let sms = SmsWebhook::new(&format!("{}/sms", sink.url()), WebhookTargets::Any).unwrap();
    sms.send_sms("+4712345678", "Hei", "m1").unwrap();
    assert_eq!(sink.wait_for(1, WAIT)[0].header("Authorization"), None);
}

fn status_error(status: u16) -> SendError {
    let sink = HttpSink::start();
    sink.set_status(status);
    SmsWebhook::new(&sink.url(), WebhookTargets::Any)
        .unwrap()
        .send_sms("+358401234567", BODY, "m1")
        .unwrap_err()
}

#[test]
fn client_errors_are_permanent() {
    for status in [400, 401, 403, 404, 422] {
        let error = status_error(status);
        assert!(
            matches!(error, SendError::Rejected { code, .. } if code == status),
            "{status}: {error:?}"
        );
        assert!(error.is_permanent(), "{status}");
    }
}

#[test]
fn server_errors_and_rate_limits_are_transient() {
    for status in [500, 502, 503, 408, 429] {
        let error = status_error(status);
        assert!(
            matches!(error, SendError::Deferred { code, .. } if code == status),
            "{status}: {error:?}"
        );
        assert!(error.is_transient(), "{status}");
    }
}

#[test]
fn a_gateway_that_fails_twice_then_recovers() {
    let sink = HttpSink::start();
    sink.fail_next(2, 503);
    let sms = SmsWebhook::new(&sink.url(), WebhookTargets::Any).unwrap();
    let results: Vec<_> = (0..3)
        .map(|_| sms.send_sms("+358401234567", BODY, "outbox-9"))
        .collect();
    assert!(results[0].as_ref().unwrap_err().is_transient());
    assert!(results[1].as_ref().unwrap_err().is_transient());
    assert_eq!(results[2], Ok(()));
    let requests = sink.wait_for(3, WAIT);
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(
        requests.iter().all(|r| r.json()["id"] == "outbox-9"),
        "the id is stable"
    );
}

#[test]
fn a_closed_port_is_transient() {
    let sms = SmsWebhook::new(
        &format!("http://127.0.0.1:{}/sms", closed_port()),
        WebhookTargets::Any,
    )
    .unwrap();
    let error = sms.send_sms("+358401234567", BODY, "m1").unwrap_err();
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[test]
fn a_silent_gateway_times_out() {
    let (_listener, port) = silent_listener();
    let sms = SmsWebhook::new(&format!("http://127.0.0.1:{port}/sms"), WebhookTargets::Any)
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = sms.send_sms("+358401234567", BODY, "m1").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[test]
fn an_invalid_number_is_permanent_and_never_sent() {
    let sink = HttpSink::start();
    let sms = SmsWebhook::new(&sink.url(), WebhookTargets::Any).unwrap();
    for bad in ["0401234567", "+358 40 123", "+", ""] {
        let error = sms.send_sms(bad, BODY, "m1").unwrap_err();
        assert!(
            matches!(error, SendError::InvalidMessage { .. }),
            "{bad:?}: {error:?}"
        );
        assert!(error.is_permanent());
    }
    let error = sms.send_sms("+358401234567", BODY, "").unwrap_err();
    assert!(
        matches!(error, SendError::InvalidMessage { .. }),
        "{error:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(sink.requests().is_empty());
}

#[test]
fn post_json_is_reusable_for_processor_notifications() {
    let sink = HttpSink::start();
    let client = WebhookClient::new(Duration::from_secs(5), WebhookTargets::Any);
    let url = WebhookUrl::parse(&format!("{}/erasure", sink.url())).unwrap();
    let body =
        json!({ "event": "erasure", "subject": "pseudonym-1f3a", "purposes": ["marketing"] });

    client.post_json(&url, &body, None).unwrap();
    sink.set_status(404);
    let error = client.post_json(&url, &body, Some("t")).unwrap_err();
    assert!(error.is_permanent(), "{error:?}");

    let requests = sink.wait_for(2, WAIT);
    assert_eq!(requests[0].json(), body);
    assert_eq!(requests[0].header("Authorization"), None);
    assert_eq!(requests[1].header("Authorization"), Some("Bearer t"));
}

#[test]
fn a_private_or_plain_http_gateway_is_refused_unless_allowed() {
    let sink = HttpSink::start();
    assert_eq!(
        SmsWebhook::new(&sink.url(), WebhookTargets::Public).unwrap_err(),
        tarmo_notify::Error::WebhookNotHttps
    );
    assert_eq!(
        SmsWebhook::new("https://127.0.0.1:1/sms", WebhookTargets::Public).unwrap_err(),
        tarmo_notify::Error::WebhookTargetPrivate
    );
    // A strict client given a URL that was accepted elsewhere sends nothing.
    let client = WebhookClient::new(Duration::from_secs(5), WebhookTargets::Public);
    let url = WebhookUrl::parse(&format!("{}/erasure", sink.url())).unwrap();
    let error = client.post_json(&url, &json!({}), None).unwrap_err();
    assert!(
        matches!(error, SendError::TargetRefused { .. }),
        "{error:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(sink.requests().is_empty());
}
