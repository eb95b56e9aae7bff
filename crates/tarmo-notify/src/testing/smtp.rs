use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::mime::{self, MimePart};
use super::{Listener, Recorder, lock};

const HOST_NAME: &str = "sink.tarmo.test";
/// The longest line the sink accepts (RFC 5321 allows 1,000 with CRLF; be lenient).
const MAX_LINE: usize = 64 * 1024;

/// One message the sink accepted, with the envelope and the raw data as
/// received (after dot-unstuffing, lines ending in CRLF).
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// Whether the message came over TLS (STARTTLS or implicit).
    pub tls: bool,
    /// The user that authenticated and the mechanism it used, if any.
    pub auth: Option<(String, String)>,
}

impl ReceivedMail {
    /// The top-level headers, unfolded, in order, values as sent.
    pub fn headers(&self) -> Vec<(String, String)> {
        mime::parse_headers(mime::split_head_body(&self.data).0)
    }

    /// The first header called `name` (case-insensitive), with RFC 2047
    /// encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        mime::header(&self.headers(), name).map(mime::decode_encoded_words)
    }

    /// Every header called `name`, raw.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The leaf MIME parts, depth first, with transfer encodings undone.
    pub fn parts(&self) -> Vec<MimePart> {
        mime::leaves(&self.data)
    }

    /// The decoded text of the first `text/plain` part.
    pub fn text_body(&self) -> Option<String> {
        self.first_part("text/plain")
    }

    /// The decoded text of the first `text/html` part.
    pub fn html_body(&self) -> Option<String> {
        self.first_part("text/html")
    }

    fn first_part(&self, content_type: &str) -> Option<String> {
        self.parts()
            .into_iter()
            .find(|p| p.content_type == content_type)
            .map(|p| p.text())
    }
}

type Reply = Option<(u16, String)>;

/// How a [`SmtpSink`] behaves. By default it offers STARTTLS, asks for no
/// authentication and accepts every message.
#[derive(Debug, Clone)]
pub struct SmtpSinkBuilder {
    credentials: Option<(String, String)>,
    starttls: bool,
    implicit_tls: bool,
    require_tls_for_auth: bool,
    mechanisms: Vec<String>,
    rcpt_reply: Reply,
    data_reply: Reply,
}

impl Default for SmtpSinkBuilder {
    fn default() -> Self {
        SmtpSinkBuilder {
            credentials: None,
            starttls: true,
            implicit_tls: false,
            require_tls_for_auth: false,
            mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
            rcpt_reply: None,
            data_reply: None,
        }
    }
}

impl SmtpSinkBuilder {
    /// Advertise AUTH and require it before MAIL (530 otherwise); other
    /// credentials get 535.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Do not offer STARTTLS (a plain-text-only server).
    pub fn without_starttls(mut self) -> Self {
        self.starttls = false;
        self
    }

    /// Speak TLS from the first byte, like a port 465 server.
    pub fn implicit_tls(mut self) -> Self {
        self.implicit_tls = true;
        self
    }

    /// Advertise AUTH only after STARTTLS, and answer AUTH before it with 538.
    pub fn require_tls_for_auth(mut self) -> Self {
        self.require_tls_for_auth = true;
        self
    }

    /// The AUTH mechanisms to offer, from `PLAIN` and `LOGIN` (default both).
    pub fn auth_mechanisms(mut self, mechanisms: &[&str]) -> Self {
        self.mechanisms = mechanisms.iter().map(|m| m.to_ascii_uppercase()).collect();
        self
    }

    /// Answer every RCPT TO with this reply, e.g. `(550, "5.1.1 No such user")`.
    pub fn rcpt_reply(mut self, code: u16, text: &str) -> Self {
        self.rcpt_reply = Some((code, text.to_owned()));
        self
    }

    /// Answer the end of every DATA with this reply instead of accepting it.
    pub fn data_reply(mut self, code: u16, text: &str) -> Self {
        self.data_reply = Some((code, text.to_owned()));
        self
    }

