//! The API token: where it comes from, a comparison that does not leak how
//! much of a guess was right, and rotation without a restart (a token file
//! is re-read when it changes; every token in it is accepted).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rand::RngCore;

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;
/// How often a token file is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Where the tokens came from (a generated one is shown once, on a terminal).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    Environment,
    Config,
    /// Read from this file (written by an operator or a Secret mount).
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// The accepted tokens: fixed (environment, config) or a file re-read when
/// its modification time or size changes. A file that becomes unreadable or
/// empty keeps the last good tokens (a rotation in progress must not lock
/// everyone out), with a warning.
pub struct Tokens {
    file: Option<PathBuf>,
    current: RwLock<Current>,
}

struct Current {
    tokens: Vec<String>,
    seen: Option<Stamp>,
    checked: Instant,
}

impl Tokens {
    /// MEDFED_API_TOKEN, else `web.api_token`, else the tokens in
    /// `token_file`, else a fresh random token written there (mode 0600).
    pub fn resolve(
        env: Option<String>,
        configured: Option<&str>,
        token_file: &Path,
    ) -> Result<(Tokens, TokenSource)> {
        // A Secret mounted into the environment often ends in a newline.
        if let Some(t) = env.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            check_length(&t).context("MEDFED_API_TOKEN")?;
            return Ok((Tokens::fixed(t), TokenSource::Environment));
        }
        if let Some(t) = configured {
            check_length(t).context("web.api_token")?;
            return Ok((Tokens::fixed(t.to_string()), TokenSource::Config));
        }
        if token_file.exists() {
            let tokens = read_tokens(token_file)?;
            if tokens.is_empty() {
                anyhow::bail!(
                    "{} holds no token of at least {MIN_TOKEN_LEN} characters (one per line)",
                    token_file.display()
                );
            }
            warn_if_shared(token_file);
            return Ok((
                Tokens::from_file(token_file, tokens),
                TokenSource::File(token_file.to_path_buf()),
            ));
        }
        let token = random_hex(24);
        write_private(token_file, &token)?;
        Ok((
            Tokens::from_file(token_file, vec![token]),
            TokenSource::Generated(token_file.to_path_buf()),
        ))
    }

    pub fn fixed(token: String) -> Tokens {
        Tokens {
            file: None,
            current: RwLock::new(Current {
                tokens: vec![token],
                seen: None,
                checked: Instant::now(),
            }),
        }
    }

    fn from_file(path: &Path, tokens: Vec<String>) -> Tokens {
        Tokens {
            file: Some(path.to_path_buf()),
            current: RwLock::new(Current {
                tokens,
                seen: stamp(path),
                checked: Instant::now(),
            }),
        }
    }

    /// The first accepted token (what a generated file holds).
    pub fn primary(&self) -> String {
        self.reload_if_changed();
        self.current
            .read()
            .map(|c| c.tokens.first().cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Whether `given` is one of the accepted tokens, in time independent of
    /// where a difference is.
    pub fn accepts(&self, given: &str) -> bool {
        self.reload_if_changed();
        let Ok(current) = self.current.read() else {
            return false;
        };
        // Every token is compared, so timing does not say which one matched.
        current.tokens.iter().fold(false, |any, t| {
            constant_time_eq(given.as_bytes(), t.as_bytes()) | any
        })
    }

    /// Whether a token with this sha256 is still accepted (sessions opened
    /// with a rotated-out token end).
    pub fn accepts_digest(&self, digest: &[u8; 32]) -> bool {
        self.reload_if_changed();
        let Ok(current) = self.current.read() else {
            return false;
        };
        current.tokens.iter().fold(false, |any, t| {
            constant_time_eq(&super::session::digest(t), digest) | any
        })
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        let due = self
            .current
            .read()
            .map(|c| c.checked.elapsed() >= RECHECK)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut current) = self.current.write() else {
            return;
        };
        current.checked = Instant::now();
        let now = stamp(path);
        if now == current.seen {
            return;
        }
        current.seen = now;
        match read_tokens(path) {
            Ok(tokens) if !tokens.is_empty() => {
                tracing::info!(file = %path.display(), accepted = tokens.len(), "API tokens reloaded");
                current.tokens = tokens;
            }
            Ok(_) => tracing::warn!(
                file = %path.display(),
                "the token file holds no valid token: the previous tokens stay accepted"
            ),
            Err(e) => tracing::warn!("{e:#}: the previous tokens stay accepted"),
        }
    }
}

fn check_length(token: &str) -> Result<()> {
    if token.trim().len() < MIN_TOKEN_LEN {
        anyhow::bail!("the API token must be at least {MIN_TOKEN_LEN} characters");
    }
    Ok(())
}

