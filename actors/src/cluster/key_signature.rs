//! Secure aggregation's setup keys signed with the hospital's mutual-TLS
//! identity. Every key exchange passes the coordinator; without these
//! signatures a malicious coordinator could hand each hospital keys of its
//! own making and read every update. A hospital signs its two public keys
//! with its TLS private key and sends its certificate chain with the
//! signature; each peer checks that the chain leads to the cluster's CA,
//! that the certificate is a hospital's client certificate naming the
//! hospital the keys are claimed for, and that the signature verifies.
//!
//! The proof on the wire: the certificate chain (end entity first), the
//! TLS signature scheme, the signature — each length-prefixed, big-endian.

use std::sync::Arc;

use medfed_models::secagg::{KeySigner, KeyVerifier};
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::{Signer, SigningKey};
use tokio_rustls::rustls::SignatureScheme;

use super::gate::Identity;
use super::tls::{certificate_identity, certs, check_own, key, provider, roots, tls_err, TlsFiles};
use super::ClusterError;
use crate::hospital::SecAggIdentity;

/// Kept apart from any other use of the TLS key: what is signed here can
/// never be mistaken for a TLS handshake signature (those begin with 64
/// spaces) or for anything else medfed signs.
const DOMAIN: &[u8] = b"medfed secure-aggregation setup keys v1\0";
/// Bounds on a proof from the network: a short chain of ordinary
/// certificates and one signature.
const MAX_CHAIN: usize = 4;
const MAX_CERTIFICATE: usize = 16 * 1024;
const MAX_SIGNATURE: usize = 1024;

/// The identity for `me`, from its mutual-TLS files: its signer and a
/// verifier of its peers. The certificate must be `me`'s.
pub fn secagg_identity(files: &TlsFiles, me: &str) -> Result<SecAggIdentity, ClusterError> {
    Ok(SecAggIdentity {
        signer: Arc::new(TlsKeySigner::load(files, me)?),
        verifier: Arc::new(TlsKeyVerifier::new(&files.ca)?),
    })
}

/// Signs with the hospital's TLS private key.
#[derive(Debug)]
pub struct TlsKeySigner {
    chain: Vec<CertificateDer<'static>>,
    signer: Box<dyn Signer>,
}

impl TlsKeySigner {
    pub fn load(files: &TlsFiles, me: &str) -> Result<Self, ClusterError> {
        check_own(files, &Identity::Hospital(me.to_string()))?;
        let chain = certs(&files.cert)?;
        if chain.len() > MAX_CHAIN {
            return Err(tls_err(
                "too many certificates in",
                &files.cert,
                format!("{} (at most {MAX_CHAIN})", chain.len()),
            ));
        }
        let signing_key: Arc<dyn SigningKey> = provider()
            .key_provider
            .load_private_key(key(&files.key)?)
            .map_err(|e| tls_err("unusable private key in", &files.key, e))?;
        let schemes = provider().signature_verification_algorithms.supported_schemes();
        let signer = signing_key.choose_scheme(&schemes).ok_or_else(|| {
            tls_err(
                "no signature scheme fits the private key in",
                &files.key,
                "use an ECDSA, Ed25519 or RSA key",
            )
        })?;
        Ok(Self { chain, signer })
    }
}

impl KeySigner for TlsKeySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let signature = self
            .signer
            .sign(&[DOMAIN, message].concat())
            .map_err(|e| format!("the TLS key cannot sign: {e}"))?;
        Ok(Proof {
            chain: self.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            scheme: u16::from(self.signer.scheme()),
            signature,
        }
        .encode())
    }
}

