//! A coordinator that dies and comes back: real processes SIGKILLed at exact
//! places of a round (crash points, `--features failpoints`), restarted on
//! the same store. The run completes, no round is lost or recorded twice,
//! and the final model is bit for bit that of the run left alone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{spawn, Process};
use common::free_port;
use common::server::{authed, Served};

use medfed::store::Store;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(300);
const ROUNDS: u64 = 10;

/// The one registered model's sha256 and the run's rounds in the store.
fn recorded(data: &Path) -> (String, Vec<u32>) {
    let store = Store::open(&data.join("medfed.sqlite")).unwrap();
    let models = store.models(None).unwrap();
    assert_eq!(models.len(), 1, "one registered version: {models:?}");
    let rounds = store
        .rounds(&models[0].run_id, &models[0].task)
        .unwrap()
        .iter()
        .map(|r| r.round)
        .collect();
    (models[0].sha256.clone(), rounds)
}

/// Coordinator + 5 hospital processes, 10 rounds; with `crash` the first
/// coordinator SIGKILLs itself there and a second one on the same store
/// finishes the run. Returns the finishing coordinator's JSON and store.
fn cluster_run(dir: &Path, name: &str, crash: Option<&str>) -> (Value, PathBuf, Process) {
    let config = common::synthetic::tabular_config(dir, ROUNDS);
    let config = config.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.join(format!("{name}-store"));
    let data_env = data.to_str().unwrap().to_string();
    let args = [
        "coordinator",
        "--config",
        config,
        "--listen",
        &addr,
        "--auto-start",
        "--exit-after-run",
        "--json",
    ];
    let mut env = vec![("MEDFED_RUN__DATA_DIR", data_env.as_str())];
    if let Some(point) = crash {
        env.push(("FAILPOINTS", point));
    }
    let mut first = spawn(dir, &format!("{name}-coordinator-1"), &args, &env);
    let _hospitals: Vec<Process> = (1..=5)
        .map(|i| {
            let shard = format!("{i}/5");
            spawn(
                dir,
                &format!("{name}-h{i}"),
                &[
                    "hospital",
                    "--config",
                    config,
                    "--coordinator",
                    &addr,
                    "--shard",
                    &shard,
                ],
                &[],
            )
        })
        .collect();
    let status = first.wait_exit(LONG);
    let Some(_) = crash else {
        assert!(status.success(), "{}", first.log());
        return (first.json(), data, first);
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed at the crash point: {}",
        first.log()
    );
    assert_eq!(first.count(&["crash point reached"]), 1);
    let mut second = spawn(dir, &format!("{name}-coordinator-2"), &args, &[env[0]]);
    let status = second.wait_exit(LONG);
    assert!(status.success(), "{}", second.log());
    (second.json(), data, second)
}

fn assert_whole_run(run: &Value) {
    let task = &run["tasks"]["synthetic"];
    assert_eq!(task["status"], "finished", "{task}");
    let rounds: Vec<u64> = task["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "every round once, those before the crash too"
    );
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
fn a_coordinator_killed_anywhere_in_a_round_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (reference, data, _) = cluster_run(d, "reference", None);
    assert_whole_run(&reference);
    let (reference_sha, rounds) = recorded(&data);
    assert_eq!(rounds, (1..=10).collect::<Vec<u32>>());
    // Each update received, aggregation started, and round committed is one
    // pass of its crash point: 4 rounds of 5 updates, then 2 of round 5.
    let crashes = [
        ("training", "coordinator::update_received=22*off->return", 5),
        ("aggregating", "coordinator::aggregating=4*off->return", 5),
        ("committed", "coordinator::round_committed=4*off->return", 6),
    ];
    for (name, point, resumed_at) in crashes {
        let (run, data, second) = cluster_run(d, name, Some(point));
        assert_whole_run(&run);
        assert_eq!(
            second.count(&[&format!("resuming the interrupted run at round {resumed_at}")]),
            1,
            "{name}: {}",
            second.log()
        );
        let (sha, rounds) = recorded(&data);
        assert_eq!(
            rounds,
            (1..=10).collect::<Vec<u32>>(),
            "{name}: no round lost or repeated"
        );
        assert_eq!(
            sha, reference_sha,
            "{name}: the resumed run's model is the uninterrupted run's"
        );
        // A store left by a killed process is sound.
        let conn = rusqlite::Connection::open(data.join("medfed.sqlite")).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{name}");
    }
}

