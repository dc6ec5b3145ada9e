//! Transparent capture (`weft-proxy init`) in real network namespaces: one per pod, each with
//! its own IP on a bridge that lives in a "node" namespace the test creates, so nothing touches
//! the host's network. Clients are unmodified `curl` runs with no proxy setting, as a UID other
//! than the sidecar's; the server app listens on `0.0.0.0`.
//!
//! Every scenario here, in `capture_websocket_tests` and in `detect_tests` runs once per capture
//! backend ([`Backend`]: nftables and iptables), through the same helpers.
//!
//! Needs root (network namespaces, nftables, iptables). Where they are unavailable the tests
//! fail, unless `WEFT_NO_NETNS=1` says this machine cannot have them; then they say so and pass.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_netns::{Netns, Node, NsRuntime};
use weft_testkit::process::{self, Guard};
use weft_testkit::wait;

use crate::harness::{spiffe, Pki};

/// The sidecar's listeners inside each pod (every pod has its own port space).
pub(crate) const OUTBOUND: u16 = 15001;
pub(crate) const INBOUND: u16 = 15006;
const ADMIN: u16 = 15000;
/// The port every app listens on, on `0.0.0.0`.
pub(crate) const APP_PORT: u16 = 8080;
/// The UID the unmodified client runs as (the sidecars run as root, UID 0).
pub(crate) const APP_UID: &str = "65534";
/// The prefix that runs a command as [`APP_UID`], so that its pod's capture takes it.
pub(crate) const AS_APP: [&str; 6] = [
    "setpriv",
    "--reuid",
    APP_UID,
    "--regid",
    APP_UID,
    "--clear-groups",
];
/// How long one command (curl, nft, ip) may take.
pub(crate) const CMD_LIMIT: Duration = Duration::from_secs(20);

/// Runs `program args` to completion within [`CMD_LIMIT`]: (success, stdout, stderr).
pub(crate) fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let (exit, out, err) = process::output_within(Command::new(program).args(args), CMD_LIMIT);
    (exit.success(), out, err)
}

/// Runs `args` inside network namespace `ns`.
pub(crate) fn in_ns(ns: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A node namespace with a bridge (10.214.0.1/24) and pods on it (`weft-netns`), all deleted
/// on drop.
pub(crate) struct Net {
    /// Deleted (as the fields drop) before the node.
    pods: Vec<Netns>,
    node: Node,
}

impl Net {
    /// The node, or `None` when namespaces are unavailable and `WEFT_NO_NETNS=1` allows that.
    pub(crate) fn create() -> Option<Net> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("weftcap-{}-{seq}-node", std::process::id());
        let node = match Node::create(name, Ipv4Addr::new(10, 214, 0, 1)) {
            Ok(node) => node,
            Err(e) if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") => {
                eprintln!("SKIPPED: network namespaces unavailable ({e}) and WEFT_NO_NETNS=1");
                return None;
            }
            Err(e) => panic!(
                "network namespaces are unavailable ({e}): run as root, or set WEFT_NO_NETNS=1 \
                 on a machine that cannot have them"
            ),
        };
        Some(Net {
            pods: Vec::new(),
            node,
        })
    }

    /// A pod namespace `<node>-<name>` whose `eth0` has 10.214.0.`host` (no default route:
    /// only the bridge's subnet is reachable).
    pub(crate) fn pod(&mut self, name: &str, host: u8) -> Pod {
        let ns_name = self.node.netns().replace("-node", &format!("-{name}"));
        let addr = Ipv4Addr::new(10, 214, 0, host);
        let ns = self
            .node
            .attach(ns_name, &format!("v{name}"), addr, false)
            .unwrap_or_else(|e| panic!("pod {name}: {e}"));
        let pod = Pod {
            ns: ns.name().to_owned(),
            ip: addr,
        };
        self.pods.push(ns);
        pod
    }
}

#[derive(Clone)]
pub(crate) struct Pod {
    pub(crate) ns: String,
    pub(crate) ip: Ipv4Addr,
}