/// What changes when a file is rewritten or replaced: modification time,
/// size and, on Unix, inode and change time (a `cp -p` keeps the first two).
type Stamp = (SystemTime, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (ino, ctime, ctime_ns) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), meta.ctime(), meta.ctime_nsec())
    };
    #[cfg(not(unix))]
    let (ino, ctime, ctime_ns) = (0, 0, 0);
    Some((meta.modified().ok()?, meta.len(), ino, ctime, ctime_ns))
}

/// One token per line; blank lines and `#` comments are skipped, and lines
/// too short to be a token are ignored with a warning.
fn read_tokens(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API token file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() < MIN_TOKEN_LEN {
            tracing::warn!(
                file = %path.display(),
                line = n + 1,
                "ignored: a token must be at least {MIN_TOKEN_LEN} characters"
            );
            continue;
        }
        tokens.push(line.to_string());
    }
    Ok(tokens)
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the API token file is readable by other users: make it mode 0600"
                );
            }
        }
    }
}

/// The /metrics scrape token: `web.scrape_token` (or
/// MEDFED_WEB__SCRAPE_TOKEN), else the file `web.scrape_token_file` names
/// (read once at start, trimmed); `None`: /metrics is open.
pub fn scrape_token(loaded: &crate::config::Loaded) -> Result<Option<String>> {
    let web = &loaded.config.web;
    let Some(path) = &web.scrape_token_file else {
        return Ok(web.scrape_token.clone());
    };
    if web.scrape_token.is_some() {
        anyhow::bail!("web.scrape_token and web.scrape_token_file are both set: keep one");
    }
    let path = loaded.resolve(path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("web.scrape_token_file: cannot read {}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "web.scrape_token_file: {} must hold one token of at least {MIN_TOKEN_LEN} printable characters without spaces",
            path.display()
        );
    }
    Ok(Some(token.to_string()))
}

/// `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, token: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing the API token to {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing the API token to {}", path.display()))?;
    Ok(())
}

/// Equal in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, expected) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ expected);
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_exact_token_passes() {
        let tokens = Tokens::fixed("0123456789abcdef".into());
        assert!(tokens.accepts("0123456789abcdef"));
        for bad in ["", "0123456789abcdeg", "0123456789abcdef0", "0123456789abcde"] {
            assert!(!tokens.accepts(bad), "{bad:?}");
        }
        assert_eq!(bearer("Bearer abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn a_generated_token_is_written_for_this_user_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/serve-8080.token");
        let (tokens, source) = Tokens::resolve(None, None, &file).unwrap();
        assert_eq!(source, TokenSource::Generated(file.clone()));
        let token = tokens.primary();
        assert_eq!(token.len(), 48);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A restart reads the same file: scripts holding the token keep working.
        let (again, source) = Tokens::resolve(None, None, &file).unwrap();
        assert_eq!(source, TokenSource::File(file.clone()));
        assert!(again.accepts(&token));
        let (env, _) = Tokens::resolve(
            Some("from-the-environment".into()),
            Some("from-config-000000"),
            &file,
        )
        .unwrap();
        assert!(env.accepts("from-the-environment"));
        assert!(Tokens::resolve(Some("short".into()), None, &file).is_err());
        let (padded, _) = Tokens::resolve(Some("from-the-environment\n".into()), None, &file).unwrap();
        assert!(padded.accepts("from-the-environment"), "trimmed");
        assert!(Tokens::resolve(None, Some("short"), &file).is_err());
        let (cfg, _) = Tokens::resolve(None, Some("from-config-000000"), &file).unwrap();
        assert!(cfg.accepts("from-config-000000"));
    }

    #[test]
    fn a_rewritten_token_file_rotates_the_tokens_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "# the first\nold-token-0123456789\nshort\n").unwrap();
        let (tokens, _) = Tokens::resolve(None, None, &file).unwrap();
        assert!(tokens.accepts("old-token-0123456789"));
        assert!(!tokens.accepts("short"));
        // During the rotation both are accepted, then only the new one.
        std::fs::write(&file, "old-token-0123456789\nnew-token-0123456789\n").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(tokens.accepts("new-token-0123456789"));
        assert!(tokens.accepts("old-token-0123456789"));
        std::fs::write(&file, "new-token-0123456789\n").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(!tokens.accepts("old-token-0123456789"));
        assert!(tokens.accepts("new-token-0123456789"));
        // Emptied mid-rotation: the last good tokens stay.
        std::fs::write(&file, "").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert!(tokens.accepts("new-token-0123456789"));
        std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
        assert!(Tokens::resolve(None, None, &dir.path().join("empty.token")).is_err());
    }
}
