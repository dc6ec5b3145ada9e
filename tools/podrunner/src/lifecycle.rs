//! A pod's life, in the order Kubernetes 1.29+ runs it with native sidecars:
//! 1. init containers one by one; a `restartPolicy: Always` init container (a sidecar) is
//!    started and must pass its startup probe (or, without one, be running) before the next
//!    starts, and keeps running (restarted if it dies); a regular one must exit 0 (retried with
//!    backoff unless the pod's restartPolicy is Never, which fails the pod);
//! 2. the app containers, restarted per the pod's restartPolicy with a doubling backoff;
//! 3. a pod whose restartPolicy is not Always completes when its app containers have exited
//!    (Succeeded when all exited 0), and then its sidecars get SIGTERM, last-started first;
//! 4. deletion: SIGTERM to the app containers, then to the sidecars in reverse order, all
//!    within `terminationGracePeriodSeconds`, after which whatever still runs gets SIGKILL.
//!
//! Startup, readiness and liveness probes run per container incarnation; a failed startup or
//! liveness probe kills the container (SIGTERM, grace, SIGKILL) and the restart policy decides.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use weft_testkit::process::{Exit, Guard};

use crate::container::{self, Launch, Tools};
use crate::probes::{self, Target, Verdict};
use crate::status::{EventKind, PodState};

/// How a container is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn parse(s: Option<&str>) -> Restart {
        match s {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        }
    }
}

/// One container, ready to start.
#[derive(Clone)]
pub(crate) struct Ctr {
    pub spec: Container,
    pub launch: Launch,
    pub init: bool,
    pub sidecar: bool,
    pub restart: Restart,
}

