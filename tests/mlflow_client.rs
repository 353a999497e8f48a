//! medfed's MLflow client against a real MLflow 3 server: experiments, a
//! run's params, tags and metric histories (split into batches past
//! MLflow's limits), inputs by digest, an MLflow 3 logged model with its
//! files, its registered version and alias; MLflow's refusals and an
//! unreachable server come back as errors that name the endpoint.

use std::time::Duration;

mod common;
use common::mlflow::MlflowServer;

use medfed::mlflow::batch::{Metric, Param, Tag};
use medfed::mlflow::client::DatasetInput;
use medfed::mlflow::{Client, Retry, RunStatus};

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_its_model_and_the_registry_as_mlflow_stores_them() {
    let Some(server) = tokio::task::spawn_blocking(MlflowServer::start).await.unwrap() else {
        return;
    };
    let client = Client::new(&server.url, None, Retry::default()).unwrap();
    let experiment = client.experiment("medfed-test").await.unwrap();
    assert_eq!(
        client.experiment("medfed-test").await.unwrap(),
        experiment,
        "found, not created twice"
    );

    let run = client
        .create_run(
            &experiment,
            "run-1 breast_cancer",
            &[tag("medfed.run_id", "run-1")],
        )
        .await
        .unwrap();
    // More metrics than one call may carry: 5 rounds of 5 hospitals x 60 keys.
    let mut metrics = Vec::new();
    for step in 1..=5i64 {
        metrics.push(Metric {
            key: "accuracy".into(),
            value: 0.9 + step as f64 / 100.0,
            timestamp: 1_700_000_000_000 + step,
            step,
        });
        for h in 1..=5 {
            for k in 0..60 {
                metrics.push(Metric {
                    key: format!("hospital.h{h}.m{k}"),
                    value: (step * k) as f64,
                    timestamp: 1_700_000_000_000 + step,
                    step,
                });
            }
        }
    }
    assert!(metrics.len() > 1000);
    let params: Vec<Param> = (0..120)
        .map(|i| Param {
            key: format!("param.{i}"),
            value: format!("v{i}"),
        })
        .collect();
    client
        .log(
            &run.run_id,
            metrics,
            params,
            vec![tag("medfed.task", "breast_cancer")],
        )
        .await
        .unwrap();
    let history = client.metric_history(&run.run_id, "accuracy").await.unwrap();
    assert_eq!(
        history,
        (1..=5).map(|s| (s, 0.9 + s as f64 / 100.0)).collect::<Vec<_>>()
    );
    let h = client
        .metric_history(&run.run_id, "hospital.h3.m59")
        .await
        .unwrap();
    assert_eq!(h, (1..=5).map(|s| (s, (s * 59) as f64)).collect::<Vec<_>>());
    let got = client.run(&run.run_id).await.unwrap();
    let params = got["run"]["data"]["params"].as_array().unwrap();
    assert_eq!(params.len(), 120, "every param, over two calls");
    client
        .log_inputs(
            &run.run_id,
            &[DatasetInput {
                name: "breast_cancer-1".into(),
                digest: "crc32 0badf00d".into(),
                context: "hospital".into(),
                source: "breast_cancer-1".into(),
            }],
        )
        .await
        .unwrap();

    // A param is immutable: a different value is MLflow's refusal, named.
    let e = client
        .log(
            &run.run_id,
            Vec::new(),
            vec![Param {
                key: "param.0".into(),
                value: "changed".into(),
            }],
            Vec::new(),
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("MLflow api/2.0/mlflow/runs/log-batch: INVALID_PARAMETER_VALUE"),
        "{text}"
    );
    assert!(!e.is_transient());

    // The model: an MLflow 3 logged model with its files, registered.
    let model = client
        .create_logged_model(
            &experiment,
            "breast_cancer",
            &run.run_id,
            &[tag("medfed.round", "5")],
        )
        .await
        .unwrap();
    let weights = b"not really safetensors, but bytes to carry".to_vec();
    client
        .upload(&model.artifact_uri, "model.safetensors", &weights)
        .await
        .unwrap();
    client
        .upload(
            &model.artifact_uri,
            "MLmodel",
            b"flavors:\n  medfed:\n    data: model.safetensors\n",
        )
        .await
        .unwrap();
    client.finalize_logged_model(&model.model_id).await.unwrap();
    client.log_outputs(&run.run_id, &model.model_id, 5).await.unwrap();
    client.registered_model("medfed-breast_cancer").await.unwrap();
    client.registered_model("medfed-breast_cancer").await.unwrap();
    let version = client
        .create_model_version(
            "medfed-breast_cancer",
            &model.model_id,
            &run.run_id,
            &[tag("medfed.run_id", "run-1")],
        )
        .await
        .unwrap();
    assert_eq!(version, "1");
    client
        .set_alias("medfed-breast_cancer", "champion", &version)
        .await
        .unwrap();
    client.end_run(&run.run_id, RunStatus::Finished).await.unwrap();

    // Read back over plain HTTP: what any MLflow user would see.
    let status = client.run(&run.run_id).await.unwrap()["run"]["info"]["status"].clone();
    assert_eq!(status, "FINISHED");
    let alias = server
        .get_json("api/2.0/mlflow/registered-models/alias?name=medfed-breast_cancer&alias=champion")
        .await;
    assert_eq!(alias["model_version"]["version"], "1", "{alias}");
    let bytes = server.artifact(&model.artifact_uri, "model.safetensors").await;
    assert_eq!(
        bytes.as_slice(),
        weights.as_slice(),
        "the uploaded file, byte for byte"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_naming_the_endpoint() {
    let port = common::free_port();
    let retry = Retry {
        attempts: 2,
        first_pause: Duration::from_millis(10),
    };
    let client = Client::new(&format!("http://127.0.0.1:{port}"), None, retry).unwrap();
    let e = client.experiment("x").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        e.to_string()
            .starts_with("MLflow api/2.0/mlflow/experiments/get-by-name: cannot reach the server"),
        "{e}"
    );
}
