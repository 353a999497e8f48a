//! MLflow tracking: a typed client of MLflow's REST API (`client`), the
//! batching its limits need (`batch`), and what a federation's events become
//! in MLflow with the queue that holds them (`ops`). (In progress, issue
//! 18: the executor and its wiring into `run`/`serve` are not in yet.)

pub mod batch;
pub mod client;
pub mod ops;
pub mod params;
pub mod tracker;

pub use client::{Auth, Client, MlflowError, Retry, RunStatus};

use std::sync::Arc;
use std::time::Duration;

use crate::config::Loaded;

/// MLflow tracking for a process, when the configuration (or
/// `MLFLOW_TRACKING_URI`) names a tracking server.
pub fn tracker(loaded: &Loaded) -> Result<Option<tracker::Tracker>, MlflowError> {
    let m = &loaded.config.mlflow;
    let Some(uri) = m.effective_uri(std::env::var("MLFLOW_TRACKING_URI").ok()) else {
        return Ok(None);
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let auth = match (env("MLFLOW_TRACKING_TOKEN"), env("MLFLOW_TRACKING_USERNAME")) {
        (Some(token), _) => Some(Auth::Bearer(token)),
        (None, Some(username)) => Some(Auth::Basic {
            username,
            password: env("MLFLOW_TRACKING_PASSWORD").unwrap_or_default(),
        }),
        (None, None) => None,
    };
    Ok(Some(tracker::Tracker {
        // One try per call: the tracker retries from its queue with its own
        // backoff, and a shutdown with MLflow away then drops at once.
        client: Client::new(
            &uri,
            auth,
            Retry {
                attempts: 1,
                first_pause: Duration::ZERO,
            },
        )?,
        experiment: m.experiment.clone(),
        model_prefix: m.registered_model_prefix.clone(),
        queue_limit: m.queue_limit,
        flush: Duration::from_secs(10),
        inputs: Arc::new(Default::default()),
        run_tags: Vec::new(),
        stats: Arc::new(tracker::TrackerStats::default()),
    }))
}

/// The recordings a federation needs: `base`, and "mlflow" when tracking.
pub fn recordings<'a>(base: &[&'a str], tracker: Option<&tracker::Tracker>) -> Vec<&'a str> {
    let mut names = base.to_vec();
    if tracker.is_some() {
        names.push("mlflow");
    }
    names
}

/// The datasets of `tasks` as MLflow inputs: each held-out set's digest,
/// and with `hospitals` (in-process, where the shards are here) each
/// hospital's data digest. Never the data.
pub fn inputs(
    tasks: &[crate::tasks::PreparedTask],
    hospitals: bool,
) -> std::collections::BTreeMap<String, Vec<client::DatasetInput>> {
    tasks
        .iter()
        .map(|t| {
            let mut datasets = vec![client::DatasetInput {
                name: format!("{} held-out", t.name),
                digest: t.held_out_fingerprint(),
                context: "evaluation".into(),
                source: "the coordinator's held-out set".into(),
            }];
            if hospitals {
                for i in 0..t.hospital_count() {
                    let print = t.site(i).map(|site| site.fingerprint());
                    if let Some(Ok(print)) = print {
                        let name = t.hospital_name(i);
                        datasets.push(client::DatasetInput {
                            // MLflow keeps at most 36 characters of a digest.
                            digest: format!("sha256:{}", &print.to_string()[..24]),
                            source: format!("hospital {name}"),
                            name,
                            context: "training".into(),
                        });
                    }
                }
            }
            (t.name.clone(), datasets)
        })
        .collect()
}

/// Start `tracker` on the federation's "mlflow" recording; its statistics
/// (for `/metrics`).
pub fn follow(
    mut tracker: tracker::Tracker,
    federation: &mut crate::federation::Federation,
    config: &crate::config::Config,
    inputs: std::collections::BTreeMap<String, Vec<client::DatasetInput>>,
) -> anyhow::Result<Arc<tracker::TrackerStats>> {
    tracker.inputs = Arc::new(inputs);
    // What ties an MLflow run to where it came from.
    let fingerprint = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(crate::config::to_toml(config).as_bytes());
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    tracker.run_tags = vec![
        batch::Tag {
            key: "medfed.config_fingerprint".into(),
            value: fingerprint,
        },
        batch::Tag {
            key: "medfed.coordinator".into(),
            value: format!("{host} (medfed {})", env!("CARGO_PKG_VERSION")),
        },
    ];
    let config = config.clone();
    let params: tracker::ParamsOf = Arc::new(
        move |task: &str, settings: Option<&medfed_actors::TaskRunSettings>| {
            params::task_params(&config, task, settings)
        },
    );
    let events = federation.recording("mlflow")?;
    let stats = tracker.stats.clone();
    let coordinator = federation.client();
    federation.add_observer(tokio::spawn(tracker.follow(events, params, coordinator)));
    Ok(stats)
}
