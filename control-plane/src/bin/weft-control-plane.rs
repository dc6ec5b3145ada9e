//! `weft-control-plane`: pushes the mesh policy to sidecars over mTLS and serves the operator
//! API (docs/OPERATIONS.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
use weft_control_plane::inject::webhook::{self, WebhookConfig};
use weft_control_plane::inject::Settings;
use weft_control_plane::net::Limits;
use weft_control_plane::policy::kube::source::KubeOptions;
use weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL;
use weft_control_plane::push::hub::{HubLimits, DEFAULT_GRACE};
use weft_control_plane::server::{self, ServeOptions, ServerConfig, SidecarLimits};

/// Weft control plane.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory of policy files (*.yaml), watched for changes.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    policy_dir: Option<PathBuf>,
    /// Take the policy from the Kubernetes API instead of --policy-dir: Services,
    /// EndpointSlices and Pods for the mesh services, and the weft.dev MeshRoute,
    /// TrafficPolicy and AuthorizationPolicy resources (client from the in-cluster service
    /// account, else KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: how long the replicas' writer Lease lasts without renewal (the
    /// holder renews every third of it); the shared policy history goes at most this long
    /// without a writer after the writer dies.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, requires = "kubernetes")]
    lease_duration: Duration,
    /// With --kubernetes: write the gateway config of each Gateway of Weft's GatewayClass
    /// (controllerName weft.dev/gateway-controller) here, as DIR/<namespace>/<name>/gateway.yaml
    /// and its certificates, for `weft-proxy --gateway` (docs/KUBERNETES.md, north-south).
    #[arg(long, requires = "kubernetes")]
    gateway_dir: Option<PathBuf>,
    /// State directory of the certificate authority.
    #[arg(long)]
    state_dir: PathBuf,
    /// Sidecars' address (gRPC over mTLS).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Operator API address (plain HTTP with a bearer token): loopback only, unless
    /// --insecure-plaintext-operator-api.
    #[arg(long, default_value = "127.0.0.1:7071")]
    admin: SocketAddr,
    /// Serve the operator API on a non-loopback --admin address anyway, its bearer token in
    /// the clear on the network. Without it the control plane refuses to start so.
    #[arg(long)]
    insecure_plaintext_operator_api: bool,
    /// Also serve only /live, /ready and /metrics (no token, no operator API) on this address,
    /// such as 0.0.0.0:7072 for kubelet probes and Prometheus [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Operator API (and metrics listener) connections at once; as many again wait up to
    /// --admin-header-timeout for a slot, any beyond are closed.
    #[arg(long, default_value_t = 64)]
    admin_max_connections: usize,
    /// Longest an operator API client may take to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    admin_header_timeout: Duration,
    /// Operator API connections with no request in flight are closed after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    admin_idle_timeout: Duration,
    /// Sidecar connections at once (each sidecar holds one).
    #[arg(long, default_value_t = 16_384)]
    sidecar_max_connections: usize,
    /// Longest a TLS handshake may take, on the sidecars' port and the webhook's.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    tls_handshake_timeout: Duration,
    /// Live sidecar streams one SPIFFE identity may hold (every replica of a service shares
    /// its identity); the next Hello is refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = weft_control_plane::push::hub::DEFAULT_MAX_STREAMS_PER_IDENTITY)]
    max_streams_per_identity: usize,
    /// Largest compiled snapshot of one service, in bytes; a policy making a larger one is
    /// refused and the last good one stays.
    #[arg(long, default_value_t = weft_control_plane::push::hub::DEFAULT_MAX_SNAPSHOT_BYTES)]
    max_snapshot_bytes: usize,
    /// File holding the operator API's bearer token [default: STATE_DIR/admin.token, created
    /// on first start].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Mesh trust domain.
    #[arg(long, default_value = "weft.local")]
    trust_domain: String,
    /// Operator-supplied CA certificate (PEM), with --ca-key; default: the state directory's.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Operator-supplied CA key (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// More roots to trust but not sign with (PEM file, repeatable): the previous root while a
    /// rotation overlaps. Pushed to sidecars with the signing root.
    #[arg(long, value_name = "PEM")]
    extra_roots: Vec<PathBuf>,
    /// How long a disconnected sidecar's endpoint stays registered.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Lifetime of the workload certificates issued to sidecars (1s to 7d); they renew at
    /// about two thirds of it.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// Longest an identity is renewed by certificate alone after its credential (join token
    /// or service account token) was last checked; then the sidecar must present a live
    /// credential again. A sidecar with a credential file presents it on every renewal.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    max_identity_age: Duration,
    /// Also accept Kubernetes projected service account tokens (audience `weft`) from
    /// bootstrapping sidecars, verified with the API server's TokenReview (in-cluster config or
    /// KUBECONFIG); the identity issued is the pod's service account. Join tokens keep working.
    #[arg(long)]
    kubernetes_tokens: bool,
    /// Serve the sidecar injection webhook (HTTPS, `POST /inject`, AdmissionReview v1) on this
    /// address, such as 0.0.0.0:8443 [default: off]; needs --webhook-cert and --webhook-key.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key"], value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate chain (PEM); read again when it changes.
    #[arg(long, requires = "webhook_listen", value_name = "FILE")]
    webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, requires = "webhook_listen", value_name = "FILE")]
    webhook_key: Option<PathBuf>,
    /// Webhook connections at once (the API server's calls, one per pod created); as many
    /// again wait up to --webhook-header-timeout for a slot, any beyond are closed.
    #[arg(long, default_value_t = 256)]
    webhook_max_connections: usize,
    /// Longest a webhook client may take to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    webhook_header_timeout: Duration,
    /// Webhook connections with no request in flight are closed after this long.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    webhook_idle_timeout: Duration,
    /// The sidecar image the webhook injects.
    #[arg(long, default_value = weft_control_plane::inject::DEFAULT_IMAGE, value_name = "IMAGE")]
    webhook_proxy_image: String,
    /// The control-plane address injected sidecars connect to.
    #[arg(long, default_value = weft_control_plane::inject::DEFAULT_CONTROL_PLANE, value_name = "ADDR")]
    webhook_control_plane: String,
}

