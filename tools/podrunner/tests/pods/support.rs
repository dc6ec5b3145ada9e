//! Shared by the pod runner's tests: the host check (a test that cannot run says why
//! and fails, unless `WEFT_NO_NETNS=1` asks to skip explicitly), a runner over an in-memory
//! API with Weft's binaries as images, and Pod specs from YAML.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use weft_podrunner::{Images, InMemoryApi, Runner, RunnerOptions};

/// How long a pod may take to become ready or finish on a busy 2-core machine.
pub const LIMIT: Duration = Duration::from_secs(60);

/// `true` when the machine can run pods. When it cannot: with `WEFT_NO_NETNS=1` the test
/// prints why and returns `false` (an explicit skip); otherwise it fails with the reason.
pub fn can_run() -> bool {
    match weft_podrunner::host_check() {
        Ok(()) => true,
        Err(why) if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (WEFT_NO_NETNS=1): the pod runner cannot run here: {why}");
            false
        }
        Err(why) => panic!(
            "the pod runner's tests need root and network namespaces: {why}. \
             Run them as root, or set WEFT_NO_NETNS=1 to skip them explicitly"
        ),
    }
}

/// `target/debug` (or wherever Cargo put this test binary's siblings).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The path of a workspace binary; fails saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build -p weft-samples`; `cargo nextest run --workspace` does)",
        p.display()
    );
    p
}

/// A runner over `api` with Weft's binaries as its images; short restart backoff.
pub fn runner(api: &Arc<InMemoryApi>) -> Runner {
    binary("weft-sample");
    let api: Arc<dyn weft_podrunner::ClusterApi> = api.clone();
    let mut opts = RunnerOptions::new(api, Images::weft_binaries(&bin_dir()));
    opts.backoff = (Duration::from_millis(100), Duration::from_millis(400));
    opts.max_restarts = 3;
    Runner::new(opts).expect("runner")
}

/// A Pod from YAML.
pub fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).expect("pod YAML")
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Index of the first event of `container` matching `kind`; fails listing the log.
pub fn index(
    events: &[weft_podrunner::PodEvent],
    container: &str,
    kind: impl Fn(&weft_podrunner::EventKind) -> bool,
) -> usize {
    events
        .iter()
        .position(|e| e.container == container && kind(&e.kind))
        .unwrap_or_else(|| panic!("no such event for {container} in {events:#?}"))
}

/// Waits until container `c` of `p` has printed `text` (polled: a log line changes no pod
/// state); fails showing the log and the events.
pub async fn wait_log(p: &weft_podrunner::PodHandle, c: &str, text: &str) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !p.logs(c).contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "{c} did not print {text:?} within {LIMIT:?}; log:\n{}\nevents: {:#?}",
            p.logs(c),
            p.events()
        );
        tokio::time::sleep(weft_testkit::wait::POLL).await;
    }
}

/// The status of a pod condition (`""` when absent).
pub fn condition(s: &k8s_openapi::api::core::v1::PodStatus, kind: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Waits until the API has been sent a status of `namespace/name` for which `ok` holds.
pub async fn api_status(
    what: &str,
    api: &InMemoryApi,
    namespace: &str,
    name: &str,
    ok: impl Fn(&k8s_openapi::api::core::v1::PodStatus) -> bool,
) -> k8s_openapi::api::core::v1::PodStatus {
    weft_testkit::wait::until_async(what, LIMIT, || {
        let found = api
            .statuses(namespace, name)
            .into_iter()
            .rev()
            .find(|s| ok(s));
        async move { found }
    })
    .await
}
