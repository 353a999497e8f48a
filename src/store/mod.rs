//! The store: one SQLite file (WAL, `synchronous=FULL`) with the runs, their
//! tasks and rounds, each hospital's part in each round, the privacy spent
//! as the coordinator saw it, the append-only event log, the checkpoints a
//! restarted coordinator resumes from, and the model registry. Model files
//! are safetensors beside it, written atomically, with their sha256 here.
//!
//! One writer thread owns the only writing connection: the coordinator's
//! round commit waits for it (the one place the runtime waits for the
//! disk), everything else is queued. Readers open their own connections.

mod files;
mod observer;
mod reads;
mod registry;
mod resume;
mod schema;
mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use thiserror::Error;

pub use files::sha256_hex;
pub use observer::{record_events, RunFacts};
pub use reads::{RoundRow, RunRow};
pub use registry::{Contribution, Lineage, ModelVersion, PrivacyCost};
pub use resume::{Durable, Interrupted};
pub use writer::Writer;

/// SQLite databases start with this header.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("store {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An open store: where it is, and its writer (none when opened to read).
pub struct Store {
    path: PathBuf,
    files: PathBuf,
    writer: Option<Writer>,
    /// Held while this process may write: one writer per store.
    _lock: Option<std::fs::File>,
}

impl Store {
    /// Open (or create) the store at `path`. An existing file must be a
    /// medfed store that passes SQLite's integrity check; anything else is
    /// refused with the reason and left untouched.
    pub fn open(path: &Path) -> Result<Store> {
        let display = path.display().to_string();
        let existed = path.exists();
        if existed {
            check_header(path)?;
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let lock = lock(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sql {
            path: display.clone(),
            source,
        })?;
        schema::prepare(&conn, existed).map_err(|e| e.at(&display))?;
        let files = files_dir(path);
        Ok(Store {
            path: path.to_path_buf(),
            files,
            writer: Some(Writer::start(conn, display)),
            _lock: Some(lock),
        })
    }

    /// Open an existing store to read it (the registry commands): no lock,
    /// no writer, nothing migrated; safe while a coordinator writes.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let display = path.display().to_string();
        if !path.exists() {
            return Err(StoreError::Invalid {
                path: display,
                message: "does not exist: nothing has been recorded there yet".into(),
            });
        }
        check_header(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sql {
            path: display.clone(),
            source,
        })?;
        schema::check_readable(&conn).map_err(|e| e.at(&display))?;
        Ok(Store {
            path: path.to_path_buf(),
            files: files_dir(path),
            writer: None,
            _lock: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the store's model files live: `<store>-models/` beside it.
    pub fn files_dir(&self) -> &Path {
        &self.files
    }

    /// The writer; an error for a store opened to read.
    pub fn writer(&self) -> Result<&Writer> {
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Refused(format!("store {}: opened to read only", self.path.display())))
    }

    /// A read connection of its own (WAL: readers never wait for the writer).
    pub fn reader(&self) -> Result<Connection> {
        Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| self.sql(source))
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// A consistent copy of the store at `to` (SQLite's online backup: safe
    /// while a coordinator writes). `to` must not exist.
    pub fn backup(&self, to: &Path) -> Result<()> {
        if to.exists() {
            return Err(StoreError::Refused(format!(
                "{} exists: a backup never overwrites a file",
                to.display()
            )));
        }
        let src = self.reader()?;
        let mut dst = Connection::open(to).map_err(|source| StoreError::Sql {
            path: to.display().to_string(),
            source,
        })?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| self.sql(e))?;
        backup
            .run_to_completion(256, std::time::Duration::from_millis(5), None)
            .map_err(|e| self.sql(e))?;
        Ok(())
    }
}

/// An exclusive lock on `<store>.lock` for as long as the file is open:
/// two processes writing one store would resume each other's live runs.
fn lock(store: &Path) -> Result<std::fs::File> {
    let held = crate::lockfile::acquire(store).map_err(|source| StoreError::Io {
        path: format!("{}.lock", store.display()),
        source,
    })?;
    held.ok_or_else(|| StoreError::Invalid {
        path: store.display().to_string(),
        message: "is in use by another medfed process (serve, coordinator or run --store): one \
                  process writes a store at a time; the registry commands read it meanwhile"
            .into(),
    })
}

/// `medfed.sqlite` -> `medfed-models/` in the same directory.
fn files_dir(store: &Path) -> PathBuf {
    let stem = store
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "medfed".into());
    store.with_file_name(format!("{stem}-models"))
}

/// Refuse a file that is not an SQLite database before SQLite sees it.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let display = path.display().to_string();
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(|source| StoreError::Io {
        path: display.clone(),
        source,
    })?;
    let read = file.read(&mut head).map_err(|source| StoreError::Io {
        path: display.clone(),
        source,
    })?;
    if read == 0 {
        // An empty file is what an interrupted creation leaves: SQLite initialises it.
        return Ok(());
    }
    if read < head.len() || &head != SQLITE_HEADER {
        return Err(StoreError::Invalid {
            path: display,
            message: "not a medfed store (the file is not an SQLite database); it was left untouched".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
