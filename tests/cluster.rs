//! Cluster mode with real processes on 127.0.0.1: one `medfed coordinator`
//! and `medfed hospital` processes, each its own cluster node.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::cluster::{
    gen_certs, scrape, shard_hospital, spawn, tls_flags, tls_flags_trusting, Process, COOKIE,
};
use common::{free_port, json_of, medfed};
use serde_json::Value;

const TASK: &str = "breast_cancer";
const LONG: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn start_coordinator(dir: &Path, name: &str, addr: &str, extra: &[String], envs: &[(&str, &str)]) -> Process {
    let mut args: Vec<String> = owned(&["coordinator", "--task", TASK, "--listen", addr]);
    args.extend(extra.iter().cloned());
    let p = spawn(dir, name, &strs(&args), envs);
    p.wait_for(&["coordinator listening for hospitals"], 1, SHORT);
    p
}

fn start_hospital(
    dir: &Path,
    name: &str,
    addr: &str,
    shard: usize,
    extra: &[String],
    envs: &[(&str, &str)],
) -> Process {
    let shard = format!("{shard}/5");
    shard_hospital(dir, name, TASK, addr, &shard, &strs(extra), envs)
}

/// 1 coordinator + 5 hospital processes, 10 rounds, the run's JSON.
/// `tls`: (certificates directory) for mutual TLS. The hospitals start one
/// after another, in reverse order, with the shipped quorum (4 of 5): the
/// run waits for all five expected hospitals, so join timing changes nothing.
fn six_process_run(dir: &Path, tls: Option<&Path>) -> Value {
    six_process_run_with(dir, tls, &[], &[])
}

/// As `six_process_run`, with `flags` given to every process and `envs` to
/// the coordinator.
fn six_process_run_with(dir: &Path, tls: Option<&Path>, flags: &[&str], envs: &[(&str, &str)]) -> Value {
    let addr = format!("127.0.0.1:{}", free_port());
    let tls_of = |name: &str| {
        let mut f = tls.map(|c| tls_flags(c, name)).unwrap_or_default();
        f.extend(owned(flags));
        f
    };
    let mut extra: Vec<String> = owned(&["--rounds", "10", "--auto-start", "--exit-after-run", "--json"]);
    extra.extend(tls_of("coordinator"));
    let mut coordinator = start_coordinator(dir, "coordinator", &addr, &extra, envs);
    let mut hospitals = Vec::new();
    for i in (1..=5).rev() {
        let name = format!("h{i}");
        // Each certificate names its hospital (the shard's name).
        let tls = tls_of(&format!("{TASK}-{i}"));
        hospitals.push(start_hospital(dir, &name, &addr, i, &tls, &[]));
        let joined = 6 - i;
        coordinator.wait_for(&["hospital said hello"], joined, SHORT);
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = coordinator.wait_exit(LONG);
    assert!(
        status.success(),
        "coordinator failed: {status}; log:\n{}",
        coordinator.log()
    );
    assert_eq!(
        coordinator.count(&["hospital said hello"]),
        5,
        "{}",
        coordinator.log()
    );
    assert_eq!(
        coordinator.count(&["not every expected hospital joined"]),
        0,
        "{}",
        coordinator.log()
    );
    // Every envelope went on the sessions' direct streams, none through
    // ractor_cluster's frames.
    let sent = coordinator.messages_all_direct();
    assert!(sent > 50, "{sent} messages sent");
    coordinator.json()
}

fn in_process_run() -> Value {
    json_of(&medfed(&["run", "--task", TASK, "--rounds", "10", "--json"], &[]))
}

fn task(run: &Value) -> &Value {
    &run["tasks"][TASK]
}

/// Every round's held-out metrics are bit-identical (the model crosses the
/// wire bit-exactly and every hospital trains on the same shard and seed).
fn assert_same_rounds(cluster: &Value, local: &Value) {
    let (c, l) = (
        task(cluster)["rounds"].as_array().unwrap(),
        task(local)["rounds"].as_array().unwrap(),
    );
    assert_eq!(c.len(), 10);
    assert_eq!(c.len(), l.len());
    for (a, b) in c.iter().zip(l) {
        assert_eq!(a["participants"], 5);
        for key in ["accuracy", "loss", "auc", "f1"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "round {}: {key} {x} (cluster) vs {y} (in-process)",
                a["round"]
            );
        }
    }
}

/// A CA, the coordinator's certificate and one for each of the five shard
/// hospitals (`breast_cancer-1` ... `-5`).
fn five_hospital_certs() -> tempfile::TempDir {
    let certs = tempfile::tempdir().unwrap();
    let names: Vec<String> = (1..=5).map(|i| format!("{TASK}-{i}")).collect();
    gen_certs(certs.path(), &names.join(","));
    certs
}

