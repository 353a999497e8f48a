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
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
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
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub hospitals: Option<u64>,
    /// Partition scheme of the selected tasks.
    #[arg(long, value_parser = parse_partition)]
    pub partition: Option<PartitionScheme>,
    /// Seed of the split, partition and training.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_partition(s: &str) -> Result<PartitionScheme, String> {
    s.parse()
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
    /// Also train the same model centrally on all training rows and report it.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// Configuration file.
    #[arg(default_value = DEFAULT_CONFIG)]
    pub file: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
}
