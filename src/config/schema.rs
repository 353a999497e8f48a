//! The configuration schema. Every key is documented in config/default.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use medfed_models::data::columnar::NullPolicy;
pub use medfed_models::learner::columnar::StreamMode;

pub use medfed_models::aggregate::StrategyConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub mlflow: MlflowConfig,
    pub tasks: BTreeMap<String, TaskConfig>,
}

/// MLflow tracking: off unless a tracking URI is set here, with
/// `--mlflow-uri`, or in `MLFLOW_TRACKING_URI` (as MLflow's own clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowConfig {
    /// `http(s)://host:port[/prefix]` of an MLflow tracking server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_uri: Option<String>,
    /// The experiment every run is logged in.
    pub experiment: String,
    /// Each task's final model is registered as `<prefix><task>`.
    pub registered_model_prefix: String,
    /// Calls kept while MLflow is unreachable; past this the oldest are
    /// dropped (and counted) so that tracking never holds a federation up.
    pub queue_limit: usize,
}

impl Default for MlflowConfig {
    fn default() -> Self {
        Self {
            tracking_uri: None,
            experiment: "medfed".into(),
            registered_model_prefix: "medfed-".into(),
            queue_limit: 10_000,
        }
    }
}

impl MlflowConfig {
    /// The tracking URI in force: the configuration's, else
    /// `MLFLOW_TRACKING_URI` (an empty value counts as unset).
    pub fn effective_uri(&self, env: Option<String>) -> Option<String> {
        self.tracking_uri.clone().or(env).filter(|u| !u.trim().is_empty())
    }
}

/// The store of runs, rounds and the model registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file (`--store` overrides it). Unset: `serve` and
    /// `coordinator` use `<run.data_dir>/medfed.sqlite`; `run` keeps
    /// everything in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What SIGTERM does to a run of `serve` or `coordinator` that records
    /// into a store: "stop" it (recorded as stopped), or "suspend" it (left
    /// interrupted: the process restarted on the store resumes it — what a
    /// Kubernetes rollout or node drain wants). Ctrl-C always stops.
    pub on_terminate: OnTerminate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTerminate {
    #[default]
    Stop,
    Suspend,
}

impl OnTerminate {
    /// Whether `signal` ("SIGTERM", "Ctrl-C") leaves a stored run to resume.
    pub fn suspends(self, signal: &str, has_store: bool) -> bool {
        self == OnTerminate::Suspend && signal == "SIGTERM" && has_store
    }
}

/// `medfed serve`: the control panel, REST API and /metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address the web server listens on (`--http` overrides it).
    pub http: String,
    /// The API token (every route but the panel's files, health and
    /// metrics). Unset and no MEDFED_API_TOKEN: the tokens in `token_file`,
    /// generated there when it does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// Token file (one token per line, all accepted; re-read when it
    /// changes, so tokens rotate without a restart). Default
    /// `<data dir>/tokens/<command>-<port>.token`, mode 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// When set (or MEDFED_WEB__SCRAPE_TOKEN), /metrics needs it as a bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_token: Option<String>,
    /// A file holding the scrape token (a mounted Secret); not with `scrape_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_token_file: Option<PathBuf>,
    /// HTTPS: certificate and key (PEM); also --http-tls-cert/--http-tls-key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Mark the session cookie Secure (implied by TLS; set it behind a
    /// TLS-terminating ingress).
    pub secure_cookies: bool,
    /// Failed authentications one source address may make per minute.
    pub auth_failures_per_minute: usize,
    /// Host names the web server answers to (an ingress's, say), besides IP
    /// literals and localhost; other Host or Origin headers are refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Proxies (addresses or CIDR ranges, e.g. the ingress controller's)
    /// whose X-Forwarded-For names the client: failed logins are then
    /// throttled per client, not per proxy. Empty: the peer is the client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Hospitals with their own series on /metrics (the first to join; 0:
    /// none), so that a huge federation adds a bounded number of series.
    pub hospital_series: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:8080".into(),
            api_token: None,
            token_file: None,
            scrape_token: None,
            scrape_token_file: None,
            tls_cert: None,
            tls_key: None,
            secure_cookies: false,
            auth_failures_per_minute: 10,
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            hospital_series: 100,
        }
    }
}

