//! A run's own settings (`POST /api/runs` "settings"): per task, tables
//! whose keys are exactly those of the configuration's `[tasks.T.strategy]`,
//! `[tasks.T.training]` and `[privacy]`. They are merged into the loaded
//! configuration and checked by its own deserialisation and validation, so
//! a run accepts what the configuration file accepts, with the same
//! messages; then reduced to what a run may change. Privacy settings may
//! only make a run more private than the hospitals' own policy.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use medfed_actors::{TaskRunSettings, TrainingSettings};
use medfed_models::learner::RunPrivacy;

use super::{validate, Config, ConfigError, PrivacyConfig, PrivacyMode};

/// The tables a task's settings may have.
pub const TABLES: [&str; 3] = ["strategy", "training", "privacy"];
/// The `[privacy]` keys a run may set; the rest is each hospital's policy.
pub const RUN_PRIVACY_KEYS: [&str; 4] = ["mode", "epsilon", "delta", "noise_multiplier"];

/// A setting that is refused: the key as the request spelled it
/// (`settings.<task>.<table>.<key>`) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

fn refuse<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, SettingsError> {
    Err(SettingsError {
        key: key.into(),
        message: message.into(),
    })
}

/// Check `settings` (task name -> tables) against `config` and the run's
/// `tasks`; the result is what the coordinator takes up.
pub fn resolve(
    config: &Config,
    tasks: &[String],
    settings: &Map<String, Value>,
) -> Result<BTreeMap<String, TaskRunSettings>, SettingsError> {
    let mut resolved = BTreeMap::new();
    for (task, tables) in settings {
        let key = format!("settings.{task}");
        if !config.tasks.contains_key(task) {
            let known: Vec<&str> = config.tasks.keys().map(String::as_str).collect();
            return refuse(key, format!("no task '{task}' (tasks: {})", known.join(", ")));
        }
        if !tasks.contains(task) {
            return refuse(
                key,
                format!("'{task}' is not among this run's tasks ({})", tasks.join(", ")),
            );
        }
        let Some(tables) = tables.as_object() else {
            return refuse(
                key,
                format!(
                    "must be an object of tables ({}), got {}",
                    TABLES.join(", "),
                    kind(tables)
                ),
            );
        };
        resolved.insert(task.clone(), resolve_task(config, task, tables)?);
    }
    Ok(resolved)
}

fn resolve_task(
    config: &Config,
    task: &str,
    tables: &Map<String, Value>,
) -> Result<TaskRunSettings, SettingsError> {
    let key = |rest: &str| format!("settings.{task}.{rest}");
    let mut doc = serde_json::to_value(config).map_err(|e| SettingsError {
        key: key(""),
        message: format!("the configuration cannot be copied: {e}"),
    })?;
    for (table, value) in tables {
        match table.as_str() {
            // A strategy is replaced whole: its name decides its parameters.
            "strategy" => doc["tasks"][task]["strategy"] = value.clone(),
            "training" => merge(&mut doc["tasks"][task]["training"], value, &key("training"))?,
            "privacy" => {
                // What only a hospital decides is refused before it is read.
                if let Some(k) = value
                    .as_object()
                    .and_then(|o| o.keys().find(|k| !RUN_PRIVACY_KEYS.contains(&k.as_str())))
                {
                    return refuse(
                        key(&format!("privacy.{k}")),
                        format!(
                            "is each hospital's own policy; a run may set only {}",
                            RUN_PRIVACY_KEYS.join(", ")
                        ),
                    );
                }
                merge(&mut doc["privacy"], value, &key("privacy"))?
            }
            other => {
                return refuse(
                    key(other),
                    format!("unknown table (expected {})", TABLES.join(", ")),
                )
            }
        }
    }
    let candidate: Config = serde_path_to_error::deserialize(&doc).map_err(|e| {
        let path = e.path().to_string();
        SettingsError {
            key: request_key(task, &path),
            message: without_type_names(&e.into_inner().to_string()),
        }
    })?;
    validate::validate(&candidate).map_err(|e| match e {
        ConfigError::Invalid(message) => split_key(task, &message),
        other => SettingsError {
            key: key(""),
            message: other.to_string(),
        },
    })?;
    let configured = &config.tasks[task];
    let chosen = &candidate.tasks[task];
    let training = match tables.get("training") {
        None => None,
        Some(_) => {
            if chosen.training.baseline_alpha != configured.training.baseline_alpha {
                return refuse(
                    key("training.baseline_alpha"),
                    "the centralized baseline is trained when the server starts; a run cannot change it",
                );
            }
            let t = &chosen.training;
            Some(TrainingSettings {
                local_epochs: t.local_epochs,
                batch_size: t.batch_size,
                learning_rate: t.learning_rate,
                l2: t.l2,
            })
        }
    };
    let privacy = match tables.get("privacy").and_then(Value::as_object) {
        None => None,
        Some(asked) => run_privacy(&config.privacy, &candidate.privacy, asked, &key("privacy"))?,
    };
    Ok(TaskRunSettings {
        strategy: tables.contains_key("strategy").then(|| chosen.strategy.clone()),
        training,
        privacy,
    })
}

