//! REST handlers. Every error is a 4xx/5xx with `{"error": "..."}` that
//! names the problem; authentication happens before them (`guard`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use medfed_actors::{RunRequest, StartRefused};

use super::bodies::StartBody;
use super::state::AppState;

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 * 1024;
/// Largest number of rounds a run may ask for.
pub const MAX_ROUNDS: u32 = 10_000;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The request field the error is about (`settings.T.training.x`), so
    /// that the panel shows it next to that field.
    key: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            key: None,
        }
    }

    fn about(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::bad_request(message)
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The details go to the log only; the client gets an id to quote.
    fn internal(e: anyhow::Error) -> Self {
        let id = format!("{:08x}", rand::random::<u32>());
        tracing::error!(error_id = %id, "request failed: {e:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error {id}: the server's log has the details"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = match &self.key {
            Some(key) => json!({ "error": self.message, "key": key }),
            None => json!({ "error": self.message }),
        };
        HttpResponse::build(self.status).json(body)
    }
}

type ApiResult = Result<HttpResponse, ApiError>;

fn read_view(state: &AppState) -> Result<std::sync::RwLockReadGuard<'_, super::live::LiveView>, ApiError> {
    state
        .live
        .read()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("view lock poisoned")))
}

/// Read a JSON body of at most `MAX_BODY` bytes.
pub async fn json_body<T: serde::de::DeserializeOwned>(mut payload: web::Payload) -> Result<T, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    super::bodies::parse(&body).map_err(ApiError::bad_request)
}

pub async fn state(state: web::Data<Arc<AppState>>) -> ApiResult {
    let live = read_view(&state)?;
    // Hospitals online per task, against the settings' count and quorum.
    let mut joined: BTreeMap<&str, usize> = live.tasks.keys().map(|t| (t.as_str(), 0)).collect();
    for h in live.hospitals.values().filter(|h| h.status == "online") {
        if let Some(n) = joined.get_mut(h.task.as_str()) {
            *n += 1;
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "run_id": live.run_id,
        "run_active": live.run_active,
        "tasks": live.tasks,
        "joined": joined,
        "settings": state.settings,
        // Every strategy with its default parameters (the panel's form).
        "strategies": medfed_models::aggregate::config::NAMES
            .iter()
            .filter_map(|n| Some((*n, medfed_models::aggregate::StrategyConfig::named(n)?)))
            .collect::<BTreeMap<_, _>>(),
    })))
}

pub async fn hospitals(state: web::Data<Arc<AppState>>) -> ApiResult {
    let live = read_view(&state)?;
    let list: Vec<_> = live.hospitals.values().collect();
    Ok(HttpResponse::Ok().json(json!({
        "hospitals": list,
        "notes": {
            "last_train_loss": "the hospital's own training loss: NOT differentially private (withheld when DP is on)",
            "epsilon_spent": "lifetime spending on the hospital's dataset, from its ledger (DP only)",
        },
    })))
}

pub async fn runs(state: web::Data<Arc<AppState>>) -> ApiResult {
    let runs = state
        .runs
        .read()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("run lock poisoned")))?;
    let list: Vec<_> = runs
        .iter()
        .rev()
        .map(|r| {
            let finals: BTreeMap<&String, _> = r
                .report
                .iter()
                .flatten()
                .map(|(t, j)| (t, j.final_metrics.as_ref().map(|m| m.accuracy)))
                .collect();
            json!({"id": r.id, "status": r.status, "started_at": r.started_at, "ended_at": r.ended_at,
                   "rounds": r.rounds, "tasks": r.tasks, "final_accuracy": finals})
        })
        .collect();
    drop(runs);
    let mut list = list;
    // Runs recorded before this process started come from the store.
    if let Some(store) = &state.store {
        let known: std::collections::BTreeSet<String> = list
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let stored = store.runs(100).map_err(|e| ApiError::internal(e.into()))?;
        for r in stored.into_iter().filter(|r| !known.contains(&r.id)) {
            let finals: BTreeMap<&String, _> = r
                .report
                .iter()
                .map(|(t, j)| (t, j["final"]["accuracy"].as_f64()))
                .collect();
            list.push(
                json!({"id": r.id, "status": r.status, "started_at": r.started_at, "ended_at": r.ended_at,
                             "tasks": r.tasks, "final_accuracy": finals, "excluded": r.excluded}),
            );
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "runs": list })))
}

