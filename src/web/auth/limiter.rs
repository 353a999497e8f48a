//! Failed authentications per source address: a source with too many in
//! the last minute is refused (429) until older failures age out, so a
//! token cannot be guessed at network speed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window failures are counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most; beyond it the longest-quiet ones are forgotten.
const MAX_SOURCES: usize = 4096;

pub struct FailureLimiter {
    per_window: usize,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureLimiter {
    /// Refuse a source once it has `per_window` failures within `WINDOW`.
    pub fn new(per_window: usize) -> Self {
        Self {
            per_window: per_window.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long `source` must wait, if it is refused now.
    pub fn refused_for(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let mut failures = self.failures.lock().ok()?;
        let times = failures.get_mut(&source)?;
        prune(times, now);
        if times.len() < self.per_window {
            return None;
        }
        let oldest = times.front()?;
        Some(
            WINDOW
                .saturating_sub(now.duration_since(*oldest))
                .max(Duration::from_secs(1)),
        )
    }

    /// Count a failed authentication from `source`.
    pub fn record(&self, source: IpAddr, now: Instant) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_SOURCES && !failures.contains_key(&source) {
            failures.retain(|_, times| {
                prune(times, now);
                !times.is_empty()
            });
            if failures.len() >= MAX_SOURCES {
                let quietest = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(ip, _)| *ip);
                if let Some(ip) = quietest {
                    failures.remove(&ip);
                }
            }
        }
        let times = failures.entry(source).or_default();
        prune(times, now);
        // Only the newest `per_window` matter.
        if times.len() >= self.per_window {
            times.pop_front();
        }
        times.push_back(now);
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_refused_after_its_limit_until_failures_age_out() {
        let limiter = FailureLimiter::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..2 {
            limiter.record(a, t0 + Duration::from_secs(i));
            assert_eq!(limiter.refused_for(a, t0 + Duration::from_secs(i)), None);
        }
        limiter.record(a, t0 + Duration::from_secs(2));
        // Refused until the first failure (t0) is a minute old.
        assert_eq!(
            limiter.refused_for(a, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(
            limiter.refused_for(b, t0 + Duration::from_secs(10)),
            None,
            "per source"
        );
        assert_eq!(limiter.refused_for(a, t0 + WINDOW), None);
    }

    #[test]
    fn memory_stays_bounded_under_many_sources() {
        let limiter = FailureLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            limiter.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limiter.failures.lock().unwrap().len() <= MAX_SOURCES);
    }
}