impl Pod {
    /// `weft-proxy init ARGS` in this pod; what it printed.
    pub(crate) fn init(&self, args: &[&str]) -> String {
        let mut all = vec![env!("CARGO_BIN_EXE_weft-proxy"), "init"];
        all.extend_from_slice(args);
        let (ok, out, err) = in_ns(&self.ns, &all);
        assert!(ok, "init {args:?} in {}: {out}{err}", self.ns);
        out
    }

    /// This pod's rules as `backend`'s own listing shows them: `nft list ruleset`, or
    /// `iptables-save` then `ip6tables-save` without their timestamped comments and counters.
    fn ruleset(&self, backend: Backend) -> String {
        let listings: &[&[&str]] = match backend {
            Backend::Nftables => &[&["nft", "list", "ruleset"]],
            Backend::Iptables => &[&["iptables-save"], &["ip6tables-save"]],
            Backend::IptablesLegacy => &[&["iptables-legacy-save"], &["ip6tables-legacy-save"]],
        };
        let mut all = String::new();
        for args in listings {
            let (ok, out, err) = in_ns(&self.ns, args);
            assert!(ok, "{args:?} (installed? scripts/setup): {err}");
            for line in out.lines().filter(|l| !l.starts_with('#')) {
                // `:CHAIN POLICY [packets:bytes]`: the counters move with traffic.
                all.push_str(line.split(" [").next().unwrap_or(line));
                all.push('\n');
            }
        }
        all
    }

    /// Rules of someone else's in the same nat tables capture writes to (a chain of theirs,
    /// jumped to from `PREROUTING` and `OUTPUT`), which capture must leave alone. UDP only, so
    /// they change nothing for the tests' TCP.
    fn foreign_rules(&self, backend: Backend) {
        let progs = match backend {
            Backend::IptablesLegacy => ["iptables-legacy", "ip6tables-legacy"],
            _ => ["iptables", "ip6tables"],
        };
        for prog in progs {
            for rule in [
                &["-t", "nat", "-N", "OTHER_TEAM"][..],
                &["-t", "nat", "-A", "OTHER_TEAM", "-p", "udp", "-j", "RETURN"],
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "udp",
                    "-j",
                    "OTHER_TEAM",
                ],
                &[
                    "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "RETURN",
                ],
            ] {
                let mut args = vec![prog];
                args.extend_from_slice(rule);
                let (ok, _, err) = in_ns(&self.ns, &args);
                assert!(ok, "{args:?}: {err}");
            }
        }
    }

    /// `curl URL` from this pod as an app would, with no proxy setting: as [`APP_UID`] when
    /// `as_app`, else as root. (exit ok, body).
    fn curl(&self, url: &str, as_app: bool) -> (bool, String) {
        let mut args = vec![];
        if as_app {
            args.extend(AS_APP);
        }
        args.extend(["curl", "-sS", "--noproxy", "*", "-m", "5", url]);
        let (ok, out, err) = in_ns(&self.ns, &args);
        (ok, if ok { out } else { err })
    }

    /// A sample HTTP app on `0.0.0.0:8080` inside this pod, named `name`, on a runtime inside
    /// the pod's namespace; stopped when the returned runtime is dropped.
    fn app(&self, name: &'static str) -> NsRuntime {
        let rt = NsRuntime::start(&self.ns, format!("app {name}")).expect("runtime in the pod");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.handle().spawn(async move {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", APP_PORT))
                .await
                .expect("bind app");
            weft_samples::http::serve(l, name);
            let _ = tx.send(());
        });
        rx.recv_timeout(CMD_LIMIT).expect("app listening");
        rt
    }

    /// Starts a sidecar in this pod (as root) from `config` and waits until it is ready.
    pub(crate) fn sidecar(&self, dir: &Path, name: &str, config: &str) -> Sidecar {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let ready = dir.join(format!("{name}.ready"));
        let child = process::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_weft-proxy")])
                .arg("--config")
                .arg(&path)
                .arg("--ready-file")
                .arg(&ready)
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log")),
        )
        .expect("spawn weft-proxy");
        let mut s = Sidecar {
            child,
            pod: self.clone(),
            config: path,
            log,
        };
        wait::until(&format!("sidecar {name} ready"), CMD_LIMIT, || {
            assert!(
                s.child.status().is_none(),
                "{name} exited:\n{}",
                s.log_text()
            );
            let (ok, out, _) = in_ns(
                &self.ns,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://127.0.0.1:{ADMIN}/ready"),
                ],
            );
            (ready.exists() && ok && out == "200").then_some(())
        });
        s
    }
}

