use std::fmt;

use crate::Error;

/// An email to one person: a plain-text and an HTML version of the same
/// content, sent as `multipart/alternative` (text first) in UTF-8.
///
/// `Debug` shows only the sender and the message id: the recipient, the
/// subject and the bodies are personal data.
#[derive(Clone)]
pub struct Email {
    pub from: Mailbox,
    /// The recipient's address (`local@domain`, no display name).
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub message_id: MessageId,
    /// An `https` URL that unsubscribes the recipient with one POST (RFC 8058).
    /// When set, the message carries `List-Unsubscribe` and
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
    pub list_unsubscribe: Option<String>,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from)
            .field("to", &"[redacted]")
            .field("message_id", &self.message_id)
            .field("list_unsubscribe", &self.list_unsubscribe.is_some())
            .finish_non_exhaustive()
    }
}

/// The sender: an address and a display name (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub name: String,
}

impl Mailbox {
    pub fn new(address: impl Into<String>, name: impl Into<String>) -> Self {
        Mailbox {
            address: address.into(),
            name: name.into(),
        }
    }
}

/// The caller's stable id for a message, derived from its outbox row so that
/// a resend after a crash carries the same `Message-ID` and receivers can
/// deduplicate it.
///
/// Either a bare id (`outbox-42`), to which the sender's domain is appended
/// (`<outbox-42@example.org>`), or a full `id@domain`. Both parts are RFC 5322
/// dot-atoms of at most 200 characters in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    pub fn new(id: &str) -> Result<MessageId, Error> {
        if id.is_empty() {
            return Err(Error::MessageId("empty"));
        }
        if id.len() > 200 {
            return Err(Error::MessageId("longer than 200 characters"));
        }
        let mut parts = id.split('@');
        let local = parts.next().unwrap_or_default();
        let domain = parts.next();
        if parts.next().is_some() {
            return Err(Error::MessageId("more than one @"));
        }
        if !is_dot_atom(local) || domain.is_some_and(|d| !is_dot_atom(d)) {
            return Err(Error::MessageId(
                "only letters, digits, dots and !#$%&'*+/=?^_`{|}~- are allowed, without empty dot-separated parts",
            ));
        }
        Ok(MessageId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Message-ID` header value, with `default_domain` appended to a bare id.
    pub(crate) fn header_value(&self, default_domain: &str) -> String {
        if self.0.contains('@') {
            format!("<{}>", self.0)
        } else {
            format!("<{}@{}>", self.0, default_domain)
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids() {
        assert_eq!(
            MessageId::new("outbox-42")
                .unwrap()
                .header_value("example.org"),
            "<outbox-42@example.org>"
        );
        assert_eq!(
            MessageId::new("outbox.42@mail.example.org")
                .unwrap()
                .header_value("example.org"),
            "<outbox.42@mail.example.org>"
        );
        for bad in [
            "",
            "a b",
            "a@b@c",
            "<a>",
            "a..b",
            ".a",
            "a@",
            "@b",
            "a\r\nBcc: x",
            "ä",
        ] {
            assert!(MessageId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(MessageId::new(&"a".repeat(201)).is_err());
    }

    #[test]
    fn debug_hides_recipient_and_content() {
        let email = Email {
            from: Mailbox::new("hello@example.org", "Example"),
            to: "ann@example.com".into(),
            subject: "Secret subject".into(),
            text: "secret text".into(),
            html: "<p>secret html</p>".into(),
            message_id: MessageId::new("m1").unwrap(),
            list_unsubscribe: None,
        };
        let debug = format!("{email:?}");
        assert!(debug.contains("m1"), "{debug}");
        for secret in ["ann@", "Secret subject", "secret text", "secret html"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
