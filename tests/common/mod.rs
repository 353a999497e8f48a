//! Helpers shared by the integration tests that run the real binary.

#[allow(dead_code)] // only the cluster tests start nodes
pub mod cluster;
#[allow(dead_code)] // only the MLflow tests track
pub mod mlflow;
#[allow(dead_code)] // only the web tests serve
pub mod server;
#[allow(dead_code)] // only the tests that need long rounds
pub mod synthetic;

use std::process::{Command, Output};

/// Generated data (the demo's synthetic X-rays) is cached under the build
/// directory, shared by all tests, never in the user's home.
pub const CACHE_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/medfed-cache");

/// A loopback port free right now, for a server a test starts later.
/// Taken below the kernel's ephemeral range (32768 and up here), where
/// outgoing connections take their ports: a port picked from that range
/// could be taken by some client's connection before the server binds it
/// (seen as "Address already in use" under parallel tests). Each call in a
/// process gets another port.
#[allow(dead_code)] // not every test binary uses it
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes running at once start apart.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = (LOW + offset) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN - 1)
}

/// Send SIGTERM, as a Kubernetes pod stop does.
#[allow(dead_code)] // only the shutdown tests send signals
pub fn sigterm(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) with a pid of a child this test started; no memory is shared.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill -TERM {pid}");
}

/// Wait for a child to exit by itself; kills it and panics after `timeout`.
#[allow(dead_code)] // not every test binary waits for exits
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
    what: &str,
    log: impl Fn() -> String,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("{what} did not exit within {timeout:?}; log:\n{}", log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Run `medfed` from the repository root with extra environment variables.
#[allow(dead_code)] // not every test binary uses it
pub fn medfed(args: &[&str], envs: &[(&str, &str)]) -> Output {
    // Durable state (ledgers, the store) in a directory of its own, never
    // the user's; a test that needs it to outlive the call passes its own.
    let data = tempfile::tempdir().expect("a data directory");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medfed"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env("MEDFED_RUN__CACHE_DIR", CACHE_DIR)
        .env("MEDFED_RUN__DATA_DIR", data.path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("medfed runs")
}

/// The one JSON object a successful `--json` command printed.
#[allow(dead_code)] // not every test binary uses it
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Whether an external program the test needs is installed. Missing with
/// MEDFED_REQUIRE_EXTERNAL=1 (as scripts/test sets): the test fails; else
/// it says it skips that part.
#[allow(dead_code)] // only the web tests need external programs
pub fn external_available(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!("{program} is required (MEDFED_REQUIRE_EXTERNAL=1); scripts/test installs it");
    }
    if !found {
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// The accuracy `medfed predict` printed for labelled input.
#[allow(dead_code)] // only the registry tests predict
pub fn predicted_accuracy(stderr: &[u8]) -> f64 {
    let err = String::from_utf8_lossy(stderr);
    err.split("accuracy ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("metrics printed: {err}"))
}

/// `promtool check metrics` on an exposition: it must parse and lint clean.
/// Skipped when promtool is missing and not required.
#[allow(dead_code)] // only the /metrics tests
pub fn promtool_check_metrics(text: &str) {
    if !external_available("promtool") {
        return;
    }
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