pub async fn run(state: web::Data<Arc<AppState>>, id: web::Path<String>) -> ApiResult {
    let Some(mut record) = state.run(&id) else {
        // Not in this process's memory: a run recorded before a restart.
        if let Some(store) = &state.store {
            if let Some(row) = store.run(&id).map_err(|e| ApiError::internal(e.into()))? {
                return Ok(HttpResponse::Ok().json(row));
            }
        }
        return Err(ApiError::not_found(format!("no run '{id}'")));
    };
    if record.settings.is_empty() {
        // A resumed run's settings are on record in the store only.
        if let Some(store) = &state.store {
            if let Some(row) = store.run(&id).map_err(|e| ApiError::internal(e.into()))? {
                record.settings = row
                    .settings
                    .into_iter()
                    .filter_map(|(t, v)| Some((t, serde_json::from_value(v).ok()?)))
                    .collect();
            }
        }
    }
    let mlflow = state
        .mlflow
        .as_ref()
        .and_then(|m| m.links.lock().ok()?.get(&record.id).cloned());
    if record.report.is_none() {
        // Still running: the coordinator's report so far.
        record.report = Some(
            state
                .live_report(&record.tasks)
                .await
                .map_err(ApiError::internal)?,
        );
    }
    let mut body = serde_json::to_value(&record).map_err(|e| ApiError::internal(e.into()))?;
    if let Some(links) = mlflow {
        // Each task's MLflow run (the panel links it).
        body["mlflow"] = json!(links);
    }
    Ok(HttpResponse::Ok().json(body))
}

pub async fn start_run(
    req: HttpRequest,
    state: web::Data<Arc<AppState>>,
    payload: web::Payload,
) -> ApiResult {
    let body: StartBody = json_body(payload).await?;
    if let Some(r) = body.rounds {
        if r == 0 || r > MAX_ROUNDS {
            return Err(ApiError::about(
                "rounds",
                format!("rounds must be 1..={MAX_ROUNDS}, got {r}"),
            ));
        }
    }
    if let Some(tasks) = &body.tasks {
        if tasks.is_empty() {
            return Err(ApiError::about("tasks", "tasks must name at least one task"));
        }
        if let Some(unknown) = tasks.iter().find(|t| !state.contexts.contains_key(*t)) {
            return Err(ApiError::about(
                "tasks",
                format!(
                    "unknown task '{unknown}' (tasks: {})",
                    state.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = tasks.iter().find(|t| !seen.insert(*t)) {
            return Err(ApiError::about("tasks", format!("task '{twice}' is named twice")));
        }
    }
    let tasks = body
        .tasks
        .clone()
        .unwrap_or_else(|| state.contexts.keys().cloned().collect());
    let settings = crate::config::run_settings::resolve(&state.config, &tasks, &body.settings)
        .map_err(|e| ApiError::about(e.key.clone(), e.to_string()))?;
    // Targets first, so the panel shows n/N from the run's first event on.
    if let Ok(mut live) = state.live.write() {
        // Joined, or expected by the configuration (a withdrawn site may be offline).
        let mut known: std::collections::BTreeSet<String> = live.hospitals.keys().cloned().collect();
        for (task, ctx) in &state.contexts {
            known.extend((1..=ctx.hospitals).map(|i| format!("{task}-{i}")));
        }
        if let Some(unknown) = body.exclude.iter().find(|h| !known.contains(*h)) {
            return Err(ApiError::about(
                "exclude",
                format!(
                    "exclude: no hospital '{unknown}' (hospitals: {})",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if live.run_active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "run {} is still active; stop it first",
                    live.run_id.clone().unwrap_or_default()
                ),
            ));
        }
        live.set_targets(&tasks, body.rounds);
    }
    let request = RunRequest {
        rounds: body.rounds,
        tasks: Some(tasks.clone()),
        exclude: body.exclude.clone(),
        settings: settings.clone(),
    };
    let asked =
        json!({ "rounds": body.rounds, "tasks": tasks, "exclude": body.exclude, "settings": settings });
    match state
        .client
        .try_start(request)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(id) => {
            if let Some(audit) = &state.audit {
                let mut details = asked;
                details["run"] = json!(id);
                audit.record(&super::guard::who(&req), "run_start_requested", details);
            }
            state.record_start(&id, &tasks, body.rounds);
            state.record_settings(&id, settings);
            Ok(HttpResponse::Accepted().json(json!({ "id": id })))
        }
        Err(e @ StartRefused::RunActive(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(StartRefused::Invalid(message)) => Err(ApiError::bad_request(message)),
    }
}

pub async fn stop_run(req: HttpRequest, state: web::Data<Arc<AppState>>, id: web::Path<String>) -> ApiResult {
    let record = state
        .run(&id)
        .ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    if record.status != "running" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run '{id}' has already ended ({})", record.status),
        ));
    }
    match state.client.stop().await.map_err(ApiError::internal)? {
        Some(_) => {
            if let Some(audit) = &state.audit {
                audit.record(
                    &super::guard::who(&req),
                    "run_stop_requested",
                    json!({ "run": record.id }),
                );
            }
            Ok(HttpResponse::Accepted().json(json!({ "id": record.id, "status": "stopping" })))
        }
        // It ended between the check above and the stop.
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run '{id}' has already ended"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelQuery {
    task: String,
}

pub async fn model(req: HttpRequest, state: web::Data<Arc<AppState>>, id: web::Path<String>) -> ApiResult {
    let query = web::Query::<ModelQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("expected ?task=TASK: {e}")))?;
    let record = state
        .run(&id)
        .ok_or_else(|| ApiError::not_found(format!("no run '{id}'")))?;
    if !record.tasks.contains(&query.task) {
        return Err(ApiError::not_found(format!(
            "run '{id}' has no task '{}' (tasks: {})",
            query.task,
            record.tasks.join(", ")
        )));
    }
    let bytes = match record.models.get(&query.task) {
        Some(bytes) => bytes.clone(),
        // Running: the current global model.
        None => state
            .client
            .model(&query.task)
            .await
            .and_then(|c| Ok(c.to_bytes()?))
            .map_err(ApiError::internal)?,
    };
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"{}-{}.safetensors\"",
                record.id, query.task
            ),
        ))
        .body(bytes))
}

