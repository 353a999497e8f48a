//! `medfed cluster gen-certs`: a THROWAWAY certificate authority and one
//! certificate per node, for development and tests only (the CA key is
//! written beside the certificates, so anyone with the directory can mint
//! more). Production clusters use certificates from their own PKI.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::cli::GenCertsArgs;

pub fn execute(args: &GenCertsArgs) -> Result<()> {
    for node in &args.nodes {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("--nodes: '{node}' is not a usable node name (letters, digits, '-', '_', '.')");
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out: creating {}", args.out.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "medfed THROWAWAY development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&args.out.join("ca.pem"), &ca_cert.pem())?;
    write(&args.out.join("ca-key.pem"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    for node in &args.nodes {
        let mut names = vec![node.clone(), "localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(args.hosts.iter().cloned());
        names.dedup();
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, node.as_str());
        // Every node is both a server (the coordinator) and a client (hospitals connecting).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        write(&args.out.join(format!("{node}.pem")), &cert.pem())?;
        write(&args.out.join(format!("{node}-key.pem")), &key.serialize_pem())?;
    }
    eprintln!(
        "wrote a THROWAWAY CA and {} node certificate(s) to {} (development and tests only)",
        args.nodes.len(),
        args.out.display()
    );
    Ok(())
}

/// Keys are secrets: owner-only permissions from the start.
fn write(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
