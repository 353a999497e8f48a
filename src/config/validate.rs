//! Semantic checks that the schema's types cannot express.

use super::{Config, ConfigError, HospitalKind, PartitionScheme};

pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let bad = |key: String, message: String| Err(ConfigError::Invalid(format!("`{key}`: {message}")));
    if config.tasks.is_empty() {
        return bad("tasks".into(), "at least one task is required".into());
    }
    if config.run.rounds == 0 {
        return bad("run.rounds".into(), "must be at least 1".into());
    }
    let f = &config.federation;
    for (key, v) in [
        ("federation.round_timeout_secs", f.round_timeout_secs),
        ("federation.assemble_timeout_secs", f.assemble_timeout_secs),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
            return bad(key.into(), format!("must be in (0, 86400] seconds, got {v}"));
        }
    }
    for (name, task) in &config.tasks {
        let key = |k: &str| format!("tasks.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return bad(
                format!("tasks.{name}"),
                "task names use a-z, 0-9 and _ only".into(),
            );
        }
        if task.kind != HospitalKind::Tabular {
            return bad(
                key("kind"),
                format!(
                    "'{}' hospitals are not available in this build yet (available: tabular)",
                    task.kind.name()
                ),
            );
        }
        if task.hospitals == 0 || task.hospitals > 1000 {
            return bad(
                key("hospitals"),
                format!("must be 1..=1000, got {}", task.hospitals),
            );
        }
        if let Some(m) = task.min_hospitals {
            if m == 0 || m > task.hospitals {
                return bad(
                    key("min_hospitals"),
                    format!("must be 1..={} (hospitals), got {m}", task.hospitals),
                );
            }
        }
        if task.rounds == Some(0) {
            return bad(key("rounds"), "must be at least 1".into());
        }
        if let Some(n) = task.max_update_norm {
            if !(n.is_finite() && n > 0.0) {
                return bad(
                    key("max_update_norm"),
                    format!("must be a positive number, got {n}"),
                );
            }
        }
        let t = task.data.test_fraction;
        if !(t > 0.0 && t < 1.0) {
            return bad(key("data.test_fraction"), format!("must be in (0, 1), got {t}"));
        }
        match task.partition.scheme {
            PartitionScheme::Sorted if task.partition.feature.is_none() => {
                return bad(
                    key("partition.feature"),
                    "is required for the sorted scheme".into(),
                );
            }
            PartitionScheme::Dirichlet
                if !(task.partition.alpha.is_finite() && task.partition.alpha > 0.0) =>
            {
                return bad(
                    key("partition.alpha"),
                    format!("must be positive, got {}", task.partition.alpha),
                );
            }
            _ => {}
        }
        let tr = &task.training;
        if tr.local_epochs == 0 || tr.local_epochs > 1000 {
            return bad(
                key("training.local_epochs"),
                format!("must be 1..=1000, got {}", tr.local_epochs),
            );
        }
        if tr.batch_size == 0 {
            return bad(key("training.batch_size"), "must be at least 1".into());
        }
        if !(tr.learning_rate.is_finite() && tr.learning_rate > 0.0) {
            return bad(
                key("training.learning_rate"),
                format!("must be positive, got {}", tr.learning_rate),
            );
        }
        for (k, v) in [
            ("training.l2", tr.l2),
            ("training.baseline_alpha", tr.baseline_alpha),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key(k), format!("must be zero or positive, got {v}"));
            }
        }
    }
    Ok(())
}
