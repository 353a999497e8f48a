//! `GET /api/events`: every `FederationEvent` as a server-sent event, in
//! the order the coordinator published them.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};

use medfed_actors::Live;

use super::auth::Principal;
use super::state::AppState;

/// A comment line keeps idle connections open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn events(req: HttpRequest, state: web::Data<Arc<AppState>>) -> HttpResponse {
    // Asked again at every keep-alive: a sign-out, an expired session or a
    // rotated-out token ends the stream within one tick.
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous);
    let receiver = state.events.subscribe();
    let tick = tokio::time::interval(KEEP_ALIVE);
    let shared = state.get_ref().clone();
    let stream = futures_util::stream::unfold((receiver, tick), move |(mut receiver, mut tick)| {
        let state = shared.clone();
        let principal = principal.clone();
        async move {
            let frame = tokio::select! {
                event = receiver.recv() => match event {
                    Some(Live::Event(event)) => match serde_json::to_string(&event) {
                        Ok(json) => format!("data: {json}\n\n"),
                        Err(e) => format!(": unserialisable event: {e}\n\n"),
                    },
                    // A slow client misses events; it is told how many, and they are counted.
                    Some(Live::Skipped(n)) => {
                        state.metrics.stream_skipped(n);
                        format!("data: {{\"type\":\"lagged\",\"missed\":{n}}}\n\n")
                    }
                    // The server is shutting down: the stream ends.
                    None => return None,
                },
                _ = tick.tick() => {
                    if !state.auth.still_valid(&principal, std::time::Instant::now()) {
                        return None;
                    }
                    ": keep-alive\n\n".to_string()
                }
            };
            Some((Ok::<_, actix_web::Error>(Bytes::from(frame)), (receiver, tick)))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}
