//! Hospitals that outlive their coordinator, with real processes: ten
//! SIGKILLs in a row during runs (every hospital survives all ten and
//! rejoins each new coordinator), a normal shutdown announced to the
//! hospitals, and a hospital left waiting with no coordinator (a bounded
//! number of attempts; memory and threads flat). The waiting test lasts
//! MEDFED_WAIT_TEST_SECS (30 in CI; the long suite runs 600).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::cluster::{shard_hospital, spawn, Process};
use common::free_port;

const TASK: &str = "breast_cancer";
const LONG: Duration = Duration::from_secs(120);
const HOSPITALS: usize = 3;

fn coordinator(dir: &Path, name: &str, addr: &str, extra: &[&str]) -> Process {
    let mut args = vec!["coordinator", "--task", TASK, "--listen", addr];
    args.extend_from_slice(extra);
    let p = spawn(
        dir,
        name,
        &args,
        &[
            ("MEDFED_TASKS__BREAST_CANCER__HOSPITALS", "3"),
            ("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "3"),
        ],
    );
    p.wait_for(&["coordinator listening for hospitals"], 1, LONG);
    p
}

fn hospital(dir: &Path, i: usize, addr: &str, envs: &[(&str, &str)]) -> Process {
    let shard = format!("{i}/{HOSPITALS}");
    shard_hospital(dir, &format!("h{i}"), TASK, addr, &shard, &[], envs)
}

/// (resident memory in kB, threads) of a process, from /proc.
fn footprint(pid: u32) -> (u64, u64) {
    (
        common::cluster::proc_status(pid, "VmRSS:"),
        common::cluster::proc_status(pid, "Threads:"),
    )
}

#[test]
fn every_hospital_survives_ten_coordinator_kills_during_runs_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut hospitals: Vec<Process> = (1..=HOSPITALS).map(|i| hospital(d, i, &addr, &[])).collect();
    for kill in 1..=10 {
        // A fresh store each time: each coordinator starts its own run.
        let mut c = coordinator(
            d,
            &format!("coordinator-{kill}"),
            &addr,
            &["--auto-start", "--rounds", "10000"],
        );
        c.wait_for(&["hospital said hello"], HOSPITALS, LONG);
        // Membership is logged as it changes.
        c.wait_for(&["3 of 3 hospitals joined (quorum 3)"], 1, LONG);
        c.wait_for(&["round aggregated"], 1, LONG);
        c.kill();
        for h in &mut hospitals {
            assert!(
                h.is_running(),
                "{} exited after kill {kill}:\n{}",
                h.name,
                h.log()
            );
        }
    }
    // The last kill too: they are waiting to reconnect, not gone.
    let last = coordinator(d, "coordinator-final", &addr, &[]);
    last.wait_for(&["hospital said hello"], HOSPITALS, LONG);
    for h in &mut hospitals {
        assert!(h.is_running(), "{}:\n{}", h.name, h.log());
        let log = h.log();
        assert!(!log.contains("did not accept"), "{}:\n{log}", h.name);
        assert!(
            h.count(&["connected to the coordinator"]) >= 11,
            "{}:\n{log}",
            h.name
        );
    }
}

#[test]
fn a_normal_shutdown_is_announced_and_the_hospitals_wait_quietly_for_the_next_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut first = coordinator(
        d,
        "coordinator-1",
        &addr,
        &["--auto-start", "--rounds", "2", "--exit-after-run", "--json"],
    );
    // h1 at RUST_LOG=debug: ractor_cluster still may not log payloads; h2
    // asks for them explicitly (and is warned).
    let debug: &[(&str, &str)] = &[("RUST_LOG", "debug")];
    let mut hospitals: Vec<Process> = vec![
        hospital(d, 1, &addr, debug),
        shard_hospital(d, "h2", TASK, &addr, "2/3", &["--log-wire-payloads"], debug),
        hospital(d, 3, &addr, &[]),
    ];
    assert!(first.wait_exit(LONG).success(), "{}", first.log());
    assert_eq!(first.json()["tasks"][TASK]["status"], "finished");
    // No departures are reported for hospitals that stay behind a normal exit.
    assert_eq!(first.count(&["hospital departed"]), 0, "{}", first.log());
    for h in &hospitals {
        h.wait_for(&["the coordinator is shutting down normally"], 1, LONG);
        let log = h.log();
        assert!(!log.contains("coordinator gone"), "{}:\n{log}", h.name);
        // Each site keeps its own record of what it released (2 rounds).
        assert_eq!(
            h.count(&["released a model update: ", " bytes (differential privacy off)"]),
            2,
            "{}:\n{log}",
            h.name
        );
        let wire_debug = log
            .lines()
            .filter(|l| {
                l.contains("\"target\":\"ractor_cluster")
                    && (l.contains("\"DEBUG\"") || l.contains("\"TRACE\""))
            })
            .count();
        if h.name == "h2" {
            assert!(wire_debug > 0, "the flag lets them through:\n{log}");
            assert!(log.contains("do not keep these logs"), "{log}");
        } else {
            assert_eq!(wire_debug, 0, "{}:\n{log}", h.name);
        }
        assert!(!log.contains("did not accept"), "{}:\n{log}", h.name);
    }
    let second = coordinator(d, "coordinator-2", &addr, &[]);
    second.wait_for(&["hospital said hello"], HOSPITALS, LONG);
    for h in &mut hospitals {
        assert!(h.is_running());
    }
}

#[test]
fn a_hospital_waiting_for_a_coordinator_makes_a_bounded_number_of_attempts_in_flat_memory() {
    let secs: u64 = std::env::var("MEDFED_WAIT_TEST_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens there.
    let addr = format!("127.0.0.1:{}", free_port());
    // Each failed attempt logs one line (WARN for the first, then DEBUG).
    let mut h = hospital(d, 1, &addr, &[("RUST_LOG", "medfed=debug,info")]);
    h.wait_for(&["cannot reach the coordinator"], 1, LONG);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let (rss_before, threads_before) = footprint(h.pid());
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        assert!(h.is_running(), "{}", h.log());
    }
    let (rss_after, threads_after) = footprint(h.pid());
    // Errors in words, not Debug dumps.
    let log = h.log();
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("Os {"), "{log}");
    let attempts =
        h.count(&["cannot reach the coordinator"]) + h.count(&["still waiting for the coordinator"]);
    // Backoff from 0.2 s doubling to 10 s: about 8 attempts in the first 30 s,
    // then one per 10 s (the bound allows for scheduling delays).
    let bound = 10 + secs / 10;
    println!(
        "waited {secs} s: {attempts} attempts (bound {bound}); RSS {rss_before} -> {rss_after} kB; threads {threads_before} -> {threads_after}"
    );
    assert!(
        attempts >= 3 && attempts as u64 <= bound,
        "{attempts} attempts:\n{}",
        h.log()
    );
    assert!(
        threads_after <= threads_before + 1,
        "threads {threads_before} -> {threads_after}"
    );
    assert!(
        rss_after <= rss_before + rss_before / 5 + 4096,
        "RSS {rss_before} -> {rss_after} kB"
    );
    // It still joins once a coordinator appears.
    let c = coordinator(d, "coordinator", &addr, &[]);
    c.wait_for(&["hospital said hello"], 1, Duration::from_secs(60));
}
