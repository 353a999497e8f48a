//! The HTTP side of authentication: reads a request's credentials, asks
//! [`Auth`](super::auth::Auth) and refuses with a JSON error, logging and
//! counting every refusal (source address and route, never a token). Also
//! the security headers every response carries.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use actix_web::dev::ServiceRequest;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::DefaultHeaders;
use actix_web::HttpResponse;
use serde_json::json;

use super::auth::session::CSRF_HEADER;
use super::auth::{access, Credentials, Principal, Refusal};
use super::state::AppState;

/// Scripts, styles and connections from this origin only: no inline script,
/// no framing, no plug-ins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Headers on every response.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
}

/// The request's source address (0.0.0.0 when unknown): the peer, or the
/// client a trusted proxy forwarded for (`web.trusted_proxies`).
pub fn source(req: &actix_web::HttpRequest) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let trusted = req
        .app_data::<actix_web::web::Data<std::sync::Arc<AppState>>>()
        .map(|s| s.trusted_proxies.as_slice())
        .unwrap_or_default();
    let forwarded = req
        .headers()
        .get_all("X-Forwarded-For")
        .filter_map(|v| v.to_str().ok());
    super::proxies::client(peer, forwarded, trusted)
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("Cookie")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Decide `req`; the route pattern names it in logs (never the raw path,
/// which the client chose).
pub fn decide(state: &AppState, req: &ServiceRequest) -> Result<Principal, Refusal> {
    let headers = req.headers();
    let credentials = Credentials {
        authorization: headers.get("Authorization").and_then(|h| h.to_str().ok()),
        session_cookie: cookie(headers, state.auth.sessions.cookie_name),
        csrf_header: headers.get(CSRF_HEADER).and_then(|h| h.to_str().ok()),
        changes_state: !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS),
    };
    let source = source(req.request());
    if let Err(refusal) = check_host(headers, &state.allowed_hosts) {
        refused(state, &refusal, source, &route(req));
        return Err(refusal);
    }
    // A browser says where a request comes from: a change another site's
    // page asks for (a form post, a no-cors fetch) is refused outright,
    // login included, so such a page cannot spend the address's failures.
    let cross_site = headers
        .get("Sec-Fetch-Site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    let decided = if cross_site && credentials.changes_state {
        Err(Refusal::CrossSite)
    } else {
        state
            .auth
            .check(access(req.path()), &credentials, source, Instant::now())
    };
    if let Err(refusal) = &decided {
        refused(state, refusal, source, &route(req));
    }
    decided
}

/// The host part of a Host header or an origin's authority (no port, no
/// brackets), lower-cased.
fn host_of(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => authority,
    }
}

/// An IP literal or `localhost` names this server whatever DNS says; any
/// other name must be on the allow-list (an attacker's DNS name pointed at
/// this address must not reach the API: DNS rebinding).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    host.parse::<IpAddr>().is_ok()
        || host == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
}

/// The Host header (required) must name this server, and any Origin must
/// be this server as the browser reached it (the same host and port as the
/// Host header) or a host on the allow-list (an ingress in front of it).
pub fn check_host(headers: &actix_web::http::header::HeaderMap, allowed: &[String]) -> Result<(), Refusal> {
    let authority = headers
        .get("Host")
        .and_then(|h| h.to_str().ok())
        .ok_or(Refusal::UnknownHost)?;
    if !host_allowed(&host_of(authority), allowed) {
        return Err(Refusal::UnknownHost);
    }
    if let Some(origin) = headers.get("Origin") {
        let origin = origin.to_str().unwrap_or("null");
        let same = match origin.split_once("://").map(|(_, rest)| rest) {
            Some(a) => {
                a.eq_ignore_ascii_case(authority)
                    || allowed.iter().any(|h| h.eq_ignore_ascii_case(&host_of(a)))
            }
            None => false,
        };
        if !same {
            return Err(Refusal::ForeignOrigin);
        }
    }
    Ok(())
}

pub fn route(req: &ServiceRequest) -> String {
    req.match_pattern().unwrap_or_else(|| "unmatched".into())
}

