//! What the gate counts, for `/metrics` (`medfed_cluster_*`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct GateStats {
    /// Connections in TLS or the cookie handshake now.
    pub unauthenticated: AtomicU64,
    /// Authenticated sessions open now.
    pub sessions: AtomicU64,
    /// Sessions accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed at once because a cap was reached.
    pub over_cap: AtomicU64,
    /// Accept errors (descriptor exhaustion, say), each followed by a pause.
    pub accept_errors: AtomicU64,
    /// Expiry (Unix seconds) of this node's certificate and of the CA, under TLS.
    pub certificate_expiry: Mutex<BTreeMap<&'static str, i64>>,
    /// Handshakes refused or failed, by reason.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Authenticated sessions closed by the frame filter, by reason.
    closed: Mutex<BTreeMap<&'static str, u64>>,
    /// Envelopes on direct streams that no actor here takes, by reason.
    undelivered: Mutex<BTreeMap<&'static str, u64>>,
}

impl GateStats {
    pub fn count_refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn count_closed(&self, reason: &'static str) {
        if let Ok(mut m) = self.closed.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn count_undelivered(&self, reason: &'static str) {
        if let Ok(mut m) = self.undelivered.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn undelivered(&self) -> BTreeMap<&'static str, u64> {
        self.undelivered.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn closed(&self) -> BTreeMap<&'static str, u64> {
        self.closed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn set_expiry(&self, which: &'static str, unix_seconds: i64) {
        if let Ok(mut m) = self.certificate_expiry.lock() {
            m.insert(which, unix_seconds);
        }
    }

    pub fn expiries(&self) -> BTreeMap<&'static str, i64> {
        self.certificate_expiry
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Holds one unit of a gauge of `GateStats` while alive.
pub struct Held {
    stats: Arc<GateStats>,
    gauge: fn(&GateStats) -> &AtomicU64,
}

impl Held {
    pub fn new(stats: &Arc<GateStats>, gauge: fn(&GateStats) -> &AtomicU64) -> Self {
        gauge(stats).fetch_add(1, Ordering::Relaxed);
        Self {
            stats: stats.clone(),
            gauge,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        (self.gauge)(&self.stats).fetch_sub(1, Ordering::Relaxed);
    }
}

/// At most one log line per key and period; the lines in between are
/// counted and reported with the next one (no log floods from a peer).
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
    pruned: Mutex<Option<std::time::Instant>>,
}

/// Keys (kind and source) remembered at once.
const MAX_KEYS: usize = 4096;

/// How often one kind of refusal is logged.
pub const LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl LogThrottle {
    fn pruned_at(&self) -> std::time::Instant {
        let pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        pruned.unwrap_or_else(|| std::time::Instant::now() - LOG_PERIOD)
    }

    fn set_pruned_at(&self, at: std::time::Instant) {
        *self.pruned.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        // Keys include source addresses: bounded, and beyond the bound every
        // new source shares one key (one line per period for all of them).
        let mut key = key;
        if last.len() >= MAX_KEYS && !last.contains_key(key) {
            if now.duration_since(self.pruned_at()) >= LOG_PERIOD {
                last.retain(|_, (at, _)| now.duration_since(*at) < LOG_PERIOD);
                self.set_pruned_at(now);
            }
            if last.len() >= MAX_KEYS {
                key = "many sources";
            }
        }
        match last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_PERIOD => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_kind_logs_once_per_period() {
        let t = LogThrottle::default();
        assert_eq!(t.allow("wrong_cookie 10.0.0.1"), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.allow("wrong_cookie 10.0.0.1"), None);
        }
        assert_eq!(t.allow("over_cap"), Some(0), "another kind is logged");
        // Many sources: bounded, and the overflow shares one line.
        let t = LogThrottle::default();
        let logged = (0..20_000)
            .filter(|i| t.allow(&format!("wrong_cookie 10.0.{i}")).is_some())
            .count();
        assert_eq!(logged, MAX_KEYS + 1);
        assert!(t.last.lock().unwrap().len() <= MAX_KEYS + 1);
    }
}
