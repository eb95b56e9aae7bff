//! What every end-to-end test needs: a real `tarmo` binary, its own data
//! directory and port, and an HTTP client.

// Shared by every test module; not each module uses each helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tarmo");

pub struct Server {
    pub child: Child,
    pub base: String,
    pub admin: String,
    pub write: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn init(dir: &Path) -> (String, String) {
    let out = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["admin_key"].as_str().unwrap().to_owned(),
        v["write_key"].as_str().unwrap().to_owned(),
    )
}

pub fn start(dir: &Path, admin: &str, write: &str) -> Server {
    start_with(dir, admin, write, &[])
}

/// Start `tarmo serve` on a free port with extra arguments.
pub fn start_with(dir: &Path, admin: &str, write: &str, args: &[String]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("TARMO_DEFAULT_REGION", "FI")
        .env("TARMO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    Server {
        child,
        base,
        admin: admin.into(),
        write: write.into(),
    }
}

/// Kill the server with SIGKILL: no shutdown, no flush.
pub fn kill9(mut s: Server) {
    unsafe { libc_kill(s.child.id() as i32) };
    let _ = s.child.wait();
}

/// A request with the admin key and a JSON body (or none); status and JSON.
pub fn admin(s: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("{}{}", s.base, path);
    let auth = format!("Bearer {}", s.admin);
    let a = agent();
    let resp = match (method, body) {
        ("GET", _) => a.get(&url).header("Authorization", &auth).call(),
        ("POST", b) => a
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.map(|b| b.to_string()).unwrap_or_default().as_bytes()),
        ("PUT", b) => a
            .put(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.map(|b| b.to_string()).unwrap_or_default().as_bytes()),
        (m, _) => panic!("unsupported method {m}"),
    };
    let mut r = resp.unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A page request as a browser makes it: no key; status and body text.
pub fn page(
    method: &str,
    url: &str,
    form: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let a = agent();
    let resp = match method {
        "GET" => {
            let mut r = a.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = a
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(form.unwrap_or("").as_bytes())
        }
    };
    let mut r = resp.unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

pub fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start(&data, &a, &w);
    (dir, s)
}

/// A server whose webhooks may be plain http on loopback (the test sinks).
pub fn server_allowing_private_webhooks() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    let s = start_with(&data, &a, &w, &["--allow-private-webhooks".into()]);
    (dir, s)
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

pub fn post(s: &Server, path: &str, auth: Option<String>, body: &[u8], gzip: bool) -> (u16, Value) {
    let mut req = agent()
        .post(format!("{}{}", s.base, path))
        .header("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.header("Authorization", &a);
    }
    let body = if gzip {
        req = req.header("Content-Encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    } else {
        body.to_vec()
    };
    let mut r = req.send(&body[..]).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn get(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent()
        .get(format!("{}{}", s.base, path))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

pub unsafe fn libc_kill(pid: i32) {
    unsafe {
        kill(pid, 9);
    }
}

pub fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The server, sending with a `server`-trust write key (a back end) instead
/// of `init`'s client key: for tests whose meaning is what the shop's own
/// systems say about a person (merges, addresses that receive links).
pub fn trusted(mut s: Server) -> Server {
    let (st, v) = admin(
        &s,
        "POST",
        "/api/v1/keys",
        Some(&serde_json::json!({"roles": ["ingest"], "trust": "server", "name": "back end"})),
    );
    assert_eq!(st, 201, "{v}");
    s.write = v["key"].as_str().unwrap().to_owned();
    s
}
