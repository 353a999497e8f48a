//! One typed configuration for every mode. Precedence: the TOML file, then
//! `MEDFED_<SECTION>__<KEY>` environment variables, then command-line flags.
//! Unknown keys and bad values are errors that name the key.

mod env;
pub mod run_settings;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use env::apply_overrides as apply_env;
pub use schema::*;
pub use validate::{is_dns_name, MAX_HOSPITALS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Key {
        path: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The loaded configuration and the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub base_dir: PathBuf,
    pub source: String,
}

impl Loaded {
    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The cache directory (generated data, the panel's token):
    /// `run.cache_dir`, else `$XDG_CACHE_HOME/medfed`, else `~/.cache/medfed`.
    pub fn cache_dir(&self) -> Result<PathBuf, ConfigError> {
        if let Some(dir) = &self.config.run.cache_dir {
            return Ok(self.resolve(dir));
        }
        let env_dir = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        env_dir("XDG_CACHE_HOME")
            .or_else(|| env_dir("HOME").map(|h| h.join(".cache")))
            .map(|d| d.join("medfed"))
            .ok_or_else(|| ConfigError::Invalid("no cache directory: set run.cache_dir (or HOME)".into()))
    }

    /// Where durable state lives (the store, checkpoints, privacy ledgers):
    /// `run.data_dir`, else `$XDG_DATA_HOME/medfed`, else
    /// `~/.local/share/medfed` — never the cache, which users may wipe.
    /// Created, readable by its owner only (0700), on first use.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        let env_dir = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = match &self.config.run.data_dir {
            Some(dir) => self.resolve(dir),
            None => env_dir("XDG_DATA_HOME")
                .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("share")))
                .map(|d| d.join("medfed"))
                .ok_or_else(|| {
                    ConfigError::Invalid("no data directory: set run.data_dir (or HOME)".into())
                })?,
        };
        create_private_dir(&dir)
            .map_err(|e| ConfigError::Invalid(format!("data directory {}: {e}", dir.display())))?;
        Ok(dir)
    }
}

/// Create `dir` (and its parents) with mode 0700 where it is new.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Read `path`, apply environment overrides from `vars`, and validate.
pub fn load(path: &Path, vars: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
    let loaded = load_unvalidated(path, vars)?;
    validate(&loaded.config)?;
    Ok(loaded)
}

/// As `load`, without the semantic checks: for callers that merge more
/// settings (command-line flags) and then `validate` once, so that a value
/// is judged with everything that applies to it.
pub fn load_unvalidated(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    load_unvalidated_with(path, vars, |_| Ok(()))
}

/// As `load_unvalidated`, with `overlay` changing the file's table before
/// the environment applies (a profile: the file's values give way to it,
/// the environment's and the flags' do not).
pub fn load_unvalidated_with(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
    overlay: impl FnOnce(&mut toml::Table) -> Result<(), ConfigError>,
) -> Result<Loaded, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let config = parse_unvalidated_with(&text, &shown, vars, overlay)?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Loaded {
        config,
        base_dir,
        source: shown,
    })
}

/// Parse TOML text with environment overrides into a validated `Config`.
pub fn parse(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let config = parse_unvalidated(text, origin, vars)?;
    validate(&config)?;
    Ok(config)
}

/// The semantic checks the schema's types cannot express.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate::validate(config)
}

/// Parse TOML text with environment overrides; types and keys are checked,
/// values are not (see `validate`).
pub fn parse_unvalidated(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    parse_unvalidated_with(text, origin, vars, |_| Ok(()))
}

fn parse_unvalidated_with(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
    overlay: impl FnOnce(&mut toml::Table) -> Result<(), ConfigError>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: origin.to_string(),
        message: e.to_string(),
    })?;
    overlay(&mut table)?;
    env::apply_overrides(&mut table, vars)?;
    let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Key {
            path: origin.to_string(),
            key,
            message: e.into_inner().to_string(),
        }
    })?;
    Ok(config)
}

/// The effective configuration as TOML.
pub fn to_toml(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
mod tests;
