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
        client: Client::new(&uri, auth, Retry::default())?,
        experiment: m.experiment.clone(),
        queue_limit: m.queue_limit,
        flush: Duration::from_secs(10),
        stats: Arc::new(tracker::TrackerStats::default()),
    }))
}
