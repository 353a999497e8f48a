//! Applies command-line overrides to a loaded configuration.

use anyhow::{bail, Result};

use crate::cli::Overrides;
use crate::config::{self, Loaded};

/// Load `path` with the process environment, apply `flags`, validate once
/// (a value is judged with everything that applies to it: an environment
/// quorum of 20 is fine with `--hospitals 20`), and return the
/// configuration with the selected task names.
pub fn load_with(path: &std::path::Path, flags: &Overrides) -> Result<(Loaded, Vec<String>)> {
    let mut loaded = config::load_unvalidated(path, std::env::vars()).map_err(|e| {
        let hint = if matches!(e, config::ConfigError::Read { .. })
            && path == std::path::Path::new(crate::cli::DEFAULT_CONFIG)
        {
            " (run from the medfed checkout, or pass --config FILE)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let selected = select_tasks(&loaded, &flags.tasks)?;
    let c = &mut loaded.config;
    // Only the selected tasks are part of this run, and only they are validated.
    c.tasks.retain(|name, _| selected.contains(name));
    if let Some(dir) = &flags.checkpoint_dir {
        // Relative to where the command runs, like every path given on the command line.
        c.run.checkpoint_dir = Some(std::env::current_dir()?.join(dir));
    }
    if let Some(seed) = flags.seed {
        c.run.seed = seed;
    }
    if let Some(uri) = &flags.mlflow_uri {
        c.mlflow.tracking_uri = Some(uri.clone());
    }
    if let Some(epsilon) = flags.dp_epsilon {
        if c.privacy.mode == crate::config::PrivacyMode::Off {
            c.privacy.mode = crate::config::PrivacyMode::DpSgd;
        }
        c.privacy.epsilon = epsilon;
    }
    for name in &selected {
        let task = c.tasks.get_mut(name).expect("selected tasks exist");
        if let Some(rounds) = flags.rounds {
            task.rounds = Some(rounds);
        }
        if let Some(k) = flags.hospitals {
            task.hospitals = k as usize;
            if let Some(crate::config::Quorum::Count(m)) = task.min_hospitals {
                if m > task.hospitals {
                    eprintln!("note: task {name}: quorum lowered from {m} to {k} to match --hospitals {k}");
                    task.min_hospitals = Some(crate::config::Quorum::Count(task.hospitals));
                }
            }
        }
        if let Some(scheme) = flags.partition {
            task.partition.scheme = scheme;
        }
        if let Some(strategy) = &flags.strategy {
            task.strategy = strategy.clone();
        }
        if flags.secure_aggregation {
            task.secure_aggregation
                .get_or_insert_with(Default::default)
                .enabled = true;
        }
    }
    config::validate(&loaded.config)?;
    Ok((loaded, selected))
}

fn select_tasks(loaded: &Loaded, requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(loaded.config.tasks.keys().cloned().collect());
    }
    let mut selected = Vec::new();
    for name in requested {
        if !loaded.config.tasks.contains_key(name) {
            bail!(
                "--task {name}: no such task in {} (tasks: {})",
                loaded.source,
                loaded.config.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if !selected.contains(name) {
            selected.push(name.clone());
        }
    }
    Ok(selected)
}
