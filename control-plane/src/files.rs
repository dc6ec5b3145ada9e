//! Files in a state directory: their modes, the directory created private, and the lock every
//! read-modify-write holds. The files themselves are replaced through the one atomic write,
//! [`weft_certs::files::write_atomically`].

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
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

/// Whether `path` exists (as anything, a dangling symlink included).
pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