/// Who is asking, for the audit log: how they authenticated and from where.
pub fn who(req: &actix_web::HttpRequest) -> String {
    use actix_web::HttpMessage;
    let source = source(req);
    match req.extensions().get::<Principal>() {
        Some(Principal::Bearer { .. }) => format!("api token from {source}"),
        Some(Principal::Session { .. }) => format!("panel session from {source}"),
        _ => format!("anonymous from {source}"),
    }
}

/// Log and count a refusal (and audit the ones that are attempts).
pub fn refused(state: &AppState, refusal: &Refusal, source: IpAddr, route: &str) {
    state.metrics.auth_failed(refusal.reason());
    // Wrong tokens are throttled per source, so these entries are bounded;
    // cross-site refusals are not attempts at a credential and are not kept.
    if let (Some(audit), Refusal::WrongToken | Refusal::Csrf) = (&state.audit, refusal) {
        audit.record(
            &format!("anonymous from {source}"),
            "auth_failed",
            serde_json::json!({ "route": route, "reason": refusal.reason() }),
        );
    }
    match refusal {
        // Not signed in yet (the panel asks before its login): not an attempt;
        // a throttled source's failures were logged when they happened.
        Refusal::Missing | Refusal::Throttled(_) => {
            tracing::debug!(%source, route, reason = refusal.reason(), "request refused")
        }
        // Counted; not logged one line each (anyone can send them).
        Refusal::UnknownHost | Refusal::ForeignOrigin => {
            tracing::debug!(%source, route, reason = refusal.reason(), "request for another host or origin refused")
        }
        _ => tracing::warn!(%source, route, reason = refusal.reason(), "authentication failed"),
    }
}

/// The JSON error for a refusal.
pub fn refusal_response(refusal: &Refusal) -> HttpResponse {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = HttpResponse::build(status);
    match refusal {
        Refusal::Throttled(wait) => {
            response.insert_header(("Retry-After", wait.as_secs().max(1).to_string()));
        }
        Refusal::Missing | Refusal::WrongToken => {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"medfed\""));
        }
        Refusal::Csrf | Refusal::CrossSite | Refusal::UnknownHost | Refusal::ForeignOrigin => {}
    }
    response.json(json!({ "error": refusal.message() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins_must_name_this_server() {
        let allowed = vec!["medfed.hospital.example".to_string()];
        let check = |host: Option<&str>, origin: Option<&str>| {
            let mut req = actix_web::test::TestRequest::default();
            if let Some(h) = host {
                req = req.insert_header(("Host", h));
            }
            if let Some(o) = origin {
                req = req.insert_header(("Origin", o));
            }
            check_host(req.to_srv_request().headers(), &allowed)
                .err()
                .map(|r| r.reason())
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "10.1.2.3",
            "MEDFED.hospital.example",
        ] {
            assert_eq!(check(Some(ok), None), None, "{ok}");
        }
        assert_eq!(check(Some("attacker.example:8080"), None), Some("unknown_host"));
        assert_eq!(
            check(Some("localhost.attacker.example"), None),
            Some("unknown_host")
        );
        assert_eq!(check(None, None), Some("unknown_host"));
        assert_eq!(check(Some("127.0.0.1:8080"), Some("http://127.0.0.1:8080")), None);
        // Another server on an IP or another port of this host is not this one.
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("http://203.0.113.5")),
            Some("foreign_origin")
        );
        assert_eq!(
            check(Some("localhost:8080"), Some("http://localhost:9999")),
            Some("foreign_origin")
        );
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("https://medfed.hospital.example")),
            None
        );
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("http://evil.example")),
            Some("foreign_origin")
        );
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("null")),
            Some("foreign_origin")
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Cookie", "a=1; medfed_session=abc; medfed_session_x=zzz"))
            .to_srv_request();
        assert_eq!(cookie(req.headers(), "medfed_session"), Some("abc"));
        assert_eq!(cookie(req.headers(), "a"), Some("1"));
        assert_eq!(cookie(req.headers(), "b"), None);
    }
}
