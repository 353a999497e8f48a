//! A real MLflow tracking server for the tests (mlflow==3.17.2 in the cached
//! venv `scripts/test` installs; `MEDFED_MLFLOW` names another `mlflow`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MlflowServer {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    pub url: String,
    dir: tempfile::TempDir,
}

/// The `mlflow` program, if installed.
pub fn program() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MEDFED_MLFLOW") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/medfed/venvs/mlflow-3.17.2/bin/mlflow");
    p.exists().then_some(p)
}

impl MlflowServer {
    /// Start one on a free port and wait until it is healthy; `None` (the
    /// test skips) when MLflow is not installed, unless it is required.
    pub fn start() -> Option<Self> {
        let Some(program) = program() else {
            if std::env::var("MEDFED_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!("mlflow is required (MEDFED_REQUIRE_EXTERNAL=1); scripts/test installs it");
            }
            eprintln!("SKIPPED: mlflow is not installed");
            return None;
        };
        let port = super::free_port();
        let mut server = Self {
            child: None,
            program,
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        Some(server)
    }

    /// The Python interpreter of MLflow's venv (for its own client).
    pub fn python(&self) -> PathBuf {
        self.program.with_file_name("python")
    }

    /// Start it again (same port, same store) and wait until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.program)
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                self.dir.path().join("mlflow.db").display()
            ))
            .arg("--artifacts-destination")
            .arg(self.dir.path().join("artifacts"))
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the server and its workers stop together.
            .process_group(0)
            .spawn()
            .expect("mlflow server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        let health = format!("{}/health", self.url);
        loop {
            if reqwest::blocking::get(&health).is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "mlflow server not healthy after 90 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// GET `path` (under the server's URL) as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/{}", self.url, path.trim_start_matches('/')))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every run of `experiment_id` (`runs/search`).
    pub async fn search_runs(&self, experiment_id: &str) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!("{}/api/2.0/mlflow/runs/search", self.url))
            .json(&serde_json::json!({ "experiment_ids": [experiment_id] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A file under an artifact URI, through the server's artifact proxy.
    pub async fn artifact(&self, artifact_uri: &str, path: &str) -> Vec<u8> {
        let root = artifact_uri
            .trim_start_matches("mlflow-artifacts:")
            .trim_start_matches('/');
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}", self.url);
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Stop it (its whole process group).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals the process group this test started.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}
