//! `weft up`'s captured mode: every shop instance in a network namespace of its own, its
//! traffic carried into its sidecar by `weft-proxy init`, and the apps calling each other by
//! plain service names with no proxy setting, as pods do on Kubernetes.
//!
//! ```text
//! host netns: weft up (control plane, view, generator)  127.0.0.1:<relay> ─┐
//!   node netns weftup-<pid>-node: bridge br0 10.217.0.1/24 ◀──────────────┘ relays
//!     ├─ veth ─ weftup-<pid>-frontend  eth0 10.217.0.5  sidecar + app, nft table inet weft
//!     ├─ veth ─ weftup-<pid>-orders-v1 eth0 10.217.0.3  …
//!     └─ …
//! ```
//!
//! The bridge lives in a node namespace of its own, not the host's: nothing of this touches
//! the host's interfaces or addresses. `weft up` itself stays on the host's loopback and
//! reaches in through relays: the sidecars' control-plane address is a relay listening on the
//! bridge and connecting to the embedded control plane on 127.0.0.1; each sidecar's read-only
//! metrics port (`/metrics`, `/ready`: what the view reads; the full admin API stays on the
//! pod's loopback) and the loadgen sidecar's outbound port, where the generator sends, are
//! relays listening
//! on 127.0.0.1 and connecting to the pod's IP from the node namespace (loadgen's: to its
//! outbound listener on the pod's loopback, from inside the pod). A socket stays in the
//! namespace it was created in, whichever thread uses it: listeners are bound by a thread that
//! entered the right namespace, and each relay's connections are opened by a runtime whose
//! thread is in the namespace of the target.
//!
//! Names: each pod gets its own `hosts` file in `/etc/netns/<netns>/`, which `ip netns exec`
//! bind-mounts over `/etc/hosts` in a private mount namespace for the processes it starts;
//! a service's name resolves to the pod IPs of its instances (a headless Service, as the pod
//! runner does). No virtual IPs are needed: the sidecars learn every endpoint's pod IP from
//! the control plane, so a captured connection's original destination already names the
//! service, and HTTP is routed by its Host (`orders:8080`) with the canary split as before.
//!
//! Sidecars run as root (UID 0, which capture leaves alone); apps run as UID 65534, so their
//! connections are captured. Everything carries the PID of `weft up` in its name; all of it is
//! removed on drop, and [`clean_stale`] removes what a run that died left behind.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use weft_netns::{ip, run, Netns, Node, NsRuntime};

use crate::mesh::{Instance, Ports};

/// The prefix of every network namespace (and `/etc/netns` directory) `weft up` creates.
pub const PREFIX: &str = "weftup-";
/// The node's address on the bridge; pods get the next ones.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 217, 0, 1);
/// The sidecar's listeners inside each pod, and the app's port (every pod has its own ports).
pub const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;
const ADMIN: u16 = 15000;
/// The sidecar's read-only listener (`/metrics`, `/ready`) on the pod IP, which the host reaches
/// through a relay (the full admin API stays on the pod's loopback).
const METRICS: u16 = 15020;
/// The port every app listens on, and the port in the names they call (`orders:8080`).
pub const APP_PORT: u16 = 8080;
/// The UID the apps run as: anything but the sidecars' (root), so capture takes their traffic.
const APP_UID: &str = "65534";
/// How long a relay waits for its target to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the namespaces and `/etc/netns` directories of earlier runs whose process is gone
/// (a crash or SIGKILL); those of live runs are left alone. Returns how many it removed.
pub fn clean_stale() -> usize {
    let mut n = 0;
    let dead = |name: &str| weft_netns::is_stale(PREFIX, name);
    for dir in ["/run/netns", "/etc/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            if !dead(&name) {
                continue;
            }
            let gone = if dir == "/run/netns" {
                // Deleting a namespace takes its interfaces and nftables tables with it.
                ip(&["netns", "delete", &name]).is_ok()
            } else {
                std::fs::remove_dir_all(Path::new(dir).join(&name)).is_ok()
            };
            n += usize::from(gone);
        }
    }
    n
}

