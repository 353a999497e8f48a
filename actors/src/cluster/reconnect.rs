//! When and whether a hospital tries to reach its coordinator again. Pure:
//! the hospital's loop reports what happened and sleeps as told.
//!
//! Failures are told apart by what they look like from the client:
//! - the coordinator unreachable (connection refused, reset, timeout):
//!   retried with backoff, forever unless bounded;
//! - a session that closes after the coordinator named itself in the
//!   handshake: the handshake refused this node (wrong cookie) — fatal
//!   when it happens twice in a row;
//! - a session that closes before any handshake message: a coordinator
//!   dying or starting on that port, or a TLS/plaintext mismatch or an
//!   untrusted certificate. A dying coordinator soon refuses connections
//!   (which resets the count); a misconfiguration repeats, so it is fatal
//!   after `EARLY_CLOSES_BEFORE_GIVING_UP` in a row.

use std::time::Duration;

/// Consecutive handshake refusals that end the hospital.
pub const REFUSALS_BEFORE_GIVING_UP: u32 = 2;
/// Consecutive sessions closed before the handshake that end it.
pub const EARLY_CLOSES_BEFORE_GIVING_UP: u32 = 6;
/// First retry delay; it doubles up to the cap.
pub const FIRST_WAIT: Duration = Duration::from_millis(200);
/// Cap while the coordinator is expected back (it crashed or restarts).
pub const WAIT_CAP: Duration = Duration::from_secs(10);
/// Cap after the coordinator announced a normal shutdown.
pub const QUIET_WAIT_CAP: Duration = Duration::from_secs(60);

/// What the loop should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    RetryIn(Duration),
    GiveUp(String),
}

#[derive(Debug)]
pub struct Reconnect {
    wait: Duration,
    refusals: u32,
    early_closes: u32,
    /// Connection attempts since the last authenticated session.
    pub attempts: u64,
    /// Attempts in all.
    pub total_attempts: u64,
    max_attempts: Option<u64>,
    /// The coordinator said it was shutting down normally.
    pub announced_leave: bool,
}

impl Reconnect {
    /// `max_attempts`: give up after that many failed attempts in a row
    /// (`None`: never).
    pub fn new(max_attempts: Option<u64>) -> Self {
        Self {
            wait: FIRST_WAIT,
            refusals: 0,
            early_closes: 0,
            attempts: 0,
            total_attempts: 0,
            max_attempts,
            announced_leave: false,
        }
    }

    /// An attempt is being made.
    pub fn attempting(&mut self) {
        self.attempts += 1;
        self.total_attempts += 1;
    }

    /// A session authenticated: everything starts over.
    pub fn authenticated(&mut self) {
        self.wait = FIRST_WAIT;
        self.refusals = 0;
        self.early_closes = 0;
        self.attempts = 0;
        self.announced_leave = false;
    }

    /// The coordinator announced a normal shutdown: wait for the next one
    /// patiently.
    pub fn coordinator_leaving(&mut self) {
        self.announced_leave = true;
    }

    /// An authenticated session or the coordinator went away: retry soon.
    pub fn lost(&mut self) -> Next {
        self.wait = FIRST_WAIT;
        self.retry()
    }

    /// Nobody answered (refused, reset, timed out).
    pub fn unreachable(&mut self) -> Next {
        self.refusals = 0;
        self.early_closes = 0;
        self.retry()
    }

    /// A session closed before it authenticated; `peer_named`: the
    /// coordinator had already named itself in the handshake.
    pub fn closed_unauthenticated(&mut self, peer_named: bool, addr: &str) -> Next {
        if peer_named {
            self.refusals += 1;
            if self.refusals >= REFUSALS_BEFORE_GIVING_UP {
                return Next::GiveUp(format!(
                    "the coordinator at {addr} refused this node's handshake {} times in a row: \
                     the cluster cookie differs",
                    self.refusals
                ));
            }
        } else {
            self.early_closes += 1;
            if self.early_closes >= EARLY_CLOSES_BEFORE_GIVING_UP {
                return Next::GiveUp(format!(
                    "the node at {addr} closed {} sessions in a row before any handshake: \
                     TLS on one side only, a certificate it does not trust, or not a medfed coordinator",
                    self.early_closes
                ));
            }
        }
        self.retry()
    }

