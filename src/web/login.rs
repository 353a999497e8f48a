//! The browser's sign-in: `POST /api/login` exchanges the API token for a
//! session cookie and a CSRF token; `GET /api/session` gives a reloaded
//! page its CSRF token back; `POST /api/logout` ends the session.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::json;

use super::api::{json_body, ApiError};
use super::auth::session::SESSION_TTL;
use super::auth::Principal;
use super::bodies::LoginBody;
use super::guard::{refusal_response, refused};
use super::state::AppState;

pub async fn login(
    req: HttpRequest,
    state: web::Data<Arc<AppState>>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // A cross-origin page can post text/plain without a preflight; JSON it cannot.
    let json = req
        .headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the token as JSON: Content-Type: application/json, body {\"token\": \"...\"}",
        ));
    }
    let body: LoginBody = json_body(payload).await?;
    let source = super::guard::source(&req);
    match state.auth.login(body.token.trim(), source, Instant::now()) {
        Ok((id, session)) => {
            tracing::info!(%source, "panel session opened");
            if let Some(audit) = &state.audit {
                audit.record(
                    &format!("panel session from {source}"),
                    "session_opened",
                    json!({}),
                );
            }
            Ok(HttpResponse::Ok()
                .insert_header(("Set-Cookie", state.auth.sessions.cookie(&id)))
                .insert_header(("Cache-Control", "no-store"))
                .json(json!({ "csrf": session.csrf, "expires_in": SESSION_TTL.as_secs() })))
        }
        Err(refusal) => {
            refused(&state, &refusal, source, "/api/login");
            Ok(refusal_response(&refusal))
        }
    }
}

/// How this request is authenticated; a session also gets its CSRF token.
pub async fn session(req: HttpRequest) -> HttpResponse {
    let principal = req.extensions().get::<Principal>().cloned();
    let body = match principal {
        Some(Principal::Session { csrf, .. }) => json!({ "auth": "session", "csrf": csrf }),
        _ => json!({ "auth": "bearer" }),
    };
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body)
}

pub async fn logout(req: HttpRequest, state: web::Data<Arc<AppState>>) -> HttpResponse {
    if let Some(Principal::Session { id, .. }) = req.extensions().get::<Principal>() {
        state.auth.sessions.close(id);
    }
    HttpResponse::Ok()
        .insert_header(("Set-Cookie", state.auth.sessions.expired_cookie()))
        .json(json!({ "auth": "none" }))
}
