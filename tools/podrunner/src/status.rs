//! What happened in a pod (an ordered event log, for tests to assert order rather than timing)
//! and its Kubernetes status (phase, conditions, container statuses), rebuilt from the
//! containers' states and pushed through [`crate::ClusterApi::update_pod_status`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};

/// What happened to a container or the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The process was started (the `n`th time, from 0).
    Started {
        /// How many times it was restarted before.
        restarts: u32,
    },
    /// The startup probe passed (or, without one, the process is running): the next container
    /// may start.
    StartupSucceeded,
    /// A startup or liveness probe failed `failureThreshold` times: the container is killed.
    ProbeFailed {
        /// `startup` or `liveness`.
        probe: &'static str,
        /// The last failure.
        reason: String,
    },
    /// The readiness probe (or, without one, the running process) made the container ready.
    Ready,
    /// The container stopped being ready.
    NotReady,
    /// The process ended.
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<String>,
    },
    /// SIGTERM was sent (deletion, a Job's sidecar after the app, a failed probe).
    Terminating,
    /// SIGKILL was sent: the grace period ran out.
    Killed,
    /// The container is waiting `backoff` before it is restarted.
    BackOff {
        /// The wait.
        backoff: std::time::Duration,
    },
    /// The container gave up restarting (the runner's restart bound).
    GaveUp,
    /// The pod reached a terminal phase (`Succeeded` or `Failed`).
    PodFinished {
        /// The phase.
        phase: String,
    },
    /// The pod failed to start a container (a spec error, a command that cannot run).
    Error {
        /// Why.
        reason: String,
    },
}

/// One entry of a pod's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// Position in the log (0, 1, 2, ...): events are totally ordered.
    pub seq: u64,
    /// When it happened.
    pub at: Instant,
    /// The container concerned (empty for pod-level events).
    pub container: String,
    /// What happened.
    pub kind: EventKind,
}

/// A container's live state, as the status needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CState {
    pub init: bool,
    pub sidecar: bool,
    pub image: String,
    pub running: bool,
    pub started: bool,
    pub ready: bool,
    pub restarts: u32,
    pub last_exit: Option<(Option<i32>, Option<String>)>,
}

/// The shared, lock-protected state of one pod.
#[derive(Debug)]
pub(crate) struct PodState {
    pub events: Mutex<Vec<PodEvent>>,
    pub containers: Mutex<BTreeMap<String, CState>>,
    /// The order containers appear in the spec (init first).
    pub order: Vec<String>,
    pub phase: Mutex<String>,
    pub initialized: Mutex<bool>,
    pub ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    /// Bumped on every change; waiters and the status reporter watch it.
    pub changed: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodState {
    pub fn new(
        order: Vec<String>,
        containers: BTreeMap<String, CState>,
        ip: Ipv4Addr,
        host_ip: Ipv4Addr,
    ) -> Self {
        PodState {
            events: Mutex::new(Vec::new()),
            containers: Mutex::new(containers),
            order,
            phase: Mutex::new("Pending".into()),
            initialized: Mutex::new(false),
            ip,
            host_ip,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Appends an event.
    pub fn event(&self, container: &str, kind: EventKind) {
        {
            let mut ev = lock(&self.events);
            let seq = ev.len() as u64;
            ev.push(PodEvent {
                seq,
                at: Instant::now(),
                container: container.to_string(),
                kind,
            });
        }
        self.bump();
    }

    /// Changes a container's state.
    pub fn update(&self, container: &str, f: impl FnOnce(&mut CState)) {
        if let Some(c) = lock(&self.containers).get_mut(container) {
            f(c);
        }
        self.bump();
    }

    pub fn set_phase(&self, phase: &str) {
        *lock(&self.phase) = phase.to_string();
        self.bump();
    }

    pub fn phase(&self) -> String {
        lock(&self.phase).clone()
    }

    pub fn set_initialized(&self) {
        *lock(&self.initialized) = true;
        self.bump();
    }

    pub fn events(&self) -> Vec<PodEvent> {
        lock(&self.events).clone()
    }

    /// Ready: initialized, and every app container and every sidecar ready.
    pub fn ready(&self) -> bool {
        let phase = self.phase();
        *lock(&self.initialized)
            && phase == "Running"
            && lock(&self.containers)
                .values()
                .filter(|c| !c.init || c.sidecar)
                .all(|c| c.ready)
    }

    /// The pod's Kubernetes status as of now.
    pub fn status(&self) -> PodStatus {
        let cs = lock(&self.containers).clone();
        let initialized = *lock(&self.initialized);
        let ready = self.ready();
        let containers_ready = cs
            .values()
            .filter(|c| !c.init || c.sidecar)
            .all(|c| c.ready);
        let cond = |t: &str, ok: bool| PodCondition {
            type_: t.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            ..PodCondition::default()
        };
        let statuses = |init: bool| -> Vec<ContainerStatus> {
            self.order
                .iter()
                .filter_map(|n| cs.get(n).map(|c| (n, c)))
                .filter(|(_, c)| c.init == init)
                .map(|(n, c)| container_status(n, c))
                .collect()
        };
        PodStatus {
            phase: Some(self.phase()),
            pod_ip: Some(self.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: self.ip.to_string(),
            }]),
            host_ip: Some(self.host_ip.to_string()),
            conditions: Some(vec![
                cond("PodScheduled", true),
                cond("Initialized", initialized),
                cond("ContainersReady", containers_ready),
                cond("Ready", ready),
            ]),
            init_container_statuses: Some(statuses(true)),
            container_statuses: Some(statuses(false)),
            ..PodStatus::default()
        }
    }
}

fn container_status(name: &str, c: &CState) -> ContainerStatus {
    let state = if c.running {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }
    } else if let Some((code, signal)) = &c.last_exit {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code.unwrap_or(137),
                signal: signal.as_ref().map(|_| 9),
                reason: Some(
                    if *code == Some(0) {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                ),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    } else {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("PodInitializing".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        }
    };
    ContainerStatus {
        name: name.to_string(),
        image: c.image.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: i32::try_from(c.restarts).unwrap_or(i32::MAX),
        state: Some(state),
        ..ContainerStatus::default()
    }
}
