//! A running pod: what a test (or an API-server adapter) can ask of it, and the guard that
//! removes everything it made (processes, network namespace, scratch files) when dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use tokio::sync::watch;

use crate::exec::ExecOutput;
use crate::lifecycle::{self, Ctr, PodCtx, Restart};
use crate::net::{self, PodNet};
use crate::shared::{lock, Inner, Registered};
use crate::status::{CState, EventKind, PodEvent, PodState};
use crate::Error;

/// How a deletion went.
#[derive(Debug, Clone)]
pub struct DeleteReport {
    /// How long from SIGTERM until every container had ended.
    pub took: Duration,
    /// Containers that outlived the grace period and got SIGKILL, in order.
    pub killed: Vec<String>,
    /// The events from the deletion on.
    pub events: Vec<PodEvent>,
}

/// A pod the runner started. Dropping it kills its containers (SIGKILL) and removes its
/// network namespace and files; [`PodHandle::delete`] is the graceful way.
pub struct PodHandle {
    name: String,
    namespace: String,
    ctx: Arc<PodCtx>,
    run: Option<tokio::task::JoinHandle<()>>,
    reporter: tokio::task::AbortHandle,
    net: Option<PodNet>,
    inner: Arc<Inner>,
    dir: PathBuf,
    sidecars: Vec<String>,
    volumes: Arc<Volumes>,
    volume_sync: Option<tokio::task::AbortHandle>,
}

/// What refreshing a pod's volumes needs: the pod as started, its downward-API facts, and
/// where its volumes are.
struct Volumes {
    pod: Pod,
    fields: crate::env::PodFields,
    root: PathBuf,
    /// One refresh at a time (the periodic one and one asked for may meet).
    busy: tokio::sync::Mutex<()>,
}

impl Volumes {
    async fn refresh(&self, inner: &Inner) -> Result<usize, Error> {
        let _one = self.busy.lock().await;
        crate::volumes::refresh(&self.pod, &self.fields, inner.opts.api.as_ref(), &self.root).await
    }
}

/// Refreshes the pod's volumes every `period` until aborted (when the pod goes). A failed
/// refresh (the API unreachable) keeps the files in force and is tried again next period, as
/// the kubelet does.
async fn sync_volumes(inner: Arc<Inner>, volumes: Arc<Volumes>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now: the volumes were just written
    loop {
        tick.tick().await;
        let _ = volumes.refresh(&inner).await;
    }
}

/// Registers the pod, starts its lifecycle and its status reporter.
pub(crate) fn launch(
    inner: Arc<Inner>,
    pod: Pod,
    spec: PodSpec,
    net: PodNet,
    dir: PathBuf,
    inits: Vec<Ctr>,
    apps: Vec<Ctr>,
) -> PodHandle {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let all: Vec<&Ctr> = inits.iter().chain(apps.iter()).collect();
    let ctx = context(&inner, &spec, &net, &dir, &all);
    let sidecars = inits
        .iter()
        .filter(|c| c.sidecar)
        .map(|c| c.spec.name.clone())
        .collect();
    lock(&inner.pods).insert(
        (namespace.clone(), name.clone()),
        Registered {
            namespace: namespace.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: net.ip(),
            ready: false,
            hosts: dir.join("hosts"),
        },
    );
    inner.refresh_hosts();
    let reporter = tokio::spawn(report(
        Arc::clone(&inner),
        Arc::clone(&ctx),
        namespace.clone(),
        name.clone(),
    ))
    .abort_handle();
    let volumes = Arc::new(Volumes {
        fields: crate::env::PodFields::of(
            &pod,
            net.ip(),
            &inner.opts.node_name,
            crate::net::GATEWAY,
        ),
        pod,
        root: dir.join("volumes"),
        busy: tokio::sync::Mutex::new(()),
    });
    let volume_sync = inner.opts.volume_sync.map(|period| {
        tokio::spawn(sync_volumes(
            Arc::clone(&inner),
            Arc::clone(&volumes),
            period,
        ))
        .abort_handle()
    });
    let policy = Restart::parse(spec.restart_policy.as_deref());
    let run = start_tasks(&ctx, inits, apps, policy);
    PodHandle {
        name,
        namespace,
        ctx,
        run: Some(run),
        reporter,
        net: Some(net),
        inner,
        dir,
        sidecars,
        volumes,
        volume_sync,
    }
}

