//! The kubelet's atomic writer: how configMap, secret and projected volumes hold their files so
//! that an update is one atomic step for the containers reading them.
//!
//! A volume directory holds its payload in a hidden generation directory (`..<stamp>`), a
//! symlink `..data` to the generation in force, and one symlink per top-level name of the
//! payload (`ca.crt -> ..data/ca.crt`). An update writes a new generation, points a temporary
//! symlink at it and renames that over `..data` (rename(2) replaces atomically), then adds or
//! removes the top-level links and deletes the old generation. A reader opening `ca.crt` sees
//! the old file or the new one, never a mix or a half-written file. The links are relative, so
//! they resolve the same through the container's bind mount. (`subPath` mounts pin one file
//! and never see an update, as in Kubernetes.)

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use crate::{io_err, Error};

/// The symlink naming the generation in force.
pub(crate) const DATA: &str = "..data";

/// One file of a volume's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileOut {
    /// Its path in the volume (relative, normal components, checked by the caller).
    pub rel: PathBuf,
    /// Its content.
    pub data: Vec<u8>,
    /// Its mode (0 to 0777).
    pub mode: u32,
    /// Its owner, when the kubelet sets one (a projected token without `fsGroup`).
    pub uid: Option<u32>,
}

/// The payload in force in `dir` (uids not read): every file under `..data`, by path. Empty
/// when nothing was published yet.
pub(crate) fn current(dir: &Path) -> Result<Vec<FileOut>, Error> {
    let root = dir.join(DATA);
    let mut out = Vec::new();
    if root.symlink_metadata().is_err() {
        return Ok(out);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = root.join(&rel);
        let entries =
            std::fs::read_dir(&here).map_err(io_err(format!("read {}", here.display())))?;
        for e in entries {
            let e = e.map_err(io_err(format!("read {}", here.display())))?;
            let path = e.path();
            let sub = rel.join(e.file_name());
            let meta =
                std::fs::metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
            if meta.is_dir() {
                stack.push(sub);
            } else {
                out.push(FileOut {
                    rel: sub,
                    data: std::fs::read(&path)
                        .map_err(io_err(format!("read {}", path.display())))?,
                    mode: meta.permissions().mode() & 0o777,
                    uid: None,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Whether `files` is what `dir` holds now (paths, contents and modes).
pub(crate) fn unchanged(dir: &Path, files: &[FileOut]) -> Result<bool, Error> {
    let mut wanted: Vec<FileOut> = files
        .iter()
        .map(|f| FileOut {
            uid: None,
            ..f.clone()
        })
        .collect();
    wanted.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(dir.join(DATA).symlink_metadata().is_ok() && current(dir)? == wanted)
}

/// Publishes `files` as the volume's new generation in `dir` (see the module docs); with
/// `fs_group`, every file and directory of it is group-owned by that group.
pub(crate) fn publish(dir: &Path, files: &[FileOut], fs_group: Option<u32>) -> Result<(), Error> {
    let mut tops: BTreeSet<OsString> = BTreeSet::new();
    for f in files {
        match f.rel.components().next() {
            Some(Component::Normal(top)) if !top.to_string_lossy().starts_with("..") => {
                tops.insert(top.to_owned());
            }
            _ => {
                return Err(Error::Spec(format!(
                    "volume path {} must not start with `..`",
                    f.rel.display()
                )))
            }
        }
    }
    let stamp = generation_name(dir);
    let generation = dir.join(&stamp);
    std::fs::create_dir(&generation).map_err(io_err(format!("create {}", generation.display())))?;
    set_mode(&generation, 0o755)?;
    for f in files {
        let path = generation.join(&f.rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        std::fs::write(&path, &f.data).map_err(io_err(format!("write {}", path.display())))?;
        set_mode(&path, f.mode)?;
        if f.uid.is_some() || fs_group.is_some() {
            chown(&path, f.uid, fs_group)?;
        }
    }
    if let Some(g) = fs_group {
        chown(&generation, None, Some(g))?;
    }
    // The swap: a new link renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io_err(format!("link {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(DATA)).map_err(io_err(format!("swap {}", dir.display())))?;
    for top in &tops {
        let link = dir.join(top);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(top), &link)
                .map_err(io_err(format!("link {}", link.display())))?;
        }
    }
    // What the new generation no longer has: its links, and the old generations.
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let text = name.to_string_lossy();
        if text.starts_with("..") {
            if name != DATA && name != stamp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if !tops.contains(&name) && e.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// A generation directory name not yet in `dir`: `..<seconds>.<nanoseconds>`, as unique as
/// the clock (a sequence number on a tie).
fn generation_name(dir: &Path) -> OsString {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!("..{}.{:09}", now.as_secs(), now.subsec_nanos());
    let mut name = base.clone();
    let mut n = 0u32;
    while dir.join(&name).symlink_metadata().is_ok() {
        n += 1;
        name = format!("{base}_{n}");
    }
    name.into()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
    nix::unistd::chown(
        path,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    )
    .map_err(|e| io_err(format!("chown {}", path.display()))(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, data: &str) -> FileOut {
        FileOut {
            rel: rel.into(),
            data: data.as_bytes().to_vec(),
            mode: 0o644,
            uid: None,
        }
    }

    #[test]
    fn an_update_swaps_the_data_link_and_keeps_only_the_new_generation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        publish(dir, &[file("ca.crt", "old root\n"), file("a/b", "x")], None).expect("publish");
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).expect("read"),
            "old root\n"
        );
        assert!(dir
            .join("ca.crt")
            .symlink_metadata()
            .expect("stat")
            .is_symlink());
        assert_eq!(
            std::fs::read_link(dir.join("ca.crt")).expect("link"),
            Path::new("..data/ca.crt")
        );
        let first = std::fs::read_link(dir.join(DATA)).expect("..data");
        assert!(
            unchanged(dir, &[file("a/b", "x"), file("ca.crt", "old root\n")]).expect("compare")
        );

        // A reader holding the old file keeps reading it whole; the name gives the new one.
        let held = std::fs::File::open(dir.join("ca.crt")).expect("open");
        let next = [file("ca.crt", "old root\nnew root\n")];
        assert!(!unchanged(dir, &next).expect("compare"));
        publish(dir, &next, None).expect("update");
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).expect("read"),
            "old root\nnew root\n"
        );
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &held, &mut old).expect("read held");
        assert_eq!(old, "old root\n");
        assert_ne!(std::fs::read_link(dir.join(DATA)).expect("..data"), first);
        // `a` left the payload: its link is gone, and so is the old generation.
        assert!(dir.join("a").symlink_metadata().is_err());
        assert!(!dir.join(&first).exists());
        let hidden: Vec<String> = std::fs::read_dir(dir)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "{hidden:?}"); // `..data` and one generation
        assert!(unchanged(dir, &next).expect("compare"));
        assert!(publish(dir, &[file("..x", "no")], None).is_err());
    }
}
