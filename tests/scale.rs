//! The short version of `scripts/scale.py` (the long suite): a federation
//! of thousands of hospitals in one process, on a generated SYNTHETIC CSV,
//! runs every round with every hospital and evaluates on every local split.

mod common;

use common::{json_of, medfed};

#[test]
fn four_thousand_hospitals_train_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("synthetic.csv");
    common::synthetic::tabular_csv(&csv, 40_000, 8);
    let config = dir.path().join("scale.toml");
    std::fs::write(
        &config,
        format!(
            r#"[run]
rounds = 2
[federation]
round_timeout_secs = 600
assemble_timeout_secs = 600
[tasks.scale]
kind = "tabular"
hospitals = 4000
[tasks.scale.data]
path = "{}"
label_column = "label"
positive_class = "1"
[tasks.scale.partition]
scheme = "iid"
[tasks.scale.training]
local_epochs = 1
"#,
            csv.display()
        ),
    )
    .unwrap();
    let run = json_of(&medfed(
        &["run", "--config", config.to_str().unwrap(), "--json"],
        &[],
    ));
    let task = &run["tasks"]["scale"];
    assert_eq!(task["status"], "finished", "{task}");
    for round in task["rounds"].as_array().unwrap() {
        assert_eq!(round["participants"], 4000);
        // 8,000 held-out rows: every hospital has a local split of 2.
        assert_eq!(round["federated"]["evaluated"], 4000);
        assert_eq!(round["federated"]["examples"], 8000);
    }
    assert!(task["final"]["accuracy"].as_f64().unwrap() > 0.75, "{task}");
    // The generator never overwrites a file.
    let e = medfed(&["data", "synth-tabular", "--out", csv.to_str().unwrap()], &[]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("exists; choose a new file"));
}