fn store_of(state: &AppState) -> Result<&crate::store::Store, ApiError> {
    state.store.as_deref().ok_or_else(|| {
        ApiError::not_found("this server keeps no store, so no model registry (see [store] path)")
    })
}

/// The registry: every version, oldest first.
pub async fn models(state: web::Data<Arc<AppState>>) -> ApiResult {
    let models = store_of(&state)?
        .models(None)
        .map_err(|e| ApiError::internal(e.into()))?;
    Ok(HttpResponse::Ok().json(json!({ "models": models })))
}

fn model_version(
    state: &AppState,
    task: &str,
    version: &str,
) -> Result<crate::store::ModelVersion, ApiError> {
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version must be a number, got '{version}'")))?;
    store_of(state)?
        .model(task, Some(version))
        .map_err(|e| ApiError::not_found(e.to_string()))
}

/// One version with its lineage.
pub async fn model_detail(state: web::Data<Arc<AppState>>, path: web::Path<(String, String)>) -> ApiResult {
    let model = model_version(&state, &path.0, &path.1)?;
    let lineage = store_of(&state)?
        .lineage(&model)
        .map_err(|e| ApiError::internal(e.into()))?;
    Ok(HttpResponse::Ok().json(lineage))
}

/// The version's safetensors file (checked against its sha256).
pub async fn model_download(state: web::Data<Arc<AppState>>, path: web::Path<(String, String)>) -> ApiResult {
    let model = model_version(&state, &path.0, &path.1)?;
    let bytes = store_of(&state)?
        .model_bytes(&model)
        .map_err(|e| ApiError::internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Content-SHA256", model.sha256.clone()))
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"{}-v{}.safetensors\"",
                model.task, model.version
            ),
        ))
        .body(bytes))
}

/// OpenMetrics for clients that ask for it (Prometheus does), else the
/// Prometheus text format.
pub async fn metrics(req: HttpRequest, state: web::Data<Arc<AppState>>) -> HttpResponse {
    super::metrics::exposition(&req, state.metrics.encode())
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready once every hospital has joined and the coordinator answers.
pub async fn readyz(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let answering = tokio::time::timeout(std::time::Duration::from_secs(2), state.client.report())
        .await
        .is_ok_and(|r| r.is_ok());
    if answering && state.ready.load(Ordering::SeqCst) {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "starting" }))
    }
}

pub async fn asset(req: HttpRequest) -> HttpResponse {
    let path = req.match_info().get("path").unwrap_or("");
    match super::assets::find(path) {
        Some(a) => HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header(("Cache-Control", "no-cache"))
            .body(Bytes::from_static(a.body)),
        None => ApiError::not_found(format!("no file '{path}'")).error_response(),
    }
}

/// Browsers ask for /favicon.ico whatever the page says: the panel's icon.
pub async fn favicon() -> HttpResponse {
    match super::assets::find("favicon.svg") {
        Some(a) => HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header(("Cache-Control", "max-age=86400"))
            .body(Bytes::from_static(a.body)),
        None => ApiError::not_found("no icon").error_response(),
    }
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no route {} {}", req.method(), req.path())).error_response()
}

/// Error responses made outside the handlers (a method a route does not
/// take, an extractor's refusal) get the JSON error body too.
pub fn json_errors<B: actix_web::body::MessageBody + 'static>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    let is_json = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "{} is not allowed on {}",
            res.request().method(),
            res.request().path()
        ),
        other => other
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase(),
    };
    let (req, old) = res.into_parts();
    let mut response = ApiError::new(status, message).error_response();
    // Keep what the refusal said about itself (Allow, WWW-Authenticate...).
    for (name, value) in old.headers() {
        if name != actix_web::http::header::CONTENT_TYPE && name != actix_web::http::header::CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_tell_clients_an_id_not_the_details() {
        let e = ApiError::internal(anyhow::anyhow!("cannot open /var/lib/medfed/secret.sqlite"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret"), "{}", e.message);
        assert!(e.message.starts_with("internal error "), "{}", e.message);
    }
}
