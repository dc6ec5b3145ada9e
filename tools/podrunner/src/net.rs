//! Pod networking inside namespaces the runner creates, never on the host's own network.
//!
//! A runner makes one "node" network namespace holding a bridge (`br0`, the node's address
//! `10.213.0.1/24`); each pod gets its own network namespace with loopback up, a veth pair whose
//! node end is on the bridge and whose pod end is `eth0` with the pod's IP, and a default route
//! via the bridge. Because the bridge and the veths live in the node namespace, two runners
//! (parallel tests) use the same range without clashing; only the namespace names are global,
//! and they carry the runner's process id and a sequence number.
//!
//! Probes and tests reach pods from the node namespace, as a kubelet does from its node:
//! [`Node::handle`] is a Tokio runtime on a thread that entered it, so sockets opened by tasks
//! spawned there are in the node's network.
//!
//! Every namespace is deleted on drop ([`Node`], [`PodNet`]); namespaces left by a crashed
//! earlier run (their process id no longer alive) are deleted by [`clean_stale`].

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use crate::Error;

/// The prefix of every network namespace the runner creates.
pub const PREFIX: &str = "weftpod-";

/// The node's address on the pods' bridge; pods get `10.213.0.2` to `10.213.0.254`.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// Runs `ip ARGS`, returning a clear error with its stderr on failure.
pub(crate) fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args)
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            cmd: format!("{program} {}", args.join(" ")),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        cmd: format!("{program} {}", args.join(" ")),
        reason: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// The names of the network namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Deletes the runner namespaces whose creating process is gone (a crashed or killed earlier
/// run); namespaces of live processes (parallel tests) are left alone. Returns what it deleted.
pub fn clean_stale() -> Vec<String> {
    let mut deleted = Vec::new();
    for name in namespaces() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "delete", &name]).is_ok()
        {
            deleted.push(name);
        }
    }
    deleted
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
struct Netns(String);

impl Netns {
    fn create(name: String) -> Result<Self, Error> {
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its interfaces (the bridge, a veth and its peer) with it.
        let _ = ip(&["netns", "delete", &self.0]);
    }
}

/// The node: its network namespace with the pods' bridge, and a runtime inside it.
#[derive(Debug)]
pub struct Node {
    run: String,
    ns: Netns,
    hosts: Mutex<[bool; 256]>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Creates the node namespace `weftpod-<pid>-<seq>-node` with its bridge, and the thread
    /// whose runtime opens sockets inside it.
    pub fn create() -> Result<Node, Error> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!("{PREFIX}{}-{seq}", std::process::id());
        let ns = Netns::create(format!("{run}-node"))?;
        ip(&["-n", &ns.0, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ns.0, "link", "set", "br0", "up"])?;
        let (handle, stop, thread) = node_thread(&ns.0)?;
        let mut hosts = [false; 256];
        // .0 network, .1 the node, .255 broadcast.
        for taken in [0, 1, 255] {
            hosts[taken] = true;
        }
        Ok(Node {
            run,
            ns,
            hosts: Mutex::new(hosts),
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The node namespace's name.
    pub fn netns(&self) -> &str {
        &self.ns.0
    }

    /// The prefix of every namespace this node's pods get (`weftpod-<pid>-<seq>`).
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// A runtime whose tasks open sockets inside the node's network namespace: spawn a task
    /// here to reach a pod's IP, as the kubelet's probes do from the node.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Creates a pod's network: namespace `<run>-<slot>`, `eth0` with the next free address.
    pub fn attach(&self, pod_name: &str) -> Result<PodNet, Error> {
        let slot = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            let free = hosts
                .iter()
                .position(|taken| !taken)
                .ok_or_else(|| Error::Spec(format!("no address left for pod {pod_name}")))?;
            hosts[free] = true;
            free
        };
        let octet = u8::try_from(slot).map_err(|_| Error::Spec("address slot".into()))?;
        let ip = Ipv4Addr::new(10, 213, 0, octet);
        let net = self.plumb(slot, ip);
        if net.is_err() {
            self.release(ip);
        }
        net
    }

    fn plumb(&self, slot: usize, addr: Ipv4Addr) -> Result<PodNet, Error> {
        let ns = Netns::create(format!("{}-p{slot}", self.run))?;
        let veth = format!("vp{slot}");
        let node = &self.ns.0;
        ip(&[
            "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.0,
        ])?;
        ip(&["-n", node, "link", "set", &veth, "master", "br0"])?;
        ip(&["-n", node, "link", "set", &veth, "up"])?;
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns.0,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ])?;
        Ok(PodNet { ns, ip: addr })
    }

    /// Gives a pod's address back (after its [`PodNet`] is dropped).
    pub fn release(&self, ip: Ipv4Addr) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts[usize::from(ip.octets()[3])] = false;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type NodeThread = (
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
);

/// A thread that enters the node's network namespace (setns changes only the calling thread's)
/// and drives a current-thread runtime until told to stop.
fn node_thread(netns: &str) -> Result<NodeThread, Error> {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).map_err(crate::io_err(format!("open {path}")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("node {netns}"))
        .spawn(move || {
            let rt = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns into {path}: {e}"))
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("node runtime: {e}"))
                });
            match rt {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(crate::io_err("spawn the node thread"))?;
    let handle = rx
        .recv()
        .map_err(|e| Error::Host(format!("node thread: {e}")))?
        .map_err(Error::Host)?;
    Ok((handle, stop, thread))
}

/// A pod's network namespace and address, removed on drop (with its veth pair).
#[derive(Debug)]
pub struct PodNet {
    ns: Netns,
    ip: Ipv4Addr,
}

impl PodNet {
    /// The pod's IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's network namespace name (`/run/netns/<name>`).
    pub fn netns(&self) -> &str {
        &self.ns.0
    }
}

/// The `/etc/hosts` of a pod: localhost, the pod's own name, and each Service name (short,
/// `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`) with the IPs of its ready
/// pods (there is no kube-proxy here: a name resolves to pod IPs, like a headless Service).
/// The short name is only written for Services in the pod's own namespace, as DNS search
/// domains would resolve it.
pub fn hosts_file(
    pod_name: &str,
    pod_namespace: &str,
    pod_ip: Ipv4Addr,
    services: &[(String, String, Vec<Ipv4Addr>)],
) -> String {
    let mut s = format!(
        "# Kubernetes-managed hosts file (weft pod runner).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{pod_name}\n"
    );
    for (ns, name, ips) in services {
        for ip in ips {
            let short = if ns == pod_namespace {
                name.as_str()
            } else {
                ""
            };
            s.push_str(&format!(
                "{ip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns} {short}\n"
            ));
        }
    }
    s
}
