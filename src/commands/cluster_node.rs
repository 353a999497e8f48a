//! What `medfed coordinator` and `medfed hospital` share: the cluster flags
//! over the `[cluster]` config, the cookie and the TLS files.

use anyhow::{bail, Context, Result};

use medfed_actors::cluster::TlsFiles;

use crate::cli::ClusterSecurity;
use crate::config::{ClusterConfig, Loaded};

pub const COOKIE_VAR: &str = "MEDFED_CLUSTER_COOKIE";

/// Flags win over the config file (paths on the command line are relative
/// to where the command runs; in the file, to the file).
pub fn apply_flags(loaded: &mut Loaded, flags: &ClusterSecurity) -> Result<()> {
    let cwd = std::env::current_dir()?;
    let c = &mut loaded.config.cluster;
    for (flag, key) in [
        (&flags.cookie_file, &mut c.cookie_file),
        (&flags.tls_cert, &mut c.tls_cert),
        (&flags.tls_key, &mut c.tls_key),
        (&flags.tls_ca, &mut c.tls_ca),
    ] {
        if let Some(path) = flag {
            *key = Some(cwd.join(path));
        }
    }
    Ok(())
}

/// The shared cookie: `cluster.cookie_file`, else MEDFED_CLUSTER_COOKIE.
/// Cluster mode never runs without one.
pub fn cookie(loaded: &Loaded) -> Result<String> {
    let cookie = match &loaded.config.cluster.cookie_file {
        Some(path) => {
            let path = loaded.resolve(path);
            std::fs::read_to_string(&path)
                .with_context(|| format!("--cookie-file: cannot read {}", path.display()))?
        }
        None => std::env::var(COOKIE_VAR).unwrap_or_default(),
    };
    let cookie = cookie.trim().to_string();
    if cookie.is_empty() {
        bail!(
            "cluster mode needs a cookie: pass --cookie-file PATH (or cluster.cookie_file) or set {COOKIE_VAR}; refusing to start without one"
        );
    }
    // Checked before any data is read: a weak cookie fails at once.
    medfed_actors::cluster::gate::Cookie::new(&cookie).map_err(anyhow::Error::msg)?;
    Ok(cookie)
}

/// A peer's cluster address must be HOST:PORT (a name or an IP; IPv6 in
/// brackets) with a port: anything else fails at once instead of retrying
/// forever.
pub fn check_address(addr: &str) -> Result<()> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("expected HOST:PORT, got '{addr}' (no port)");
    };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_ok {
        bail!("expected HOST:PORT, got '{addr}' (bad host '{host}')");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bail!("expected HOST:PORT, got '{addr}' (bad port '{port}')"),
    }
}

/// Mutual TLS when certificate, key and CA are all given; a partial set is an error.
pub fn tls(loaded: &Loaded) -> Result<Option<TlsFiles>> {
    let ClusterConfig {
        tls_cert,
        tls_key,
        tls_ca,
        ..
    } = &loaded.config.cluster;
    match (tls_cert, tls_key, tls_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
            cert: loaded.resolve(cert),
            key: loaded.resolve(key),
            ca: loaded.resolve(ca),
        })),
        _ => {
            let missing: Vec<&str> = [
                ("--tls-cert", tls_cert),
                ("--tls-key", tls_key),
                ("--tls-ca", tls_ca),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(flag, _)| flag)
            .collect();
            bail!(
                "mutual TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                missing.join(", ")
            )
        }
    }
}
