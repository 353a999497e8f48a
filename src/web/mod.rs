//! The web side of `medfed serve`: the control panel, the REST API, the
//! event stream and `/metrics` (actix-web).

pub mod api;
pub mod assets;
pub mod auth;
pub mod bodies;
pub mod guard;
pub mod hospital;
pub mod live;
pub mod login;
pub mod metrics;
pub mod privacy;
pub mod proxies;
pub mod sse;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderValue, CACHE_CONTROL};
use actix_web::{web, App, HttpMessage, HttpServer};
use anyhow::{Context, Result};
use futures_util::future::{ready, Either};

use state::AppState;

/// Lower this thread's scheduling class to SCHED_IDLE (Linux): the HTTP
/// workers run when training leaves a core free, and a waking training
/// thread preempts them at once, so a busy control plane does not slow the
/// training it watches (measured by scripts/web_load.py). Lowering needs no
/// privilege; elsewhere this does nothing.
fn yield_to_training() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
        let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if result != 0 {
            tracing::debug!("could not lower the HTTP worker's scheduling class");
        }
    }
}

/// Bind `addr` (with TLS when `tls` is given) and return the server (not
/// yet awaited) and the bound address.
pub fn server(
    state: Arc<AppState>,
    addr: SocketAddr,
    tls: Option<&tls::HttpTls>,
) -> Result<(Server, SocketAddr)> {
    let data = web::Data::new(state);
    let http = HttpServer::new(move || {
        // Called once on each worker thread as it starts.
        yield_to_training();
        let observed = data.clone();
        let guarded = data.clone();
        App::new()
            .app_data(data.clone())
            // Innermost: nothing is handled before authentication.
            .wrap_fn(move |req, srv| match guard::decide(&guarded, &req) {
                Ok(principal) => {
                    let api = auth::access(req.path()) == auth::Access::Api;
                    req.extensions_mut().insert(principal);
                    let call = srv.call(req);
                    Either::Left(async move {
                        let mut response = call.await?;
                        if api && !response.headers().contains_key(CACHE_CONTROL) {
                            response
                                .headers_mut()
                                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        }
                        Ok(response)
                    })
                }
                Err(refusal) => {
                    Either::Right(ready(Ok(req.into_response(guard::refusal_response(&refusal)))))
                }
            })
            .wrap_fn(move |req, srv| {
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let method = req.method().to_string();
                let started = Instant::now();
                let observed = observed.clone();
                let call = srv.call(req);
                async move {
                    let response = call.await?;
                    observed.metrics.observe_http(
                        &route,
                        &method,
                        response.status().as_u16(),
                        started.elapsed().as_secs_f64(),
                    );
                    Ok(response)
                }
            })
            .service(web::resource("/").route(web::get().to(api::asset)))
            .service(web::resource("/static/{path:.*}").route(web::get().to(api::asset)))
            .service(web::resource("/favicon.ico").route(web::get().to(api::favicon)))
            .service(web::resource("/healthz").route(web::get().to(api::healthz)))
            .service(web::resource("/readyz").route(web::get().to(api::readyz)))
            .service(web::resource("/metrics").route(web::get().to(api::metrics)))
            .service(web::resource("/api/state").route(web::get().to(api::state)))
            .service(web::resource("/api/hospitals").route(web::get().to(api::hospitals)))
            .service(web::resource("/api/privacy").route(web::get().to(privacy::privacy)))
            .service(web::resource("/api/events").route(web::get().to(sse::events)))
            .service(
                web::resource("/api/runs")
                    .route(web::get().to(api::runs))
                    .route(web::post().to(api::start_run)),
            )
            .service(web::resource("/api/runs/{id}").route(web::get().to(api::run)))
            .service(web::resource("/api/runs/{id}/stop").route(web::post().to(api::stop_run)))
            .service(web::resource("/api/runs/{id}/model").route(web::get().to(api::model)))
            .service(web::resource("/api/models").route(web::get().to(api::models)))
            .service(web::resource("/api/models/{task}/{version}").route(web::get().to(api::model_detail)))
            .service(
                web::resource("/api/models/{task}/{version}/download")
                    .route(web::get().to(api::model_download)),
            )
            .service(web::resource("/api/login").route(web::post().to(login::login)))
            .service(web::resource("/api/session").route(web::get().to(login::session)))
            .service(web::resource("/api/logout").route(web::post().to(login::logout)))
            .default_service(web::to(api::not_found))
            .wrap(actix_web::middleware::ErrorHandlers::new().default_handler(api::json_errors))
            .wrap(guard::security_headers())
    })
    .workers(1)
    .disable_signals()
    // Live event streams are ended before the server stops; this bounds
    // what any other slow connection can add to a shutdown.
    .shutdown_timeout(2);
    let http = match tls {
        Some(tls) => http.bind_rustls_0_23(addr, tls.server_config()?),
        None => http.bind(addr),
    }
    .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = *http.addrs().first().context("the server bound no address")?;
    Ok((http.run(), bound))
}
