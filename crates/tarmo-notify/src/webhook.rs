//! JSON over HTTP(S) with ureq: the SMS gateway adapter and the generic
//! `post_json` that erasure notifications to processors reuse. HTTPS uses
//! rustls with the ring provider and the public (Mozilla) roots.
//!
//! A webhook URL is given by staff (a processor's) or the operator (the SMS
//! gateway), and the status it answers is shown: pointed at the internal
//! network it would be a probe of it. So unless the operator allows it
//! ([`WebhookTargets::Any`]), a webhook must be `https` and reach only
//! public addresses; this is checked on the URL as given and again on the
//! addresses the name resolves to at each connection (a name that resolves
//! to a public address when registered and to 127.0.0.1 later is refused).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

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

    /// Parse, and check it against what webhooks may reach.
    pub fn parse_for(url: &str, targets: WebhookTargets) -> Result<WebhookUrl, Error> {
        let parsed = WebhookUrl::parse(url)?;
        parsed.check(targets)?;
        Ok(parsed)
    }

    /// Is it `https`, and does its host (as written) name no private,
    /// loopback or link-local address?
    pub fn check(&self, targets: WebhookTargets) -> Result<(), Error> {
        if targets == WebhookTargets::Any {
            return Ok(());
        }
        let uri: Uri = self
            .0
            .parse()
            .map_err(|_| Error::WebhookUrl("not a valid absolute URL"))?;
        if !uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err(Error::WebhookNotHttps);
        }
        let host = uri.host().unwrap_or("");
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") || name.is_empty() {
            return Err(Error::WebhookTargetPrivate);
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err(Error::WebhookTargetPrivate);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What webhooks may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookTargets {
    /// Only `https` URLs whose host resolves to public addresses.
    #[default]
    Public,
    /// Anything, `http` and private networks too (`allow_private_webhooks`:
    /// a gateway on the operator's own network, tests on loopback).
    Any,
}

/// Whether an address is on the public internet: not loopback, private
/// (RFC 1918, unique local), link-local (cloud metadata services live at
/// 169.254.169.254), shared (CGNAT), multicast, documentation, benchmarking
/// or otherwise reserved. IPv4 inside IPv6 (mapped, NAT64) is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b, c, d] = v6.octets()[12..] else {
                    return false;
                };
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from(0u128)
                // IPv4-compatible (::a.b.c.d, deprecated) and other
                // addresses in ::/96.
                || seg[..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

/// Resolves as the system does, then keeps only the addresses webhooks may
/// reach; ureq connects only to what this returns, so the check holds at
/// connection time.
#[derive(Debug)]
struct GuardedResolver {
    targets: WebhookTargets,
    inner: DefaultResolver,
}

/// A webhook's host resolved only to addresses it may not reach.
#[derive(Debug)]
struct PrivateTarget;

impl fmt::Display for PrivateTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the webhook's host resolves to a private, loopback or link-local address")
    }
}

impl std::error::Error for PrivateTarget {}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let found = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for addr in reachable(&found, self.targets)? {
            kept.push(addr);
        }
        Ok(kept)
    }
}

