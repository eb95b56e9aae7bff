//! Real loopback peers for tests (cargo feature `testing`; enable it only in
//! dev-dependencies): [`SmtpSink`], an SMTP server with STARTTLS, implicit
//! TLS and AUTH that records what it receives, and [`HttpSink`], an HTTP/1.1
//! listener that records requests and answers a chosen status. Both listen on
//! `127.0.0.1:0` on their own threads and stop when dropped.
//!
//! They are test peers, not servers: no limits worth the name, no pipelining,
//! one thread per connection.

mod http;
mod mime;
mod smtp;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use http::{HttpSink, ReceivedRequest};
pub use mime::MimePart;
pub use smtp::{ReceivedMail, SmtpSink, SmtpSinkBuilder};

/// How long a peer waits for a client that went quiet before dropping it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Items received by a peer, with a way to wait for them.
struct Recorder<T> {
    items: Mutex<Vec<T>>,
    changed: Condvar,
}

impl<T: Clone> Recorder<T> {
    fn new() -> Self {
        Recorder {
            items: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }
    }

    fn push(&self, item: T) {
        lock(&self.items).push(item);
        self.changed.notify_all();
    }

    fn all(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    /// How many arrived, without copying them.
    fn len(&self) -> usize {
        lock(&self.items).len()
    }

    /// Waits until at least `n` items arrived; panics with `what` after `timeout`.
    fn wait_for(&self, n: usize, timeout: Duration, what: &str) -> Vec<T> {
        let deadline = Instant::now() + timeout;
        let mut items = lock(&self.items);
        while items.len() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "expected {n} {what} within {timeout:?}, got {}",
                    items.len()
                );
            }
            items = self
                .changed
                .wait_timeout(items, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        items.clone()
    }
}

/// A test thread that panicked while holding a lock must not hide what the
/// peer recorded from the other tests.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listener on 127.0.0.1:0 that hands each connection to `serve` on its own
/// thread, until dropped.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    fn spawn(name: &'static str, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
                        let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
                        let serve = serve.clone();
                        let _ = std::thread::Builder::new()
                            .name(format!("{name}-conn"))
                            .spawn(move || serve(stream));
                    }
                })
                .expect("spawn the accept thread")
        };
        Listener {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