/// What the tasks of one pod share.
pub(crate) struct PodCtx {
    pub state: Arc<PodState>,
    pub tools: Tools,
    pub node: tokio::runtime::Handle,
    pub grace: Duration,
    pub backoff: (Duration, Duration),
    pub max_restarts: u32,
    pub logs: std::path::PathBuf,
    /// Running processes by container, for exec and for a synchronous kill on drop.
    pub pids: Mutex<BTreeMap<String, u32>>,
    /// The launch of each container (exec needs its namespaces' setup and user).
    pub launches: BTreeMap<String, Launch>,
    /// Per container: set to the kill deadline to stop it (checked before each start, too).
    pub stops: BTreeMap<String, watch::Sender<Option<Instant>>>,
    pub deleting: Mutex<Option<Instant>>,
    /// Every supervisor task, aborted on drop (dropping a JoinHandle does not end its task).
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodCtx {
    /// Stops `name` with SIGTERM now and SIGKILL at `deadline`.
    pub fn stop(&self, name: &str, deadline: Instant) {
        if let Some(s) = self.stops.get(name) {
            s.send_replace(Some(deadline));
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        *lock(&self.deleting)
    }

    /// SIGKILL to every running container's process group now, no restart after, and every
    /// task aborted (for drop: nothing of the pod may outlive its handle).
    pub fn kill_all(&self) {
        let now = Instant::now();
        *lock(&self.deleting) = Some(now);
        for s in self.stops.values() {
            s.send_replace(Some(now));
        }
        for pid in lock(&self.pids).values() {
            if let Ok(p) = i32::try_from(*pid) {
                let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        lock(&self.pids).get(name).copied()
    }

    fn target(self: &Arc<Self>, c: &Ctr) -> Target {
        let ports = c
            .spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        let ctx = Arc::clone(self);
        let name = c.spec.name.clone();
        Target {
            pod_ip: self.state.ip,
            ports,
            node: self.node.clone(),
            exec: Arc::new(move |argv, timeout| {
                ctx.exec(&name, &argv, timeout)
                    .map(|o| o.code.unwrap_or(-1))
            }),
        }
    }

    /// Runs `argv` inside container `name` (its namespaces, environment and user).
    pub fn exec(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<crate::ExecOutput, String> {
        let pid = self
            .pid(name)
            .ok_or_else(|| format!("container {name} is not running"))?;
        let launch = self
            .launches
            .get(name)
            .ok_or_else(|| format!("no container {name}"))?;
        let mut cmd = container::exec_command(pid, launch, &self.tools, argv);
        crate::exec::output_within(&mut cmd, timeout)
    }
}

/// Starts the process of `c`, its log appended to `logs/<name>.log`.
fn spawn(ctx: &PodCtx, c: &Ctr) -> Result<Guard, String> {
    let name = &c.spec.name;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.logs.join(format!("{name}.log")))
        .map_err(|e| format!("log file: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    let mut cmd = container::command(&c.launch, &ctx.tools).map_err(|e| e.to_string())?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    weft_testkit::process::spawn(&mut cmd).map_err(|e| format!("start {name}: {e}"))
}

/// SIGTERM, then SIGKILL at `deadline`; returns how the process ended.
async fn terminate(ctx: &PodCtx, name: &str, g: &mut Guard, deadline: Instant) -> Exit {
    if let Some(e) = g.status() {
        return e;
    }
    ctx.state.event(name, EventKind::Terminating);
    g.signal(Signal::SIGTERM);
    loop {
        if let Some(e) = g.status() {
            return e;
        }
        if Instant::now() >= deadline {
            ctx.state.event(name, EventKind::Killed);
            let pid = Pid::from_raw(i32::try_from(g.id()).unwrap_or(i32::MAX));
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(weft_testkit::wait::POLL).await;
    }
}

/// Waits until the container's setup (namespaces, mounts, user) has handed over to its
/// command: the process is no longer `nsenter`, `unshare`, the setup script or `setpriv`. Only
/// then is it "started" (as a runtime reports it), so probes and `exec` never enter a half-made
/// container. `false` if the process ended first or the setup took over 30 s.
async fn set_up(g: &mut Guard, tools: &Tools) -> bool {
    let stages = [&tools.nsenter, &tools.unshare, &tools.setpriv]
        .map(|p| p.as_os_str().as_encoded_bytes().to_vec());
    let sh = tools.sh.as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if g.status().is_some() {
            return false;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", g.id())) {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let setup_script =
                args.first() == Some(&sh.as_slice()) && args.get(3) == Some(&&b"container"[..]);
            if !setup_script && !stages.iter().any(|s| args.first() == Some(&s.as_slice())) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Runs one incarnation of `c` until it exits or is stopped. `Ok(exit)`; `Err` if it could
/// not start. The second value says whether a stop was requested.
async fn incarnation(
    ctx: &Arc<PodCtx>,
    c: &Ctr,
    restarts: u32,
    stop: &mut watch::Receiver<Option<Instant>>,
) -> Result<(Exit, bool), String> {
    let name = c.spec.name.clone();
    let mut g = spawn(ctx, c)?;
    lock(&ctx.pids).insert(name.clone(), g.id());
    if !set_up(&mut g, &ctx.tools).await {
        // The setup failed (its error is in the log) or hung: the container never started.
        let _ = killpg(
            Pid::from_raw(i32::try_from(g.id()).unwrap_or(i32::MAX)),
            Signal::SIGKILL,
        );
    }
    ctx.state.update(&name, |s| {
        s.running = true;
        s.restarts = restarts;
    });
    ctx.state.event(&name, EventKind::Started { restarts });
    let (kill_tx, mut kill_rx) = mpsc::channel::<()>(1);
    let probes = tokio::spawn(probe_task(Arc::clone(ctx), c.clone(), kill_tx));
    let mut stopped = false;
    let exit = loop {
        if let Some(e) = g.status() {
            break e;
        }
        let requested = *stop.borrow();
        if let Some(deadline) = requested {
            stopped = true;
            break terminate(ctx, &name, &mut g, deadline).await;
        }
        tokio::select! {
            _ = stop.changed() => {}
            Some(()) = kill_rx.recv() => {
                let deadline = Instant::now() + ctx.grace;
                break terminate(ctx, &name, &mut g, deadline).await;
            }
            () = tokio::time::sleep(weft_testkit::wait::POLL) => {}
        }
    };
    probes.abort();
    lock(&ctx.pids).remove(&name);
    drop(g);
    let (code, signal) = match exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s.as_str().to_string())),
    };
    ctx.state.update(&name, |s| {
        s.running = false;
        s.ready = false;
        s.last_exit = Some((code, signal.clone()));
    });
    ctx.state.event(&name, EventKind::Exited { code, signal });
    Ok((exit, stopped || stop.borrow().is_some()))
}

/// Runs `c` under its restart policy until it ends for good; returns its last exit (`None`
/// when it never ran).
pub(crate) async fn supervise(ctx: Arc<PodCtx>, c: Ctr) -> Option<Exit> {
    let name = c.spec.name.clone();
    let stop_tx = ctx.stops.get(&name)?;
    let mut stop = stop_tx.subscribe();
    let mut last = None;
    for restarts in 0..=ctx.max_restarts {
        if stop.borrow().is_some() {
            return last;
        }
        let (exit, stopped) = match incarnation(&ctx, &c, restarts, &mut stop).await {
            Ok(v) => v,
            Err(reason) => {
                ctx.state.event(&name, EventKind::Error { reason });
                return last;
            }
        };
        last = Some(exit);
        let again = match c.restart {
            Restart::Always => true,
            Restart::OnFailure => !exit.success(),
            Restart::Never => false,
        };
        if stopped || !again {
            return last;
        }
        if restarts == ctx.max_restarts {
            break;
        }
        let backoff = ctx
            .backoff
            .0
            .saturating_mul(1 << restarts.min(16))
            .min(ctx.backoff.1);
        ctx.state.event(&name, EventKind::BackOff { backoff });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return last,
        }
    }
    ctx.state.event(&name, EventKind::GaveUp);
    last
}

/// The probes of one incarnation: startup (then `started`), readiness, liveness. Asks for a
/// kill through `kill` when startup or liveness fails.
async fn probe_task(ctx: Arc<PodCtx>, c: Ctr, kill: mpsc::Sender<()>) {
    let name = c.spec.name.clone();
    let target = ctx.target(&c);
    let state = Arc::clone(&ctx.state);
    if let Some(p) = &c.spec.startup_probe {
        let mut failed = None;
        probes::watch(p, &target, |v| {
            if let Verdict::Failure(r) = v {
                failed = Some(r);
            }
            false
        })
        .await;
        if let Some(reason) = failed {
            state.event(
                &name,
                EventKind::ProbeFailed {
                    probe: "startup",
                    reason,
                },
            );
            let _ = kill.send(()).await;
            return;
        }
    }
    // The event first, then the state: whoever sees the state change finds the event logged.
    state.event(&name, EventKind::StartupSucceeded);
    state.update(&name, |s| s.started = true);
    if c.init && !c.sidecar {
        // A regular init container runs to completion and is never ready.
        return;
    }
    let readiness = async {
        match &c.spec.readiness_probe {
            Some(p) => {
                probes::watch(p, &target, |v| {
                    let ready = v == Verdict::Success;
                    state.event(
                        &name,
                        if ready {
                            EventKind::Ready
                        } else {
                            EventKind::NotReady
                        },
                    );
                    state.update(&name, |s| s.ready = ready);
                    true
                })
                .await
            }
            None => {
                state.event(&name, EventKind::Ready);
                state.update(&name, |s| s.ready = true);
            }
        }
    };
    let liveness = async {
        if let Some(p) = &c.spec.liveness_probe {
            let mut failed = None;
            probes::watch(p, &target, |v| {
                if let Verdict::Failure(r) = v {
                    failed = Some(r);
                    return false;
                }
                true
            })
            .await;
            if let Some(reason) = failed {
                state.event(
                    &name,
                    EventKind::ProbeFailed {
                        probe: "liveness",
                        reason,
                    },
                );
                let _ = kill.send(()).await;
            }
        }
    };
    tokio::join!(readiness, liveness);
}

/// Waits until `pred` holds on the pod state or `task` ends; true if `pred` held.
async fn until_or_ended(
    state: &PodState,
    task: &tokio::task::JoinHandle<Option<Exit>>,
    pred: impl Fn(&PodState) -> bool,
) -> bool {
    let mut changed = state.changed.subscribe();
    loop {
        if pred(state) {
            return true;
        }
        if task.is_finished() {
            return pred(state);
        }
        // Woken by any change; the timeout re-checks `is_finished`, which sends no change.
        let _ = tokio::time::timeout(weft_testkit::wait::POLL, changed.changed()).await;
    }
}

/// The pod's whole life (module docs); ends when the pod has finished or been deleted.
pub(crate) async fn run(ctx: Arc<PodCtx>, inits: Vec<Ctr>, apps: Vec<Ctr>, policy: Restart) {
    let state = Arc::clone(&ctx.state);
    let mut sidecars = Vec::new();
    for c in inits {
        if ctx.deadline().is_some() {
            break;
        }
        let name = c.spec.name.clone();
        let task = tokio::spawn(supervise(Arc::clone(&ctx), c.clone()));
        lock(&ctx.tasks).push(task.abort_handle());
        if c.sidecar {
            let started = |s: &PodState| {
                s.containers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .is_some_and(|c| c.started)
            };
            until_or_ended(&state, &task, |s| started(s) || ctx.deadline().is_some()).await;
            let ok = started(&state) && ctx.deadline().is_none();
            sidecars.push((name, task));
            if !ok {
                return finish(&ctx, sidecars, "Failed").await;
            }
        } else {
            let ok = task.await.ok().flatten().is_some_and(Exit::success);
            if !ok {
                return finish(&ctx, sidecars, "Failed").await;
            }
        }
    }
    if ctx.deadline().is_none() {
        state.set_initialized();
        state.set_phase("Running");
    }
    let tasks: Vec<_> = apps
        .into_iter()
        .map(|c| {
            let t = tokio::spawn(supervise(Arc::clone(&ctx), c));
            lock(&ctx.tasks).push(t.abort_handle());
            t
        })
        .collect();
    let mut all_ok = true;
    for t in tasks {
        all_ok &= t.await.ok().flatten().is_some_and(Exit::success);
    }
    // Apps end for good only when the pod completes (Never/OnFailure), gives up, or is deleted.
    let phase = if all_ok && policy != Restart::Always {
        "Succeeded"
    } else {
        "Failed"
    };
    finish(&ctx, sidecars, phase).await;
}

/// Stops the sidecars, last-started first, within the grace period (or the deletion's
/// deadline), and records the pod's terminal phase.
async fn finish(
    ctx: &Arc<PodCtx>,
    sidecars: Vec<(String, tokio::task::JoinHandle<Option<Exit>>)>,
    phase: &str,
) {
    let deadline = ctx.deadline().unwrap_or_else(|| Instant::now() + ctx.grace);
    for (name, task) in sidecars.into_iter().rev() {
        ctx.stop(&name, deadline);
        let _ = task.await;
    }
    if ctx.deadline().is_none() {
        ctx.state.set_phase(phase);
        ctx.state.event(
            "",
            EventKind::PodFinished {
                phase: phase.to_string(),
            },
        );
    }
}

/// Deletes the pod: SIGTERM to the app (and regular init) containers now, SIGKILL at the end of
/// the grace period; [`run`] then stops the sidecars in reverse order before the same deadline.
pub(crate) fn begin_delete(ctx: &PodCtx, sidecars: &[String]) -> Instant {
    let deadline = Instant::now() + ctx.grace;
    *lock(&ctx.deleting) = Some(deadline);
    for name in ctx.stops.keys() {
        if !sidecars.contains(name) {
            ctx.stop(name, deadline);
        }
    }
    deadline
}
