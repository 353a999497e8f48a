//! Who may use the API: the bearer token (API clients), a browser session
//! opened with it (the panel), a separate optional scrape token for
//! /metrics; failed attempts logged, counted and limited per source.
//! Which route needs what is decided in one place: [`access`].

pub mod limiter;
pub mod session;
pub mod token;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use limiter::FailureLimiter;
use session::{csrf_matches, Session, Sessions};
use token::{bearer, Tokens};

/// Failed authentications one source may make per minute.
pub const DEFAULT_FAILURES_PER_MINUTE: usize = 10;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The panel's page and assets, /healthz, /readyz.
    Public,
    /// /metrics: the scrape token when one is set, else open.
    Scrape,
    /// /api/login: checks the token itself (rate limited).
    Login,
    /// Everything else: the API token or a browser session.
    Api,
}

/// The access class of a request path.
pub fn access(path: &str) -> Access {
    match path {
        "/" | "/index.html" | "/favicon.ico" | "/healthz" | "/readyz" => Access::Public,
        "/metrics" => Access::Scrape,
        "/api/login" => Access::Login,
        p if p.starts_with("/static/") => Access::Public,
        _ => Access::Api,
    }
}

/// How a request authenticated.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    /// The sha256 of the token used (the token is not kept).
    Bearer {
        token_digest: [u8; 32],
    },
    Session {
        id: String,
        csrf: String,
    },
    Scraper,
}

/// Why a request was refused (each is worded for the client and counted).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Missing,
    WrongToken,
    Csrf,
    /// A state-changing request from another site's page.
    CrossSite,
    /// A Host header naming a server this is not (DNS rebinding).
    UnknownHost,
    /// An Origin header naming another site.
    ForeignOrigin,
    Throttled(Duration),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::WrongToken => "wrong_token",
            Refusal::Csrf => "csrf",
            Refusal::CrossSite => "cross_site",
            Refusal::UnknownHost => "unknown_host",
            Refusal::ForeignOrigin => "foreign_origin",
            Refusal::Throttled(_) => "throttled",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::Missing | Refusal::WrongToken => 401,
            Refusal::Csrf | Refusal::CrossSite | Refusal::ForeignOrigin => 403,
            Refusal::UnknownHost => 421,
            Refusal::Throttled(_) => 429,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Missing => "authentication required: send Authorization: Bearer <token>, \
                                 or sign in to the panel with the token"
                .into(),
            Refusal::WrongToken => "wrong token".into(),
            Refusal::Csrf => "missing or wrong X-CSRF-Token header: a signed-in panel sends it \
                              with every change (API clients use the bearer token instead)"
                .into(),
            Refusal::CrossSite => "refused: a change requested by another site's page".into(),
            Refusal::UnknownHost => "refused: this server does not answer to that host name \
                                     (add it to web.allowed_hosts)"
                .into(),
            Refusal::ForeignOrigin => "refused: a request from another site's page".into(),
            Refusal::Throttled(wait) => format!(
                "too many failed authentications from this address: retry in {} s",
                wait.as_secs().max(1)
            ),
        }
    }
}

/// What a request presents.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a str>,
    pub session_cookie: Option<&'a str>,
    pub csrf_header: Option<&'a str>,
    /// Not GET/HEAD/OPTIONS: a session must also send its CSRF token.
    pub changes_state: bool,
}

pub struct Auth {
    pub tokens: Tokens,
    pub sessions: Sessions,
    /// When set, /metrics needs `Authorization: Bearer <scrape token>`
    /// (the API token is accepted there too).
    pub scrape_token: Option<String>,
    limiter: FailureLimiter,
}

impl Auth {
    pub fn new(tokens: Tokens, scrape_token: Option<String>, secure_cookies: bool) -> Self {
        Self::with_limit(tokens, scrape_token, secure_cookies, DEFAULT_FAILURES_PER_MINUTE)
    }

    pub fn with_limit(
        tokens: Tokens,
        scrape_token: Option<String>,
        secure_cookies: bool,
        failures_per_minute: usize,
    ) -> Self {
        Self {
            tokens,
            sessions: Sessions::new(secure_cookies),
            scrape_token,
            limiter: FailureLimiter::new(failures_per_minute),
        }
    }

    /// Decide a request to a route of class `access` from `source`.
    pub fn check(
        &self,
        access: Access,
        credentials: &Credentials,
        source: IpAddr,
        now: Instant,
    ) -> Result<Principal, Refusal> {
        match access {
            Access::Public | Access::Login => Ok(Principal::Anonymous),
            Access::Scrape => {
                let Some(expected) = &self.scrape_token else {
                    return Ok(Principal::Anonymous);
                };
                self.throttle(source, now)?;
                let given = credentials
                    .authorization
                    .and_then(bearer)
                    .ok_or(Refusal::Missing)?;
                let scrape = token::constant_time_eq(given.as_bytes(), expected.as_bytes());
                if scrape | self.tokens.accepts(given) {
                    Ok(Principal::Scraper)
                } else {
                    Err(self.failed(source, now))
                }
            }
            Access::Api => {
                // A live session (256 random bits, not guessable) passes even
                // while its address is throttled: a page the operator visits
                // cannot lock the operator's own panel out.
                if credentials.authorization.is_none() {
                    if let Some(id) = credentials.session_cookie {
                        if let Some(session) = self.live_session(id, now) {
                            if credentials.changes_state && !csrf_matches(&session, credentials.csrf_header) {
                                return Err(Refusal::Csrf);
                            }
                            return Ok(Principal::Session {
                                id: id.to_string(),
                                csrf: session.csrf,
                            });
                        }
                    }
                }
                self.throttle(source, now)?;
                if let Some(header) = credentials.authorization {
                    let given = bearer(header).ok_or(Refusal::Missing)?;
                    return if self.tokens.accepts(given) {
                        Ok(Principal::Bearer {
                            token_digest: session::digest(given),
                        })
                    } else {
                        Err(self.failed(source, now))
                    };
                }
                // An unknown session id is a stale cookie (a restart, an
                // expiry, a sign-out), not a guess worth counting.
                Err(Refusal::Missing)
            }
        }
    }

    /// A login: the token in exchange for a session (id, session).
    pub fn login(&self, token: &str, source: IpAddr, now: Instant) -> Result<(String, Session), Refusal> {
        self.throttle(source, now)?;
        if !self.tokens.accepts(token) {
            return Err(self.failed(source, now));
        }
        Ok(self.sessions.open(token, now))
    }

    /// Whether `principal` may still act: a long-lived request (the event
    /// stream) asks again, so sign-out, expiry and rotation end it.
    pub fn still_valid(&self, principal: &Principal, now: Instant) -> bool {
        match principal {
            Principal::Session { id, .. } => self.live_session(id, now).is_some(),
            Principal::Bearer { token_digest } => self.tokens.accepts_digest(token_digest),
            Principal::Anonymous | Principal::Scraper => true,
        }
    }

    /// A session, while the token it was opened with is still accepted.
    fn live_session(&self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.find(id, now)?;
        if self.tokens.accepts_digest(&session.token_digest) {
            Some(session)
        } else {
            self.sessions.close(id);
            None
        }
    }

    fn throttle(&self, source: IpAddr, now: Instant) -> Result<(), Refusal> {
        match self.limiter.refused_for(source, now) {
            Some(wait) => Err(Refusal::Throttled(wait)),
            None => Ok(()),
        }
    }

    fn failed(&self, source: IpAddr, now: Instant) -> Refusal {
        self.limiter.record(source, now);
        Refusal::WrongToken
    }
}

#[cfg(test)]
mod tests;
