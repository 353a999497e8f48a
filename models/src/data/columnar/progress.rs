//! Counters of a hospital's passes over its table, shared with whoever
//! reports progress (logs, the hospital's /metrics). Plain atomics: reading
//! them never slows a pass.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct StreamProgress {
    rows: AtomicU64,
    bytes: AtomicU64,
    groups: AtomicU64,
    passes: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Rows delivered to training, evaluation or statistics, all passes.
    pub rows: u64,
    pub bytes: u64,
    pub groups: u64,
    /// Passes over the table begun.
    pub passes: u64,
}

impl StreamProgress {
    pub fn group_read(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.groups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pass_started(&self) {
        self.passes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            groups: self.groups.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
        }
    }
}
