//! The configuration schema. Every key is documented in config/default.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    pub tasks: BTreeMap<String, TaskConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seeds the split, the partition and every hospital's training stream.
    pub seed: u64,
    /// Rounds of a task that does not set its own.
    pub rounds: u32,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { seed: 42, rounds: 10 }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    Fedavg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub kind: HospitalKind,
    /// Number of hospitals the training rows are partitioned into.
    pub hospitals: usize,
    /// Quorum: fewest accepted updates that close a round (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hospitals: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    #[serde(default = "default_strategy")]
    pub strategy: StrategyName,
    /// Largest accepted L2 norm of an update (model delta); absent: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_update_norm: Option<f64>,
    pub data: DataConfig,
    #[serde(default)]
    pub partition: PartitionConfig,
    #[serde(default)]
    pub training: TrainingConfig,
}

fn default_strategy() -> StrategyName {
    StrategyName::Fedavg
}

impl TaskConfig {
    pub fn effective_rounds(&self, run: &RunConfig) -> u32 {
        self.rounds.unwrap_or(run.rounds)
    }

    pub fn effective_min_hospitals(&self) -> usize {
        self.min_hospitals.unwrap_or(self.hospitals)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// CSV file; relative paths start at the config file's directory.
    pub path: PathBuf,
    pub label_column: String,
    pub positive_class: String,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
}

fn default_test_fraction() -> f64 {
    0.2
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
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.0,
            baseline_alpha: 1.0,
        }
    }
}
