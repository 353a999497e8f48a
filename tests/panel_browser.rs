//! The control panel in a real headless Chromium (Debian's, over
//! chromedriver): sign in with the token (an HttpOnly session cookie), start
//! a 5-round run by clicking, watch the round counter reach 5/5 and the
//! chart draw, see the 5 hospitals; markup in server-provided strings
//! renders as text and the Content-Security-Policy blocks inline script.
//! A screenshot is saved as an artifact.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::server::{Served, TOKEN};
use common::{external_available, free_port};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Click the element at `css`.
async fn click(browser: &fantoccini::Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the element at `css` now (the panel re-renders its cards,
/// so an element found earlier may be stale).
async fn text_of(browser: &fantoccini::Client, css: &str) -> Option<String> {
    browser.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_a_run_from_the_panel_and_watch_it_finish() {
    if !external_available("chromedriver") || !external_available("chromium") {
        return;
    }
    // Served::start polls with a blocking client: off the async workers.
    let served = tokio::task::spawn_blocking(|| Served::start(&["--task", "breast_cancer"], &[]))
        .await
        .unwrap();
    let port = free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1400,1000",
                     format!("--user-data-dir={}", profile.path().display())]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(capabilities);
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut browser = None;
    for _ in 0..50 {
        match builder.connect(&webdriver).await {
            Ok(c) => {
                browser = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let browser = browser.expect("chromedriver accepts a session");

    browser.goto(&served.url("/")).await.unwrap();
    // Not signed in: the sign-in form, nothing else.
    eventually("the sign-in form", Duration::from_secs(30), || async {
        match browser.find(Locator::Css("#login-form")).await {
            Ok(form) => form.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert!(!browser
        .find(Locator::Css("#main"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());

    // A wrong token: the refusal is shown to the user.
    let sign_in = |token: &'static str| {
        let browser = browser.clone();
        async move {
            let field = browser.find(Locator::Css("#token")).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(token).await.unwrap();
            click(&browser, "#login").await;
        }
    };
    sign_in("not-the-token-000000").await;
    eventually("the error banner", Duration::from_secs(10), || async {
        text_of(&browser, "#error")
            .await
            .is_some_and(|t| t.contains("wrong token"))
    })
    .await;

    // The right token: a session cookie scripts cannot read.
    sign_in(TOKEN).await;
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#round-breast_cancer"))
        .await
        .unwrap();
    eventually("the live stream", Duration::from_secs(30), || async {
        text_of(&browser, "#connection").await.as_deref() == Some("live")
    })
    .await;
    assert!(
        !browser
            .find(Locator::Css("#login-form"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "signed in: the form is gone"
    );
    let card = text_of(&browser, "#card-breast_cancer").await.unwrap();
    assert!(card.contains("accuracy") && card.contains("kind"), "{card}");
    assert!(!card.contains("[object"), "{card}");
    eventually("the membership on the card", Duration::from_secs(10), || async {
        text_of(&browser, "#card-breast_cancer")
            .await
            .is_some_and(|t| t.contains("5 of 5 joined (quorum 4)"))
    })
    .await;
    let visible_cookies = browser.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(visible_cookies, json!(""), "the session cookie is HttpOnly");
    let without = browser
        .execute(
            "return fetch('/api/state', { credentials: 'omit' }).then((r) => r.status);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(without, json!(401), "a request without the cookie is refused");
    // The token field was cleared: the token is not left in the page.
    let field = browser.find(Locator::Css("#token")).await.unwrap();
    assert_eq!(field.prop("value").await.unwrap().as_deref(), Some(""));

    let rounds = browser.find(Locator::Css("#rounds")).await.unwrap();
    rounds.clear().await.unwrap();
    rounds.send_keys("5").await.unwrap();
    browser
        .find(Locator::Css("#start"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("round 5/5", Duration::from_secs(120), || async {
        text_of(&browser, "#round-breast_cancer").await.as_deref() == Some("5/5")
    })
    .await;
    let banner = browser.find(Locator::Css("#error")).await.unwrap();
    assert!(
        !banner.is_displayed().await.unwrap(),
        "no error after a good start"
    );
    // The chart holds the five rounds and drew them.
    let points = browser
        .execute("return state.series.breast_cancer.round.length;", vec![])
        .await
        .unwrap();
    assert_eq!(points, json!(5));
    browser
        .find(Locator::Css("#chart-breast_cancer canvas"))
        .await
        .expect("the chart is drawn on a canvas");

    // The hospitals view lists all five.
    click(&browser, "button[data-view=hospitals]").await;
    eventually("5 hospitals", Duration::from_secs(10), || async {
        browser
            .find_all(Locator::Css("#hospital-table tbody tr"))
            .await
            .map(|rows| rows.len() == 5)
            .unwrap_or(false)
    })
    .await;
    let png = browser.screenshot().await.unwrap();
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("control-panel.png"), &png).unwrap();
    click(&browser, "button[data-view=overview]").await;
    let png = browser.screenshot().await.unwrap();
    std::fs::write(artifacts.join("control-panel-overview.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Markup in every kind of server-provided string renders as text: a
    // hospital name, a task name, an abort reason, run ids and statuses go
    // through the panel's own rendering code.
    let injected = browser
        .execute(
            r##"
            const evil = '<img src=x onerror="window.__xss = (window.__xss || 0) + 1">';
            onEvent({ type: "phase_changed", task: "breast_cancer", phase: { phase: "aborted", reason: evil } });
            onEvent({ type: "task_aborted", task: evil, reason: evil });
            const real = window.fetch;
            window.fetch = async (path) => new Response(JSON.stringify(path.startsWith("/api/hospitals")
              ? { hospitals: [{ name: evil, task: evil, kind: evil, node: evil, status: evil, samples: 1, last_update: evil }] }
              : { runs: [{ id: evil, status: evil, tasks: [evil], final_accuracy: { [evil]: 0.5 } }] }), { status: 200 });
            return Promise.all([loadHospitals(), loadRuns()]).then(() => { window.fetch = real; return true; });
            "##,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(true));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = browser
        .execute(
            r##"return {
              xss: window.__xss || 0,
              images: document.querySelectorAll("main img, #error img").length,
              card: document.querySelector("#card-breast_cancer dd.status-offline").textContent,
              banner: document.querySelector("#error").textContent,
              hospital: document.querySelector("#hospital-table tbody td").textContent,
              run: document.querySelector("#run-table tbody button").textContent,
            };"##,
            vec![],
        )
        .await
        .unwrap();
    let evil = "<img src=x onerror=\"window.__xss = (window.__xss || 0) + 1\">";
    assert_eq!(outcome["xss"], json!(0), "{outcome}");
    assert_eq!(outcome["images"], json!(0), "{outcome}");
    assert_eq!(outcome["card"], json!(evil), "{outcome}");
    assert_eq!(outcome["hospital"], json!(evil), "{outcome}");
    assert_eq!(outcome["run"], json!(evil), "{outcome}");
    assert!(outcome["banner"].as_str().unwrap().contains(evil), "{outcome}");

    // The Content-Security-Policy blocks an inline script (and says so).
    let blocked = browser
        .execute(
            r##"
            window.__violations = 0;
            document.addEventListener("securitypolicyviolation", () => { window.__violations += 1; });
            const script = document.createElement("script");
            script.textContent = "window.__inline = 1";
            document.body.append(script);
            return new Promise((done) => setTimeout(() => done({ ran: window.__inline === 1, violations: window.__violations }), 300));
            "##,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(blocked["ran"], json!(false), "{blocked}");
    assert!(blocked["violations"].as_u64() >= Some(1), "{blocked}");

    browser.close().await.unwrap();
}
