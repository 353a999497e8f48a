//! Model files beside the store: safetensors written atomically (temp
//! file, fsync, rename), named by run, task and round, with their sha256.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use medfed_models::checkpoint::{write_atomically, Checkpoint};

use super::{Result, StoreError};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `<files>/runs/<run>/<task>/round-NNNN.safetensors`
pub fn checkpoint_path(files: &Path, run: &str, task: &str, round: u32) -> PathBuf {
    files
        .join("runs")
        .join(run)
        .join(task)
        .join(Checkpoint::file_name(round))
}

/// `<files>/registry/<task>/v<version>.safetensors`
pub fn registry_path(files: &Path, task: &str, version: i64) -> PathBuf {
    files
        .join("registry")
        .join(task)
        .join(format!("v{version}.safetensors"))
}

/// Write `bytes` at `path` (directories created) durably; returns its sha256.
pub fn write(path: &Path, bytes: &[u8]) -> Result<String> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    write_atomically(path, bytes).map_err(io)?;
    Ok(sha256_hex(bytes))
}

/// Read a model file and check it is the one the store recorded.
pub fn read_checked(path: &Path, sha256: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(StoreError::Refused(format!(
            "{}: sha256 {actual} is not the {sha256} the store recorded: the file was changed or damaged",
            path.display()
        )));
    }
    Ok(bytes)
}