/// Raise the soft limit of open files to the hard limit, as Go's runtime does: every sidecar
/// stream holds a descriptor, and the usual soft default (1024) would cap the control plane
/// below a thousand sidecars while the hard limit allows far more.
fn raise_nofile_limit() {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot read the open-files limit (RLIMIT_NOFILE): {e}");
            return;
        }
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now != soft => {
            log::info!("open-files limit (RLIMIT_NOFILE) raised from {soft} to {now} (hard limit {hard})")
        }
        Ok(now) => log::info!("open-files limit (RLIMIT_NOFILE) {now} (hard limit {hard})"),
        Err(e) => log::warn!(
            "open-files limit (RLIMIT_NOFILE) stays {soft}: cannot raise it to the hard limit {hard}: {e}"
        ),
    }
}

/// The listeners' and the hub's bounds the flags set: the server's, and the webhook's.
fn bounds(args: &Args) -> (ServeOptions, Limits) {
    let options = ServeOptions {
        admin: Limits {
            max_connections: args.admin_max_connections,
            header_read_timeout: args.admin_header_timeout,
            idle_timeout: args.admin_idle_timeout,
            ..Limits::default()
        },
        sidecars: SidecarLimits {
            max_connections: args.sidecar_max_connections,
            handshake_timeout: args.tls_handshake_timeout,
            ..SidecarLimits::default()
        },
        hub: HubLimits {
            max_streams_per_identity: args.max_streams_per_identity,
            max_snapshot_bytes: args.max_snapshot_bytes,
        },
        metrics_listen: args.metrics_listen,
        insecure_plaintext_admin: args.insecure_plaintext_operator_api,
        // The documented gates (docs/OPERATIONS.md, "Workload identities").
        ca_admission: Default::default(),
    };
    let webhook_limits = Limits {
        max_connections: args.webhook_max_connections,
        handshake_timeout: args.tls_handshake_timeout,
        header_read_timeout: args.webhook_header_timeout,
        idle_timeout: args.webhook_idle_timeout,
    };
    (options, webhook_limits)
}

// Long (about 80 lines): flags to settings, one field per flag, then the runtime; a flat
// mapping reads best in one place.
fn main() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    env_logger::Builder::new().filter_level(level).init();
    let args = Args::parse();
    raise_nofile_limit();
    let (options, webhook_limits) = bounds(&args);
    let mut ca = CaStoreOptions {
        max_identity_age: Some(args.max_identity_age),
        extra_roots: args.extra_roots,
        ..CaStoreOptions::default()
    };
    if let (Some(cert), Some(key)) = (args.ca_cert, args.ca_key) {
        ca.root = RootSource::Files { cert, key };
    }
    let webhook = match (args.webhook_listen, args.webhook_cert, args.webhook_key) {
        (Some(listen), Some(cert), Some(key)) => Some(WebhookConfig {
            listen,
            cert,
            key,
            settings: Settings {
                control_plane: args.webhook_control_plane,
                trust_domain: args.trust_domain.clone(),
                image: args.webhook_proxy_image,
                ..Settings::default()
            },
        }),
        _ => None,
    };
    let from = if args.kubernetes {
        let mut options = KubeOptions::new(&args.trust_domain);
        options.lease_duration = args.lease_duration.max(Duration::from_secs(1));
        options.gateway_dir = args.gateway_dir;
        server::PolicyFrom::Kubernetes(options)
    } else {
        server::PolicyFrom::Directory
    };
    let config = ServerConfig {
        policy_dir: args.policy_dir.unwrap_or_default(),
        state_dir: args.state_dir,
        listen: args.listen,
        admin: args.admin,
        trust_domain: args.trust_domain,
        ca,
        grace: if args.grace.is_zero() {
            DEFAULT_GRACE
        } else {
            args.grace
        },
        poll_interval: DEFAULT_POLL_INTERVAL,
        admin_token_file: args.admin_token_file,
        cert_lifetime: args.cert_lifetime,
        kubernetes_tokens: args
            .kubernetes_tokens
            .then_some(weft_control_plane::ca::tokenreview::KubeConnection::Infer),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-control-plane: runtime: {e}");
            std::process::exit(1);
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let _running = server::start_bounded(config, from, options).await?;
        let _webhook = match webhook {
            Some(w) => Some(webhook::start_with_limits(w, webhook_limits).await?),
            None => None,
        };
        tokio::signal::ctrl_c().await?;
        log::info!("interrupted; exiting");
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("weft-control-plane: {e:#}");
        std::process::exit(1);
    }
}
