//! A generated (SYNTHETIC) tabular federation for the tests that need
//! rounds long enough to act inside them.

use std::path::{Path, PathBuf};

/// A SYNTHETIC dataset large enough that a round takes about a second in
/// the tests' build (60,000 rows x 30 features, 5 hospitals, 4 local epochs).
pub fn tabular_config(dir: &Path, rounds: u64) -> PathBuf {
    let csv = dir.join("synthetic.csv");
    if !csv.exists() {
        tabular_csv(&csv, 60_000, 30);
    }
    let config = dir.join("synthetic.toml");
    std::fs::write(
        &config,
        format!(
            r#"[run]
rounds = {rounds}
[federation]
round_timeout_secs = 120
assemble_timeout_secs = 120
[tasks.synthetic]
kind = "tabular"
hospitals = 5
min_hospitals = 1.0
[tasks.synthetic.data]
path = "{}"
label_column = "label"
positive_class = "1"
[tasks.synthetic.partition]
scheme = "iid"
[tasks.synthetic.strategy]
name = "fedadam"
[tasks.synthetic.training]
local_epochs = 4
batch_size = 32
"#,
            csv.display()
        ),
    )
    .unwrap();
    config
}

/// `medfed data synth-tabular`: a SYNTHETIC labelled CSV at `csv`.
pub fn tabular_csv(csv: &Path, rows: usize, features: usize) {
    let out = super::medfed(
        &[
            "data",
            "synth-tabular",
            "--rows",
            &rows.to_string(),
            "--features",
            &features.to_string(),
            "--out",
            csv.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
