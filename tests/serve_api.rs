//! The real `medfed serve`: every REST endpoint with its errors, the event
//! stream of a whole run, and /metrics (promtool, the Grafana dashboard's
//! metric names, a real Prometheus scraping it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::server::{authed, Served, TOKEN};
use common::{external_available, free_port};

use medfed_models::checkpoint::Checkpoint;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

/// Authenticated with the token.
fn client() -> Client {
    authed()
}

/// No credentials.
fn anonymous() -> Client {
    Client::builder().timeout(None).build().unwrap()
}

fn post(s: &Served, path: &str, token: Option<&str>, body: &str) -> Response {
    let mut r = anonymous()
        .post(s.url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    r.send().unwrap()
}

fn get_json(s: &Served, path: &str) -> (u16, Value) {
    let r = client().get(s.url(path)).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Status and the `error` message of a response that must be a JSON error.
fn error_of(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().expect("errors are JSON");
    (
        status,
        body["error"].as_str().expect("an error message").to_string(),
    )
}

fn start_run(s: &Served, body: Value) -> String {
    let r = post(s, "/api/runs", Some(TOKEN), &body.to_string());
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn wait_ended(s: &Served, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let (_, run) = get_json(s, &format!("/api/runs/{id}"));
        if run["status"] != "running" {
            return run;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("run {id} did not end");
}

#[test]
fn every_endpoint_answers_and_every_bad_request_gets_a_named_4xx() {
    let s = Served::start(&["--task", "breast_cancer"], &[]);
    let (code, health) = get_json(&s, "/healthz");
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (_, state) = get_json(&s, "/api/state");
    assert_eq!(state["tasks"]["breast_cancer"]["phase"], "idle");
    assert_eq!(state["tasks"]["breast_cancer"]["target_rounds"], 10);
    assert_eq!(state["settings"]["breast_cancer"]["strategy"], "fedavg");
    let (_, hospitals) = get_json(&s, "/api/hospitals");
    let hospitals = hospitals["hospitals"].as_array().unwrap();
    assert_eq!(hospitals.len(), 5);
    assert!(hospitals
        .iter()
        .all(|h| h["status"] == "online" && h["samples"].as_u64() > Some(0)));

    // The panel's files are served from the binary, to anyone.
    let index = anonymous().get(s.url("/")).send().unwrap();
    assert!(index.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(index.text().unwrap().contains("/static/app.js"));
    for path in [
        "/static/app.js",
        "/static/style.css",
        "/static/vendor/uplot/uPlot.iife.min.js",
    ] {
        assert_eq!(
            anonymous().get(s.url(path)).send().unwrap().status(),
            200,
            "{path}"
        );
    }
    let license = anonymous()
        .get(s.url("/static/vendor/uplot/LICENSE"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(license.contains("MIT License"));

    // Control endpoints need the token.
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        assert_eq!(error_of(post(&s, "/api/runs", token, "{}")).0, 401);
        assert_eq!(error_of(post(&s, "/api/runs/x/stop", token, "")).0, 401);
    }
    // Malformed requests: a 4xx naming the problem.
    let big = format!("{{\"tasks\": [\"{}\"]}}", "x".repeat(20_000));
    let cases: [(&str, u16, &str); 14] = [
        ("{\"rounds\": 3", 400, "the body is not valid JSON"),
        ("5", 400, "the body must be a JSON object, got a number"),
        (
            "[\"breast_cancer\"]",
            400,
            "the body must be a JSON object, got an array",
        ),
        (
            "{\"tasks\": [\"breast_cancer\", \"breast_cancer\"]}",
            400,
            "task 'breast_cancer' is named twice",
        ),
        (
            "{\"settings\": {\"breast_cancer\": {\"training\": {\"learning_rate\": 0}}}}",
            400,
            "`settings.breast_cancer.training.learning_rate`: must be positive, got 0",
        ),
        (
            "{\"settings\": {\"breast_cancer\": {\"privacy\": {\"mode\": \"dp-sgd\"}}}}",
            400,
            "a run cannot change it",
        ),
        ("", 400, "a JSON body is required"),
        ("{\"rounds\": 0}", 400, "rounds must be 1..=10000, got 0"),
        ("{\"rounds\": 1000000}", 400, "rounds must be 1..=10000"),
        ("{\"rounds\": \"five\"}", 400, "invalid type"),
        ("{\"tasks\": []}", 400, "at least one task"),
        ("{\"tasks\": [\"nope\"]}", 400, "unknown task 'nope'"),
        ("{\"rounds\": 3, \"colour\": 1}", 400, "unknown field `colour`"),
        (&big, 413, "larger than 16384 bytes"),
    ];
    for (body, status, message) in cases {
        let (code, error) = error_of(post(&s, "/api/runs", Some(TOKEN), body));
        assert_eq!(code, status, "{body:.60}: {error}");
        assert!(error.contains(message), "{body:.60}: {error}");
        assert!(
            !error.contains("StartBody") && !error.contains("struct "),
            "{error}"
        );
    }
    // A settings error names its field, for the panel to show it there.
    let r = post(
        &s,
        "/api/runs",
        Some(TOKEN),
        "{\"settings\": {\"breast_cancer\": {\"strategy\": {\"name\": \"krum\", \"f\": 7}}}}",
    );
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["key"], "settings.breast_cancer.strategy.f", "{body}");
    // A method a route does not take: 405 with the JSON error too.
    for (method, path) in [("PUT", "/api/state"), ("DELETE", "/api/runs")] {
        let r = client()
            .request(method.parse().unwrap(), s.url(path))
            .header("X-CSRF-Token", "unused")
            .send()
            .unwrap();
        let (code, error) = error_of(r);
        assert_eq!(code, 405, "{method} {path}: {error}");
        assert_eq!(error, format!("{method} is not allowed on {path}"));
    }
    let icon = anonymous().get(s.url("/favicon.ico")).send().unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    for path in [
        "/api/runs/nope",
        "/api/runs/nope/model?task=breast_cancer",
        "/nothing-here",
        "/static/nope.js",
    ] {
        let (code, error) = error_of(client().get(s.url(path)).send().unwrap());
        assert_eq!(code, 404, "{path}: {error}");
    }
    assert_eq!(error_of(post(&s, "/api/runs/nope/stop", Some(TOKEN), "")).0, 404);

    // A long run: 409 while it is active, live report and model, then stop.
    let id = start_run(&s, json!({"rounds": 10000}));
    let (code, busy) = error_of(post(&s, "/api/runs", Some(TOKEN), "{\"rounds\": 2}"));
    assert_eq!(code, 409, "{busy}");
    assert!(busy.contains("still active"), "{busy}");
    let (code, running) = get_json(&s, &format!("/api/runs/{id}"));
    assert_eq!((code, running["status"].as_str()), (200, Some("running")));
    assert!(running["report"]["breast_cancer"]["rounds"].is_array());
    let (code, _) = error_of(
        client()
            .get(s.url(&format!("/api/runs/{id}/model")))
            .send()
            .unwrap(),
    );
    assert_eq!(code, 400, "the model needs ?task=");
    let (code, _) = error_of(
        client()
            .get(s.url(&format!("/api/runs/{id}/model?task=nope")))
            .send()
            .unwrap(),
    );
    assert_eq!(code, 404);
    let live = client()
        .get(s.url(&format!("/api/runs/{id}/model?task=breast_cancer")))
        .send()
        .unwrap();
    assert_eq!(live.status(), 200);
    Checkpoint::from_bytes(&live.bytes().unwrap(), None).expect("a safetensors checkpoint");

    let r = post(&s, &format!("/api/runs/{id}/stop"), Some(TOKEN), "");
    assert_eq!(r.status().as_u16(), 202);
    let ended = wait_ended(&s, &id);
    assert_eq!(ended["status"], "stopped");
    let task = &ended["report"]["breast_cancer"];
    assert_eq!(task["status"], "stopped", "{task}");
    let (code, again) = error_of(post(&s, &format!("/api/runs/{id}/stop"), Some(TOKEN), ""));
    assert_eq!(code, 409, "{again}");

    // The history and the final model of the ended run.
    let (_, runs) = get_json(&s, "/api/runs");
    assert_eq!(runs["runs"][0]["id"], id.as_str());
    let bytes = client()
        .get(s.url(&format!("/api/runs/{id}/model?task=breast_cancer")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let model = Checkpoint::from_bytes(&bytes, None).unwrap();
    assert_eq!(
        u64::from(model.round),
        task["rounds"].as_array().unwrap().len() as u64,
        "the final model is the last aggregated round"
    );
    // A new run can start once the last one ended, with its own settings.
    let next = start_run(
        &s,
        json!({"rounds": 2, "tasks": ["breast_cancer"], "settings": {"breast_cancer": {
            "strategy": {"name": "trimmed_mean", "beta": 0.2},
            "training": {"learning_rate": 0.05, "local_epochs": 2}}}}),
    );
    let ended = wait_ended(&s, &next);
    assert_eq!(ended["status"], "finished");
    let used = &ended["settings"]["breast_cancer"];
    assert_eq!(used["strategy"]["name"], "trimmed_mean", "{ended}");
    assert_eq!(used["training"]["learning_rate"], 0.05, "{ended}");
    assert_eq!(used["training"]["local_epochs"], 2, "{ended}");
}

#[test]
fn the_event_stream_carries_a_whole_run_in_order() {
    let s = Served::start(&["--task", "breast_cancer"], &[]);
    let response = client().get(s.url("/api/events")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data).unwrap();
                let end = event["type"] == "run_ended";
                if tx.send(event).is_err() || end {
                    return;
                }
            }
        }
    });
    // The stream is open before the run starts: nothing is missed.
    std::thread::sleep(Duration::from_millis(300));
    let id = start_run(&s, json!({"rounds": 5}));
    let mut events = Vec::new();
    loop {
        let event = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("events keep coming");
        let end = event["type"] == "run_ended";
        events.push(event);
        if end {
            break;
        }
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "run_started");
    assert_eq!(events[0]["run_id"], id.as_str());
    assert_eq!(*types.last().unwrap(), "run_ended");
    let aggregated: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "round_aggregated")
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    assert_eq!(aggregated, vec![1, 2, 3, 4, 5]);
    assert_eq!(types.iter().filter(|t| **t == "update_accepted").count(), 25);
    // Each round starts before it is aggregated; the task finishes after its last round.
    for round in 1..=5u64 {
        let started = events
            .iter()
            .position(|e| e["type"] == "round_started" && e["round"] == round)
            .unwrap();
        let done = events
            .iter()
            .position(|e| e["type"] == "round_aggregated" && e["round"] == round)
            .unwrap();
        assert!(started < done, "round {round}");
    }
    let finished = types.iter().position(|t| *t == "task_finished").unwrap();
    let last_round = types.iter().rposition(|t| *t == "round_aggregated").unwrap();
    assert!(last_round < finished && finished < types.len() - 1);
}

/// The Grafana dashboard, checked for its datasource variable.
fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/grafana/dashboards/medfed.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
    }
    dashboard
}

