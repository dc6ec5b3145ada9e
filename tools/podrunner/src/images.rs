//! Container images, two ways: mapped to binaries on this machine ([`Images::with`],
//! [`Images::weft_binaries`]: the container runs that binary on the host's filesystem seen
//! through its mount namespace), or mounted from the images `scripts/build-images` built
//! ([`Images::from_roots`]: the container runs the image's own entrypoint chrooted into the
//! image's root filesystem, see [`crate::rootfs`]). An image mapped neither way can still run
//! a container that gives its `command`, from the host's filesystem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Container;

use crate::env;
use crate::rootfs::{repository, ImageRoots};
use crate::Error;

/// What an image runs as.
#[derive(Debug, Clone)]
struct Entry {
    /// The image's ENTRYPOINT (to which the container's `args` are appended).
    entrypoint: Vec<String>,
    /// The image's mounted root filesystem, when it runs from the image.
    root: Option<PathBuf>,
}

/// Container images: binaries on this machine, or mounted image roots (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Images {
    map: BTreeMap<String, Entry>,
    /// Keeps the mounted roots mounted while any runner uses them.
    roots: Option<Arc<ImageRoots>>,
}

impl Images {
    /// No images: every container must give its `command` (run from the host's filesystem).
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `image` (any tag, or exactly this reference) to an entrypoint: the image's
    /// ENTRYPOINT, to which the container's `args` are appended.
    pub fn with(mut self, image: &str, entrypoint: &[&str]) -> Self {
        self.map.insert(
            repository(image).to_string(),
            Entry {
                entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
                root: None,
            },
        );
        self
    }

    /// Weft's images as the binaries in `dir` (e.g. `target/debug`): `weft-proxy` and
    /// `weft/proxy` → `weft-proxy`, `weft-sample` and `weft/samples` → `weft-sample`,
    /// `weft-control-plane` and `weft/control-plane` → `weft-control-plane`. These are the same
    /// binaries the images of `deploy/docker` carry, not the images themselves.
    pub fn weft_binaries(dir: &Path) -> Self {
        let bin = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let (proxy, sample, cp) = (
            bin("weft-proxy"),
            bin("weft-sample"),
            bin("weft-control-plane"),
        );
        Images::new()
            .with("weft-proxy", &[&proxy])
            .with("weft/proxy", &[&proxy])
            .with("weft-sample", &[&sample])
            .with("weft/samples", &[&sample])
            .with("weft-control-plane", &[&cp])
            .with("weft/control-plane", &[&cp])
    }

    /// The mounted images of `roots`, each by its full reference (`localhost/weft-proxy`) and,
    /// for images of buildah's `localhost/`, by its bare name (`weft-proxy`, how manifests
    /// without a registry name them), any tag. Their containers run chrooted in the image.
    pub fn from_roots(roots: ImageRoots) -> Self {
        let mut images = Images::new();
        for (image, root, entrypoint) in roots.iter() {
            let entry = Entry {
                entrypoint: entrypoint.to_vec(),
                root: Some(root.to_path_buf()),
            };
            let full = repository(image).to_string();
            if let Some(bare) = full.strip_prefix("localhost/") {
                images.map.insert(bare.to_string(), entry.clone());
            }
            images.map.insert(full, entry);
        }
        images.roots = Some(Arc::new(roots));
        images
    }

    /// One line per image: what its containers run (for a test's log: which the pods ran).
    pub fn describe(&self) -> String {
        self.map
            .iter()
            .map(|(image, e)| match &e.root {
                Some(root) => format!(
                    "{image}: the image's {} in its root {}",
                    e.entrypoint.join(" "),
                    root.display()
                ),
                None => format!("{image}: this machine's {}", e.entrypoint.join(" ")),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn entry(&self, image: &str) -> Option<&Entry> {
        self.map
            .get(image)
            .or_else(|| self.map.get(repository(image)))
    }

    /// The root filesystem `c` runs in: its image's, when mounted.
    pub(crate) fn root(&self, c: &Container) -> Option<PathBuf> {
        self.entry(c.image.as_deref().unwrap_or_default())
            .and_then(|e| e.root.clone())
    }

    /// The argv Kubernetes runs: `command` + `args` when the container sets `command`, else the
    /// image's entrypoint + `args`; both `$(VAR)`-expanded against the container's environment.
    pub(crate) fn argv(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<String>, Error> {
        let args = env::expand_all(c.args.as_deref().unwrap_or_default(), env);
        let mut argv = match c.command.as_deref().filter(|c| !c.is_empty()) {
            Some(cmd) => env::expand_all(cmd, env),
            None => {
                let image = c.image.as_deref().unwrap_or_default();
                self.entry(image)
                    .map(|e| e.entrypoint.clone())
                    .ok_or_else(|| {
                        Error::Spec(format!(
                            "container {}: image {image:?} is not mapped to a binary (Images::with) and the container sets no command",
                            c.name
                        ))
                    })?
            }
        };
        argv.extend(args);
        Ok(argv)
    }
}
