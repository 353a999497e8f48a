//! A typed client of MLflow's REST API (3.x) on reqwest: experiments, runs
//! and their batches, inputs, MLflow 3 logged models with their files,
//! the model registry and aliases. Responses are read leniently (MLflow adds
//! fields); errors name the endpoint and MLflow's `error_code`. Transient
//! failures (5xx, connection errors) are retried with backoff.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::batch::{self, Metric, Param, Tag};

#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow tracking URI '{uri}': {message}")]
    Uri { uri: String, message: String },
    #[error("MLflow {endpoint}: {error_code}: {message} (HTTP {status})")]
    Api {
        endpoint: String,
        status: u16,
        error_code: String,
        message: String,
    },
    #[error("MLflow {endpoint}: cannot reach the server: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("MLflow {endpoint}: unexpected answer: {message}")]
    Unexpected { endpoint: String, message: String },
    #[error(transparent)]
    Unfit(#[from] batch::Unfit),
}

impl MlflowError {
    /// Worth trying again later: the server is away or failing, not refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            MlflowError::Unreachable { .. } => true,
            MlflowError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// MLflow's error code, when it gave one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            MlflowError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, MlflowError>;

/// How a request authenticates, as MLflow's own clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `MLFLOW_TRACKING_TOKEN`.
    Bearer(String),
    /// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.
    Basic { username: String, password: String },
}

/// Attempts of one request and the first pause between them (doubling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub first_pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 3,
            first_pause: Duration::from_millis(200),
        }
    }
}

/// A run as `runs/create` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    pub artifact_uri: String,
}

/// An MLflow 3 logged model, before its files are uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedModel {
    pub model_id: String,
    pub artifact_uri: String,
}

/// How a run ended, in MLflow's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// One dataset a run used: named and described by a digest, never its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInput {
    pub name: String,
    pub digest: String,
    /// What the dataset is ("hospital", "held-out").
    pub context: String,
    /// Where it lives, as the data's owner describes it (not a path on this machine).
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Client {
    base: reqwest::Url,
    http: reqwest::Client,
    auth: Option<Auth>,
    retry: Retry,
}

/// A JSON field as a string, or an error naming it.
fn text(endpoint: &str, v: &Value, pointer: &str) -> Result<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| MlflowError::Unexpected {
            endpoint: endpoint.to_string(),
            message: format!("no {pointer} in the answer"),
        })
}

