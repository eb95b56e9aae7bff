//! The staff console over real sockets: sign-in and its cookie, CSRF on
//! every form, pages gated by the API's own permission table, and a read of
//! a person through the console landing in the access log.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const PASSWORD: &str = "correct horse battery staple";

/// `tarmo users create` with the password on standard input.
fn user(data: &std::path::Path, name: &str, role: &str) {
    let mut child = Command::new(BIN)
        .args([
            "users",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--data-dir",
        ])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// An agent that does not follow redirects: the tests read them.
fn browser() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    location: String,
    cookies: Vec<String>,
    body: String,
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> Answer {
    let h = r.headers();
    Answer {
        status: r.status().as_u16(),
        location: h
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        cookies: h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        // The templates escape `/` too; the tests read paths as written.
        body: r
            .body_mut()
            .read_to_string()
            .unwrap_or_default()
            .replace("&#x2f;", "/"),
    }
}

fn get(s: &Server, path: &str, cookie: &str) -> Answer {
    let mut r = browser().get(format!("{}{path}", s.base));
    if !cookie.is_empty() {
        r = r.header("Cookie", cookie);
    }
    answer(r.call().unwrap())
}

fn post(s: &Server, path: &str, cookie: &str, form: &str) -> Answer {
    answer(
        browser()
            .post(format!("{}{path}", s.base))
            .header("Cookie", cookie)
            .header("Origin", &s.base)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .unwrap(),
    )
}

fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn cookie_value(a: &Answer, name: &str) -> String {
    a.cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no cookie {name}: {:?}", a.cookies))
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Sign in through the form; the session cookie, and the raw Set-Cookie.
fn sign_in(s: &Server, name: &str) -> (String, String) {
    let page = get(s, "/console/sign-in", "");
    assert_eq!(page.status, 200);
    let token = field(&page.body, "token");
    let pre = cookie_value(&page, "tarmo_sign_in");
    let a = post(
        s,
        "/console/sign-in",
        &pre,
        &format!("token={token}&name={name}&password=correct+horse+battery+staple"),
    );
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/console"),
        "{}",
        a.body
    );
    let raw = a
        .cookies
        .iter()
        .find(|c| c.starts_with("tarmo_console="))
        .unwrap()
        .clone();
    (cookie_value(&a, "tarmo_console"), raw)
}

fn with_users(roles: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    for r in roles {
        user(&data, r, r);
    }
    let s = start(&data, &a, &w);
    (dir, s)
}

fn person(s: &Server) -> i64 {
    let body = json!({"userId": "u-console-1", "traits": {"email": "ann.console@example.fi",
        "phone": "+358401112233", "tier": "gold-tier-marker"}});
    let (st, v) = crate::common::post(
        s,
        "/v1/identify",
        Some(basic(&s.write)),
        body.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = crate::common::get(
        s,
        "/api/v1/profiles/lookup?type=phone&value=%2B358401112233",
    );
    assert_eq!(st, 200, "{v}");
    v["id"].as_i64().unwrap()
}

#[test]
fn console_sign_in_sets_a_strict_http_only_cookie_and_every_form_needs_its_csrf_token() {
    let (_d, s) = with_users(&["support"]);
    let id = person(&s);
    // `/` leads to the console, which leads to the sign-in.
    assert_eq!(get(&s, "/", "").location, "/console");
    assert_eq!(get(&s, "/console", "").location, "/console/sign-in");

    // A sign-in form posted without the token of its own page is refused.
    let refused = post(
        &s,
        "/console/sign-in",
        "",
        "token=x&name=support&password=correct+horse+battery+staple",
    );
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .cookies
            .iter()
            .all(|c| !c.starts_with("tarmo_console="))
    );

    let (cookie, raw) = sign_in(&s, "support");
    assert!(raw.contains("HttpOnly"), "{raw}");
    assert!(raw.contains("SameSite=Strict"), "{raw}");
    assert!(!raw.contains("Secure"), "plain http: {raw}");
    let page = get(&s, &format!("/console/people/{id}"), &cookie);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("+358401112233"));
    let csrf = field(&page.body, "csrf");

    // Without the token, or with another session's, nothing is recorded.
    let form = "purpose=email_marketing&decision=granted&reason=asked+on+the+phone";
    for bad in [
        "",
        "csrf=0000&",
        &format!("csrf={}x&", &csrf[..csrf.len() - 1]),
    ] {
        let a = post(
            &s,
            &format!("/console/people/{id}/consents"),
            &cookie,
            &format!("{bad}{form}"),
        );
        assert_eq!(a.status, 403, "{bad}: {}", a.body);
        assert!(a.body.contains("csrf_failed"));
    }
    let (_, v) = crate::common::get(&s, &format!("/api/v1/profiles/{id}/consents"));
    assert_eq!(v["ledger"], json!([]), "a refused form changed nothing");

    // A reason is required; then the change is in the ledger, method staff.
    let a = post(
        &s,
        &format!("/console/people/{id}/consents"),
        &cookie,
        &format!("csrf={csrf}&purpose=email_marketing&decision=granted&reason="),
    );
    assert_eq!(a.status, 400);
    let a = post(
        &s,
        &format!("/console/people/{id}/consents"),
        &cookie,
        &format!("csrf={csrf}&{form}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let (_, v) = crate::common::get(&s, &format!("/api/v1/profiles/{id}/consents"));
    let e = &v["ledger"][0];
    assert_eq!(
        (e["method"].as_str(), e["decision"].as_str()),
        (Some("staff"), Some("granted")),
        "{v}"
    );
    assert_eq!(e["evidence"]["reason"], "asked on the phone");
    let page = get(&s, &format!("/console/people/{id}"), &cookie);
    assert!(page.body.contains("asked on the phone"));

    // Signing out (a form too) ends the session key itself.
    let a = post(&s, "/console/sign-out", &cookie, "csrf=nope");
    assert_eq!(a.status, 403);
    let a = post(&s, "/console/sign-out", &cookie, &format!("csrf={csrf}"));
    assert_eq!(a.status, 303);
    assert_eq!(
        get(&s, &format!("/console/people/{id}"), &cookie).location,
        "/console/sign-in"
    );
}

#[test]
fn console_session_cookie_is_secure_under_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, w) = init(&data);
    user(&data, "dpo", "dpo");
    let s = start_with(
        &data,
        &a,
        &w,
        &["--public-url".into(), "https://crm.example".into()],
    );
    let page = get(&s, "/console/sign-in", "");
    assert!(page.cookies[0].contains("Secure"), "{:?}", page.cookies);
    let token = field(&page.body, "token");
    let pre = cookie_value(&page, "tarmo_sign_in");
    // The browser's Origin is the public URL's.
    let r = browser()
        .post(format!("{}/console/sign-in", s.base))
        .header("Cookie", &pre)
        .header("Origin", "https://crm.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={token}&name=dpo&password=correct+horse+battery+staple").as_bytes())
        .unwrap();
    let a = answer(r);
    assert_eq!(a.status, 303, "{}", a.body);
    let raw = a
        .cookies
        .iter()
        .find(|c| c.starts_with("tarmo_console="))
        .unwrap();
    assert!(
        raw.contains("Secure") && raw.contains("HttpOnly") && raw.contains("SameSite=Strict"),
        "{raw}"
    );
    // A form posted from another origin is refused before anything runs.
    let r = browser()
        .post(format!("{}/console/sign-in", s.base))
        .header("Cookie", &pre)
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={token}&name=dpo&password=x").as_bytes())
        .unwrap();
    assert_eq!(answer(r).status, 403);
}