    fn retry(&mut self) -> Next {
        if let Some(max) = self.max_attempts {
            if self.attempts >= max {
                return Next::GiveUp(format!(
                    "gave up after {max} attempts to reach the coordinator (--max-reconnect-attempts)"
                ));
            }
        }
        let wait = self.wait;
        let cap = if self.announced_leave {
            QUIET_WAIT_CAP
        } else {
            WAIT_CAP
        };
        self.wait = (self.wait * 2).min(cap);
        Next::RetryIn(wait.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(r: &mut Reconnect, n: usize, f: impl Fn(&mut Reconnect) -> Next) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                r.attempting();
                match f(r) {
                    Next::RetryIn(d) => d,
                    Next::GiveUp(why) => panic!("gave up: {why}"),
                }
            })
            .collect()
    }

    #[test]
    fn an_unreachable_coordinator_is_retried_forever_with_capped_backoff() {
        let mut r = Reconnect::new(None);
        let w = waits(&mut r, 200, Reconnect::unreachable);
        assert_eq!(w[0], FIRST_WAIT);
        assert_eq!(w[1], FIRST_WAIT * 2);
        assert!(w.iter().all(|d| *d <= WAIT_CAP));
        assert_eq!(*w.last().unwrap(), WAIT_CAP);
        // After a normal shutdown was announced the cap is a minute.
        let mut r = Reconnect::new(None);
        r.coordinator_leaving();
        let w = waits(&mut r, 20, Reconnect::unreachable);
        assert_eq!(*w.last().unwrap(), QUIET_WAIT_CAP);
        // Ten minutes of waiting is a bounded number of attempts.
        let mut elapsed = Duration::ZERO;
        let mut r = Reconnect::new(None);
        r.coordinator_leaving();
        let mut attempts = 0;
        while elapsed < Duration::from_secs(600) {
            r.attempting();
            attempts += 1;
            let Next::RetryIn(d) = r.unreachable() else {
                panic!()
            };
            elapsed += d;
        }
        assert!(attempts <= 20, "{attempts}");
    }

    #[test]
    fn a_handshake_refusal_twice_in_a_row_is_fatal_and_names_the_cookie() {
        let mut r = Reconnect::new(None);
        r.attempting();
        assert!(matches!(r.closed_unauthenticated(true, "c:1"), Next::RetryIn(_)));
        r.attempting();
        let Next::GiveUp(why) = r.closed_unauthenticated(true, "c:1") else {
            panic!()
        };
        assert!(why.contains("cookie"), "{why}");
    }

    #[test]
    fn early_closes_are_transient_unless_they_keep_happening() {
        let mut r = Reconnect::new(None);
        // A dying coordinator: a few early closes, then connection refused
        // (the count starts over), then early closes again: never fatal.
        for _ in 0..10 {
            for _ in 0..(EARLY_CLOSES_BEFORE_GIVING_UP - 1) {
                r.attempting();
                assert!(matches!(r.closed_unauthenticated(false, "c:1"), Next::RetryIn(_)));
            }
            r.attempting();
            assert!(matches!(r.unreachable(), Next::RetryIn(_)));
        }
        // A TLS mismatch: every session closes early.
        let mut r = Reconnect::new(None);
        let mut last = Next::RetryIn(Duration::ZERO);
        for _ in 0..EARLY_CLOSES_BEFORE_GIVING_UP {
            r.attempting();
            last = r.closed_unauthenticated(false, "c:1");
        }
        let Next::GiveUp(why) = last else { panic!() };
        assert!(why.contains("TLS"), "{why}");
    }

    #[test]
    fn attempts_can_be_bounded_and_a_session_starts_over() {
        let mut r = Reconnect::new(Some(3));
        for _ in 0..2 {
            r.attempting();
            assert!(matches!(r.unreachable(), Next::RetryIn(_)));
        }
        r.attempting();
        assert!(matches!(r.unreachable(), Next::GiveUp(_)));
        let mut r = Reconnect::new(Some(3));
        for _ in 0..10 {
            r.attempting();
            assert!(matches!(r.unreachable(), Next::RetryIn(_)));
            r.authenticated();
        }
        assert_eq!(r.total_attempts, 10);
    }
}