    pub fn start(self) -> SmtpSink {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("generate a self-signed certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("a TLS server configuration");

        let shared = Arc::new(Shared {
            settings: Settings {
                credentials: self.credentials.clone(),
                starttls: self.starttls,
                implicit_tls: self.implicit_tls,
                require_tls_for_auth: self.require_tls_for_auth,
                mechanisms: self.mechanisms,
            },
            tls: Arc::new(tls),
            replies: Mutex::new(Replies {
                rcpt: self.rcpt_reply,
                data: self.data_reply,
                delay: Duration::ZERO,
            }),
            received: Recorder::new(),
        });
        let listener = {
            let shared = shared.clone();
            Listener::spawn("smtp-sink", move |stream| {
                let _ = Session::run(stream, &shared);
            })
        };
        SmtpSink {
            cert_pem: certified.cert.pem(),
            credentials: self.credentials,
            starttls: self.starttls,
            implicit_tls: self.implicit_tls,
            shared,
            listener,
        }
    }
}

/// A real SMTP server on 127.0.0.1 that records the messages it accepts.
///
/// It speaks EHLO/HELO, STARTTLS and implicit TLS (with a self-signed
/// certificate made at start: trust [`SmtpSink::cert_pem`]), AUTH PLAIN and
/// LOGIN, MAIL, RCPT, DATA, RSET, NOOP and QUIT. It stops when dropped.
pub struct SmtpSink {
    cert_pem: String,
    credentials: Option<(String, String)>,
    starttls: bool,
    implicit_tls: bool,
    shared: Arc<Shared>,
    listener: Listener,
}

impl SmtpSink {
    /// A sink with the default behaviour (see [`SmtpSinkBuilder`]).
    pub fn start() -> SmtpSink {
        SmtpSinkBuilder::default().start()
    }

    pub fn builder() -> SmtpSinkBuilder {
        SmtpSinkBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    pub fn port(&self) -> u16 {
        self.listener.addr.port()
    }

    /// The certificate the sink presents, to pass to
    /// [`SmtpConfig::with_root_certificate`](crate::SmtpConfig::with_root_certificate).
    /// It is valid for `localhost`, `127.0.0.1` and `::1`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A URL for [`SmtpConfig::parse`](crate::SmtpConfig::parse) that matches
    /// how the sink was built: `smtps://` for implicit TLS, `tls=starttls`
    /// when STARTTLS is offered, `tls=none` when not, and the credentials.
    /// TLS still needs [`SmtpSink::cert_pem`] trusted.
    pub fn url(&self) -> String {
        let userinfo = match &self.credentials {
            Some((user, password)) => format!(
                "{}:{}@",
                utf8_percent_encode(user, NON_ALPHANUMERIC),
                utf8_percent_encode(password, NON_ALPHANUMERIC)
            ),
            None => String::new(),
        };
        let addr = self.addr();
        if self.implicit_tls {
            format!("smtps://{userinfo}{addr}")
        } else if self.starttls {
            format!("smtp://{userinfo}{addr}?tls=starttls")
        } else {
            format!("smtp://{userinfo}{addr}?tls=none")
        }
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.received.all()
    }

    /// Waits until at least `n` messages were accepted and returns all of
    /// them; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        self.shared.received.wait_for(n, timeout, "SMTP messages")
    }

    /// From now on, answer RCPT TO with `reply`, or accept recipients (`None`).
    pub fn set_rcpt_reply(&self, reply: Option<(u16, &str)>) {
        lock(&self.shared.replies).rcpt = reply.map(|(c, t)| (c, t.to_owned()));
    }

    /// From now on, wait this long at the end of DATA before answering (a
    /// slow server, so that a sender can be stopped mid-send).
    pub fn set_data_delay(&self, delay: Duration) {
        lock(&self.shared.replies).delay = delay;
    }