/// The mode: captured (the pods, started) unless `force_loopback` or this machine cannot, in
/// which case it says why and `instances` are on loopback; and the line that says which.
pub async fn choose(
    force_loopback: bool,
    instances: &mut Vec<Instance>,
    ports: &mut Ports,
    cp: SocketAddr,
    proxy: &Path,
    sample: &Path,
    replan: fn(&mut Ports) -> anyhow::Result<Vec<Instance>>,
) -> anyhow::Result<(Option<Pods>, String)> {
    let stale = if nix::unistd::geteuid().is_root() {
        clean_stale()
    } else {
        0
    };
    if stale > 0 {
        println!("weft up: removed {stale} namespaces and files left by an earlier run that died");
    }
    let unavailable = if force_loopback {
        Some("--loopback".to_owned())
    } else {
        Pods::unavailable(sample)
    };
    let pods = match unavailable {
        Some(why) => {
            println!("weft up: loopback mode ({why})");
            None
        }
        None => match Pods::start(instances, ports, cp, proxy).await {
            Ok(p) => Some(p),
            Err(e) => {
                println!("weft up: loopback mode (network namespaces failed: {e:#})");
                *instances = replan(ports)?;
                None
            }
        },
    };
    let mode = match &pods {
        Some(p) => format!(
            "captured mode: each instance in its own network namespace ({}-*), traffic \
             captured by weft-proxy init, apps calling each other by name with no proxy setting",
            p.node().trim_end_matches("-node")
        ),
        None => {
            "loopback mode: every process on 127.0.0.1, apps pointed at their sidecar".to_owned()
        }
    };
    Ok((pods, mode))
}

/// One instance's pod: its namespace and address.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// The pod's IP on the bridge.
    pub ip: Ipv4Addr,
}

/// The namespaces, bridge, relays and hosts files of one run; all removed on drop.
pub struct Pods {
    pods: Vec<(String, Pod)>,
    control_plane: SocketAddr,
    /// The node's runtime first, then the loadgen pod's.
    runtimes: Vec<NsRuntime>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    /// The pods' namespaces, deleted (as the fields drop) before the node's.
    namespaces: Vec<Netns>,
    node: Node,
}