/// Cluster mode: `medfed coordinator` and `medfed hospital` (flags override).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The coordinator's cluster port.
    pub listen: String,
    /// Where hospitals reach the coordinator.
    pub coordinator: String,
    /// File holding the shared cookie (else MEDFED_CLUSTER_COOKIE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<PathBuf>,
    /// This node's certificate, key, and the cluster CA: mutual TLS when all three are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Coordinator: start a run at once; it waits for every expected
    /// hospital (up to `federation.assemble_timeout_secs`), then starts with
    /// those there if they are at least `min_hospitals`.
    pub auto_start: bool,
    /// Coordinator: exit when the run ends (exit code 2 if it aborted, 3 if stopped).
    pub exit_after_run: bool,
    /// Hospitals whose access was revoked: refused at hello, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Coordinator: the hospitals expected in this cluster; any other name
    /// is refused at the handshake. Empty: any hospital with the cookie (or,
    /// under mutual TLS, a certificate of the cluster's CA).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Coordinator: accept hospitals without TLS on a non-loopback address.
    pub insecure_plaintext: bool,
    pub hospital: ClusterHospitalConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7400".into(),
            coordinator: "127.0.0.1:7400".into(),
            cookie_file: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            auto_start: false,
            exit_after_run: false,
            deny: Vec::new(),
            allow: Vec::new(),
            insecure_plaintext: false,
            hospital: ClusterHospitalConfig::default(),
        }
    }
}

/// `medfed hospital`: who this hospital is and which data it trains on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterHospitalConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The hospital's own CSV (tabular tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// "I/K": shard I of K of the task's shipped data, as `medfed run` partitions it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seeds the split, the partition and every hospital's training stream.
    pub seed: u64,
    /// Rounds of a task that does not set its own.
    pub rounds: u32,
    /// Where generated data (synthetic images) is cached; absent:
    /// `$XDG_CACHE_HOME/medfed`, else `~/.cache/medfed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Write each task's global model after every round here, as
    /// `<dir>/<task>/round-NNNN.safetensors`; absent: no checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Durable state: the store, checkpoints, privacy ledgers; absent:
    /// `$XDG_DATA_HOME/medfed`, else `~/.local/share/medfed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            rounds: 10,
            cache_dir: None,
            checkpoint_dir: None,
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    pub round_timeout_secs: f64,
    pub assemble_timeout_secs: f64,
    pub max_round_retries: u32,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            round_timeout_secs: 60.0,
            assemble_timeout_secs: 120.0,
            max_round_retries: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HospitalKind {
    Tabular,
    Imaging,
    Columnar,
}

impl HospitalKind {
    pub fn name(self) -> &'static str {
        match self {
            HospitalKind::Tabular => "tabular",
            HospitalKind::Imaging => "imaging",
            HospitalKind::Columnar => "columnar",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub kind: HospitalKind,
    /// Number of hospitals the training rows are partitioned into.
    pub hospitals: usize,
    /// Quorum: fewest accepted updates that close a round, as a count or a
    /// fraction of `hospitals` (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hospitals: Option<Quorum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    /// How updates are aggregated: `[tasks.T.strategy]` with `name` and
    /// that strategy's parameters, or just the name (its defaults).
    #[serde(default, deserialize_with = "strategy_config")]
    pub strategy: StrategyConfig,
    /// The earlier form's server-optimiser table: refused by validation,
    /// which says what to write instead.
    #[serde(default, skip_serializing)]
    pub fedadam: Option<toml::Table>,
    /// Robustness evaluation: in-process hospitals (`run`, `serve`) that
    /// simulate an attack, as `"<task>-<i>" = "KIND[:FACTOR]"` (see `medfed
    /// run --help`); a cluster hospital attacks with `medfed hospital --attack`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attack: BTreeMap<String, String>,
    /// Largest accepted L2 norm of an update (model delta); absent: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_update_norm: Option<f64>,
    /// Most training examples one hospital may claim (at hello, in each
    /// update, in its feature statistics); absent: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples_per_hospital: Option<usize>,
    /// Most hospitals this task admits at once; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hospitals: Option<usize>,
    pub data: DataConfig,
    #[serde(default)]
    pub partition: PartitionConfig,
    #[serde(default)]
    pub training: TrainingConfig,
    /// The CNN of imaging tasks.
    #[serde(default)]
    pub model: ModelConfig,
    /// Secure aggregation (SecAgg+): the coordinator learns only the sum of
    /// the updates (`--secure-aggregation` turns it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecureAggregationConfig>,
}

/// `[tasks.T.secure_aggregation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecureAggregationConfig {
    pub enabled: bool,
    /// Share holders per hospital, itself included (absent: every hospital
    /// up to 20, then 2*ceil(log2 K)+1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_shares: Option<usize>,
    /// Shares that rebuild a hospital's secrets (absent: floor(n/2)+1 of its n holders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
    /// Update coordinates are clipped to [-r, r] before quantisation.
    pub clipping_range: f64,
    /// Quantisation levels per coordinate (2^bits) in the ring Z_(2^32).
    pub quantization_bits: u32,
    /// Largest sample count a hospital may weigh with (absent: the task's
    /// training rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u64>,
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_shares: None,
            threshold: None,
            clipping_range: 10.0,
            quantization_bits: 22,
            max_weight: None,
        }
    }
}

