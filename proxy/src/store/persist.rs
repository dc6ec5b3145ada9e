//! Files as persistence: the atomic writes the store makes (certificates it installs, the
//! control plane's last good policy) and their sync to disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sync installed files and their directories, warning about failures and slow disks.
pub(super) fn sync_to_disk(paths: &[PathBuf]) {
    let started = std::time::Instant::now();
    for path in paths {
        if let Err(e) = sync_file_and_dir(path) {
            log::warn!("cannot sync {} to disk: {e}", path.display());
        }
    }
    if started.elapsed() > Duration::from_secs(1) {
        log::warn!(
            "syncing {} file(s) to disk took {} ms",
            paths.len(),
            started.elapsed().as_millis()
        );
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory (created with
/// `mode`), synced, then renamed over `path`. Readers see the old or the new file, never a
/// part of one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_replacing(path, bytes, mode, true)
}

/// Flush a file and its directory entry to disk.
fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Temporary file (created with `mode`), optionally synced, renamed over `path`.
pub(super) fn write_replacing(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    sync: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.weft-tmp"));
    // A temporary file left by a crash may have another mode; `mode` applies on creation only.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}