/// What a run's privacy table asks of the hospitals, refused where it would
/// be less private than `policy` or change what only a hospital decides.
fn run_privacy(
    policy: &PrivacyConfig,
    chosen: &PrivacyConfig,
    asked: &Map<String, Value>,
    key: &str,
) -> Result<Option<RunPrivacy>, SettingsError> {
    let at = |k: &str| format!("{key}.{k}");
    if let Some(k) = asked.keys().find(|k| !RUN_PRIVACY_KEYS.contains(&k.as_str())) {
        return refuse(
            at(k),
            format!(
                "is each hospital's own policy; a run may set only {}",
                RUN_PRIVACY_KEYS.join(", ")
            ),
        );
    }
    if chosen.mode != policy.mode {
        return refuse(
            at("mode"),
            format!(
                "the hospitals train with privacy mode \"{}\" by their own policy; a run cannot change it",
                policy.mode.name()
            ),
        );
    }
    let tightening: Vec<&String> = asked.keys().filter(|k| *k != "mode").collect();
    if tightening.is_empty() {
        return Ok(None);
    }
    if policy.mode == PrivacyMode::Off {
        return refuse(
            at(tightening[0]),
            "differential privacy is off for these hospitals (their [privacy] mode), so it has no effect",
        );
    }
    for (k, what, asked, own) in [
        ("epsilon", "budget", chosen.epsilon, policy.epsilon),
        ("delta", "delta", chosen.delta, policy.delta),
    ] {
        if asked > own {
            return refuse(
                at(k),
                format!("{asked} would be less private than the hospitals' {what} of {own}; a run may only lower it"),
            );
        }
    }
    if let (Some(own), Some(asked)) = (policy.noise_multiplier, chosen.noise_multiplier) {
        if asked < own {
            return refuse(
                at("noise_multiplier"),
                format!("{asked} would be less private than the hospitals' {own}; a run may only raise it"),
            );
        }
    }
    Ok(Some(RunPrivacy {
        epsilon: asked.contains_key("epsilon").then_some(chosen.epsilon),
        delta: asked.contains_key("delta").then_some(chosen.delta),
        noise_multiplier: asked
            .contains_key("noise_multiplier")
            .then_some(chosen.noise_multiplier)
            .flatten(),
        // The coordinator sets the run's planned rounds.
        rounds: 0,
    }))
}

