//! Every fuzz target for a short, fixed budget (CI): no panic and no huge
//! allocation. The long runs: `cargo run --release -p medfed-fuzz --
//! --executions 10000000` (README "Fuzzing").

use medfed_fuzz::{capture_panics, fuzz, targets, CountingAlloc};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Executions per target in CI (a debug build).
const SHORT: u64 = 3_000;

#[test]
fn every_target_survives_a_short_run() {
    capture_panics();
    let mut failures = Vec::new();
    for target in targets::all() {
        assert!(!target.corpus.is_empty(), "{} has a corpus", target.name);
        let report = fuzz(&target, SHORT, None, 7);
        println!(
            "{}: {} executions, {:.0}/s, largest allocation {} bytes",
            report.target,
            report.executions,
            report.per_second(),
            report.largest_allocation
        );
        assert_eq!(report.executions, SHORT);
        for f in report.findings {
            // A slow execution is noise on a shared machine: shown, not failed.
            if f.kind == "slow" {
                println!("  (slow) {}", f.message);
                continue;
            }
            failures.push(format!(
                "{} {}: {} ({} byte input)",
                report.target,
                f.kind,
                f.message,
                f.input.len()
            ));
        }
    }
    // The findings' panics were kept quiet; this assertion must be heard.
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{failures:#?}");
}
