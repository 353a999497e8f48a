//! `medfed run --mlflow-uri` against a real MLflow 3 server: the run appears
//! with its params, each global metric's history has one step per round
//! equal to the run's JSON, and per-hospital metrics are there.

mod common;
use common::medfed;
use common::mlflow::MlflowServer;

use medfed::mlflow::{Client, Retry};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_round_run_appears_in_mlflow_as_the_run_reports_it() {
    let Some(server) = tokio::task::spawn_blocking(MlflowServer::start).await.unwrap() else {
        return;
    };
    let url = server.url.clone();
    let saved = tempfile::tempdir().unwrap();
    let dir = saved.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        medfed(
            &[
                "run",
                "--task",
                "breast_cancer",
                "--rounds",
                "5",
                "--json",
                "--mlflow-uri",
                &url,
                "--save-model",
                &dir,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rounds = report["tasks"]["breast_cancer"]["rounds"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rounds.len(), 5);

    let client = Client::new(&server.url, None, Retry::default()).unwrap();
    let experiment = client.experiment("medfed").await.unwrap();
    let found = server.search_runs(&experiment).await;
    let runs = found["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{found}");
    let run = &runs[0];
    let run_id = run["info"]["run_id"].as_str().unwrap();
    assert_eq!(run["info"]["status"], "FINISHED");
    let tags: Vec<&str> = run["data"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    for key in ["medfed.run_id", "medfed.config_fingerprint", "medfed.coordinator"] {
        assert!(tags.contains(&key), "{key} in {tags:?}");
    }
    // The datasets by digest: the held-out set and each hospital's shard.
    let got = client.run(run["info"]["run_id"].as_str().unwrap()).await.unwrap();
    let inputs = got["run"]["inputs"]["dataset_inputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{got}"));
    assert_eq!(inputs.len(), 6, "{got}");
    assert!(inputs
        .iter()
        .all(|i| !i["dataset"]["digest"].as_str().unwrap().is_empty()));
    let params: Vec<(&str, &str)> = run["data"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    for (key, value) in [
        ("rounds", "5"),
        ("hospitals", "5"),
        ("strategy", "fedavg"),
        ("privacy.mode", "off"),
    ] {
        assert!(params.contains(&(key, value)), "{key}={value} in {params:?}");
    }
    for key in ["accuracy", "precision", "recall", "f1", "auc", "loss"] {
        let history = client.metric_history(run_id, key).await.unwrap();
        let expected: Vec<(i64, f64)> = rounds
            .iter()
            .map(|r| (r["round"].as_i64().unwrap(), r[key].as_f64().unwrap()))
            .collect();
        assert_eq!(history, expected, "{key}");
    }
    // Each hospital's own release: its sample count and (DP off) its local accuracy.
    let local = client
        .metric_history(run_id, "hospital.breast_cancer-1.accuracy")
        .await
        .unwrap();
    assert_eq!(local.len(), 5, "{local:?}");
    let samples = client
        .metric_history(run_id, "hospital.breast_cancer-3.samples")
        .await
        .unwrap();
    assert_eq!(samples.len(), 5, "{samples:?}");
    // The federated (pooled) metrics, one per round.
    let pooled = client.metric_history(run_id, "federated.accuracy").await.unwrap();
    let expected: Vec<(i64, f64)> = rounds
        .iter()
        .map(|r| {
            (
                r["round"].as_i64().unwrap(),
                r["federated"]["pooled"]["accuracy"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pooled, expected);

    // The final model: registered as version 1 of medfed-breast_cancer, the
    // champion, and its file is the one `--save-model` wrote, byte for byte.
    let version = server
        .get_json("api/2.0/mlflow/model-versions/get?name=medfed-breast_cancer&version=1")
        .await;
    let model_id = version["model_version"]["source"]
        .as_str()
        .and_then(|s| s.strip_prefix("models:/"))
        .unwrap_or_else(|| panic!("{version}"));
    let tags = version["model_version"]["tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "medfed.round" && t["value"] == "5"),
        "{version}"
    );
    let alias = server
        .get_json("api/2.0/mlflow/registered-models/alias?name=medfed-breast_cancer&alias=champion")
        .await;
    assert_eq!(alias["model_version"]["version"], "1", "{alias}");
    let model = server
        .get_json(&format!("api/2.0/mlflow/logged-models/{model_id}"))
        .await;
    let uri = model["model"]["info"]["artifact_uri"].as_str().unwrap();
    assert_eq!(model["model"]["info"]["status"], "LOGGED_MODEL_READY", "{model}");
    let bytes = server.artifact(uri, "model.safetensors").await;
    let file = std::fs::read(saved.path().join("breast_cancer.safetensors")).unwrap();
    assert_eq!(
        bytes.as_slice(),
        file.as_slice(),
        "the registered model is the saved one"
    );

    // What MLflow users get in their own tools: the official Python client.
    let script = r#"
import json, sys
import mlflow
c = mlflow.MlflowClient(sys.argv[1])
exp = c.get_experiment_by_name("medfed")
run = c.search_runs([exp.experiment_id])[0]
history = c.get_metric_history(run.info.run_id, "accuracy")
version = c.get_model_version("medfed-breast_cancer", "1")
print(json.dumps({
    "run_id": run.info.run_id,
    "status": run.info.status,
    "params": run.data.params,
    "accuracy": sorted([m.step, m.value] for m in history),
    "version_run": version.run_id,
}))
"#;
    let out = std::process::Command::new(server.python())
        .args(["-c", script, &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let python: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(python["run_id"], run_id);
    assert_eq!(python["status"], "FINISHED");
    assert_eq!(python["params"]["rounds"], "5");
    assert_eq!(python["version_run"], run_id);
    let accuracy: Vec<(i64, f64)> = serde_json::from_value(python["accuracy"].clone()).unwrap();
    let expected: Vec<(i64, f64)> = rounds
        .iter()
        .map(|r| (r["round"].as_i64().unwrap(), r["accuracy"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        accuracy, expected,
        "the Python client reads what the run reported"
    );
}

/// MLflow stopped before a run: the federation finishes as usual, the
/// calls wait (counted on /metrics), and once MLflow is back they arrive.
#[test]
fn an_outage_holds_nothing_up_and_the_queued_metrics_arrive_later() {
    use common::server::{Served, TOKEN};
    use std::time::{Duration, Instant};
    let Some(mut server) = MlflowServer::start() else {
        return;
    };
    let served = Served::start(&["--task", "breast_cancer", "--mlflow-uri", &server.url], &[]);
    server.stop();
    let client = reqwest::blocking::Client::new();
    let id = start_run(
        &served,
        serde_json::json!({"rounds": 5, "settings": {"breast_cancer": {
            "strategy": {"name": "trimmed_mean", "beta": 0.2}}}}),
    );
    let metrics = |name: &str| scraped(&served, name);
    // The run ends on time with MLflow away.
    wait_finished(&served, &id, "the run with MLflow away");
    assert!(metrics("medfed_mlflow_queue") > 0.0, "calls wait for MLflow");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics("medfed_mlflow_errors_total") <= 0.0 {
        assert!(Instant::now() < deadline, "failed tries are counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // MLflow is back: the queue drains and the run is there, whole.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics("medfed_mlflow_queue") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain after MLflow came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(metrics("medfed_mlflow_dropped_total"), 0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mlflow_run = rt.block_on(async {
        let mlflow = Client::new(&server.url, None, Retry::default()).unwrap();
        let experiment = mlflow.experiment("medfed").await.unwrap();
        let found = server.search_runs(&experiment).await;
        let run = &found["runs"][0];
        assert_eq!(run["info"]["status"], "FINISHED", "{found}");
        // The run's own settings are what it logs.
        let params = run["data"]["params"].as_array().unwrap();
        let param = |k: &str| params.iter().find(|p| p["key"] == k).map(|p| p["value"].clone());
        assert_eq!(param("strategy"), Some(Value::from("trimmed_mean")), "{run}");
        assert_eq!(param("strategy.beta"), Some(Value::from("0.2")), "{run}");
        let run_id = run["info"]["run_id"].as_str().unwrap();
        let history = mlflow.metric_history(run_id, "accuracy").await.unwrap();
        assert_eq!(
            history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        run_id.to_string()
    });
    // The panel links the run to its MLflow run.
    let run: Value = client
        .get(served.url(&format!("/api/runs/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let link = run["mlflow"]["breast_cancer"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"));
    assert!(
        link.starts_with(&server.url) && link.ends_with(&format!("/runs/{mlflow_run}")),
        "{link}"
    );
}

/// A server that answers every request with a 500 or with garbage.
fn broken_mlflow() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let answer: &[u8] = if i % 2 == 0 {
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\nconnection: close\r\n\r\noops!"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"run\":[["
            };
            let _ = stream.write_all(answer);
        }
    });
    url
}

/// MLflow answering 500s and garbage: the run finishes and reports as usual,
/// no sooner or later than it would, and the errors are logged and counted.
#[test]
fn an_mlflow_that_answers_500s_and_garbage_changes_nothing_but_the_error_count() {
    use common::server::Served;
    use std::time::{Duration, Instant};
    let url = broken_mlflow();
    let out = medfed(
        &[
            "run",
            "--task",
            "breast_cancer",
            "--rounds",
            "3",
            "--json",
            "--mlflow-uri",
            &url,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tasks"]["breast_cancer"]["status"], "finished");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MLflow api/2.0/mlflow/experiments/get-by-name"),
        "{stderr}"
    );

    let served = Served::start(&["--task", "breast_cancer", "--mlflow-uri", &url], &[]);
    let id = start_run(&served, serde_json::json!({"rounds": 3}));
    wait_finished(&served, &id, "the run with a broken MLflow");
    let deadline = Instant::now() + Duration::from_secs(20);
    while scraped(&served, "medfed_mlflow_errors_total") <= 0.0 {
        assert!(Instant::now() < deadline, "MLflow's errors are counted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start a run on `served` with `body`; its id.
fn start_run(served: &common::server::Served, body: Value) -> String {
    let started: Value = reqwest::blocking::Client::new()
        .post(served.url("/api/runs"))
        .bearer_auth(common::server::TOKEN)
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    started["id"].as_str().unwrap().to_string()
}

/// Wait (at most a minute) until run `id` has finished.
fn wait_finished(served: &common::server::Served, id: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let run: Value = reqwest::blocking::Client::new()
            .get(served.url(&format!("/api/runs/{id}")))
            .bearer_auth(common::server::TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if run["status"] == "finished" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not finish: {run}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The sample of `name` on `served`'s /metrics (-1 when it has none).
fn scraped(served: &common::server::Served, name: &str) -> f64 {
    let text = reqwest::blocking::Client::new()
        .get(served.url("/metrics"))
        .bearer_auth(common::server::TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}
