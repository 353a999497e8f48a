//! Semantic checks that the schema's types cannot express.

use super::{
    Config, ConfigError, DataFormat, DpScaling, EffectivePrivacy, HospitalKind, NoiseKind, PartitionScheme,
    PrivacyMode, Quorum, TaskConfig,
};
use medfed_models::learner::cnn::Arch;

/// The most hospitals a task may have: bounded by memory, not by the
/// runtime (every per-message cost is a keyed lookup; README "Scale").
/// A DNS host name as medfed accepts one in its settings: letters, digits,
/// '-' and '.', at most 253 characters (no scheme, port or path).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

pub const MAX_HOSPITALS: usize = 1_000_000;

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
    validate_privacy(config)?;
    if config.web.http.parse::<std::net::SocketAddr>().is_err() {
        return bad(
            "web.http".into(),
            format!("must be HOST:PORT with an IP address, got '{}'", config.web.http),
        );
    }
    for (key, token) in [
        ("web.api_token", &config.web.api_token),
        ("web.scrape_token", &config.web.scrape_token),
    ] {
        if let Some(token) = token {
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    key.into(),
                    "must be at least 16 printable characters without spaces".into(),
                );
            }
        }
    }
    for (key, names) in [
        ("cluster.deny", &config.cluster.deny),
        ("cluster.allow", &config.cluster.allow),
    ] {
        for name in names {
            if let Err(e) = medfed_actors::names::check_hospital_name(name) {
                return bad(key.into(), e);
            }
        }
    }
    for host in &config.web.allowed_hosts {
        if !is_dns_name(host) {
            return bad(
                "web.allowed_hosts".into(),
                format!("'{host}' is not a host name (no scheme, port or path)"),
            );
        }
    }
    for proxy in &config.web.trusted_proxies {
        if crate::web::proxies::parse(proxy).is_none() {
            return bad(
                "web.trusted_proxies".into(),
                format!("'{proxy}' is neither an IP address nor a CIDR range (e.g. 10.0.0.0/8)"),
            );
        }
    }
    let m = &config.mlflow;
    if let Some(uri) = &m.tracking_uri {
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return bad(
                "mlflow.tracking_uri".into(),
                format!("must be the http:// or https:// address of an MLflow tracking server, got '{uri}'"),
            );
        }
    }
    if m.experiment.trim().is_empty() || m.experiment.len() > 500 {
        return bad(
            "mlflow.experiment".into(),
            "must be a name of 1..=500 characters".into(),
        );
    }
    if m.registered_model_prefix.len() > 200 || m.registered_model_prefix.chars().any(|c| c.is_control()) {
        return bad(
            "mlflow.registered_model_prefix".into(),
            "must be at most 200 printable characters".into(),
        );
    }
    if m.queue_limit == 0 {
        return bad("mlflow.queue_limit".into(), "must be at least 1".into());
    }
    if config.web.auth_failures_per_minute == 0 {
        return bad("web.auth_failures_per_minute".into(), "must be at least 1".into());
    }
    if config.web.tls_cert.is_some() != config.web.tls_key.is_some() {
        return bad(
            "web.tls_cert".into(),
            "web.tls_cert and web.tls_key go together".into(),
        );
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
        validate_secure(name, task)?;
        match task.kind {
            HospitalKind::Tabular => validate_tabular(name, task, config.privacy.mode)?,
            HospitalKind::Imaging => validate_imaging(name, task)?,
            HospitalKind::Columnar => validate_columnar(name, task, config.privacy.mode)?,
        }
        if task.kind != HospitalKind::Columnar {
            let d = &task.data;
            for (k, set) in [
                ("data.features", d.features.is_some()),
                ("data.nulls", d.nulls.is_some()),
                ("training.gradient", task.training.gradient.is_some()),
                ("training.threads", task.training.threads.is_some()),
            ] {
                if set {
                    return bad(
                        key(k),
                        format!(
                            "applies to columnar tasks only (this task is {})",
                            task.kind.name()
                        ),
                    );
                }
            }
        }
        if task.hospitals == 0 || task.hospitals > MAX_HOSPITALS {
            return bad(
                key("hospitals"),
                format!(
                    "must be 1..={MAX_HOSPITALS} (a hospital in one process costs a few KiB beyond its data; see the README's scale table), got {}",
                    task.hospitals
                ),
            );
        }
        match task.min_hospitals {
            Some(Quorum::Count(m)) if m == 0 || m > task.hospitals => {
                return bad(
                    key("min_hospitals"),
                    format!(
                        "must be 1..={} (hospitals), or a fraction of them in (0, 1], got {m}",
                        task.hospitals
                    ),
                );
            }
            Some(Quorum::Fraction(f)) if !(f > 0.0 && f <= 1.0) => {
                return bad(
                    key("min_hospitals"),
                    format!("a fraction of the hospitals must be in (0, 1], got {f}"),
                );
            }
            _ => {}
        }
        if task.rounds == Some(0) {
            return bad(key("rounds"), "must be at least 1".into());
        }
        if task.fedadam.is_some() {
            return bad(
                key("fedadam"),
                "is the earlier form of the server optimiser's settings: write them in \
                 [tasks.T.strategy] with name = \"fedadam\" (and server_lr, beta1, beta2, tau) instead"
                    .replace("tasks.T", &format!("tasks.{name}")),
            );
        }
        for (hospital, spec) in &task.attack {
            let index = hospital
                .strip_prefix(&format!("{name}-"))
                .and_then(|i| i.parse::<usize>().ok());
            if !index.is_some_and(|i| (1..=task.hospitals).contains(&i)) {
                return bad(
                    key(&format!("attack.{hospital}")),
                    format!(
                        "no such hospital (this task's are {name}-1 .. {name}-{})",
                        task.hospitals
                    ),
                );
            }
            if let Err(e) = medfed_models::attack::Attack::parse(spec) {
                return bad(key(&format!("attack.{hospital}")), e.to_string());
            }
        }
        if let Err(unfit) = task.strategy.validate(task.hospitals) {
            return bad(
                format!("tasks.{name}.strategy.{}", unfit.key),
                format!("{} ({})", unfit.message, task.strategy.name()),
            );
        }
        if let Some(n) = task.max_update_norm {
            if !(n.is_finite() && n > 0.0) {
                return bad(
                    key("max_update_norm"),
                    format!("must be a positive number, got {n}"),
                );
            }
        }
        for (k, v) in [
            ("max_examples_per_hospital", task.max_examples_per_hospital),
            ("max_hospitals", task.max_hospitals),
        ] {
            if v == Some(0) {
                return bad(key(k), "must be at least 1 (or absent: no bound)".into());
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

/// Secure aggregation: a linear strategy, a ring that cannot overflow, a
/// threshold the share holders can meet, and at least 3 inputs per sum.
fn validate_secure(name: &str, task: &TaskConfig) -> Result<(), ConfigError> {
    let Some(sa) = task.secure() else {
        return Ok(());
    };
    let bad = |k: &str, message: String| {
        Err(ConfigError::Invalid(format!(
            "`tasks.{name}.secure_aggregation.{k}`: {message}"
        )))
    };
    if !task.strategy.is_linear() {
        return bad(
            "enabled",
            format!(
                "strategy {} needs every update in the clear, and secure aggregation reveals only their sum; \
                 use fedavg, fedprox, fedadam, fedyogi or fedadagrad, or turn secure aggregation off",
                task.strategy.name()
            ),
        );
    }
    let min_inputs = task.effective_min_hospitals().max(3);
    if task.hospitals < 3 {
        return bad(
            "enabled",
            format!(
                "a secure sum needs at least 3 hospitals (this task has {}): with 2, each could subtract its own \
                 update from the sum and learn the other's",
                task.hospitals
            ),
        );
    }
    let plan = medfed_models::secagg::RoundPlan {
        num_shares: sa
            .num_shares
            .unwrap_or_else(|| medfed_models::secagg::RoundPlan::default_num_shares(task.hospitals)),
        threshold: 0,
        clipping_range: sa.clipping_range,
        quantization_bits: sa.quantization_bits,
        min_inputs,
        graph_seed: 0,
    };
    let holders = plan.num_shares.min(task.hospitals).max(1);
    let plan = medfed_models::secagg::RoundPlan {
        threshold: sa
            .threshold
            .unwrap_or_else(|| medfed_models::secagg::RoundPlan::default_threshold(holders)),
        ..plan
    };
    if let Err(e) = plan.validate(task.hospitals) {
        let message = e.to_string();
        let key = if message.contains("clipping_range") {
            "clipping_range"
        } else if message.contains("quantization_bits") || message.contains("overflow") {
            "quantization_bits"
        } else if message.contains("num_shares") {
            "num_shares"
        } else {
            "threshold"
        };
        return bad(
            key,
            message.trim_start_matches("secure aggregation: ").to_string(),
        );
    }
    if let Some(w) = sa.max_weight {
        if w == 0 || w.saturating_mul(task.hospitals as u64) > u64::from(u32::MAX) {
            return bad(
                "max_weight",
                format!(
                    "must be between 1 and {} for {} hospitals (the total weight travels in the ring Z_(2^32))",
                    u64::from(u32::MAX) / task.hospitals as u64,
                    task.hospitals
                ),
            );
        }
    }
    Ok(())
}

fn validate_tabular(name: &str, task: &TaskConfig, privacy: PrivacyMode) -> Result<(), ConfigError> {
    let key = |k: &str| format!("tasks.{name}.{k}");
    let bad = |key: String, message: &str| Err(ConfigError::Invalid(format!("`{key}`: {message}")));
    let d = &task.data;
    if d.format != DataFormat::Csv {
        return bad(
            key("data.format"),
            &format!("tabular tasks read \"csv\", not \"{}\"", d.format.name()),
        );
    }
    for (k, missing) in [
        ("data.path", d.path.is_none()),
        ("data.label_column", d.label_column.is_none()),
        ("data.positive_class", d.positive_class.is_none()),
    ] {
        if missing {
            return bad(key(k), "is required for a tabular task");
        }
    }
    if privacy != PrivacyMode::Off && d.feature_bounds.is_none() {
        return bad(
            key("data.feature_bounds"),
            "is required with differential privacy on (public per-feature bounds)",
        );
    }
    Ok(())
}

fn validate_columnar(name: &str, task: &TaskConfig, privacy: PrivacyMode) -> Result<(), ConfigError> {
    let key = |k: &str| format!("tasks.{name}.{k}");
    let bad = |key: String, message: &str| Err(ConfigError::Invalid(format!("`{key}`: {message}")));
    let d = &task.data;
    if d.format != DataFormat::Parquet {
        return bad(
            key("data.format"),
            &format!("columnar tasks read \"parquet\", not \"{}\"", d.format.name()),
        );
    }
    for (k, missing) in [
        ("data.path", d.path.is_none()),
        ("data.label_column", d.label_column.is_none()),
        ("data.positive_class", d.positive_class.is_none()),
    ] {
        if missing {
            return bad(key(k), "is required for a columnar task");
        }
    }
    if let Some(features) = &d.features {
        if features.is_empty() {
            return bad(
                key("data.features"),
                "lists no columns (leave it out to use every numeric column)",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = features.iter().find(|f| !seen.insert(f.as_str())) {
            return bad(key("data.features"), &format!("lists '{twice}' twice"));
        }
    }
    if task.training.threads == Some(0) {
        return bad(
            key("training.threads"),
            "must be at least 1 (or absent: every core)",
        );
    }
    if task.partition.scheme == PartitionScheme::Dirichlet {
        return bad(
            key("partition.scheme"),
            "columnar tasks are partitioned by row-group ranges (\"iid\") or by a sorted column \
             (\"sorted\"); \"dirichlet\" needs every label in memory",
        );
    }
    if privacy != PrivacyMode::Off && d.feature_bounds.is_none() {
        return bad(
            key("data.feature_bounds"),
            "is required with differential privacy on (public per-feature bounds)",
        );
    }
    Ok(())
}

fn validate_imaging(name: &str, task: &TaskConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("tasks.{name}.{k}");
    let bad = |key: String, message: String| Err(ConfigError::Invalid(format!("`{key}`: {message}")));
    let d = &task.data;
    match d.format {
        DataFormat::Csv | DataFormat::Parquet => {
            return bad(
                key("data.format"),
                "imaging tasks read \"folder\" (Kaggle chest_xray), \"npz\" (MedMNIST) or \"synthetic\""
                    .into(),
            )
        }
        DataFormat::Folder | DataFormat::Npz if d.path.is_none() => {
            return bad(
                key("data.path"),
                format!("is required for data.format = \"{}\"", d.format.name()),
            )
        }
        _ => {}
    }
    if !(8..=1024).contains(&d.image_size) {
        return bad(
            key("data.image_size"),
            format!("must be 8..=1024, got {}", d.image_size),
        );
    }
    if d.format == DataFormat::Synthetic {
        // 70% of the generated images are the training pool.
        let train = d.synthetic_count * 70 / 100;
        if train < task.hospitals || d.synthetic_count > 1_000_000 {
            return bad(
                key("data.synthetic_count"),
                format!(
                    "{} images leave {train} for training, fewer than the {} hospitals (or more than 1000000)",
                    d.synthetic_count, task.hospitals
                ),
            );
        }
    }
    if task.partition.scheme == PartitionScheme::Sorted {
        return bad(
            key("partition.scheme"),
            "\"sorted\" sorts by a table column; imaging tasks use \"iid\" or \"dirichlet\"".into(),
        );
    }
    match (task.model.arch, task.model.channels) {
        (Arch::Small, Some(channels)) => {
            if let Some(c) = channels.iter().find(|&&c| c == 0 || c > 512) {
                return bad(key("model.channels"), format!("each must be 1..=512, got {c}"));
            }
        }
        (Arch::Resnet18, Some(_)) => {
            return bad(
                key("model.channels"),
                "sets the widths of arch = \"small\"; resnet18's are fixed (64, 128, 256, 512)".into(),
            )
        }
        (_, None) => {}
    }
    if task.model.arch == Arch::Resnet18 && d.image_size < 32 {
        return bad(
            key("data.image_size"),
            format!(
                "resnet18 needs at least 32 (its last stage would have no pixels), got {}",
                d.image_size
            ),
        );
    }
    Ok(())
}

fn validate_privacy(config: &Config) -> Result<(), ConfigError> {
    let p = &config.privacy;
    let bad = |key: String, message: String| Err(ConfigError::Invalid(format!("`{key}`: {message}")));
    if !(p.stats_noise_multiplier.is_finite() && p.stats_noise_multiplier > 0.0) {
        return bad(
            "privacy.stats_noise_multiplier".into(),
            format!("must be positive, got {}", p.stats_noise_multiplier),
        );
    }
    if !(p.count_noise_multiplier.is_finite() && p.count_noise_multiplier > 0.0) {
        return bad(
            "privacy.count_noise_multiplier".into(),
            format!("must be positive, got {}", p.count_noise_multiplier),
        );
    }
    if p.mode != PrivacyMode::Off && p.noise == NoiseKind::Seeded && p.ledger_dir.is_some() {
        return bad(
            "privacy.noise".into(),
            "\"seeded\" is refused together with privacy.ledger_dir: seeded noise is reproducible \
             (anyone who knows the seed can subtract it) and exists for simulations on data that is \
             not real, whose budgets need no ledger; use \"secure\""
                .into(),
        );
    }
    if p.min_summed_hospitals < 2 {
        return bad(
            "privacy.min_summed_hospitals".into(),
            format!(
                "must be at least 2 (got {}): a noise share needs other hospitals' shares in the sum",
                p.min_summed_hospitals
            ),
        );
    }
    if !(p.min_noise_multiplier.is_finite() && p.min_noise_multiplier >= 0.0) {
        return bad(
            "privacy.min_noise_multiplier".into(),
            format!("must be a non-negative number, got {}", p.min_noise_multiplier),
        );
    }
    if p.mode == PrivacyMode::Update && p.scaling == DpScaling::DpStats {
        return bad(
            "privacy.scaling".into(),
            "\"dp_stats\" protects single records, not the whole dataset that update-level DP \
             protects; use \"public_bounds\" with privacy.mode = \"update\""
                .into(),
        );
    }
    let mut scopes: Vec<(String, EffectivePrivacy)> = vec![("privacy".into(), p.for_hospital(""))];
    for name in p.hospitals.keys() {
        scopes.push((format!("privacy.hospitals.{name}"), p.for_hospital(name)));
    }
    for (scope, e) in scopes {
        let key = |k: &str| format!("{scope}.{k}");
        if !(e.epsilon.is_finite() && e.epsilon > 0.0) {
            return bad(key("epsilon"), format!("must be positive, got {}", e.epsilon));
        }
        if !(e.delta > 0.0 && e.delta < 1.0) {
            return bad(key("delta"), format!("must be in (0, 1), got {}", e.delta));
        }
        if !(e.max_grad_norm.is_finite() && e.max_grad_norm > 0.0) {
            return bad(
                key("max_grad_norm"),
                format!("must be positive, got {}", e.max_grad_norm),
            );
        }
        if let Some(s) = e.noise_multiplier {
            if !(s.is_finite() && s > 0.0) {
                return bad(key("noise_multiplier"), format!("must be positive, got {s}"));
            }
        }
        if !(e.sampling_rate > 0.0 && e.sampling_rate <= 1.0) {
            return bad(
                key("sampling_rate"),
                format!("must be in (0, 1], got {}", e.sampling_rate),
            );
        }
        if e.local_steps == 0 || e.local_steps > 100_000 {
            return bad(
                key("local_steps"),
                format!("must be 1..=100000, got {}", e.local_steps),
            );
        }
    }
    Ok(())
}