/// Checks a peer's proof against the cluster's CA.
#[derive(Debug)]
pub struct TlsKeyVerifier {
    chains: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TlsKeyVerifier {
    pub fn new(ca: &std::path::Path) -> Result<Self, ClusterError> {
        let chains = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(|e| tls_err("cannot verify hospitals' certificates with", ca, e))?;
        Ok(Self {
            chains,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl KeyVerifier for TlsKeyVerifier {
    fn verify(&self, hospital: &str, message: &[u8], proof: &[u8]) -> Result<(), String> {
        let proof = Proof::decode(proof)?;
        let mut chain = proof.chain.into_iter().map(CertificateDer::from);
        let end_entity = chain.next().ok_or("the signature comes without a certificate")?;
        let intermediates: Vec<_> = chain.collect();
        self.chains
            .verify_client_cert(&end_entity, &intermediates, UnixTime::now())
            .map_err(|e| {
                format!(
                    "its certificate is not one of this cluster's: {}",
                    chain_refusal(&e)
                )
            })?;
        let named = certificate_identity(&end_entity)?;
        if named != Identity::Hospital(hospital.to_string()) {
            return Err(format!("they are signed by {named}, not by hospital {hospital}"));
        }
        let scheme = SignatureScheme::from(proof.scheme);
        let algorithm = self
            .algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .and_then(|(_, algs)| algs.first())
            .ok_or_else(|| format!("signature scheme {scheme:?} is not accepted"))?;
        let cert = webpki::EndEntityCert::try_from(&end_entity)
            .map_err(|e| format!("its certificate cannot be read: {e}"))?;
        cert.verify_signature(*algorithm, &[DOMAIN, message].concat(), &proof.signature)
            .map_err(|_| "the signature does not verify with its certificate's key".to_string())?;
        Ok(())
    }
}

/// Why a certificate chain was refused, in words.
fn chain_refusal(e: &tokio_rustls::rustls::Error) -> String {
    use tokio_rustls::rustls::{CertificateError as C, Error};
    match e {
        Error::InvalidCertificate(C::UnknownIssuer) => "it is not signed by this cluster's CA".into(),
        Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "it has expired".into(),
        Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet".into()
        }
        Error::InvalidCertificate(C::BadSignature) => "the CA's signature on it does not verify".into(),
        Error::InvalidCertificate(C::BadEncoding) => "it cannot be read".into(),
        other => other.to_string(),
    }
}

/// A signature with the certificate chain that vouches for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proof {
    chain: Vec<Vec<u8>>,
    scheme: u16,
    signature: Vec<u8>,
}

impl Proof {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(self.chain.len() as u8);
        for cert in &self.chain {
            out.extend_from_slice(&(cert.len() as u32).to_be_bytes());
            out.extend_from_slice(cert);
        }
        out.extend_from_slice(&self.scheme.to_be_bytes());
        out.extend_from_slice(&(self.signature.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        const BAD: &str = "the signature is malformed";
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(format!("{BAD} (cut short)"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let count = usize::from(take(1)?[0]);
        if count == 0 || count > MAX_CHAIN {
            return Err(format!("{BAD} ({count} certificates; 1 to {MAX_CHAIN} expected)"));
        }
        let mut chain = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| BAD.to_string())?) as usize;
            if len > MAX_CERTIFICATE {
                return Err(format!("{BAD} (a certificate of {len} bytes)"));
            }
            chain.push(take(len)?.to_vec());
        }
        let scheme = u16::from_be_bytes(take(2)?.try_into().map_err(|_| BAD.to_string())?);
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| BAD.to_string())?) as usize;
        if len > MAX_SIGNATURE {
            return Err(format!("{BAD} (a signature of {len} bytes)"));
        }
        let signature = take(len)?.to_vec();
        if !rest.is_empty() {
            return Err(format!("{BAD} ({} bytes after the signature)", rest.len()));
        }
        Ok(Self {
            chain,
            scheme,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };

    use super::*;
    use crate::cluster::tls::HOSPITAL_URI;

    /// A CA in `dir` (`<ca>.pem`) and one certificate per hospital (and a
    /// coordinator's), as `medfed cluster gen-certs` makes them.
    fn cluster(dir: &Path, ca: &str, hospitals: &[&str]) {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, ca);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{ca}.pem")), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let leaf = |file: &str, sans: Vec<SanType>, usage| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).unwrap();
        };
        for h in hospitals {
            let uri = SanType::URI(format!("{HOSPITAL_URI}{h}").as_str().try_into().unwrap());
            leaf(h, vec![uri], ExtendedKeyUsagePurpose::ClientAuth);
        }
        let dns = SanType::DnsName("localhost".try_into().unwrap());
        leaf(
            &format!("{ca}-coordinator"),
            vec![dns],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
    }

    fn files(dir: &Path, ca: &str, node: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}-key.pem")),
            ca: dir.join(format!("{ca}.pem")),
        }
    }

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path(), "ca", &["north", "south"]);
        cluster(dir.path(), "other-ca", &["rogue"]);
        dir
    }

    #[test]
    fn keys_signed_by_a_hospital_verify_as_that_hospitals() {
        let dir = setup();
        let north = secagg_identity(&files(dir.path(), "ca", "north"), "north").unwrap();
        let south = secagg_identity(&files(dir.path(), "ca", "south"), "south").unwrap();
        let proof = north.signer.sign(b"round 3 keys").unwrap();
        south.verifier.verify("north", b"round 3 keys", &proof).unwrap();
        // The same key, another message: a substituted key pair.
        let err = south
            .verifier
            .verify("north", b"round 3 other keys", &proof)
            .unwrap_err();
        assert!(err.contains("signature does not verify"), "{err}");
        // North's genuine proof presented as south's keys.
        let err = north
            .verifier
            .verify("south", b"round 3 keys", &proof)
            .unwrap_err();
        assert!(
            err.contains("signed by hospital north, not by hospital south"),
            "{err}"
        );
        // A proof whose signature bytes were altered.
        let mut bent = proof.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        let err = south
            .verifier
            .verify("north", b"round 3 keys", &bent)
            .unwrap_err();
        assert!(err.contains("signature does not verify"), "{err}");
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let dir = setup();
        let rogue = TlsKeySigner::load(&files(dir.path(), "other-ca", "rogue"), "rogue").unwrap();
        let south = secagg_identity(&files(dir.path(), "ca", "south"), "south").unwrap();
        let proof = rogue.sign(b"keys").unwrap();
        let err = south.verifier.verify("rogue", b"keys", &proof).unwrap_err();
        assert!(
            err.contains("not one of this cluster's: it is not signed by this cluster's CA"),
            "{err}"
        );
    }

    #[test]
    fn only_a_hospitals_own_certificate_signs_its_keys() {
        let dir = setup();
        let err = TlsKeySigner::load(&files(dir.path(), "ca", "north"), "south").unwrap_err();
        assert!(err.to_string().contains("certificate of hospital north"), "{err}");
        let err = TlsKeySigner::load(&files(dir.path(), "ca", "ca-coordinator"), "north").unwrap_err();
        assert!(err.to_string().contains("certificate of coordinator"), "{err}");
    }

    #[test]
    fn malformed_proofs_are_refused_with_a_reason() {
        let dir = setup();
        let north = secagg_identity(&files(dir.path(), "ca", "north"), "north").unwrap();
        let proof = north.signer.sign(b"keys").unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "cut short"),
            (vec![0], "0 certificates"),
            (vec![9], "9 certificates"),
            (proof[..proof.len() - 3].to_vec(), "cut short"),
            ([proof.as_slice(), &[0]].concat(), "1 bytes after the signature"),
            (vec![1, 0xff, 0xff, 0xff, 0xff], "a certificate of"),
        ];
        for (bytes, expected) in cases {
            let err = north.verifier.verify("north", b"keys", &bytes).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
