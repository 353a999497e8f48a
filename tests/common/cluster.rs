//! Real `medfed coordinator` / `medfed hospital` processes on 127.0.0.1,
//! logging JSON lines to files the tests read; killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::CACHE_DIR;

/// Strong enough for the gate (128+ bits estimated); the same in every test.
pub const COOKIE: &str = "tE5t-Cluster-c00kie/9fQ2xLw7Rb4Kz1Hd";

pub struct Process {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// `medfed hospital --task TASK --coordinator ADDR --shard SHARD EXTRA...`
/// named `name`.
pub fn shard_hospital(
    dir: &Path,
    name: &str,
    task: &str,
    addr: &str,
    shard: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    let mut args = vec![
        "hospital",
        "--task",
        task,
        "--coordinator",
        addr,
        "--shard",
        shard,
    ];
    args.extend_from_slice(extra);
    spawn(dir, name, &args, envs)
}

/// Start `medfed <args>` from the repository root; its output goes to
/// `<dir>/<name>.out` and `.log`, its durable state (ledgers, store) to
/// `<dir>/<name>.data`, so that a restart under the same name finds it.
pub fn spawn(dir: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut all = vec!["--log-format", "json"];
    all.extend_from_slice(args);
    spawn_program(dir, name, env!("CARGO_BIN_EXE_medfed"), &all, envs)
}

/// As `spawn`, running `program ARGS` (a shell that execs medfed, say).
pub fn spawn_program(dir: &Path, name: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
    let stdout = dir.join(format!("{name}.out"));
    let stderr = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(program);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env("MEDFED_RUN__CACHE_DIR", CACHE_DIR)
        .env("MEDFED_RUN__DATA_DIR", dir.join(format!("{name}.data")))
        .env("MEDFED_CLUSTER_COOKIE", COOKIE)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Process {
        name: name.to_string(),
        child: cmd.spawn().expect("medfed starts"),
        stdout,
        stderr,
    }
}

impl Process {
    /// The messages the node sent, from its "cluster traffic" summary, all
    /// of which went on the sessions' direct streams (else the log is shown).
    pub fn messages_all_direct(&self) -> u64 {
        let log = self.log();
        let traffic = log
            .lines()
            .find(|l| l.contains("cluster traffic"))
            .unwrap_or_else(|| panic!("no traffic summary in:\n{log}"));
        let fields: serde_json::Value =
            serde_json::from_str(traffic).unwrap_or_else(|e| panic!("{e}: {traffic}"));
        let field = |name: &str| {
            fields["fields"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} in {traffic}"))
        };
        assert_eq!(field("messages_sent_direct"), field("messages_sent"), "{traffic}");
        field("messages_sent")
    }

    /// Exactly `n` log lines contain every one of `needles` (else the log is shown).
    pub fn assert_lines(&self, needles: &[&str], n: usize) {
        assert_eq!(self.count(needles), n, "{needles:?} in:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// How many log lines contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Wait until `count(needles) >= n`; panics with the log after `timeout`.
    pub fn wait_for(&self, needles: &[&str], n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.count(needles) < n {
            if start.elapsed() > timeout {
                panic!(
                    "{}: no {n} log lines with {needles:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let stderr = self.stderr.clone();
        super::wait_exit(&mut self.child, timeout, &self.name, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        })
    }

    /// SIGTERM: the clean shutdown a Kubernetes pod stop asks for.
    pub fn terminate(&self) {
        super::sigterm(&self.child);
    }

    /// Its process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no clean shutdown, as when a machine dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.stdout).expect("stdout");
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not one JSON object ({e}): {text}\nlog:\n{}",
                self.name,
                self.log()
            )
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `medfed cluster gen-certs --out OUT --hospitals HOSPITALS`, which must succeed.
pub fn gen_certs(out: &Path, hospitals: &str) {
    let made = super::medfed(
        &[
            "cluster",
            "gen-certs",
            "--out",
            &out.display().to_string(),
            "--hospitals",
            hospitals,
        ],
        &[],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// The TLS flags of node `name` (`coordinator` or a hospital) from `gen_certs`.
pub fn tls_flags(certs: &Path, name: &str) -> Vec<String> {
    tls_flags_trusting(certs, &certs.join("ca.pem"), name)
}

/// The same, trusting the CA certificate `ca` (another cluster's, say).
pub fn tls_flags_trusting(certs: &Path, ca: &Path, name: &str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        certs.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        certs.join(format!("{name}-key.pem")).display().to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
    ]
}

/// The `/metrics` text of the server at `http` (HOST:PORT, no scrape token).
pub fn scrape(http: &str) -> String {
    reqwest::blocking::get(format!("http://{http}/metrics"))
        .and_then(|r| r.text())
        .expect("/metrics")
}

/// The value of `series` (name and labels, as exposed) in a scrape.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A numeric field of /proc/PID/status (`VmRSS:` in kB, `Threads:`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