pub(crate) struct Sidecar {
    pub(crate) child: Guard,
    pod: Pod,
    pub(crate) config: PathBuf,
    log: PathBuf,
}

impl Sidecar {
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of metric `name` with all of `labels` (0 when absent).
    pub(crate) fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let url = format!("http://127.0.0.1:{ADMIN}/metrics");
        let (ok, text, err) = in_ns(&self.pod.ns, &["curl", "-sS", &url]);
        assert!(ok, "metrics: {err}");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A sidecar config for service `name` in `pod`; `rest` is appended (services, egress).
pub(crate) fn config(name: &str, pod: &Pod, service_extra: &str, rest: &str) -> String {
    format!(
        "service:\n  name: {name}\n  identity: {}\n  app: \"127.0.0.1:{APP_PORT}\"\n{service_extra}\
         listen:\n  outbound: \"127.0.0.1:{OUTBOUND}\"\n  inbound: \"{}:{INBOUND}\"\n  \
         admin: \"127.0.0.1:{ADMIN}\"\n\
         tls: {{cert: {name}.crt, key: {name}.key, trust_bundle: ca.crt}}\n{rest}",
        spiffe(name),
        pod.ip
    )
}

/// The client's view of the mesh: `server`, whose one endpoint is the server pod's sidecar.
pub(crate) fn client_services(server: &Pod) -> String {
    format!(
        "services:\n  - name: server\n    identity: {}\n    endpoints: [{{address: \"{}:{INBOUND}\"}}]\n",
        spiffe("server"),
        server.ip
    )
}

/// The two ways `weft-proxy init` writes capture's rules (`--backend`); every capture scenario
/// runs on both. The basic scenario also runs on iptables' legacy (x_tables) variant, which
/// nodes whose iptables predates nftables still run (`--iptables iptables-legacy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Nftables,
    Iptables,
    IptablesLegacy,
}

impl Backend {
    /// Its `--backend` (and `--iptables`) arguments.
    pub(crate) fn args(self) -> &'static [&'static str] {
        match self {
            Backend::Nftables => &["--backend", "nftables"],
            Backend::Iptables => &["--backend", "iptables"],
            Backend::IptablesLegacy => &["--backend", "iptables", "--iptables", "iptables-legacy"],
        }
    }
}

/// Capture in the pod `pod` with `backend`, for sidecars running as root, with the default
/// ports.
pub(crate) fn capture(pod: &Pod, backend: Backend) {
    let mut args = vec!["--proxy-uid", "0"];
    args.extend_from_slice(backend.args());
    pod.init(&args);
}

