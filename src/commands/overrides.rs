//! Applies command-line overrides to a loaded configuration.

use anyhow::{bail, Result};

use crate::cli::Overrides;
use crate::config::{self, Loaded};

/// Load `path` with the process environment, apply `flags`, validate once
/// (a value is judged with everything that applies to it: an environment
/// quorum of 20 is fine with `--hospitals 20`), and return the
/// configuration with the selected task names.
pub fn load_with(path: &std::path::Path, flags: &Overrides) -> Result<(Loaded, Vec<String>)> {
    let explain = |e: config::ConfigError| {
        let hint = if matches!(e, config::ConfigError::Read { .. })
            && path == std::path::Path::new(crate::cli::DEFAULT_CONFIG)
        {
            " (run from the medfed checkout, or pass --config FILE)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    // `--dp-epsilon` on a configuration with DP off trains with a tuned
    // profile, not with settings chosen for training without noise; the
    // environment and the flags still override it.
    let mut profile = None;
    let mut loaded = config::load_unvalidated_with(path, vars.clone(), |table| {
        profile = dp_profile(table, &vars, flags)?;
        match profile {
            Some((name, text)) => overlay_dp_profile(table, name, text),
            None => Ok(()),
        }
    })
    .map_err(explain)?;
    let selected = select_tasks(&loaded, &flags.tasks)?;
    if let Some((name, _)) = profile {
        eprintln!("note: --dp-epsilon on a configuration with DP off: using the tuned profile {name}");
    }
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

/// The tuned DP profiles (README "Differential privacy"), built in so that
/// they apply from any directory.
const DP_LOCAL: (&str, &str) = (
    "config/profiles/dp-local.toml",
    include_str!("../../config/profiles/dp-local.toml"),
);
const DP_DISTRIBUTED: (&str, &str) = (
    "config/profiles/dp-distributed.toml",
    include_str!("../../config/profiles/dp-distributed.toml"),
);

/// The tuned profile `--dp-epsilon` lays under the environment and flags:
/// only where the file and the environment leave DP off and a selected task
/// is tabular (the profiles are tuned for tabular tasks); the distributed
/// one with secure aggregation. Decided on the raw table, because the
/// environment may set keys that are complete only with the profile (a
/// strategy's `server_lr` without its name, say).
fn dp_profile(
    file: &toml::Table,
    vars: &[(String, String)],
    flags: &Overrides,
) -> Result<Option<(&'static str, &'static str)>, config::ConfigError> {
    if flags.dp_epsilon.is_none() {
        return Ok(None);
    }
    let mut table = file.clone();
    config::apply_env(&mut table, vars.iter().cloned())?;
    let text = |v: Option<&toml::Value>| v.and_then(toml::Value::as_str).map(str::to_string);
    let mode = text(table.get("privacy").and_then(|p| p.get("mode")));
    if mode.is_some_and(|m| m != "off") {
        return Ok(None);
    }
    let tasks = table.get("tasks").and_then(toml::Value::as_table);
    let tasks = || tasks.into_iter().flat_map(|t| t.iter());
    let chosen = |name: &String| flags.tasks.is_empty() || flags.tasks.contains(name);
    let tabular =
        tasks().any(|(name, task)| chosen(name) && text(task.get("kind")).as_deref() == Some("tabular"));
    if !tabular {
        return Ok(None);
    }
    let secure = flags.secure_aggregation
        || tasks().any(|(_, task)| {
            task.get("secure_aggregation")
                .and_then(|s| s.get("enabled"))
                .and_then(toml::Value::as_bool)
                == Some(true)
        });
    Ok(Some(if secure { DP_DISTRIBUTED } else { DP_LOCAL }))
}

/// Lay a DP profile over a configuration file's table: its [privacy] keys
/// over the file's, its [tabular] keys over every tabular task's
/// (`training` key by key, anything else replaced whole).
fn overlay_dp_profile(table: &mut toml::Table, name: &str, text: &str) -> Result<(), config::ConfigError> {
    let profile: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| config::ConfigError::Syntax {
            path: name.to_string(),
            message: e.to_string(),
        })?;
    let part = |key: &str| {
        profile
            .get(key)
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default()
    };
    if let toml::Value::Table(privacy) = table
        .entry("privacy")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    {
        privacy.extend(part("privacy"));
    }
    let tabular = part("tabular");
    let tasks = table.get_mut("tasks").and_then(toml::Value::as_table_mut);
    for (_, task) in tasks.into_iter().flat_map(|t| t.iter_mut()) {
        let Some(task) = task.as_table_mut() else { continue };
        if task.get("kind").and_then(toml::Value::as_str) != Some("tabular") {
            continue;
        }
        for (key, value) in &tabular {
            match (task.get_mut(key), value) {
                (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) if key == "training" => {
                    mine.extend(theirs.clone());
                }
                _ => {
                    task.insert(key.clone(), value.clone());
                }
            }
        }
    }
    Ok(())
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
