//! The Kubernetes manifests (k8s/), tested without a cluster the strongest
//! honest way available: every overlay rendered, validated against the
//! Kubernetes 1.32 schemas, linted by checkov and checked object by object
//! (tests/kubernetes/check_manifests.py); then the rendered pods run as the
//! real image under podman, each in its own network namespace, with
//! Services, probes, Secrets and NetworkPolicies applied as a kubelet and
//! kube-proxy would (tests/kubernetes/podrunner.py, scenarios.py).
//!
//! Needs root, podman, runc, mmdebstrap, kubectl, promtool and the tools
//! venv (kubernetes-validate, checkov, PyYAML); scripts/test installs them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One pod runner at a time (they share the bridge, iptables chains and
/// image tags).
static RUNNER: Mutex<()> = Mutex::new(());

const BINARY: &str = env!("CARGO_BIN_EXE_medfed");

/// The tools venv's bin/ (MEDFED_K8S_TOOLS, else the cached venv).
fn tools() -> Option<PathBuf> {
    let dir = std::env::var_os("MEDFED_K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/medfed/venvs/k8s-tools/bin")
        });
    if dir.join("python").exists() && dir.join("checkov").exists() {
        return Some(dir);
    }
    if std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!(
            "the Kubernetes tools venv is missing at {} (scripts/test installs it)",
            dir.display()
        );
    }
    eprintln!("SKIPPED: no Kubernetes tools venv at {}", dir.display());
    None
}

/// How to run the pod runner: directly as root, else through `sudo -n`
/// (network namespaces and iptables need root); `None`: it cannot run.
fn as_root() -> Option<Vec<String>> {
    let tools = [
        "podman",
        "runc",
        "mmdebstrap",
        "promtool",
        "prometheus",
        "kubectl",
    ]
    .iter()
    .all(|p| common::external_available(p));
    if !tools {
        return None;
    }
    // SAFETY: geteuid(2) only reads the process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        return Some(Vec::new());
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if sudo {
        return Some(["sudo", "-n", "-E"].map(String::from).to_vec());
    }
    if std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!("the pod runner needs root or passwordless sudo (network namespaces, iptables)");
    }
    eprintln!("SKIPPED: the pod runner needs root or passwordless sudo");
    None
}

/// Run `script args...` with the venv's Python (behind `prefix`, e.g.
/// sudo); panics with its output on failure. Returns the last stdout line
/// (the script's JSON report).
fn python(
    prefix: &[String],
    tools: &std::path::Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
) -> serde_json::Value {
    let python = tools.join("python");
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&python);
            c
        }
        None => Command::new(&python),
    };
    let mut child = command
        .arg(format!(
            "{}/tests/kubernetes/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let started = Instant::now();
    let output = loop {
        if child.try_wait().unwrap().is_some() || started.elapsed() > timeout {
            if started.elapsed() > timeout {
                let _ = child.kill();
            }
            break child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} {} failed ({:?} after {:.0} s):\n{stdout}\n{stderr}",
        args.join(" "),
        output.status,
        started.elapsed().as_secs_f64()
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: no JSON report ({e}):\n{stdout}"));
    println!("{report}");
    report
}

#[test]
fn every_overlay_renders_validates_lints_clean_and_holds_together() {
    let Some(tools) = tools() else { return };
    if !common::external_available("kubectl") || !common::external_available("promtool") {
        return;
    }
    // Not a hidden directory: checkov skips those.
    let work = tempfile::Builder::new().prefix("medfed-k8s-").tempdir().unwrap();
    let report = python(
        &[],
        &tools,
        "check_manifests.py",
        &[
            "--medfed",
            BINARY,
            "--tools",
            tools.to_str().unwrap(),
            "--workdir",
            work.path().to_str().unwrap(),
        ],
        Duration::from_secs(600),
    );
    for overlay in ["local-test", "tls", "prod", "site"] {
        let checkov = &report["overlays"][overlay]["checkov"];
        assert_eq!(checkov["failed"], 0, "{overlay}: {report}");
        assert!(checkov["passed"].as_u64().unwrap() > 50, "{overlay}: {report}");
    }
    assert_eq!(report["argocd_applications"], 4);
}

fn scenario(name: &str) -> serde_json::Value {
    let Some(tools) = tools() else {
        return serde_json::Value::Null;
    };
    let Some(prefix) = as_root() else {
        return serde_json::Value::Null;
    };
    let _one_at_a_time = RUNNER.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    python(
        &prefix,
        &tools,
        "scenarios.py",
        &[
            "--binary",
            BINARY,
            "--workdir",
            work.path().to_str().unwrap(),
            name,
        ],
        Duration::from_secs(600),
    )
}

#[test]
fn the_local_test_overlay_runs_a_whole_federation_with_every_pod_ready() {
    let report = scenario("local-test");
    if !report.is_null() {
        assert!(report["dashboard_queries"].as_u64().unwrap() > 30, "{report}");
    }
}

#[test]
fn the_tls_overlay_runs_a_whole_federation_over_mutual_tls() {
    scenario("tls");
}

#[test]
fn a_coordinator_pod_deleted_mid_run_resumes_the_run_on_its_volume() {
    let report = scenario("coordinator-restart");
    if !report.is_null() {
        assert!(report["resumed_at_round"].as_u64().unwrap() > 1, "{report}");
    }
}

#[test]
fn a_hospital_pod_deleted_mid_run_rejoins_with_its_privacy_ledger() {
    scenario("hospital-restart");
}

#[test]
fn a_hospital_listening_on_loopback_never_gets_ready() {
    scenario("loopback-http");
}

#[test]
fn a_coordinator_certificate_without_the_service_name_is_refused() {
    scenario("cert-without-service-name");
}

/// The pod runner's Kubernetes semantics (selectors, env sources, policy
/// evaluation, Service names), without root or containers.
#[test]
fn the_pod_runner_follows_kubernetes_semantics() {
    let Some(tools) = tools() else { return };
    let out = Command::new(tools.join("python"))
        .args(["-m", "unittest", "-v", "test_podrunner"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubernetes"))
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MLflow component's server arguments, probe and the coordinator's
/// tracking URI, run against the real MLflow server (its image cannot be
/// obtained here, so the pod runner cannot run it).
#[test]
fn the_mlflow_component_works_with_the_real_server() {
    let Some(tools) = tools() else { return };
    let Some(mlflow) = common::mlflow::program() else {
        assert!(
            std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "MLflow is required (scripts/test installs it)"
        );
        eprintln!("SKIPPED: MLflow is not installed");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let report = python(
        &[],
        &tools,
        "mlflow_args.py",
        &[
            "--mlflow",
            mlflow.to_str().unwrap(),
            "--workdir",
            work.path().to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    assert_eq!(report["tracking_uri"], "http://mlflow:5000/mlflow");
}
