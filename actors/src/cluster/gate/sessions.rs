//! Which identities hold a session, and how many connections are still
//! unauthenticated (in all and per source address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::identity::Identity;
use super::limits::Limits;

#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    live: HashMap<Identity, (u64, Activity)>,
    next_serial: u64,
    unauthenticated: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A connection counted as unauthenticated until dropped.
pub struct Pending {
    sessions: Sessions,
    source: IpAddr,
}

/// When a session last received a frame (the filter touches it).
#[derive(Clone, Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// An identity's one live session, released when dropped.
pub struct Live {
    sessions: Sessions,
    identity: Identity,
    serial: u64,
    pub activity: Activity,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Total,
    Source,
}

impl Sessions {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update of counters.
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// Count a new unauthenticated connection from `source`, unless a cap is reached.
    pub fn begin(&self, source: IpAddr, limits: &Limits) -> Result<Pending, OverCap> {
        let source = source_key(source);
        self.with(|inner| {
            if inner.unauthenticated >= limits.unauthenticated_total {
                return Err(OverCap::Total);
            }
            let n = inner.by_source.entry(source).or_default();
            if *n >= limits.unauthenticated_per_source {
                return Err(OverCap::Source);
            }
            *n += 1;
            inner.unauthenticated += 1;
            Ok(Pending {
                sessions: self.clone(),
                source,
            })
        })
    }

    /// Take `identity`'s one session; while another one of it lives,
    /// `Err(how long that one has been silent)`.
    pub fn claim(&self, identity: &Identity) -> Result<Live, Duration> {
        self.with(|inner| {
            if let Some((_, activity)) = inner.live.get(identity) {
                return Err(activity.silent_for());
            }
            inner.next_serial += 1;
            let serial = inner.next_serial;
            let activity = Activity::default();
            activity.touch();
            inner.live.insert(identity.clone(), (serial, activity.clone()));
            Ok(Live {
                sessions: self.clone(),
                identity: identity.clone(),
                serial,
                activity,
            })
        })
    }

    /// Identities with a live session.
    pub fn live(&self) -> Vec<Identity> {
        let mut live: Vec<Identity> = self.with(|inner| inner.live.keys().cloned().collect());
        live.sort();
        live
    }
}

/// One source for the per-source cap: an IPv4 address, or an IPv6 /64
/// (what one site or host is usually given).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let source = self.source;
        self.sessions.with(|inner| {
            inner.unauthenticated = inner.unauthenticated.saturating_sub(1);
            if let Some(n) = inner.by_source.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    inner.by_source.remove(&source);
                }
            }
        });
    }
}

impl Live {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let (identity, serial) = (self.identity.clone(), self.serial);
        self.sessions.with(|inner| {
            if inner.live.get(&identity).map(|(s, _)| *s) == Some(serial) {
                inner.live.remove(&identity);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_one_session_per_identity() {
        let limits = Limits {
            unauthenticated_total: 3,
            unauthenticated_per_source: 2,
            ..Limits::default()
        };
        let s = Sessions::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = s.begin(a, &limits).unwrap();
        let _p2 = s.begin(a, &limits).unwrap();
        assert_eq!(s.begin(a, &limits).err(), Some(OverCap::Source));
        let _p3 = s.begin(b, &limits).unwrap();
        assert_eq!(s.begin(b, &limits).err(), Some(OverCap::Total));
        drop(p1);
        s.begin(a, &limits).unwrap();

        // Addresses of one IPv6 /64 share the per-source cap.
        let s = Sessions::default();
        let _x = s.begin("2001:db8::1".parse().unwrap(), &limits).unwrap();
        let _y = s.begin("2001:db8::2:3".parse().unwrap(), &limits).unwrap();
        assert_eq!(
            s.begin("2001:db8::ffff".parse().unwrap(), &limits).err(),
            Some(OverCap::Source)
        );

        let h1 = Identity::Hospital("h1".into());
        let live = s.claim(&h1).unwrap();
        assert!(
            s.claim(&h1).is_err(),
            "a second session of h1 while the first lives"
        );
        assert_eq!(s.live(), vec![h1.clone()]);
        drop(live);
        assert!(s.claim(&h1).is_ok());
    }
}
