//! The runner: a node (network namespace with the pods' bridge), the images it knows, the
//! Services for the pods' `/etc/hosts`, and [`Runner::start`], which turns a Pod spec into
//! running containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};

use crate::container::{Launch, Tools};
use crate::env::{self, PodFields};
use crate::lifecycle::{Ctr, Restart};
use crate::net::{self, Node};
use crate::volumes;
use crate::{io_err, Error};

pub use crate::exec::ExecOutput;
pub use crate::images::Images;
pub use crate::pod::{DeleteReport, PodHandle};
pub use crate::shared::RunnerOptions;
use crate::shared::{lock, Inner};

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
