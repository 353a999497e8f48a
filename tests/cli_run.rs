//! The real `medfed` binary: whole federations on the shipped data, results
//! on the held-out test set, and clear errors for bad input.

use std::path::PathBuf;

mod common;
use common::medfed;

use serde_json::Value;

fn run_json(args: &[&str]) -> Value {
    let out = medfed(args, &[]);
    assert!(
        out.status.success(),
        "medfed {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn stderr_of(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = medfed(args, envs);
    assert!(!out.status.success(), "medfed {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn demo_federation_matches_the_centralized_baseline_on_held_out_data() {
    // The demo trains both tasks in one run, each with its own section.
    let v = run_json(&["run", "--json", "--baseline"]);
    let xray = &v["tasks"]["pneumonia_xray"];
    assert_eq!(xray["hospitals"], 3);
    assert_eq!(xray["status"], "finished");
    assert_eq!(xray["rounds"].as_array().unwrap().len(), 10);
    let xray_acc = xray["final"]["accuracy"].as_f64().unwrap();
    assert!(xray_acc >= 0.85, "imaging federated accuracy {xray_acc}");
    assert!(xray["centralized"]["accuracy"].as_f64().unwrap() >= 0.85);
    let task = &v["tasks"]["breast_cancer"];
    assert_eq!(task["hospitals"], 5);
    assert_eq!(task["status"], "finished");
    let rounds = task["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 10);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        assert_eq!(r["participants"], 5);
        for key in ["accuracy", "precision", "recall", "f1", "auc", "loss", "seconds"] {
            assert!(r[key].is_number(), "round {i} lacks {key}");
        }
    }
    let fed = task["final"]["accuracy"].as_f64().unwrap();
    let central = task["centralized"]["accuracy"].as_f64().unwrap();
    assert!(fed >= 0.96, "federated accuracy {fed}");
    assert!(
        (central - fed).abs() <= 0.015,
        "federated {fed} vs centralized {central}"
    );
    assert!(v["wall_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn iid_and_dirichlet_partitions_also_train() {
    for partition in ["iid", "dirichlet"] {
        let v = run_json(&[
            "run",
            "--json",
            "--task",
            "breast_cancer",
            "--partition",
            partition,
        ]);
        let task = &v["tasks"]["breast_cancer"];
        let fed = task["final"]["accuracy"].as_f64().unwrap();
        assert!(fed >= 0.95, "{partition}: accuracy {fed}");
        assert!(task.get("centralized").is_none());
    }
}

#[test]
fn flags_override_config_and_same_seed_repeats() {
    let a = run_json(&[
        "run",
        "--task",
        "breast_cancer",
        "--json",
        "--rounds",
        "3",
        "--hospitals",
        "3",
        "--seed",
        "7",
    ]);
    let b = run_json(&[
        "run",
        "--task",
        "breast_cancer",
        "--json",
        "--rounds",
        "3",
        "--hospitals",
        "3",
        "--seed",
        "7",
    ]);
    let task = &a["tasks"]["breast_cancer"];
    assert_eq!(task["hospitals"], 3);
    assert_eq!(task["rounds"].as_array().unwrap().len(), 3);
    assert_eq!(task["final"], b["tasks"]["breast_cancer"]["final"]);
}

#[test]
fn table_output_shows_rounds_and_summary() {
    let out = medfed(&["run", "--rounds", "2", "--baseline"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("round  hosp  accuracy"), "{text}");
    assert!(
        text.contains("finished after 2 rounds; final held-out accuracy"),
        "{text}"
    );
    assert!(text.contains("centralized baseline"), "{text}");
    // Not on a terminal: one progress line per round on stderr.
    let progress = String::from_utf8(out.stderr).unwrap();
    for round in [
        "breast_cancer round 1/2: held-out accuracy",
        "breast_cancer round 2/2: held-out accuracy",
    ] {
        assert!(progress.contains(round), "{progress}");
    }
    // Both tasks of the demo, one table each.
    assert!(text.contains("breast_cancer: 5 hospitals"), "{text}");
    assert!(
        text.contains("pneumonia_xray: 3 hospitals (iid partition), 700 training images"),
        "{text}"
    );
}

#[test]
fn quiet_runs_print_no_progress() {
    let out = medfed(
        &["run", "-q", "--json", "--rounds", "2", "--task", "breast_cancer"],
        &[],
    );
    assert!(out.status.success());
    let progress = String::from_utf8(out.stderr).unwrap();
    assert!(!progress.contains("round 1/2"), "{progress}");
}

#[test]
fn bad_input_fails_with_a_message_naming_the_problem() {
    assert!(stderr_of(&["run", "--rounds", "0"], &[]).contains("--rounds"));
    assert!(stderr_of(&["run", "--partition", "random"], &[]).contains("unknown partition 'random'"));
    assert!(stderr_of(&["run", "--task", "nope"], &[]).contains("--task nope: no such task"));
    assert!(stderr_of(&["run", "--bogus"], &[]).contains("--bogus"));
    assert!(
        stderr_of(&["run", "--config", "missing.toml"], &[]).contains("cannot read config file missing.toml")
    );
    let e = stderr_of(&["run"], &[("MEDFED_TASKS__BREAST_CANCER__TRAINING__LR", "3")]);
    assert!(e.contains("tasks.breast_cancer.training.lr"), "{e}");
    let e = stderr_of(&["run"], &[("MEDFED_TASKS__BREAST_CANCER__HOSPITALS", "0")]);
    assert!(e.contains("tasks.breast_cancer.hospitals"), "{e}");
}

#[test]
fn bad_config_files_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let demo =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml")).unwrap();
    let cases = [
        (demo.replace("[run]", "[run]\ncolour = 1"), "`run`"),
        (
            demo.replace("scheme = \"sorted\"", "scheme = \"circular\""),
            "tasks.breast_cancer.partition.scheme",
        ),
        (
            demo.replace("test_fraction = 0.2", "test_fraction = 1.5"),
            "tasks.breast_cancer.data.test_fraction",
        ),
        (
            demo.replace("min_hospitals = 0.8", "min_hospitals = 9"),
            "tasks.breast_cancer.min_hospitals",
        ),
        (
            demo.replace("feature = \"mean_radius\"", "feature = \"shoe_size\""),
            "shoe_size",
        ),
        (
            demo.replace("positive_class = \"M\"", "positive_class = \"X\""),
            "positive class 'X' never occurs",
        ),
        (
            demo.replace("kind = \"tabular\"", "kind = \"columnar\""),
            "`tasks.breast_cancer.data.format`: columnar tasks read \"parquet\", not \"csv\"",
        ),
        (
            demo.replace("kind = \"tabular\"", "kind = \"imaging\""),
            "tasks.breast_cancer.data.format",
        ),
        ("[run\n".to_string(), "not valid TOML"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        // Keep the data path valid from the temporary directory.
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer_wisconsin.csv");
        let text = text.replace("../data/breast_cancer_wisconsin.csv", data.to_str().unwrap());
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let e = stderr_of(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--rounds",
                "1",
                "--task",
                "breast_cancer",
            ],
            &[],
        );
        assert!(e.contains(expected), "case {i}: expected '{expected}' in: {e}");
    }
}

#[test]
fn config_check_prints_the_effective_config() {
    let out = medfed(
        &["config", "check", "config/demo.toml", "--rounds", "4"],
        &[("MEDFED_RUN__SEED", "9")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: toml::Table = body.parse().unwrap();
    assert_eq!(parsed["run"]["seed"].as_integer(), Some(9));
    assert_eq!(parsed["tasks"]["breast_cancer"]["rounds"].as_integer(), Some(4));
    // The default config documents every key and is itself valid.
    let out = medfed(&["config", "check", "config/default.toml"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_quorum_is_judged_after_flags_and_a_fraction_follows_the_hospital_count() {
    let check = |args: &[&str], envs: &[(&str, &str)]| {
        let mut all = vec!["config", "check", "--task", "breast_cancer"];
        all.extend_from_slice(args);
        let out = medfed(&all, envs);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // An environment quorum of 20 is judged with --hospitals 20, not before it.
    let (ok, text, err) = check(
        &["--hospitals", "20"],
        &[("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "20")],
    );
    assert!(ok, "{err}");
    assert!(text.contains("min_hospitals = 20"), "{text}");
    // Without the flag the same value is refused, naming the key.
    let (ok, _, err) = check(&[], &[("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "20")]);
    assert!(!ok);
    assert!(err.contains("tasks.breast_cancer.min_hospitals"), "{err}");
    // The shipped quorum is a fraction: 4 of 5, and 16 of 20.
    let (ok, text, _) = check(&["--hospitals", "20"], &[]);
    assert!(ok && text.contains("min_hospitals = 0.8"), "{text}");
    let run = run_json(&[
        "run",
        "--hospitals",
        "20",
        "--rounds",
        "1",
        "--task",
        "breast_cancer",
        "--json",
    ]);
    assert_eq!(run["tasks"]["breast_cancer"]["rounds"][0]["participants"], 20);
    for bad in ["0", "1.5", "-3", "\"most\""] {
        let (ok, _, err) = check(&[], &[("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", bad)]);
        assert!(!ok, "{bad}");
        assert!(err.contains("min_hospitals"), "{bad}: {err}");
    }
}
