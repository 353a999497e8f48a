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
