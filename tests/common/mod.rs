//! Helpers shared by the integration tests that run the real binary.

#[allow(dead_code)] // only the web tests serve
pub mod server;

use std::process::{Command, Output};

/// Generated data (the demo's synthetic X-rays) is cached under the build
/// directory, shared by all tests, never in the user's home.
pub const CACHE_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/medfed-cache");

/// Run `medfed` from the repository root with extra environment variables.
#[allow(dead_code)] // not every test binary uses it
pub fn medfed(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medfed"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env("MEDFED_RUN__CACHE_DIR", CACHE_DIR);
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
