//! tracing setup: human or JSON lines on stderr, filtered by RUST_LOG.
//! Patient data is never logged: only names, counts, metrics and reasons.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat, default_level: &str) {
    // ractor_cluster prints message payloads at debug level: keep it quiet
    // unless RUST_LOG asks for it explicitly.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},ractor=warn,ractor_cluster=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
