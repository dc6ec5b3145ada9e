//! Container images as root filesystems: the images `scripts/build-images` built, each made a
//! working container with `buildah from` and mounted with `buildah mount`, so a container of
//! that image runs **the image's own files** (its binary, its libc, its CA certificates, its
//! `/etc/passwd`) chrooted into that root, the way a container runtime runs it.
//!
//! No container engine is needed to run them (and `podman run` is blocked on this project's
//! machines): the runner's own namespaces and a `chroot` do what the runtime would, and buildah
//! only stores and mounts the image. One working container per image per runner: all the
//! containers of that image share its root, each seeing it through its own mount namespace
//! with its own volumes mounted inside (mount points the image lacks are created in the working
//! container's writable layer, never on the host).
//!
//! The working containers are named `weftpod-<pid>-img<seq>-<image>`; dropping [`ImageRoots`]
//! unmounts and removes them, and [`ImageRoots::mount`] first removes the ones a crashed earlier
//! run (its process id gone) left behind.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::Error;

/// One image's mounted root.
#[derive(Debug)]
struct Mounted {
    image: String,
    container: String,
    root: PathBuf,
    entrypoint: Vec<String>,
}

/// Images mounted as root filesystems (see the module docs); unmounted and removed on drop.
#[derive(Debug)]
pub struct ImageRoots {
    mounted: Vec<Mounted>,
}

/// Runs buildah; its stdout, or the failure with its stderr.
fn buildah(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("buildah")
        .args(args)
        .output()
        .map_err(|e| Error::Host(format!("buildah: {e} (scripts/setup --images installs it)")))?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: format!("buildah {}", args.join(" ")),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const PREFIX: &str = "weftpod-";

/// Unmounts and removes working containers whose creating process is gone.
fn clean_stale() {
    let Ok(list) = buildah(&["containers", "--format", "{{.ContainerName}}"]) else {
        return;
    };
    for name in list.lines().map(str::trim) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = buildah(&["umount", name]);
            let _ = buildah(&["rm", name]);
        }
    }
}

impl ImageRoots {
    /// Mounts each of `images` (references as buildah knows them, e.g.
    /// `localhost/weft-proxy:0.1.0`). Fails when buildah is missing or an image is not built.
    pub fn mount(images: &[&str]) -> Result<ImageRoots, Error> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        clean_stale();
        let mut roots = ImageRoots {
            mounted: Vec::new(),
        };
        for image in images {
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let short: String = repository(image)
                .rsplit('/')
                .next()
                .unwrap_or("image")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let name = format!("{PREFIX}{}-img{seq}-{short}", std::process::id());
            // The whole description as JSON (buildah's Go templates lack `json`).
            let described: serde_json::Value =
                serde_json::from_str(&buildah(&["inspect", "--type", "image", image])?)
                    .map_err(|e| Error::Spec(format!("image {image}: buildah inspect: {e}")))?;
            let entrypoint: Vec<String> = described["OCIv1"]["config"]["Entrypoint"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            buildah(&["from", "--pull-never", "--name", &name, image])?;
            // Pushed before mounting, so a failed mount is still removed on drop.
            roots.mounted.push(Mounted {
                image: image.to_string(),
                container: name.clone(),
                root: PathBuf::new(),
                entrypoint,
            });
            let root = PathBuf::from(buildah(&["mount", &name])?);
            if !root.join("bin").exists() && !root.join("usr").exists() {
                return Err(Error::Spec(format!(
                    "image {image}: mounted at {} but it holds no filesystem",
                    root.display()
                )));
            }
            if let Some(m) = roots.mounted.last_mut() {
                m.root = root;
            }
        }
        Ok(roots)
    }

    /// The mounted images, as (reference, root, entrypoint).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path, &[String])> {
        self.mounted
            .iter()
            .map(|m| (m.image.as_str(), m.root.as_path(), m.entrypoint.as_slice()))
    }
}

impl Drop for ImageRoots {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = buildah(&["umount", &m.container]);
            let _ = buildah(&["rm", &m.container]);
        }
    }
}

/// An image reference without its tag or digest: `localhost/weft-proxy:0.1.0` →
/// `localhost/weft-proxy`.
pub(crate) fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// Where `path` (absolute, as the container sees it) is under `root`, following symlinks as
/// they resolve *inside* the root (an absolute link target is relative to `root`, `..` stops
/// at it), as the kernel does after `chroot`. The missing tail of the path is appended as is.
/// Bounded: more than 40 links is an error (the kernel's ELOOP limit).
pub(crate) fn resolve_in(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    let mut links = 0;
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    // The resolved components below root.
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    while let Some(next) = todo.pop() {
        if next == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = done.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let candidate = here.join(&next);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(Error::Spec(format!(
                        "{}: too many symbolic links under {}",
                        path.display(),
                        root.display()
                    )));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(crate::io_err(format!("read link {}", candidate.display())))?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(next),
        }
    }
    Ok(done.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_root_never_out_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("run")).expect("run");
        std::fs::create_dir_all(root.join("usr/lib")).expect("usr/lib");
        // Debian's /var/run -> /run (absolute: must mean <root>/run, not the host's /run).
        std::fs::create_dir_all(root.join("var")).expect("var");
        std::os::unix::fs::symlink("/run", root.join("var/run")).expect("link");
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).expect("rel link");
        std::os::unix::fs::symlink("../../..", root.join("usr/lib/up")).expect("up link");
        assert_eq!(
            resolve_in(root, Path::new("/var/run/weft")).expect("resolve"),
            root.join("run/weft")
        );
        assert_eq!(
            resolve_in(root, Path::new("/lib/x")).expect("resolve"),
            root.join("usr/lib/x")
        );
        // `..` past the root stays at the root.
        assert_eq!(
            resolve_in(root, Path::new("/lib/up/../etc")).expect("resolve"),
            root.join("etc")
        );
        std::os::unix::fs::symlink("/loop", root.join("loop")).expect("loop");
        assert!(resolve_in(root, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn references_lose_their_tag_not_their_registry_port() {
        assert_eq!(
            repository("localhost/weft-proxy:0.1.0"),
            "localhost/weft-proxy"
        );
        assert_eq!(repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(repository("a@sha256:00"), "a");
    }
}
