//! `/metrics`: Prometheus/OpenMetrics families, named `medfed_*` (and the
//! standard `process_*`), kept up to date from the event stream and the
//! HTTP middleware. Names follow OpenMetrics: counters end in `_total`,
//! a family with a unit ends in it and declares it (`# UNIT`).

mod hospitals;
pub(crate) mod process;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use medfed_actors::cluster::gate::GateStats;
use medfed_actors::cluster::WireStats;
use medfed_actors::FederationEvent;

use super::live::LiveView;

const PHASES: [&str; 11] = [
    "idle",
    "assembling",
    "preparing",
    "securing",
    "training",
    "unmasking",
    "aggregating",
    "evaluating",
    "finished",
    "stopped",
    "aborted",
];
const STATUSES: [&str; 3] = ["online", "offline", "refused"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    task: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HospitalLabels {
    task: String,
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    task: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn round_histogram() -> Histogram {
    // 1 ms .. ~65 s: a tabular round takes milliseconds, an imaging round seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn http_histogram() -> Histogram {
    // 50 us .. ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    phase: Family<PhaseLabels, Gauge>,
    round: Family<TaskLabel, Gauge>,
    target_rounds: Family<TaskLabel, Gauge>,
    hospitals: Family<HospitalLabels, Gauge>,
    round_duration: Family<TaskLabel, Histogram, fn() -> Histogram>,
    updates: Family<OutcomeLabels, Counter>,
    accuracy: Family<TaskLabel, FloatGauge>,
    auc: Family<TaskLabel, FloatGauge>,
    loss: Family<TaskLabel, FloatGauge>,
    bytes_sent: Family<TaskLabel, Counter>,
    bytes_received: Family<TaskLabel, Counter>,
    runs: Family<StatusLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Hospitals online (connected now), and expected by the configuration, per task.
    connected: Family<TaskLabel, Gauge>,
    expected: Family<TaskLabel, Gauge>,
    /// Per-hospital series, for a bounded number of hospitals.
    per_hospital: Arc<hospitals::HospitalSeries>,
    /// Events the live stream (SSE) skipped for clients that fell behind.
    stream_skipped: Counter,
    auth_failures: Family<ReasonLabel, Counter>,
    /// Bytes of one model (or update) of each task, as f32 payload.
    model_bytes: BTreeMap<String, u64>,
}

impl Metrics {
    /// `model_bytes`: payload size of each task's model.
    pub fn new(model_bytes: BTreeMap<String, u64>) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            phase: Family::default(),
            round: Family::default(),
            target_rounds: Family::default(),
            hospitals: Family::default(),
            round_duration: Family::new_with_constructor(round_histogram),
            updates: Family::default(),
            accuracy: Family::default(),
            auc: Family::default(),
            loss: Family::default(),
            bytes_sent: Family::default(),
            bytes_received: Family::default(),
            runs: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            connected: Family::default(),
            expected: Family::default(),
            per_hospital: Arc::new(hospitals::HospitalSeries::new(hospitals::DEFAULT_LIMIT)),
            stream_skipped: Counter::default(),
            auth_failures: Family::default(),
            model_bytes,
        };
        registry.register(
            "medfed_phase",
            "1 for the phase each task's coordinator state machine is in, else 0",
            m.phase.clone(),
        );
        registry.register(
            "medfed_round",
            "Rounds aggregated in the current run",
            m.round.clone(),
        );
        registry.register(
            "medfed_target_rounds",
            "Rounds the current run asked for",
            m.target_rounds.clone(),
        );
        registry.register(
            "medfed_hospitals",
            "Hospitals that joined since start, by task, kind and status (online, offline, refused)",
            m.hospitals.clone(),
        );
        registry.register(
            "medfed_hospitals_connected",
            "Hospitals online now, per task",
            m.connected.clone(),
        );
        registry.register(
            "medfed_hospitals_expected",
            "Hospitals the configuration expects, per task",
            m.expected.clone(),
        );
        registry.register_with_unit(
            "medfed_round_duration",
            "Wall time of a round, from its first request to its aggregated model",
            Unit::Seconds,
            m.round_duration.clone(),
        );
        registry.register(
            "medfed_updates",
            "Hospital updates by outcome: accepted, rejected, declined, late, duplicate, unknown_sender, unexpected",
            m.updates.clone(),
        );
        registry.register(
            "medfed_global_accuracy",
            "Held-out accuracy of the latest global model",
            m.accuracy.clone(),
        );
        registry.register(
            "medfed_global_auc",
            "Held-out ROC-AUC of the latest global model",
            m.auc.clone(),
        );
        registry.register(
            "medfed_global_loss",
            "Held-out log-loss of the latest global model",
            m.loss.clone(),
        );
        registry.register_with_unit(
            "medfed_model_sent",
            "Global-model payload sent to hospitals",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        registry.register_with_unit(
            "medfed_update_received",
            "Update payload received from hospitals",
            Unit::Bytes,
            m.bytes_received.clone(),
        );
        registry.register("medfed_runs", "Runs that ended, by status", m.runs.clone());
        registry.register(
            "medfed_http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "medfed_http_request_duration",
            "HTTP request latency by route",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        registry.register(
            "medfed_event_stream_skipped",
            "Events the live event stream (/api/events) skipped for clients that fell behind; each client is told how many",
            m.stream_skipped.clone(),
        );
        registry.register(
            "medfed_http_auth_failures",
            "Refused authentications by reason (missing, wrong_token, csrf, throttled)",
            m.auth_failures.clone(),
        );
        registry.register_collector(Box::new(BuildInfo));
        registry.register_collector(Box::new(process::ProcessMetrics));
        registry.register_collector(Box::new(hospitals::Collector(m.per_hospital.clone())));
        Metrics { registry, ..m }
    }

    /// Per task, the hospitals the configuration expects.
    pub fn with_expected(self, expected: &BTreeMap<String, usize>) -> Self {
        for (task, n) in expected {
            self.expected
                .get_or_create(&TaskLabel { task: task.clone() })
                .set(*n as i64);
        }
        self
    }

    /// Keep per-hospital series for at most `limit` hospitals (the first
    /// to join; 0: none), so that a huge federation adds bounded series.
    pub fn with_hospital_series(self, limit: usize) -> Self {
        self.per_hospital.set_limit(limit);
        self
    }

    /// Update from one event, after `live` has applied it.
    pub fn observe(&self, event: &FederationEvent, live: &LiveView) {
        use FederationEvent as E;
        let task_label = |task: &str| TaskLabel { task: task.into() };
        let outcome = |task: &str, outcome: &str| {
            self.updates
                .get_or_create(&OutcomeLabels {
                    task: task.into(),
                    outcome: outcome.into(),
                })
                .inc();
        };
        match event {
            E::RoundStarted {
                task, participants, ..
            } => {
                let bytes = self.model_bytes.get(task).copied().unwrap_or(0);
                self.bytes_sent
                    .get_or_create(&task_label(task))
                    .inc_by(bytes * participants.len() as u64);
            }
            E::UpdateAccepted { task, .. } => {
                outcome(task, "accepted");
                self.received(task);
            }
            E::UpdateRejected { task, .. } => {
                outcome(task, "rejected");
                self.received(task);
            }
            E::UpdateDeclined { task, .. } => outcome(task, "declined"),
            E::MessageDropped { task, reason, .. } => outcome(task, reason.label()),
            E::RoundAggregated {
                task,
                round,
                metrics,
                seconds,
                ..
            } => {
                let l = task_label(task);
                self.round.get_or_create(&l).set(i64::from(*round));
                self.round_duration.get_or_create(&l).observe(*seconds);
                self.accuracy.get_or_create(&l).set(metrics.accuracy);
                self.loss.get_or_create(&l).set(metrics.loss);
                if let Some(auc) = metrics.auc {
                    self.auc.get_or_create(&l).set(auc);
                }
            }
            E::RunEnded { outcome, .. } => {
                self.runs
                    .get_or_create(&StatusLabel {
                        status: outcome.name().into(),
                    })
                    .inc();
            }
            _ => {}
        }
        if let Some(hospital) = event.hospital() {
            if let Some(h) = live.hospitals.get(hospital) {
                self.per_hospital.update(h);
            }
        }
        self.sync_with(live);
    }

    fn received(&self, task: &str) {
        let bytes = self.model_bytes.get(task).copied().unwrap_or(0);
        self.bytes_received
            .get_or_create(&TaskLabel { task: task.into() })
            .inc_by(bytes);
    }

    /// Gauges that mirror the live view: phases, rounds, hospitals.
    pub fn sync_with(&self, live: &LiveView) {
        for (name, t) in &live.tasks {
            for phase in PHASES {
                self.phase
                    .get_or_create(&PhaseLabels {
                        task: name.clone(),
                        phase: phase.into(),
                    })
                    .set(i64::from(t.phase == phase));
            }
            let l = TaskLabel { task: name.clone() };
            self.round.get_or_create(&l).set(i64::from(t.round));
            self.target_rounds
                .get_or_create(&l)
                .set(i64::from(t.target_rounds));
        }
        let mut counts: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        let mut connected: BTreeMap<&str, i64> = live.tasks.keys().map(|t| (t.as_str(), 0)).collect();
        for h in live.hospitals.values() {
            if h.status == "online" {
                *connected.entry(h.task.as_str()).or_insert(0) += 1;
            }
            for status in STATUSES {
                counts
                    .entry((h.task.clone(), h.kind.clone(), status.into()))
                    .or_insert(0);
            }
            *counts
                .entry((h.task.clone(), h.kind.clone(), h.status.clone()))
                .or_insert(0) += 1;
        }
        for ((task, kind, status), n) in counts {
            self.hospitals
                .get_or_create(&HospitalLabels { task, kind, status })
                .set(n);
        }
        for (task, n) in connected {
            self.connected
                .get_or_create(&TaskLabel { task: task.into() })
                .set(n);
        }
    }

    /// A live-stream client fell behind and skipped `missed` events.
    pub fn stream_skipped(&self, missed: u64) {
        self.stream_skipped.inc_by(missed);
    }

    pub fn auth_failed(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        // Clients choose methods: unknown ones share a label, so they
        // cannot grow the metric without bound.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" => method,
            _ => "other",
        };
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.into(),
                method: method.into(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel { route: route.into() })
            .observe(seconds);
    }

    /// Also export a cluster node's traffic and dropped frames (cluster mode).
    pub fn with_cluster(mut self, stats: Arc<WireStats>) -> Self {
        self.registry.register_collector(Box::new(ClusterTraffic(stats)));
        self
    }

    /// Also export the MLflow tracker's calls, errors, drops and queue.
    pub fn add_mlflow(&mut self, stats: Arc<crate::mlflow::tracker::TrackerStats>) {
        self.registry.register_collector(Box::new(MlflowTracking(stats)));
    }

    /// Also export each recording observer's backlog.
    pub fn with_observers(mut self, bus: medfed_actors::EventBus) -> Self {
        self.registry.register_collector(Box::new(ObserverBacklog(bus)));
        self
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `medfed_build_info{version}`: always 1; the labels say which build.
#[derive(Debug)]
pub(crate) struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut info = encoder.encode_descriptor(
            "medfed_build_info",
            "This medfed's version (the value is always 1)",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(1)
            .encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
    }
}

/// Read at every scrape from the node's `WireStats`:
/// `medfed_cluster_bytes_total{direction}`,
/// `medfed_cluster_messages_sent_total{path}` and
/// `medfed_cluster_frames_dropped_total{reason}`.
#[derive(Debug)]
struct ClusterTraffic(Arc<WireStats>);

impl Collector for ClusterTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.0;
        let mut bytes = encoder.encode_descriptor(
            "medfed_cluster_bytes",
            "Bytes of cluster envelopes this node sent and received",
            None,
            MetricType::Counter,
        )?;
        for (direction, value) in [
            ("sent", stats.bytes_sent.load(Relaxed)),
            ("received", stats.bytes_received.load(Relaxed)),
        ] {
            ConstCounter::new(value).encode(bytes.encode_family(&[("direction", direction)])?)?;
        }
        let mut sent = encoder.encode_descriptor(
            "medfed_cluster_messages_sent",
            "Cluster envelopes this node sent, by path: a session's direct stream, or through ractor_cluster",
            None,
            MetricType::Counter,
        )?;
        let direct = stats.messages_sent_direct.load(Relaxed);
        for (path, value) in [
            ("direct", direct),
            (
                "ractor_cluster",
                stats.messages_sent.load(Relaxed).saturating_sub(direct),
            ),
        ] {
            ConstCounter::new(value).encode(sent.encode_family(&[("path", path)])?)?;
        }
        let dropped = stats.dropped();
        let mut frames = encoder.encode_descriptor(
            "medfed_cluster_frames_dropped",
            "Inbound cluster frames dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in &dropped {
            ConstCounter::new(*count).encode(frames.encode_family(&[("reason", reason.as_str())])?)?;
        }
        encode_gate(&stats.gate, &mut encoder)
    }
}

