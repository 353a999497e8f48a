//! Mutual TLS for cluster sessions: every node presents a certificate
//! signed by the cluster's CA and accepts only peers that do the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, ConnectionCommon, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::gate::Identity;
use super::ClusterError;

/// The SAN URI that names a hospital in its client certificate.
pub const HOSPITAL_URI: &str = "urn:medfed:hospital:";

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
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider())
}

pub(super) fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what} {}: {e}", path.display()))
}

pub(super) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
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

pub(super) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ClusterError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err("cannot read the private key", path, e))
}

pub(super) fn roots(path: &Path) -> Result<Arc<RootCertStore>, ClusterError> {
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

/// A handshake failure, worded: a handshake cut short (a coordinator
/// stopping or starting) is a connection failure to retry; anything else
/// in TLS is a refusal.
pub fn handshake_error(addr: &str, e: std::io::Error) -> ClusterError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => {
            ClusterError::Connect(format!("{addr}: the TLS handshake was cut short ({e})"))
        }
        _ => ClusterError::Tls(format!("handshake with {addr} failed: {e}")),
    }
}

/// 32 bytes of the channel's exporter key: proofs made inside this TLS
/// session are worthless in any other.
pub fn exporter<D>(connection: &ConnectionCommon<D>) -> Result<Vec<u8>, std::io::Error> {
    connection
        .export_keying_material([0u8; 32], super::gate::handshake::EXPORTER_LABEL, None)
        .map(|k| k.to_vec())
        .map_err(|e| std::io::Error::other(format!("TLS exporter: {e}")))
}

/// Who a peer's certificate says it is.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, String> {
    let der = certs
        .and_then(|c| c.first())
        .ok_or_else(|| "it presented no certificate".to_string())?;
    certificate_identity(der)
}

/// A medfed certificate is a coordinator's (server use only) or a
/// hospital's (client use only, its name in a `urn:medfed:hospital:` SAN).
pub fn certificate_identity(der: &[u8]) -> Result<Identity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("its certificate cannot be read: {e}"))?;
    let usage = cert
        .extended_key_usage()
        .map_err(|e| format!("its certificate's extended key usage cannot be read: {e}"))?
        .map(|u| (u.value.server_auth, u.value.client_auth));
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("its certificate's names cannot be read: {e}"))?;
    let hospitals: Vec<String> = names
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => uri.strip_prefix(HOSPITAL_URI).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if hospitals.len() > 1 {
        return Err(format!(
            "its certificate names {} hospitals ({}); a hospital's certificate names one",
            hospitals.len(),
            hospitals.join(", ")
        ));
    }
    let hospital = hospitals.into_iter().next();
    const NEW: &str = "make new ones with `medfed cluster gen-certs`";
    match (usage, hospital) {
        (Some((true, true)), _) => Err(format!(
            "its certificate is marked for both server and client use; a medfed certificate is one or the other ({NEW})"
        )),
        (Some((false, true)), Some(name)) => {
            crate::names::check_hospital_name(&name).map_err(|e| format!("its certificate: {e}"))?;
            Ok(Identity::Hospital(name))
        }
        (Some((false, true)), None) => Err(format!(
            "its client certificate names no hospital (no {HOSPITAL_URI}NAME subject alternative name; {NEW})"
        )),
        (Some((true, false)), None) => Ok(Identity::Coordinator),
        (Some((true, false)), Some(_)) => Err(format!("its server certificate names a hospital ({NEW})")),
        _ => Err(format!("its certificate is not marked for server or client use ({NEW})")),
    }
}

/// This node's own certificate must name `me`.
pub fn check_own(files: &TlsFiles, me: &Identity) -> Result<(), ClusterError> {
    let cert = certs(&files.cert)?;
    let named = certificate_identity(&cert[0]).map_err(|e| {
        ClusterError::Tls(format!(
            "{}: {}",
            files.cert.display(),
            e.replacen("its", "this", 1)
        ))
    })?;
    if &named != me {
        return Err(ClusterError::Tls(format!(
            "{} is the certificate of {named}, but this node is {me}",
            files.cert.display()
        )));
    }
    Ok(())
}

/// A TLS server with no certificate at all: every handshake fails. It
/// guards ractor_cluster's own listener, which medfed does not use (the
/// gate accepts sessions), so that nothing can connect through it.
pub fn refuse_all() -> Result<TlsAcceptor, ClusterError> {
    #[derive(Debug)]
    struct NoCertificate;
    impl ResolvesServerCert for NoCertificate {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// When the first certificate in `path` expires (Unix seconds).
pub fn not_after(path: &Path) -> Result<i64, ClusterError> {
    let cert = certs(path)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert[0])
        .map_err(|e| tls_err("cannot read the certificate in", path, e))?;
    Ok(parsed.validity().not_after.timestamp())
}