    /// From now on, answer the end of DATA with `reply`, or accept (`None`).
    pub fn set_data_reply(&self, reply: Option<(u16, &str)>) {
        lock(&self.shared.replies).data = reply.map(|(c, t)| (c, t.to_owned()));
    }
}

struct Settings {
    credentials: Option<(String, String)>,
    starttls: bool,
    implicit_tls: bool,
    require_tls_for_auth: bool,
    mechanisms: Vec<String>,
}

struct Replies {
    rcpt: Reply,
    data: Reply,
    /// How long the end of DATA waits before it is answered.
    delay: Duration,
}

struct Shared {
    settings: Settings,
    tls: Arc<ServerConfig>,
    replies: Mutex<Replies>,
    received: Recorder<ReceivedMail>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    stream: Stream,
    /// Bytes read but not yet consumed as lines.
    input: Vec<u8>,
    tls: bool,
    greeted: bool,
    auth: Option<(String, String)>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl<'a> Session<'a> {
    fn run(tcp: TcpStream, shared: &'a Shared) -> io::Result<()> {
        let implicit = shared.settings.implicit_tls;
        let stream = if implicit {
            Stream::Tls(Box::new(StreamOwned::new(
                ServerConnection::new(shared.tls.clone()).map_err(io::Error::other)?,
                tcp,
            )))
        } else {
            Stream::Plain(tcp)
        };
        let mut session = Session {
            shared,
            stream,
            input: Vec::new(),
            tls: implicit,
            greeted: false,
            auth: None,
            mail_from: None,
            rcpt_to: Vec::new(),
        };
        session.reply(220, &format!("{HOST_NAME} ESMTP tarmo-notify test sink"))?;
        while let Some(line) = session.read_line()? {
            let line = String::from_utf8_lossy(&line).into_owned();
            if !session.command(&line)? {
                break;
            }
        }
        Ok(())
    }

    /// Handles one command line; false ends the session.
    fn command(&mut self, line: &str) -> io::Result<bool> {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(arg)?,
            "HELO" => {
                self.greeted = true;
                self.reset();
                self.reply(250, HOST_NAME)?;
            }
            "STARTTLS" => self.starttls()?,
            "AUTH" => self.auth(arg)?,
            "MAIL" => self.mail(arg)?,
            "RCPT" => self.rcpt(arg)?,
            "DATA" => self.data()?,
            "RSET" => {
                self.reset();
                self.reply(250, "2.0.0 OK")?;
            }
            "NOOP" => self.reply(250, "2.0.0 OK")?,
            "QUIT" => {
                self.reply(221, "2.0.0 Bye")?;
                return Ok(false);
            }
            _ => self.reply(500, "5.5.2 Command not recognized")?,
        }
        Ok(true)
    }

    fn ehlo(&mut self, client: &str) -> io::Result<()> {
        if client.is_empty() {
            return self.reply(501, "5.5.4 EHLO needs a domain");
        }
        self.greeted = true;
        self.reset();
        let settings = &self.shared.settings;
        let mut lines = vec![
            format!("{HOST_NAME} greets {client}"),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if settings.starttls && !self.tls {
            lines.push("STARTTLS".to_owned());
        }
        if settings.credentials.is_some() && (self.tls || !settings.require_tls_for_auth) {
            lines.push(format!("AUTH {}", settings.mechanisms.join(" ")));
        }
        let last = lines.len() - 1;
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            out.push_str(&format!("250{separator}{line}\r\n"));
        }
        self.send(out.as_bytes())
    }

    fn starttls(&mut self) -> io::Result<()> {
        if !self.shared.settings.starttls || self.tls {
            return self.reply(454, "4.7.0 TLS not available");
        }
        self.reply(220, "2.0.0 Ready to start TLS")?;
        let Stream::Plain(tcp) = &self.stream else {
            unreachable!("tls is false only on a plain stream")
        };
        let tcp = tcp.try_clone()?;
        let connection =
            ServerConnection::new(self.shared.tls.clone()).map_err(io::Error::other)?;
        self.stream = Stream::Tls(Box::new(StreamOwned::new(connection, tcp)));
        // RFC 3207: forget everything from before TLS, including unread input.
        self.input.clear();
        self.tls = true;
        self.greeted = false;
        self.auth = None;
        self.reset();
        Ok(())
    }

