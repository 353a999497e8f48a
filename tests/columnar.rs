//! Columnar hospitals through the real binary: SYNTHETIC Parquet tables
//! from `medfed data synth-table`, the breast-cancer CSV converted with
//! `medfed data convert`, whole federations on them, and bad files refused
//! with reasons.

use std::path::Path;
use std::time::Duration;

mod common;
use common::cluster::{scrape, spawn, Process};
use common::{free_port, json_of, medfed};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A columnar task over `data` in `dir/<name>.toml`; `extra` is appended.
fn write_config(dir: &Path, name: &str, data: &str, label: &str, positive: &str, extra: &str) -> String {
    let config = format!(
        r#"[run]
seed = 5
rounds = 3

[tasks.table]
kind = "columnar"
hospitals = 4

[tasks.table.data]
format = "parquet"
path = "{data}"
label_column = "{label}"
positive_class = "{positive}"
test_fraction = 0.2

[tasks.table.training]
local_epochs = 1
batch_size = 64
learning_rate = 0.1
{extra}"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

fn synth(dir: &Path, rows: &str, row_group_rows: &str) -> std::path::PathBuf {
    let out = dir.join(format!("synthetic-{rows}.parquet"));
    let made = medfed(
        &[
            "data",
            "synth-table",
            "--out",
            path_str(&out),
            "--rows",
            rows,
            "--features",
            "8",
            "--seed",
            "11",
            "--row-group-rows",
            row_group_rows,
        ],
        &[],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(String::from_utf8_lossy(&made.stderr).contains("SYNTHETIC"));
    out
}

#[test]
fn a_columnar_federation_on_a_synthetic_table_matches_its_centralized_baseline() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), "40000", "4000");
    let config = write_config(dir.path(), "t", "synthetic-40000.parquet", "label", "1", "");
    for gradient in ["mini_batch", "full_batch"] {
        let out = medfed(
            &["run", "--config", &config, "--json", "--baseline"],
            &[("MEDFED_TASKS__TABLE__TRAINING__GRADIENT", gradient)],
        );
        let v = json_of(&out);
        let task = &v["tasks"]["table"];
        assert_eq!(task["status"], "finished", "{gradient}");
        assert_eq!(task["hospitals"], 4);
        let fed = task["final"]["accuracy"].as_f64().unwrap();
        let central = task["centralized"]["accuracy"].as_f64().unwrap();
        // A full-batch step per epoch learns slowly: 3 steps in all.
        let slack = if gradient == "mini_batch" { 0.01 } else { 0.15 };
        assert!(
            (fed - central).abs() <= slack,
            "{gradient}: federated {fed} vs centralized {central}"
        );
        assert!(fed > 0.6, "{gradient}: {fed}");
        // About 20% of the rows are held out by the row-hash split.
        let c = &task["final"]["confusion"];
        let held_out: u64 = ["tp", "fp", "tn", "fn"]
            .iter()
            .map(|k| c[k].as_u64().unwrap())
            .sum();
        assert!((7_400..8_600).contains(&held_out), "{held_out}");
    }
    // Partitioned by a sorted column instead of row-group ranges.
    let sorted = write_config(
        dir.path(),
        "sorted",
        "synthetic-40000.parquet",
        "label",
        "1",
        "\n[tasks.table.partition]\nscheme = \"sorted\"\nfeature = \"x3\"\n",
    );
    let v = json_of(&medfed(&["run", "--config", &sorted, "--json"], &[]));
    assert_eq!(v["tasks"]["table"]["status"], "finished");
}

