//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::PartitionScheme;

#[derive(Debug, Parser)]
#[command(
    name = "medfed",
    version,
    about = "Federated learning for hospital networks: no patient record leaves its hospital"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "MEDFED_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Let ractor_cluster log at DEBUG/TRACE, where it prints whole
    /// messages (model weights, scaler sums): for debugging the transport
    /// only, never with patient data. Without it its level is capped at INFO
    /// whatever RUST_LOG says.
    #[arg(long, global = true)]
    pub log_wire_payloads: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one whole federation in this process and print its results.
    Run(RunArgs),
    /// Serve the control panel, REST API, live events and /metrics over the
    /// config's coordinator and hospitals (in this process); runs start from
    /// the panel or `POST /api/runs`.
    Serve(ServeArgs),
    /// Cluster mode: the coordinator node (hospitals connect to it).
    Coordinator(CoordinatorArgs),
    /// Cluster mode: one hospital node next to its own data.
    Hospital(HospitalNodeArgs),
    /// Cluster tooling.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Differential-privacy calculators and the hospitals' privacy ledgers.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Datasets: synthetic chest X-rays, and checks of image datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// The model registry: versions, lineage, reports, exports.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Score records with a registered model (probabilities and labels).
    Predict(PredictArgs),
    /// The store of runs, rounds and models.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The tamper-evident audit logs of serve and coordinator.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain (an edited, deleted, inserted or
    /// moved line is found and named) and that it holds every entry the
    /// store kept of it (a cut-off end). Exit code 1 when it is broken.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The log (default: every audit-*.jsonl in the data directory).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub at: StoreLocation,
}

/// Which store a registry command reads: `--store`, else the config's
/// `[store] path`, else `<run.data_dir>/medfed.sqlite`.
#[derive(Debug, Clone, Args)]
pub struct StoreLocation {
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The configuration that says where the data directory is.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every registered version, oldest first.
    List(ModelsListArgs),
    /// One version with its lineage: contributions per round, rejections,
    /// privacy spent, settings.
    Show(ModelRefArgs),
    /// Copy a version's safetensors file (checked against its sha256).
    Export(ModelsExportArgs),
    /// A report of one version: data, configuration, privacy guarantee,
    /// per-round and final metrics, federated evaluation, lineage.
    Report(ModelsReportArgs),
    /// The versions a hospital contributed an accepted update to (site withdrawal).
    Affected(ModelsAffectedArgs),
}

#[derive(Debug, Args)]
pub struct ModelsListArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    /// Only this task's versions.
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelRefArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    /// TASK or TASK:VERSION (default: the latest version).
    pub model: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsExportArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    /// TASK or TASK:VERSION.
    pub model: String,
    /// The file to write (refused if it exists).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    Json,
}

#[derive(Debug, Args)]
pub struct ModelsReportArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    pub task: String,
    pub version: i64,
    #[arg(long, value_enum, default_value = "md")]
    pub format: ReportFormat,
    /// Write here instead of stdout (refused if it exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ModelsAffectedArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    #[arg(long)]
    pub hospital: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    /// TASK or TASK:VERSION of a registered model.
    #[arg(long)]
    pub model: String,
    /// A CSV with the task's feature columns (tabular), or an image folder /
    /// MedMNIST .npz (imaging).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the predictions as CSV (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// A consistent copy of the store (SQLite's online backup: safe while a
    /// coordinator writes). Restore by stopping medfed and putting the copy
    /// in the store's place.
    Backup(StoreBackupArgs),
}

#[derive(Debug, Args)]
pub struct StoreBackupArgs {
    #[command(flatten)]
    pub at: StoreLocation,
    /// The backup file to write (refused if it exists).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write SYNTHETIC chest-X-ray-like images (not patient data) in the
    /// Kaggle folder layout or as a MedMNIST-style .npz, split 70/15/15.
    SynthXray(SynthXrayArgs),
    /// Load an image dataset as training would and report its class balance
    /// and every unreadable file.
    CheckImages(CheckImagesArgs),
    /// Write a SYNTHETIC tabular CSV (two labelled Gaussian blobs, not patient
    /// data): columns x0..x{F-1} and `label` (1 or 0), for scale measurements.
    SynthTabular(SynthTabularArgs),
    /// Write a SYNTHETIC Parquet table (not patient data): columns
    /// x0..x{D-1} from a known linear rule plus noise, and `label` (1 or 0);
    /// the rule is kept in the file's metadata. For columnar tasks.
    SynthTable(SynthTableArgs),
    /// Convert a CSV file to Parquet for a columnar task: integer, number
    /// and text columns as found in the file, empty cells as nulls.
    Convert(ConvertArgs),
}

