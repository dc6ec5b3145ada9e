//! The images users pull, as built here by `scripts/build-images` (buildah, the unchanged
//! Dockerfiles of deploy/docker, base images made locally since no registry is reachable): each
//! runs its binary, as the user the manifests declare for the containers that use it, and is
//! small. `scripts/test` builds them first; without them this test fails saying so, unless
//! `WEFT_NO_IMAGES=1` asks to skip it (said in the output, for machines without root or
//! buildah).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use weft_testkit::process::output_within;

use crate::manifests::{documents, pod_specs, render, repo};

/// An image, the binary its entrypoint runs, and the manifests that run it.
struct Image {
    name: &'static str,
    binary: &'static str,
}

const IMAGES: [Image; 3] = [
    Image {
        name: "weft-proxy",
        binary: "weft-proxy",
    },
    Image {
        name: "weft-control-plane",
        binary: "weft-control-plane",
    },
    Image {
        name: "weft-sample",
        binary: "weft-sample",
    },
];

/// The most an image may weigh: a Debian base of about 80 MB and one static-ish binary.
const MAX_IMAGE_MB: u64 = 200;

fn tag(name: &str) -> String {
    format!("localhost/{name}:{}", env!("CARGO_PKG_VERSION"))
}

/// Runs `cmd` (bounded); (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let (exit, out, err) = output_within(cmd, Duration::from_secs(120));
    (exit.success(), out, err)
}

/// Removes a working container of buildah's when dropped, even when an assertion fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(Command::new("buildah").args(["rm", &self.0]));
    }
}

/// The uid every manifest that runs `image` declares for its container (the container's
/// `securityContext.runAsUser`, else the pod's): the control plane's kustomize output, the
/// shop's example apps, and the webhook's injected pods (golden files).
fn declared_uids(image_name: &str) -> BTreeSet<i64> {
    let mut docs = render("production");
    for file in [
        "deploy/examples/kubernetes/shop-apps.yaml",
        "control-plane/tests/kubernetes/inject/deployment.injected.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        docs.extend(documents(&text));
    }
    let mut uids = BTreeSet::new();
    for (_, spec) in pod_specs(&docs) {
        let containers = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| spec[*k].as_sequence())
            .flatten();
        for c in containers {
            let image = c["image"].as_str().unwrap_or_default();
            // The capture init container runs the proxy image as root with NET_ADMIN and
            // NET_RAW only, by design (docs/KUBERNETES.md, "Transparent capture"); the image's
            // own user is the sidecar's.
            if image.split(':').next() != Some(image_name) || c["name"] == "weft-init" {
                continue;
            }
            let uid = c["securityContext"]["runAsUser"]
                .as_i64()
                .or_else(|| spec["securityContext"]["runAsUser"].as_i64())
                .unwrap_or_else(|| panic!("{image_name}: a container declares no runAsUser"));
            uids.insert(uid);
        }
    }
    uids
}

fn image_config(tag: &str, field: &str) -> String {
    let (ok, out, err) = run(Command::new("buildah").args([
        "inspect",
        "--type",
        "image",
        "--format",
        &format!("{{{{{field}}}}}"),
        tag,
    ]));
    assert!(ok, "buildah inspect {tag}: {err}");
    out.trim().to_owned()
}

/// Whether the images are there to check; false (with the reason printed) only when skipping
/// was asked for.
fn images_built() -> bool {
    let missing: Vec<String> = IMAGES
        .iter()
        .map(|i| tag(i.name))
        .filter(|t| {
            !Command::new("buildah")
                .args(["inspect", "--type", "image", t])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "images not built: {} (run scripts/build-images as root)",
        missing.join(", ")
    );
    if std::env::var_os("WEFT_NO_IMAGES").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (WEFT_NO_IMAGES=1): {why}");
        return false;
    }
    panic!("{why}; or set WEFT_NO_IMAGES=1 to skip this test explicitly");
}

#[test]
fn images_run_their_binary_as_the_declared_user_and_stay_small() {
    if !images_built() {
        return;
    }
    let mut report = Vec::new();
    for image in IMAGES {
        let tag = tag(image.name);
        let uids = declared_uids(image.name);
        assert!(!uids.is_empty(), "no manifest runs {}", image.name);
        assert_eq!(
            uids.len(),
            1,
            "{}: manifests disagree: {uids:?}",
            image.name
        );
        let uid = *uids.first().expect("one uid");
        assert_ne!(uid, 0, "{}: declared as root", image.name);
        assert_eq!(
            image_config(&tag, ".OCIv1.Config.User"),
            format!("{uid}:{uid}")
        );
        let entrypoint = format!("/usr/local/bin/{}", image.binary);
        assert_eq!(
            image_config(&tag, ".OCIv1.Config.Entrypoint"),
            format!("[{entrypoint}]")
        );

        // Run it the way the image is configured (its user), in a chroot of its root file
        // system: who it runs as, and that the binary starts (its libraries are all there).
        let (ok, id, err) = run(Command::new("buildah").args(["from", "--pull=never", &tag]));
        assert!(ok, "buildah from {tag}: {err}");
        let container = Container(id.trim().to_owned());
        // The proxy image carries nft and iptables-restore for `weft-proxy init` (the capture
        // init container; iptables where the kernel has no inet NAT).
        let nft = if image.name == "weft-proxy" {
            "/usr/sbin/nft --version >&2 && /usr/sbin/iptables-restore --version >&2 && \
             /usr/sbin/ip6tables-restore --version >&2 && "
        } else {
            ""
        };
        let script = format!("id -u; id -g; {nft}exec {entrypoint} --version");
        let (ok, out, err) = run(Command::new("buildah").args([
            "run",
            "--isolation",
            "chroot",
            &container.0,
            "--",
            "sh",
            "-c",
            &script,
        ]));
        assert!(ok, "{tag}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        let version = format!("{} {}", image.binary, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            lines,
            [uid.to_string().as_str(), uid.to_string().as_str(), &version],
            "{tag}"
        );

        let size: u64 = {
            let (ok, out, err) = run(Command::new("podman").args([
                "image",
                "inspect",
                "--format",
                "{{.Size}}",
                &tag,
            ]));
            assert!(ok, "podman image inspect {tag}: {err}");
            out.trim().parse().expect("a size in bytes")
        };
        let mb = size / 1_000_000;
        assert!(mb <= MAX_IMAGE_MB, "{tag} is {mb} MB, above {MAX_IMAGE_MB}");
        report.push(format!("{tag}: {mb} MB, runs as {uid}"));
    }
    // The sizes, for the record (nextest shows a passing test's output with --success-output).
    println!("{}", report.join("\n"));
}