/// The failpoint that has the coordinator write every update it receives
/// into `dir` (`FAILPOINTS`; only with `--features failpoints`).
fn update_tap(dir: &Path) -> String {
    format!("coordinator::tap_updates=return({})", dir.display())
}

/// What the coordinator process received of the hospitals' updates, by
/// kind (`plain`, `masked`): their 32-bit words.
fn tapped(dir: &Path) -> std::collections::BTreeMap<String, Vec<Vec<u32>>> {
    let mut by_kind = std::collections::BTreeMap::<String, Vec<Vec<u32>>>::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let kind = path.extension().unwrap().to_string_lossy().to_string();
        let words = std::fs::read(&path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        by_kind.entry(kind).or_default().push(words);
    }
    by_kind
}

/// Chi-square of the top bytes of `words` over 256 buckets; for uniform
/// words it exceeds 363 with probability 1e-5 (255 degrees of freedom).
fn top_byte_chi_square(words: &[u32]) -> f64 {
    let mut counts = [0f64; 256];
    for w in words {
        counts[(w >> 24) as usize] += 1.0;
    }
    let expected = words.len() as f64 / 256.0;
    counts.iter().map(|c| (c - expected).powi(2) / expected).sum()
}

#[test]
fn five_hospital_processes_reproduce_the_in_process_run() {
    let local = in_process_run();
    let dir = tempfile::tempdir().unwrap();
    let tap = tempfile::tempdir().unwrap();
    let tap_env = update_tap(tap.path());
    let cluster = six_process_run_with(dir.path(), None, &[], &[("FAILPOINTS", tap_env.as_str())]);
    assert_eq!(task(&cluster)["status"], "finished");
    assert_same_rounds(&cluster, &local);
    if cfg!(feature = "failpoints") {
        // Without secure aggregation the coordinator holds every update in
        // the clear: 10 rounds x 5 hospitals, far from uniform words.
        let tapped = tapped(tap.path());
        assert_eq!(tapped.keys().collect::<Vec<_>>(), ["plain"]);
        assert_eq!(tapped["plain"].len(), 50);
        let words: Vec<u32> = tapped["plain"].concat();
        assert!(top_byte_chi_square(&words) > 10_000.0);
    }
    // Federated evaluation is reported apart from the held-out metrics: the
    // hospitals' local test splits are an IID partition of the held-out set,
    // so their pooled confusion matrix gives exactly the held-out accuracy.
    let fed = &task(&cluster)["final_federated"];
    assert_eq!(fed["requested"], 5);
    assert_eq!(fed["evaluated"], 5);
    assert_eq!(
        fed["examples"],
        task(&cluster)["rounds"][9]["federated"]["examples"]
    );
    assert_eq!(fed["pooled"]["accuracy"], task(&cluster)["final"]["accuracy"]);
    assert_eq!(fed["accuracy_by_hospital"].as_object().unwrap().len(), 5);
}

