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
    let http = reqwest::Client::new();
    let found: Value = http
        .post(format!("{}/api/2.0/mlflow/runs/search", server.url))
        .json(&serde_json::json!({ "experiment_ids": [experiment] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runs = found["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{found}");
    let run = &runs[0];
    let run_id = run["info"]["run_id"].as_str().unwrap();
    assert_eq!(run["info"]["status"], "FINISHED");
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
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let version = get(format!(
        "{}/api/2.0/mlflow/model-versions/get?name=medfed-breast_cancer&version=1",
        server.url
    ))
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
    let alias = get(format!(
        "{}/api/2.0/mlflow/registered-models/alias?name=medfed-breast_cancer&alias=champion",
        server.url
    ))
    .await;
    assert_eq!(alias["model_version"]["version"], "1", "{alias}");
    let model = get(format!("{}/api/2.0/mlflow/logged-models/{model_id}", server.url)).await;
    let uri = model["model"]["info"]["artifact_uri"].as_str().unwrap();
    assert_eq!(model["model"]["info"]["status"], "LOGGED_MODEL_READY", "{model}");
    let root = uri
        .trim_start_matches("mlflow-artifacts:")
        .trim_start_matches('/');
    let bytes = http
        .get(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{root}/model.safetensors",
            server.url
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = std::fs::read(saved.path().join("breast_cancer.safetensors")).unwrap();
    assert_eq!(
        bytes.as_ref(),
        file.as_slice(),
        "the registered model is the saved one"
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
    let started: Value = client
        .post(served.url("/api/runs"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"rounds": 5}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    let metrics = |name: &str| -> f64 {
        let text = client
            .get(served.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    // The run ends on time with MLflow away.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run: Value = client
            .get(served.url(&format!("/api/runs/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if run["status"] == "finished" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish with MLflow away: {run}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    rt.block_on(async {
        let mlflow = Client::new(&server.url, None, Retry::default()).unwrap();
        let experiment = mlflow.experiment("medfed").await.unwrap();
        let found: Value = reqwest::Client::new()
            .post(format!("{}/api/2.0/mlflow/runs/search", server.url))
            .json(&serde_json::json!({ "experiment_ids": [experiment] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let run = &found["runs"][0];
        assert_eq!(run["info"]["status"], "FINISHED", "{found}");
        let run_id = run["info"]["run_id"].as_str().unwrap();
        let history = mlflow.metric_history(run_id, "accuracy").await.unwrap();
        assert_eq!(
            history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
    });
}
