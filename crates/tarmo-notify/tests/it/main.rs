//! Integration tests: every send goes over a real socket to a real loopback
//! peer from `tarmo_notify::testing`.

mod sms;
mod smtp;
mod templates;

use std::net::TcpListener;
use std::time::Duration;

use tarmo_notify::{Email, Mailbox, MessageId};

/// How long a test waits for a peer to record something.
const WAIT: Duration = Duration::from_secs(10);

fn email(to: &str, message_id: &str) -> Email {
    Email {
        from: Mailbox::new("hello@example.org", "Kahvila Ilo"),
        to: to.to_owned(),
        subject: "Vahvista tilauksesi – Kahvila Ilo".to_owned(),
        text: "Hei!\nVahvista tilauksesi.\n".to_owned(),
        html: "<p>Hei!</p>\n<p>Vahvista tilauksesi.</p>\n".to_owned(),
        message_id: MessageId::new(message_id).unwrap(),
        list_unsubscribe: None,
    }
}

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A listener that accepts connections and then never says anything.
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}