/// Row groups of about 128 MB of 30 float columns, as Spark writes them.
const DEFAULT_ROW_GROUP_ROWS: &str = "524288";

#[derive(Debug, Args)]
pub struct SynthTableArgs {
    /// The Parquet file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    pub rows: u64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub features: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Rows per row group (the unit read in parallel and partitioned).
    #[arg(long, default_value = DEFAULT_ROW_GROUP_ROWS, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub row_group_rows: u64,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The CSV file to read (with a header row).
    #[arg(long = "in")]
    pub input: PathBuf,
    /// The Parquet file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = DEFAULT_ROW_GROUP_ROWS, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub row_group_rows: u64,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthTabularArgs {
    /// The CSV file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    pub rows: u64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub features: u64,
    /// Share of positive rows.
    #[arg(long, default_value_t = 0.4)]
    pub positive_share: f64,
    /// Distance between the blobs' centres along every feature (in standard deviations).
    #[arg(long, default_value_t = 0.5)]
    pub separation: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Folder,
    Npz,
}

#[derive(Debug, Args)]
pub struct SynthXrayArgs {
    /// Output folder (format folder) or .npz file (format npz).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(3..=1_000_000))]
    pub count: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=1024))]
    pub size: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "folder")]
    pub format: ImageFormat,
}

#[derive(Debug, Args)]
pub struct CheckImagesArgs {
    /// A Kaggle-layout folder or a MedMNIST .npz file.
    #[arg(long)]
    pub path: PathBuf,
    #[arg(long, value_enum)]
    pub format: ImageFormat,
    /// Split to load: train, val or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Side the images are resized to.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=1024))]
    pub size: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Epsilon of DP-SGD (Poisson-subsampled Gaussian) or update-level DP
    /// after T steps, RDP accountant.
    Epsilon(EpsilonArgs),
    /// Smallest noise multiplier that keeps T steps within a target epsilon.
    Noise(NoiseArgs),
    /// Show the privacy spent in every ledger of a directory.
    LedgerShow(LedgerShowArgs),
    /// Forget what was spent on a dataset: deletes its ledger file.
    /// Its next run starts from a full budget, which weakens the guarantee for
    /// every patient already used; only for a dataset that is retired or replaced.
    LedgerReset(LedgerResetArgs),
}

/// Which release the calculators account for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalculatorMode {
    /// DP-SGD: Poisson-subsampled Gaussian steps, add/remove one record.
    #[value(name = "dp-sgd")]
    DpSgd,
    /// Update-level DP: one Gaussian per round at sensitivity 2C (the whole
    /// local dataset replaced); sampling rate 1.
    Update,
}

