use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_io::{AsyncRead as _, AsyncWrite as _};
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox as LettreMailbox, MultiPart, SinglePart};
use lettre::transport::smtp;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, Message};
use percent_encoding::percent_decode_str;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::scrub;
use crate::{Deliver, Email, Error, SendError};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text only (`tls=none`): for a relay on the same host or a test peer.
    None,
    /// Require STARTTLS (`tls=starttls`); fail if the server does not offer it.
    StartTls,
    /// Use STARTTLS when the server offers it (`tls=opportunistic`, the
    /// default for `smtp://`). With credentials this acts as [`TlsMode::StartTls`]:
    /// a password is never sent in clear because an attacker stripped the offer.
    Opportunistic,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// Where and how to send email, parsed from a URL:
///
/// ```text
/// smtp://[user[:password]@]host[:port][?tls=none|starttls|opportunistic][&helo=name]
/// smtps://[user[:password]@]host[:port][?helo=name]
/// ```
///
/// `smtp` defaults to port 25 and `tls=opportunistic`; `smtps` to port 465 and
/// implicit TLS. User and password are percent-decoded. `helo` is the name
/// this client gives in `EHLO` (default: the address literal `[127.0.0.1]`).
/// An IPv6 host is written in brackets.
///
/// `Debug` redacts the password.
#[derive(Clone)]
pub struct SmtpConfig {
    host: String,
    port: u16,
    tls: TlsMode,
    username: Option<String>,
    password: String,
    hello_name: Option<String>,
    extra_roots: Vec<CertificateDer<'static>>,
    timeout: Duration,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("hello_name", &self.hello_name)
            .field("extra_roots", &self.extra_roots.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SmtpConfig {
    pub fn parse(url: &str) -> Result<SmtpConfig, Error> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::SmtpUrl(
                "expected smtp://host or smtps://host".into(),
            ));
        };
        let (implicit_tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => (false, 25),
            "smtps" => (true, 465),
            _ => return Err(Error::SmtpScheme(scheme.to_owned())),
        };
        if rest.contains('#') {
            return Err(Error::SmtpUrl(
                "a fragment (#) is not allowed; percent-encode # in a password as %23".into(),
            ));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(authority_end);
        let (path, query) = match after.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (after, None),
        };
        if !path.is_empty() && path != "/" {
            return Err(Error::SmtpUrl("a path is not allowed".into()));
        }

        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(Error::Port(p.to_owned())),
            },
        };

        let (username, password) = match userinfo {
            None => (None, String::new()),
            Some(userinfo) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user = decode(user, "the user name")?;
                if user.is_empty() {
                    return Err(Error::SmtpUrl("the user name is empty".into()));
                }
                (Some(user), decode(pass, "the password")?)
            }
        };

        let mut tls = None;
        let mut hello_name = None;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "tls" if tls.is_some() => return Err(Error::SmtpUrl("tls is given twice".into())),
                "tls" if implicit_tls => {
                    return Err(Error::SmtpUrl(
                        "tls is not allowed with smtps://, which always uses implicit TLS".into(),
                    ));
                }
                "tls" => {
                    tls = Some(match value.to_ascii_lowercase().as_str() {
                        "none" => TlsMode::None,
                        "starttls" => TlsMode::StartTls,
                        "opportunistic" => TlsMode::Opportunistic,
                        _ => return Err(Error::Tls(value.to_owned())),
                    });
                }
                "helo" if hello_name.is_some() => {
                    return Err(Error::SmtpUrl("helo is given twice".into()));
                }
                "helo" => {
                    if !is_host_name(value) {
                        return Err(Error::SmtpUrl("helo must be an ASCII domain name".into()));
                    }
                    hello_name = Some(value.to_ascii_lowercase());
                }
                _ => {
                    return Err(Error::SmtpUrl(format!(
                        "unknown parameter {key:?}: expected tls or helo"
                    )));
                }
            }
        }
        let tls = match (implicit_tls, tls) {
            (true, _) => TlsMode::Implicit,
            (false, Some(tls)) => tls,
            (false, None) => TlsMode::Opportunistic,
        };

        Ok(SmtpConfig {
            host,
            port,
            tls,
            username,
            password,
            hello_name,
            extra_roots: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Trusts the certificates in `pem` as roots, besides the public (Mozilla)
    /// roots: for a relay with a private CA, or a test peer's self-signed
    /// certificate. There is deliberately no way to skip verification.
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Result<SmtpConfig, Error> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(e.to_string()))?;
        if certs.is_empty() {
            return Err(Error::Certificate("no CERTIFICATE block in the PEM".into()));
        }
        self.extra_roots.extend(certs);
        Ok(self)
    }

    /// The limit for connecting and for each read and write (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> SmtpConfig {
        self.timeout = timeout;
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    pub fn hello_name(&self) -> Option<&str> {
        self.hello_name.as_deref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    #[cfg(test)]
    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<&str>), Error> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(Error::SmtpUrl("unclosed [ in the host".into()));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Error::SmtpUrl("invalid IPv6 address in brackets".into()));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(Error::SmtpUrl("unexpected text after ]".into())),
            },
        };
        (ip.to_owned(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err(Error::SmtpUrl("the host is missing".into()));
        }
        if !is_host_name(host) {
            return Err(Error::SmtpUrl(
                "the host must be an ASCII name (punycode for IDN), an IPv4 address or [IPv6]"
                    .into(),
            ));
        }
        (host.to_ascii_lowercase(), port)
    };
    Ok((host, port))
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn decode(s: &str, what: &str) -> Result<String, Error> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::SmtpUrl(format!("{what} is not valid percent-encoded UTF-8")))
}

