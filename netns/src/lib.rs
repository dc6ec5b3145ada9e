//! Network namespaces for pods on one machine, as a kubelet's network plugin makes them: a
//! "node" namespace holding a bridge (`br0`, the gateway's address), and per pod a namespace
//! with loopback up and a veth pair whose node end is on the bridge and whose pod end is `eth0`
//! with the pod's IP. Because the bridge and the veths live in the node namespace, two users
//! (`weft up`, parallel tests) can use the same range without clashing; only namespace names
//! are global, so each user puts its process id in them and [`clean_stale`] can tell a crashed
//! run's leftovers from a live one's.
//!
//! Every namespace made here is deleted on drop ([`Netns`]). [`NsRuntime`] is a Tokio runtime
//! on a thread that entered a namespace (setns changes only the calling thread's), so sockets
//! opened by tasks spawned on it are inside.
//!
//! One implementation for its three users: `weft up` (the product, `cli/src/pods.rs`), the pod
//! runner (`tools/podrunner`) and the proxy's capture tests. It runs `ip` (iproute2) and needs
//! root.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `ip` command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// What went wrong making or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed, or could not be started, or took longer than [`COMMAND_TIMEOUT`].
    #[error("`{cmd}` failed: {reason}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status and stderr, or why it did not run.
        reason: String,
    },
    /// A file or thread operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A namespace's runtime thread could not enter the namespace or start its runtime.
    #[error("runtime in {netns}: {reason}")]
    Runtime {
        /// The namespace.
        netns: String,
        /// Why.
        reason: String,
    },
}

/// Runs `program args` to completion within [`COMMAND_TIMEOUT`]; its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let cmd = || format!("{program} {}", args.join(" "));
    let failed = |reason: String| Error::Command { cmd: cmd(), reason };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // std has no wait with a timeout; the commands are short (`ip` takes milliseconds).
    while child
        .try_wait()
        .map_err(|e| failed(e.to_string()))?
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("took longer than {COMMAND_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs `ip args` (see [`run`]).
pub fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args)
}

/// The names of the network namespaces that exist now, sorted.
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

/// The process id in a name `<prefix><pid>-…`.
pub fn pid_of(prefix: &str, name: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Whether `name` is `<prefix><pid>-…` of a process that is gone (not this one).
pub fn is_stale(prefix: &str, name: &str) -> bool {
    pid_of(prefix, name).is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Deletes the namespaces `<prefix><pid>-…` whose process is gone (a crashed or killed earlier
/// run); those of live processes are left alone. Returns the names it deleted.
pub fn clean_stale(prefix: &str) -> Vec<String> {
    namespaces()
        .into_iter()
        .filter(|name| is_stale(prefix, name))
        // Deleting a namespace takes its interfaces and nftables tables with it.
        .filter(|name| ip(&["netns", "delete", name]).is_ok())
        .collect()
}

/// A network namespace with its loopback up, deleted on drop.
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Creates namespace `name` (`/run/netns/<name>`) and sets its loopback up.
    pub fn create(name: String) -> Result<Netns, Error> {
        ip(&["netns", "add", &name])?;
        // From here on, a failure drops the namespace again.
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace takes its interfaces (a bridge, a veth and its peer) and its
        // nftables tables with it.
        let _ = ip(&["netns", "delete", &self.0]);
    }
}

/// The node: a namespace holding the pods' bridge `br0`, whose address is the gateway.
#[derive(Debug)]
pub struct Node {
    ns: Netns,
    gateway: Ipv4Addr,
}

impl Node {
    /// Creates namespace `name` with bridge `br0` up at `gateway/24`.
    pub fn create(name: String, gateway: Ipv4Addr) -> Result<Node, Error> {
        let ns = Netns::create(name)?;
        let node = ns.name();
        ip(&["-n", node, "link", "add", "br0", "type", "bridge"])?;
        let cidr = format!("{gateway}/24");
        ip(&["-n", node, "addr", "add", &cidr, "dev", "br0"])?;
        ip(&["-n", node, "link", "set", "br0", "up"])?;
        Ok(Node { ns, gateway })
    }

    /// The node namespace's name.
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// The bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Creates pod namespace `name` whose `eth0` has `addr/24` and is the peer of veth `veth`
    /// on the bridge; with a default route via the gateway when `default_route` (without one,
    /// only the bridge's subnet is reachable).
    pub fn attach(
        &self,
        name: String,
        veth: &str,
        addr: Ipv4Addr,
        default_route: bool,
    ) -> Result<Netns, Error> {
        let pod = Netns::create(name)?;
        let (node, ns) = (self.ns.name(), pod.name());
        ip(&[
            "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", node, "link", "set", veth, "master", "br0"])?;
        ip(&["-n", node, "link", "set", veth, "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        if default_route {
            let via = self.gateway.to_string();
            ip(&["-n", ns, "route", "add", "default", "via", &via])?;
        }
        Ok(pod)
    }
}

/// A current-thread Tokio runtime on a thread that entered a network namespace: tasks spawned
/// on [`NsRuntime::handle`] open their sockets inside it. Stopped (its tasks dropped, its
/// thread joined) on drop.
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread (named `thread_name`) in namespace `netns` and its runtime.
    pub fn start(netns: &str, thread_name: String) -> Result<NsRuntime, Error> {
        let path = format!("/run/netns/{netns}");
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            what: format!("open {path}"),
            source,
        })?;
        let failed = |reason: String| Error::Runtime {
            netns: netns.to_owned(),
            reason,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let rt = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns: {e}"))
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| format!("runtime: {e}"))
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
            .map_err(|source| Error::Io {
                what: "spawn a namespace thread".into(),
                source,
            })?;
        let handle = rx
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|e| failed(format!("the thread did not start: {e}")))?
            .map_err(failed)?;
        Ok(NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime's handle: spawn here to open sockets inside the namespace.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stops the runtime (its tasks are dropped) and joins the thread; also done on drop.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
