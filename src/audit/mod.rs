//! The audit log: who started and stopped which run with which settings,
//! failed authentications, hospitals admitted and refused and why, budgets
//! exhausted. Append-only JSONL, each line chained to the one before by
//! sha256 (`chain`), fsynced as it is written, one writer per file (flock),
//! and mirrored into the store when there is one, so a cut-off end is
//! detectable too. `medfed audit verify` checks it.

pub mod chain;
pub mod events;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::Value;

use chain::{Content, Entry};

pub struct AuditLog {
    path: PathBuf,
    /// The file's name: the log's name in the store's copy.
    name: String,
    state: Mutex<Tail>,
    store: Mutex<Option<Arc<crate::store::Store>>>,
    /// Held for the process's life: one writer per file.
    _lock: std::fs::File,
}

struct Tail {
    file: std::fs::File,
    /// The file's length after the last whole entry.
    len: u64,
    seq: u64,
    prev: String,
    /// This log's name in the store: the file's name and its first entry's
    /// hash, so a replaced or restarted file is another log there.
    identity: Option<String>,
}

/// `audit-serve.jsonl#<first 16 hex digits of the first entry's hash>`.
fn identity(name: &str, first_line: &str) -> Option<String> {
    let entry: Entry = serde_json::from_str(first_line).ok()?;
    Some(format!("{name}#{}", &entry.hash[..16.min(entry.hash.len())]))
}

impl AuditLog {
    /// `<data dir>/audit-<command>.jsonl`.
    pub fn path_for(data_dir: &Path, command: &str) -> PathBuf {
        data_dir.join(format!("audit-{command}.jsonl"))
    }

