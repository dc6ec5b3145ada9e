//! Projected service-account tokens kept as the kubelet's token manager keeps them: minted
//! through TokenRequest when the pod starts, and minted again by a volume refresh once 80 % of
//! the token's lifetime has passed or it is 24 hours old, whichever comes first (so a sidecar
//! that re-reads its token file, as `weft-proxy` does at each certificate renewal, never holds
//! an expired one). When each token was minted and when it expires is recorded beside the
//! volumes (`<volumes>/.tokens/<volume>/`), outside every directory a container mounts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{io_err, Error};

/// The kubelet's ceiling on a token's age before it is minted again.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// When a token was minted and when it expires, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Minted {
    pub minted: u64,
    pub expires: u64,
}

impl Minted {
    /// A token that expires at `expires` (the TokenRequest's status, seconds since the epoch)
    /// and was asked for `ttl` seconds: minted at `expires - ttl`, as the kubelet reckons it.
    pub fn new(expires: i64, ttl: i64) -> Self {
        let expires = u64::try_from(expires).unwrap_or(0);
        Self {
            minted: expires.saturating_sub(u64::try_from(ttl).unwrap_or(0)),
            expires,
        }
    }

    /// Whether the kubelet would mint this token again at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        let lifetime = self.expires.saturating_sub(self.minted);
        let refresh_at = self.minted + (lifetime / 10 * 8).min(MAX_AGE.as_secs());
        secs(now) >= refresh_at
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the record of `volume`'s token at `path` (a checked relative path) lives.
pub(crate) fn record_path(volumes: &Path, volume: &str, path: &Path) -> PathBuf {
    let flat = path.to_string_lossy().replace('/', "%2F");
    volumes
        .join(".tokens")
        .join(volume)
        .join(format!("{flat}.json"))
}

/// The record at `file`; `None` when there is none or it cannot be read (then the token is
/// minted again, which is always safe).
pub(crate) fn read(file: &Path) -> Option<Minted> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// Writes the record at `file`.
pub(crate) fn write(file: &Path, minted: Minted) -> Result<(), Error> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let text = serde_json::to_vec(&minted).map_err(|e| Error::Spec(e.to_string()))?;
    std::fs::write(file, text).map_err(io_err(format!("write {}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_due_at_eighty_percent_of_its_lifetime_or_a_day() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Minted::new(1_000_000 + 3600, 3600);
        assert!(!hour.due(at));
        assert!(!hour.due(at + Duration::from_secs(2879)));
        assert!(hour.due(at + Duration::from_secs(2880)));
        let week = Minted::new(1_000_000 + 7 * 24 * 3600, 7 * 24 * 3600);
        assert!(!week.due(at + Duration::from_secs(24 * 3600 - 1)));
        assert!(week.due(at + Duration::from_secs(24 * 3600)));
        // A token already expired is due at once.
        assert!(Minted::new(1_000_000 - 1, 3600).due(at));
    }

    #[test]
    fn records_live_outside_the_volume_directories_and_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = record_path(tmp.path(), "identity", Path::new("a/token"));
        assert!(file.starts_with(tmp.path().join(".tokens").join("identity")));
        assert_eq!(read(&file), None);
        let m = Minted::new(5, 5);
        write(&file, m).expect("write");
        assert_eq!(read(&file), Some(m));
    }
}