impl TaskConfig {
    /// The secure-aggregation settings when they are on.
    pub fn secure(&self) -> Option<&SecureAggregationConfig> {
        self.secure_aggregation.as_ref().filter(|s| s.enabled)
    }
}

/// A strategy as a table (`name` and its parameters) or only its name.
fn strategy_config<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StrategyConfig, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = StrategyConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a strategy: its name, or a table with `name` and its parameters")
        }
        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<StrategyConfig, E> {
            StrategyConfig::named(name).ok_or_else(|| {
                E::custom(format!(
                    "unknown strategy '{name}' (strategies: {})",
                    medfed_models::aggregate::config::NAMES.join(", ")
                ))
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<StrategyConfig, A::Error> {
            StrategyConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visitor)
}

impl TaskConfig {
    pub fn effective_rounds(&self, run: &RunConfig) -> u32 {
        self.rounds.unwrap_or(run.rounds)
    }

    pub fn effective_min_hospitals(&self) -> usize {
        self.min_hospitals
            .map_or(self.hospitals, |q| q.of(self.hospitals))
    }
}

/// How many hospitals a stage needs: a count (`4`), or a fraction of the
/// task's hospitals (`0.8`), which follows `--hospitals`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quorum {
    Count(usize),
    Fraction(f64),
}

impl Quorum {
    /// The count out of `hospitals` (a fraction rounds up, at least 1).
    pub fn of(self, hospitals: usize) -> usize {
        match self {
            Quorum::Count(n) => n,
            // The epsilon keeps 0.8 x 5 at 4, not 5 from rounding noise.
            Quorum::Fraction(f) => ((f * hospitals as f64 - 1e-9).ceil() as usize).max(1),
        }
    }
}

impl Serialize for Quorum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Quorum::Count(n) => s.serialize_u64(*n as u64),
            Quorum::Fraction(f) => s.serialize_f64(*f),
        }
    }
}