/// Every panel query, with Grafana's `$__rate_interval` made concrete.
fn dashboard_exprs() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().replace("$__rate_interval", "1m"))
        .collect()
}

/// Every `medfed_*` name the dashboard queries.
fn dashboard_metric_names() -> Vec<String> {
    let mut names = Vec::new();
    for expr in dashboard_exprs() {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("medfed_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_pass_promtool_cover_the_dashboard_and_are_scraped_by_prometheus() {
    // DP on, so the privacy families have samples too.
    let s = Served::start(&["--task", "breast_cancer", "--dp-epsilon", "8"], &[]);
    let id = start_run(&s, json!({"rounds": 3}));
    assert_eq!(wait_ended(&s, &id)["status"], "finished");
    get_json(&s, "/api/state");

    let r = client().get(s.url("/metrics")).send().unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().unwrap();
    assert!(text.contains("medfed_round{task=\"breast_cancer\"} 3"), "{text}");
    assert!(text.contains("medfed_privacy_epsilon_budget{hospital=\"breast_cancer-1\"} 8"));
    for line in [
        "medfed_hospitals_connected{task=\"breast_cancer\"} 5",
        "medfed_hospitals_expected{task=\"breast_cancer\"} 5",
        "medfed_hospital_updates_total{task=\"breast_cancer\",hospital=\"breast_cancer-1\",outcome=\"accepted\"} 3",
        "medfed_hospital_up{task=\"breast_cancer\",hospital=\"breast_cancer-5\"} 1",
        "medfed_hospital_series_omitted 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    for family in [
        "medfed_build_info{version=",
        "medfed_hospital_last_seen_timestamp_seconds{",
        "medfed_model_sent_bytes_total{",
        "medfed_update_received_bytes_total{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(family), "{family} in {text}");
    }
    // Under DP a hospital's answer time would track its record count: the
    // family is declared, with no sample.
    assert!(
        text.contains("# TYPE medfed_hospital_update_latency_seconds gauge"),
        "{text}"
    );
    assert!(
        !text.contains("medfed_hospital_update_latency_seconds{"),
        "{text}"
    );
    let om = client()
        .get(s.url("/metrics"))
        .header("Accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = om.text().unwrap();
    assert!(om.trim_end().ends_with("# EOF"));
    for unit in [
        "# UNIT medfed_model_sent_bytes bytes",
        "# UNIT medfed_round_duration_seconds seconds",
        "# UNIT process_resident_memory_bytes bytes",
    ] {
        assert!(om.contains(unit), "{unit}");
    }

    for name in dashboard_metric_names() {
        // A sample, or the family declared without one (answer times under DP).
        let exported = text.lines().any(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                || l.strip_prefix("# TYPE ")
                    .and_then(|l| l.strip_prefix(name.as_str()))
                    .is_some_and(|rest| rest.starts_with(' '))
        });
        assert!(
            exported,
            "the dashboard queries {name}, which /metrics does not export"
        );
    }

    common::promtool_check_metrics(&text);

    if !external_available("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = s.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: medfed\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Option<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{port}/api/v1/query"),
            &[("query", q)],
        )
        .ok()?;
        let r = client().get(url).send().ok()?;
        r.json().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let round = loop {
        if let Some(v) = query("medfed_round{task=\"breast_cancer\"}") {
            if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                break value.to_string();
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped medfed_round");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(round, "3");
    // Every dashboard query is valid PromQL against the real scrape.
    for expr in dashboard_exprs() {
        let v = query(&expr).unwrap_or(Value::Null);
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
}

/// `serve` keeps each hospital's ledger under its data directory: after a
/// restart the hospitals show what they spent before any run, and a
/// hospital whose budget is spent stays spent (it was once back at 0).
/// Per-hospital series are kept for the first `web.hospital_series`
/// hospitals only; the rest are counted.
#[test]
fn per_hospital_series_are_capped() {
    let s = Served::start(
        &["--task", "breast_cancer"],
        &[("MEDFED_WEB__HOSPITAL_SERIES", "2")],
    );
    let text = client().get(s.url("/metrics")).send().unwrap().text().unwrap();
    let up = text
        .lines()
        .filter(|l| l.starts_with("medfed_hospital_up{"))
        .count();
    assert_eq!(up, 2, "{text}");
    assert!(text.contains("medfed_hospital_series_omitted 3"), "{text}");
}

#[test]
fn spent_budgets_survive_a_restart_of_serve() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--task", "breast_cancer", "--dp-epsilon", "1"];
    let spent_of = |s: &Served| -> Vec<f64> {
        let (_, v) = get_json(s, "/api/hospitals");
        v["hospitals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["epsilon_spent"].as_f64().expect("spent shown from the ledger"))
            .collect()
    };
    let mut first = Served::start_in(data.path(), &args, &[]);
    // DP-SGD hospitals release their noised record count when they start.
    let before = spent_of(&first);
    assert!(before.iter().all(|e| *e > 0.0 && *e < 1.0), "{before:?}");
    let id = start_run(&first, json!({"rounds": 3}));
    assert_eq!(wait_ended(&first, &id)["status"], "finished");
    let after_run = spent_of(&first);
    assert!(
        after_run.iter().zip(&before).all(|(a, b)| a > b),
        "{after_run:?} after {before:?}"
    );
    first.terminate();
    first.wait_exit(Duration::from_secs(60));
    assert!(data.path().join("ledgers").join("ledgers.index").exists());

    let mut second = Served::start_in(data.path(), &args, &[]);
    assert_eq!(spent_of(&second), after_run, "the ledgers outlived the process");
    // The privacy view's history too: the first run's three rounds, from the store.
    let (_, privacy) = get_json(&second, "/api/privacy");
    for h in privacy["hospitals"].as_array().unwrap() {
        let history = h["history"].as_array().unwrap();
        assert_eq!(history.len(), 3, "{h}");
        assert_eq!(history[2]["run"], id.as_str(), "{h}");
        let last = history[2]["epsilon"].as_f64().unwrap();
        let name = h["name"].as_str().unwrap();
        let (_, hospitals) = get_json(&second, "/api/hospitals");
        let spent = hospitals["hospitals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["epsilon_spent"]
            .as_f64()
            .unwrap();
        assert!(
            (last - spent).abs() < 1e-9,
            "{name}: history ends at {last}, ledger says {spent}"
        );
    }
    // Spend the rest: a run long enough to exhaust epsilon 1 (the hospitals
    // calibrated their noise for the profile's 40 rounds), then one more.
    let id = start_run(&second, json!({"rounds": 200}));
    wait_ended(&second, &id);
    second.terminate();
    second.wait_exit(Duration::from_secs(60));
    let third = Served::start_in(data.path(), &args, &[]);
    let spent = spent_of(&third);
    assert!(spent.iter().all(|e| *e > 0.9 && *e <= 1.0 + 1e-9), "{spent:?}");
    let id = start_run(&third, json!({"rounds": 2}));
    let run = wait_ended(&third, &id);
    assert_eq!(run["status"], "aborted", "{run}");
    assert_eq!(spent_of(&third), spent, "a spent hospital releases nothing");
}
