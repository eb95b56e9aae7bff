//! Delivery of the messages Tarmo sends to people: double opt-in confirmation
//! emails and SMS today, marketing email later. Email goes over real SMTP
//! (STARTTLS or implicit TLS, AUTH PLAIN/LOGIN) through [`SmtpMailer`]; SMS and
//! processor notifications go as JSON over HTTP through [`SmsWebhook`] and
//! [`WebhookClient`]. Every failure is classified as permanent (do not retry)
//! or transient (retry later), because the caller is an outbox worker that
//! must decide which. [`templates`] renders the confirmation texts in each
//! supported language, and `testing` (cargo feature `testing`) offers real
//! loopback SMTP and HTTP peers for other crates' tests.
//!
//! This crate must never log or put into an error a recipient's address, a
//! phone number or a message body: logs carry only the caller's message id,
//! `Debug` of an [`Email`] or an [`SmtpConfig`] redacts recipients, bodies and
//! passwords, and text echoed by a remote server is scrubbed of addresses and
//! phone numbers before it reaches a [`SendError`]. It must never send SMTP
//! credentials over an unencrypted connection unless the operator asked for
//! `tls=none`, and it offers no way to accept an invalid certificate.

mod email;
mod error;
pub mod pages;
mod smtp;
pub mod templates;
mod webhook;

#[cfg(feature = "testing")]
pub mod testing;

pub use email::{Email, Mailbox, MessageId};
pub use error::{Error, SendError};
pub use smtp::{SmtpConfig, SmtpMailer, TlsMode};
pub use webhook::{SmsWebhook, WebhookClient, WebhookTargets, WebhookUrl, is_public};

/// Sends one email. Implementations block until the receiving server has
/// accepted or refused the message, so call it from a worker thread (or
/// `spawn_blocking`), never from an async task.
///
/// `Ok(())` means the next hop took responsibility for the message. An error
/// says through [`SendError::is_permanent`] whether sending the same message
/// again can succeed; a resend must reuse the same [`Email::message_id`].
pub trait Deliver: Send + Sync {
    fn send_email(&self, email: &Email) -> Result<(), SendError>;
}

/// Sends one SMS; the same blocking contract and error classes as [`Deliver`].
pub trait DeliverSms: Send + Sync {
    /// `to_e164` is `+` and up to 15 digits; `message_id` is the caller's stable
    /// id, passed on so the gateway can deduplicate a resend.
    fn send_sms(&self, to_e164: &str, body: &str, message_id: &str) -> Result<(), SendError>;
}
