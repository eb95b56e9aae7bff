use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Listener, Recorder, lock};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request the sink received, and the status it answered.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    /// The request target as sent, with any query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body, with chunked transfer coding undone.
    pub body: Vec<u8>,
    pub status: u16,
}

impl ReceivedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.body_text()))
    }
}

struct Statuses {
    default: u16,
    queued: VecDeque<u16>,
}

struct Shared {
    statuses: Mutex<Statuses>,
    received: Recorder<ReceivedRequest>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that records every request and
/// answers it with an empty body and a chosen status (200 by default), one
/// request per connection. It stops when dropped.
pub struct HttpSink {
    shared: Arc<Shared>,
    listener: Listener,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let shared = Arc::new(Shared {
            statuses: Mutex::new(Statuses {
                default: 200,
                queued: VecDeque::new(),
            }),
            received: Recorder::new(),
        });
        let listener = {
            let shared = shared.clone();
            Listener::spawn("http-sink", move |stream| {
                let _ = serve(stream, &shared);
            })
        };
        HttpSink { shared, listener }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); append a path.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr)
    }

    /// Answer `status` from now on, once the queued answers are used up.
    pub fn set_status(&self, status: u16) {
        lock(&self.shared.statuses).default = status;
    }

    /// Answer the next `n` requests with `status`, then go back to the
    /// default: a gateway that fails a few times and then recovers.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.shared.statuses)
            .queued
            .extend(std::iter::repeat_n(status, n));
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.received.all()
    }

    /// Waits until at least `n` requests were received and returns all of
    /// them; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        self.shared.received.wait_for(n, timeout, "HTTP requests")
    }
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let request_line = read_line(&mut reader)?;
    let mut fields = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (fields.next(), fields.next(), fields.next())
    else {
        return respond(&mut writer, 400);
    };
    if !version.starts_with("HTTP/1.") {
        return respond(&mut writer, 505);
    }
    let mut headers = Vec::new();
    let mut head_len = request_line.len();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        head_len += line.len();
        if head_len > MAX_HEAD {
            return respond(&mut writer, 431);
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if find("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body =
        if find("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            read_chunked(&mut reader)?
        } else {
            let length = match find("Content-Length").map(|v| v.parse::<usize>()) {
                None => 0,
                Some(Ok(n)) if n <= MAX_BODY => n,
                Some(_) => return respond(&mut writer, 400),
            };
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        };
    let status = {
        let mut statuses = lock(&shared.statuses);
        let default = statuses.default;
        statuses.queued.pop_front().unwrap_or(default)
    };
    shared.received.push(ReceivedRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body,
        status,
    });
    respond(&mut writer, status)
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| io::ErrorKind::InvalidData.into())
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| io::ErrorKind::InvalidData)?;
        if size == 0 {
            // Trailers, then the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

fn respond(writer: &mut TcpStream, status: u16) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    // 1xx, 204 and 304 carry no body and no Content-Length.
    let length = if status < 200 || status == 204 || status == 304 {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        writer,
        "HTTP/1.1 {status} {reason}\r\n{length}Connection: close\r\n\r\n"
    )?;
    writer.flush()
}
