//! The security of the real `medfed serve`'s HTTP surface: every route's
//! authentication (one table, checked against the route list in the
//! source), browser sessions with CSRF protection, failed attempts logged,
//! counted and throttled, token rotation through the token file, the scrape
//! token, security headers, and HTTPS with secure cookies.

use std::time::{Duration, Instant};

mod common;
use common::server::{authed, Served, TOKEN};
use common::{external_available, medfed};

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

const SCRAPE: &str = "scrape-token-0123456789abcdef";

fn anonymous() -> Client {
    Client::builder().timeout(None).build().unwrap()
}

/// What a route needs.
#[derive(Debug, PartialEq)]
enum Needs {
    Nothing,
    Token,
    ScrapeToken,
    /// Its own check (the login).
    Itself,
}

/// Every route of src/web/mod.rs, with a request to it.
const ROUTES: &[(&str, &str, &str, Needs)] = &[
    ("GET", "/", "/", Needs::Nothing),
    ("GET", "/static/{path:.*}", "/static/app.js", Needs::Nothing),
    ("GET", "/favicon.ico", "/favicon.ico", Needs::Nothing),
    ("GET", "/healthz", "/healthz", Needs::Nothing),
    ("GET", "/readyz", "/readyz", Needs::Nothing),
    ("GET", "/metrics", "/metrics", Needs::ScrapeToken),
    ("GET", "/api/state", "/api/state", Needs::Token),
    ("GET", "/api/hospitals", "/api/hospitals", Needs::Token),
    ("GET", "/api/privacy", "/api/privacy", Needs::Token),
    ("GET", "/api/events", "/api/events", Needs::Token),
    ("GET", "/api/runs", "/api/runs", Needs::Token),
    ("POST", "/api/runs", "/api/runs", Needs::Token),
    ("GET", "/api/runs/{id}", "/api/runs/nope", Needs::Token),
    ("POST", "/api/runs/{id}/stop", "/api/runs/nope/stop", Needs::Token),
    (
        "GET",
        "/api/runs/{id}/model",
        "/api/runs/nope/model?task=breast_cancer",
        Needs::Token,
    ),
    ("GET", "/api/models", "/api/models", Needs::Token),
    (
        "GET",
        "/api/models/{task}/{version}",
        "/api/models/breast_cancer/1",
        Needs::Token,
    ),
    (
        "GET",
        "/api/models/{task}/{version}/download",
        "/api/models/breast_cancer/1/download",
        Needs::Token,
    ),
    ("POST", "/api/login", "/api/login", Needs::Itself),
    ("GET", "/api/session", "/api/session", Needs::Token),
    ("POST", "/api/logout", "/api/logout", Needs::Token),
    // Not a route: unknown API paths are refused before they are looked up.
    ("GET", "(unmatched)", "/api/nothing-here", Needs::Token),
];

/// The route patterns the server registers (read from its source, so a new
/// route without a row above fails this test).
fn registered_routes() -> Vec<String> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/web/mod.rs")).unwrap();
    // The first string literal after each `.route(` or `resource(`.
    let mut routes = Vec::new();
    for marker in [".route(", "resource("] {
        for (at, _) in source.match_indices(marker) {
            let rest = &source[at + marker.len()..];
            if let Some(path) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            {
                routes.push((at, path.to_string()));
            }
        }
    }
    routes.sort();
    routes.into_iter().map(|(_, p)| p).collect()
}

fn request(client: &Client, s: &Served, method: &str, path: &str) -> RequestBuilder {
    match method {
        "POST" => client
            .post(s.url(path))
            .header("Content-Type", "application/json")
            .body("{}"),
        _ => client.get(s.url(path)),
    }
}

fn error_of(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().expect("errors are JSON");
    (
        status,
        body["error"].as_str().expect("an error message").to_string(),
    )
}

fn login(client: &Client, s: &Served, token: &str) -> Response {
    client
        .post(s.url("/api/login"))
        .header("Content-Type", "application/json")
        .body(json!({ "token": token }).to_string())
        .send()
        .unwrap()
}

