//! Nothing is left behind: after a pod and its runner are dropped (or a test panics with them
//! alive) no network namespace (and so no bridge or veth, which live inside them), no process
//! and no scratch file remains; namespaces of a crashed earlier run are removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{can_run, pod, runner, LIMIT};
use weft_podrunner::{net, InMemoryApi};

const SPEC: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME, namespace: test}\nspec:\n  initContainers:\n  - {name: side, image: tools, restartPolicy: Always, command: [sleep, '300']}\n  containers:\n  - name: app\n    image: tools\n    command: [sleep, '300']\n    volumeMounts: [{name: data, mountPath: /var/lib/weft-podrunner-cleanup}]\n  volumes: [{name: data, emptyDir: {}}]\n";

fn ours(run: &str) -> Vec<String> {
    net::namespaces()
        .into_iter()
        .filter(|n| n.starts_with(run))
        .collect()
}

fn gone(pid: u32) -> bool {
    // Reaped, or at least dead (a zombie awaiting its reaper has state Z).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

/// What a runner made, recorded while it runs: namespaces, processes, files.
struct Made {
    run: String,
    netns: Vec<String>,
    pids: Vec<u32>,
    files: Vec<PathBuf>,
}

async fn make(runner: &weft_podrunner::Runner) -> (Made, Vec<weft_podrunner::PodHandle>) {
    let mut pods = Vec::new();
    for name in ["one", "two"] {
        let p = runner
            .start(pod(&SPEC.replace("NAME", name)))
            .await
            .expect("start");
        p.wait_ready(LIMIT).await.expect("ready");
        pods.push(p);
    }
    let run = runner.node().run_id().to_string();
    let links = std::process::Command::new("ip")
        .args(["-n", runner.node().netns(), "-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(
        links.contains("br0") && links.contains("vp2@") && links.contains("vp3@"),
        "{links}"
    );
    let pids = pods
        .iter()
        .flat_map(|p| [p.pid("side"), p.pid("app")])
        .map(|p| p.expect("running"))
        .collect();
    let files = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&run))
        })
        .collect::<Vec<_>>();
    assert_eq!(files.len(), 1, "the runner's scratch directory: {files:?}");
    let made = Made {
        netns: ours(&run),
        run,
        pids,
        files,
    };
    assert_eq!(made.netns.len(), 3, "node and two pods: {:?}", made.netns);
    (made, pods)
}

async fn assert_nothing_left(made: &Made) {
    weft_testkit::wait::until_async("the containers to die", Duration::from_secs(10), || async {
        made.pids.iter().all(|p| gone(*p)).then_some(())
    })
    .await;
    assert_eq!(
        ours(&made.run),
        Vec::<String>::new(),
        "network namespaces left"
    );
    for f in &made.files {
        assert!(!f.exists(), "{} left", f.display());
    }
    assert!(!std::path::Path::new("/var/lib/weft-podrunner-cleanup").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_pods_and_runner_removes_everything() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let (made, pods) = make(&runner).await;
    drop(pods);
    drop(runner);
    assert_nothing_left(&made).await;
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let api = Arc::new(InMemoryApi::new());
            let runner = runner(&api);
            let (made, _pods) = make(&runner).await;
            tx.send(made).expect("send");
            panic!("a test failing with its pods running");
        });
    })
    .join();
    assert!(failed.is_err(), "the thread was meant to panic");
    let made = rx.recv().expect("what the failed test made");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(assert_nothing_left(&made));
}

#[test]
fn namespaces_of_a_crashed_run_are_removed() {
    if !can_run() {
        return;
    }
    // A process id that is no longer alive: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let stale = format!("{}{dead}-0-node", net::PREFIX);
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .expect("ip");
    assert!(out.status.success(), "{out:?}");
    let api = Arc::new(InMemoryApi::new());
    let _runner = runner(&api);
    assert!(
        !net::namespaces().contains(&stale),
        "the stale namespace {stale} survived"
    );
}
