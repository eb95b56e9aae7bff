//! What every in-process test needs: the application built by
//! `Application::build` on a fresh data directory and a free port, in the
//! test's own runtime, and an HTTP client. Tests that need a process
//! (kill -9, signals, the CLI) stay in `tarmo-cli`'s `tests/it/`.

// Shared by every test module; not each module uses each helper.
#![allow(dead_code)]

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tarmo_server::settings::{ServeSettings, Settings, Sources, init};
use tarmo_server::startup::Application;

/// A running application: its base URL, the first admin and write keys,
/// and its data directory (removed when dropped).
pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub write: String,
    pub dir: tempfile::TempDir,
    /// Dropped with the app: the server stops.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Build the application as `tarmo serve` does, on a fresh data directory
/// (initialised as `tarmo init` does) and 127.0.0.1:0, with
/// `TARMO_DEFAULT_REGION=FI` as the binary's tests run it. The test must
/// use a multi-threaded runtime: its blocking HTTP calls wait on the
/// server's tasks.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServeSettings::default()).await
}

pub async fn spawn_app_with(serve: ServeSettings) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        data_dir: dir.path().join("data"),
        default_region: Some("FI".into()),
        ..Default::default()
    };
    let (keys, app) = tokio::task::spawn_blocking(move || {
        let settings = Settings::load(&sources, Some("127.0.0.1:0".into()), serve).unwrap();
        let keys = init(&settings).unwrap();
        (keys, Application::build(settings).unwrap())
    })
    .await
    .unwrap();
    let base = format!("{}://{}", app.scheme(), app.address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        admin: keys.admin,
        write: keys.write,
        dir,
        _stop: stop,
    }
}

/// A request with the admin key and a JSON body (or none); status and JSON.
pub fn admin(s: &TestApp, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
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

pub fn post(
    s: &TestApp,
    path: &str,
    auth: Option<String>,
    body: &[u8],
    gzip: bool,
) -> (u16, Value) {
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

pub fn get(s: &TestApp, path: &str) -> (u16, Value) {
    let mut r = agent()
        .get(format!("{}{}", s.base, path))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The server, sending with a `server`-trust write key (a back end) instead
/// of `init`'s client key: for tests whose meaning is what the shop's own
/// systems say about a person (merges, addresses that receive links).
pub fn trusted(mut s: TestApp) -> TestApp {
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