/// Merge the object `value` into the table `into`, key by key.
fn merge(into: &mut Value, value: &Value, key: &str) -> Result<(), SettingsError> {
    let Some(fields) = value.as_object() else {
        return refuse(key, format!("must be an object, got {}", kind(value)));
    };
    if !into.is_object() {
        *into = Value::Object(Map::new());
    }
    if let Some(table) = into.as_object_mut() {
        for (k, v) in fields {
            table.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// A configuration key (`tasks.T.training.x`, `privacy.x`) as the request
/// spells it (`settings.T.training.x`, `settings.T.privacy.x`).
fn request_key(task: &str, config_key: &str) -> String {
    let own = format!("tasks.{task}.");
    if let Some(rest) = config_key.strip_prefix(&own) {
        return format!("settings.{task}.{rest}");
    }
    if let Some(rest) = config_key.strip_prefix("privacy.") {
        // A per-hospital override is reported against the run's table.
        let rest = match rest.strip_prefix("hospitals.") {
            Some(h) => h.split_once('.').map_or(h, |(_, k)| k),
            None => rest,
        };
        return format!("settings.{task}.privacy.{rest}");
    }
    format!("settings.{task}")
}

/// A validation message "`key`: why" as a `SettingsError` on the request's key.
fn split_key(task: &str, message: &str) -> SettingsError {
    let parsed = message
        .strip_prefix('`')
        .and_then(|m| m.split_once("`: "))
        .map(|(k, why)| (request_key(task, k), why.to_string()));
    match parsed {
        Some((key, message)) => SettingsError { key, message },
        None => SettingsError {
            key: format!("settings.{task}"),
            message: message.to_string(),
        },
    }
}

/// serde's "expected struct TrainingConfig" as people read it: "expected
/// a table" (the server's type names mean nothing to a client).
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        out.push_str("a table");
        let name = &rest[at + "struct ".len()..];
        let len = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(name.len());
        rest = &name[len..];
    }
    out.push_str(rest);
    out
}

/// A JSON value's kind, for messages (never a Rust type name).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(privacy: &str) -> Config {
        let text = format!(
            r#"
            [privacy]
            {privacy}
            [tasks.bc]
            kind = "tabular"
            hospitals = 5
            min_hospitals = 3
            [tasks.bc.data]
            path = "data.csv"
            label_column = "diagnosis"
            positive_class = "M"
            feature_bounds = "bounds.toml"
            "#
        );
        let config: Config = toml::from_str(&text).unwrap();
        validate::validate(&config).unwrap();
        config
    }

    fn run(config: &Config, settings: Value) -> Result<BTreeMap<String, TaskRunSettings>, SettingsError> {
        resolve(config, &["bc".to_string()], settings.as_object().unwrap())
    }

    fn refused(config: &Config, settings: Value) -> SettingsError {
        run(config, settings).unwrap_err()
    }

    #[test]
    fn strategy_and_training_take_the_configurations_tables() {
        let c = config("");
        let got = run(
            &c,
            json!({"bc": {"strategy": {"name": "trimmed_mean", "beta": 0.2},
                          "training": {"learning_rate": 0.05, "local_epochs": 3}}}),
        )
        .unwrap();
        let bc = &got["bc"];
        assert_eq!(bc.strategy.as_ref().unwrap().name(), "trimmed_mean");
        let t = bc.training.unwrap();
        assert_eq!((t.learning_rate, t.local_epochs, t.batch_size), (0.05, 3, 32));
        assert!(bc.privacy.is_none());
        // Only a name: that strategy with its defaults.
        let named = run(&c, json!({"bc": {"strategy": "median"}})).unwrap();
        assert_eq!(named["bc"].strategy.as_ref().unwrap().name(), "median");
    }

    #[test]
    fn errors_name_the_key_as_the_request_spells_it() {
        let c = config("");
        let e = refused(&c, json!({"bc": {"training": {"learning_rate": -1.0}}}));
        assert_eq!(e.key, "settings.bc.training.learning_rate");
        assert!(e.message.contains("must be positive"), "{e}");
        let e = refused(&c, json!({"bc": {"training": {"learning_rate": "fast"}}}));
        assert_eq!(e.key, "settings.bc.training.learning_rate");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = refused(&c, json!({"bc": {"training": {"speed": 1}}}));
        assert!(e.message.contains("unknown field `speed`"), "{e}");
        let e = refused(&c, json!({"bc": {"strategy": {"name": "krum", "f": 9}}}));
        assert_eq!(e.key, "settings.bc.strategy.f");
        let e = refused(&c, json!({"bc": {"strategy": "best"}}));
        assert!(e.message.contains("unknown strategy 'best'"), "{e}");
        let e = refused(&c, json!({"bc": {"model": {}}}));
        assert_eq!(e.key, "settings.bc.model");
        assert_eq!(
            without_type_names("invalid type: integer `1`, expected struct HospitalPrivacy"),
            "invalid type: integer `1`, expected a table"
        );
        let e = refused(&c, json!({"bc": {"training": 3}}));
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("settings.bc.training", "must be an object, got a number")
        );
        let e = refused(&c, json!({"other": {}}));
        assert_eq!(e.key, "settings.other");
        let e = refused(&c, json!({"bc": {"training": {"baseline_alpha": 2.0}}}));
        assert_eq!(e.key, "settings.bc.training.baseline_alpha");
    }

    #[test]
    fn privacy_can_only_be_made_stricter() {
        let c = config("mode = \"dp-sgd\"\nepsilon = 3.0\nnoise_multiplier = 1.2");
        let got = run(
            &c,
            json!({"bc": {"privacy": {"epsilon": 1.0, "noise_multiplier": 2.0}}}),
        )
        .unwrap();
        let p = got["bc"].privacy.unwrap();
        assert_eq!(
            (p.epsilon, p.delta, p.noise_multiplier),
            (Some(1.0), None, Some(2.0))
        );
        let e = refused(&c, json!({"bc": {"privacy": {"epsilon": 5.0}}}));
        assert_eq!(e.key, "settings.bc.privacy.epsilon");
        assert!(e.message.contains("less private"), "{e}");
        let e = refused(&c, json!({"bc": {"privacy": {"noise_multiplier": 0.5}}}));
        assert_eq!(e.key, "settings.bc.privacy.noise_multiplier");
        let e = refused(&c, json!({"bc": {"privacy": {"delta": 0.001}}}));
        assert_eq!(e.key, "settings.bc.privacy.delta");
        let e = refused(&c, json!({"bc": {"privacy": {"mode": "off"}}}));
        assert_eq!(e.key, "settings.bc.privacy.mode");
        let e = refused(&c, json!({"bc": {"privacy": {"sampling_rate": 0.1}}}));
        assert_eq!(e.key, "settings.bc.privacy.sampling_rate");
        assert!(e.message.contains("own policy"), "{e}");
        // Refused before it is read: no type error, no internal type name.
        let e = refused(&c, json!({"bc": {"privacy": {"hospitals": {"bc-1": 1}}}}));
        assert_eq!(e.key, "settings.bc.privacy.hospitals");
        assert!(
            e.message.contains("own policy") && !e.message.contains("struct"),
            "{e}"
        );
        // The configuration's own checks run too.
        let e = refused(&c, json!({"bc": {"privacy": {"epsilon": -1.0}}}));
        assert_eq!(e.key, "settings.bc.privacy.epsilon");
        assert!(e.message.contains("must be positive"), "{e}");
        // With DP off there is nothing to tighten.
        let off = config("");
        assert!(
            run(&off, json!({"bc": {"privacy": {"mode": "off"}}})).unwrap()["bc"]
                .privacy
                .is_none()
        );
        let e = refused(&off, json!({"bc": {"privacy": {"epsilon": 1.0}}}));
        assert_eq!(e.key, "settings.bc.privacy.epsilon");
    }
}
