//! Pods from the built images (`weft_podrunner::rootfs`): a container of an image that
//! `scripts/build-images` built runs the image's own entrypoint in the image's root filesystem,
//! with its volumes mounted inside it (at paths resolved through the image's own links: Debian's
//! `/var/run` is `/run`), as its user, read-only where the spec says, reachable on its pod IP.
//!
//! Needs the images: `scripts/test` builds them and sets `WEFT_POD_IMAGES=1` before the suite.
//! Without that variable the test says so and passes without running (the images take a
//! release build to make); with it, a missing image fails.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{can_run, pod, LIMIT};
use weft_podrunner::{ImageRoots, Images, InMemoryApi, Runner, RunnerOptions};

const SPEC: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: from-image, namespace: team}
spec:
  securityContext: {runAsUser: 65532, runAsGroup: 65532}
  containers:
  - name: app
    image: weft-sample:0.1.0
    args: [http, --listen=0.0.0.0:8080, --name=from-image]
    securityContext: {readOnlyRootFilesystem: true}
    readinessProbe:
      httpGet: {path: /who, port: 8080}
      periodSeconds: 1
    volumeMounts:
    - {name: settings, mountPath: /var/run/weft-image-test, readOnly: true}
  volumes:
  - name: settings
    configMap: {name: settings}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_its_image_s_own_files_in_the_image_s_root() {
    if !can_run() {
        return;
    }
    if std::env::var("WEFT_POD_IMAGES").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED (no WEFT_POD_IMAGES=1): the images are not known to be built from this \
             checkout; scripts/test builds them and sets it"
        );
        return;
    }
    let roots = ImageRoots::mount(&[&format!(
        "localhost/weft-sample:{}",
        env!("CARGO_PKG_VERSION")
    )])
    .expect("the weft-sample image mounts (scripts/build-images)");
    let api = Arc::new(InMemoryApi::new());
    api.put_config_map("team", "settings", &[("mode", "strict")]);
    let dyn_api: Arc<dyn weft_podrunner::ClusterApi> = api.clone();
    let images = Images::from_roots(roots);
    eprintln!("{}", images.describe());
    let mut opts = RunnerOptions::new(dyn_api, images);
    opts.backoff = (Duration::from_millis(100), Duration::from_millis(400));
    let runner = Runner::new(opts).expect("runner");
    let p = runner.start(pod(SPEC)).await.expect("start");
    // Ready: the readiness probe reached the image's app on the pod IP.
    p.wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs("app")));
    let sh = |cmd: &'static str| {
        let p = &p;
        async move {
            let out = p
                .exec("app", &["sh", "-c", cmd], Duration::from_secs(10))
                .await
                .expect("exec");
            (out.code, out.stdout.trim_end().to_string(), out.stderr)
        }
    };
    // The image's files, not the host's: its binary where the Dockerfile put it, and none of
    // this checkout (which the host has) in it.
    let (code, _, err) = sh("test -x /usr/local/bin/weft-sample").await;
    assert_eq!(code, Some(0), "{err}");
    let checkout = env!("CARGO_MANIFEST_DIR");
    assert!(std::path::Path::new(checkout).exists());
    let (code, _, _) = p
        .exec("app", &["test", "-e", checkout], Duration::from_secs(10))
        .await
        .map(|o| (o.code, o.stdout, o.stderr))
        .expect("exec");
    assert_ne!(
        code,
        Some(0),
        "the host's {checkout} is visible in the image's root"
    );
    // The app's process runs in that root: its root directory is not the host's.
    let pid = p.pid("app").expect("the app's pid");
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("its root");
    assert_ne!(
        root,
        std::path::Path::new("/"),
        "the app runs in the host's root"
    );
    // User, read-only root, the volume mounted through the image's /var/run -> /run link.
    assert_eq!(sh("id -u; id -g").await.1, "65532\n65532");
    let (code, _, err) = sh("echo x > /tmp/weft-image-test").await;
    assert!(
        code != Some(0) && err.contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(sh("cat /var/run/weft-image-test/mode").await.1, "strict");
    assert_eq!(sh("cat /run/weft-image-test/mode").await.1, "strict");
    // Nothing of it reached the host.
    assert!(!std::path::Path::new("/run/weft-image-test").exists());
    // The pod's own names.
    let (_, hosts, _) = sh("cat /etc/hosts").await;
    assert!(hosts.contains("from-image"), "{hosts}");
}
