//! Mutation fuzzing, on stable Rust, of everything medfed parses from
//! outside: wire frames and messages (with checksums recomputed after
//! mutation, so the message parser itself is reached), the chunk
//! reassembler, the configuration, CSV, `.npz`/`.npy` and image files, and
//! the REST request bodies. Each target starts from a corpus of valid
//! inputs; every execution mutates one and runs the parser, watching for a
//! panic, a slow execution (a hang in the making) and a huge allocation.
//! `medfed-fuzz` runs them for as long as asked; `tests/short.rs` runs each
//! briefly in CI.

pub mod mutate;
pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// An execution slower than this is reported (a hang in the making).
pub const SLOW: Duration = Duration::from_secs(1);
/// A single allocation larger than this is reported (an input that makes
/// the parser reserve what its size does not justify).
pub const HUGE_ALLOCATION: usize = 256 << 20;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, remembering the largest request since the last
/// reset; a fuzzing binary installs it as its global allocator.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// One execution of a parser on an input.
pub type Run = Box<dyn Fn(&[u8]) + Send + Sync>;

/// A parser under test, with the valid inputs it starts from.
pub struct Target {
    pub name: &'static str,
    pub corpus: Vec<Vec<u8>>,
    /// Tokens of the input's syntax, inserted by some mutations.
    pub dictionary: Vec<&'static [u8]>,
    pub run: Run,
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// panic, slow or allocation.
    pub kind: &'static str,
    pub message: String,
    pub input: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub seconds: f64,
    pub slowest: Duration,
    pub largest_allocation: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.seconds.max(1e-9)
    }
}

/// Findings kept per target (the first of each message).
const MAX_FINDINGS: usize = 20;

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Panics are findings: their messages are kept, not printed.
pub fn capture_panics() {
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = info.to_string();
        }
    }));
}

/// One run of a saved input (`medfed-fuzz --replay`).
pub struct Replayed {
    pub took: Duration,
    pub largest_allocation: usize,
    pub panicked: bool,
}

/// Run `target` once on `input`: time, largest allocation, panic.
pub fn replay(target: &Target, input: &[u8]) -> Replayed {
    LARGEST_ALLOCATION.store(0, Ordering::Relaxed);
    let began = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    Replayed {
        took: began.elapsed(),
        largest_allocation: LARGEST_ALLOCATION.load(Ordering::Relaxed),
        panicked: outcome.is_err(),
    }
}

/// Run `target` for `executions` mutated inputs (or until `deadline`).
pub fn fuzz(target: &Target, executions: u64, deadline: Option<Instant>, seed: u64) -> Report {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let mut report = Report {
        target: target.name,
        executions: 0,
        seconds: 0.0,
        slowest: Duration::ZERO,
        largest_allocation: 0,
        findings: Vec::new(),
    };
    // The valid inputs themselves first: none may be a finding.
    let mut inputs = target.corpus.clone().into_iter();
    while report.executions < executions {
        if report.executions.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let input = match inputs.next() {
            Some(valid) => valid,
            None => {
                let mut input = target.corpus[rng.random_range(0..target.corpus.len())].clone();
                mutate::mutate(&mut input, &mut rng, &target.dictionary, &target.corpus);
                input
            }
        };
        LARGEST_ALLOCATION.store(0, Ordering::Relaxed);
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = began.elapsed();
        let largest = LARGEST_ALLOCATION.load(Ordering::Relaxed);
        report.executions += 1;
        report.slowest = report.slowest.max(took);
        report.largest_allocation = report.largest_allocation.max(largest);
        let finding = match outcome {
            Err(_) => Some(("panic", LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default())),
            Ok(()) if took > SLOW => Some(("slow", format!("one execution took {took:?}"))),
            Ok(()) if largest > HUGE_ALLOCATION => {
                Some(("allocation", format!("one allocation of {largest} bytes")))
            }
            Ok(()) => None,
        };
        if let Some((kind, message)) = finding {
            let known = report
                .findings
                .iter()
                .any(|f| f.kind == kind && f.message == message);
            if !known && report.findings.len() < MAX_FINDINGS {
                report.findings.push(Finding { kind, message, input });
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}
