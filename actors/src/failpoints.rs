//! Crash points for the resume tests: with the `failpoints` feature and
//! `FAILPOINTS="<name>=N*off->return"` in the environment, the process
//! SIGKILLs itself the (N+1)th time it passes `<name>` — a crash at an exact
//! place of a round. Without the feature these compile to nothing.

/// Die here, as `kill -9` would, if the test armed `name`.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn crash_point(name: &str) {
    fail::fail_point!(name, |_| {
        die();
    });
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn die() {
    tracing::warn!("crash point reached: killing this process (test failpoint)");
    // SAFETY: kill(2) on our own pid; nothing is shared.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}

/// Whether the test armed `name` (`FAILPOINTS="<name>=return"`): for the
/// tests that play a misbehaving node. Always false without the feature.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn armed(name: &str) -> bool {
    fail::fail_point!(name, |_| true);
    false
}

/// The argument of `name` when the test armed it with `return(ARG)`.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn armed_with(name: &str) -> Option<String> {
    fail::fail_point!(name, |arg| arg);
    None
}

/// What the coordinator process holds of each update, for the test that
/// shows it never holds a hospital's own update under secure aggregation:
/// armed with `coordinator::tap_updates=return(DIR)`, every update that
/// reaches the gateway is written to DIR as `<hospital>-r<round>-a<attempt>`
/// with the extension `plain` or `masked` (its tensor block's 32-bit words,
/// little-endian). Unreachable without the feature.
pub fn tap_update(sender: &str, message: &crate::messages::ToCoordinator) {
    use crate::messages::wire::CarriesTensors;
    use crate::messages::{ToCoordinator, TrainOutcome};
    let Some(dir) = armed_with("coordinator::tap_updates") else {
        return;
    };
    let ToCoordinator::Update { ask, outcome } = message else {
        return;
    };
    let kind = match outcome {
        TrainOutcome::Trained { .. } => "plain",
        TrainOutcome::Masked { .. } => "masked",
        _ => return,
    };
    let Some(params) = message.tensors() else {
        return;
    };
    let bytes: Vec<u8> = params.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = std::path::Path::new(&dir).join(format!("{sender}-r{}-a{}.{kind}", ask.round, ask.attempt));
    if let Err(e) = std::fs::write(&path, bytes) {
        tracing::warn!("test failpoint: cannot write {}: {e}", path.display());
    }
}