#[derive(Debug, Args)]
pub struct EpsilonArgs {
    /// dp-sgd (per-record) or update (per-hospital).
    #[arg(long, value_enum, default_value = "dp-sgd")]
    pub mode: CalculatorMode,
    /// Poisson sampling rate q, in (0, 1]; required for dp-sgd, 1 for update.
    #[arg(long)]
    pub sampling_rate: Option<f64>,
    /// Noise standard deviation over the sensitivity (sigma), > 0. The
    /// sensitivity is the clipping norm C for dp-sgd and 2C for update.
    #[arg(long)]
    pub noise_multiplier: f64,
    /// Number of steps (dp-sgd: rounds x local steps; update: rounds), >= 1.
    #[arg(long)]
    pub steps: u64,
    /// Target delta, in (0, 1).
    #[arg(long)]
    pub delta: f64,
    /// dp-sgd: also the one-off release of the record count at this noise
    /// multiplier (privacy.count_noise_multiplier; a hospital's first run pays it).
    #[arg(long)]
    pub count_noise_multiplier: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NoiseArgs {
    /// dp-sgd (per-record) or update (per-hospital).
    #[arg(long, value_enum, default_value = "dp-sgd")]
    pub mode: CalculatorMode,
    #[arg(long)]
    pub target_epsilon: f64,
    /// Poisson sampling rate q, in (0, 1]; required for dp-sgd, 1 for update.
    #[arg(long)]
    pub sampling_rate: Option<f64>,
    #[arg(long)]
    pub steps: u64,
    #[arg(long)]
    pub delta: f64,
    /// dp-sgd: include the one-off release of the record count at this noise
    /// multiplier, as a hospital's first run calibrates.
    #[arg(long)]
    pub count_noise_multiplier: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LedgerShowArgs {
    #[arg(long)]
    pub ledger_dir: PathBuf,
    /// Delta at which to express the spent budget as epsilon.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LedgerResetArgs {
    #[arg(long)]
    pub ledger_dir: PathBuf,
    /// The ledger's file name, as `ledger-show` lists it
    /// (e.g. breast_cancer__0123456789abcdef.json).
    #[arg(long)]
    pub ledger: String,
    /// Confirm: the spent budget is forgotten.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and print the effective one (file < MEDFED_ env < flags).
    Check(ConfigCheckArgs),
}

pub const DEFAULT_CONFIG: &str = "config/demo.toml";

/// Flags that override the configuration, shared by `run` and `config check`.
#[derive(Debug, Clone, Args, Default)]
pub struct Overrides {
    /// Task to run (repeatable); default: every task in the config.
    #[arg(long = "task", value_name = "TASK")]
    pub tasks: Vec<String>,
    /// Rounds of the selected tasks.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: Option<u32>,
    /// Hospital count of the selected tasks.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_HOSPITALS as u64))]
    pub hospitals: Option<u64>,
    /// Partition scheme of the selected tasks.
    #[arg(long, value_parser = parse_partition)]
    pub partition: Option<PartitionScheme>,
    /// Aggregation strategy of the selected tasks, with its default
    /// parameters (set them in [tasks.T.strategy]): fedavg, fedprox, fedadam,
    /// fedyogi, fedadagrad, median, trimmed_mean, krum, multi_krum, bulyan.
    #[arg(long, value_name = "NAME", value_parser = parse_strategy)]
    pub strategy: Option<crate::config::StrategyConfig>,
    /// Seed of the split, partition and training.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train with DP-SGD under this per-hospital epsilon budget.
    #[arg(long, value_name = "EPSILON")]
    pub dp_epsilon: Option<f64>,
    /// Aggregate over a secure sum (SecAgg+): the coordinator learns only
    /// the sum of the updates ([tasks.T.secure_aggregation] sets its parameters).
    #[arg(long)]
    pub secure_aggregation: bool,
    /// Write every task's global model after each round to DIR/<task>/round-NNNN.safetensors.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Track the run in this MLflow tracking server (http(s)://host:port;
    /// also `[mlflow] tracking_uri` and MLFLOW_TRACKING_URI).
    #[arg(long, value_name = "URL")]
    pub mlflow_uri: Option<String>,
}

/// The store a command records into (runs, rounds, the model registry).
#[derive(Debug, Clone, Args, Default)]
pub struct StoreArgs {
    /// The store's SQLite file (else `[store] path`; `serve` and
    /// `coordinator` default to <run.data_dir>/medfed.sqlite, `run` keeps
    /// everything in memory).
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Mark the store's interrupted run ID as abandoned instead of resuming it.
    #[arg(long, value_name = "ID")]
    pub abandon_run: Option<String>,
}

fn parse_partition(s: &str) -> Result<PartitionScheme, String> {
    s.parse()
}

fn parse_attack(s: &str) -> Result<medfed_models::attack::Attack, String> {
    medfed_models::attack::Attack::parse(s).map_err(|e| e.to_string())
}

fn parse_strategy(s: &str) -> Result<crate::config::StrategyConfig, String> {
    crate::config::StrategyConfig::named(s).ok_or_else(|| {
        format!(
            "unknown strategy '{s}' (strategies: {})",
            medfed_models::aggregate::config::NAMES.join(", ")
        )
    })
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Print exactly one JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr (by default a bar on a terminal, else one line per round).
    #[arg(short, long)]
    pub quiet: bool,
    /// Also train the same model centrally on all training rows and report it.
    #[arg(long)]
    pub baseline: bool,
    /// Write each task's final global model to DIR/<task>.safetensors.
    #[arg(long, value_name = "DIR")]
    pub save_model: Option<PathBuf>,
    /// EVALUATION TOOL (repeatable): make a hospital attack the federation,
    /// to see what robust strategies buy on your task. KIND:HOSPITAL[:FACTOR]
    /// with KIND scale (delta x FACTOR, default 10), sign_flip (x -FACTOR,
    /// default 1), gaussian (N(0, FACTOR^2) instead, default 1), nan or zero;
    /// e.g. sign_flip:breast_cancer-3:10. Recorded in the results.
    #[arg(long = "attack", value_name = "KIND:HOSPITAL[:FACTOR]")]
    pub attacks: Vec<String>,
    /// Train without this hospital (repeatable): it is never asked for
    /// anything. With a store, the registered model replaces the latest
    /// version the hospital contributed to (site withdrawal).
    #[arg(long = "exclude-hospital", value_name = "HOSPITAL")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub durable: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Address to listen on (default: web.http, 127.0.0.1:8080); port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub https: HttpTlsArgs,
    #[command(flatten)]
    pub durable: StoreArgs,
    /// Also train each task's model centrally on all training rows once at
    /// start: the panel's charts show it as a reference line (DP off only).
    #[arg(long)]
    pub baseline: bool,
}

/// HTTPS for the control panel and API (also web.tls_cert / web.tls_key).
#[derive(Debug, Clone, Args, Default)]
pub struct HttpTlsArgs {
    /// The HTTP server's certificate chain (PEM): serve HTTPS.
    #[arg(long, value_name = "PATH")]
    pub http_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub http_tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// Configuration file.
    #[arg(default_value = DEFAULT_CONFIG)]
    pub file: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Cookie and TLS of a cluster node (each also a `[cluster]` config key).
#[derive(Debug, Clone, Args, Default)]
pub struct ClusterSecurity {
    /// File holding the cluster's shared cookie (else MEDFED_CLUSTER_COOKIE).
    #[arg(long, value_name = "PATH")]
    pub cookie_file: Option<PathBuf>,
    /// This node's certificate (PEM); mutual TLS when cert, key and CA are given.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// The CA every peer's certificate must be signed by (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// The cluster port hospitals connect to.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Accept hospitals without TLS on a non-loopback address (models and
    /// updates then cross the network in clear; logged loudly).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Start a run as soon as every task has min_hospitals joined.
    #[arg(long)]
    pub auto_start: bool,
    /// Exit when the run ends (non-zero if it aborted).
    #[arg(long)]
    pub exit_after_run: bool,
    /// With --exit-after-run: print the result as `medfed run --json` does.
    #[arg(long)]
    pub json: bool,
    /// Also serve the control panel, REST API and /metrics here.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub https: HttpTlsArgs,
    #[command(flatten)]
    pub security: ClusterSecurity,
    #[command(flatten)]
    pub durable: StoreArgs,
}

#[derive(Debug, Args)]
pub struct HospitalNodeArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// The coordinator's cluster address.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// This hospital's name, unique in the federation.
    #[arg(long)]
    pub name: Option<String>,
    /// This hospital's own CSV (tabular tasks; its local test split is held out of it).
    #[arg(long, value_name = "PATH", conflicts_with = "shard")]
    pub data: Option<PathBuf>,
    /// Shard I of K of the task's shipped data, exactly as `medfed run` partitions it.
    #[arg(long, value_name = "I/K")]
    pub shard: Option<String>,
    /// EVALUATION TOOL: make this hospital attack the federation, to see
    /// what robust strategies buy: KIND[:FACTOR] with KIND scale, sign_flip,
    /// gaussian, nan or zero. It logs a warning and declares it in its hello.
    #[arg(long, value_name = "KIND[:FACTOR]", value_parser = parse_attack)]
    pub attack: Option<medfed_models::attack::Attack>,
    /// Give up after this many failed attempts in a row to reach the
    /// coordinator (default: keep trying, with backoff up to 10 s, or a
    /// minute after the coordinator announced a normal shutdown).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_reconnect_attempts: Option<u64>,
    /// Serve /healthz, /readyz (connected and admitted) and /metrics
    /// (`medfed_hospital_*`) here. In a pod, listen on the pod's address
    /// (0.0.0.0 or [::]): probes never reach a loopback listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub security: ClusterSecurity,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write a THROWAWAY CA and node certificates for development and tests.
    /// Not for production: the CA key is written next to the certificates.
    GenCerts(GenCertsArgs),
}

#[derive(Debug, Args)]
pub struct GenCertsArgs {
    /// Directory for the nodes' files: ca.pem, coordinator.pem and
    /// coordinator-key.pem, <hospital>.pem and <hospital>-key.pem.
    #[arg(long)]
    pub out: PathBuf,
    /// Hospital names, comma-separated (e.g. h1,h2): one client
    /// certificate each, naming the hospital.
    #[arg(long, value_delimiter = ',')]
    pub hospitals: Vec<String>,
    /// Names hospitals dial the coordinator by (DNS names or IPs, e.g. its
    /// Kubernetes Service names), comma-separated; localhost and 127.0.0.1
    /// are always included.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub coordinator_names: Vec<String>,
    /// Validity of the CA and every certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Where the CA key goes: outside --out (default: beside it, as
    /// <out>.ca-key.pem).
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
}
