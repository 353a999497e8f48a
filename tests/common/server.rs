//! A real `medfed serve` process on a free port, killed when dropped; its
//! stderr goes to a temporary file (`log()`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// An HTTP client that authenticates every request with `TOKEN`.
pub fn authed() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("a header value"),
    );
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .timeout(None)
        .build()
        .expect("an HTTP client")
}

pub struct Served {
    child: Child,
    pub base: String,
    stderr: tempfile::NamedTempFile,
    /// Its data directory, when the server owns it (`start`).
    _data: Option<tempfile::TempDir>,
}

impl Served {
    /// Start `medfed serve --http 127.0.0.1:0 ARGS` with a fresh data
    /// directory of its own and wait until it is ready.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Served {
        let data = tempfile::tempdir().expect("a data directory");
        let mut served = Self::start_in(data.path(), args, envs);
        served._data = Some(data);
        served
    }

    /// The same on the data directory `data`, which outlives the server:
    /// restart tests start a second one on it.
    pub fn start_in(data: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Served {
        let stderr = tempfile::NamedTempFile::new().expect("a log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_medfed"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(args)
            .env("MEDFED_RUN__CACHE_DIR", super::CACHE_DIR)
            .env("MEDFED_RUN__DATA_DIR", data)
            .env("MEDFED_API_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("the log file"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("medfed serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("first line");
        // Keep draining stdout so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let base = line
            .trim()
            .strip_prefix("medfed control panel: ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let served = Served {
            child,
            base,
            stderr,
            _data: None,
        };
        served.wait_ready();
        served
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// SIGTERM: the clean shutdown a Kubernetes pod stop asks for.
    pub fn terminate(&self) {
        super::sigterm(&self.child);
    }

    /// Wait for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let path = self.stderr.path().to_path_buf();
        super::wait_exit(&mut self.child, timeout, "medfed serve", || {
            std::fs::read_to_string(&path).unwrap_or_default()
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/runs` with `body` (authenticated); the run's id.
    pub fn start_run(&self, body: &serde_json::Value) -> String {
        let started: serde_json::Value = authed()
            .post(self.url("/api/runs"))
            .json(body)
            .send()
            .expect("POST /api/runs")
            .json()
            .expect("a JSON answer");
        started["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id in {started}"))
            .to_string()
    }

    /// Poll `GET /api/runs/{id}` until the run is no longer running.
    pub fn wait_run_ended(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run: serde_json::Value = authed()
                .get(self.url(&format!("/api/runs/{id}")))
                .send()
                .expect("GET /api/runs/{id}")
                .json()
                .expect("a JSON answer");
            if run["status"] != "running" {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} still running: {run}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&self) {
        // The tests' HTTP client speaks no TLS: an HTTPS test polls itself.
        if self.base.starts_with("https://") {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(self.url("/readyz")) {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("medfed serve not ready within 120 s");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