#[test]
fn the_breast_cancer_csv_converts_to_parquet_and_trains_as_a_columnar_task() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("breast_cancer.parquet");
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer_wisconsin.csv");
    let converted = json_of(&medfed(
        &[
            "data",
            "convert",
            "--in",
            path_str(&csv),
            "--out",
            path_str(&parquet),
            "--row-group-rows",
            "50",
            "--json",
        ],
        &[],
    ));
    assert_eq!(converted["rows"], 569);
    let columns = converted["columns"].as_array().unwrap();
    assert_eq!(columns.len(), 31);
    assert_eq!(columns[30], serde_json::json!(["diagnosis", "text"]));
    assert_eq!(columns[0], serde_json::json!(["mean_radius", "float64"]));
    // Converting onto an existing file is refused, and the file is kept.
    let again = medfed(
        &[
            "data",
            "convert",
            "--in",
            path_str(&csv),
            "--out",
            path_str(&parquet),
        ],
        &[],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert!(parquet.exists());

    let config = write_config(
        dir.path(),
        "bc",
        "breast_cancer.parquet",
        "diagnosis",
        "M",
        "\n[tasks.table.partition]\nscheme = \"sorted\"\nfeature = \"mean_radius\"\n",
    );
    let v = json_of(&medfed(
        &[
            "run",
            "--config",
            &config,
            "--json",
            "--rounds",
            "10",
            "--baseline",
        ],
        &[
            ("MEDFED_TASKS__TABLE__HOSPITALS", "5"),
            ("MEDFED_TASKS__TABLE__TRAINING__LOCAL_EPOCHS", "5"),
            ("MEDFED_TASKS__TABLE__TRAINING__BATCH_SIZE", "16"),
        ],
    ));
    let task = &v["tasks"]["table"];
    let fed = task["final"]["accuracy"].as_f64().unwrap();
    let central = task["centralized"]["accuracy"].as_f64().unwrap();
    // The tabular kind's demo reaches 0.96-0.98 on this data (README).
    assert!(fed >= 0.95, "columnar breast cancer {fed}");
    assert!(
        (fed - central).abs() <= 0.02,
        "federated {fed} vs centralized {central}"
    );

    // With DP-SGD on the stream: public bounds scale the features, every
    // update is noised, and the budget holds.
    let bounds = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer_feature_bounds.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "test_fraction = 0.2",
        &format!("test_fraction = 0.2\nfeature_bounds = \"{}\"", bounds.display()),
    );
    std::fs::write(&config, text).unwrap();
    let v = json_of(&medfed(
        &[
            "run",
            "--config",
            &config,
            "--json",
            "--rounds",
            "10",
            "--dp-epsilon",
            "3",
        ],
        // Seeded noise (simulation only): the same accuracy every run.
        &[
            ("MEDFED_TASKS__TABLE__HOSPITALS", "5"),
            ("MEDFED_PRIVACY__NOISE", "seeded"),
        ],
    ));
    let task = &v["tasks"]["table"];
    assert_eq!(task["status"], "finished", "{task}");
    let private = task["final"]["accuracy"].as_f64().unwrap();
    assert!(private > 0.75, "columnar breast cancer under DP-SGD: {private}");
    println!("columnar breast cancer: {fed:.4} without DP, {private:.4} with DP-SGD at epsilon 3");
}