/// Sends email over SMTP with lettre, reusing one connection: a campaign of
/// thousands would otherwise pay EHLO, TLS and AUTH for each message.
///
/// The socket is opened here, with `TCP_NODELAY`, and handed to lettre's
/// lower-level connection: lettre writes a message's body and its final
/// `<CRLF>.<CRLF>` in two writes, and with Nagle's algorithm the second waits
/// for the server's delayed ACK (about 40 ms a message, a ceiling of ~20
/// emails/s). lettre's blocking transport offers no way to set the option, so
/// its async connection runs on a small current-thread runtime inside the
/// blocking [`Deliver`] call (made from async code, it blocks a thread of its own).
///
/// A parked connection is tested (NOOP) before reuse and dropped after a minute
/// idle, or when a send broke it; clones share the connection. STARTTLS,
/// implicit TLS and AUTH are lettre's own steps, in the same order as its
/// blocking transport.
#[derive(Clone)]
pub struct SmtpMailer {
    settings: Arc<Settings>,
    state: Arc<Mutex<State>>,
}

struct Settings {
    host: String,
    port: u16,
    security: Security,
    hello_name: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
}

enum Security {
    None,
    Opportunistic(TlsParameters),
    Required(TlsParameters),
    Implicit(TlsParameters),
}

#[derive(Default)]
struct State {
    runtime: Option<tokio::runtime::Runtime>,
    parked: Option<Parked>,
}