/// Sends the pod's status through the API whenever it changes, and keeps the Services'
/// view of its readiness current. Ends when the pod is dropped (aborted).
async fn report(inner: Arc<Inner>, ctx: Arc<PodCtx>, namespace: String, name: String) {
    let mut changed = ctx.state.changed.subscribe();
    let mut last: Option<PodStatus> = None;
    loop {
        let status = ctx.state.status();
        if last.as_ref() != Some(&status) {
            // A failed update is retried with the next change, as a kubelet's status manager does.
            if inner
                .opts
                .api
                .update_pod_status(&namespace, &name, status.clone())
                .await
                .is_ok()
            {
                last = Some(status);
            }
        }
        inner.set_ready(&namespace, &name, ctx.state.ready());
        if changed.changed().await.is_err() {
            return;
        }
    }
}

impl PodHandle {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pod's IP (on the node's bridge).
    pub fn ip(&self) -> Ipv4Addr {
        self.ctx.state.ip
    }

    /// The pod's network namespace (`/run/netns/<name>`).
    pub fn netns(&self) -> &str {
        self.net.as_ref().map_or("", PodNet::netns)
    }

    /// The process id of container `name` while it runs (the container's first process).
    pub fn pid(&self, container: &str) -> Option<u32> {
        self.ctx.pid(container)
    }

    /// The event log so far.
    pub fn events(&self) -> Vec<PodEvent> {
        self.ctx.state.events()
    }

    /// The pod's Kubernetes status now (what was last sent through the API, or about to be).
    pub fn status(&self) -> PodStatus {
        self.ctx.state.status()
    }

    /// The pod's phase: `Pending`, `Running`, `Succeeded` or `Failed`.
    pub fn phase(&self) -> String {
        self.ctx.state.phase()
    }

    /// Whether the pod's `Ready` condition holds.
    pub fn is_ready(&self) -> bool {
        self.ctx.state.ready()
    }

    /// What container `name` has printed (stdout and stderr), as `kubectl logs` would show.
    pub fn logs(&self, container: &str) -> String {
        std::fs::read(self.dir.join("logs").join(format!("{container}.log")))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `done` holds on the event log, and returns the log.
    pub async fn wait_events(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[PodEvent]) -> bool,
    ) -> Result<Vec<PodEvent>, Error> {
        let mut changed = self.ctx.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let events = self.events();
            if done(&events) {
                return Ok(events);
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    what: format!(
                        "{what}; pod {}/{} events: {events:#?}",
                        self.namespace, self.name
                    ),
                    limit,
                });
            }
        }
    }

    /// Waits until the pod is Ready.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), Error> {
        let mut changed = self.ctx.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_ready() {
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    what: format!(
                        "pod {}/{} ready; events: {:#?}",
                        self.namespace,
                        self.name,
                        self.events()
                    ),
                    limit,
                });
            }
        }
        // The Services' names resolve to this pod from now on (the status reporter would do
        // it too, a moment later).
        self.inner.set_ready(&self.namespace, &self.name, true);
        Ok(())
    }

    /// Waits until the pod has finished (a Job's pod): its terminal phase.
    pub async fn wait_finished(&self, limit: Duration) -> Result<String, Error> {
        let events = self
            .wait_events("the pod to finish", limit, |ev| {
                ev.iter()
                    .any(|e| matches!(e.kind, EventKind::PodFinished { .. }))
            })
            .await?;
        Ok(events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::PodFinished { phase } => Some(phase.clone()),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Runs `argv` in container `container` (its namespaces, environment, working directory
    /// and user), like `kubectl exec`, killed after `timeout`.
    pub async fn exec(
        &self,
        container: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        let ctx = Arc::clone(&self.ctx);
        let (name, argv) = (
            container.to_string(),
            argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || ctx.exec(&name, &argv, timeout))
            .await
            .map_err(|e| Error::Spec(format!("exec task: {e}")))?
            .map_err(|reason| Error::Command {
                cmd: format!("exec in {container}"),
                reason,
            })
    }

    /// Reads the ConfigMaps and Secrets of the pod's volumes again now and swaps in what
    /// changed (atomically, as the kubelet's sync does every [`crate::RunnerOptions::volume_sync`]);
    /// returns how many volumes changed.
    pub async fn sync_volumes(&self) -> Result<usize, Error> {
        self.volumes.refresh(&self.inner).await
    }

    /// Deletes the pod as the kubelet does: SIGTERM to the app containers, then the sidecars in
    /// reverse order, SIGKILL to whatever still runs when `terminationGracePeriodSeconds` ends;
    /// then removes its network and files.
    pub async fn delete(mut self) -> Result<DeleteReport, Error> {
        let from = self.ctx.state.events().len();
        let start = Instant::now();
        let deadline = lifecycle::begin_delete(&self.ctx, &self.sidecars);
        if let Some(run) = self.run.take() {
            // The lifecycle ends by the deadline (SIGKILL) plus the time to reap.
            let limit =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
            if tokio::time::timeout(limit, run).await.is_err() {
                self.ctx.kill_all();
            }
        }
        let took = start.elapsed();
        let events: Vec<PodEvent> = self.ctx.state.events().split_off(from);
        let killed = events
            .iter()
            .filter(|e| e.kind == EventKind::Killed)
            .map(|e| e.container.clone())
            .collect();
        Ok(DeleteReport {
            took,
            killed,
            events,
        })
    }
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        self.ctx.kill_all();
        if let Some(run) = self.run.take() {
            run.abort();
        }
        self.reporter.abort();
        if let Some(sync) = self.volume_sync.take() {
            sync.abort();
        }
        lock(&self.inner.pods).remove(&(self.namespace.clone(), self.name.clone()));
        self.inner.refresh_hosts();
        if let Some(net) = self.net.take() {
            let ip = net.ip();
            drop(net);
            self.inner.node.release(ip);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pod's shared context and state.
pub(crate) fn context(
    inner: &Inner,
    spec: &PodSpec,
    net: &net::PodNet,
    dir: &Path,
    all: &[&Ctr],
) -> Arc<PodCtx> {
    let order = all.iter().map(|c| c.spec.name.clone()).collect();
    let states = all
        .iter()
        .map(|c| {
            let s = CState {
                init: c.init,
                sidecar: c.sidecar,
                image: c.spec.image.clone().unwrap_or_default(),
                ..CState::default()
            };
            (c.spec.name.clone(), s)
        })
        .collect();
    let grace = spec
        .termination_grace_period_seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(30);
    Arc::new(PodCtx {
        state: Arc::new(PodState::new(order, states, net.ip(), net::GATEWAY)),
        tools: inner.tools.clone(),
        node: inner.node.handle().clone(),
        grace: Duration::from_secs(grace),
        backoff: inner.opts.backoff,
        max_restarts: inner.opts.max_restarts,
        logs: dir.join("logs"),
        pids: Mutex::new(BTreeMap::new()),
        launches: all
            .iter()
            .map(|c| (c.spec.name.clone(), c.launch.clone()))
            .collect(),
        stops: all
            .iter()
            .map(|c| (c.spec.name.clone(), watch::channel(None).0))
            .collect(),
        deleting: Mutex::new(None),
        tasks: Mutex::new(Vec::new()),
    })
}

/// `lifecycle` needs these when the pod starts.
pub(crate) fn start_tasks(
    ctx: &Arc<PodCtx>,
    inits: Vec<Ctr>,
    apps: Vec<Ctr>,
    policy: Restart,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(lifecycle::run(Arc::clone(ctx), inits, apps, policy))
}
