//! One writer per file: an exclusive, non-blocking flock(2) on `<path>.lock`,
//! held for as long as the returned file is open (the store and the audit
//! logs use it).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Take the lock beside `path`: `Ok(Some(file))` holds it, `Ok(None)`
/// means another process holds it.
pub fn acquire(path: &Path) -> std::io::Result<Option<File>> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(name))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Ok(None);
        }
    }
    Ok(Some(file))
}
