//! tracing setup: human or JSON lines on stderr, filtered by RUST_LOG.
//! Patient data is never logged: only names, counts, metrics and reasons.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat, wire_payloads: bool, default_level: &str) {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},ractor=warn,ractor_cluster=warn")));
    // ractor_cluster prints whole messages (weights, scaler sums) at DEBUG
    // and below: capped, so RUST_LOG=debug cannot turn it on by accident.
    if !wire_payloads {
        for directive in ["ractor_cluster=info", "ractor=info"] {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if wire_payloads {
        tracing::warn!(
            "--log-wire-payloads: ractor_cluster may log whole messages (model weights, feature \
             statistics) at DEBUG/TRACE; do not keep these logs"
        );
    }
}