#[test]
fn console_pages_follow_the_roles_as_the_api_does() {
    let (_d, s) = with_users(&["support", "analyst", "dpo"]);
    let id = person(&s);
    let (support, _) = sign_in(&s, "support");
    let (analyst, _) = sign_in(&s, "analyst");
    let (dpo, _) = sign_in(&s, "dpo");

    // Support finds one person by exact identifier; no access log, no queue.
    let home = get(&s, "/console", &support);
    assert!(home.body.contains("<label for=\"q\">Search</label>"));
    assert!(!home.body.contains("/console/access-log"));
    assert!(!home.body.contains("/console/requests"));
    for page in ["/console/access-log", "/console/requests"] {
        assert_eq!(get(&s, page, &support).status, 403, "{page}");
    }
    let found = get(&s, "/console/search?q=%2B358401112233", &support);
    assert_eq!(found.location, format!("/console/people/{id}"));

    // The analyst is pseudonymous: no search by address, no address shown.
    let a = get(&s, "/console/search?q=ann.console%40example.fi", &analyst);
    assert_eq!(a.status, 404);
    let page = get(&s, &format!("/console/people/{id}"), &analyst);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("gold-tier-marker"),
        "traits are the analyst's"
    );
    assert!(!page.body.contains("ann.console@example.fi"));
    assert!(!page.body.contains("+358401112233"));
    assert!(!page.body.contains("Record a change"));
    let a = post(
        &s,
        &format!("/console/people/{id}/consents"),
        &analyst,
        "csrf=x&purpose=analytics&decision=granted&reason=r",
    );
    assert_eq!(a.status, 403);

    // The DPO sees the access log and the queue.
    let home = get(&s, "/console", &dpo);
    assert!(home.body.contains("/console/access-log"));
    assert_eq!(get(&s, "/console/requests", &dpo).status, 200);
    // A service key in the cookie is not a signed-in person.
    let cookie = format!("tarmo_console={}", s.admin);
    assert_eq!(get(&s, "/console", &cookie).location, "/console/sign-in");
}

