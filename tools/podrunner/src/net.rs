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
//! earlier run (their process id no longer alive) are deleted by [`clean_stale`]. The
//! namespace plumbing itself is `weft-netns`, shared with `weft up` and the capture tests.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use weft_netns::{Netns, NsRuntime};

use crate::Error;

/// The prefix of every network namespace the runner creates.
pub const PREFIX: &str = "weftpod-";

/// The node's address on the pods' bridge; pods get `10.213.0.2` to `10.213.0.254`.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// Runs `ip ARGS`, returning a clear error with its stderr on failure.
pub(crate) fn ip(args: &[&str]) -> Result<(), Error> {
    Ok(weft_netns::ip(args)?)
}

/// The names of the network namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    weft_netns::namespaces()
}

/// Deletes the runner namespaces whose creating process is gone (a crashed or killed earlier
/// run); namespaces of live processes (parallel tests) are left alone. Returns what it deleted.
pub fn clean_stale() -> Vec<String> {
    weft_netns::clean_stale(PREFIX)
}

impl From<weft_netns::Error> for Error {
    fn from(e: weft_netns::Error) -> Error {
        match e {
            weft_netns::Error::Command { cmd, reason } => Error::Command { cmd, reason },
            weft_netns::Error::Io { what, source } => Error::Io {
                context: what,
                source,
            },
            e @ weft_netns::Error::Runtime { .. } => Error::Host(e.to_string()),
        }
    }
}

/// The node: its network namespace with the pods' bridge, and a runtime inside it.
#[derive(Debug)]
pub struct Node {
    run: String,
    hosts: Mutex<[bool; 256]>,
    /// Stopped (as the fields drop) before the namespace is deleted.
    runtime: NsRuntime,
    net: weft_netns::Node,
}

impl Node {
    /// Creates the node namespace `weftpod-<pid>-<seq>-node` with its bridge, and the thread
    /// whose runtime opens sockets inside it.
    pub fn create() -> Result<Node, Error> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!("{PREFIX}{}-{seq}", std::process::id());
        let net = weft_netns::Node::create(format!("{run}-node"), GATEWAY)?;
        let runtime = NsRuntime::start(net.netns(), format!("node {}", net.netns()))?;
        let mut hosts = [false; 256];
        // .0 network, .1 the node, .255 broadcast.
        for taken in [0, 1, 255] {
            hosts[taken] = true;
        }
        Ok(Node {
            run,
            hosts: Mutex::new(hosts),
            runtime,
            net,
        })
    }

    /// The node namespace's name.
    pub fn netns(&self) -> &str {
        self.net.netns()
    }

    /// The prefix of every namespace this node's pods get (`weftpod-<pid>-<seq>`).
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// A runtime whose tasks open sockets inside the node's network namespace: spawn a task
    /// here to reach a pod's IP, as the kubelet's probes do from the node.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
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
        let name = format!("{}-p{slot}", self.run);
        let ns = self.net.attach(name, &format!("vp{slot}"), addr, true)?;
        Ok(PodNet { ns, ip: addr })
    }

    /// Gives a pod's address back (after its [`PodNet`] is dropped).
    pub fn release(&self, ip: Ipv4Addr) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts[usize::from(ip.octets()[3])] = false;
    }
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
        self.ns.name()
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