impl Pods {
    /// Whether this machine lets `weft up` run captured, and why not.
    pub fn unavailable(sample: &Path) -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("not root: network namespaces and capture need root".into());
        }
        for tool in ["ip", "setpriv"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("`{tool}` is not installed"));
            }
        }
        // `weft-proxy init` takes nftables, else iptables (its `--backend auto`).
        let runs = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
        if !runs("nft") && !runs("iptables-restore") {
            return Some("neither `nft` nor `iptables-restore` is installed".into());
        }
        let sample = sample.display().to_string();
        let as_app = ["--reuid", APP_UID, "--regid", APP_UID, "--clear-groups"];
        let mut args = as_app.to_vec();
        args.extend([sample.as_str(), "--version"]);
        if let Err(e) = run("setpriv", &args) {
            return Some(format!("the apps cannot run as UID {APP_UID}: {e:#}"));
        }
        None
    }

    /// Creates a pod for each of `instances` (by name), with capture on, a relay from the
    /// bridge to the control plane at `cp`, and relays from host loopback ports (taken from
    /// `ports`) to each sidecar's admin port and the loadgen sidecar's outbound port; rewrites
    /// `instances`' addresses to what the host reaches (admin, loadgen's outbound) and the
    /// pods' own (the rest).
    pub async fn start(
        instances: &mut [Instance],
        ports: &mut Ports,
        cp: SocketAddr,
        proxy: &Path,
    ) -> anyhow::Result<Pods> {
        let prefix = format!("{PREFIX}{}", std::process::id());
        let node = Node::create(format!("{prefix}-node"), GATEWAY)?;
        // From here on, a failure drops `pods`, which removes what was made so far.
        let mut pods = Pods {
            runtimes: Vec::new(),
            node,
            namespaces: Vec::new(),
            pods: Vec::new(),
            control_plane: cp,
            relays: Vec::new(),
        };
        let node_runtime = NsRuntime::start(pods.node.netns(), "weft up node".into())?;
        pods.runtimes.push(node_runtime);
        for (k, i) in instances.iter().enumerate() {
            let host = u8::try_from(k + 2).context("too many instances")?;
            let pod = Pod {
                netns: format!("{prefix}-{}", i.name),
                ip: Ipv4Addr::new(10, 217, 0, host),
            };
            let veth = format!("v{k}");
            let ns = pods.node.attach(pod.netns.clone(), &veth, pod.ip, true)?;
            pods.namespaces.push(ns);
            pods.pods.push((i.name.clone(), pod));
        }
        for (k, i) in instances.iter().enumerate() {
            let pod = &pods.pods[k].1;
            let dir = PathBuf::from("/etc/netns").join(&pod.netns);
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            std::fs::write(
                dir.join("hosts"),
                hosts_file(&i.name, pod, instances, &pods),
            )?;
            // The metrics port is reached from the bridge (the relay): kept out of capture.
            let skip = METRICS.to_string();
            let init = [
                "netns",
                "exec",
                &pod.netns,
                &proxy.display().to_string(),
                "init",
                "--proxy-uid",
                "0",
                "--inbound-skip-ports",
                &skip,
            ]
            .map(str::to_owned);
            run("ip", &init.iter().map(String::as_str).collect::<Vec<_>>())
                .with_context(|| format!("capture in {}", pod.netns))?;
        }
        pods.start_relays(instances, ports, cp).await?;
        Ok(pods)
    }

    /// The relays of [`Pods::start`]: the sidecars' way to the control plane at `cp`, and the
    /// host's way in to each sidecar's metrics port and the loadgen sidecar's outbound port;
    /// rewrites `instances`' addresses to what each side reaches.
    async fn start_relays(
        &mut self,
        instances: &mut [Instance],
        ports: &mut Ports,
        cp: SocketAddr,
    ) -> anyhow::Result<()> {
        // The sidecars' way to the control plane: a listener on the bridge, bound by the
        // node's thread, whose connections this (host) runtime opens to 127.0.0.1.
        let handle = self.runtimes[0].handle().clone();
        let listener = handle
            .spawn(async { std::net::TcpListener::bind((GATEWAY, 0)) })
            .await?
            .context("the control plane's relay on the bridge")?;
        self.control_plane = listener.local_addr()?;
        self.relays
            .push(tokio::spawn(relay(listener, cp, "control plane")));
        // Host loopback → pod: listeners bound here (the host's namespace), their accept
        // loops and connections on the node's runtime (the bridge's namespace).
        for (k, i) in instances.iter_mut().enumerate() {
            let pod_ip = self.pods[k].1.ip;
            let admin = ports.next()?;
            let l = std::net::TcpListener::bind(admin).with_context(|| format!("{admin}"))?;
            handle.spawn(relay(
                l,
                SocketAddrV4::new(pod_ip, METRICS).into(),
                "metrics",
            ));
            i.admin = admin;
            i.outbound = SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND).into();
            if i.service == "loadgen" {
                // The outbound listener is on the pod's loopback: this relay's connections
                // are opened by a runtime in the loadgen pod itself.
                let inside = NsRuntime::start(&self.pods[k].1.netns, "weft up loadgen".into())?;
                let out = ports.next()?;
                let l = std::net::TcpListener::bind(out).with_context(|| format!("{out}"))?;
                inside
                    .handle()
                    .spawn(relay(l, i.outbound, "loadgen outbound"));
                self.runtimes.push(inside);
                i.outbound = out;
            }
            i.inbound = SocketAddrV4::new(pod_ip, INBOUND).into();
            i.app = SocketAddrV4::new(pod_ip, APP_PORT).into();
        }
        Ok(())
    }

    /// The control plane's address as the sidecars reach it (the relay on the bridge).
    pub fn control_plane(&self) -> SocketAddr {
        self.control_plane
    }

    /// The pod of the instance `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }

    /// The node namespace's name (`weftup-<pid>-node`).
    pub fn node(&self) -> &str {
        self.node.netns()
    }

    /// `program` run in the node namespace (the bridge's: it reaches every pod's IP), where
    /// `weft up`'s gateway runs.
    pub fn node_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.node.netns()]).arg(program);
        cmd
    }

    /// A host loopback port (from `ports`) relayed to `target` in the node namespace.
    pub fn expose_node(
        &self,
        target: SocketAddr,
        ports: &mut Ports,
        what: &'static str,
    ) -> anyhow::Result<SocketAddr> {
        let addr = ports.next()?;
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("{addr}"))?;
        let node = self.runtimes.first().context("no node runtime")?;
        node.handle().spawn(relay(l, target, what));
        Ok(addr)
    }

    /// The listen addresses of instance `i`'s sidecar inside its pod: (outbound, inbound,
    /// admin, app, metrics).
    pub fn listen(&self, i: &Instance) -> Option<[SocketAddr; 5]> {
        let ip = self.pod(&i.name)?.ip;
        Some([
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND).into(),
            SocketAddrV4::new(ip, INBOUND).into(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, ADMIN).into(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, APP_PORT).into(),
            SocketAddrV4::new(ip, METRICS).into(),
        ])
    }

    /// `program` run inside the pod of instance `name` (its hosts file as `/etc/hosts`); as
    /// the app's UID when `as_app`.
    pub fn command(&self, name: &str, program: &Path, as_app: bool) -> anyhow::Result<Command> {
        let pod = self
            .pod(name)
            .with_context(|| format!("no pod for {name}"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns]);
        if as_app {
            cmd.args([
                "setpriv",
                "--reuid",
                APP_UID,
                "--regid",
                APP_UID,
                "--clear-groups",
            ]);
        }
        cmd.arg(program);
        Ok(cmd)
    }
}