struct Parked {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// How long a connection may sit unused before it is dropped rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer").finish_non_exhaustive()
    }
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, Error> {
        let tls_parameters = || -> Result<TlsParameters, Error> {
            let mut builder = TlsParameters::builder(config.host.clone());
            for der in &config.extra_roots {
                let cert = Certificate::from_der(der.to_vec())
                    .map_err(|e| Error::Certificate(e.to_string()))?;
                builder = builder.add_root_certificate(cert);
            }
            builder
                .build_rustls()
                .map_err(|e| Error::Certificate(e.to_string()))
        };
        let security = match config.tls {
            TlsMode::None => Security::None,
            TlsMode::StartTls => Security::Required(tls_parameters()?),
            TlsMode::Opportunistic if config.username.is_some() => {
                Security::Required(tls_parameters()?)
            }
            TlsMode::Opportunistic => Security::Opportunistic(tls_parameters()?),
            TlsMode::Implicit => Security::Implicit(tls_parameters()?),
        };
        let settings = Settings {
            host: config.host.clone(),
            port: config.port,
            security,
            hello_name: match &config.hello_name {
                Some(name) => ClientId::Domain(name.clone()),
                None => ClientId::default(),
            },
            credentials: config
                .username
                .as_ref()
                .map(|user| Credentials::new(user.clone(), config.password.clone())),
            timeout: config.timeout,
        };
        Ok(SmtpMailer {
            settings: Arc::new(settings),
            state: Arc::default(),
        })
    }

    fn send(&self, message: &Message) -> Result<(), Fail> {
        let envelope = message.envelope();
        let body = message.formatted();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { runtime, parked } = &mut *state;
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => runtime.insert(
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .map_err(Fail::Io)?,
            ),
        };
        let mut send = || runtime.block_on(self.settings.send(parked, envelope, &body));
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from async code after all: a runtime cannot be blocked on
            // inside another, so block a thread of its own instead.
            std::thread::scope(|scope| scope.spawn(send).join())
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        } else {
            send()
        }
    }
}

impl Settings {
    async fn send(
        &self,
        parked: &mut Option<Parked>,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<(), Fail> {
        let reused = match parked.take() {
            Some(mut p) if p.since.elapsed() < IDLE_TIMEOUT => {
                match timeout(self.timeout, p.connection.test_connected()).await {
                    Ok(true) => Some(p.connection),
                    _ => None,
                }
            }
            _ => None,
        };
        let mut connection = match reused {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        match timeout(self.timeout, connection.send(envelope, body)).await {
            Err(_) => Err(Fail::Timeout),
            Ok(result) => {
                if !connection.has_broken() {
                    *parked = Some(Parked {
                        connection,
                        since: Instant::now(),
                    });
                }
                result.map(drop).map_err(Fail::Smtp)
            }
        }
    }

    /// Opens the socket (with `TCP_NODELAY`), then greeting and EHLO, TLS and
    /// AUTH as lettre's blocking transport does them, each step within the timeout.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Fail> {
        let limit = self.timeout;
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(Fail::Io)?;
        let mut last_error = None;
        let mut stream = None;
        for addr in addrs {
            match timeout(limit, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => last_error = Some(Fail::Io(e)),
                Err(_) => last_error = Some(Fail::Timeout),
            }
        }
        let Some(stream) = stream else {
            return Err(last_error.unwrap_or_else(|| {
                Fail::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the host resolved to no address",
                ))
            }));
        };
        stream.set_nodelay(true).map_err(Fail::Io)?;

        let mut connection = match &self.security {
            Security::Implicit(tls) => {
                within(limit, async {
                    #[allow(deprecated)]
                    let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(stream));
                    stream.upgrade_tls(tls.clone()).await?;
                    AsyncSmtpConnection::connect_with_transport(
                        Box::new(Upgraded(stream)),
                        &self.hello_name,
                    )
                    .await
                })
                .await?
            }
            _ => {
                within(
                    limit,
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello_name),
                )
                .await?
            }
        };
        match &self.security {
            Security::Opportunistic(tls) if connection.can_starttls() => {
                within(limit, connection.starttls(tls.clone(), &self.hello_name)).await?;
            }
            Security::Required(tls) => {
                within(limit, connection.starttls(tls.clone(), &self.hello_name)).await?;
            }
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            within(limit, connection.auth(&MECHANISMS, credentials)).await?;
        }
        Ok(connection)
    }
}

async fn within<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, smtp::Error>>,
) -> Result<T, Fail> {
    match timeout(limit, step).await {
        Ok(result) => result.map_err(Fail::Smtp),
        Err(_) => Err(Fail::Timeout),
    }
}

/// Why a send failed before [`classify`] turns it into a [`SendError`].
enum Fail {
    Smtp(smtp::Error),
    Io(io::Error),
    Timeout,
}

