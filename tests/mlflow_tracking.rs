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
}
