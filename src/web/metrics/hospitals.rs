//! Per-hospital series on the coordinator: up, last seen, updates by
//! outcome, update latency and (DP) epsilon spent and budget. Kept for at
//! most `limit` hospitals (the
//! first to join), so that 100,000 simulated hospitals add a bounded number
//! of series; how many were left out is itself a series.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::web::live::HospitalView;

/// `web.hospital_series`'s default.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Clone, PartialEq)]
struct Row {
    task: String,
    up: bool,
    last_seen: Option<f64>,
    accepted: u64,
    declined: u64,
    rejected: u64,
    update_seconds: Option<f64>,
    epsilon_spent: Option<f64>,
    epsilon_budget: Option<f64>,
}

#[derive(Debug)]
pub struct HospitalSeries {
    limit: AtomicUsize,
    rows: Mutex<BTreeMap<String, Row>>,
    /// Distinct hospitals seen beyond the limit.
    omitted: AtomicU64,
    omitted_names: Mutex<std::collections::HashSet<String>>,
}

impl HospitalSeries {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            rows: Mutex::new(BTreeMap::new()),
            omitted: AtomicU64::new(0),
            omitted_names: Mutex::new(Default::default()),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Mirror `h` (after an event about it).
    pub fn update(&self, h: &HospitalView) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        if !rows.contains_key(&h.name) && rows.len() >= self.limit.load(Ordering::Relaxed) {
            // Counted once per hospital; the set is only as large as the
            // federation, which the live view holds anyway.
            if let Ok(mut names) = self.omitted_names.lock() {
                if names.insert(h.name.clone()) {
                    self.omitted.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        rows.insert(
            h.name.clone(),
            Row {
                task: h.task.clone(),
                up: h.status == "online",
                last_seen: h.last_seen,
                accepted: h.accepted,
                declined: h.declined,
                rejected: h.rejected,
                update_seconds: h.update_seconds,
                epsilon_spent: h.epsilon_spent,
                epsilon_budget: h.epsilon_budget,
            },
        );
    }
}

/// Encodes the rows at every scrape.
#[derive(Debug)]
pub struct Collector(pub std::sync::Arc<HospitalSeries>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let series = &self.0;
        let rows = match series.rows.lock() {
            Ok(rows) => rows.clone(),
            Err(_) => return Ok(()),
        };
        let labels = |name: &str, row: &Row| [("task", row.task.clone()), ("hospital", name.to_string())];
        let mut up = encoder.encode_descriptor(
            "medfed_hospital_up",
            "1 while the hospital is connected, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (name, row) in &rows {
            ConstGauge::new(i64::from(row.up)).encode(up.encode_family(&labels(name, row))?)?;
        }
        let mut seen = encoder.encode_descriptor(
            "medfed_hospital_last_seen_timestamp_seconds",
            "When the hospital was last heard from or about (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        for (name, row) in &rows {
            if let Some(at) = row.last_seen {
                ConstGauge::new(at).encode(seen.encode_family(&labels(name, row))?)?;
            }
        }
        let mut updates = encoder.encode_descriptor(
            "medfed_hospital_updates",
            "The hospital's training answers by outcome (accepted, declined, rejected)",
            None,
            MetricType::Counter,
        )?;
        for (name, row) in &rows {
            for (outcome, n) in [
                ("accepted", row.accepted),
                ("declined", row.declined),
                ("rejected", row.rejected),
            ] {
                let [task, hospital] = labels(name, row);
                ConstCounter::new(n).encode(updates.encode_family(&[
                    task,
                    hospital,
                    ("outcome", outcome.to_string()),
                ])?)?;
            }
        }
        let latency_unit = prometheus_client::registry::Unit::Seconds;
        let mut latency = encoder.encode_descriptor(
            "medfed_hospital_update_latency",
            "Seconds from the latest round's request to the hospital's answer",
            Some(&latency_unit),
            MetricType::Gauge,
        )?;
        for (name, row) in &rows {
            if let Some(s) = row.update_seconds {
                ConstGauge::new(s).encode(latency.encode_family(&labels(name, row))?)?;
            }
        }
        for (family, help, value) in [
            (
                "medfed_privacy_epsilon_spent",
                "Epsilon each hospital has spent on its dataset (all runs; DP only)",
                (|r: &Row| r.epsilon_spent) as fn(&Row) -> Option<f64>,
            ),
            (
                "medfed_privacy_epsilon_budget",
                "Each hospital's epsilon budget (DP only)",
                |r: &Row| r.epsilon_budget,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(family, help, None, MetricType::Gauge)?;
            for (name, row) in &rows {
                if let Some(v) = value(row) {
                    ConstGauge::new(v).encode(metric.encode_family(&[("hospital", name.as_str())])?)?;
                }
            }
        }
        let omitted = encoder.encode_descriptor(
            "medfed_hospital_series_omitted",
            "Hospitals without per-hospital series (beyond web.hospital_series)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(series.omitted.load(Ordering::Relaxed) as i64).encode(omitted)?;
        Ok(())
    }
}