/// lettre's stream after an implicit-TLS handshake, seen through tokio's I/O
/// traits so that lettre's connection can be built on it.
#[allow(deprecated)]
#[derive(Debug)]
struct Upgraded(AsyncNetworkStream);

impl tokio::io::AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match Pin::new(&mut self.get_mut().0).poll_read(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

impl AsyncTokioStream for Upgraded {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

impl Deliver for SmtpMailer {
    fn send_email(&self, email: &Email) -> Result<(), SendError> {
        let message_id = email.message_id.as_str();
        let result =
            build_message(email).and_then(|message| self.send(&message).map_err(|e| classify(&e)));
        match &result {
            Ok(()) => tracing::info!(message_id, "email accepted by the SMTP server"),
            Err(error) => tracing::warn!(
                message_id,
                permanent = error.is_permanent(),
                %error,
                "email not sent"
            ),
        }
        result
    }
}

const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

fn build_message(email: &Email) -> Result<Message, SendError> {
    let from: Address = email
        .from
        .address
        .parse()
        .map_err(|_| SendError::invalid("the sender address is invalid"))?;
    let to: Address = email
        .to
        .parse()
        .map_err(|_| SendError::invalid("the recipient address is invalid"))?;
    if email.subject.contains(['\r', '\n']) || email.from.name.contains(['\r', '\n']) {
        return Err(SendError::invalid(
            "the subject or the sender name contains a line break",
        ));
    }
    let bare_id = !email.message_id.as_str().contains('@');
    if bare_id && !from.domain().is_ascii() {
        return Err(SendError::invalid(
            "a message id without @ needs an ASCII (punycode) sender domain",
        ));
    }
    let from_name = (!email.from.name.is_empty()).then(|| email.from.name.clone());
    let mut builder = Message::builder()
        .from(LettreMailbox::new(from_name, from.clone()))
        .to(LettreMailbox::new(None, to))
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.header_value(from.domain())));
    if let Some(url) = &email.list_unsubscribe {
        check_unsubscribe_url(url)?;
        builder = builder
            .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")))
            .raw_header(HeaderValue::new(
                LIST_UNSUBSCRIBE_POST,
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    builder
        .multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(email.text.clone()))
                .singlepart(SinglePart::html(email.html.clone())),
        )
        .map_err(|e| SendError::invalid(scrub(&e.to_string())))
}

/// RFC 8058 asks for HTTPS. The one exception is a server on this machine's
/// loopback interface (development and tests), where there is no network to
/// protect the link from.
fn check_unsubscribe_url(url: &str) -> Result<(), SendError> {
    let lower = url.to_ascii_lowercase();
    let loopback = [
        "http://127.0.0.1:",
        "http://127.0.0.1/",
        "http://localhost:",
        "http://localhost/",
        "http://[::1]:",
        "http://[::1]/",
    ]
    .iter()
    .any(|p| lower.starts_with(p));
    let https = (url.len() > "https://".len() && lower.starts_with("https://")) || loopback;
    // RFC 2369: the URL goes between angle brackets in a comma-separated list.
    let plain = url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b',' | b'"'));
    if https && plain {
        Ok(())
    } else {
        Err(SendError::invalid(
            "the unsubscribe URL must be https:// (or http:// on loopback) with no spaces, <, >, commas or quotes",
        ))
    }
}

/// SMTP reply codes that mean the credentials (or the lack of them) are the problem.
const AUTH_CODES: [u16; 4] = [530, 534, 535, 538];