/// Secure aggregation across six processes, plain and over mutual TLS:
/// every round sums all five hospitals and ends where the plain in-process
/// run does (within half a point of accuracy), and the coordinator process
/// never holds a hospital's own update: every update that reaches its
/// gateway is a masked vector whose words are indistinguishable from
/// uniform (the same check fails by far on the plain run's updates, in
/// `five_hospital_processes_reproduce_the_in_process_run`).
#[test]
fn secure_aggregation_across_processes_matches_the_plain_run() {
    let local = in_process_run();
    let plain_accuracy = task(&local)["final"]["accuracy"].as_f64().unwrap();
    let certs = five_hospital_certs();
    for tls in [None, Some(certs.path())] {
        let dir = tempfile::tempdir().unwrap();
        let tap = tempfile::tempdir().unwrap();
        let envs = [("FAILPOINTS", update_tap(tap.path()))];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = six_process_run_with(dir.path(), tls, &["--secure-aggregation"], &envs);
        if cfg!(feature = "failpoints") {
            let tapped = tapped(tap.path());
            assert_eq!(tapped.keys().collect::<Vec<_>>(), ["masked"]);
            assert_eq!(tapped["masked"].len(), 50);
            let words: Vec<u32> = tapped["masked"].concat();
            let chi = top_byte_chi_square(&words);
            assert!(chi < 363.0, "chi-square {chi:.1} of {} words", words.len());
        }
        let t = task(&run);
        assert_eq!(t["status"], "finished", "{t}");
        let rounds = t["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 10);
        assert!(rounds.iter().all(|r| r["participants"] == 5), "{t}");
        let accuracy = t["final"]["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - plain_accuracy).abs() <= 0.005,
            "secure {accuracy} vs plain {plain_accuracy} (tls: {})",
            tls.is_some()
        );
    }
}

/// Under mutual TLS each hospital signs its setup keys with its TLS key and
/// checks its peers'. A coordinator that substitutes one hospital's keys
/// (played by a failpoint, in the first attempt only) is refused by every
/// other hospital before any share leaves it; the attempt fails and the
/// round is run again with fresh keys.
#[cfg(feature = "failpoints")]
#[test]
fn substituted_setup_keys_are_refused_under_mutual_tls() {
    let certs = five_hospital_certs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut extra = owned(&[
        "--rounds",
        "2",
        "--auto-start",
        "--exit-after-run",
        "--json",
        "--secure-aggregation",
    ]);
    extra.extend(tls_flags(certs.path(), "coordinator"));
    let envs = [("FAILPOINTS", "coordinator::substitute_setup_keys=1*return->off")];
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &extra, &envs);
    let hospitals: Vec<Process> = (1..=5)
        .map(|i| {
            let mut flags = tls_flags(certs.path(), &format!("{TASK}-{i}"));
            flags.push("--secure-aggregation".into());
            start_hospital(d, &format!("h{i}"), &addr, i, &flags, &[])
        })
        .collect();
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    assert_eq!(
        coordinator.count(&["test failpoint: substituting this hospital's setup keys"]),
        1,
        "{}",
        coordinator.log()
    );
    let refusals: usize = hospitals
        .iter()
        .map(|h| {
            h.count(&[
                "released nothing",
                "are not its own: the signature does not verify",
            ])
        })
        .sum();
    assert_eq!(refusals, 4, "every other hospital refused the substituted keys");
    for h in &hospitals {
        assert!(
            h.count(&["public keys for the round, signed with its TLS identity"]) >= 3,
            "{}",
            h.log()
        );
    }
    let run = coordinator.json();
    let t = task(&run);
    assert_eq!(t["status"], "finished", "{t}");
    assert!(
        t["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["participants"] == 5),
        "{t}"
    );
}

/// The case Flower's SecAgg+ fails: a hospital SIGKILLed after it shared
/// its keys, while it trains. Its pairwise masks are removed with its
/// rebuilt mask key and the round completes over the four others, in one
/// attempt, and the model goes on learning.
#[test]
fn a_hospital_killed_during_secure_training_leaves_the_round_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    // A SYNTHETIC dataset (9,600 training rows per hospital) and 40 local
    // epochs: local training lasts about a second, to be killed inside it;
    // a quorum of 4 of 5.
    let config = common::synthetic::tabular_config(d, 4).display().to_string();
    let envs = [
        ("MEDFED_TASKS__SYNTHETIC__MIN_HOSPITALS", "0.8"),
        ("MEDFED_TASKS__SYNTHETIC__TRAINING__LOCAL_EPOCHS", "40"),
    ];
    let coordinator_args = [
        "coordinator",
        "--config",
        &config,
        "--task",
        "synthetic",
        "--listen",
        &addr,
        "--auto-start",
        "--exit-after-run",
        "--json",
        "--secure-aggregation",
    ];
    let mut coordinator = spawn(d, "coordinator", &coordinator_args, &envs);
    coordinator.wait_for(&["coordinator listening for hospitals"], 1, SHORT);
    let mut hospitals: Vec<Process> = (1..=5)
        .map(|i| {
            let extra = ["--config", &config, "--secure-aggregation"];
            shard_hospital(
                d,
                &format!("h{i}"),
                "synthetic",
                &addr,
                &format!("{i}/5"),
                &extra,
                &envs,
            )
        })
        .collect();
    // Its shares for round 2 are out: it is now training.
    hospitals[2].wait_for(&["released encrypted key shares"], 2, LONG);
    std::thread::sleep(Duration::from_millis(100));
    hospitals[2].kill();
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    let run = coordinator.json();
    let t = &run["tasks"]["synthetic"];
    assert_eq!(t["status"], "finished", "{t}");
    let participants: Vec<u64> = t["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["participants"].as_u64().unwrap())
        .collect();
    assert_eq!(participants, vec![5, 4, 4, 4], "{}", coordinator.log());
    // Round 2 unmasked with the dead hospital's masks removed, without a retry.
    assert_eq!(
        coordinator.count(&["secure sum unmasked", "\"round\":2", "\"dropped\":1"]),
        1,
        "{}",
        coordinator.log()
    );
    assert_eq!(
        coordinator.count(&["attempt ended below quorum"]),
        0,
        "{}",
        coordinator.log()
    );
    // 0.91 here; 0.5 is chance on this balanced synthetic set.
    assert!(t["final"]["accuracy"].as_f64().unwrap() > 0.85, "{t}");
}

#[test]
fn a_killed_hospital_is_counted_out_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    // Longer local training, so that rounds last long enough to kill a
    // hospital in the middle of one (quorum stays the demo's 4 of 5).
    let envs = [("MEDFED_TASKS__BREAST_CANCER__TRAINING__LOCAL_EPOCHS", "1000")];
    let extra: Vec<String> = owned(&["--rounds", "12", "--auto-start", "--exit-after-run", "--json"]);
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &extra, &envs);
    let mut hospitals: Vec<Process> = (1..=5)
        .map(|i| start_hospital(d, &format!("h{i}"), &addr, i, &[], &envs))
        .collect();
    coordinator.wait_for(&["round aggregated", "\"round\":2,"], 1, LONG);
    hospitals[2].kill();
    coordinator.wait_for(&["hospital departed", "breast_cancer-3"], 1, SHORT);
    let _back = start_hospital(d, "h3-restarted", &addr, 3, &[], &envs);
    coordinator.wait_for(&["hospital said hello", "breast_cancer-3"], 2, SHORT);
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    let run = coordinator.json();
    let t = task(&run);
    assert_eq!(t["status"], "finished", "{t}");
    assert!(t["departures"].as_u64().unwrap() >= 1, "{t}");
    let participants: Vec<u64> = t["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["participants"].as_u64().unwrap())
        .collect();
    eprintln!("participants per round: {participants:?}");
    assert_eq!(participants.len(), 12);
    let killed_round = participants.iter().position(|&p| p == 4);
    assert!(
        killed_round.is_some(),
        "a round closed with the 4 left: {participants:?}"
    );
    assert_eq!(
        participants.last(),
        Some(&5),
        "the restarted hospital took part again: {participants:?}"
    );
    assert!(participants[killed_round.unwrap()..].contains(&5));
}