/// The gate's connections, sessions and refusals, and certificate expiry:
/// `medfed_cluster_*`.
fn encode_gate(gate: &GateStats, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    use prometheus_client::metrics::gauge::ConstGauge;
    let gauge = |v: u64| (MetricType::Gauge, v);
    let counter = |v: u64| (MetricType::Counter, v);
    for (name, help, (kind, value)) in [
        (
            "medfed_cluster_connections_authenticating",
            "Connections in TLS or the cookie handshake now",
            gauge(GateStats::get(&gate.unauthenticated)),
        ),
        (
            "medfed_cluster_sessions",
            "Authenticated cluster sessions open now",
            gauge(GateStats::get(&gate.sessions)),
        ),
        (
            "medfed_cluster_sessions_accepted",
            "Cluster sessions authenticated and admitted since start",
            counter(GateStats::get(&gate.accepted)),
        ),
        (
            "medfed_cluster_connections_over_cap",
            "Connections closed at once because too many were authenticating",
            counter(GateStats::get(&gate.over_cap)),
        ),
        (
            "medfed_cluster_accept_errors",
            "Errors accepting cluster connections (each followed by a pause)",
            counter(GateStats::get(&gate.accept_errors)),
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, kind)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(value as i64).encode(metric)?,
            _ => ConstCounter::new(value).encode(metric)?,
        }
    }
    for (name, help, counts) in [
        (
            "medfed_cluster_handshakes_refused",
            "Cluster connections refused or failed before a session, by reason",
            gate.refused(),
        ),
        (
            "medfed_cluster_sessions_closed",
            "Authenticated sessions closed by the gate's frame filter, by reason",
            gate.closed(),
        ),
        (
            "medfed_cluster_direct_undelivered",
            "Envelopes on a session's direct stream that no actor on this node takes, by reason",
            gate.undelivered(),
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (reason, count) in counts {
            ConstCounter::new(count).encode(family.encode_family(&[("reason", reason)])?)?;
        }
    }
    encode_cert_expiry(gate, encoder)
}