fn classify(fail: &Fail) -> SendError {
    let error = match fail {
        Fail::Smtp(error) => error,
        Fail::Io(error) => {
            return SendError::Unreachable {
                detail: scrub(&format!("Connection error: {error}")),
            };
        }
        Fail::Timeout => {
            return SendError::Unreachable {
                detail: "the SMTP server did not answer in time".into(),
            };
        }
    };
    let server_text = || {
        error
            .source()
            .map(|s| scrub(&s.to_string()))
            .unwrap_or_default()
    };
    if let Some(code) = error.status() {
        let code = u16::from(code);
        let detail = server_text();
        return if error.is_transient() {
            SendError::Deferred { code, detail }
        } else if AUTH_CODES.contains(&code) {
            SendError::Auth {
                detail: format!("{code} {detail}"),
            }
        } else {
            SendError::Rejected { code, detail }
        };
    }
    let detail = scrub(&error.to_string());
    if error.is_timeout() || error.is_tls() {
        SendError::Unreachable { detail }
    } else if error.is_client() && detail.contains("authentication mechanism") {
        SendError::Auth { detail }
    } else if error.is_client() || error.is_response() {
        SendError::Protocol { detail }
    } else {
        SendError::Unreachable { detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;

    #[test]
    fn defaults() {
        let c = SmtpConfig::parse("smtp://mail.example.org").unwrap();
        assert_eq!(
            (c.host(), c.port(), c.tls()),
            ("mail.example.org", 25, TlsMode::Opportunistic)
        );
        assert_eq!(c.username(), None);
        assert_eq!(c.timeout(), DEFAULT_TIMEOUT);
        let c = SmtpConfig::parse("smtps://u:p@Mail.Example.org/").unwrap();
        assert_eq!(
            (c.host(), c.port(), c.tls()),
            ("mail.example.org", 465, TlsMode::Implicit)
        );
        assert_eq!((c.username(), c.password()), (Some("u"), "p"));
    }

    #[test]
    fn full_form() {
        let c = SmtpConfig::parse(
            "SMTP://notify%40example.org:p%3As%2Fs%20%C3%A4@smtp.example.org:587?tls=starttls&helo=tarmo.example.org",
        )
        .unwrap();
        assert_eq!(c.username(), Some("notify@example.org"));
        assert_eq!(c.password(), "p:s/s ä");
        assert_eq!(
            (c.host(), c.port(), c.tls()),
            ("smtp.example.org", 587, TlsMode::StartTls)
        );
        assert_eq!(c.hello_name(), Some("tarmo.example.org"));
        assert_eq!(
            SmtpConfig::parse("smtp://h?tls=NONE").unwrap().tls(),
            TlsMode::None
        );
        assert_eq!(
            SmtpConfig::parse("smtp://h?tls=opportunistic")
                .unwrap()
                .tls(),
            TlsMode::Opportunistic
        );
        let c = SmtpConfig::parse("smtp://[::1]:2525?tls=none").unwrap();
        assert_eq!((c.host(), c.port()), ("::1", 2525));
        let c = SmtpConfig::parse("smtp://u@127.0.0.1").unwrap();
        assert_eq!(
            (c.username(), c.password(), c.host()),
            (Some("u"), "", "127.0.0.1")
        );
    }

    #[test]
    fn errors_are_specific() {
        let err = |url: &str| SmtpConfig::parse(url).unwrap_err();
        assert_eq!(err("http://h"), Error::SmtpScheme("http".into()));
        assert_eq!(err("smtp://h:0"), Error::Port("0".into()));
        assert_eq!(err("smtp://h:65536"), Error::Port("65536".into()));
        assert_eq!(err("smtp://h:"), Error::Port("".into()));
        assert_eq!(err("smtp://h:+25"), Error::Port("+25".into()));
        assert_eq!(err("smtp://h:2x"), Error::Port("2x".into()));
        assert_eq!(err("smtp://h?tls=always"), Error::Tls("always".into()));
        for url in [
            "mail.example.org",
            "smtp://",
            "smtp://:p@h",
            "smtp://u:%FF@h",
            "smtp://h/path",
            "smtp://h#x",
            "smtp://h?foo=1",
            "smtp://h?tls=none&tls=none",
            "smtps://h?tls=none",
            "smtp://exämple.org",
            "smtp://[::1",
            "smtp://[nope]:25",
            "smtp://[::1]x",
            "smtp://::1",
            "smtp://h?helo=not%20a%20name",
        ] {
            assert!(
                matches!(SmtpConfig::parse(url), Err(Error::SmtpUrl(_))),
                "{url}: {:?}",
                SmtpConfig::parse(url)
            );
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let e = SmtpConfig::parse("smtp://u:hunter2@h:bad").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = SmtpConfig::parse("smtp://u:hunter2@h?x=1").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let c = SmtpConfig::parse("smtp://u:hunter2@h").unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("[redacted]"),
            "{debug}"
        );
    }

    #[test]
    fn root_certificates_must_be_pem_certificates() {
        let c = SmtpConfig::parse("smtps://h").unwrap();
        assert!(matches!(
            c.clone().with_root_certificate(b""),
            Err(Error::Certificate(_))
        ));
        assert!(matches!(
            c.with_root_certificate(
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            ),
            Err(Error::Certificate(_))
        ));
    }

    #[test]
    fn unsubscribe_urls() {
        assert!(check_unsubscribe_url("https://example.org/u?t=abc&x=1").is_ok());
        assert!(check_unsubscribe_url("HTTPS://example.org/u").is_ok());
        assert!(check_unsubscribe_url("http://127.0.0.1:8080/u/x").is_ok());
        assert!(check_unsubscribe_url("http://localhost/u/x").is_ok());
        for bad in [
            "http://example.org/u",
            "http://127.0.0.1.evil.example/u",
            "http://localhost.evil.example/u",
            "https://",
            "mailto:u@example.org",
            "https://example.org/u a",
            "https://example.org/u>, <https://evil",
            "https://example.org/\r\nBcc: x",
            "https://exämple.org/",
        ] {
            assert!(check_unsubscribe_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn tls_choice() -> impl Strategy<Value = Option<(&'static str, TlsMode)>> {
        prop_oneof![
            Just(None),
            Just(Some(("none", TlsMode::None))),
            Just(Some(("starttls", TlsMode::StartTls))),
            Just(Some(("opportunistic", TlsMode::Opportunistic))),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(url in "\\PC{0,60}") {
            let _ = SmtpConfig::parse(&url);
        }

        #[test]
        fn parse_never_panics_on_near_misses(url in "(smtps?|SMTP|http)://[a-zA-Z0-9:@%\\[\\]./?&=#_-]{0,40}") {
            let _ = SmtpConfig::parse(&url);
        }

        #[test]
        fn round_trip(
            user in "\\PC{1,16}",
            password in "\\PC{0,16}",
            host in "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,6}){0,3}",
            port in proptest::option::of(1u16..),
            implicit in any::<bool>(),
            tls in tls_choice(),
        ) {
            let scheme = if implicit { "smtps" } else { "smtp" };
            let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = match (implicit, tls) {
                (false, Some((name, _))) => format!("?tls={name}"),
                _ => String::new(),
            };
            let url = format!(
                "{scheme}://{}:{}@{host}{port_part}{query}",
                utf8_percent_encode(&user, NON_ALPHANUMERIC),
                utf8_percent_encode(&password, NON_ALPHANUMERIC),
            );
            let c = SmtpConfig::parse(&url).unwrap();
            prop_assert_eq!(c.username(), Some(user.as_str()));
            prop_assert_eq!(c.password(), password.as_str());
            prop_assert_eq!(c.host(), host.as_str());
            prop_assert_eq!(c.port(), port.unwrap_or(if implicit { 465 } else { 25 }));
            let expected_tls = match (implicit, tls) {
                (true, _) => TlsMode::Implicit,
                (false, Some((_, mode))) => mode,
                (false, None) => TlsMode::Opportunistic,
            };
            prop_assert_eq!(c.tls(), expected_tls);
        }

        #[test]
        fn debug_never_shows_the_password(secret in "[a-zA-Z0-9]{6,20}", user in "[a-z]{1,8}") {
            let password = format!("Pw{secret}");
            let c = SmtpConfig::parse(&format!("smtp://{user}:{password}@h")).unwrap();
            let debug = format!("{:?}", c);
            prop_assert!(!debug.contains(&password));
        }
    }
}