    /// Open (or create, mode 0600) and continue the chain; a log whose
    /// chain is broken is refused with the line and the problem.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = lock(path)?;
        let bytes = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading the audit log {}", path.display())),
        };
        // A crash mid-write leaves a last line without its newline: it was
        // never a whole entry, so it is dropped (and said so).
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            tracing::warn!(
                audit_log = %path.display(),
                bytes = bytes.len() - whole,
                "dropped an incomplete last line (a write cut short by a crash)"
            );
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(whole as u64))
                .with_context(|| format!("repairing the audit log {}", path.display()))?;
        }
        let text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
        let (prev, seq) = chain::tail(&text).map_err(|b| {
            anyhow::anyhow!(
                "the audit log {} is broken at line {}: {} (run `medfed audit verify`; move it aside to start a new one)",
                path.display(),
                b.line,
                b.problem
            )
        })?;
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let identity = text.lines().next().and_then(|first| identity(&name, first));
        Ok(AuditLog {
            path: path.to_path_buf(),
            name,
            state: Mutex::new(Tail {
                file,
                len: whole as u64,
                seq,
                prev,
                identity,
            }),
            store: Mutex::new(None),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Also keep every entry from now on in `store`; says so when the store
    /// already holds entries of this log past the file's end (it was cut).
    pub fn mirror_into(&self, store: Arc<crate::store::Store>) {
        if let Ok(tail) = self.state.lock() {
            if let Some(identity) = &tail.identity {
                let kept: Option<i64> = store
                    .reader()
                    .ok()
                    .and_then(|c| {
                        c.query_row("SELECT MAX(seq) FROM audit WHERE log = ?1", [identity], |r| {
                            r.get(0)
                        })
                        .ok()
                    })
                    .flatten();
                if let Some(kept) = kept.filter(|k| *k as u64 > tail.seq) {
                    tracing::error!(
                        audit_log = %self.path.display(),
                        file_ends_at = tail.seq,
                        store_holds = kept,
                        "the audit log file is missing entries the store holds: it was cut (see `medfed audit verify`)"
                    );
                }
            }
        }
        if let Ok(mut s) = self.store.lock() {
            *s = Some(store);
        }
    }

    /// Append one entry (written and fsynced before this returns). An
    /// entry that cannot be written is logged as an error: the action it
    /// records has happened either way.
    pub fn record(&self, actor: &str, action: &str, details: Value) {
        if let Err(e) = self.append(actor, action, details) {
            tracing::error!(audit_log = %self.path.display(), "cannot write the audit entry '{action}': {e:#}");
        }
    }

    fn append(&self, actor: &str, action: &str, details: Value) -> Result<()> {
        let mut tail = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        let entry = Entry::chain(
            Content {
                seq: tail.seq + 1,
                time: rfc3339_now(),
                actor: actor.to_string(),
                action: action.to_string(),
                details,
            },
            &tail.prev,
        );
        let line = serde_json::to_string(&entry)?;
        let written = format!("{line}\n");
        let appended = tail
            .file
            .write_all(written.as_bytes())
            .and_then(|()| tail.file.sync_data());
        if let Err(e) = appended {
            // Never leave half an entry for the next one to follow.
            let _ = tail.file.set_len(tail.len);
            return Err(e.into());
        }
        tail.len += written.len() as u64;
        tail.seq = entry.content.seq;
        tail.prev = entry.hash.clone();
        if tail.identity.is_none() {
            tail.identity = identity(&self.name, &line);
        }
        let log = tail.identity.clone().unwrap_or_else(|| self.name.clone());
        drop(tail);
        if let Some(store) = self.store.lock().ok().and_then(|s| s.clone()) {
            let seq = entry.content.seq as i64;
            if let Ok(writer) = store.writer() {
                // A plain insert: an entry already kept under this log and
                // number is never overwritten (the write fails, logged).
                writer.queue("an audit entry", move |conn| {
                    conn.execute(
                        "INSERT INTO audit (log, seq, line) VALUES (?1, ?2, ?3)",
                        rusqlite::params![log, seq, line],
                    )
                    .map(|_| ())
                });
            }
        }
        Ok(())
    }
}

fn lock(path: &Path) -> Result<std::fs::File> {
    crate::lockfile::acquire(path)
        .with_context(|| format!("locking the audit log {}", path.display()))?
        .with_context(|| {
            format!(
                "the audit log {} is in use by another medfed process: one writer per log",
                path.display()
            )
        })
}

/// What `medfed audit verify` found.
pub struct Verified {
    pub entries: usize,
    /// Entries the store holds for this log (when a store was given).
    pub in_store: Option<usize>,
}

/// Check the chain of the log at `path` and, with a store, that the file
/// holds every entry the store kept of it (a cut-off end shows there).
pub fn verify(path: &Path, store: Option<&crate::store::Store>) -> Result<Verified> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries = chain::verify(&text)
        .map_err(|b| anyhow::anyhow!("{} is broken at line {}: {}", path.display(), b.line, b.problem))?;
    let Some(store) = store else {
        return Ok(Verified {
            entries,
            in_store: None,
        });
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(log) = text.lines().next().and_then(|first| identity(&name, first)) else {
        return Ok(Verified {
            entries,
            in_store: None,
        });
    };
    let conn = store.reader()?;
    let mut statement = conn.prepare("SELECT seq, line FROM audit WHERE log = ?1 ORDER BY seq")?;
    let kept: Vec<(i64, String)> = statement
        .query_map([&log], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let lines: Vec<&str> = text.lines().collect();
    for (seq, line) in &kept {
        match lines.get((*seq as usize).saturating_sub(1)) {
            Some(in_file) if in_file == line => {}
            Some(_) => anyhow::bail!(
                "{}: entry {seq} differs from the store's copy (the file was rewritten)",
                path.display()
            ),
            None => anyhow::bail!(
                "{}: entry {seq} is in the store but not in the file (its end was cut off: the file ends at entry {})",
                path.display(),
                lines.len()
            ),
        }
    }
    Ok(Verified {
        entries,
        in_store: Some(kept.len()),
    })
}

/// Now as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_now() -> String {
    let now = crate::clock::since_epoch();
    rfc3339(now.as_secs() as i64, now.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let (year, month, day, hour, minute, second) = crate::clock::civil(secs);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_796_342_399, 999), "2026-12-03T23:59:59.999Z");
    }

    #[test]
    fn a_log_continues_across_opens_and_one_writer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = AuditLog::path_for(dir.path(), "serve");
        {
            let log = AuditLog::open(&path).unwrap();
            log.record("cli", "run_started", json!({ "run": "run-1" }));
            assert!(AuditLog::open(&path).is_err(), "one writer");
        }
        let log = AuditLog::open(&path).unwrap();
        log.record("cli", "run_ended", json!({ "run": "run-1" }));
        drop(log);
        assert_eq!(verify(&path, None).unwrap().entries, 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A crash mid-write: the incomplete last line is dropped, the log goes on.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"ti").unwrap();
        drop(file);
        let log = AuditLog::open(&path).unwrap();
        log.record("cli", "run_started", json!({ "run": "run-2" }));
        drop(log);
        assert_eq!(verify(&path, None).unwrap().entries, 3);
        // A broken log is not continued.
        let text = std::fs::read_to_string(&path).unwrap().replace("run-1", "run-2");
        std::fs::write(&path, text).unwrap();
        let e = AuditLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("broken at line 1"), "{e}");
    }
}
