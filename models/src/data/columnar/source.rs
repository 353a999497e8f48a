//! Where a table's bytes come from: a local file or an object in object
//! storage, read by byte range so that only the footer and the projected
//! column chunks are ever fetched.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{ModelError, Result};

/// Random access to one file's bytes. Implementations must allow concurrent
/// reads from several threads (row groups are decoded in parallel).
pub trait ByteSource: Send + Sync {
    /// How the file is named in errors and logs (a path or an URL).
    fn name(&self) -> &str;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes from `start`; an error when they are not there.
    fn read_range(&self, start: u64, len: usize) -> io::Result<Bytes>;
    /// Whether a row group's column chunks are best fetched whole (object
    /// storage: one request per chunk) rather than page by page as the
    /// decoder asks (a local disk: memory stays at a few pages).
    fn fetch_whole_chunks(&self) -> bool {
        false
    }
}

/// A source that counts the bytes read through it (for progress metrics).
pub struct Counted {
    inner: Arc<dyn ByteSource>,
    read: Arc<AtomicU64>,
}

impl Counted {
    pub fn new(inner: Arc<dyn ByteSource>, read: Arc<AtomicU64>) -> Self {
        Self { inner, read }
    }
}

impl ByteSource for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_range(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let bytes = self.inner.read_range(start, len)?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    fn fetch_whole_chunks(&self) -> bool {
        self.inner.fetch_whole_chunks()
    }
}

/// A file on a local disk, read with positioned reads (no shared cursor).
pub struct LocalFile {
    name: String,
    file: File,
    len: u64,
}

impl LocalFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        Ok(Self {
            name: path.display().to_string(),
            file,
            len,
        })
    }
}

impl ByteSource for LocalFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let mut buffer = vec![0u8; len];
        self.file.read_exact_at(&mut buffer, start)?;
        Ok(Bytes::from(buffer))
    }
}

/// A file held in memory (tests, fuzzing, small objects).
pub struct InMemory {
    name: String,
    bytes: Bytes,
    whole_chunks: bool,
}

impl InMemory {
    pub fn new(name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            bytes: bytes.into(),
            whole_chunks: false,
        }
    }

    /// Have column chunks fetched whole, as from object storage (tests
    /// and fuzzing cover both ways of reading).
    pub fn fetching_whole_chunks(mut self) -> Self {
        self.whole_chunks = true;
        self
    }
}

impl ByteSource for InMemory {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn fetch_whole_chunks(&self) -> bool {
        self.whole_chunks
    }

    fn read_range(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(start).map_err(|_| past_end(start, len, self.len()))?;
        let end = start.checked_add(len).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => Ok(self.bytes.slice(start..end)),
            None => Err(past_end(start as u64, len, self.len())),
        }
    }
}

fn past_end(start: u64, len: usize, file_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "bytes {start}..{} are past the end of the file ({file_len} bytes)",
            start.saturating_add(len as u64)
        ),
    )
}

/// The Parquet files a local `path` names: the file itself, every
/// `*.parquet` file of a directory (recursively, as Spark and pyarrow write
/// datasets: `part-0000.parquet`, `year=2024/...`), or the files a glob
/// pattern matches. Sorted by path, so every hospital sees the same order.
pub fn local_files(path: &Path) -> Result<Vec<PathBuf>> {
    let shown = path.display().to_string();
    let mut files = if is_glob(&shown) {
        let paths = glob::glob(&shown)
            .map_err(|e| ModelError::Data(format!("'{shown}' is not a valid glob pattern: {e}")))?;
        let mut files = Vec::new();
        for entry in paths {
            let entry = entry.map_err(|e| ModelError::Io {
                path: e.path().display().to_string(),
                source: io::Error::new(e.error().kind(), e.error().to_string()),
            })?;
            if entry.is_file() {
                files.push(entry);
            }
        }
        files
    } else if path.is_dir() {
        let mut files = Vec::new();
        collect_parquet(path, &mut files)?;
        files
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(ModelError::Io {
            path: shown,
            source: io::Error::new(io::ErrorKind::NotFound, "no such file or directory"),
        });
    };
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Data(format!("no Parquet files in '{shown}'")));
    }
    Ok(files)
}

/// Whether a path or key is a glob pattern rather than a name.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// A directory's `*.parquet` files; hidden and `_`-prefixed entries
/// (`_SUCCESS`, `_metadata`, `.crc` files) are skipped as Spark skips them.
fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io_err = |source| ModelError::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(['.', '_']) {
            continue;
        }
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if name.ends_with(".parquet") || name.ends_with(".parq") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_ranges_and_their_ends() {
        let source = InMemory::new("m", vec![1u8, 2, 3, 4]);
        assert_eq!(&source.read_range(1, 2).unwrap()[..], &[2, 3]);
        assert_eq!(source.read_range(4, 0).unwrap().len(), 0);
        let e = source.read_range(3, 2).unwrap_err().to_string();
        assert!(e.contains("past the end of the file (4 bytes)"), "{e}");
        assert!(source.read_range(u64::MAX, 1).is_err());
    }

    #[test]
    fn a_directory_a_glob_and_a_file_name_their_parquet_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("year=2024")).unwrap();
        for name in [
            "b.parquet",
            "a.parquet",
            "year=2024/c.parquet",
            "_SUCCESS",
            ".a.parquet.crc",
            "notes.txt",
        ] {
            std::fs::write(root.join(name), b"x").unwrap();
        }
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            files
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(local_files(root).unwrap()),
            ["a.parquet", "b.parquet", "year=2024/c.parquet"]
        );
        assert_eq!(
            names(local_files(&root.join("*.parquet")).unwrap()),
            ["a.parquet", "b.parquet"]
        );
        assert_eq!(
            names(local_files(&root.join("b.parquet")).unwrap()),
            ["b.parquet"]
        );
        let e = local_files(&root.join("missing.parquet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.parquet") && e.contains("no such file"), "{e}");
        let e = local_files(&root.join("*.csv")).unwrap_err().to_string();
        assert!(e.contains("no Parquet files"), "{e}");
    }
}
