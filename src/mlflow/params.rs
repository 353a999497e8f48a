//! A task's MLflow params: the federation's hyperparameters as configured
//! (rounds, hospitals, quorum, partition, strategy and its parameters,
//! local training, privacy limits, secure aggregation).

use medfed_actors::TaskRunSettings;

use crate::config::{Config, PrivacyMode};

use super::batch::Param;

fn param(key: &str, value: impl ToString) -> Param {
    Param {
        key: key.into(),
        value: value.to_string(),
    }
}

/// `task`'s params under `config` and the run's own `settings` (empty for
/// an unknown task).
pub fn task_params(config: &Config, task: &str, settings: Option<&TaskRunSettings>) -> Vec<Param> {
    let Some(configured) = config.tasks.get(task) else {
        return Vec::new();
    };
    // What the run uses: its own settings over the configured ones.
    let mut t = configured.clone();
    let mut p = config.privacy.clone();
    if let Some(s) = settings {
        if let Some(strategy) = &s.strategy {
            t.strategy = strategy.clone();
        }
        if let Some(tr) = s.training {
            t.training.local_epochs = tr.local_epochs;
            t.training.batch_size = tr.batch_size;
            t.training.learning_rate = tr.learning_rate;
            t.training.l2 = tr.l2;
        }
        if let Some(rp) = s.privacy {
            p.epsilon = rp.epsilon.unwrap_or(p.epsilon);
            p.delta = rp.delta.unwrap_or(p.delta);
            p.noise_multiplier = rp.noise_multiplier.or(p.noise_multiplier);
        }
    }
    let (t, p) = (&t, &p);
    let mut params = vec![
        param("rounds", t.effective_rounds(&config.run)),
        param("hospitals", t.hospitals),
        param("quorum", t.effective_min_hospitals()),
        param("partition", t.partition.scheme_name()),
        param("strategy", t.strategy.name()),
        param("local_epochs", t.training.local_epochs),
        param("batch_size", t.training.batch_size),
        param("learning_rate", t.training.learning_rate),
        param("privacy.mode", p.mode.name()),
        param("secure_aggregation", "off"),
        param("seed", config.run.seed),
    ];
    // The strategy's own parameters, as its configuration table has them.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&t.strategy) {
        for (k, v) in fields.into_iter().filter(|(k, _)| k != "name") {
            if !v.is_null() {
                params.push(param(&format!("strategy.{k}"), v));
            }
        }
    }
    if p.mode != PrivacyMode::Off {
        params.push(param("privacy.epsilon_budget", p.epsilon));
        params.push(param("privacy.delta", p.delta));
        params.push(param("privacy.clipping_norm", p.max_grad_norm));
        params.push(param(
            "privacy.noise_multiplier",
            p.noise_multiplier
                .map_or("calibrated".to_string(), |s| s.to_string()),
        ));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hyperparameter_is_a_param() {
        let text = r#"
            [privacy]
            mode = "dp-sgd"
            epsilon = 3.0
            [tasks.bc]
            kind = "tabular"
            hospitals = 5
            min_hospitals = 4
            strategy = { name = "trimmed_mean", beta = 0.2 }
            [tasks.bc.data]
            path = "x.csv"
            label_column = "y"
            positive_class = "1"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let params = task_params(&config, "bc", None);
        let get = |k: &str| params.iter().find(|p| p.key == k).map(|p| p.value.as_str());
        assert_eq!(get("rounds"), Some("10"));
        assert_eq!(get("quorum"), Some("4"));
        assert_eq!(get("strategy"), Some("trimmed_mean"));
        assert_eq!(get("strategy.beta"), Some("0.2"));
        assert_eq!(get("privacy.epsilon_budget"), Some("3"));
        assert_eq!(get("privacy.noise_multiplier"), Some("calibrated"));
        assert_eq!(get("secure_aggregation"), Some("off"));
        assert!(task_params(&config, "nope", None).is_empty());
        // A run's own settings are what it logs.
        let settings = TaskRunSettings {
            strategy: crate::config::StrategyConfig::named("median"),
            training: Some(medfed_actors::TrainingSettings {
                local_epochs: 3,
                batch_size: 8,
                learning_rate: 0.05,
                l2: 0.0,
            }),
            privacy: Some(medfed_models::learner::RunPrivacy {
                epsilon: Some(1.0),
                delta: None,
                noise_multiplier: None,
                rounds: 0,
            }),
        };
        let params = task_params(&config, "bc", Some(&settings));
        let get = |k: &str| params.iter().find(|p| p.key == k).map(|p| p.value.as_str());
        assert_eq!(get("strategy"), Some("median"));
        assert_eq!(get("strategy.beta"), None);
        assert_eq!(get("learning_rate"), Some("0.05"));
        assert_eq!(get("privacy.epsilon_budget"), Some("1"));
    }
}
