//! Files in a state directory: created with their final mode, replaced atomically, and written
//! under a lock on the directory.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Mode of private keys and other secrets-bearing files.
pub(crate) const PRIVATE_MODE: u32 = 0o600;
/// Mode of certificates.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of a state directory created here.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700; an existing directory is left as is.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// An exclusive advisory lock on a state directory, released on drop.
///
/// `weftctl` and the control plane lock the directory around every read-modify-write of its
/// files, so two writers never lose each other's changes and two first starts never create two
/// different roots. Readers do not lock: every file is replaced by rename, so a reader sees
/// either the old or the new file, whole.
pub(crate) struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    /// Blocks until the lock on `dir` (which must exist) is ours.
    pub(crate) fn acquire(dir: &Path) -> io::Result<Self> {
        let file = File::open(dir)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(Self { _lock: lock })
    }
}

/// Writes `contents` to `path` with exactly `mode`, via a temporary file in the same directory
/// renamed over `path`, so readers never see a partial file or a key with loose permissions.
///
/// The temporary file is created with `mode` (never with a wider one and narrowed afterwards),
/// so a private key is not readable by others even for an instant.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
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
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced too.
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `path` exists (as anything, a dangling symlink included).
pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