#[test]
fn hospitals_reconnect_after_the_coordinator_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut first = start_coordinator(d, "coordinator-1", &addr, &[], &[]);
    let hospitals: Vec<Process> = (1..=5)
        .map(|i| start_hospital(d, &format!("h{i}"), &addr, i, &[], &[]))
        .collect();
    first.wait_for(&["hospital said hello"], 5, LONG);
    first.kill();
    for h in &hospitals {
        h.wait_for(&["coordinator gone: reconnecting"], 1, SHORT);
    }
    let extra: Vec<String> = owned(&["--rounds", "3", "--auto-start", "--exit-after-run", "--json"]);
    let mut second = start_coordinator(
        d,
        "coordinator-2",
        &addr,
        &extra,
        &[("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "5")],
    );
    let status = second.wait_exit(LONG);
    assert!(status.success(), "{}", second.log());
    assert_eq!(second.count(&["hospital said hello"]), 5);
    let run = second.json();
    assert_eq!(task(&run)["status"], "finished");
    assert_eq!(task(&run)["rounds"][2]["participants"], 5);
}

#[test]
fn a_node_with_the_wrong_cookie_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &[], &[]);
    let mut intruder = start_hospital(
        d,
        "intruder",
        &addr,
        1,
        &[],
        &[("MEDFED_CLUSTER_COOKIE", "nOt-the-Cookie/7Hq2xVw9Lp4Rz8Kd1Mb")],
    );
    let status = intruder.wait_exit(SHORT);
    assert!(!status.success());
    // The coordinator proves the cookie first: the intruder learns it
    // differs and answers nothing the coordinator could check.
    assert!(
        intruder
            .log()
            .contains("did not prove it holds the cluster cookie"),
        "{}",
        intruder.log()
    );
    coordinator.wait_for(&["ended before authenticating"], 1, SHORT);
    assert_eq!(coordinator.count(&["hospital said hello"]), 0);
    assert!(coordinator.is_running());

    // No cookie at all: neither side starts.
    for command in [
        vec!["coordinator", "--task", TASK, "--listen", "127.0.0.1:1"],
        vec![
            "hospital",
            "--task",
            TASK,
            "--coordinator",
            &addr,
            "--shard",
            "1/5",
        ],
    ] {
        let out = medfed(&command, &[("MEDFED_CLUSTER_COOKIE", "")]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cluster mode needs a cookie"), "{err}");
    }
}

