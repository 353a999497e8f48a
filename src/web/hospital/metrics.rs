//! A hospital agent's `/metrics` (`medfed_hospital_*`): what it trained,
//! what it released and declined, its traffic and reconnections, and the
//! privacy it has spent. Counts and timings only: no patient data, and no
//! local metric that differential privacy withholds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use medfed_actors::cluster::WireStats;
use medfed_actors::HospitalObserver;
use medfed_models::data::columnar::StreamProgress;
use medfed_models::learner::PrivacySpent;

use crate::web::metrics::{encode_cert_expiry, process::ProcessMetrics, BuildInfo};

/// Whether the hospital has a session with its coordinator that the
/// coordinator welcomed: `/readyz`, and the `medfed_hospital_ready` gauge.
#[derive(Debug, Default)]
pub struct Readiness {
    connected: AtomicBool,
    admitted: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && self.admitted.load(Ordering::SeqCst)
    }
}

pub struct HospitalMetrics {
    registry: Registry,
    pub readiness: Arc<Readiness>,
    rounds_trained: Counter,
    updates_sent: Counter,
    updates_declined: Counter,
    training_seconds: Histogram,
    reconnects: Counter,
    connections: Counter,
    epsilon_spent: Gauge<f64, std::sync::atomic::AtomicU64>,
    epsilon_budget: Gauge<f64, std::sync::atomic::AtomicU64>,
    epsilon_collusion: Gauge<f64, std::sync::atomic::AtomicU64>,
    ledger_writes: Counter,
    identity: Arc<OnceLock<[String; 3]>>,
    table: Arc<OnceLock<Arc<StreamProgress>>>,
}

impl HospitalMetrics {
    pub fn new(wire: Arc<WireStats>) -> Self {
        let mut registry = Registry::default();
        let m = HospitalMetrics {
            registry: Registry::default(),
            readiness: Arc::default(),
            rounds_trained: Counter::default(),
            updates_sent: Counter::default(),
            updates_declined: Counter::default(),
            // 10 ms .. ~3 h: a small tabular round to a long imaging epoch.
            training_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            reconnects: Counter::default(),
            connections: Counter::default(),
            epsilon_spent: Gauge::default(),
            epsilon_budget: Gauge::default(),
            epsilon_collusion: Gauge::default(),
            ledger_writes: Counter::default(),
            identity: Arc::default(),
            table: Arc::default(),
        };
        registry.register(
            "medfed_hospital_rounds_trained",
            "Rounds this hospital trained locally (update sent or not)",
            m.rounds_trained.clone(),
        );
        registry.register(
            "medfed_hospital_updates_sent",
            "Model updates this hospital sent to the coordinator",
            m.updates_sent.clone(),
        );
        registry.register(
            "medfed_hospital_updates_declined",
            "Rounds whose update this hospital did not send (training failed, or the privacy budget or a run's settings declined it)",
            m.updates_declined.clone(),
        );
        registry.register_with_unit(
            "medfed_hospital_training",
            "Local training time per round",
            Unit::Seconds,
            m.training_seconds.clone(),
        );
        registry.register(
            "medfed_hospital_connections",
            "Sessions with the coordinator that this hospital established",
            m.connections.clone(),
        );
        registry.register(
            "medfed_hospital_reconnects",
            "Sessions re-established after the coordinator was lost",
            m.reconnects.clone(),
        );
        registry.register(
            "medfed_hospital_epsilon_spent",
            "Epsilon spent on this hospital's data, all runs included (DP on)",
            m.epsilon_spent.clone(),
        );
        registry.register(
            "medfed_hospital_epsilon_budget",
            "This hospital's lifetime epsilon budget for its data (DP on)",
            m.epsilon_budget.clone(),
        );
        registry.register(
            "medfed_hospital_epsilon_collusion",
            "Epsilon spent on this hospital's data against the coordinator colluding with every other hospital \
             (distributed DP counts only this hospital's own noise shares; equal to epsilon_spent without them)",
            m.epsilon_collusion.clone(),
        );
        registry.register(
            "medfed_hospital_ledger_writes",
            "Writes of the privacy ledger's file by this process (DP on)",
            m.ledger_writes.clone(),
        );
        registry.register_collector(Box::new(Node {
            wire,
            readiness: m.readiness.clone(),
            identity: m.identity.clone(),
        }));
        registry.register_collector(Box::new(TableReads(m.table.clone())));
        registry.register_collector(Box::new(BuildInfo));
        registry.register_collector(Box::new(ProcessMetrics));
        HospitalMetrics { registry, ..m }
    }

    /// Name the hospital once its data is loaded (`medfed_hospital_info`).
    pub fn identify(&self, hospital: &str, task: &str, kind: &str) {
        let _ = self
            .identity
            .set([hospital.to_string(), task.to_string(), kind.to_string()]);
    }

    /// A columnar hospital's passes over its table, read at every scrape.
    pub fn watch_table(&self, progress: Arc<StreamProgress>) {
        let _ = self.table.set(progress);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A session with the coordinator is up (`CoordinatorUp`).
    pub fn connected(&self) {
        if self.connections.inc() > 0 {
            self.reconnects.inc();
        }
        self.readiness.connected.store(true, Ordering::SeqCst);
    }

    /// The coordinator welcomed the session (the gate admitted it).
    pub fn welcomed(&self) {
        self.readiness.admitted.store(true, Ordering::SeqCst);
    }

    /// The session is gone: not ready until connected and welcomed again.
    pub fn disconnected(&self) {
        self.readiness.connected.store(false, Ordering::SeqCst);
        self.readiness.admitted.store(false, Ordering::SeqCst);
    }
}

impl HospitalObserver for HospitalMetrics {
    fn trained(&self, seconds: f64, sent: bool) {
        self.rounds_trained.inc();
        self.training_seconds.observe(seconds);
        if sent {
            self.updates_sent.inc();
        } else {
            self.updates_declined.inc();
        }
    }

