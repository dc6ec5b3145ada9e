//! What the tests that run the real `weft-control-plane --kubernetes` binary share: starting
//! it against the stand-in API server, the way a cluster's pod would (its client from
//! `KUBECONFIG`, no in-cluster variables), with its own state directory and log.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_testkit::process::{spawn, Guard};

/// The `weft-proxy` binary, built from the workspace (rebuilt when its sources are newer).
pub(crate) fn weft_proxy_binary() -> PathBuf {
    weft_testkit::tools::workspace_binary(
        "weft-proxy",
        &[
            "proxy/src",
            "policy/src",
            "certs/src",
            "resilience/src",
            "api/src",
        ],
    )
}

/// A running control plane: its process (killed on drop), its sidecar (`listen`) and
/// operator (`admin`) addresses, its state directory and log file.
pub(crate) struct ControlPlane {
    pub(crate) process: Guard,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) state: PathBuf,
    log: PathBuf,
}

impl ControlPlane {
    /// Its log so far (empty before it wrote one).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads its log, and keeps doing so after the process is dropped (killed).
    pub(crate) fn log_reader(&self) -> impl Fn() -> String + 'static {
        let log = self.log.clone();
        move || std::fs::read_to_string(&log).unwrap_or_default()
    }

    /// The admin token file it writes into its state directory.
    pub(crate) fn token_file(&self) -> PathBuf {
        self.state.join("admin.token")
    }
}

/// Starts `weft-control-plane --kubernetes --trust-domain TRUST_DOMAIN` with its client from
/// `kubeconfig`, the state directory `dir/NAME` and the log `dir/NAME.log`, on two loopback
/// ports the OS assigned, with `extra` arguments after the common ones. It does not wait for
/// readiness: each test waits for what it needs (the admin token, a route, `/v1/status`).
pub(crate) fn spawn_control_plane<S: AsRef<OsStr>>(
    dir: &Path,
    kubeconfig: &Path,
    name: &str,
    trust_domain: &str,
    extra: &[S],
) -> ControlPlane {
    let addr = || -> SocketAddr { ([127, 0, 0, 1], weft_testkit::ports::reserve()).into() };
    let (listen, admin) = (addr(), addr());
    let state = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    let process = spawn(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args([
                "--kubernetes",
                "--trust-domain",
                trust_domain,
                "--state-dir",
            ])
            .arg(&state)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            // Outside a pod: no in-cluster inference, no pod name for the writer Lease.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the control plane's log")),
    )
    .expect("spawn weft-control-plane");
    ControlPlane {
        process,
        listen,
        admin,
        state,
        log,
    }
}
