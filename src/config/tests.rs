use super::*;

const MINIMAL: &str = r#"
[tasks.t]
kind = "tabular"
hospitals = 2
[tasks.t.data]
path = "x.csv"
label_column = "y"
positive_class = "1"
"#;

#[test]
fn defaults_fill_unset_keys() {
    let c = parse(MINIMAL, "t.toml", std::iter::empty()).unwrap();
    assert_eq!(c.run, RunConfig::default());
    assert_eq!(c.tasks["t"].training, TrainingConfig::default());
    assert_eq!(c.tasks["t"].effective_min_hospitals(), 2);
    assert_eq!(c.tasks["t"].data.test_fraction, 0.2);
}

#[test]
fn environment_overrides_the_file() {
    let vars = vec![
        ("MEDFED_RUN__ROUNDS".to_string(), "3".to_string()),
        (
            "MEDFED_TASKS__T__TRAINING__LEARNING_RATE".to_string(),
            "0.5".to_string(),
        ),
    ];
    let c = parse(MINIMAL, "t.toml", vars).unwrap();
    assert_eq!(c.run.rounds, 3);
    assert_eq!(c.tasks["t"].training.learning_rate, 0.5);
}

#[test]
fn errors_name_the_key_or_variable() {
    let e = parse(
        &format!("{MINIMAL}\n[federation]\nround_timeout = 3\n"),
        "t.toml",
        std::iter::empty(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("federation.round_timeout"), "{e}");
    let e = parse(
        MINIMAL,
        "t.toml",
        vec![("MEDFED_RUN__ROUNDS".into(), "many".into())],
    )
    .unwrap_err();
    assert!(e.to_string().contains("run.rounds"), "{e}");
    let e = parse(MINIMAL, "t.toml", vec![("MEDFED_RUN__ROUNDS".into(), "0".into())]).unwrap_err();
    assert!(e.to_string().contains("`run.rounds`: must be at least 1"), "{e}");
    let e = parse(
        &MINIMAL.replace("tasks.t", "tasks.T-1"),
        "t.toml",
        std::iter::empty(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("task names use"), "{e}");
}

#[test]
fn effective_config_round_trips_through_toml() {
    let c = parse(MINIMAL, "t.toml", std::iter::empty()).unwrap();
    let again = parse(&to_toml(&c), "again", std::iter::empty()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn a_quorum_is_a_count_or_a_fraction_of_the_hospitals() {
    assert_eq!(Quorum::Fraction(0.8).of(5), 4);
    assert_eq!(Quorum::Fraction(0.8).of(20), 16);
    assert_eq!(Quorum::Fraction(0.6).of(3), 2);
    assert_eq!(Quorum::Fraction(1.0).of(7), 7);
    assert_eq!(Quorum::Fraction(0.01).of(3), 1);
    assert_eq!(Quorum::Count(4).of(20), 4);
    let parsed = |v: &str| -> Result<Option<Quorum>, String> {
        let text = format!("kind = \"tabular\"\nhospitals = 5\nmin_hospitals = {v}\n[data]\npath = \"x\"\n");
        toml::from_str::<TaskConfig>(&text)
            .map(|t| t.min_hospitals)
            .map_err(|e| e.to_string())
    };
    assert_eq!(parsed("4"), Ok(Some(Quorum::Count(4))));
    assert_eq!(parsed("0.8"), Ok(Some(Quorum::Fraction(0.8))));
    let err = parsed("\"most\"").unwrap_err();
    assert!(
        err.contains("a count of hospitals (e.g. 4) or a fraction"),
        "{err}"
    );
    assert!(parsed("-2").unwrap_err().contains("cannot be negative"));
}

#[test]
fn a_strategy_is_a_table_or_a_name_and_its_limits_name_the_key() {
    let with = |extra: &str| parse(&format!("{MINIMAL}\n{extra}\n"), "t.toml", std::iter::empty());
    // Default: FedAvg.
    assert_eq!(with("").unwrap().tasks["t"].strategy, StrategyConfig::Fedavg {});
    // The table with parameters.
    let c = with("[tasks.t.strategy]\nname = \"trimmed_mean\"\nbeta = 0.25").unwrap();
    assert_eq!(c.tasks["t"].strategy, StrategyConfig::TrimmedMean { beta: 0.25 });
    // Only the name (the earlier form keeps working), from the environment too.
    let name_only = MINIMAL.replace("hospitals = 2", "hospitals = 2\nstrategy = \"median\"");
    let c = parse(&name_only, "t.toml", std::iter::empty()).unwrap();
    assert_eq!(c.tasks["t"].strategy, StrategyConfig::Median {});
    let c = parse(
        MINIMAL,
        "t.toml",
        vec![("MEDFED_TASKS__T__STRATEGY".to_string(), "fedprox".to_string())],
    )
    .unwrap();
    assert_eq!(c.tasks["t"].strategy.name(), "fedprox");
    // Unknown names and keys are named.
    let e = parse(
        &MINIMAL.replace("hospitals = 2", "hospitals = 2\nstrategy = \"fedsgd\""),
        "t.toml",
        std::iter::empty(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tasks.t.strategy") && e.contains("unknown strategy 'fedsgd'"),
        "{e}"
    );
    let e = with("[tasks.t.strategy]\nname = \"krum\"\nbeta = 0.2")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tasks.t.strategy") && e.contains("beta"), "{e}");
    // Krum with 2 hospitals cannot tolerate f = 1.
    let e = with("[tasks.t.strategy]\nname = \"krum\"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`tasks.t.strategy.f`") && e.contains("n >= 2f + 3 = 5 hospitals; the task has 2"),
        "{e}"
    );
    let e = with("[tasks.t.strategy]\nname = \"fedyogi\"\ntau = -1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`tasks.t.strategy.tau`"), "{e}");
    // The earlier optimiser table says what to write instead.
    let e = with("[tasks.t.fedadam]\nserver_lr = 0.2")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`tasks.t.fedadam`") && e.contains("[tasks.t.strategy] with name = \"fedadam\""),
        "{e}"
    );
}

#[test]
fn mlflow_is_off_by_default_and_its_keys_are_checked() {
    let parse = |text: &str| parse(text, "t.toml", std::iter::empty());
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.mlflow.effective_uri(None), None);
    assert_eq!(
        c.mlflow
            .effective_uri(Some("http://mlflow:5000".into()))
            .as_deref(),
        Some("http://mlflow:5000"),
        "MLFLOW_TRACKING_URI, as MLflow's own clients"
    );
    assert_eq!(c.mlflow.effective_uri(Some(" ".into())), None);
    for (key, value, message) in [
        ("tracking_uri", "\"file:///tmp/mlruns\"", "http:// or https://"),
        ("experiment", "\"\"", "1..=500 characters"),
        ("queue_limit", "0", "at least 1"),
    ] {
        let text = format!("{MINIMAL}\n[mlflow]\n{key} = {value}\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains(&format!("mlflow.{key}")) && e.contains(message),
            "{key}: {e}"
        );
    }
    let text = format!(
        "{MINIMAL}\n[mlflow]\ntracking_uri = \"http://127.0.0.1:5000\"\nexperiment = \"hospital-net\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.mlflow.effective_uri(Some("http://ignored".into())).as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert_eq!(c.mlflow.experiment, "hospital-net");
}

#[test]
fn secure_aggregation_settings_that_cannot_work_are_refused_by_key() {
    let five = MINIMAL.replace("hospitals = 2", "hospitals = 5");
    let check = |extra: &str| {
        parse(&format!("{five}\n{extra}"), "t.toml", std::iter::empty())
            .and_then(|c| validate(&c))
            .map_err(|e| e.to_string())
    };
    let table = "[tasks.t.secure_aggregation]\n";
    check(table).unwrap();
    // Off: nothing to check.
    check(&format!("{table}enabled = false\nquantization_bits = 40\n")).unwrap();
    let refused = [
        (
            "[tasks.t.strategy]\nname = \"median\"\n[tasks.t.secure_aggregation]\n",
            "tasks.t.secure_aggregation.enabled",
            "median needs every update in the clear",
        ),
        (
            &format!("{table}quantization_bits = 31\n") as &str,
            "tasks.t.secure_aggregation.quantization_bits",
            "overflow the ring",
        ),
        (
            &format!("{table}threshold = 6\n"),
            "tasks.t.secure_aggregation.threshold",
            "threshold must be between 2",
        ),
        (
            &format!("{table}num_shares = 1\n"),
            "tasks.t.secure_aggregation.num_shares",
            "at least 2",
        ),
        (
            &format!("{table}clipping_range = 0.0\n"),
            "tasks.t.secure_aggregation.clipping_range",
            "positive",
        ),
        (
            &format!("{table}max_weight = 0\n"),
            "tasks.t.secure_aggregation.max_weight",
            "between 1 and",
        ),
    ];
    for (extra, key, why) in refused {
        let e = check(extra).unwrap_err();
        assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
    }
    // Two hospitals cannot hide their updates from each other.
    let e = parse(&format!("{MINIMAL}\n{table}"), "t.toml", std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 3 hospitals"), "{e}");
    let unknown = parse(
        &format!("{five}\n{table}shares = 3\n"),
        "t.toml",
        std::iter::empty(),
    );
    assert!(unknown.unwrap_err().to_string().contains("shares"));
}
