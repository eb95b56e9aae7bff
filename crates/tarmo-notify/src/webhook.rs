//! JSON over HTTP(S) with ureq: the SMS gateway adapter and the generic
//! `post_json` that erasure notifications to processors reuse. HTTPS uses
//! rustls with the ring provider and the public (Mozilla) roots.

use std::fmt;
use std::time::Duration;

use ureq::http::Uri;

use crate::error::scrub;
use crate::{DeliverSms, Error, SendError};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An absolute `http` or `https` URL with a host.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|_| Error::WebhookUrl("not a valid absolute URL"))?;
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http" | "https") => {}
            _ => return Err(Error::WebhookUrl("the scheme must be http or https")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(Error::WebhookUrl("the host is missing"));
        }
        Ok(WebhookUrl(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A query string may carry a gateway's secret.
        let shown = self.0.split_once('?').map_or(self.0.as_str(), |(u, _)| u);
        f.debug_tuple("WebhookUrl").field(&shown).finish()
    }
}

/// POSTs JSON and classifies the answer: 2xx is success; 408, 429 and 5xx are
/// transient; any other status is permanent (redirects are not followed, so a
/// moved endpoint is a configuration error, not something to retry). Keeps a
/// connection pool: make one and share it.
#[derive(Clone)]
pub struct WebhookClient {
    agent: ureq::Agent,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl Default for WebhookClient {
    fn default() -> Self {
        WebhookClient::new(DEFAULT_TIMEOUT)
    }
}

impl WebhookClient {
    /// `timeout` bounds the whole exchange: connect, TLS, request and answer.
    pub fn new(timeout: Duration) -> WebhookClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("tarmo-notify/", env!("CARGO_PKG_VERSION")))
            .build();
        WebhookClient {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// POSTs `body` as `application/json`, with `Authorization: Bearer <token>`
    /// when a token is given. The response body is not read into the error:
    /// a gateway may echo the recipient.
    pub fn post_json(
        &self,
        url: &WebhookUrl,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> Result<(), SendError> {
        let mut request = self
            .agent
            .post(url.as_str())
            .content_type("application/json");
        if let Some(token) = bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let bytes = serde_json::to_vec(body).expect("a JSON value always serialises");
        match request.send(&bytes[..]) {
            Ok(response) => classify_status(response.status().as_u16()),
            Err(error) => Err(classify_error(&error)),
        }
    }
}

fn classify_status(status: u16) -> Result<(), SendError> {
    let detail = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
        .to_owned();
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(SendError::Deferred {
            code: status,
            detail,
        }),
        300..=499 => Err(SendError::Rejected {
            code: status,
            detail,
        }),
        _ => Err(SendError::Protocol {
            detail: format!("unexpected HTTP status {status}"),
        }),
    }
}

fn classify_error(error: &ureq::Error) -> SendError {
    let detail = scrub(&error.to_string());
    match error {
        ureq::Error::Timeout(_)
        | ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_) => SendError::Unreachable { detail },
        _ => SendError::Protocol { detail },
    }
}

/// Sends SMS through an HTTP gateway: POSTs `{"to": "+358…", "body": "…",
/// "id": "…"}` to the configured URL. The gateway deduplicates by `id`.
#[derive(Clone)]
pub struct SmsWebhook {
    url: WebhookUrl,
    bearer: Option<String>,
    client: WebhookClient,
}

impl fmt::Debug for SmsWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsWebhook")
            .field("url", &self.url)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl SmsWebhook {
    /// A gateway at `url` (http or https), with a 10 s timeout and no token.
    pub fn new(url: &str) -> Result<SmsWebhook, Error> {
        Ok(SmsWebhook {
            url: WebhookUrl::parse(url)?,
            bearer: None,
            client: WebhookClient::default(),
        })
    }

    pub fn with_bearer_token(mut self, token: impl Into<String>) -> SmsWebhook {
        self.bearer = Some(token.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> SmsWebhook {
        self.client = WebhookClient::new(timeout);
        self
    }
}

impl DeliverSms for SmsWebhook {
    fn send_sms(&self, to_e164: &str, body: &str, message_id: &str) -> Result<(), SendError> {
        if !is_e164(to_e164) {
            return Err(SendError::invalid(
                "the phone number is not E.164 (+ and up to 15 digits)",
            ));
        }
        if message_id.is_empty() {
            return Err(SendError::invalid("the message id is empty"));
        }
        let payload = serde_json::json!({ "to": to_e164, "body": body, "id": message_id });
        let result = self
            .client
            .post_json(&self.url, &payload, self.bearer.as_deref());
        match &result {
            Ok(()) => tracing::info!(message_id, "sms accepted by the gateway"),
            Err(error) => tracing::warn!(
                message_id,
                permanent = error.is_permanent(),
                %error,
                "sms not sent"
            ),
        }
        result
    }
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len())
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert!(WebhookUrl::parse("https://sms.example.org/send").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/x?k=v").is_ok());
        for bad in [
            "ftp://example.org/",
            "example.org/send",
            "",
            "https://",
            "https:///x",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let url = WebhookUrl::parse("https://h.example/p?token=secret").unwrap();
        assert!(!format!("{url:?}").contains("secret"));
    }

    #[test]
    fn status_classes() {
        assert!(classify_status(200).is_ok());
        assert!(classify_status(204).is_ok());
        for permanent in [301, 400, 401, 403, 404, 422] {
            assert!(
                classify_status(permanent).unwrap_err().is_permanent(),
                "{permanent}"
            );
        }
        for transient in [408, 429, 500, 502, 503] {
            assert!(
                classify_status(transient).unwrap_err().is_transient(),
                "{transient}"
            );
        }
    }

    #[test]
    fn e164() {
        assert!(is_e164("+358401234567"));
        assert!(is_e164("+12025550123"));
        for bad in [
            "358401234567",
            "+0401234567",
            "+",
            "+1",
            "+35840 123",
            "+1234567890123456",
        ] {
            assert!(!is_e164(bad), "{bad:?} accepted");
        }
    }
}
