//! Container images as binaries on this machine: the runner pulls and unpacks nothing. Weft's
//! own images (`deploy/docker`) carry `weft-proxy`, `weft-sample` and `weft-control-plane`;
//! [`Images::weft_binaries`] maps them to the same binaries as Cargo built them.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Container;

use crate::env;
use crate::Error;

/// Container images mapped to binaries on this machine (the runner pulls and unpacks nothing).
#[derive(Debug, Clone, Default)]
pub struct Images {
    map: BTreeMap<String, Vec<String>>,
}

/// An image reference without its tag or digest: `weft-proxy:0.1.0` → `weft-proxy`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
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
            entrypoint.iter().map(|s| s.to_string()).collect(),
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

    fn entrypoint(&self, image: &str) -> Option<&Vec<String>> {
        self.map
            .get(image)
            .or_else(|| self.map.get(repository(image)))
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
                self.entrypoint(image).cloned().ok_or_else(|| {
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
