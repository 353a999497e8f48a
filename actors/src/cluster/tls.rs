//! Mutual TLS for cluster sessions: every node presents a certificate
//! signed by the cluster's CA and accepts only peers that do the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ClusterError;

/// The rustls server configuration type (for HTTPS servers built on it).
pub type RustlsServerConfig = ServerConfig;

/// A node's certificate and key, and the CA its peers must be signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

// Explicit, so that the choice does not depend on which rustls backends
// other crates happen to enable in the build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what} {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err("cannot read certificates from", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("bad certificate in", path, e))?;
    if certs.is_empty() {
        return Err(tls_err(
            "no certificate in",
            path,
            "expected PEM 'CERTIFICATE' blocks",
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ClusterError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err("cannot read the private key", path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, ClusterError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| tls_err("unusable CA certificate in", path, e))?;
    }
    Ok(Arc::new(store))
}

/// The listening side: requires a client certificate from the CA.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ClusterError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| tls_err("cannot verify clients with", &files.ca, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| {
            tls_err(
                "certificate and key do not form a server identity:",
                &files.cert,
                e,
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A plain TLS server identity (no client certificates): the HTTPS side of
/// the control panel and API, whose clients authenticate with the token.
pub fn https_server(cert: &Path, key_file: &Path) -> Result<ServerConfig, ClusterError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs(cert)?, key(key_file)?)
        .map_err(|e| tls_err("certificate and key do not form a server identity:", cert, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The connecting side: trusts only the CA and presents its own certificate.
pub fn connector(files: &TlsFiles) -> Result<TlsConnector, ClusterError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| {
            tls_err(
                "certificate and key do not form a client identity:",
                &files.cert,
                e,
            )
        })?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the server's certificate must carry: the host part of `addr`.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, ClusterError> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| ClusterError::Tls(format!("'{host}' is not a valid server name: {e}")))
}
