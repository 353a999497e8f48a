//! The bearer token of the control endpoints: where it comes from, and a
//! comparison that does not leak how much of a guess was right.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::RngCore;

/// Where the token came from (the generated one is shown once).
pub enum TokenSource {
    Environment,
    Config,
    Generated(PathBuf),
}

/// MEDFED_API_TOKEN, else `web.api_token`, else a fresh random token
/// written to `token_file` readable only by this user.
pub fn resolve(
    env: Option<String>,
    configured: Option<&str>,
    token_file: &Path,
) -> Result<(String, TokenSource)> {
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        if t.len() < 16 {
            anyhow::bail!("MEDFED_API_TOKEN must be at least 16 characters");
        }
        return Ok((t, TokenSource::Environment));
    }
    if let Some(t) = configured {
        return Ok((t.to_string(), TokenSource::Config));
    }
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(token_file, &token)?;
    Ok((token, TokenSource::Generated(token_file.to_path_buf())))
}

fn write_private(path: &Path, token: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing the API token to {}", path.display()))?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    Ok(())
}

/// `Authorization: Bearer <token>` checked in time independent of where
/// the first difference is.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, expected) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ expected);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = "0123456789abcdef";
        assert!(authorized(Some("Bearer 0123456789abcdef"), t));
        for bad in [
            None,
            Some(""),
            Some("0123456789abcdef"),
            Some("Bearer 0123456789abcdeg"),
            Some("Bearer 0123456789abcdef0"),
            Some("Bearer 0123456789abcde"),
            Some("Basic 0123456789abcdef"),
        ] {
            assert!(!authorized(bad, t), "{bad:?}");
        }
    }

    #[test]
    fn a_generated_token_is_written_for_this_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/api-token");
        let (token, source) = resolve(None, None, &file).unwrap();
        assert!(matches!(source, TokenSource::Generated(_)));
        assert_eq!(token.len(), 48);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, _) = resolve(None, None, &file).unwrap();
        assert_ne!(again, token, "a fresh token per start");
        let (env, _) = resolve(
            Some("from-the-environment".into()),
            Some("from-config-000000"),
            &file,
        )
        .unwrap();
        assert_eq!(env, "from-the-environment");
        assert!(resolve(Some("short".into()), None, &file).is_err());
        let (cfg, _) = resolve(None, Some("from-config-000000"), &file).unwrap();
        assert_eq!(cfg, "from-config-000000");
    }
}