#[test]
fn a_duplicate_hospital_name_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let coordinator = start_coordinator(d, "coordinator", &addr, &["--http".into(), http.clone()], &[]);
    let _first = start_hospital(d, "h1", &addr, 1, &[], &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);
    // The control panel's API shows the cluster hospital and its node. Its
    // token was generated into the coordinator's own token file (stderr is
    // not a terminal, so it is not in the log) and reads need it.
    let port = http.rsplit(':').next().unwrap();
    let token_file = d.join(format!("coordinator.data/tokens/coordinator-{port}.token"));
    let token = std::fs::read_to_string(&token_file).expect("the generated token file");
    let token = token.trim();
    assert!(!coordinator.log().contains(token), "the token is never logged");
    assert!(coordinator.log().contains(&token_file.display().to_string()));
    let url = format!("http://{http}/api/hospitals");
    assert_eq!(reqwest::blocking::get(&url).unwrap().status(), 401);
    let hospitals: Value = reqwest::blocking::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .and_then(|r| r.json())
        .expect("the coordinator serves /api/hospitals");
    let text = hospitals.to_string();
    assert!(
        text.contains("breast_cancer-1") && text.contains("at 127.0.0.1:"),
        "{text}"
    );
    let mut twin = start_hospital(
        d,
        "twin",
        &addr,
        2,
        &["--name".into(), "breast_cancer-1".into()],
        &[],
    );
    let status = twin.wait_exit(SHORT);
    assert!(!status.success());
    // Refused at the cluster handshake: the first session is active.
    assert!(
        twin.log()
            .contains("hospital breast_cancer-1 is already connected from another session"),
        "{}",
        twin.log()
    );
    coordinator.wait_for(&["refused a cluster connection", "duplicate_session"], 1, SHORT);
    // The coordinator's audit log has the admission and the refusal.
    let audit = std::fs::read_to_string(d.join("coordinator.data/audit-coordinator.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"hospital_admitted\""), "{audit}");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"action\":\"cluster_connection_refused\"")
                && l.contains("duplicate_session")),
        "{audit}"
    );

    // A shard split with another seed could hold the coordinator's held-out rows.
    let mut other_split = start_hospital(d, "other-split", &addr, 3, &["--seed".into(), "7".into()], &[]);
    assert!(!other_split.wait_exit(SHORT).success());
    assert!(
        other_split.log().contains("split from a different held-out set"),
        "{}",
        other_split.log()
    );
}

#[test]
fn mutual_tls_refuses_plaintext_and_foreign_certificates_and_runs_the_federation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    let rogue = d.join("rogue");
    for (out, hospitals) in [
        (
            &certs,
            "breast_cancer-1,breast_cancer-2,breast_cancer-3,breast_cancer-4,breast_cancer-5",
        ),
        (&rogue, "breast_cancer-2"),
    ] {
        gen_certs(out, hospitals);
    }
    let ca = certs.join("ca.pem");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut coordinator = start_coordinator(
        d,
        "coordinator",
        &addr,
        &tls_flags_trusting(&certs, &ca, "coordinator"),
        &[],
    );
    // A plaintext node, and one whose certificate another CA signed (it
    // trusts the right CA, so only the coordinator's check can stop it).
    let mut plaintext = start_hospital(d, "plaintext", &addr, 1, &[], &[]);
    let mut foreign = start_hospital(
        d,
        "foreign",
        &addr,
        2,
        &tls_flags_trusting(&rogue, &ca, "breast_cancer-2"),
        &[],
    );
    for p in [&mut plaintext, &mut foreign] {
        let status = p.wait_exit(SHORT);
        assert!(!status.success(), "{} was let in:\n{}", p.name, p.log());
    }
    // Throttled per kind and source: one line for both (both from 127.0.0.1).
    coordinator.wait_for(
        &["refused a cluster connection", "TLS handshake failed"],
        1,
        SHORT,
    );
    assert_eq!(coordinator.count(&["hospital said hello"]), 0);
    assert!(coordinator.is_running());
    drop(coordinator);

    std::fs::create_dir_all(d.join("run")).unwrap();
    let run = six_process_run(&d.join("run"), Some(&certs));
    assert_same_rounds(&run, &in_process_run());
}

