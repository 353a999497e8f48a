//! `medfed cluster gen-certs`: a small certificate authority for one
//! cluster, a server certificate for the coordinator (its names) and a
//! client certificate per hospital (its name, in a `urn:medfed:hospital:`
//! SAN; client use only). The CA may sign nothing but leaves (path length
//! 0) and, by name constraints, no server names but the coordinator's.
//! Its key is written apart from the nodes' files, which hold only what a
//! node needs. Clusters with a PKI of their own issue the same shapes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};

use crate::cli::GenCertsArgs;
use medfed_actors::cluster::tls::HOSPITAL_URI;

/// Names every coordinator certificate carries (local runs and tests).
const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

pub fn execute(args: &GenCertsArgs) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for h in &args.hospitals {
        medfed_actors::names::check_hospital_name(h).map_err(|e| anyhow::anyhow!("--hospitals: {e}"))?;
        // Files are <name>.pem and <name>-key.pem beside ca.pem and coordinator*.pem.
        if h == "coordinator" || h == "ca" || h.ends_with("-key") {
            bail!("--hospitals: '{h}' would collide with another file (coordinator, ca and names ending in -key are taken)");
        }
        if !seen.insert(h.to_ascii_lowercase()) {
            bail!("--hospitals: '{h}' is given twice");
        }
    }
    if args.days == 0 || args.days > 3650 {
        bail!("--days: {} is not between 1 and 3650", args.days);
    }
    let mut coordinator_names: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
    for name in &args.coordinator_names {
        if name.parse::<std::net::IpAddr>().is_err() && !crate::config::is_dns_name(name) {
            bail!("--coordinator-names: '{name}' is neither a DNS name nor an IP address");
        }
        if !coordinator_names.contains(name) {
            coordinator_names.push(name.clone());
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out: creating {}", args.out.display()))?;
    // Compared as real paths: "certs/x.pem" is inside "./certs", and so is a symlink into it.
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("--out: resolving {}", args.out.display()))?;
    let ca_key_path = match &args.ca_key {
        Some(path) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent)
                .with_context(|| format!("--ca-key: creating {}", parent.display()))?;
            let name = path.file_name().context("--ca-key: a file name is needed")?;
            parent
                .canonicalize()
                .with_context(|| format!("--ca-key: resolving {}", parent.display()))?
                .join(name)
        }
        None => default_ca_key(&out),
    };
    if ca_key_path.starts_with(&out) {
        bail!(
            "--ca-key: {} is inside --out {}: the CA key must not travel with the nodes' files",
            ca_key_path.display(),
            out.display()
        );
    }

    let now = time::OffsetDateTime::now_utc();
    let (not_before, not_after) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(args.days)),
    );
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "medfed cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: coordinator_names.iter().map(|n| subtree(n)).collect(),
        excluded_subtrees: Vec::new(),
    });
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&args.out.join("ca.pem"), &ca_cert.pem())?;
    write(&ca_key_path, &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf =
        |common_name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            (params.not_before, params.not_after) = (not_before, not_after);
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let sans = coordinator_names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
        })
        .collect::<Result<Vec<_>>>()?;
    let (cert, key) = leaf("medfed coordinator", sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    write(&args.out.join("coordinator.pem"), &cert)?;
    write(&args.out.join("coordinator-key.pem"), &key)?;
    for h in &args.hospitals {
        let uri = SanType::URI(format!("{HOSPITAL_URI}{h}").as_str().try_into()?);
        let (cert, key) = leaf(h, vec![uri], ExtendedKeyUsagePurpose::ClientAuth)?;
        write(&args.out.join(format!("{h}.pem")), &cert)?;
        write(&args.out.join(format!("{h}-key.pem")), &key)?;
    }
    eprintln!(
        "wrote the CA certificate, a coordinator certificate ({}) and {} hospital certificate(s) to {}, \
         valid for {} days; the CA key is in {} (keep it off the nodes)",
        coordinator_names.join(", "),
        args.hospitals.len(),
        args.out.display(),
        args.days,
        ca_key_path.display()
    );
    Ok(())
}

/// `certs/` -> `certs.ca-key.pem`, beside the directory, not in it.
fn default_ca_key(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "medfed".into());
    out.with_file_name(format!("{name}.ca-key.pem"))
}

/// A permitted subtree naming exactly one coordinator name.
fn subtree(name: &str) -> GeneralSubtree {
    match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => GeneralSubtree::IpAddress(CidrSubnet::V4(ip.octets(), [255; 4])),
        Ok(std::net::IpAddr::V6(ip)) => GeneralSubtree::IpAddress(CidrSubnet::V6(ip.octets(), [255; 16])),
        Err(_) => GeneralSubtree::DnsName(name.to_string()),
    }
}

/// Keys are secrets and certificates need no readers but the node: owner-only
/// permissions, also when a file is rewritten.
fn write(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