#[test]
fn a_read_of_a_person_in_the_console_is_in_the_access_log() {
    let (_d, s) = with_users(&["support", "dpo"]);
    let id = person(&s);
    let (_, before) = crate::common::get(&s, &format!("/api/v1/audit?profile={id}"));
    let console_reads = |v: &Value| {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["route"] == "/console/people/{id}")
            .count()
    };
    assert_eq!(console_reads(&before), 0);
    let (support, _) = sign_in(&s, "support");
    assert_eq!(
        get(&s, &format!("/console/people/{id}"), &support).status,
        200
    );
    let (_, after) = crate::common::get(&s, &format!("/api/v1/audit?profile={id}"));
    assert!(console_reads(&after) >= 1, "{after}");
    let r = after["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/console/people/{id}")
        .unwrap();
    assert_eq!(r["roles"], json!(["support"]));
    // And the DPO reads it in the console's access log.
    let (dpo, _) = sign_in(&s, "dpo");
    let log = get(&s, &format!("/console/access-log?profile={id}"), &dpo);
    assert!(log.body.contains("/console/people/{id}"), "{}", log.body);
}

#[test]
fn console_sign_in_is_rate_limited_like_the_api_login() {
    let (_d, s) = with_users(&["dpo"]);
    let page = get(&s, "/console/sign-in", "");
    let token = field(&page.body, "token");
    let pre = cookie_value(&page, "tarmo_sign_in");
    let mut limited = false;
    for _ in 0..8 {
        let a = post(
            &s,
            "/console/sign-in",
            &pre,
            &format!("token={token}&name=dpo&password=wrong"),
        );
        if a.status == 429 {
            limited = true;
            break;
        }
        assert_eq!(a.status, 401, "{}", a.body);
    }
    assert!(limited, "eight wrong passwords in a row were all answered");
}