/// A resumed run under another configuration is refused with the reason;
/// `--abandon-run` gives it up and a new run starts.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
fn a_changed_configuration_is_refused_and_an_abandoned_run_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("store");
    let data = data.to_str().unwrap();
    let run = |envs: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec![
            "run",
            "--task",
            "breast_cancer",
            "--rounds",
            "6",
            "--json",
            "--store",
        ];
        let store = format!("{data}/medfed.sqlite");
        args.push(&store);
        args.extend_from_slice(extra);
        common::medfed(&args, envs)
    };
    let crashed = run(
        &[("FAILPOINTS", "coordinator::round_committed=2*off->return")],
        &[],
    );
    assert!(!crashed.status.success());
    // Another seed: another run, refused.
    let refused = run(&[("MEDFED_RUN__SEED", "7")], &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("was interrupted, and the configuration") && err.contains("--abandon-run"),
        "{err}"
    );
    let id = err
        .split("run ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_string();
    let fresh = run(&[("MEDFED_RUN__SEED", "7")], &["--abandon-run", &id]);
    assert!(
        fresh.status.success(),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    let store = Store::open(&Path::new(data).join("medfed.sqlite")).unwrap();
    let runs = store.runs(10).unwrap();
    let status: Vec<(&str, &str)> = runs.iter().map(|r| (r.id.as_str(), r.status.as_str())).collect();
    assert!(status.contains(&(id.as_str(), "abandoned")), "{status:?}");
    assert_eq!(runs.iter().filter(|r| r.status == "finished").count(), 1);
}

fn wait_for_run(s: &Served, id: &str) -> Value {
    let client = authed();
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        let run: Value = client
            .get(s.url(&format!("/api/runs/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if run["status"] != "running" {
            return run;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("run {id} did not end");
}

/// `medfed serve` killed in the middle of a run and restarted on its data
/// directory carries the run on (the panel shows it) to the same model as
/// `medfed run` left alone.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
fn serve_killed_mid_run_carries_the_run_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("serve-data");
    let args = ["--task", "breast_cancer"];
    let mut first = Served::start_in(
        &data,
        &args,
        // Dies at the fourth commit, as `3*off->return` would; the first
        // commit waits 500 ms so that the answer to POST /api/runs is out
        // before the process kills itself (a breast-cancer round takes
        // milliseconds, and under load the kill could beat the answer).
        &[(
            "FAILPOINTS",
            "coordinator::round_committed=1*sleep(500)->2*off->return",
        )],
    );
    let client = authed();
    let id = first.start_run(&json!({"rounds": 8}));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(first.wait_exit(LONG).signal(), Some(9), "{}", first.log());

    let second = Served::start_in(&data, &args, &[]);
    assert!(
        second.log().contains("resuming the interrupted run at round 5"),
        "{}",
        second.log()
    );
    let state: Value = client
        .get(second.url("/api/state"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        state["run_id"],
        id.as_str(),
        "the panel shows the resumed run: {state}"
    );
    let run = wait_for_run(&second, &id);
    assert_eq!(run["status"], "finished", "{run}");
    let rounds: Vec<u64> = run["report"]["breast_cancer"]["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, (1..=8).collect::<Vec<_>>());
    // Registered by the store's observer once the run ended.
    let deadline = std::time::Instant::now() + LONG;
    let sha = loop {
        let models: Value = client
            .get(second.url("/api/models"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if let Some(sha) = models["models"][0]["sha256"].as_str() {
            break sha.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no model registered: {models}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The version's lineage, and its file: with the token only.
    let lineage: Value = client
        .get(second.url("/api/models/breast_cancer/1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(lineage["rounds"].as_object().unwrap().len(), 8, "{lineage}");
    let download = second.url("/api/models/breast_cancer/1/download");
    let anonymous = reqwest::blocking::Client::new();
    assert_eq!(anonymous.get(&download).send().unwrap().status().as_u16(), 401);
    let file = client.get(&download).send().unwrap();
    assert_eq!(file.headers()["x-content-sha256"].to_str().unwrap(), sha);
    let bytes = file.bytes().unwrap();
    assert_eq!(medfed::store::sha256_hex(&bytes), sha);
    let missing = client
        .get(second.url("/api/models/breast_cancer/9"))
        .send()
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    drop(second);

    // The same run, left alone, in `medfed run`.
    let store = dir.path().join("alone.sqlite");
    let out = common::medfed(
        &[
            "run",
            "--task",
            "breast_cancer",
            "--rounds",
            "8",
            "--json",
            "--store",
            store.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let alone = Store::open(&store).unwrap().models(None).unwrap();
    assert_eq!(
        alone[0].sha256, sha,
        "resumed serve run = uninterrupted run, bit for bit"
    );
}

/// With `store.on_terminate = "suspend"`, SIGTERM (a Kubernetes rollout or
/// node drain) leaves the run interrupted, and `serve` restarted on its
/// data directory carries it on to the end.
#[test]
fn sigterm_suspends_a_stored_run_when_asked_and_a_restart_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::synthetic::tabular_config(dir.path(), ROUNDS);
    let data = dir.path().join("serve-data");
    let args = ["--config", config.to_str().unwrap()];
    let suspend = [("MEDFED_STORE__ON_TERMINATE", "suspend")];
    // Each commit of the first server waits 200 ms: its rounds take
    // milliseconds, and on a loaded machine the run could otherwise end
    // before SIGTERM arrives, leaving nothing to resume.
    let slow = [
        suspend[0],
        ("FAILPOINTS", "coordinator::round_committed=sleep(200)"),
    ];
    let mut first = Served::start_in(&data, &args, &slow);
    let client = authed();
    let started: Value = client
        .post(first.url("/api/runs"))
        .json(&json!({"rounds": 6}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let state: Value = client
            .get(first.url("/api/state"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if state["tasks"]["synthetic"]["round"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no round 2: {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.terminate();
    assert!(first.wait_exit(LONG).success(), "{}", first.log());
    assert!(
        first.log().contains("stays interrupted in the store"),
        "{}",
        first.log()
    );

    let second = Served::start_in(&data, &args, &suspend);
    assert!(
        second.log().contains("resuming the interrupted run"),
        "{}",
        second.log()
    );
    let run = wait_for_run(&second, &id);
    assert_eq!(run["status"], "finished", "{run}");
    let rounds = run["report"]["synthetic"]["rounds"].as_array().unwrap().len();
    assert_eq!(rounds, 6);
}