    fn privacy(&self, spent: &PrivacySpent, ledger_writes: u64) {
        self.epsilon_spent.set(spent.epsilon);
        self.epsilon_budget.set(spent.budget);
        self.epsilon_collusion
            .set(spent.epsilon_collusion.unwrap_or(spent.epsilon));
        let counted = self.ledger_writes.get();
        self.ledger_writes.inc_by(ledger_writes.saturating_sub(counted));
    }
}

/// Read at every scrape: traffic, readiness, identity and certificate expiry.
#[derive(Debug)]
struct Node {
    wire: Arc<WireStats>,
    readiness: Arc<Readiness>,
    /// hospital, task, kind, once known.
    identity: Arc<OnceLock<[String; 3]>>,
}

impl Collector for Node {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some([hospital, task, kind]) = self.identity.get() {
            let mut info = encoder.encode_descriptor(
                "medfed_hospital_info",
                "This hospital agent's name, task and kind (the value is always 1)",
                None,
                MetricType::Gauge,
            )?;
            prometheus_client::metrics::gauge::ConstGauge::new(1).encode(info.encode_family(&[
                ("hospital", hospital.as_str()),
                ("task", task.as_str()),
                ("kind", kind.as_str()),
            ])?)?;
        }
        let ready = encoder.encode_descriptor(
            "medfed_hospital_ready",
            "1 while connected to the coordinator and admitted by it",
            None,
            MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from(self.readiness.ready()))
            .encode(ready)?;
        for (name, help, value) in [
            (
                "medfed_hospital_sent",
                "Bytes of cluster envelopes this hospital sent (updates, statistics, hellos)",
                self.wire.bytes_sent.load(Ordering::Relaxed),
            ),
            (
                "medfed_hospital_received",
                "Bytes of cluster envelopes this hospital received (models, requests)",
                self.wire.bytes_received.load(Ordering::Relaxed),
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        encode_cert_expiry(&self.wire.gate, &mut encoder)
    }
}

/// A columnar hospital's reads of its table (rows per second is their
/// `rate()`); absent for other kinds.
#[derive(Debug)]
struct TableReads(Arc<OnceLock<Arc<StreamProgress>>>);

impl Collector for TableReads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(progress) = self.0.get() else {
            return Ok(());
        };
        let p = progress.snapshot();
        for (name, help, unit, value) in [
            (
                "medfed_hospital_table_rows_read",
                "Rows this columnar hospital read from its table (training, statistics, evaluation; all passes)",
                None,
                p.rows,
            ),
            (
                "medfed_hospital_table_read",
                "Bytes this columnar hospital read from its Parquet files",
                Some(&Unit::Bytes),
                p.bytes,
            ),
            (
                "medfed_hospital_table_row_groups_read",
                "Row groups this columnar hospital decoded",
                None,
                p.groups,
            ),
            (
                "medfed_hospital_table_passes",
                "Passes over the table this columnar hospital began",
                None,
                p.passes,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(epsilon: f64) -> PrivacySpent {
        PrivacySpent {
            mechanism: "dp-sgd".into(),
            noise_multiplier: 1.1,
            epsilon,
            epsilon_collusion: None,
            budget: 3.0,
            delta: 1e-5,
            sampling_rate: None,
            steps_per_round: None,
            noise_share: None,
        }
    }

    #[test]
    fn trainings_privacy_and_readiness_show_up() {
        let m = HospitalMetrics::new(Arc::default());
        assert!(
            !m.encode().contains("medfed_hospital_info"),
            "no identity before the data is loaded"
        );
        m.identify("h1", "breast_cancer", "tabular");
        assert!(!m.readiness.ready());
        m.connected();
        assert!(!m.readiness.ready(), "connected but not yet admitted");
        m.welcomed();
        assert!(m.readiness.ready());
        m.trained(0.5, true);
        m.trained(0.25, false);
        m.privacy(&spent(0.75), 3);
        m.privacy(&spent(1.5), 4);
        m.disconnected();
        assert!(!m.readiness.ready(), "a lost session is not ready");
        m.connected();
        let text = m.encode();
        for line in [
            "medfed_hospital_rounds_trained_total 2",
            "medfed_hospital_updates_sent_total 1",
            "medfed_hospital_updates_declined_total 1",
            "medfed_hospital_training_seconds_count 2",
            "medfed_hospital_training_seconds_sum 0.75",
            "medfed_hospital_connections_total 2",
            "medfed_hospital_reconnects_total 1",
            "medfed_hospital_epsilon_spent 1.5",
            "medfed_hospital_epsilon_budget 3.0",
            "medfed_hospital_ledger_writes_total 4",
            "medfed_hospital_ready 0",
            "medfed_hospital_sent_bytes_total 0",
            "medfed_hospital_info{hospital=\"h1\",task=\"breast_cancer\",kind=\"tabular\"} 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "missing '{line}' in\n{text}");
        }
    }
}
