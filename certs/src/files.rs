//! The one atomic file write of the mesh: a file is replaced whole, with exactly the mode
//! asked for, so a reader sees the old or the new contents and a key is never readable by
//! others, not even for an instant. The control plane, the CLI and the sidecar all write
//! their certificates, keys and state files through here.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` with exactly `mode`, durably: a temporary file in the same
/// directory, written and synced, renamed over `path`, then the directory synced so the
/// rename itself survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, true)?;
    sync_dir_of(path)
}

/// [`write_atomically`] without waiting for the disk: the file is replaced whole (readers
/// never see a part of it) but neither it nor its directory entry is synced. For a caller
/// that must not block on a slow disk (the sidecar installing renewed certificates) and
/// calls [`sync_file_and_dir`] later, off its hot path.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, false)
}

/// Flushes a file and its directory entry to disk (the second half of
/// [`write_replacing`]).
pub fn sync_file_and_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()?;
    sync_dir_of(path)
}

/// Syncs the directory holding `path`, so a rename into it is durable.
fn sync_dir_of(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The temporary file `path` is written through: hidden, in the same directory (a rename
/// across file systems is not atomic), named after this process so two writers never share
/// one.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Temporary file created with `mode` (never with a wider one narrowed afterwards), written,
/// synced when `sync`, renamed over `path`; removed again on any error.
fn replace(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        // A temporary file left by a crash may have another mode; `mode` applies on creation
        // only, so start from none.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given at creation; set it exactly.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn writes_with_exactly_the_mode_and_replaces_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.key");
        write_atomically(&path, b"first", 0o600).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"first");
        assert_eq!(mode(&path), 0o600);
        // A mode the usual umask (022) would narrow is still set exactly.
        write_atomically(&path, b"second", 0o666).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert_eq!(mode(&path), 0o666);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn unsynced_write_then_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        write_replacing(&path, b"pem", 0o644).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"pem");
        assert_eq!(mode(&path), 0o644);
        sync_file_and_dir(&path).expect("sync");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_stale_temporary_file_is_replaced_and_a_failed_write_leaves_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        fs::write(temporary(&path), b"left by a crash").expect("stale");
        write_atomically(&path, b"{}", 0o600).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        assert!(leftovers(dir.path()).is_empty());
        let missing = dir.path().join("no-such-dir/file");
        assert!(write_atomically(&missing, b"x", 0o600).is_err());
        assert!(leftovers(dir.path()).is_empty());
    }
}
