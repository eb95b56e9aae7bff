/// A configuration that cannot be used: a bad SMTP or webhook URL, an
/// unreadable certificate, a malformed message id. Messages never include a
/// password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("unsupported URL scheme {0:?}: expected smtp or smtps")]
    SmtpScheme(String),
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error("invalid tls value {0:?}: expected none, starttls or opportunistic")]
    Tls(String),
    #[error("invalid SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("invalid webhook URL: {0}")]
    WebhookUrl(&'static str),
    #[error("a webhook URL must be https (set allow_private_webhooks for http)")]
    WebhookNotHttps,
    #[error(
        "a webhook may not point at a private, loopback or link-local address (set allow_private_webhooks to allow it)"
    )]
    WebhookTargetPrivate,
    #[error("invalid message id: {0}")]
    MessageId(&'static str),
}

/// Why a message was not delivered. [`SendError::is_permanent`] tells the
/// caller whether to give up on the message or retry it later.
///
/// Text that a remote server sent back is kept for operators, but anything in
/// it that looks like an address or a phone number is replaced by `[redacted]`
/// first, so the error can be logged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The receiver refused this message for good: an SMTP 5xx reply, or an
    /// HTTP 3xx/4xx status (except 408 and 429).
    #[error("refused permanently ({code}): {detail}")]
    Rejected { code: u16, detail: String },
    /// The credentials were refused (SMTP 530/534/535/538), or the server
    /// offers no mechanism this client may use. Permanent for this
    /// configuration: the message is not at fault, the settings are, so the
    /// caller should stop the queue and alert rather than give up on recipients.
    #[error("authentication failed: {detail}")]
    Auth { detail: String },
    /// The receiver asked to try again later: an SMTP 4xx reply, or HTTP 5xx,
    /// 408 or 429.
    #[error("deferred ({code}): {detail}")]
    Deferred { code: u16, detail: String },
    /// No answer: connection refused, name not resolved, timeout, a TLS
    /// handshake that failed, a connection that broke.
    #[error("could not reach the server: {detail}")]
    Unreachable { detail: String },
    /// The server did not speak the protocol as this configuration requires,
    /// for example it did not offer STARTTLS when TLS was required.
    #[error("protocol failure: {detail}")]
    Protocol { detail: String },
    /// The message itself cannot be sent: an invalid address, phone number or
    /// unsubscribe URL. Sending it again cannot succeed.
    #[error("invalid message: {detail}")]
    InvalidMessage { detail: String },
    /// The webhook's target is one webhooks may not reach (plain http, or a
    /// private, loopback or link-local address, also after resolution).
    /// Permanent: the configuration is at fault.
    #[error("target refused: {detail}")]
    TargetRefused { detail: String },
}

impl SendError {
    /// True when sending the same message again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SendError::Rejected { .. }
                | SendError::Auth { .. }
                | SendError::InvalidMessage { .. }
                | SendError::TargetRefused { .. }
        )
    }

    /// True when the same message may succeed later; the opposite of
    /// [`SendError::is_permanent`].
    pub fn is_transient(&self) -> bool {
        !self.is_permanent()
    }

    /// The SMTP reply code or HTTP status, when the receiver answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            SendError::Rejected { code, .. } | SendError::Deferred { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        SendError::InvalidMessage {
            detail: detail.into(),
        }
    }
}

/// Replaces every word that contains `@` (an address) or a run of seven or
/// more digits (a phone number) with `[redacted]`. Servers echo recipients in
/// their replies ("550 5.1.1 <ann@example.com>: unknown user").
pub(crate) fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if looks_personal(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
    }
    out
}

fn looks_personal(word: &str) -> bool {
    if word.contains('@') {
        return true;
    }
    let mut run = 0;
    for c in word.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 7 {
                return true;
            }
        } else if !matches!(c, ' ' | '-' | '(' | ')' | '.') {
            run = 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_addresses_and_phone_numbers() {
        assert_eq!(
            scrub("5.1.1 <ann@example.com>: Recipient address rejected"),
            "5.1.1 [redacted] Recipient address rejected"
        );
        assert_eq!(
            scrub("bad number +358401234567 sorry"),
            "bad number [redacted] sorry"
        );
        assert_eq!(scrub("call +358-40-123-4567"), "call [redacted]");
        assert_eq!(scrub("queued as 12345"), "queued as 12345");
        assert_eq!(scrub("4.7.0 try again"), "4.7.0 try again");
    }

    #[test]
    fn permanence() {
        let rejected = SendError::Rejected {
            code: 550,
            detail: String::new(),
        };
        let deferred = SendError::Deferred {
            code: 451,
            detail: String::new(),
        };
        assert!(rejected.is_permanent() && !rejected.is_transient());
        assert!(deferred.is_transient() && !deferred.is_permanent());
        assert!(
            SendError::Auth {
                detail: String::new()
            }
            .is_permanent()
        );
        assert!(
            SendError::Unreachable {
                detail: String::new()
            }
            .is_transient()
        );
        assert!(
            SendError::Protocol {
                detail: String::new()
            }
            .is_transient()
        );
        assert_eq!(rejected.code(), Some(550));
    }
}
