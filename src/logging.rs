//! tracing setup: human or JSON lines on stderr, filtered by RUST_LOG.
//! Patient data is never logged: only names, counts, metrics and reasons.

use std::io::IsTerminal;

use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::cli::LogFormat;

pub fn init(format: LogFormat, wire_payloads: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},ractor=warn,ractor_cluster=warn")));
    // ractor and ractor_cluster print whole messages (weights, scaler sums)
    // at DEBUG and below: dropped whatever RUST_LOG says (any module of
    // theirs), unless --log-wire-payloads.
    let wire = move |meta: &tracing::Metadata<'_>| {
        wire_payloads
            || *meta.level() <= tracing::Level::INFO
            || !(meta.target().starts_with("ractor_cluster") || meta.target().starts_with("ractor::"))
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => tracing_subscriber::registry()
            .with(layer.with_filter(filter.and(filter_fn(wire))))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().with_filter(filter.and(filter_fn(wire))))
            .try_init(),
    };
    if wire_payloads {
        tracing::warn!(
            "--log-wire-payloads: ractor_cluster may log whole messages (model weights, feature \
             statistics) at DEBUG/TRACE; do not keep these logs"
        );
    }
}
