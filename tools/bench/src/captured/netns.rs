//! The captured scenario's pods: a node network namespace with a bridge and one namespace per
//! pod, each with its own address on the bridge, all deleted with [`Pods`]; and work run on a
//! thread inside a pod's namespace ([`in_pod`]), which is how the load generator's connections
//! start in the load pod without a process of their own.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _};

/// The bridge's network; pods get `.2`, `.3`, ... and the node `.1`.
const SUBNET: [u8; 3] = [10, 219, 0];

/// The node namespace and the pods on its bridge; every namespace is deleted on drop (which
/// takes their interfaces and nftables tables with them).
#[derive(Debug)]
pub struct Pods {
    node: String,
    pods: Vec<String>,
}

/// One pod: its namespace and address.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The namespace's name (`ip netns`).
    pub ns: String,
    /// Its `eth0` address.
    pub ip: Ipv4Addr,
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs `program ARGS` to completion, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Pods {
    /// A node namespace `weftbench-<pid>-node` with bridge `br0` (10.219.0.1/24). Needs root.
    pub fn create() -> anyhow::Result<Pods> {
        let node = format!("weftbench-{}-node", std::process::id());
        ip(&["netns", "add", &node]).context(
            "the captured scenario needs network namespaces and nftables: run it as root",
        )?;
        let pods = Pods {
            node,
            pods: Vec::new(),
        };
        let n = pods.node.as_str();
        let gateway = format!("{}.{}.{}.1/24", SUBNET[0], SUBNET[1], SUBNET[2]);
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", n, "addr", "add", &gateway, "dev", "br0"])?;
        ip(&["-n", n, "link", "set", "br0", "up"])?;
        Ok(pods)
    }

    /// A pod namespace `weftbench-<pid>-<name>` whose `eth0` has 10.219.0.`host`.
    pub fn pod(&mut self, name: &str, host: u8) -> anyhow::Result<Pod> {
        let ns = self.node.replace("-node", &format!("-{name}"));
        ip(&["netns", "add", &ns])?;
        self.pods.push(ns.clone());
        let veth = format!("v{name}");
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host);
        let n = self.node.as_str();
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", n, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", n, "link", "set", &veth, "master", "br0"])?;
        ip(&["-n", n, "link", "set", &veth, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(Pod { ns, ip: addr })
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = ip(&["netns", "delete", ns]);
        }
    }
}

impl Pod {
    /// A command that runs `program` in this pod's namespace (`ip netns exec` execs it, so the
    /// child's PID is the program's, as the CPU accounting needs).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }
}

/// Runs `work` on a new thread that has entered `pod`'s network namespace (sockets it opens
/// belong to the pod; CPU affinity is the caller's), and returns its result.
pub async fn in_pod<T, F>(pod: &Pod, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let path = format!("/var/run/netns/{}", pod.ns);
    // A thread of its own, not tokio's blocking pool: a pool thread would go back to the pool
    // still inside the pod's namespace.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("in-pod".into())
        .spawn(move || {
            let result = (|| {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                work()
            })();
            let _ = tx.send(result);
        })
        .context("starting the load generator's thread")?;
    rx.await
        .context("the load generator's thread ended without a result")?
}