/// The `/etc/hosts` of `name`'s pod: localhost, itself, and every service by the pod IPs of
/// its instances.
fn hosts_file(name: &str, pod: &Pod, instances: &[Instance], pods: &Pods) -> String {
    let mut s = format!(
        "# Written by weft up: the shop's services by name.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{name}\n",
        pod.ip
    );
    for i in instances {
        if let Some(p) = pods.pod(&i.name) {
            s.push_str(&format!("{}\t{}\n", p.ip, i.service));
        }
    }
    s
}

impl Drop for Pods {
    fn drop(&mut self) {
        for r in &self.relays {
            r.abort();
        }
        for r in &mut self.runtimes {
            r.stop();
        }
        for (_, pod) in &self.pods {
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        }
        // The pods' namespaces, then the node's, are deleted as the fields drop.
    }
}

/// Accepts on `listener` and pipes each connection to `target`, forever. The connections to
/// `target` are opened in the namespace of the runtime this runs on.
async fn relay(listener: std::net::TcpListener, target: SocketAddr, what: &'static str) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            log::warn!("{what} relay: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((mut from, _)) => {
                tokio::spawn(async move {
                    let connect = tokio::net::TcpStream::connect(target);
                    let Ok(Ok(mut to)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await
                    else {
                        log::debug!("{what} relay: {target} did not accept");
                        return;
                    };
                    let _ = from.set_nodelay(true);
                    let _ = to.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                });
            }
            Err(e) => {
                // Out of descriptors, typically: wait a little rather than spin.
                log::warn!("{what} relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
