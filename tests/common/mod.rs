//! Helpers shared by the integration tests that run the real binary.

use std::process::{Command, Output};

/// Run `medfed` from the repository root with extra environment variables.
pub fn medfed(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medfed"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("medfed runs")
}