impl Client {
    /// A client of the server at `tracking_uri` (http or https).
    pub fn new(tracking_uri: &str, auth: Option<Auth>, retry: Retry) -> Result<Self> {
        let uri_error = |message: String| MlflowError::Uri {
            uri: tracking_uri.to_string(),
            message,
        };
        let mut base = reqwest::Url::parse(tracking_uri).map_err(|e| uri_error(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(uri_error(format!(
                "medfed talks to an MLflow tracking server over http or https, not '{}'",
                base.scheme()
            )));
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| uri_error(e.to_string()))?;
        Ok(Self {
            base,
            http,
            auth,
            retry,
        })
    }

    /// One request, retried while the failure is transient.
    async fn call(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&Value>,
        raw: Option<&[u8]>,
    ) -> Result<Value> {
        self.call_at(method, endpoint, endpoint, body, raw).await
    }

    /// `path` is `endpoint` with its query, if any; errors name the endpoint.
    async fn call_at(
        &self,
        method: Method,
        endpoint: &str,
        path: &str,
        body: Option<&Value>,
        raw: Option<&[u8]>,
    ) -> Result<Value> {
        let url = self.base.join(path).map_err(|e| MlflowError::Uri {
            uri: self.base.to_string(),
            message: format!("{endpoint}: {e}"),
        })?;
        let mut pause = self.retry.first_pause;
        let mut attempt = 1;
        loop {
            let result = self.once(method.clone(), &url, endpoint, body, raw).await;
            match result {
                Err(e) if e.is_transient() && attempt < self.retry.attempts.max(1) => {
                    tracing::debug!("{e}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        url: &reqwest::Url,
        endpoint: &str,
        body: Option<&Value>,
        raw: Option<&[u8]>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, url.clone());
        request = match &self.auth {
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            Some(Auth::Basic { username, password }) => request.basic_auth(username, Some(password)),
            None => request,
        };
        if let Some(body) = body {
            // MLflow refuses a POST without this header, whatever the body.
            request = request.header("Content-Type", "application/json").json(body);
        }
        if let Some(bytes) = raw {
            request = request
                .header("Content-Type", "application/octet-stream")
                .body(bytes.to_vec());
        }
        let response = request.send().await.map_err(|e| MlflowError::Unreachable {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| MlflowError::Unreachable {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let field = |k: &str| value.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str);
            return Err(MlflowError::Api {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                error_code: field("error_code").unwrap_or("NO_ERROR_CODE").to_string(),
                message: field("message")
                    .map(str::to_string)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
            });
        }
        match value {
            Some(v) => Ok(v),
            // An empty success ({} is the usual) is fine.
            None if bytes.iter().all(u8::is_ascii_whitespace) => Ok(json!({})),
            None => Err(MlflowError::Unexpected {
                endpoint: endpoint.to_string(),
                message: format!("{} bytes that are not JSON", bytes.len()),
            }),
        }
    }

    async fn post(&self, endpoint: &str, body: Value) -> Result<Value> {
        self.call(Method::POST, endpoint, Some(&body), None).await
    }

    async fn get<T: DeserializeOwned>(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<T> {
        let mut path = endpoint.to_string();
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect();
            path = format!("{path}?{}", q.join("&"));
        }
        let v = self.call_at(Method::GET, endpoint, &path, None, None).await?;
        serde_json::from_value(v).map_err(|e| MlflowError::Unexpected {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })
    }

    /// The experiment named `name`, created if it does not exist.
    pub async fn experiment(&self, name: &str) -> Result<String> {
        const GET: &str = "api/2.0/mlflow/experiments/get-by-name";
        #[derive(Deserialize)]
        struct Found {
            experiment: Experiment,
        }
        #[derive(Deserialize)]
        struct Experiment {
            experiment_id: String,
        }
        match self.get::<Found>(GET, &[("experiment_name", name)]).await {
            Ok(found) => return Ok(found.experiment.experiment_id),
            Err(e) if e.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        const CREATE: &str = "api/2.0/mlflow/experiments/create";
        match self.post(CREATE, json!({ "name": name })).await {
            Ok(v) => text(CREATE, &v, "/experiment_id"),
            // Created meanwhile by another writer: read it again.
            Err(e) if e.error_code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(self
                .get::<Found>(GET, &[("experiment_name", name)])
                .await?
                .experiment
                .experiment_id),
            Err(e) => Err(e),
        }
    }

    pub async fn create_run(&self, experiment_id: &str, run_name: &str, tags: &[Tag]) -> Result<RunInfo> {
        const EP: &str = "api/2.0/mlflow/runs/create";
        let v = self
            .post(
                EP,
                json!({ "experiment_id": experiment_id, "run_name": run_name, "start_time": crate::clock::now_ms(), "tags": tags }),
            )
            .await?;
        Ok(RunInfo {
            run_id: text(EP, &v, "/run/info/run_id")?,
            experiment_id: text(EP, &v, "/run/info/experiment_id")?,
            artifact_uri: text(EP, &v, "/run/info/artifact_uri")?,
        })
    }

    /// Log everything, in as many `runs/log-batch` calls as MLflow's limits need.
    pub async fn log(
        &self,
        run_id: &str,
        metrics: Vec<Metric>,
        params: Vec<Param>,
        tags: Vec<Tag>,
    ) -> Result<()> {
        for b in batch::split(metrics, params, tags)? {
            self.post(
                "api/2.0/mlflow/runs/log-batch",
                json!({ "run_id": run_id, "metrics": b.metrics, "params": b.params, "tags": b.tags }),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let mut body = json!({ "run_id": run_id, "status": status.name() });
        if status != RunStatus::Running {
            body["end_time"] = json!(crate::clock::now_ms());
        }
        self.post("api/2.0/mlflow/runs/update", body).await.map(|_| ())
    }

    /// The datasets a run used, by digest (never their content).
    pub async fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput]) -> Result<()> {
        if let Some(d) = datasets.iter().find(|d| d.digest.chars().count() > 36) {
            return Err(batch::Unfit {
                what: "dataset digest",
                key: d.name.clone(),
                reason: format!("{} characters, more than MLflow's 36", d.digest.chars().count()),
            }
            .into());
        }
        let inputs: Vec<Value> = datasets
            .iter()
            .map(|d| {
                json!({
                    "tags": [{ "key": "mlflow.data.context", "value": d.context }],
                    "dataset": { "name": d.name, "digest": d.digest, "source_type": "medfed", "source": d.source },
                })
            })
            .collect();
        self.post(
            "api/2.0/mlflow/runs/log-inputs",
            json!({ "run_id": run_id, "datasets": inputs }),
        )
        .await
        .map(|_| ())
    }

    /// An MLflow 3 logged model of `run`, in `experiment_id`, waiting for its files.
    pub async fn create_logged_model(
        &self,
        experiment_id: &str,
        name: &str,
        source_run_id: &str,
        tags: &[Tag],
    ) -> Result<LoggedModel> {
        const EP: &str = "api/2.0/mlflow/logged-models";
        let v = self
            .post(
                EP,
                json!({ "experiment_id": experiment_id, "name": name, "source_run_id": source_run_id, "tags": tags }),
            )
            .await?;
        Ok(LoggedModel {
            model_id: text(EP, &v, "/model/info/model_id")?,
            artifact_uri: text(EP, &v, "/model/info/artifact_uri")?,
        })
    }

    /// Put one file under an artifact URI (`mlflow-artifacts:/...`) through
    /// the server's artifact proxy.
    pub async fn upload(&self, artifact_uri: &str, path: &str, bytes: &[u8]) -> Result<()> {
        let root = artifact_uri
            .strip_prefix("mlflow-artifacts:")
            .ok_or_else(|| MlflowError::Unexpected {
                endpoint: "mlflow-artifacts".into(),
                message: format!(
                    "artifact URI '{artifact_uri}' is not served by the tracking server's proxy (start it with --artifacts-destination)"
                ),
            })?
            .trim_start_matches('/');
        let endpoint = format!("api/2.0/mlflow-artifacts/artifacts/{root}/{path}");
        self.call(Method::PUT, &endpoint, None, Some(bytes))
            .await
            .map(|_| ())
    }

    pub async fn finalize_logged_model(&self, model_id: &str) -> Result<()> {
        let endpoint = format!("api/2.0/mlflow/logged-models/{model_id}");
        self.call(
            Method::PATCH,
            &endpoint,
            Some(&json!({ "model_id": model_id, "status": "LOGGED_MODEL_READY" })),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Link a run to the models it produced (`step`: the round).
    pub async fn log_outputs(&self, run_id: &str, model_id: &str, step: i64) -> Result<()> {
        self.post(
            "api/2.0/mlflow/runs/outputs",
            json!({ "run_id": run_id, "models": [{ "model_id": model_id, "step": step }] }),
        )
        .await
        .map(|_| ())
    }

    /// The registered model `name`, created if it does not exist.
    pub async fn registered_model(&self, name: &str) -> Result<()> {
        match self
            .post("api/2.0/mlflow/registered-models/create", json!({ "name": name }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.error_code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A new version of `name` from the logged model `model_id`; its number.
    pub async fn create_model_version(
        &self,
        name: &str,
        model_id: &str,
        run_id: &str,
        tags: &[Tag],
    ) -> Result<String> {
        const EP: &str = "api/2.0/mlflow/model-versions/create";
        let body = json!({
            "name": name,
            "source": format!("models:/{model_id}"),
            "model_id": model_id,
            "run_id": run_id,
            "tags": tags,
        });
        let v = self.post(EP, body).await?;
        text(EP, &v, "/model_version/version")
    }

    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        self.post(
            "api/2.0/mlflow/registered-models/alias",
            json!({ "name": name, "alias": alias, "version": version }),
        )
        .await
        .map(|_| ())
    }

    /// The `medfed.accuracy` tag of the version `alias` points at; `None`
    /// when the alias is not set.
    pub async fn alias_accuracy(&self, name: &str, alias: &str) -> Result<Option<f64>> {
        match self
            .get::<Value>(
                "api/2.0/mlflow/registered-models/alias",
                &[("name", name), ("alias", alias)],
            )
            .await
        {
            Ok(v) => Ok(v["model_version"]["tags"]
                .as_array()
                .and_then(|tags| tags.iter().find(|t| t["key"] == "medfed.accuracy"))
                .and_then(|t| t["value"].as_str()?.parse().ok())),
            Err(e)
                if e.error_code() == Some("RESOURCE_DOES_NOT_EXIST")
                    || e.error_code() == Some("INVALID_PARAMETER_VALUE") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A metric's whole history (for checks and tools).
    pub async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<(i64, f64)>> {
        #[derive(Deserialize)]
        struct History {
            #[serde(default)]
            metrics: Vec<Point>,
        }
        #[derive(Deserialize)]
        struct Point {
            step: Option<i64>,
            value: f64,
        }
        let h: History = self
            .get(
                "api/2.0/mlflow/metrics/get-history",
                &[("run_id", run_id), ("metric_key", key)],
            )
            .await?;
        let mut points: Vec<(i64, f64)> = h
            .metrics
            .into_iter()
            .map(|p| (p.step.unwrap_or(0), p.value))
            .collect();
        points.sort_by_key(|(step, _)| *step);
        Ok(points)
    }

    /// A run as MLflow has it (`runs/get`): its data (params, tags, latest metrics).
    pub async fn run(&self, run_id: &str) -> Result<Value> {
        self.get("api/2.0/mlflow/runs/get", &[("run_id", run_id)]).await
    }

    /// The MLflow UI's page of a run.
    pub fn run_page(&self, experiment_id: &str, run_id: &str) -> String {
        format!("{}#/experiments/{experiment_id}/runs/{run_id}", self.base)
    }

    /// Whether the server answers its health check.
    pub async fn healthy(&self) -> bool {
        let Ok(url) = self.base.join("health") else {
            return false;
        };
        matches!(self.http.get(url).send().await, Ok(r) if r.status() == StatusCode::OK)
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_that_cannot_be_a_tracking_server_are_refused_with_the_reason() {
        let e = Client::new("file:///tmp/mlruns", None, Retry::default()).unwrap_err();
        assert!(e.to_string().contains("over http or https, not 'file'"), "{e}");
        assert!(Client::new("not a uri", None, Retry::default()).is_err());
        let c = Client::new("http://mlflow:5000/prefix", None, Retry::default()).unwrap();
        assert_eq!(c.base.as_str(), "http://mlflow:5000/prefix/");
    }

    #[test]
    fn only_a_server_that_is_away_or_failing_is_retried() {
        let api = |status| MlflowError::Api {
            endpoint: "x".into(),
            status,
            error_code: "E".into(),
            message: "m".into(),
        };
        assert!(api(503).is_transient() && api(429).is_transient());
        assert!(!api(400).is_transient() && !api(404).is_transient());
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
