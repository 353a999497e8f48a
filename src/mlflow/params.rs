//! A task's MLflow params: the federation's hyperparameters as configured
//! (rounds, hospitals, quorum, partition, strategy and its parameters,
//! local training, privacy limits, secure aggregation).

use crate::config::{Config, PrivacyMode};

use super::batch::Param;

fn param(key: &str, value: impl ToString) -> Param {
    Param {
        key: key.into(),
        value: value.to_string(),
    }
}

/// `task`'s params under `config` (empty for an unknown task).
pub fn task_params(config: &Config, task: &str) -> Vec<Param> {
    let Some(t) = config.tasks.get(task) else {
        return Vec::new();
    };
    let p = &config.privacy;
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
        let params = task_params(&config, "bc");
        let get = |k: &str| params.iter().find(|p| p.key == k).map(|p| p.value.as_str());
        assert_eq!(get("rounds"), Some("10"));
        assert_eq!(get("quorum"), Some("4"));
        assert_eq!(get("strategy"), Some("trimmed_mean"));
        assert_eq!(get("strategy.beta"), Some("0.2"));
        assert_eq!(get("privacy.epsilon_budget"), Some("3"));
        assert_eq!(get("privacy.noise_multiplier"), Some("calibrated"));
        assert_eq!(get("secure_aggregation"), Some("off"));
        assert!(task_params(&config, "nope").is_empty());
    }
}
