//! Browser sessions: the token is entered once (`POST /api/login`); the
//! browser then holds an HttpOnly, SameSite=Strict cookie, and every
//! state-changing request also carries the session's CSRF token in a
//! header. Sessions live in memory (a restart signs everyone out) and end
//! when the token they were opened with stops being accepted (rotation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::token::{constant_time_eq, random_hex};

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; opening one more ends the oldest.
const MAX_SESSIONS: usize = 1024;
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    /// sha256 of the token it was opened with (the token is not kept).
    pub token_digest: [u8; 32],
    pub opened: Instant,
}

// Secrets stay out of any Debug output.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("opened", &self.opened)
            .finish_non_exhaustive()
    }
}

pub struct Sessions {
    /// The cookie's name: `__Host-` prefixed when served over TLS, which
    /// browsers only accept with `Secure` and `Path=/`.
    pub cookie_name: &'static str,
    secure: bool,
    open: Mutex<HashMap<String, Session>>,
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub fn new(secure: bool) -> Self {
        Self {
            cookie_name: if secure {
                "__Host-medfed_session"
            } else {
                "medfed_session"
            },
            secure,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for someone who presented `token`: its id (the cookie)
    /// and the session.
    pub fn open(&self, token: &str, now: Instant) -> (String, Session) {
        let id = random_hex(32);
        let session = Session {
            csrf: random_hex(32),
            token_digest: digest(token),
            opened: now,
        };
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, s| now.duration_since(s.opened) < SESSION_TTL);
            if open.len() >= MAX_SESSIONS {
                let oldest = open.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    open.remove(&k);
                }
            }
            open.insert(id.clone(), session.clone());
        }
        (id, session)
    }

    /// The live session with this id.
    pub fn find(&self, id: &str, now: Instant) -> Option<Session> {
        let mut open = self.open.lock().ok()?;
        let session = open.get(id)?.clone();
        if now.duration_since(session.opened) >= SESSION_TTL {
            open.remove(id);
            return None;
        }
        Some(session)
    }

    pub fn close(&self, id: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(id);
        }
    }

    /// The Set-Cookie value that opens a session.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name,
            SESSION_TTL.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The Set-Cookie value that ends one.
    pub fn expired_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.cookie_name,
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// Whether `given` (the request's CSRF header) is the session's.
pub fn csrf_matches(session: &Session, given: Option<&str>) -> bool {
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), session.csrf.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_close_and_their_cookies_are_strict() {
        let sessions = Sessions::new(false);
        let t0 = Instant::now();
        let (id, session) = sessions.open("a-token-0123456789", t0);
        assert_eq!(id.len(), 64);
        assert_ne!(session.csrf, id);
        assert_eq!(session.token_digest, digest("a-token-0123456789"));
        assert!(sessions.find(&id, t0 + Duration::from_secs(60)).is_some());
        assert!(sessions.find(&id, t0 + SESSION_TTL).is_none(), "expired");
        let (id, session) = sessions.open("a-token-0123456789", t0);
        assert!(csrf_matches(&session, Some(&session.csrf)));
        assert!(!csrf_matches(&session, Some("nope")));
        assert!(!csrf_matches(&session, None));
        sessions.close(&id);
        assert!(sessions.find(&id, t0).is_none());
        let cookie = sessions.cookie("abc");
        assert!(cookie.starts_with("medfed_session=abc; Path=/; HttpOnly; SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let tls = Sessions::new(true);
        assert!(tls.cookie("abc").starts_with("__Host-medfed_session=abc;"));
        assert!(tls.cookie("abc").ends_with("; Secure"));
        assert!(tls.expired_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let sessions = Sessions::new(false);
        let t0 = Instant::now();
        for i in 0..(MAX_SESSIONS as u64 + 10) {
            sessions.open("a-token-0123456789", t0 + Duration::from_millis(i));
        }
        assert!(sessions.open.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