#[test]
fn every_route_needs_authentication_except_the_panel_files_and_health() {
    // One wrong token per route: more than the default limit allows.
    let s = Served::start(
        &["--task", "breast_cancer"],
        &[
            ("MEDFED_WEB__SCRAPE_TOKEN", SCRAPE),
            ("MEDFED_WEB__AUTH_FAILURES_PER_MINUTE", "1000"),
        ],
    );
    let mut listed: Vec<&str> = ROUTES
        .iter()
        .map(|r| r.1)
        .filter(|p| p.starts_with('/'))
        .collect();
    listed.dedup();
    let mut registered = registered_routes();
    registered.dedup();
    assert_eq!(listed, registered, "every registered route has a row in ROUTES");

    for (method, pattern, path, needs) in ROUTES {
        let without = request(&anonymous(), &s, method, path).send().unwrap();
        let headers = without.headers().clone();
        // Every response carries the security headers.
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        match needs {
            Needs::Nothing => assert_ne!(without.status(), 401, "{method} {pattern}"),
            Needs::Itself => {
                let (code, error) = error_of(without);
                assert_eq!(code, 400, "{method} {pattern}");
                assert!(error.contains("missing field `token`"), "{error}");
            }
            Needs::Token | Needs::ScrapeToken => {
                assert_eq!(
                    headers.get("www-authenticate").map(|h| h.to_str().unwrap()),
                    Some("Bearer realm=\"medfed\""),
                    "{method} {pattern}: {}",
                    without.status()
                );
                let (code, error) = error_of(without);
                assert_eq!(code, 401, "{method} {pattern}");
                assert!(error.contains("authentication required"), "{error}");
                let wrong = request(&anonymous(), &s, method, path)
                    .bearer_auth("wrong-token-0123456789")
                    .send()
                    .unwrap();
                assert_eq!(
                    error_of(wrong),
                    (401, "wrong token".to_string()),
                    "{method} {pattern}"
                );
                let with = request(&authed(), &s, method, path).send().unwrap();
                assert!(
                    ![401, 403].contains(&with.status().as_u16()),
                    "{method} {pattern} with the token: {}",
                    with.status()
                );
                if *needs == Needs::Token && with.status().as_u16() >= 400 {
                    // A refusal after authentication is a JSON error too.
                    assert!(error_of(with).1.len() > 3);
                } else if *needs == Needs::Token && !path.contains("/events") {
                    assert_eq!(with.headers()["cache-control"], "no-store", "{pattern}");
                }
            }
        }
    }
    // The scrape token opens /metrics and nothing else.
    let scrape = |path: &str| {
        anonymous()
            .get(s.url(path))
            .bearer_auth(SCRAPE)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(scrape("/metrics"), 200);
    assert_eq!(scrape("/api/state"), 401);
    // The failed attempts above are counted by reason.
    let metrics = anonymous()
        .get(s.url("/metrics"))
        .bearer_auth(SCRAPE)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("medfed_http_auth_failures_total{reason=\"missing\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("medfed_http_auth_failures_total{reason=\"wrong_token\"}"),
        "{metrics}"
    );
    // And logged with their source, never with the token tried.
    let log = s.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(
        !log.contains("wrong-token-0123456789") && !log.contains(TOKEN),
        "{log}"
    );
}

#[test]
fn a_browser_session_needs_its_csrf_token_for_every_change() {
    let s = Served::start(&["--task", "breast_cancer"], &[]);
    let (code, error) = error_of(login(&anonymous(), &s, "wrong-token-0123456789"));
    assert_eq!((code, error.as_str()), (401, "wrong token"));
    for (body, message) in [
        ("", "a JSON body is required"),
        ("{\"token\": 5}", "invalid type"),
        ("{\"tok\": \"x\"}", "unknown field"),
    ] {
        let r = anonymous()
            .post(s.url("/api/login"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let (code, error) = error_of(r);
        assert_eq!(code, 400, "{body}");
        assert!(error.contains(message), "{body}: {error}");
    }

    let r = login(&anonymous(), &s, TOKEN);
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = r.json::<Value>().unwrap()["csrf"].as_str().unwrap().to_string();
    assert!(!cookie.contains(&csrf), "the CSRF token is not the cookie");

    let with_cookie =
        |method: &str, path: &str| request(&anonymous(), &s, method, path).header("Cookie", &session);
    assert_eq!(with_cookie("GET", "/api/state").send().unwrap().status(), 200);
    let info: Value = with_cookie("GET", "/api/session").send().unwrap().json().unwrap();
    assert_eq!(info, json!({ "auth": "session", "csrf": csrf }));
    // A change without (or with a forged) CSRF header is refused.
    let (code, error) = error_of(with_cookie("POST", "/api/runs").send().unwrap());
    assert_eq!(code, 403, "{error}");
    assert!(error.contains("X-CSRF-Token"), "{error}");
    let forged = with_cookie("POST", "/api/runs")
        .header("X-CSRF-Token", "forged")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    let started = anonymous()
        .post(s.url("/api/runs"))
        .header("Cookie", &session)
        .header("X-CSRF-Token", &csrf)
        .header("Content-Type", "application/json")
        .body("{\"rounds\": 1}")
        .send()
        .unwrap();
    assert_eq!(started.status(), 202);
    // Another site's page cannot post changes (the browser says where a
    // request comes from), nor post a login as text/plain.
    let cross = with_cookie("POST", "/api/runs")
        .header("X-CSRF-Token", &csrf)
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .unwrap();
    let (code, error) = error_of(cross);
    assert_eq!(code, 403);
    assert!(error.contains("another site"), "{error}");
    let plain = anonymous()
        .post(s.url("/api/login"))
        .header("Content-Type", "text/plain")
        .body(json!({ "token": TOKEN }).to_string())
        .send()
        .unwrap();
    assert_eq!(error_of(plain).0, 415);

    // An open event stream of the session ends when the session does.
    let stream = anonymous()
        .get(s.url("/api/events"))
        .header("Cookie", &session)
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (ended_tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stream = stream;
        let _ = std::io::copy(&mut stream, &mut std::io::sink());
        let _ = ended_tx.send(());
    });

    // Signed out: the cookie no longer works.
    let out = with_cookie("POST", "/api/logout")
        .header("X-CSRF-Token", &csrf)
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(with_cookie("GET", "/api/state").send().unwrap().status(), 401);
    // Within one keep-alive period (15 s) the stream is closed.
    ended
        .recv_timeout(Duration::from_secs(30))
        .expect("the signed-out session's event stream ends");
}

#[test]
fn tokens_rotate_through_the_token_file_and_failed_attempts_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.token");
    let (old, new) = ("old-token-0123456789abcdef", "new-token-0123456789abcdef");
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let file_env = file.display().to_string();
    let s = Served::start(
        &["--task", "breast_cancer"],
        &[
            ("MEDFED_API_TOKEN", ""),
            ("MEDFED_WEB__TOKEN_FILE", &file_env),
            ("MEDFED_WEB__AUTH_FAILURES_PER_MINUTE", "3"),
        ],
    );
    let status = |token: &str| {
        anonymous()
            .get(s.url("/api/state"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(old), 200);
    // A browser session opened with the old token.
    let session = login(&anonymous(), &s, old).headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Rotation: both accepted while clients switch, then only the new one.
    std::fs::write(&file, format!("{old}\n{new}\n")).unwrap();
    // The file is looked at again within a second (polling with a token
    // not yet accepted would count as failed attempts).
    let reread = Duration::from_millis(2000);
    std::thread::sleep(reread);
    assert_eq!(status(new), 200);
    assert_eq!(status(old), 200);
    std::fs::write(&file, format!("{new}\n")).unwrap();
    std::thread::sleep(reread);
    assert_eq!(status(old), 401);
    let cookie_status = anonymous()
        .get(s.url("/api/state"))
        .header("Cookie", &session)
        .send()
        .unwrap()
        .status();
    assert_eq!(cookie_status, 401, "sessions of a rotated-out token end");

    // One failure so far (the old token); two more reach the limit of 3;
    // then even the right token is refused from this address.
    assert_eq!(status("guess-0123456789abcdef"), 401);
    assert_eq!(status("guess-0123456789abcdef"), 401);
    let r = anonymous()
        .get(s.url("/api/state"))
        .bearer_auth(new)
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(error_of(r).1.contains("too many failed authentications"));
    assert_eq!(login(&anonymous(), &s, new).status(), 429);
    // Health stays open to probes.
    assert_eq!(anonymous().get(s.url("/healthz")).send().unwrap().status(), 200);
    let log = s.log();
    // The three failures are logged (the refusals after them are not:
    // a throttled source cannot flood the log).
    assert_eq!(log.matches("authentication failed").count(), 3, "{log}");
    assert!(
        !log.contains(old) && !log.contains(new),
        "tokens are never logged"
    );
}

/// Behind a trusted proxy (an ingress controller), each client is
/// throttled on its own, by the address the proxy forwarded for; a
/// client's own X-Forwarded-For is never believed.
#[test]
fn behind_a_trusted_proxy_each_client_is_throttled_on_its_own() {
    // GET /api/state as `client` behind the proxy (X-Forwarded-For).
    let status = |s: &Served, client: &str, token: &str| {
        anonymous()
            .get(s.url("/api/state"))
            .header("X-Forwarded-For", client)
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let guess = "guess-0123456789abcdef";
    let s = Served::start(
        &["--task", "breast_cancer"],
        &[
            ("MEDFED_WEB__AUTH_FAILURES_PER_MINUTE", "2"),
            ("MEDFED_WEB__TRUSTED_PROXIES", "[\"127.0.0.1\"]"),
        ],
    );
    assert_eq!(status(&s, "198.51.100.1", guess), 401);
    assert_eq!(status(&s, "198.51.100.1", guess), 401);
    assert_eq!(
        status(&s, "198.51.100.1", TOKEN),
        429,
        "the guessing client is throttled"
    );
    assert_eq!(
        status(&s, "198.51.100.2", TOKEN),
        200,
        "another client behind the proxy is not"
    );
    assert!(
        s.log().contains("198.51.100.1"),
        "the log names the client, not the proxy"
    );

    // Without the proxy trusted, the header is the client's to forge: the
    // peer itself is throttled, whatever it claims.
    let plain = Served::start(
        &["--task", "breast_cancer"],
        &[("MEDFED_WEB__AUTH_FAILURES_PER_MINUTE", "2")],
    );
    assert_eq!(status(&plain, "198.51.100.1", guess), 401);
    assert_eq!(status(&plain, "198.51.100.3", guess), 401);
    assert_eq!(status(&plain, "198.51.100.4", TOKEN), 429);
}

#[test]
fn https_serves_the_panel_and_marks_the_session_cookie_secure() {
    if !external_available("curl") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let out = certs.path().display().to_string();
    let made = medfed(&["cluster", "gen-certs", "--out", &out], &[]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (cert, key) = (
        certs.path().join("coordinator.pem"),
        certs.path().join("coordinator-key.pem"),
    );
    let s = Served::start(
        &[
            "--task",
            "breast_cancer",
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let ca = certs.path().join("ca.pem");
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = curl(&[&s.url("/readyz")]);
        if String::from_utf8_lossy(&ready.stdout).contains("ready") {
            break;
        }
        assert!(Instant::now() < deadline, "not ready over HTTPS");
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = json!({ "token": TOKEN }).to_string();
    let login = curl(&[
        "-i",
        "-H",
        "Content-Type: application/json",
        "--data",
        &body,
        &s.url("/api/login"),
    ]);
    let text = String::from_utf8_lossy(&login.stdout).to_string();
    assert!(text.contains("200"), "{text}");
    let cookie_line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(cookie_line.contains("__Host-medfed_session="), "{cookie_line}");
    assert!(cookie_line.contains("; Secure"), "{cookie_line}");
    // Plain HTTP to the HTTPS port gets no page.
    let plain = s.url("/healthz").replace("https://", "http://");
    let refused = curl(&[&plain]);
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("ok"));
}

#[test]
fn requests_for_another_host_or_from_another_origin_are_refused() {
    let s = Served::start(
        &["--task", "breast_cancer"],
        &[("MEDFED_WEB__ALLOWED_HOSTS", "[\"medfed.hospital.example\"]")],
    );
    let client = anonymous();
    // DNS rebinding: an attacker's name resolving to this address. Even
    // health answers only to this server's names.
    for path in ["/healthz", "/api/state", "/"] {
        let r = client
            .get(s.url(path))
            .header("Host", "rebind.attacker.example")
            .send()
            .unwrap();
        let (status, error) = error_of(r);
        assert_eq!(status, 421, "{path}");
        assert!(error.contains("web.allowed_hosts"), "{error}");
    }
    // The configured ingress name and IP literals are this server.
    let port = s.base.rsplit(':').next().unwrap().to_string();
    for host in [
        format!("medfed.hospital.example:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let r = client
            .get(s.url("/healthz"))
            .header("Host", host.as_str())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // Another site's page, whatever the method and even with the token.
    let r = client
        .post(s.url("/api/runs"))
        .bearer_auth(TOKEN)
        .header("Origin", "http://evil.example")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(error_of(r).0, 403);
    let r = client
        .get(s.url("/api/state"))
        .bearer_auth(TOKEN)
        .header("Origin", &s.base)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "its own origin");
    let metrics = client.get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("reason=\"unknown_host\""), "{metrics}");
    assert!(metrics.contains("reason=\"foreign_origin\""), "{metrics}");
}
