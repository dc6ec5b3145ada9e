//! Files as persistence: the store's writes (certificates it installs, the control plane's
//! last good policy) go through `weft_certs::files`, the workspace's one atomic write; this
//! adds the background sync of installed files, and the stamps by which the file watchers
//! (the sidecar's config, the gateway's files) see a file change.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use weft_certs::files::sync_file_and_dir;
pub use weft_certs::files::{write_atomically, write_replacing};

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

/// Each watched file's modification time and length, in order (`None`: unreadable).
pub type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The [`Stamps`] of `paths` now.
pub fn file_stamps<P: AsRef<Path>>(paths: &[P]) -> Stamps {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}