#[test]
fn garbage_on_the_cluster_port_and_bad_frames_do_not_crash_the_coordinator() {
    use medfed_actors::cluster::gate::Identity;
    use medfed_actors::cluster::node::{self, NodeOptions};
    use medfed_actors::cluster::{Envelope, COORDINATOR_GROUP};
    use medfed_actors::wire::Frame;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", free_port());
    let extra: Vec<String> = owned(&[
        "--rounds",
        "3",
        "--auto-start",
        "--exit-after-run",
        "--json",
        "--http",
        &http,
    ]);
    let mut coordinator = start_coordinator(
        d,
        "coordinator",
        &addr,
        &extra,
        &[("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "5")],
    );
    // Below the cluster protocol: random bytes, a truncated frame, a frame
    // claiming 1 TiB, and a well-sized frame of garbage.
    let garbage: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut truncated = 1000u64.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[7; 10]);
    let mut huge = (1u64 << 40).to_be_bytes().to_vec();
    huge.extend_from_slice(&[1; 64]);
    let mut junk_protobuf = 32u64.to_be_bytes().to_vec();
    junk_protobuf.extend_from_slice(&[0xff; 32]);
    for bytes in [garbage, truncated, huge, junk_protobuf] {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&bytes);
        drop(s);
    }
    // Inside an authenticated session: envelopes that are not medfed frames.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let prober_id = Identity::Hospital("prober".into());
        let (prober, _events) = node::start(NodeOptions::new(
            format!("{}0123456789abcdef", prober_id.node_name_prefix()),
            prober_id,
            COOKIE.into(),
        ))
        .await
        .unwrap();
        prober.connect(&addr).await.unwrap();
        let gateway = loop {
            if let Some(c) = ractor::pg::get_members(&COORDINATOR_GROUP.to_string())
                .into_iter()
                .find(|c| !c.get_id().is_local())
            {
                break ractor::ActorRef::<Envelope>::from(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let good = Frame {
            kind: 1,
            payload: b"\x02\x00\x00\x00{}".to_vec(),
        }
        .encode()
        .unwrap();
        let mut bad_checksum = good.clone();
        *bad_checksum.last_mut().unwrap() ^= 1;
        for bytes in [
            b"definitely not a frame".to_vec(),
            good[..good.len() - 3].to_vec(),
            bad_checksum,
            good, // a frame, but its header is not a medfed message
        ] {
            gateway.cast(Envelope::new(bytes)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        prober.stop();
    });
    coordinator.wait_for(&["dropped an inbound cluster frame"], 4, SHORT);
    for reason in ["bad_magic", "truncated", "bad_checksum", "malformed"] {
        assert_eq!(
            coordinator.count(&["dropped an inbound cluster frame", reason]),
            1,
            "{reason}:\n{}",
            coordinator.log()
        );
    }
    assert!(coordinator.is_running());
    // The drops are on /metrics too, by reason.
    let metrics = scrape(&http);
    for reason in ["bad_magic", "truncated", "bad_checksum", "malformed"] {
        let line = format!("medfed_cluster_frames_dropped_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "no '{line}' in:\n{metrics}");
    }
    assert!(metrics.contains("medfed_cluster_bytes_total{direction=\"received\"}"));
    // The gate's view: the raw garbage never got past the handshake, the
    // prober's session did.
    for line in [
        "medfed_cluster_handshakes_refused_total{reason=\"not_medfed\"}",
        "medfed_cluster_sessions_accepted_total 1",
        "medfed_cluster_connections_authenticating 0",
    ] {
        assert!(metrics.contains(line), "no '{line}' in:\n{metrics}");
    }
    // And it still runs a federation.
    let _hospitals: Vec<Process> = (1..=5)
        .map(|i| start_hospital(d, &format!("h{i}"), &addr, i, &[], &[]))
        .collect();
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    assert_eq!(task(&coordinator.json())["status"], "finished");
    assert!(
        coordinator.log().contains("bad_magic"),
        "the traffic summary counts drops"
    );
}

#[test]
fn bad_cluster_flags_are_refused_with_the_reason() {
    let cases: [(&[&str], &str); 8] = [
        // Markup in a name is refused before any data is read.
        (
            &[
                "hospital",
                "--task",
                TASK,
                "--shard",
                "1/5",
                "--name",
                "<img src=x onerror=document.title=1>",
            ],
            "hospital name \"<img src=x onerror=document.title=1>\" is not allowed: use 1 to 64 characters",
        ),
        (
            &[
                "coordinator",
                "--task",
                TASK,
                "--http",
                "127.0.0.1:0",
                "--http-tls-cert",
                "x.pem",
            ],
            "--http-tls-cert needs --http-tls-key",
        ),
        (
            &["coordinator", "--task", TASK, "--tls-cert", "x.pem"],
            "missing --tls-key, --tls-ca",
        ),
        (
            &[
                "coordinator",
                "--task",
                TASK,
                "--tls-cert",
                "no.pem",
                "--tls-key",
                "no.pem",
                "--tls-ca",
                "no.pem",
            ],
            "no.pem",
        ),
        (&["hospital", "--task", TASK], "this hospital has no data"),
        (&["hospital", "--task", TASK, "--shard", "6/5"], "expected I/K"),
        (
            &[
                "hospital",
                "--task",
                TASK,
                "--data",
                "data/breast_cancer_wisconsin.csv",
            ],
            "--name is required",
        ),
        (
            &[
                "cluster",
                "gen-certs",
                "--out",
                "/tmp/unused",
                "--hospitals",
                "a/b",
            ],
            "hospital name \"a/b\" is not allowed",
        ),
    ];
    for (args, expected) in cases {
        let out = medfed(args, &[("MEDFED_CLUSTER_COOKIE", COOKIE)]);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn hospitals_with_their_own_csv_files_train_and_evaluate_locally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two sites' files: the shipped rows dealt alternately (header kept).
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/breast_cancer_wisconsin.csv"
    ))
    .unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let (mut a, mut b) = (vec![header], vec![header]);
    for (i, line) in lines.enumerate() {
        if i % 2 == 0 {
            a.push(line)
        } else {
            b.push(line)
        }
    }
    let rows_a = a.len() - 1;
    for (name, rows) in [("site-a.csv", &a), ("site-b.csv", &b)] {
        std::fs::write(d.join(name), rows.join("\n") + "\n").unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    // Two sites: the coordinator expects two (it waits for them both).
    let extra: Vec<String> = owned(&[
        "--rounds",
        "3",
        "--hospitals",
        "2",
        "--auto-start",
        "--exit-after-run",
        "--json",
    ]);
    let envs = [("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "2")];
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &extra, &envs);
    let _sites: Vec<Process> = ["site-a", "site-b"]
        .iter()
        .map(|site| {
            let file = d.join(format!("{site}.csv")).display().to_string();
            let args = [
                "hospital",
                "--task",
                TASK,
                "--coordinator",
                &addr,
                "--name",
                site,
                "--data",
                &file,
            ];
            spawn(d, site, &args, &envs)
        })
        .collect();
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    let run = coordinator.json();
    let t = task(&run);
    assert_eq!(t["status"], "finished");
    assert_eq!(t["hospitals"], 2);
    assert_eq!(t["rounds"][2]["participants"], 2);
    assert!(t["final"]["accuracy"].as_f64().unwrap() > 0.9, "{t}");
    // Each site's local test split is 20% of its own file (stratified).
    let fed = &t["final_federated"];
    assert_eq!(fed["evaluated"], 2);
    let examples = fed["examples"].as_u64().unwrap() as f64;
    let expected = 0.2 * (rows_a + b.len() - 1) as f64;
    assert!(
        (examples - expected).abs() <= 2.0,
        "{examples} local test rows, expected ~{expected}"
    );
    assert!(fed["accuracy_by_hospital"]["site-a"].as_f64().is_some(), "{fed}");
}

#[test]
fn an_attacking_hospital_process_declares_itself_and_the_median_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = owned(&[
        "--rounds",
        "5",
        "--strategy",
        "median",
        "--auto-start",
        "--exit-after-run",
        "--json",
    ]);
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &extra, &[]);
    let hospitals: Vec<Process> = (1..=5)
        .map(|i| {
            let attack = if i == 2 {
                owned(&["--attack", "sign_flip:10"])
            } else {
                Vec::new()
            };
            start_hospital(d, &format!("h{i}"), &addr, i, &attack, &[])
        })
        .collect();
    let status = coordinator.wait_exit(LONG);
    assert!(status.success(), "{}", coordinator.log());
    assert_eq!(
        hospitals[1].count(&["THIS HOSPITAL ATTACKS THE FEDERATION (sign_flip:10)"]),
        1,
        "{}",
        hospitals[1].log()
    );
    assert_eq!(
        coordinator.count(&["declaring that it simulates an attack", "breast_cancer-2"]),
        1,
        "{}",
        coordinator.log()
    );
    let run = coordinator.json();
    let t = task(&run);
    assert_eq!(
        t["attacks"],
        serde_json::json!({ "breast_cancer-2": "sign_flip:10" })
    );
    assert_eq!(t["status"], "finished");
    assert!(t["final"]["accuracy"].as_f64().unwrap() > 0.9, "{t}");
}

/// A cluster hospital keeps its ledger under its data directory by default:
/// restarted, it carries on from what it spent, and a restarted coordinator
/// reports that spending from the hospitals' hellos and updates.
#[test]
fn spent_budgets_survive_restarts_of_hospitals_and_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let dp = owned(&["--config", "config/dp.toml"]);
    let run_args = |rounds: &str| {
        let mut a = dp.clone();
        a.extend(owned(&[
            "--rounds",
            rounds,
            "--auto-start",
            "--exit-after-run",
            "--json",
        ]));
        a
    };
    let all = [("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "5")];
    let mut first = start_coordinator(d, "coordinator-1", &addr, &run_args("2"), &all);
    let mut hospitals: Vec<Process> = (1..=5)
        .map(|i| start_hospital(d, &format!("h{i}"), &addr, i, &dp, &[]))
        .collect();
    assert!(first.wait_exit(LONG).success(), "{}", first.log());
    let spent = |run: &Value, h: &str| task(run)["privacy"]["epsilon_spent"][h].as_f64().unwrap();
    let after_two = spent(&first.json(), "breast_cancer-1");
    assert!(after_two > 0.0);
    // Hospital 1 restarts (same data directory), then the coordinator.
    hospitals[0].kill();
    hospitals[0] = start_hospital(d, "h1", &addr, 1, &dp, &[]);
    let mut second = start_coordinator(d, "coordinator-2", &addr, &run_args("1"), &all);
    assert!(second.wait_exit(LONG).success(), "{}", second.log());
    let run = second.json();
    assert_eq!(task(&run)["status"], "finished");
    let after_three = spent(&run, "breast_cancer-1");
    assert!(
        after_three > after_two,
        "a restarted hospital starts from its ledger: {after_three} after {after_two}"
    );
    // Its noise leaves room for rounds replayed after a coordinator crash.
    assert_eq!(hospitals[0].count(&["privacy calibrated", "\"replays\":2"]), 1);
    // It recalibrated its noise for what is left of its budget.
    assert!(after_three <= 3.0 + 1e-9);
}

/// `medfed hospital --http`: health at once, ready only while connected and
/// admitted, and `medfed_hospital_*` metrics that promtool accepts and that
/// count what the hospital trained, sent and spent.
#[test]
fn a_hospital_serves_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let dp = owned(&["--config", "config/dp.toml"]);
    let mut with_http = dp.clone();
    with_http.extend(owned(&["--http", &http]));
    let mut h1 = start_hospital(d, "h1", &addr, 1, &with_http, &[]);
    let get = |path: &str| {
        reqwest::blocking::get(format!("http://{http}{path}"))
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let wait_status = |path: &str, want: u16| {
        let deadline = std::time::Instant::now() + SHORT;
        while get(path) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never answered {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_status("/healthz", 200);
    assert_eq!(get("/readyz"), 503, "no coordinator yet: not ready");
    assert_eq!(get("/nowhere"), 404);

    let mut args = dp.clone();
    args.extend(owned(&["--rounds", "2", "--auto-start"]));
    let all = [("MEDFED_TASKS__BREAST_CANCER__MIN_HOSPITALS", "5")];
    let mut coordinator = start_coordinator(d, "coordinator", &addr, &args, &all);
    let _others: Vec<Process> = (2..=5)
        .map(|i| start_hospital(d, &format!("h{i}"), &addr, i, &dp, &[]))
        .collect();
    wait_status("/readyz", 200);
    coordinator.wait_for(&["run ended", "finished"], 1, LONG);

    let text = scrape(&http);
    common::promtool_check_metrics(&text);
    let value = |series: &str| {
        common::cluster::metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("medfed_hospital_rounds_trained_total"), 2.0);
    assert_eq!(value("medfed_hospital_updates_sent_total"), 2.0);
    assert_eq!(value("medfed_hospital_updates_declined_total"), 0.0);
    assert_eq!(value("medfed_hospital_training_seconds_count"), 2.0);
    assert_eq!(value("medfed_hospital_ready"), 1.0);
    assert_eq!(value("medfed_hospital_epsilon_budget"), 3.0);
    let spent = value("medfed_hospital_epsilon_spent");
    assert!(spent > 0.0 && spent <= 3.0, "epsilon spent {spent}");
    // The ledger was bound to its budget, charged for the released count
    // and for each round's update.
    assert!(value("medfed_hospital_ledger_writes_total") >= 3.0, "{text}");
    assert!(value("medfed_hospital_sent_bytes_total") > 0.0);
    assert!(value("medfed_hospital_received_bytes_total") > 0.0);
    assert!(text.contains(
        "medfed_hospital_info{hospital=\"breast_cancer-1\",task=\"breast_cancer\",kind=\"tabular\"} 1"
    ));
    // Every series the hospital dashboard queries is exported.
    let dashboard = std::fs::read_to_string("k8s/grafana/dashboards/hospital.json").unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    for target in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
    {
        let expr = target["expr"].as_str().unwrap();
        // (medfed_tls_* needs TLS: tests/cluster_security.rs checks it.)
        for (at, _) in expr.match_indices("medfed_hospital_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                text.contains(&format!("\n{name}")),
                "the hospital dashboard queries {name}, which /metrics does not export"
            );
        }
    }
    // DP withholds local metrics: nothing about accuracy or loss here.
    assert!(!text.contains("accuracy") && !text.contains("loss"), "{text}");

    // The coordinator goes: the hospital stays alive but is no longer ready.
    coordinator.kill();
    wait_status("/readyz", 503);
    assert_eq!(get("/healthz"), 200);
    h1.kill();
}