/// `medfed_tls_cert_expiry_seconds{certificate="node"|"ca"}`: when this
/// node's cluster certificate and its CA expire (coordinator and hospitals).
pub(crate) fn encode_cert_expiry(gate: &GateStats, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let expiries = gate.expiries();
    if expiries.is_empty() {
        return Ok(());
    }
    let mut expiry = encoder.encode_descriptor(
        "medfed_tls_cert_expiry_seconds",
        "When this node's cluster certificate and its CA expire (Unix time, seconds)",
        None,
        MetricType::Gauge,
    )?;
    for (certificate, at) in expiries {
        prometheus_client::metrics::gauge::ConstGauge::new(at)
            .encode(expiry.encode_family(&[("certificate", certificate)])?)?;
    }
    Ok(())
}

/// `medfed_mlflow_*`: what the MLflow tracker sent, failed, dropped and holds.
#[derive(Debug)]
struct MlflowTracking(Arc<crate::mlflow::tracker::TrackerStats>);

impl Collector for MlflowTracking {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0;
        for (name, help, value) in [
            (
                "medfed_mlflow_calls",
                "MLflow calls that succeeded",
                s.sent.load(Relaxed),
            ),
            (
                "medfed_mlflow_errors",
                "MLflow calls that failed (retried when MLflow was away or failing)",
                s.errors.load(Relaxed),
            ),
            (
                "medfed_mlflow_dropped",
                "MLflow calls dropped: the queue was full, or MLflow was away at shutdown",
                s.dropped.load(Relaxed),
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        let queued = encoder.encode_descriptor(
            "medfed_mlflow_queue",
            "MLflow calls waiting to be sent",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(s.queued.load(Relaxed) as i64).encode(queued)
    }
}

/// `medfed_observer_backlog{observer}`: events published but not yet
/// handled by each recorder (they never stall a round; they queue).
#[derive(Debug)]
struct ObserverBacklog(medfed_actors::EventBus);

impl Collector for ObserverBacklog {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut backlog = encoder.encode_descriptor(
            "medfed_observer_backlog",
            "Events published but not yet handled, by recording observer",
            None,
            MetricType::Gauge,
        )?;
        for (observer, depth) in self.0.depths() {
            prometheus_client::metrics::gauge::ConstGauge::new(depth as i64)
                .encode(backlog.encode_family(&[("observer", observer.as_str())])?)?;
        }
        Ok(())
    }
}

/// `/metrics`' answer: OpenMetrics to a client that asks for it (Accept),
/// else the Prometheus text format.
pub fn exposition(req: &actix_web::HttpRequest, openmetrics: String) -> actix_web::HttpResponse {
    let wants_openmetrics = req
        .headers()
        .get("Accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        actix_web::HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(openmetrics)
    } else {
        actix_web::HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(to_prometheus_text(&openmetrics))
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for
/// clients that do not ask for OpenMetrics (promtool, curl): counter
/// families are named with their `_total` samples, and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP medfed_runs Runs that ended.\n# TYPE medfed_runs counter\nmedfed_runs_total{status=\"finished\"} 1\n\
                  # HELP medfed_round Rounds.\n# TYPE medfed_round gauge\nmedfed_round{task=\"t\"} 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP medfed_runs_total Runs that ended.\n# TYPE medfed_runs_total counter\nmedfed_runs_total{status=\"finished\"} 1\n\
             # HELP medfed_round Rounds.\n# TYPE medfed_round gauge\nmedfed_round{task=\"t\"} 3\n"
        );
    }

    #[test]
    fn a_run_shows_up_in_the_exposition() {
        let m = Metrics::new(BTreeMap::from([("t".to_string(), 400)]));
        let mut live = LiveView::default();
        let event = FederationEvent::RoundStarted {
            task: "t".into(),
            round: 1,
            attempt: 0,
            participants: vec!["a".into(), "b".into()],
        };
        live.apply(&event, 0.0);
        m.observe(&event, &live);
        let text = m.encode();
        assert!(
            text.contains("medfed_model_sent_bytes_total{task=\"t\"} 800"),
            "{text}"
        );
        assert!(text.contains("# UNIT medfed_model_sent_bytes bytes"), "{text}");
        assert!(text.contains("medfed_build_info{version=\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        m.observe_http("/api/state", "GET", 200, 0.001);
        assert!(m
            .encode()
            .contains("medfed_http_requests_total{route=\"/api/state\",method=\"GET\",status=\"200\"} 1"));
    }
}