impl<'de> Deserialize<'de> for Quorum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quorum;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count of hospitals (e.g. 4) or a fraction of them (e.g. 0.8)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quorum, E> {
                usize::try_from(v)
                    .map(Quorum::Count)
                    .map_err(|_| E::custom(format!("{v} hospitals is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quorum, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("a quorum cannot be negative, got {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quorum, E> {
                Ok(Quorum::Fraction(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The layout of a task's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// One CSV file with a header (tabular tasks).
    Csv,
    /// The Kaggle `chest_xray` folder: `{train,val,test}/{NORMAL,PNEUMONIA}/*`.
    Folder,
    /// A MedMNIST `.npz` (`train_images`, `train_labels`, `test_*`, ...).
    Npz,
    /// SYNTHETIC chest-X-ray-like images, generated on first use into the
    /// cache directory (demos and tests; not patient data).
    Synthetic,
    /// Parquet files (columnar tasks): a file, a directory, a glob, or
    /// `s3://bucket/prefix` in object storage.
    Parquet,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Csv => "csv",
            DataFormat::Folder => "folder",
            DataFormat::Npz => "npz",
            DataFormat::Synthetic => "synthetic",
            DataFormat::Parquet => "parquet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// "csv" for tabular tasks; "folder", "npz" or "synthetic" for imaging.
    #[serde(default = "default_format")]
    pub format: DataFormat,
    /// The CSV file, image folder or .npz; for Parquet a file, a directory
    /// of files, a glob or `s3://bucket/prefix`. Relative paths start at the
    /// config file's directory. Not used by "synthetic".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Parquet: the feature columns in the model's order (default: every
    /// numeric column but the label, in the file's order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Parquet: a row with a null or non-finite value in a column that is
    /// read is refused ("error", naming file, row group and column) or
    /// skipped ("drop_row").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls: Option<NullPolicy>,
    /// CSV and Parquet: the label column and its positive class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_class: Option<String>,
    /// CSV: share of rows held out as the test set. Image layouts bring
    /// their own `test` split, which is the held-out set.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Public per-feature bounds (TOML `[bounds] name = [lo, hi]`); needed
    /// for tabular tasks with differential privacy on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_bounds: Option<PathBuf>,
    /// Images: side in pixels every image is resized to.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// "synthetic": how many images to generate (70/15/15 train/val/test) and from which seed.
    #[serde(default = "default_synthetic_count")]
    pub synthetic_count: usize,
    #[serde(default = "default_synthetic_seed")]
    pub synthetic_seed: u64,
}

fn default_format() -> DataFormat {
    DataFormat::Csv
}

fn default_test_fraction() -> f64 {
    0.2
}

fn default_image_size() -> usize {
    64
}

fn default_synthetic_count() -> usize {
    1200
}

fn default_synthetic_seed() -> u64 {
    7
}

/// The imaging network: its architecture, the `small` network's channels,
/// the local optimiser, and an optional initial model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// "small" (three 3x3 convolutions) or "resnet18".
    pub arch: medfed_models::learner::cnn::Arch,
    /// Channels of `small`'s three convolutions (default 8, 16, 32); not
    /// allowed with resnet18, whose widths are fixed.
    pub channels: Option<[usize; 3]>,
    pub optimizer: medfed_models::learner::cnn::Optimizer,
    /// A safetensors file with the initial global model (e.g. converted
    /// ImageNet weights), relative to the config file; default: seeded.
    pub init: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let cnn = medfed_models::learner::cnn::CnnConfig::default();
        Self {
            arch: cnn.arch,
            channels: None,
            optimizer: cnn.optimizer,
            init: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionScheme {
    Iid,
    Sorted,
    Dirichlet,
}

impl std::str::FromStr for PartitionScheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iid" => Ok(Self::Iid),
            "sorted" => Ok(Self::Sorted),
            "dirichlet" => Ok(Self::Dirichlet),
            other => Err(format!(
                "unknown partition '{other}' (expected iid, sorted or dirichlet)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionConfig {
    pub scheme: PartitionScheme,
    /// Feature to sort by (scheme "sorted").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// Dirichlet concentration (scheme "dirichlet"): smaller is more skewed.
    pub alpha: f64,
}

impl PartitionConfig {
    pub fn scheme_name(&self) -> &'static str {
        match self.scheme {
            PartitionScheme::Iid => "iid",
            PartitionScheme::Sorted => "sorted",
            PartitionScheme::Dirichlet => "dirichlet",
        }
    }
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            scheme: PartitionScheme::Iid,
            feature: None,
            alpha: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub local_epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty per example on the weights.
    pub l2: f64,
    /// L2 penalty of the centralized linfa baseline (`--baseline`).
    pub baseline_alpha: f64,
    /// Columnar tasks: "mini_batch" SGD over the stream (the default) or
    /// "full_batch" gradient steps, one pass each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient: Option<StreamMode>,
    /// Columnar tasks: threads decoding row groups (default: every core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.0,
            baseline_alpha: 1.0,
            gradient: None,
            threads: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivacyMode {
    #[serde(rename = "off")]
    Off,
    /// DP-SGD at every hospital: a record-level guarantee (add/remove one).
    #[serde(rename = "dp-sgd")]
    DpSgd,
    /// Clip and noise each round's model delta at sensitivity 2C: a
    /// hospital-level guarantee (the whole local dataset replaced).
    #[serde(rename = "update")]
    Update,
}

impl PrivacyMode {
    /// The neighbouring relation of the guarantee, when DP is on.
    pub fn relation(self) -> Option<&'static str> {
        match self {
            PrivacyMode::Off => None,
            PrivacyMode::DpSgd => Some(medfed_models::privacy::RECORD_RELATION),
            PrivacyMode::Update => Some(medfed_models::privacy::DATASET_RELATION),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrivacyMode::Off => "off",
            PrivacyMode::DpSgd => "dp-sgd",
            PrivacyMode::Update => "update",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpScaling {
    /// Scale by the public feature bounds: no budget spent.
    PublicBounds,
    /// Federated standardisation from noised, clipped statistics: charged.
    DpStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// ChaCha20 seeded from the operating system: for real data.
    Secure,
    /// ChaCha20 seeded from privacy.noise_seed and the hospital's name:
    /// reproducible simulations in one process only (refused with a ledger
    /// directory and in cluster mode).
    Seeded,
}

/// Settings a single hospital may override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HospitalPrivacy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_steps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    pub mode: PrivacyMode,
    /// Budget per hospital and dataset, over all runs.
    pub epsilon: f64,
    pub delta: f64,
    /// Clipping norm: per example (dp-sgd) or per update (update).
    pub max_grad_norm: f64,
    /// Fixed noise multiplier; absent: calibrated from the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// Poisson sampling rate of DP-SGD.
    pub sampling_rate: f64,
    /// DP-SGD steps per round.
    pub local_steps: u64,
    pub scaling: DpScaling,
    pub stats_noise_multiplier: f64,
    /// Noise multiplier of the record count DP-SGD hospitals release once
    /// per dataset (sensitivity 1): it weighs FedAvg and normalises DP-SGD.
    pub count_noise_multiplier: f64,
    /// Where hospitals keep their ledgers; absent: `<run.data_dir>/ledgers`
    /// for `serve`, `coordinator` and `hospital`, in memory for `run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_dir: Option<PathBuf>,
    /// Rounds a hospital may have to train again after a coordinator crash
    /// (a replayed round is a second release): cluster hospitals calibrate
    /// their noise for the planned rounds plus these.
    pub replay_allowance: u32,
    pub noise: NoiseKind,
    /// Seed of `noise = "seeded"`: the hospital's own, never the run's seed.
    pub noise_seed: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hospitals: BTreeMap<String, HospitalPrivacy>,
    /// Distributed DP (a hospital's own rule): with secure aggregation on at
    /// this hospital and its update summed with at least this many
    /// hospitals', it adds only its noise share sigma / sqrt(k).
    pub min_summed_hospitals: usize,
    /// The smallest noise multiplier this hospital ever releases with (a
    /// noise share below it is raised to it).
    pub min_noise_multiplier: f64,
    /// Decline every training round that is not securely aggregated.
    pub require_secure_aggregation: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            mode: PrivacyMode::Off,
            epsilon: 3.0,
            delta: 1e-5,
            max_grad_norm: 1.0,
            noise_multiplier: None,
            sampling_rate: 0.2,
            local_steps: 10,
            scaling: DpScaling::PublicBounds,
            stats_noise_multiplier: 10.0,
            count_noise_multiplier: 10.0,
            ledger_dir: None,
            replay_allowance: 2,
            noise: NoiseKind::Secure,
            noise_seed: 0,
            hospitals: BTreeMap::new(),
            min_summed_hospitals: 3,
            min_noise_multiplier: 0.0,
            require_secure_aggregation: false,
        }
    }
}

/// The privacy settings in force at one hospital.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectivePrivacy {
    pub epsilon: f64,
    pub delta: f64,
    pub max_grad_norm: f64,
    pub noise_multiplier: Option<f64>,
    pub sampling_rate: f64,
    pub local_steps: u64,
}

impl PrivacyConfig {
    pub fn for_hospital(&self, name: &str) -> EffectivePrivacy {
        let o = self.hospitals.get(name).cloned().unwrap_or_default();
        EffectivePrivacy {
            epsilon: o.epsilon.unwrap_or(self.epsilon),
            delta: o.delta.unwrap_or(self.delta),
            max_grad_norm: o.max_grad_norm.unwrap_or(self.max_grad_norm),
            noise_multiplier: o.noise_multiplier.or(self.noise_multiplier),
            sampling_rate: o.sampling_rate.unwrap_or(self.sampling_rate),
            local_steps: o.local_steps.unwrap_or(self.local_steps),
        }
    }
}