/// The resolved addresses a webhook may connect to; an error if none.
fn reachable(
    found: &[std::net::SocketAddr],
    targets: WebhookTargets,
) -> Result<Vec<std::net::SocketAddr>, ureq::Error> {
    let kept: Vec<_> = found
        .iter()
        .filter(|a| targets == WebhookTargets::Any || is_public(a.ip()))
        .copied()
        .collect();
    if kept.is_empty() {
        return Err(ureq::Error::Other(Box::new(PrivateTarget)));
    }
    Ok(kept)
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
    targets: WebhookTargets,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl Default for WebhookClient {
    fn default() -> Self {
        WebhookClient::new(DEFAULT_TIMEOUT, WebhookTargets::Public)
    }
}

impl WebhookClient {
    /// `timeout` bounds the whole exchange: connect, TLS, request and answer;
    /// `targets` is what the URLs it is given may reach.
    pub fn new(timeout: Duration, targets: WebhookTargets) -> WebhookClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A proxy would be resolved instead of the target, and the
            // target's addresses would go unchecked.
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("tarmo-notify/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = GuardedResolver {
            targets,
            inner: DefaultResolver::default(),
        };
        WebhookClient {
            agent: ureq::Agent::with_parts(config, DefaultConnector::default(), resolver),
            targets,
        }
    }

    /// What the URLs this client is given may reach.
    pub fn targets(&self) -> WebhookTargets {
        self.targets
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
        if let Err(e) = url.check(self.targets) {
            return Err(SendError::TargetRefused {
                detail: e.to_string(),
            });
        }
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
        ureq::Error::Other(e) if e.is::<PrivateTarget>() => SendError::TargetRefused { detail },
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
    /// A gateway at `url`, which must be one `targets` allows, with a 10 s
    /// timeout and no token.
    pub fn new(url: &str, targets: WebhookTargets) -> Result<SmsWebhook, Error> {
        Ok(SmsWebhook {
            url: WebhookUrl::parse_for(url, targets)?,
            bearer: None,
            client: WebhookClient::new(DEFAULT_TIMEOUT, targets),
        })
    }

    pub fn with_bearer_token(mut self, token: impl Into<String>) -> SmsWebhook {
        self.bearer = Some(token.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> SmsWebhook {
        self.client = WebhookClient::new(timeout, self.client.targets());
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
    fn webhooks_must_be_https_to_public_hosts_unless_allowed() {
        use WebhookTargets::*;
        assert!(WebhookUrl::parse_for("https://hooks.example.org/erase", Public).is_ok());
        assert!(WebhookUrl::parse_for("https://93.184.215.14/x", Public).is_ok());
        assert_eq!(
            WebhookUrl::parse_for("http://hooks.example.org/erase", Public),
            Err(Error::WebhookNotHttps)
        );
        for private in [
            "https://127.0.0.1/x",
            "https://127.8.9.10:8443/x",
            "https://localhost/x",
            "https://LOCALHOST./x",
            "https://api.localhost/x",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[::]/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
        ] {
            assert_eq!(
                WebhookUrl::parse_for(private, Public),
                Err(Error::WebhookTargetPrivate),
                "{private}"
            );
            assert!(WebhookUrl::parse_for(private, Any).is_ok(), "{private}");
        }
        assert!(WebhookUrl::parse_for("http://127.0.0.1:9/x", Any).is_ok());
        assert!(is_public("8.8.8.8".parse().unwrap()));
        assert!(is_public("2606:4700::1111".parse().unwrap()));
        assert!(!is_public("172.16.5.4".parse().unwrap()));
        assert!(is_public("172.32.0.1".parse().unwrap()));
    }

    #[test]
    fn a_name_that_resolves_to_loopback_is_refused_at_connection_time() {
        // Passes the check on the URL as written (a name, https), as a name
        // whose DNS answer changed after registration would.
        use std::net::ToSocketAddrs;
        let found: Vec<_> = ("localhost", 9).to_socket_addrs().unwrap().collect();
        assert!(!found.is_empty());
        let e = reachable(&found, WebhookTargets::Public).unwrap_err();
        assert!(
            matches!(&e, ureq::Error::Other(x) if x.is::<PrivateTarget>()),
            "{e:?}"
        );
        assert!(matches!(
            classify_error(&e),
            SendError::TargetRefused { .. }
        ));
        assert_eq!(reachable(&found, WebhookTargets::Any).unwrap(), found);
        let public: Vec<std::net::SocketAddr> = vec![
            "10.0.0.1:443".parse().unwrap(),
            "93.184.215.14:443".parse().unwrap(),
        ];
        assert_eq!(
            reachable(&public, WebhookTargets::Public).unwrap(),
            vec![public[1]]
        );
        // Through the client, the answer is a refusal, not an attempt.
        let client = WebhookClient::new(Duration::from_secs(2), WebhookTargets::Public);
        let plain = WebhookUrl::parse("http://127.0.0.1:9/erase").unwrap();
        let e = client
            .post_json(&plain, &serde_json::json!({}), None)
            .unwrap_err();
        assert!(matches!(e, SendError::TargetRefused { .. }), "{e:?}");
        assert!(e.is_permanent());
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
