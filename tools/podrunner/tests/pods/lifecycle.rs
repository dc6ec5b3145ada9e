//! Ordering as Kubernetes 1.29+ runs native sidecars, Job completion, restarts, and deletion
//! with the grace period. Order is asserted on the pod's event log, never on timing.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{binary, can_run, index, pod, runner, LIMIT};
use weft_podrunner::{EventKind, InMemoryApi};

/// A sidecar that starts serving only after a while: its startup probe fails first.
fn slow_sidecar() -> String {
    format!(
        "name: proxy\n    image: weft-sample:0.1.0\n    restartPolicy: Always\n    command: [sh, -c, 'sleep 2; exec {} http --listen=0.0.0.0:15020 --name=proxy']\n    ports: [{{name: metrics, containerPort: 15020}}]\n    startupProbe:\n      httpGet: {{path: /status/200, port: metrics}}\n      periodSeconds: 1\n      failureThreshold: 30\n",
        binary("weft-sample").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_starts_only_after_the_sidecar_passes_its_startup_probe() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let spec = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: test}}\nspec:\n  initContainers:\n  - {}  containers:\n  - name: app\n    image: weft-sample:0.1.0\n    args: [http, --listen=0.0.0.0:8080]\n    readinessProbe:\n      tcpSocket: {{port: 8080}}\n      periodSeconds: 1\n",
        slow_sidecar()
    );
    let p = runner.start(pod(&spec)).await.expect("start");
    p.wait_ready(LIMIT).await.expect("ready");
    let ev = p.events();
    let proxy_started = index(&ev, "proxy", |k| matches!(k, EventKind::Started { .. }));
    let proxy_up = index(&ev, "proxy", |k| *k == EventKind::StartupSucceeded);
    let app_started = index(&ev, "app", |k| matches!(k, EventKind::Started { .. }));
    let app_ready = index(&ev, "app", |k| *k == EventKind::Ready);
    assert!(
        proxy_started < proxy_up && proxy_up < app_started && app_started < app_ready,
        "{ev:#?}"
    );
    // The probe passed because the sidecar serves, not because it was merely started.
    assert!(
        p.logs("proxy").contains("listening on 0.0.0.0:15020"),
        "{}",
        p.logs("proxy")
    );
    // The API is told the pod is Ready, with both containers ready.
    let last = crate::support::api_status("pod Ready through the API", &api, "test", "web", |s| {
        crate::support::condition(s, "Initialized") == "True"
            && crate::support::condition(s, "Ready") == "True"
    })
    .await;
    let sidecar = &last
        .init_container_statuses
        .as_ref()
        .expect("init statuses")[0];
    assert!(
        sidecar.ready && sidecar.started == Some(true),
        "{sidecar:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pod_completes_and_its_sidecar_is_stopped_after_the_app() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    // The app uses the sidecar (over the pod's loopback), then exits 0.
    let job = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: report, namespace: test}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 10\n      initContainers:\n      - {}      containers:\n      - name: report\n        image: tools\n        command: [curl, -sSf, -m, '5', http://127.0.0.1:15020/status/200]\n",
        slow_sidecar().replace("\n    ", "\n        ")
    );
    let w = weft_podrunner::spec::workload(&job, "Job", "report").expect("job");
    let p = runner.start(w.pod("report-x1")).await.expect("start");
    assert_eq!(p.wait_finished(LIMIT).await.expect("finished"), "Succeeded");
    let ev = p.events();
    let app_exit = index(&ev, "report", |k| {
        matches!(k, EventKind::Exited { code: Some(0), .. })
    });
    let term = index(&ev, "proxy", |k| *k == EventKind::Terminating);
    let proxy_exit = index(&ev, "proxy", |k| matches!(k, EventKind::Exited { .. }));
    let done = index(&ev, "", |k| matches!(k, EventKind::PodFinished { .. }));
    assert!(
        app_exit < term && term < proxy_exit && proxy_exit < done,
        "{ev:#?}"
    );
    assert!(
        !ev.iter().any(|e| e.kind == EventKind::Killed),
        "the sidecar ends on SIGTERM: {ev:#?}"
    );
    assert_eq!(p.phase(), "Succeeded");
    crate::support::api_status(
        "phase Succeeded through the API",
        &api,
        "test",
        "report-x1",
        |s| s.phase.as_deref() == Some("Succeeded"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_honours_the_grace_period() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let spec = "apiVersion: v1\nkind: Pod\nmetadata: {name: stubborn, namespace: test}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: ignores-term\n    image: tools\n    command: [sh, -c, 'trap \"\" TERM; echo trapped; while :; do sleep 0.1; done']\n  - name: polite\n    image: tools\n    command: [sleep, '300']\n";
    let p = runner.start(pod(spec)).await.expect("start");
    p.wait_ready(LIMIT).await.expect("ready");
    crate::support::wait_log(&p, "ignores-term", "trapped").await;
    let report = p.delete().await.expect("delete");
    assert_eq!(report.killed, ["ignores-term"], "{report:#?}");
    let ev = &report.events;
    let term = index(ev, "ignores-term", |k| *k == EventKind::Terminating);
    let killed = index(ev, "ignores-term", |k| *k == EventKind::Killed);
    // SIGKILL came no earlier than the grace period after SIGTERM.
    assert!(
        ev[killed].at.duration_since(ev[term].at) >= Duration::from_secs(2),
        "{ev:#?}"
    );
    let polite = index(ev, "polite", |k| {
        matches!(
            k,
            EventKind::Exited {
                signal: Some(_),
                ..
            }
        )
    });
    assert!(
        ev[polite].at.duration_since(ev[term].at) < Duration::from_secs(2),
        "{ev:#?}"
    );
    assert!(report.took >= Duration::from_secs(2), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_is_restarted_with_backoff_up_to_the_bound() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api); // backoff 100 ms doubling to 400 ms, 3 restarts
    let spec = "apiVersion: v1\nkind: Pod\nmetadata: {name: crashy, namespace: test}\nspec:\n  containers:\n  - name: crash\n    image: tools\n    command: [sh, -c, 'exit 3']\n";
    let p = runner.start(pod(spec)).await.expect("start");
    let ev = p
        .wait_events("the restarts to run out", LIMIT, |ev| {
            ev.iter().any(|e| e.kind == EventKind::GaveUp)
        })
        .await
        .expect("gave up");
    let backoffs: Vec<Duration> = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::BackOff { backoff } => Some(backoff),
            _ => None,
        })
        .collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(backoffs, [ms(100), ms(200), ms(400)], "{ev:#?}");
    let starts = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Started { .. }))
        .count();
    assert_eq!(starts, 4, "{ev:#?}");
    assert_eq!(p.wait_finished(LIMIT).await.expect("finished"), "Failed");
}
