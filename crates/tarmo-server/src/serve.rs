//! The accept loop: plain TCP or TLS, HTTP/1.1, with every wait a stranger
//! can impose bounded.
//!
//! A client must never hold up another: the TLS handshake runs in the
//! connection's own task, not in the loop that accepts; a connection that
//! sends its headers too slowly (slowloris) or sits idle between requests is
//! closed; a body that trickles in is answered 408; and a graceful shutdown
//! waits for requests in flight only for a bounded time, then drops them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarmo_core::codes::Code;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ApiError;

/// How long each wait may last.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accepting a TLS connection to the end of its handshake.
    pub handshake: Duration,
    /// To receive a request's whole header, and the longest a kept-alive
    /// connection may wait for its next request.
    pub header_read: Duration,
    /// To receive a request's whole body, from the end of its header.
    pub body_read: Duration,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            // 1 MB (the body limit) in 30 s is 33 KB/s: a slow mobile link
            // passes, a client feeding a byte now and then does not.
            body_read: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serve `app` on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes; then stop accepting, ask every connection to close after its
/// current request, and wait at most `timeouts.shutdown_grace` for them.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    timeouts: Timeouts,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    let tls = tls.map(Arc::new);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, mostly: let some close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let app = app.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => serve_connection(tcp, peer, app, stop, timeouts).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => serve_connection(io, peer, app, stop, timeouts).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(timeouts.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "requests still running after the shutdown grace period; dropped"
        );
        conns.shutdown().await;
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    timeouts: Timeouts,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req, peer, timeouts.body_read).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Resolves once a shutdown has begun.
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Read the whole body within the deadline, then hand the request to the
/// router. Every handler reads its whole body anyway (at most 1 MB), so
/// buffering it here costs nothing more and puts one deadline on it. The
/// one exception is an import's file (see [`crate::imports::MAX_FILE`]).
async fn handle(
    mut app: Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    body_read: Duration,
) -> Response {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    if crate::imports::reads_its_own_body(&parts.method, parts.uri.path()) {
        // An import file may be larger than the wire limit: its handler
        // reads it, with a limit and a deadline of its own, once the key
        // has been checked (so no one without a key can make it buffer).
        let req = Request::from_parts(parts, Body::new(body));
        return match tower_service::Service::call(&mut app, req).await {
            Ok(resp) => resp,
            Err(e) => match e {},
        };
    }
    let read = Limited::new(body, crate::MAX_WIRE_BODY).collect();
    let bytes = match tokio::time::timeout(body_read, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(Code::BodyTooLarge, "the request body is larger than 1 MB")
                .into_response();
        }
        Ok(Err(_)) => {
            return ApiError::new(Code::InvalidRequest, "the request body could not be read")
                .into_response();
        }
        Err(_) => {
            return ApiError::new(Code::BodyTimeout, "the request body did not arrive in time")
                .into_response();
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    match tower_service::Service::call(&mut app, req).await {
        Ok(resp) => resp,
        Err(e) => match e {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn app() -> Router {
        Router::new()
            .route("/hello", axum::routing::get(|| async { "hello" }))
            .route(
                "/echo",
                axum::routing::post(|b: axum::body::Bytes| async move { b }),
            )
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
    }

    struct Running {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<()>,
    }

    async fn start(tls: Option<TlsAcceptor>, timeouts: Timeouts) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(run(
            listener,
            tls,
            app(),
            async {
                let _ = rx.await;
            },
            timeouts,
        ));
        Running {
            addr,
            stop: Some(tx),
            done,
        }
    }

    /// One request on its own connection; the whole answer as text.
    async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, raw: &str) -> String {
        io.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = io.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    const GET_HELLO: &str = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn a_client_that_never_starts_tls_does_not_hold_up_others() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cp, kp) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cp, cert.cert.pem()).unwrap();
        std::fs::write(&kp, cert.signing_key.serialize_pem()).unwrap();
        let server = start(
            Some(crate::tls::acceptor(&cp, &kp).unwrap()),
            Timeouts::default(),
        )
        .await;
        // Connects and sends nothing: before, the accept loop waited for
        // its ClientHello for 10 s, and nobody else was let in meanwhile.
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(3), async {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            request(tls, GET_HELLO).await
        })
        .await
        .expect("a TLS client was held up by a silent one");
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_slowloris_client_is_disconnected_and_blocks_nobody() {
        let server = start(
            None,
            Timeouts {
                header_read: Duration::from_millis(800),
                ..Timeouts::default()
            },
        )
        .await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
        let t = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                // A header line now and then, never the end of the header.
                if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {
                        // Whatever hyper answers (408 or nothing), the
                        // connection then ends.
                    }
                    Err(_) => {}
                }
                // Meanwhile, others are served.
                let fast = TcpStream::connect(server.addr).await.unwrap();
                assert!(request(fast, GET_HELLO).await.ends_with("hello"));
            }
        })
        .await;
        assert!(closed.is_ok(), "the slow client was never disconnected");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let server = start(
            None,
            Timeouts {
                header_read: Duration::from_millis(500),
                ..Timeouts::default()
            },
        )
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "an idle connection stayed open");
        assert!(String::from_utf8_lossy(&out).ends_with("hello"));
    }

    #[tokio::test]
    async fn a_trickling_body_is_answered_408() {
        let server = start(
            None,
            Timeouts {
                body_read: Duration::from_millis(500),
                ..Timeouts::default()
            },
        )
        .await;
        let c = TcpStream::connect(server.addr).await.unwrap();
        let t = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            request(
                c,
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab",
            ),
        )
        .await
        .expect("a trickling body held its connection");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // A whole body is still read.
        let c = TcpStream::connect(server.addr).await.unwrap();
        let answer = request(
            c,
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await;
        assert!(answer.ends_with("abc"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_waits_for_slow_requests_only_so_long() {
        let mut server = start(
            None,
            Timeouts {
                shutdown_grace: Duration::from_millis(500),
                ..Timeouts::default()
            },
        )
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), &mut server.done)
            .await
            .expect("shutdown waited for a request that never ends")
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(400));
        // And nobody is let in any more.
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
