//! The control panel in a real headless Chromium (Debian's, over
//! chromedriver): enter the token, start a 5-round run by clicking, watch
//! the round counter reach 5/5 and the chart draw, see the 5 hospitals.
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

    // A wrong token: the API's refusal is shown to the user.
    browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-token-000000")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#start"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the error banner", Duration::from_secs(10), || async {
        text_of(&browser, "#error")
            .await
            .is_some_and(|t| t.contains("token"))
    })
    .await;

    // The right token, 5 rounds, start.
    let token = browser.find(Locator::Css("#token")).await.unwrap();
    token.clear().await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
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
    browser.close().await.unwrap();
}
