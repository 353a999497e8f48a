//! `medfed hospital --http HOST:PORT`: the hospital agent's own `/healthz`
//! (the process answers), `/readyz` (a session with the coordinator that
//! the coordinator welcomed: the gate admitted it) and `/metrics` (`medfed_hospital_*`). No panel and no
//! API: nothing here reads or changes the hospital's data. `/metrics`
//! needs the scrape token when `web.scrape_token` is set.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{Context, Result};
use serde_json::json;

pub use metrics::HospitalMetrics;

struct State {
    metrics: Arc<HospitalMetrics>,
    scrape_token: Option<String>,
}

/// Bind `addr` and return the server (not yet awaited) and the bound address.
pub fn server(
    metrics: Arc<HospitalMetrics>,
    scrape_token: Option<String>,
    addr: SocketAddr,
) -> Result<(actix_web::dev::Server, SocketAddr)> {
    let state = web::Data::new(State {
        metrics,
        scrape_token,
    });
    let http = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .service(web::resource("/healthz").route(web::get().to(healthz)))
            .service(web::resource("/readyz").route(web::get().to(readyz)))
            .service(web::resource("/metrics").route(web::get().to(scrape)))
            .default_service(web::to(not_found))
            .wrap(super::guard::security_headers())
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)
    .with_context(|| format!("--http: cannot listen on {addr}"))?;
    let bound = *http
        .addrs()
        .first()
        .context("--http: the server bound no address")?;
    Ok((http.run(), bound))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state.metrics.readiness.ready() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(
            json!({ "status": "not ready: no session with the coordinator, or not welcomed by it yet" }),
        )
    }
}

async fn scrape(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Some(expected) = &state.scrape_token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok =
            given.is_some_and(|g| super::auth::token::constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(json!({ "error": "/metrics needs the scrape token: Authorization: Bearer <token>" }));
        }
    }
    super::metrics::exposition(&req, state.metrics.encode())
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "error": format!("no route {} {} on a hospital agent (routes: GET /healthz, /readyz, /metrics)", req.method(), req.path())
    }))
}
