//! The model registry through the real binary: a private run recorded in a
//! store, its version listed, its report equal to the run's JSON (and the
//! HTML page rendered by headless Chromium, screenshot in the artifacts),
//! and `predict` reproducing the held-out metrics the run reported.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{external_available, json_of, medfed};
use medfed_models::data::csv::{load_csv, CsvSpec};
use medfed_models::data::split::stratified_split;
use serde_json::Value;

fn floats(v: &Value, key: &str) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

/// The held-out rows of the shipped data, as the run split them (seed 42,
/// fraction 0.2), written as a CSV with (or without) the label column.
fn held_out_csv(path: &Path, with_label: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = CsvSpec {
        label_column: "diagnosis".into(),
        positive_class: "M".into(),
    };
    let data = load_csv(&root.join("data/breast_cancer_wisconsin.csv"), &spec).unwrap();
    let (_, held_out) = stratified_split(&data, 0.2, 42).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    let mut header = held_out.feature_names.clone();
    if with_label {
        header.push("diagnosis".into());
    }
    writeln!(f, "{}", header.join(",")).unwrap();
    for (row, label) in held_out.features.rows().into_iter().zip(&held_out.labels) {
        let mut fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        if with_label {
            fields.push(if *label { "M" } else { "B" }.into());
        }
        writeln!(f, "{}", fields.join(",")).unwrap();
    }
}

#[test]
fn a_registered_version_reports_and_predicts_what_its_run_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("medfed.sqlite");
    let store = store.to_str().unwrap();
    let run = json_of(&medfed(
        &[
            "run",
            "--config",
            "config/dp.toml",
            "--rounds",
            "3",
            "--json",
            "--store",
            store,
        ],
        &[],
    ));
    let task = &run["tasks"]["breast_cancer"];
    let at = ["--store", store];

    let list = json_of(&medfed(&[&["models", "list", "--json"][..], &at].concat(), &[]));
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(
        (models[0]["task"].as_str(), models[0]["version"].as_i64()),
        (Some("breast_cancer"), Some(1))
    );
    assert_eq!(models[0]["metrics"]["accuracy"], task["final"]["accuracy"]);

    // The report's numbers are the run's.
    let report = json_of(&medfed(
        &[
            &["models", "report", "breast_cancer", "1", "--format", "json"][..],
            &at,
        ]
        .concat(),
        &[],
    ));
    assert_eq!(
        floats(&report["rounds"], "accuracy"),
        floats(&task["rounds"], "accuracy")
    );
    assert_eq!(floats(&report["rounds"], "loss"), floats(&task["rounds"], "loss"));
    assert_eq!(report["final_metrics"]["accuracy"], task["final"]["accuracy"]);
    assert_eq!(report["final_metrics"]["auc"], task["final"]["auc"]);
    assert_eq!(
        report["privacy"]["epsilon_spent"],
        task["privacy"]["epsilon_spent"]
    );
    assert_eq!(report["held_out"]["size"], 113);
    assert_eq!(report["lineage"]["rounds"].as_object().unwrap().len(), 3);
    let statement = report["privacy"]["statement"][0].as_str().unwrap();
    assert!(
        statement.contains("differential privacy") && statement.contains("1e-5"),
        "{statement}"
    );
    let md = medfed(
        &[
            &["models", "report", "breast_cancer", "1", "--format", "md"][..],
            &at,
        ]
        .concat(),
        &[],
    );
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("## Privacy") && md.contains("| 3 | 5 |"), "{md}");

    // The HTML page, rendered by Chromium.
    let html = dir.path().join("report.html");
    let html_report = || {
        let to = html.to_str().unwrap();
        let args = [
            "models",
            "report",
            "breast_cancer",
            "1",
            "--format",
            "html",
            "--out",
            to,
        ];
        medfed(&[&args[..], &at].concat(), &[])
    };
    let out = html_report();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = html_report();
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    if external_available("chromium") {
        let profile = tempfile::tempdir().unwrap();
        let chromium = |extra: &[&str]| {
            Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(extra)
                .arg(format!("file://{}", html.display()))
                .output()
                .unwrap()
        };
        let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).to_string();
        for heading in [
            "Data",
            "Privacy",
            "Rounds (held-out test set)",
            "Lineage",
            "Attacks and rejections",
        ] {
            assert!(
                dom.contains(&format!("<h2>{heading}</h2>")),
                "{heading} rendered: {dom}"
            );
        }
        assert_eq!(dom.matches("<svg").count(), 2, "two inline charts");
        let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let png = artifacts.join("model-report.png");
        let _ = std::fs::remove_file(&png);
        chromium(&[
            &format!("--screenshot={}", png.display()),
            "--window-size=1000,2600",
        ]);
        assert!(
            std::fs::metadata(&png).unwrap().len() > 10_000,
            "a screenshot of the report"
        );
    }

    // Predictions on the held-out rows reproduce the reported metrics.
    let labelled = dir.path().join("held_out.csv");
    held_out_csv(&labelled, true);
    let predictions = dir.path().join("predictions.csv");
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer:1",
                "--input",
                labelled.to_str().unwrap(),
            ][..],
            &["--output", predictions.to_str().unwrap()],
            &at,
        ]
        .concat(),
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let accuracy = common::predicted_accuracy(&out.stderr);
    assert_eq!(accuracy, task["final"]["accuracy"].as_f64().unwrap());
    let text = std::fs::read_to_string(&predictions).unwrap();
    assert_eq!(text.lines().next(), Some("row,probability_M,predicted_M"));
    assert_eq!(text.lines().count(), 114);
    // Without the label column: the same probabilities.
    let unlabelled = dir.path().join("to_score.csv");
    held_out_csv(&unlabelled, false);
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer",
                "--input",
                unlabelled.to_str().unwrap(),
            ][..],
            &at,
        ]
        .concat(),
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    // Columns are matched by name: reversed, the same probabilities.
    let text_unlabelled = std::fs::read_to_string(&unlabelled).unwrap();
    let reversed: Vec<String> = text_unlabelled
        .lines()
        .map(|line| line.split(',').rev().collect::<Vec<_>>().join(","))
        .collect();
    let shuffled = dir.path().join("reversed.csv");
    std::fs::write(&shuffled, reversed.join("\n") + "\n").unwrap();
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer",
                "--input",
                shuffled.to_str().unwrap(),
            ][..],
            &at,
        ]
        .concat(),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        text,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A column missing: refused, naming it.
    let cut: Vec<String> = text_unlabelled
        .lines()
        .map(|line| line.split(',').skip(1).collect::<Vec<_>>().join(","))
        .collect();
    let missing = dir.path().join("missing.csv");
    std::fs::write(&missing, cut.join("\n") + "\n").unwrap();
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer",
                "--input",
                missing.to_str().unwrap(),
            ][..],
            &at,
        ]
        .concat(),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing [mean_radius]"),
        "{err}"
    );
    // Wrong columns, unknown models: clear errors.
    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, "a,b\n1,2\n").unwrap();
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer",
                "--input",
                wrong.to_str().unwrap(),
            ][..],
            &at,
        ]
        .concat(),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not match: missing [") && err.contains("unknown [a, b]"),
        "{err}"
    );
    let out = medfed(
        &[
            &[
                "predict",
                "--model",
                "breast_cancer:7",
                "--input",
                wrong.to_str().unwrap(),
            ][..],
            &at,
        ]
        .concat(),
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no registered model 'breast_cancer' (version 7)"));
}

