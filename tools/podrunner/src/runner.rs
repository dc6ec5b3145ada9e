//! The runner: a node (network namespace with the pods' bridge), the images it knows, the
//! Services for the pods' `/etc/hosts`, and [`Runner::start`], which turns a Pod spec into
//! running containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
use tokio::sync::watch;

use crate::api::ClusterApi;
use crate::container::{Launch, Tools};
use crate::env::{self, PodFields};
use crate::lifecycle::{self, Ctr, PodCtx, Restart};
use crate::net::{self, Node};
use crate::status::{CState, PodState};
use crate::volumes;
use crate::{io_err, Error};

pub use crate::images::Images;
pub use crate::pod::{DeleteReport, ExecOutput, PodHandle};

/// How the runner is set up.
pub struct RunnerOptions {
    /// The Kubernetes API (ConfigMaps, Secrets, tokens, Pod status).
    pub api: Arc<dyn ClusterApi>,
    /// Images → binaries.
    pub images: Images,
    /// `spec.nodeName` the pods see.
    pub node_name: String,
    /// Restart backoff: first wait and cap (the kubelet's are 10 s and 5 min; tests want less).
    pub backoff: (Duration, Duration),
    /// Restarts of one container before the runner gives up (a bound the kubelet lacks).
    pub max_restarts: u32,
    /// How often each pod's configMap, secret and projected volumes are read from the API
    /// again and updated in place when they changed (the kubelet's sync period, about a
    /// minute; tests want less). `None`: only on demand ([`PodHandle::sync_volumes`]).
    pub volume_sync: Option<Duration>,
}

impl RunnerOptions {
    /// Defaults: node `weft-node`, backoff 1 s doubling to 10 s, at most 5 restarts, volumes
    /// refreshed every 60 s.
    pub fn new(api: Arc<dyn ClusterApi>, images: Images) -> Self {
        RunnerOptions {
            api,
            images,
            node_name: "weft-node".into(),
            backoff: (Duration::from_secs(1), Duration::from_secs(10)),
            max_restarts: 5,
            volume_sync: Some(Duration::from_secs(60)),
        }
    }
}

/// A pod as the Services see it.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub hosts: PathBuf,
}

pub(crate) struct Inner {
    pub node: Node,
    pub tools: Tools,
    pub opts: RunnerOptions,
    pub scratch: tempfile::TempDir,
    pub pods: Mutex<BTreeMap<(String, String), Registered>>,
    pub services: Mutex<Vec<Service>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Records whether a pod is ready (for the Services' names) and rewrites the hosts files
    /// when that changed.
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let changed = match lock(&self.pods).get_mut(&(namespace.to_string(), name.to_string())) {
            Some(p) if p.ready != ready => {
                p.ready = ready;
                true
            }
            _ => false,
        };
        if changed {
            self.refresh_hosts();
        }
    }

    /// Rewrites every pod's hosts file (in place: it is bind-mounted into the containers).
    pub fn refresh_hosts(&self) {
        let pods = lock(&self.pods).clone();
        let services = lock(&self.services).clone();
        let mut entries = Vec::new();
        for s in &services {
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = s.metadata.name.clone().unwrap_or_default();
            let Some(sel) = s
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .filter(|s| !s.is_empty())
            else {
                // A Service without a selector whose clusterIP is set resolves to that address
                // (what kube-proxy would forward): how pods reach something outside them, such
                // as a control plane on the node's network.
                let ip = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.cluster_ip.as_deref())
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                if let Some(ip) = ip {
                    entries.push((ns, name, vec![ip]));
                }
                continue;
            };
            let ips: Vec<Ipv4Addr> = pods
                .values()
                .filter(|p| {
                    p.ready
                        && p.namespace == ns
                        && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .map(|p| p.ip)
                .collect();
            entries.push((ns, name, ips));
        }
        for ((ns, name), p) in &pods {
            let text = net::hosts_file(name, ns, p.ip, &entries);
            // A failed write leaves the previous names; the next change rewrites it.
            let _ = std::fs::write(&p.hosts, text);
        }
    }
}

/// Whether this machine can run pods: root, the tools, and network namespaces that can be
/// created. `Err` says what is missing.
pub fn host_check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the pod runner needs root (network namespaces, mounts, setpriv)".into());
    }
    Tools::find().map_err(|e| e.to_string())?;
    // A sequence number too: tests of one process (`cargo test` runs them as threads) check
    // at the same time.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("{}{}-check{seq}", net::PREFIX, std::process::id());
    net::ip(&["netns", "add", &probe])
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    net::ip(&["netns", "delete", &probe]).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs pods on this machine (see the crate docs).
#[derive(Clone)]
pub struct Runner {
    pub(crate) inner: Arc<Inner>,
}

