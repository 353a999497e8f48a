//! The control panel in a real headless Chromium (Debian's, over
//! chromedriver): sign in with the token (an HttpOnly session cookie), start
//! a 5-round run by clicking, watch the round counter reach 5/5 and the
//! charts draw, see the 5 hospitals, the per-hospital accuracy chart and the
//! confusion matrix; the layout at 1024 and 1600 px (no overlap, no sideways
//! scrolling); markup in server-provided strings renders as text and the
//! Content-Security-Policy blocks inline script. Under DP: a field error
//! next to its field, a run started with non-default settings, and the
//! privacy view after a reload. Screenshots are saved as artifacts.

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

/// chromedriver and a headless Chromium session of `width` x `height`.
async fn open_browser(width: u32, height: u32) -> (Driver, tempfile::TempDir, fantoccini::Client) {
    let port = free_port();
    let driver = Driver(
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
                     "--no-first-run", format!("--window-size={width},{height}"),
                     format!("--user-data-dir={}", profile.path().display())]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(capabilities);
    let webdriver = format!("http://127.0.0.1:{port}");
    for _ in 0..50 {
        match builder.connect(&webdriver).await {
            Ok(c) => return (driver, profile, c),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("chromedriver accepts no session");
}

/// Open the panel and sign in with the token.
async fn signed_in(browser: &fantoccini::Client, served: &Served) {
    browser.goto(&served.url("/")).await.unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    // The field may be replaced while the page settles: type into the one there.
    eventually(
        "the token field to take the token",
        Duration::from_secs(30),
        || async {
            match browser.find(Locator::Css("#token")).await {
                Ok(field) => field.send_keys(TOKEN).await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await;
    click(browser, "#login").await;
    wait_live(browser).await;
}

async fn wait_live(browser: &fantoccini::Client) {
    eventually("the live stream", Duration::from_secs(30), || async {
        text_of(browser, "#connection").await.as_deref() == Some("live")
    })
    .await;
}

/// Where screenshots go (kept as the tests' artifacts).
fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Boxes that overlap, charts wider than their box, and whether the page
/// scrolls sideways, at the current window size.
const LAYOUT_CHECK: &str = r##"
  const rect = (e) => e.getBoundingClientRect();
  const visible = (e) => { const r = rect(e); return r.width > 0 && r.height > 0; };
  const overlaps = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
    && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  const problems = [];
  for (const selector of [".card", ".task-grid > .cell", ".chart"]) {
    const boxes = [...document.querySelectorAll(selector)].filter(visible);
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      if (overlaps(rect(boxes[i]), rect(boxes[j])) && !boxes[i].contains(boxes[j]) && !boxes[j].contains(boxes[i])) {
        problems.push(`${selector} ${boxes[i].id || i} overlaps ${boxes[j].id || j}`);
      }
    }
  }
  for (const box of [...document.querySelectorAll(".chart")].filter(visible)) {
    const plot = box.querySelector(".uplot");
    if (plot && rect(plot).right > rect(box).right + 1) problems.push(`chart ${box.id} is wider than its box`);
  }
  const sideways = document.documentElement.scrollWidth > window.innerWidth;
  return { problems, sideways, width: window.innerWidth, charts: document.querySelectorAll(".chart canvas").length };
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_a_run_from_the_panel_and_watch_it_finish() {
    if !external_available("chromedriver") || !external_available("chromium") {
        return;
    }
    // Served::start polls with a blocking client: off the async workers.
    let served =
        tokio::task::spawn_blocking(|| Served::start(&["--task", "breast_cancer", "--baseline"], &[]))
            .await
            .unwrap();
    let (_driver, _profile, browser) = open_browser(1400, 1000).await;
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
    // The charts hold the five rounds: held-out metrics, and each
    // hospital's accuracy on its own test split (DP off: they report it).
    eventually("five rounds in the charts", Duration::from_secs(10), || async {
        let points = browser
            .execute(
                "const v = medfedPanel.views.breast_cancer; return v.metrics ? v.metrics.plot.data[0].length : 0;",
                vec![],
            )
            .await
            .unwrap();
        points == json!(5)
    })
    .await;
    let hospitals = browser
        .execute(
            "const p = medfedPanel.views.breast_cancer.hospitals.plot; return [p.series.length - 1, p.data[0].length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(hospitals, json!([5, 5]), "five hospitals over five rounds");
    browser
        .find(Locator::Css("#live-breast_cancer-metrics canvas"))
        .await
        .expect("the metrics chart is drawn on a canvas");
    browser
        .find(Locator::Css("#live-breast_cancer-hospitals canvas"))
        .await
        .expect("the per-hospital chart is drawn");
    // The confusion matrix of the held-out set: its four cells add up to it.
    let cells = browser
        .execute(
            r#"return ["tp", "fp", "tn", "fn"].map((c) => Number(document.querySelector(`#live-breast_cancer-confusion [data-cell=${c}]`).textContent));"#,
            vec![],
        )
        .await
        .unwrap();
    let cells: Vec<u64> = serde_json::from_value(cells).unwrap();
    assert_eq!(cells.iter().sum::<u64>(), 113, "the held-out set: {cells:?}");
    assert!(cells[0] > 0 && cells[2] > 0, "{cells:?}");
    let table = text_of(&browser, "#live-breast_cancer-table").await.unwrap();
    assert!(
        table.contains("precision") && table.contains("federated (pooled over 5 hospitals)"),
        "{table}"
    );
    // `serve --baseline`: the centralized model, in the table and as a line.
    assert!(table.contains("centralized baseline"), "{table}");
    let baseline = browser
        .execute(
            "const d = medfedPanel.views.breast_cancer.metrics.plot.data[5]; return d.length && d.every((v) => v > 0.5);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(baseline, json!(true));
    // Round ticks are whole numbers.
    let ticks = browser
        .execute(
            "return [...document.querySelectorAll('#live-breast_cancer-metrics .u-axis')][0].textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(!ticks.as_str().unwrap().contains('.'), "round ticks: {ticks}");

    // The layout at 1024 and 1600 px (and between): nothing overlaps,
    // nothing scrolls sideways.
    for (width, name) in [
        (1024, "panel-1024.png"),
        (1280, "panel-1280.png"),
        (1400, "panel-1400.png"),
        (1600, "panel-1600.png"),
    ] {
        browser.set_window_size(width, 1000).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let layout = browser.execute(LAYOUT_CHECK, vec![]).await.unwrap();
        assert_eq!(layout["problems"], json!([]), "at {width} px: {layout}");
        assert_eq!(layout["sideways"], json!(false), "at {width} px: {layout}");
        assert!(layout["charts"].as_u64() >= Some(2), "{layout}");
        std::fs::write(artifacts().join(name), browser.screenshot().await.unwrap()).unwrap();
    }
    // The whole overview in one picture (README).
    browser.set_window_size(1400, 1400).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(
        artifacts().join("panel-overview-full.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.set_window_size(1400, 1000).await.unwrap();

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
    std::fs::write(artifacts().join("control-panel.png"), &png).unwrap();
    click(&browser, "button[data-view=overview]").await;
    let png = browser.screenshot().await.unwrap();
    std::fs::write(artifacts().join("control-panel-overview.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Markup in every kind of server-provided string renders as text: a
    // hospital name, a task name, an abort reason, run ids and statuses go
    // through the panel's own rendering code.
    let injected = browser
        .execute(
            r##"
            const evil = '<img src=x onerror="window.__xss = (window.__xss || 0) + 1">';
            const { onEvent, loadHospitals, loadRuns } = medfedPanel;
            onEvent({ type: "phase_changed", task: "breast_cancer", phase: { phase: "aborted", reason: evil } });
            onEvent({ type: "task_aborted", task: evil, reason: evil });
            const real = window.fetch;
            window.fetch = async (path) => new Response(JSON.stringify(path.startsWith("/api/hospitals")
              ? { hospitals: [{ name: evil, task: evil, kind: evil, node: evil, status: evil, activity: evil, samples: 1,
                  accepted: 1, declined: 0, rejected: 0, last_update: evil }] }
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

/// Under DP: a bad value is refused with its error next to its field; a run
/// started with non-default settings (strategy, learning rate, a lower
/// epsilon) runs with them; the privacy view shows each ledger and its
/// epsilon per round, and still does after a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_its_own_settings_and_the_privacy_view() {
    if !external_available("chromedriver") || !external_available("chromium") {
        return;
    }
    let served =
        tokio::task::spawn_blocking(|| Served::start(&["--task", "breast_cancer", "--dp-epsilon", "8"], &[]))
            .await
            .unwrap();
    let (_driver, _profile, browser) = open_browser(1400, 1000).await;
    signed_in(&browser, &served).await;
    let set = |css: &'static str, value: &'static str| {
        let browser = browser.clone();
        async move {
            let field = browser.find(Locator::Css(css)).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(value).await.unwrap();
        }
    };
    const RATE: &str = "#field-settings-breast_cancer-training-learning_rate";
    const EPSILON: &str = "#field-settings-breast_cancer-privacy-epsilon";
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(RATE))
        .await
        .unwrap();
    set("#rounds", "3").await;

    // A learning rate the configuration would refuse: the error is next to the field.
    set(RATE, "-1").await;
    click(&browser, "#start").await;
    eventually("the learning rate's error", Duration::from_secs(10), || async {
        text_of(&browser, &format!("{RATE}-error"))
            .await
            .is_some_and(|t| t.contains("must be positive, got -1"))
    })
    .await;
    let invalid = browser
        .find(Locator::Css(RATE))
        .await
        .unwrap()
        .attr("aria-invalid")
        .await
        .unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    assert!(!browser
        .find(Locator::Css("#error"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    // A budget above the hospitals' own: refused, next to the epsilon field.
    set(RATE, "0.05").await;
    set(EPSILON, "20").await;
    click(&browser, "#start").await;
    eventually("the epsilon's error", Duration::from_secs(10), || async {
        text_of(&browser, &format!("{EPSILON}-error"))
            .await
            .is_some_and(|t| t.contains("less private"))
    })
    .await;
    assert_eq!(
        text_of(&browser, &format!("{RATE}-error")).await.as_deref(),
        Some("")
    );
    // The privacy mode is the hospitals' policy: a run cannot turn DP off.
    const MODE: &str = "#field-settings-breast_cancer-privacy-mode";
    set(EPSILON, "8").await;
    let mode = browser.find(Locator::Css(MODE)).await.unwrap();
    mode.select_by_value("off").await.unwrap();
    click(&browser, "#start").await;
    eventually("the mode's error", Duration::from_secs(10), || async {
        text_of(&browser, &format!("{MODE}-error"))
            .await
            .is_some_and(|t| t.contains("a run cannot change it"))
    })
    .await;
    browser
        .find(Locator::Css(MODE))
        .await
        .unwrap()
        .select_by_value("dp-sgd")
        .await
        .unwrap();
    std::fs::write(
        artifacts().join("panel-field-error.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();

    // Non-default settings: trimmed mean, learning rate 0.05, epsilon 4.
    set(EPSILON, "4").await;
    let strategy = browser
        .find(Locator::Css("#field-settings-breast_cancer-strategy"))
        .await
        .unwrap();
    strategy.select_by_value("trimmed_mean").await.unwrap();
    set("#field-settings-breast_cancer-strategy-beta", "0.2").await;
    click(&browser, "#start").await;
    eventually("round 3/3", Duration::from_secs(120), || async {
        text_of(&browser, "#round-breast_cancer").await.as_deref() == Some("3/3")
    })
    .await;
    eventually("the run's end", Duration::from_secs(30), || async {
        text_of(&browser, "#phase-breast_cancer").await.as_deref() == Some("finished")
    })
    .await;
    let run = browser
        .execute(
            "return fetch(`/api/runs/${medfedPanel.state.runId}`).then((r) => r.json());",
            vec![],
        )
        .await
        .unwrap();
    let used = &run["settings"]["breast_cancer"];
    assert_eq!(
        used["strategy"],
        json!({"name": "trimmed_mean", "beta": 0.2}),
        "{run}"
    );
    assert_eq!(used["training"]["learning_rate"], json!(0.05), "{run}");
    assert_eq!(used["privacy"]["epsilon"].as_f64(), Some(4.0), "{run}");
    let spent = &run["report"]["breast_cancer"]["privacy"]["epsilon_spent"];
    for (hospital, eps) in spent.as_object().unwrap() {
        let eps = eps.as_f64().unwrap();
        assert!(
            eps > 0.0 && eps <= 4.0 + 1e-9,
            "{hospital} spent {eps}, over the run's cap of 4"
        );
    }

    // The privacy view: five ledgers, each with three points, and it survives a reload.
    let check_privacy = || async {
        click(&browser, "button[data-view=hospitals]").await;
        eventually("the privacy table", Duration::from_secs(10), || async {
            browser
                .find_all(Locator::Css("#privacy-table tbody tr"))
                .await
                .map(|rows| rows.len() == 5)
                .unwrap_or(false)
        })
        .await;
        // The next run's cost is of the form's target rounds (once the form
        // is built: after a reload it may still be filling in).
        let deadline = Instant::now() + Duration::from_secs(10);
        let rounds = loop {
            let value = match browser.find(Locator::Css("#rounds")).await {
                Ok(field) => field.prop("value").await.ok().flatten(),
                Err(_) => None,
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the form's rounds"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The table may be re-rendered between reads: read it until it says so.
        let expected = format!("over {rounds} rounds");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = text_of(&browser, "#privacy-table tbody tr")
                .await
                .unwrap_or_default();
            if row.contains("dp-sgd") && row.contains(&expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the privacy row never said '{expected}': {row}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eventually("the privacy chart", Duration::from_secs(10), || async {
            let points = browser
                .execute(
                    "const c = document.querySelector('#privacy-chart .uplot'); return c ? document.querySelectorAll('#privacy-chart canvas').length : 0;",
                    vec![],
                )
                .await
                .unwrap();
            points.as_u64() >= Some(1)
        })
        .await;
        let history = browser
            .execute(
                "return fetch('/api/privacy').then((r) => r.json()).then((p) => p.hospitals.map((h) => h.history.length));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(history, json!([3, 3, 3, 3, 3]));
    };
    check_privacy().await;
    browser.set_window_size(1400, 1700).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(
        artifacts().join("panel-privacy.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.refresh().await.unwrap();
    wait_live(&browser).await;
    check_privacy().await;
    std::fs::write(
        artifacts().join("panel-privacy-after-reload.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.close().await.unwrap();
}

/// Distributed DP (secure aggregation, one DP-SGD step per round with noise
/// shares): the hospitals view states both guarantees as text — the epsilon
/// that holds against the coordinator, and the larger one if the
/// coordinator and every other hospital collude.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hospitals_view_states_both_guarantees_under_distributed_dp() {
    if !external_available("chromedriver") || !external_available("chromium") {
        return;
    }
    let served = tokio::task::spawn_blocking(|| {
        Served::start(
            &[
                "--task",
                "breast_cancer",
                "--secure-aggregation",
                "--dp-epsilon",
                "8",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let (_driver, _profile, browser) = open_browser(1400, 1000).await;
    signed_in(&browser, &served).await;
    let rounds = browser.find(Locator::Css("#rounds")).await.unwrap();
    rounds.clear().await.unwrap();
    rounds.send_keys("3").await.unwrap();
    click(&browser, "#start").await;
    eventually("round 3/3", Duration::from_secs(120), || async {
        text_of(&browser, "#round-breast_cancer").await.as_deref() == Some("3/3")
    })
    .await;
    click(&browser, "button[data-view=hospitals]").await;
    // "0.123 / 8.00 (0.456 if all others collude)" on every row.
    let guarantees = |row: &str| -> Option<(f64, f64)> {
        let (_, cell) = row.split_once(" / 8.00 (")?;
        let collusion = cell.split_once(" if all others collude)")?.0.parse().ok()?;
        let central = row.split(" / 8.00 (").next()?.rsplit(' ').next()?.parse().ok()?;
        Some((central, collusion))
    };
    eventually(
        "both guarantees on every hospital",
        Duration::from_secs(20),
        || async {
            let rows = match browser.find_all(Locator::Css("#hospital-table tbody tr")).await {
                Ok(found) => found,
                Err(_) => return false,
            };
            let mut texts = Vec::new();
            for row in rows {
                texts.push(row.text().await.unwrap_or_default());
            }
            texts.len() == 5
                && texts
                    .iter()
                    .all(|r| guarantees(r).is_some_and(|(c, k)| c > 0.0 && k > c))
        },
    )
    .await;
    let png = browser.screenshot().await.unwrap();
    std::fs::write(artifacts().join("panel-distributed-dp.png"), &png).unwrap();
}
