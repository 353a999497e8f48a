//! Optional TLS for the HTTP server (`--http-tls-cert/--http-tls-key`, or
//! `web.tls_cert/tls_key`). Without it, serve plain HTTP on loopback or
//! behind a TLS-terminating ingress (then set `web.secure_cookies`).

use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl HttpTls {
    /// Both files or neither.
    pub fn from_parts(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<HttpTls>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(HttpTls { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--http-tls-cert needs --http-tls-key (web.tls_key)"),
            (None, Some(_)) => anyhow::bail!("--http-tls-key needs --http-tls-cert (web.tls_cert)"),
        }
    }

    pub fn server_config(&self) -> Result<medfed_actors::cluster::tls::RustlsServerConfig> {
        Ok(medfed_actors::cluster::tls::https_server(&self.cert, &self.key)?)
    }
}