impl Runner {
    /// Creates the node (deleting namespaces a crashed earlier run left behind).
    pub fn new(opts: RunnerOptions) -> Result<Runner, Error> {
        host_check().map_err(Error::Host)?;
        let tools = Tools::find()?;
        net::clean_stale();
        let node = Node::create()?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{}-", node.run_id()))
            .tempdir()
            .map_err(io_err("create the runner's scratch directory"))?;
        Ok(Runner {
            inner: Arc::new(Inner {
                node,
                tools,
                opts,
                scratch,
                pods: Mutex::new(BTreeMap::new()),
                services: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The node: its namespace name and a runtime inside it ([`Node::handle`]) to reach pods.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// Adds (or replaces, by namespace and name) a Service: its name resolves in every pod's
    /// `/etc/hosts` to the IPs of the ready pods its selector matches (without a selector: to
    /// its `clusterIP`, when that is an address).
    pub fn apply_service(&self, svc: Service) {
        {
            let mut all = lock(&self.inner.services);
            all.retain(|s| {
                !(s.metadata.name == svc.metadata.name
                    && s.metadata.namespace == svc.metadata.namespace)
            });
            all.push(svc);
        }
        self.inner.refresh_hosts();
    }

    /// Starts `pod`: its network, volumes, then its containers in Kubernetes order. Returns
    /// once the pod is set up; the containers start in the background (see [`PodHandle`]).
    pub async fn start(&self, mut pod: Pod) -> Result<PodHandle, Error> {
        let inner = Arc::clone(&self.inner);
        let spec = pod
            .spec
            .clone()
            .ok_or_else(|| Error::Spec("pod has no spec".into()))?;
        validate(&spec)?;
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::Spec("pod has no name".into()))?;
        let namespace = pod
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into())
            .clone();
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(format!("{name}-{}", inner.node.run_id()));
        }
        if lock(&inner.pods).contains_key(&(namespace.clone(), name.clone())) {
            return Err(Error::Spec(format!(
                "pod {namespace}/{name} is already running"
            )));
        }
        let net = inner.node.attach(&name)?;
        let dir = inner.scratch.path().join(format!("{namespace}_{name}"));
        let setup = prepare(&inner, &pod, &spec, &net, &dir).await;
        let (inits, apps) = match setup {
            Ok(v) => v,
            Err(e) => {
                let ip = net.ip();
                drop(net);
                inner.node.release(ip);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(crate::pod::launch(inner, pod, spec, net, dir, inits, apps))
    }
}

fn validate(spec: &PodSpec) -> Result<(), Error> {
    if spec.containers.is_empty() {
        return Err(Error::Spec("a pod needs at least one container".into()));
    }
    if spec.host_network == Some(true) {
        return Err(Error::Unsupported("hostNetwork".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if c.name.is_empty() || c.name.contains('/') || !names.insert(c.name.clone()) {
            return Err(Error::Spec(format!(
                "container name {:?} empty, invalid or repeated",
                c.name
            )));
        }
    }
    Ok(())
}

/// Volumes, environments, command lines and launches of every container.
async fn prepare(
    inner: &Inner,
    pod: &Pod,
    spec: &PodSpec,
    net: &net::PodNet,
    dir: &Path,
) -> Result<(Vec<Ctr>, Vec<Ctr>), Error> {
    for sub in ["volumes", "logs", "c"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(io_err(format!("create {}", dir.display())))?;
    }
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "").map_err(io_err("write the hosts file"))?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let resolv = format!("search {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:1\n");
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(io_err("write resolv.conf"))?;
    let fields = PodFields::of(pod, net.ip(), &inner.opts.node_name, net::GATEWAY);
    let dirs =
        volumes::materialize(pod, &fields, inner.opts.api.as_ref(), &dir.join("volumes")).await?;
    let policy = Restart::parse(spec.restart_policy.as_deref());
    let mut inits = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        // A failed regular init container is retried unless the pod never restarts anything.
        let restart = match (sidecar, policy) {
            (true, _) => Restart::Always,
            (false, Restart::Never) => Restart::Never,
            _ => Restart::OnFailure,
        };
        inits.push(
            ctr(
                inner, spec, c, &fields, &dirs, &hosts, dir, net, true, sidecar, restart,
            )
            .await?,
        );
    }
    let mut apps = Vec::new();
    for c in &spec.containers {
        apps.push(
            ctr(
                inner, spec, c, &fields, &dirs, &hosts, dir, net, false, false, policy,
            )
            .await?,
        );
    }
    Ok((inits, apps))
}

#[allow(clippy::too_many_arguments)]
async fn ctr(
    inner: &Inner,
    spec: &PodSpec,
    c: &Container,
    fields: &PodFields,
    dirs: &BTreeMap<String, PathBuf>,
    hosts: &Path,
    dir: &Path,
    net: &net::PodNet,
    init: bool,
    sidecar: bool,
    restart: Restart,
) -> Result<Ctr, Error> {
    let env = env::resolve(c, fields, inner.opts.api.as_ref()).await?;
    let argv = inner.opts.images.argv(c, &env)?;
    let pod_sc = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
        .map(volumes::id)
        .transpose()?;
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .map(volumes::id)
        .transpose()?;
    let mut groups = Vec::new();
    for g in pod_sc.and_then(|s| s.fs_group).into_iter().chain(
        pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .into_iter()
            .flatten(),
    ) {
        groups.push(volumes::id(g)?);
    }
    let scratch = dir.join("c").join(&c.name);
    // `rw` is where the container's overlays get their tmpfs (container.rs).
    std::fs::create_dir_all(scratch.join("rw"))
        .map_err(io_err(format!("create {}", scratch.display())))?;
    let launch = Launch {
        argv,
        env,
        uid,
        gid,
        groups,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        read_only_root: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        privileges: crate::caps::of(sc)?,
        mounts: volumes::mounts_of(c, dirs)?,
        hosts: hosts.to_path_buf(),
        hostname: fields.name.clone(),
        netns: net.netns().to_string(),
        scratch,
        root: inner.opts.images.root(c),
    };
    Ok(Ctr {
        spec: c.clone(),
        launch,
        init,
        sidecar,
        restart,
    })
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

/// Runs `cmd` to its end within `timeout` (killed after it), capturing up to 1 MiB of each
/// output stream.
pub(crate) fn output_within(
    cmd: &mut std::process::Command,
    timeout: Duration,
) -> Result<ExecOutput, String> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut g = weft_testkit::process::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("start {cmd:?}: {e}"))?;
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(1 << 20).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        g.take_stdout()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let err = reader(
        g.take_stderr()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let exit = g.wait_within(timeout);
    drop(g);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let exit = exit.ok_or_else(|| format!("timed out after {timeout:?}; stderr: {stderr}"))?;
    Ok(ExecOutput {
        code: exit.code(),
        stdout,
        stderr,
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