/// Site withdrawal: the versions a hospital is in, and a replacement
/// trained without it that the registry links to the version it replaces.
#[test]
fn a_withdrawn_hospital_gets_a_replacement_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("medfed.sqlite");
    let store = store.to_str().unwrap();
    let at = ["--store", store];
    let base = [
        "run",
        "--task",
        "breast_cancer",
        "--rounds",
        "2",
        "--json",
        "--store",
        store,
    ];
    json_of(&medfed(&base, &[]));
    let affected = json_of(&medfed(
        &[
            &["models", "affected", "--hospital", "breast_cancer-2", "--json"][..],
            &at,
        ]
        .concat(),
        &[],
    ));
    assert_eq!(affected["models"].as_array().unwrap().len(), 1);
    let replacement = json_of(&medfed(
        &[&base[..], &["--exclude-hospital", "breast_cancer-2"]].concat(),
        &[],
    ));
    let rounds = &replacement["tasks"]["breast_cancer"]["rounds"];
    assert!(
        rounds.as_array().unwrap().iter().all(|r| r["participants"] == 4),
        "{rounds}"
    );
    let shown = json_of(&medfed(
        &[&["models", "show", "breast_cancer:2", "--json"][..], &at].concat(),
        &[],
    ));
    assert_eq!(shown["model"]["replaces"], 1);
    assert_eq!(shown["excluded"], serde_json::json!(["breast_cancer-2"]));
    let contributors: Vec<&str> = shown["rounds"]["1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hospital"].as_str().unwrap())
        .collect();
    assert!(!contributors.contains(&"breast_cancer-2"), "{contributors:?}");
    // Still only version 1 has it.
    let affected = json_of(&medfed(
        &[
            &["models", "affected", "--hospital", "breast_cancer-2", "--json"][..],
            &at,
        ]
        .concat(),
        &[],
    ));
    assert_eq!(affected["models"].as_array().unwrap().len(), 1);
    let out = medfed(&[&base[..], &["--exclude-hospital", "nobody"]].concat(), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exclude-hospital nobody: no such hospital"));
}