#[test]
fn console_segment_builder_makes_a_property_filter_and_a_sum_and_counts_as_the_api() {
    let (_d, s) = with_users(&["admin"]);
    let order = |user: &str, revenue: f64, category: &str| {
        json!({"type": "track", "userId": user, "event": "Order Completed",
            "properties": {"revenue": revenue, "category": category}})
    };
    let batch = json!({"batch": [
        {"type": "identify", "userId": "ann", "traits": {"email": "ann.seg@example.fi"}},
        {"type": "identify", "userId": "bob", "traits": {"email": "bob.seg@example.fi"}},
        order("ann", 300.0, "shoes"),
        order("ann", 250.0, "shoes"),
        order("bob", 700.0, "books"),
        order("bob", 100.0, "shoes"),
    ]});
    let (st, v) = crate::common::post(
        &s,
        "/v1/batch",
        Some(basic(&s.write)),
        batch.to_string().as_bytes(),
        false,
    );
    assert_eq!(st, 200, "{v}");
    let (cookie, _) = sign_in(&s, "admin");
    let page = get(&s, "/console/segments/new", &cookie);
    assert_eq!(page.status, 200);
    let csrf = field(&page.body, "csrf");
    // Shoes orders summing over 500 within a year: Ann (550), not Bob (100).
    let form = format!(
        "csrf={csrf}&rows=1&purpose=personalisation&combine=all&kind_0=event\
         &name_0=Order+Completed&op_0=gt&value_0=500&within_0=365d&measure_0=sum\
         &sumprop_0=revenue&wprop_0=category&wop_0=eq&wvalue_0=shoes"
    );
    let want = json!({"all": [{"event": "Order Completed", "within": "365d",
        "where": [{"property": "category", "op": "eq", "value": "shoes"}],
        "sum": {"property": "revenue", "gt": 500}}]});
    let mut api_count = Value::Null;
    for _ in 0..100 {
        let (st, p) = admin(
            &s,
            "POST",
            "/api/v1/segments/preview",
            Some(&json!({"purpose": "personalisation", "rule": want})),
        );
        assert_eq!(st, 200, "{p}");
        api_count = p["count"].clone();
        if api_count == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(api_count, 1, "only Ann spent over 500 on shoes");

    // The live count (the builder's script posts here): the tree and count.
    let live = post(&s, "/console/segments/count", &cookie, &form);
    assert_eq!(live.status, 200, "{}", live.body);
    let live: Value = serde_json::from_str(&live.body).unwrap();
    assert_eq!(live["rule"], want);
    assert_eq!(live["count"], api_count);
    // Without its CSRF token it is refused like every console form.
    let refused = post(
        &s,
        "/console/segments/count",
        &cookie,
        &form.replace(&csrf, "x"),
    );
    assert_eq!(refused.status, 403);

    // The Count button, without script: the same tree shown, the same count.
    let counted = post(
        &s,
        "/console/segments/new",
        &cookie,
        &format!("{form}&action=count"),
    );
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert!(
        counted.body.contains("<strong>1</strong> people match now"),
        "{}",
        counted.body
    );
    assert!(
        counted.body.contains("&quot;where&quot;"),
        "{}",
        counted.body
    );
    assert!(counted.body.contains("&quot;sum&quot;"), "{}", counted.body);

    // The page's script is served by digest, cached, and allowed by the CSP.
    let page = get(&s, "/console/segments/new", &cookie);
    let at = page.body.find("<script src=\"").unwrap() + 13;
    let src = &page.body[at..at + page.body[at..].find('"').unwrap()];
    assert!(src.starts_with("/console/assets/console-") && src.ends_with(".js"));
    let r = browser().get(format!("{}{src}", s.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let r = browser()
        .get(format!("{}/console/segments/new", s.base))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

/// The staff accounts on the admin's keys page, as `name: roles (disabled)`.
fn accounts(s: &Server, admin: &str) -> Vec<String> {
    let page = get(s, "/console/keys", admin);
    assert_eq!(page.status, 200, "{}", page.body);
    let at = page.body.find("<h2>Staff accounts</h2>").unwrap();
    page.body[at..]
        .split("<tr><td>")
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row
                .split("</td><td>")
                .map(|c| c.split("</td>").next().unwrap())
                .collect();
            format!("{}: {} ({})", cells[1], cells[2], cells[4])
        })
        .collect()
}

/// The access log's records of changes to staff accounts.
fn account_changes(s: &Server) -> Vec<Value> {
    let (st, v) = crate::common::get(s, "/api/v1/audit");
    assert_eq!(st, 200, "{v}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "users")
        .cloned()
        .collect()
}

#[test]
fn an_admin_makes_a_support_account_in_the_console_and_it_signs_in() {
    let (d, s) = with_users(&["admin", "support"]);
    let (admin, _) = sign_in(&s, "admin");
    let page = get(&s, "/console/keys", &admin);
    assert!(
        page.body
            .contains("<label for=\"u-name\">Account name</label>")
    );
    assert!(
        page.body
            .contains("<label for=\"u-password\">Password</label>")
    );
    let csrf = field(&page.body, "csrf");
    let a = post(
        &s,
        "/console/users",
        &admin,
        &format!("csrf={csrf}&name=sirpa&password=correct+horse+battery+staple&role=support"),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.body.contains("Staff account sirpa (support) made."));
    assert!(
        !a.body.contains("correct horse"),
        "the password is never shown"
    );
    assert!(accounts(&s, &admin).contains(&"sirpa: support (no)".to_owned()));
    let changes = account_changes(&s);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["route"], "/console/users");
    assert_eq!(changes[0]["roles"], json!(["admin"]));
    assert!(!changes[0].to_string().contains("horse"));

    // The new account signs in and is support: no keys page.
    let (sirpa, _) = sign_in(&s, "sirpa");
    assert_eq!(get(&s, "/console/keys", &sirpa).status, 403);

    // Its roles change: its live session follows at once.
    let a = post(
        &s,
        "/console/users/3/roles",
        &admin,
        &format!("csrf={csrf}&role=support&role=dpo"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(accounts(&s, &admin).contains(&"sirpa: support, dpo (no)".to_owned()));
    assert_eq!(get(&s, "/console/access-log", &sirpa).status, 200);
    assert_eq!(account_changes(&s).len(), 2);

    // The records of these changes keep the access log's chain intact.
    drop(s);
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(d.path().join("data"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("access log intact"), "{said}");
}

#[test]
fn only_an_admin_manages_staff_accounts_in_the_console() {
    let (_d, s) = with_users(&["admin", "support", "dpo"]);
    let (admin, _) = sign_in(&s, "admin");
    let before = accounts(&s, &admin);
    for who in ["support", "dpo"] {
        let (cookie, _) = sign_in(&s, who);
        // A valid token of its own session: still not allowed.
        let csrf = field(&get(&s, "/console", &cookie).body, "csrf");
        for (path, form) in [
            (
                "/console/users",
                format!(
                    "csrf={csrf}&name=mallory&password=correct+horse+battery+staple&role=admin"
                ),
            ),
            ("/console/users/2/roles", format!("csrf={csrf}&role=admin")),
            ("/console/users/1/disable", format!("csrf={csrf}")),
        ] {
            let a = post(&s, path, &cookie, &form);
            assert_eq!(a.status, 403, "{who} {path}: {}", a.body);
        }
    }
    assert_eq!(accounts(&s, &admin), before, "nothing changed");
    assert!(account_changes(&s).is_empty());
}

#[test]
fn bad_staff_account_input_in_the_console_is_refused_and_changes_nothing() {
    let (_d, s) = with_users(&["admin", "support"]);
    let (admin, _) = sign_in(&s, "admin");
    let page = get(&s, "/console/keys", &admin);
    let csrf = field(&page.body, "csrf");
    let before = accounts(&s, &admin);
    let pw = "password=correct+horse+battery+staple";
    for (path, form, status, code) in [
        (
            "/console/users",
            format!("csrf={csrf}&name=support&{pw}&role=support"),
            409,
            "user_exists",
        ),
        (
            "/console/users",
            format!("csrf={csrf}&name=weak&password=short&role=support"),
            400,
            "weak_password",
        ),
        (
            "/console/users",
            format!("csrf={csrf}&name=nobody&{pw}&role=superuser"),
            400,
            "invalid_role",
        ),
        (
            "/console/users",
            format!("csrf={csrf}&name=norole&{pw}"),
            400,
            "invalid_role",
        ),
        (
            "/console/users",
            format!("csrf={csrf}&name=&{pw}&role=support"),
            400,
            "invalid_form",
        ),
        (
            "/console/users/2/roles",
            format!("csrf={csrf}&role=superuser"),
            400,
            "invalid_role",
        ),
        (
            "/console/users/99/roles",
            format!("csrf={csrf}&role=dpo"),
            404,
            "user_not_found",
        ),
        (
            "/console/users/1/disable",
            format!("csrf={csrf}"),
            400,
            "disable_self",
        ),
        (
            "/console/users/99/disable",
            format!("csrf={csrf}"),
            404,
            "user_not_found",
        ),
        // Without the session's CSRF token, nothing either.
        (
            "/console/users",
            format!("csrf=nope&name=csrf&{pw}&role=support"),
            403,
            "csrf_failed",
        ),
        (
            "/console/users/2/roles",
            "role=admin".to_owned(),
            403,
            "csrf_failed",
        ),
        (
            "/console/users/2/disable",
            "csrf=nope".to_owned(),
            403,
            "csrf_failed",
        ),
    ] {
        let a = post(&s, path, &admin, &form);
        assert_eq!(a.status, status, "{path} {form}: {}", a.body);
        assert!(a.body.contains(code), "{path} {form}: {}", a.body);
        assert!(!a.body.contains("correct horse"), "{}", a.body);
    }
    assert_eq!(accounts(&s, &admin), before, "nothing changed");
    assert!(account_changes(&s).is_empty());
    // The admin's own session still works.
    assert_eq!(get(&s, "/console/keys", &admin).status, 200);
}

#[test]
fn disabling_a_staff_account_in_the_console_ends_its_session_at_once() {
    let (_d, s) = with_users(&["admin", "support"]);
    let (admin, _) = sign_in(&s, "admin");
    let (support, _) = sign_in(&s, "support");
    assert_eq!(get(&s, "/console", &support).status, 200);
    let csrf = field(&get(&s, "/console/keys", &admin).body, "csrf");
    let a = post(
        &s,
        "/console/users/2/disable",
        &admin,
        &format!("csrf={csrf}"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("disabled; its sessions have ended"));
    // The very next request of the disabled account is signed out.
    assert_eq!(get(&s, "/console", &support).location, "/console/sign-in");
    // Nor can it sign in again, with a right password and a valid form.
    let page = get(&s, "/console/sign-in", "");
    let token = field(&page.body, "token");
    let a = post(
        &s,
        "/console/sign-in",
        &cookie_value(&page, "tarmo_sign_in"),
        &format!("token={token}&name=support&password=correct+horse+battery+staple"),
    );
    assert_ne!(a.status, 303, "{}", a.body);
    assert!(a.cookies.iter().all(|c| !c.starts_with("tarmo_console=")));
    assert!(accounts(&s, &admin)[1].starts_with("support: support ("));
    assert!(!accounts(&s, &admin)[1].ends_with("(no)"));
    assert_eq!(account_changes(&s).len(), 1);
    // Disabled twice: refused, nothing more recorded.
    let a = post(
        &s,
        "/console/users/2/disable",
        &admin,
        &format!("csrf={csrf}"),
    );
    assert_eq!(a.status, 404);
    assert_eq!(account_changes(&s).len(), 1);
}