#[test]
fn corrupt_truncated_and_mismatched_tables_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let good = synth(dir.path(), "3000", "500");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.path().join("truncated.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let run_err = |data: &str, label: &str| -> String {
        let config = write_config(dir.path(), "bad", data, label, "1", "");
        let out = medfed(&["run", "--config", &config, "--json"], &[]);
        assert!(!out.status.success(), "{data} should be refused");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let e = run_err("truncated.parquet", "label");
    assert!(
        e.contains("truncated.parquet") && e.contains("is not a Parquet file or is truncated"),
        "{e}"
    );
    let e = run_err("synthetic-3000.parquet", "outcome");
    assert!(
        e.contains("no label column 'outcome'") && e.contains("x0 Float64"),
        "{e}"
    );
    let e = run_err("missing.parquet", "label");
    assert!(e.contains("missing.parquet") && e.contains("no such file"), "{e}");
    // More hospitals than row groups cannot be split by row-group ranges.
    let config = write_config(dir.path(), "few", "synthetic-3000.parquet", "label", "1", "");
    let out = medfed(
        &["run", "--config", &config, "--json"],
        &[("MEDFED_TASKS__TABLE__HOSPITALS", "7")],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("6 row groups, fewer than the 7 hospitals"), "{e}");
    // A CSV with a null in a feature: refused naming the place, or dropped.
    let csv = dir.path().join("nulls.csv");
    let mut text = String::from("a,b,y\n");
    for i in 0..400 {
        let b = if i == 250 {
            String::new()
        } else {
            format!("{}", i % 7)
        };
        text.push_str(&format!("{}.5,{b},{}\n", i, i % 2));
    }
    std::fs::write(&csv, text).unwrap();
    let nulls = dir.path().join("nulls.parquet");
    let out = medfed(
        &[
            "data",
            "convert",
            "--in",
            path_str(&csv),
            "--out",
            path_str(&nulls),
            "--row-group-rows",
            "100",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = run_err("nulls.parquet", "y");
    assert!(
        e.contains("nulls.parquet, row group 2, column 'b'") && e.contains("row 50 is null"),
        "{e}"
    );
    let config = write_config(dir.path(), "drop", "nulls.parquet", "y", "1", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("test_fraction = 0.2", "test_fraction = 0.2\nnulls = \"drop_row\"");
    std::fs::write(&config, text).unwrap();
    let v = json_of(&medfed(&["run", "--config", &config, "--json"], &[]));
    assert_eq!(v["tasks"]["table"]["status"], "finished");
}

#[test]
fn columnar_settings_are_checked_where_they_apply() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |extra: &str, needle: &str| {
        let config = write_config(dir.path(), "c", "t.parquet", "label", "1", extra);
        let out = medfed(&["config", "check", &config], &[]);
        assert!(!out.status.success(), "{extra}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(needle), "{extra}: {e}");
    };
    bad(
        "threads = 0\n",
        "`tasks.table.training.threads`: must be at least 1",
    );
    bad(
        "\n[tasks.table.partition]\nscheme = \"dirichlet\"\n",
        "`tasks.table.partition.scheme`",
    );
    // Columnar settings on a tabular task are refused by name.
    let out = medfed(
        &["config", "check"],
        &[("MEDFED_TASKS__BREAST_CANCER__TRAINING__GRADIENT", "full_batch")],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("training.gradient") && e.contains("columnar tasks only"),
        "{e}"
    );
}

fn convert(csv: &Path, parquet: &Path, row_group_rows: &str) {
    let out = medfed(
        &[
            "data",
            "convert",
            "--in",
            path_str(csv),
            "--out",
            path_str(parquet),
            "--row-group-rows",
            row_group_rows,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Deal a CSV file's rows alternately into `sites` files (header kept).
fn deal_csv(csv: &str, sites: &[&Path]) {
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let mut parts: Vec<Vec<&str>> = sites.iter().map(|_| vec![header]).collect();
    for (i, line) in lines.enumerate() {
        parts[i % sites.len()].push(line);
    }
    for (path, rows) in sites.iter().zip(parts) {
        std::fs::write(path, rows.join("\n") + "\n").unwrap();
    }
}

/// A coordinator serving `config`'s task `table` and one hospital process
/// per (name, --data file); `http` serves the first one's /metrics. The
/// run's JSON, and the /metrics text scraped at its end (if `http`).
fn cluster_run(
    dir: &Path,
    config: &str,
    sites: &[(&str, &Path)],
    http: Option<&str>,
) -> (serde_json::Value, String) {
    cluster_run_with(dir, config, sites, http, &[])
}

/// `cluster_run` with more environment for every process (S3 settings).
fn cluster_run_with(
    dir: &Path,
    config: &str,
    sites: &[(&str, &Path)],
    http: Option<&str>,
    extra: &[(&str, &str)],
) -> (serde_json::Value, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let hospitals = sites.len().to_string();
    let mut envs = vec![
        ("MEDFED_TASKS__TABLE__MIN_HOSPITALS", hospitals.as_str()),
        ("MEDFED_TASKS__TABLE__TRAINING__LOCAL_EPOCHS", "5"),
        ("MEDFED_TASKS__TABLE__TRAINING__BATCH_SIZE", "16"),
    ];
    envs.extend_from_slice(extra);
    let mut coordinator = spawn(
        dir,
        "coordinator",
        &[
            "coordinator",
            "--config",
            config,
            "--task",
            "table",
            "--listen",
            &addr,
            "--hospitals",
            &hospitals,
            "--rounds",
            "5",
            "--auto-start",
            "--exit-after-run",
            "--json",
        ],
        &envs,
    );
    coordinator.wait_for(
        &["coordinator listening for hospitals"],
        1,
        Duration::from_secs(60),
    );
    let processes: Vec<Process> = sites
        .iter()
        .enumerate()
        .map(|(i, (site, file))| {
            let file = file.display().to_string();
            let mut args = vec![
                "hospital",
                "--config",
                config,
                "--task",
                "table",
                "--coordinator",
                &addr,
                "--name",
                site,
                "--data",
                &file,
            ];
            if let (0, Some(http)) = (i, http) {
                args.extend(["--http", http]);
            }
            spawn(dir, site, &args, &envs)
        })
        .collect();
    let status = coordinator.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "{}\n{}", coordinator.log(), processes[0].log());
    let metrics = http.map(scrape).unwrap_or_default();
    (coordinator.json(), metrics)
}

/// Two hospital processes with their own Parquet files (the breast-cancer
/// rows dealt alternately) and a coordinator holding the whole table: the
/// row-hash split puts every row on the same side everywhere, so the
/// hospitals' local test rows together are exactly the coordinator's
/// held-out rows, and no held-out row is trained on.
#[test]
fn hospital_processes_stream_their_own_parquet_files_and_report_their_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer_wisconsin.csv"),
    )
    .unwrap();
    std::fs::write(d.join("all.csv"), &csv).unwrap();
    convert(&d.join("all.csv"), &d.join("all.parquet"), "64");
    deal_csv(&csv, &[&d.join("site-a.csv"), &d.join("site-b.csv")]);
    for site in ["site-a", "site-b"] {
        convert(
            &d.join(format!("{site}.csv")),
            &d.join(format!("{site}.parquet")),
            "64",
        );
    }
    let config = write_config(d, "cluster", "all.parquet", "diagnosis", "M", "");
    let http = format!("127.0.0.1:{}", free_port());
    let (a, b) = (d.join("site-a.parquet"), d.join("site-b.parquet"));
    let (run, text) = cluster_run(d, &config, &[("site-a", &a), ("site-b", &b)], Some(&http));
    let t = &run["tasks"]["table"];
    assert_eq!(t["status"], "finished", "{t}");
    assert_eq!(t["rounds"][4]["participants"], 2);
    assert!(t["final"]["accuracy"].as_f64().unwrap() > 0.9, "{t}");
    let c = &t["final"]["confusion"];
    let held_out: u64 = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum();
    assert_eq!(t["final_federated"]["evaluated"], 2, "{t}");
    assert_eq!(
        t["final_federated"]["examples"].as_u64().unwrap(),
        held_out,
        "the sites' local test rows are the coordinator's held-out rows"
    );
    // The columnar site's reads on its /metrics.
    common::promtool_check_metrics(&text);
    let value = |series: &str| {
        common::cluster::metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(
        value("medfed_hospital_table_rows_read_total") > 5.0 * 200.0,
        "{text}"
    );
    assert!(value("medfed_hospital_table_read_bytes_total") > 0.0);
    assert!(value("medfed_hospital_table_row_groups_read_total") >= 5.0);
    assert!(value("medfed_hospital_table_passes_total") >= 6.0);
    assert!(text.contains("medfed_hospital_info{hospital=\"site-a\",task=\"table\",kind=\"columnar\"} 1"));
}

/// The same rows as CSV (tabular learners) and as Parquet (columnar
/// learners) in one columnar task: the same accuracy within half a point
/// on the coordinator's held-out set; a CSV and a Parquet hospital
/// together; a hospital whose columns differ refused at join, by name.
#[test]
fn tabular_and_columnar_hospitals_train_the_same_task_on_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let all_csv = d.join("all.csv");
    let made = medfed(
        &[
            "data",
            "synth-tabular",
            "--out",
            path_str(&all_csv),
            "--rows",
            "40000",
            "--features",
            "8",
            "--separation",
            "0.5",
            "--seed",
            "23",
        ],
        &[],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let csv = std::fs::read_to_string(&all_csv).unwrap();
    convert(&all_csv, &d.join("all.parquet"), "4000");
    deal_csv(&csv, &[&d.join("a.csv"), &d.join("b.csv")]);
    convert(&d.join("a.csv"), &d.join("a.parquet"), "4000");
    convert(&d.join("b.csv"), &d.join("b.parquet"), "4000");
    let config = write_config(d, "mixed", "all.parquet", "label", "1", "");
    let accuracy = |sites: &[(&str, &Path)]| -> f64 {
        let (run, _) = cluster_run(d, &config, sites, None);
        let t = &run["tasks"]["table"];
        assert_eq!(t["status"], "finished", "{t}");
        assert_eq!(t["rounds"][4]["participants"], sites.len() as u64, "{t}");
        t["final"]["accuracy"].as_f64().unwrap()
    };
    let (a_csv, b_csv, a_pq, b_pq) = (
        d.join("a.csv"),
        d.join("b.csv"),
        d.join("a.parquet"),
        d.join("b.parquet"),
    );
    let columnar = accuracy(&[("a", &a_pq), ("b", &b_pq)]);
    let tabular = accuracy(&[("a", &a_csv), ("b", &b_csv)]);
    assert!(
        (columnar - tabular).abs() <= 0.005,
        "columnar {columnar} vs tabular {tabular} on the same rows"
    );
    let mixed = accuracy(&[("a", &a_csv), ("b", &b_pq)]);
    println!(
        "held-out accuracy on the same rows: columnar {columnar:.4}, tabular {tabular:.4}, mixed {mixed:.4}"
    );
    assert!(
        (mixed - tabular).abs() <= 0.005,
        "mixed {mixed} vs tabular {tabular}"
    );
    // A site whose extract lacks a column: refused at join, naming it.
    let short = csv
        .lines()
        .map(|l| l.split(',').skip(1).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join("short.csv"), short + "\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = spawn(
        d,
        "coordinator-short",
        &[
            "coordinator",
            "--config",
            &config,
            "--task",
            "table",
            "--listen",
            &addr,
        ],
        &[],
    );
    coordinator.wait_for(
        &["coordinator listening for hospitals"],
        1,
        Duration::from_secs(60),
    );
    let short_file = d.join("short.csv").display().to_string();
    let mut site = spawn(
        d,
        "short",
        &[
            "hospital",
            "--config",
            &config,
            "--task",
            "table",
            "--coordinator",
            &addr,
            "--name",
            "short",
            "--data",
            &short_file,
        ],
        &[],
    );
    let status = site.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = site.log();
    assert!(log.contains("lacks the feature columns x0"), "{log}");
}

/// The venv with pyarrow, moto and boto3 (`scripts/test` installs it and
/// sets MEDFED_COLUMNAR_TOOLS); `None` (the test says it skips) elsewhere,
/// a failure with MEDFED_REQUIRE_EXTERNAL=1.
fn tools() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("MEDFED_COLUMNAR_TOOLS").map(std::path::PathBuf::from);
    match dir.filter(|d| d.join("python").exists()) {
        Some(d) => Some(d),
        None if std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() == Ok("1") => {
            panic!("MEDFED_COLUMNAR_TOOLS (pyarrow, moto) is required; scripts/test installs it")
        }
        None => {
            eprintln!("SKIPPED: no MEDFED_COLUMNAR_TOOLS venv (pyarrow, moto)");
            None
        }
    }
}

fn python(tools: &Path, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tools.join("python"))
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/columnar")
                .join(script),
        )
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_file_written_by_pyarrow_with_dictionaries_zstd_and_nulls_trains() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("extract.parquet");
    let made: serde_json::Value = serde_json::from_str(&python(
        &tools,
        "pyarrow_table.py",
        &[path_str(&file), "6000", "4321"],
    ))
    .unwrap();
    assert_eq!(made["row_groups"], 5, "{made}");
    assert_eq!(made["codecs"], serde_json::json!(["ZSTD"]));
    assert!(
        made["encodings"]
            .as_array()
            .unwrap()
            .contains(&"RLE_DICTIONARY".into()),
        "{made}"
    );
    // The null in `dose` (row 4321: row group 3 of 1200-row groups, its
    // row 721) is refused by default ...
    let config = write_config(dir.path(), "pa", "extract.parquet", "outcome", "sick", "");
    let out = medfed(&["run", "--config", &config, "--json"], &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("extract.parquet, row group 3, column 'dose'") && e.contains("row 721 is null"),
        "{e}"
    );
    // ... and dropped on request; the text column `note` is not a feature.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("test_fraction = 0.2", "test_fraction = 0.2\nnulls = \"drop_row\"");
    std::fs::write(&config, text).unwrap();
    let v = json_of(&medfed(
        &["run", "--config", &config, "--json", "--baseline"],
        &[],
    ));
    let t = &v["tasks"]["table"];
    assert_eq!(t["status"], "finished");
    let fed = t["final"]["accuracy"].as_f64().unwrap();
    let central = t["centralized"]["accuracy"].as_f64().unwrap();
    assert!(fed > 0.75 && (fed - central).abs() <= 0.02, "{fed} vs {central}");
}

/// A local S3-compatible server (moto) for one test, stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(tools: &Path) -> S3Server {
        let port = free_port();
        let child = std::process::Command::new(tools.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, endpoint }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tables_in_s3_are_read_from_a_prefix_a_glob_and_one_object() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = synth(dir.path(), "20000", "2500");
    let server = S3Server::start(&tools);
    // Spark's layout: part files and a _SUCCESS marker under a prefix.
    let bytes = std::fs::read(&local).unwrap();
    let half = dir.path().join("other.parquet");
    std::fs::write(&half, &bytes).unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a table at all, just some bytes").unwrap();
    python(
        &tools,
        "s3_upload.py",
        &[
            &server.endpoint,
            "extracts",
            &format!("site/part-0.parquet={}", path_str(&local)),
            &format!("site/_SUCCESS={}", path_str(&half)),
            &format!("corrupt/part-0.parquet={}", path_str(&junk)),
        ],
    )
    .trim()
    .parse::<u32>()
    .map(|n| assert_eq!(n, 3))
    .unwrap_or_else(|_| panic!("upload count"));
    let env = server.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |location: &str| {
        let config = write_config(dir.path(), "s3", location, "label", "1", "");
        medfed(&["run", "--config", &config, "--json"], &envs)
    };
    let expected = json_of(&medfed(
        &[
            "run",
            "--config",
            &write_config(dir.path(), "local", path_str(&local), "label", "1", ""),
            "--json",
        ],
        &[],
    ));
    for location in [
        "s3://extracts/site",
        "s3://extracts/site/*.parquet",
        "s3://extracts/site/part-0.parquet",
    ] {
        let v = json_of(&run(location));
        assert_eq!(
            v["tasks"]["table"]["final"], expected["tasks"]["table"]["final"],
            "{location} trains exactly as the local file"
        );
    }
    // A hospital process whose own data is in S3 (`--data s3://...`).
    let (cluster, _) = cluster_run_with(
        dir.path(),
        &write_config(dir.path(), "s3-cluster", path_str(&local), "label", "1", ""),
        &[("s3-site", Path::new("s3://extracts/site/"))],
        None,
        &envs,
    );
    let t = &cluster["tasks"]["table"];
    assert_eq!(t["status"], "finished", "{t}");
    assert_eq!(t["rounds"][4]["participants"], 1, "{t}");
    let e = String::from_utf8_lossy(&run("s3://extracts/nothing").stderr).to_string();
    assert!(e.contains("no Parquet objects at s3://extracts/nothing"), "{e}");
    let e = String::from_utf8_lossy(&run("s3://extracts/corrupt").stderr).to_string();
    assert!(
        e.contains("s3://extracts/corrupt/part-0.parquet") && e.contains("not a Parquet file"),
        "{e}"
    );
}