/// A node with pods `client` (.2) and `server` (.3), certificates for both (CA seeded with
/// `seed`), and `other` (.4), a pod with no sidecar; `None` as [`Net::create`].
pub(crate) fn three_pods(seed: u64) -> Option<(Net, [Pod; 3], Pki)> {
    let mut net = Net::create()?;
    let pods = [
        net.pod("client", 2),
        net.pod("server", 3),
        net.pod("other", 4),
    ];
    let pki = Pki::new(seed);
    pki.issue("client");
    pki.issue("server");
    Some((net, pods, pki))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_carries_an_unmodified_client_over_mtls_nftables() {
    carries_an_unmodified_client_over_mtls_and_refuses_plaintext_around_it(Backend::Nftables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_carries_an_unmodified_client_over_mtls_iptables() {
    carries_an_unmodified_client_over_mtls_and_refuses_plaintext_around_it(Backend::Iptables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_carries_an_unmodified_client_over_mtls_iptables_legacy() {
    carries_an_unmodified_client_over_mtls_and_refuses_plaintext_around_it(Backend::IptablesLegacy)
        .await;
}

async fn carries_an_unmodified_client_over_mtls_and_refuses_plaintext_around_it(backend: Backend) {
    let Some((net, [client, server, outsider], pki)) = three_pods(14) else {
        return;
    };
    let _server_app = server.app("server-app");

    // Someone else's rules in the nat tables capture writes to: they must outlive capture.
    server.foreign_rules(backend);
    let untouched = server.ruleset(backend);
    capture(&server, backend);
    let _server_sidecar = server.sidecar(pki.path(), "server", &config("server", &server, "", ""));
    capture(&client, backend);
    let client_sidecar = client.sidecar(
        pki.path(),
        "client",
        &config("client", &client, "", &client_services(&server)),
    );

    // An unmodified client dials the server pod's IP and app port: captured by its pod's
    // rules, carried over mTLS, and the app learns who called from the server's sidecar.
    let url = format!("http://{}:{APP_PORT}/hello", server.ip);
    let (ok, body) = client.curl(&url, true);
    assert!(
        ok,
        "captured call failed: {body}\n{}",
        client_sidecar.log_text()
    );
    let reply: serde_json::Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(reply["service"], "server-app", "{body}");
    assert_eq!(reply["caller"], spiffe("client"), "crossed mTLS: {body}");
    assert_eq!(reply["path"], "/hello", "{body}");

    // A plaintext connection from a pod without a sidecar, straight to the app's pod IP and
    // port: redirected into the inbound listener, which wants a mesh certificate.
    let (ok, body) = outsider.curl(&url, false);
    assert!(!ok, "plaintext reached the app around mTLS: {body}");
    assert!(!body.contains("server-app"), "{body}");

    // Idempotent: a second run leaves the same ruleset.
    let before = server.ruleset(backend);
    let ours = match backend {
        Backend::Nftables => "table inet weft",
        Backend::Iptables | Backend::IptablesLegacy => "-A PREROUTING -j WEFT_INBOUND",
    };
    assert!(before.contains(ours), "{before}");
    assert!(before.contains("OTHER_TEAM"), "{before}");
    capture(&server, backend);
    assert_eq!(
        server.ruleset(backend),
        before,
        "init twice changed the ruleset"
    );

    // Removal takes only what it added: the rules are exactly those from before capture,
    // the other team's included. Afterwards the plaintext call gets through, which shows
    // the refusal above was capture's doing. A second removal (auto: both backends) finds
    // nothing and is no error.
    let mut remove = vec!["--remove"];
    remove.extend_from_slice(backend.args());
    server.init(&remove);
    let after = server.ruleset(backend);
    assert!(
        !after.contains("weft") && !after.contains("WEFT"),
        "{after}"
    );
    assert_eq!(after, untouched, "removal touched rules it did not add");
    server.init(&["--remove"]);
    let (ok, body) = outsider.curl(&url, false);
    assert!(ok && body.contains("server-app"), "without capture: {body}");

    // Deleting a pod's namespace takes its rules with it.
    let client_ns = client.ns.clone();
    drop(client_sidecar);
    drop(net);
    let (_, list, _) = run("ip", &["netns", "list"]);
    assert!(!list.contains(&client_ns), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_passes_egress_through_until_policy_denies_it_nftables() {
    passes_egress_through_until_policy_denies_it(Backend::Nftables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_passes_egress_through_until_policy_denies_it_iptables() {
    passes_egress_through_until_policy_denies_it(Backend::Iptables).await;
}

async fn passes_egress_through_until_policy_denies_it(backend: Backend) {
    let Some(mut net) = Net::create() else {
        return;
    };
    let (client, server, outside) = (
        net.pod("client", 2),
        net.pod("server", 3),
        net.pod("web", 5),
    );
    let pki = Pki::new(15);
    pki.issue("client");
    let _web = outside.app("web-app");
    capture(&client, backend);
    let access_log = pki.path().join("client-access.log");
    let rest = format!(
        "access_log: {}\n{}",
        access_log.display(),
        client_services(&server)
    );
    let sidecar = client.sidecar(pki.path(), "client", &config("client", &client, "", &rest));

    // Not a mesh address: passed through as plain TCP (no identity reaches that server).
    let url = format!("http://{}:{APP_PORT}/out", outside.ip);
    let dest = format!("{}:{APP_PORT}", outside.ip);
    let (ok, body) = client.curl(&url, true);
    assert!(ok, "egress failed: {body}\n{}", sidecar.log_text());
    let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(reply["service"], "web-app", "{body}");
    assert!(
        reply["caller"].is_null(),
        "egress carries no mesh identity: {body}"
    );
    let opened = [("direction", "egress"), ("dst_service", dest.as_str())];
    assert_eq!(
        sidecar.metric("weft_tcp_connections_opened_total", &opened),
        1.0
    );
    wait::until("the egress access-log line", CMD_LIMIT, || {
        let text = std::fs::read_to_string(&access_log).ok()?;
        text.lines()
            .find(|l| l.contains("\"direction\":\"egress\"") && l.contains(&dest))
            .map(str::to_owned)
    });

    // The policy says deny: the same call is refused once the sidecar has reloaded.
    let version = sidecar.metric("weft_config_version", &[]);
    // Written whole, then renamed: the file watcher never reads half of it.
    let tmp = sidecar.config.with_extension("yaml.tmp");
    std::fs::write(&tmp, config("client", &client, "  egress: deny\n", &rest)).expect("write");
    std::fs::rename(&tmp, &sidecar.config).expect("rename");
    sidecar.child.signal(nix::sys::signal::Signal::SIGHUP);
    wait::until("the reload with `egress: deny`", CMD_LIMIT, || {
        (sidecar.metric("weft_config_version", &[]) > version).then_some(())
    });
    let (ok, body) = client.curl(&url, true);
    assert!(!ok, "egress passed after `egress: deny`: {body}");
    let denied = [
        ("direction", "egress"),
        ("dst_service", dest.as_str()),
        ("reason", "egress_denied"),
    ];
    assert!(sidecar.metric("weft_tcp_connections_rejected_total", &denied) >= 1.0);
    assert_eq!(
        sidecar.metric("weft_tcp_connections_opened_total", &opened),
        1.0,
        "no connection opened after the deny"
    );
}

#[test]
fn capture_auto_takes_nftables_where_the_kernel_can_else_iptables_and_removes_both() {
    let Some(mut net) = Net::create() else {
        return;
    };
    let pod = net.pod("auto", 2);
    let weft_table = "table inet weft";
    // This machine's kernel (5.2 or later) accepts an inet NAT chain: auto loads the table.
    let out = pod.init(&["--proxy-uid", "0"]);
    assert!(out.contains("nftables table inet weft loaded"), "{out}");
    assert!(pod.ruleset(Backend::Nftables).contains(weft_table));
    assert!(!pod.ruleset(Backend::Iptables).contains("WEFT_"));
    pod.init(&["--remove"]);

    // Where nft cannot be run (a node image without it), auto falls back to iptables.
    let out = pod.init(&["--proxy-uid", "0", "--nft", "/nonexistent/nft"]);
    assert!(out.contains("iptables chains WEFT_*"), "{out}");
    let rules = pod.ruleset(Backend::Iptables);
    for jump in [
        "-A PREROUTING -j WEFT_INBOUND",
        "-A OUTPUT -j WEFT_OUTBOUND",
    ] {
        // Once per family: IPv4 and IPv6.
        assert_eq!(rules.matches(jump).count(), 2, "{jump}:\n{rules}");
    }
    assert!(!pod.ruleset(Backend::Nftables).contains(weft_table));

    // `--remove` with auto takes what either backend left.
    pod.init(&["--proxy-uid", "0", "--backend", "nftables"]);
    let out = pod.init(&["--remove"]);
    assert!(
        out.contains("nftables table inet weft and iptables chains"),
        "{out}"
    );
    assert!(!pod.ruleset(Backend::Iptables).contains("WEFT_"));
    assert!(!pod.ruleset(Backend::Nftables).contains(weft_table));
}