    fn auth(&mut self, arg: &str) -> io::Result<()> {
        let settings = &self.shared.settings;
        let Some((user, password)) = settings.credentials.clone() else {
            return self.reply(502, "5.5.1 AUTH not available");
        };
        if !self.greeted {
            return self.reply(503, "5.5.1 EHLO first");
        }
        if settings.require_tls_for_auth && !self.tls {
            return self.reply(
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            );
        }
        if self.auth.is_some() {
            return self.reply(503, "5.5.1 Already authenticated");
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
            None => (arg.to_ascii_uppercase(), None),
        };
        if !settings.mechanisms.contains(&mechanism) {
            return self.reply(504, "5.5.4 Unrecognized authentication type");
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let Some(response) = self.auth_response(initial, "")? else {
                    return Ok(());
                };
                // authzid NUL authcid NUL password
                let mut fields = response.split(|&b| b == 0);
                let _authzid = fields.next();
                match (fields.next(), fields.next(), fields.next()) {
                    (Some(u), Some(p), None) => Some((u.to_vec(), p.to_vec())),
                    _ => None,
                }
            }
            _ => {
                let Some(u) = self.auth_response(initial, "VXNlcm5hbWU6")? else {
                    return Ok(());
                };
                let Some(p) = self.auth_response(None, "UGFzc3dvcmQ6")? else {
                    return Ok(());
                };
                Some((u, p))
            }
        };
        let Some((got_user, got_password)) = credentials else {
            return self.reply(501, "5.5.2 Malformed authentication response");
        };
        if got_user == user.as_bytes() && got_password == password.as_bytes() {
            self.auth = Some((user, mechanism));
            self.reply(235, "2.7.0 Authentication successful")
        } else {
            self.reply(535, "5.7.8 Authentication credentials invalid")
        }
    }

    /// The decoded client response for one AUTH step: the initial response
    /// when given, else after a 334 challenge. `None` when the client
    /// cancelled or sent invalid base64 (already answered).
    fn auth_response(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        let response = match initial {
            Some(initial) => initial,
            None => {
                self.reply(334, challenge)?;
                match self.read_line()? {
                    Some(line) => String::from_utf8_lossy(&line).trim().to_owned(),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        if response == "*" {
            self.reply(501, "5.0.0 Authentication cancelled")?;
            return Ok(None);
        }
        if response == "=" {
            return Ok(Some(Vec::new()));
        }
        match STANDARD.decode(response) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(_) => {
                self.reply(501, "5.5.2 Cannot decode the response")?;
                Ok(None)
            }
        }
    }

    fn mail(&mut self, arg: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply(503, "5.5.1 EHLO first");
        }
        if self.shared.settings.credentials.is_some() && self.auth.is_none() {
            return self.reply(530, "5.7.0 Authentication required");
        }
        if self.mail_from.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command");
        }
        match path_argument(arg, "FROM:") {
            Some(from) => {
                self.mail_from = Some(from);
                self.reply(250, "2.1.0 OK")
            }
            None => self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>"),
        }
    }

    fn rcpt(&mut self, arg: &str) -> io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 MAIL first");
        }
        let Some(to) = path_argument(arg, "TO:").filter(|to| !to.is_empty()) else {
            return self.reply(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if let Some((code, text)) = lock(&self.shared.replies).rcpt.clone() {
            return self.reply(code, &text);
        }
        self.rcpt_to.push(to);
        self.reply(250, "2.1.5 OK")
    }

    fn data(&mut self) -> io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 MAIL first");
        }
        if self.rcpt_to.is_empty() {
            return self.reply(554, "5.5.1 No valid recipients");
        }
        self.reply(354, "End data with <CR><LF>.<CR><LF>")?;
        let mut data = Vec::new();
        loop {
            let Some(line) = self.read_line()? else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            if line == b"." {
                break;
            }
            // RFC 5321 §4.5.2: a leading dot was doubled by the client.
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        let (refusal, delay) = {
            let r = lock(&self.shared.replies);
            (r.data.clone(), r.delay)
        };
        std::thread::sleep(delay);
        if let Some((code, text)) = refusal {
            self.reset();
            return self.reply(code, &text);
        }
        let mail = ReceivedMail {
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
            tls: self.tls,
            auth: self.auth.clone(),
        };
        self.shared.received.push(mail);
        let count = self.shared.received.len();
        self.reply(250, &format!("2.0.0 OK queued as {count}"))
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        self.send(format!("{code} {text}\r\n").as_bytes())
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next line without its line end, or `None` at end of stream.
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.input.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.input.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.input.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 8192];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The address in `FROM:<a@b> PARAMS` or `TO:<a@b>` (the prefix matched
/// case-insensitively, a space after the colon tolerated).
fn path_argument(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments() {
        assert_eq!(
            path_argument("FROM:<a@b> BODY=8BITMIME", "FROM:").as_deref(),
            Some("a@b")
        );
        assert_eq!(
            path_argument("from: <a@b>", "FROM:").as_deref(),
            Some("a@b")
        );
        assert_eq!(path_argument("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_argument("TO:a@b", "TO:"), None);
        assert_eq!(path_argument("FROM:<a@b>", "TO:"), None);
    }
}
