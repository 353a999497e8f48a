//! SIGTERM (what a Kubernetes pod stop sends; Ctrl-C takes the same path)
//! in the middle of a run ends `medfed run`, `medfed serve` and
//! `medfed coordinator` cleanly: the run is recorded as stopped with the
//! rounds it completed, nothing panics, and the process exits within 10 s
//! with the exit code the README documents.

mod common;

use std::time::Duration;

use common::cluster::{shard_hospital, spawn, Process};
use common::free_port;
use common::server::{authed, Served};
use serde_json::{json, Value};

const TASK: &str = "breast_cancer";
/// The README's promise: a signalled process is gone within 10 s.
const GRACE: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(180);
/// Long local training, so that a run of many rounds is surely mid-way
/// when the signal arrives; info logs to see the rounds go by.
const SLOW: [(&str, &str); 2] = [
    ("MEDFED_TASKS__BREAST_CANCER__TRAINING__LOCAL_EPOCHS", "300"),
    ("RUST_LOG", "info,ractor=warn,ractor_cluster=warn"),
];
const EXIT_STOPPED: i32 = 3;

fn assert_clean(what: &str, log: &str) {
    assert!(!log.contains("panicked"), "{what} panicked:\n{log}");
}

/// The task's JSON of a run stopped after at least two rounds.
fn assert_stopped(run: &Value) -> usize {
    let task = &run["tasks"][TASK];
    assert_eq!(task["status"], "stopped", "{task}");
    let rounds = task["rounds"].as_array().expect("rounds").len();
    assert!((2..1000).contains(&rounds), "{rounds} rounds recorded");
    rounds
}

#[test]
fn sigterm_stops_medfed_run_which_prints_the_stopped_run_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", "--task", TASK, "--rounds", "1000", "--json"];
    let mut run = spawn(dir.path(), "run", &args, &SLOW);
    run.wait_for(&["round aggregated"], 2, LONG);
    run.terminate();
    let status = run.wait_exit(GRACE);
    let log = run.log();
    assert_eq!(status.code(), Some(EXIT_STOPPED), "{log}");
    assert!(log.contains("stopping the run (SIGTERM)"), "{log}");
    assert_clean("medfed run", &log);
    let rounds = assert_stopped(&run.json());
    eprintln!("medfed run stopped after {rounds} rounds");
}

#[test]
fn sigterm_stops_the_run_medfed_serve_is_running_and_exits_0_with_a_live_stream_open() {
    let mut served = Served::start(&["--task", TASK], &SLOW);
    let client = authed();
    // A panel watching the live stream must not hold the shutdown.
    let mut stream = client.get(served.url("/api/events")).send().unwrap();
    let watcher = std::thread::spawn(move || {
        let mut seen = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut seen);
        seen
    });
    let started: Value = client
        .post(served.url("/api/runs"))
        .json(&json!({ "rounds": 1000 }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = started["id"].as_str().expect("a run id").to_string();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let state: Value = client
            .get(served.url("/api/state"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if state["tasks"][TASK]["round"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rounds: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    served.terminate();
    let status = served.wait_exit(GRACE);
    let log = served.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutting down (SIGTERM)"), "{log}");
    // The coordinator's log records the run as stopped, not aborted.
    let ended = log
        .lines()
        .find(|l| l.contains("run ended") && l.contains(&id))
        .unwrap_or_else(|| panic!("no 'run ended' line for {id}:\n{log}"));
    assert!(ended.contains("outcome=\"stopped\""), "{ended}");
    assert!(log.contains("task stopped by the operator"), "{log}");
    // The panel's recorder kept the stopped run's report and model: it was
    // flushed while the coordinator could still answer.
    assert!(!log.contains("cannot fetch the run's report"), "{log}");
    assert!(!log.contains("cannot keep the final model"), "{log}");
    assert_clean("medfed serve", &log);
    // The live stream carried the run, then ended with the server.
    let seen = watcher.join().unwrap();
    assert!(seen.contains("\"type\":\"round_aggregated\""), "{seen}");
}

#[test]
fn sigterm_stops_the_coordinators_run_and_a_hospital_leaves_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator_args = [
        "coordinator",
        "--task",
        TASK,
        "--listen",
        &addr,
        "--rounds",
        "1000",
        "--auto-start",
        "--json",
    ];
    let mut coordinator = spawn(d, "coordinator", &coordinator_args, &SLOW);
    coordinator.wait_for(&["coordinator listening for hospitals"], 1, LONG);
    let mut hospitals: Vec<Process> = (1..=5)
        .map(|i| shard_hospital(d, &format!("h{i}"), TASK, &addr, &format!("{i}/5"), &[], &SLOW))
        .collect();
    coordinator.wait_for(&["round aggregated"], 2, LONG);

    // A hospital told to stop leaves the federation and exits 0; the
    // coordinator counts it out and goes on.
    hospitals[4].terminate();
    let status = hospitals[4].wait_exit(GRACE);
    let log = hospitals[4].log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM: leaving the federation"), "{log}");
    assert_clean("medfed hospital", &log);
    coordinator.wait_for(&["hospital departed", "breast_cancer-5"], 1, LONG);

    coordinator.terminate();
    let status = coordinator.wait_exit(GRACE);
    let log = coordinator.log();
    assert_eq!(status.code(), Some(EXIT_STOPPED), "{log}");
    assert!(
        log.contains("SIGTERM: stopping the run, then shutting down"),
        "{log}"
    );
    assert_clean("medfed coordinator", &log);
    let rounds = assert_stopped(&coordinator.json());
    eprintln!("medfed coordinator stopped after {rounds} rounds");
    for h in &mut hospitals[..4] {
        assert!(
            h.is_running(),
            "{} exited with the coordinator:\n{}",
            h.name,
            h.log()
        );
    }
}
