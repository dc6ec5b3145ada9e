//! Workload certificates from the control plane (`Certify`): bootstrap with a join token, and
//! rotation before expiry.
//!
//! The sidecar generates every key pair itself (ECDSA P-256) and sends only a CSR, so private
//! keys exist only in this process and its own `tls.key` file (mode 0600).
//!
//! - **Bootstrap** ([`super::bootstrap`], before the store opens): with
//!   `control_plane.join_token_file` set and no usable `tls.cert`/`tls.key` (missing,
//!   unreadable, expired or for another identity), the sidecar asks for a certificate with the
//!   token over TLS without a client certificate, verifying the control plane against
//!   `tls.trust_bundle` and `control_plane.identity`. It retries with jittered backoff up to
//!   `control_plane.bootstrap_timeout`, then gives up with the reason. A still-valid persisted
//!   certificate starts the sidecar without the control plane.
//! - **Rotation** ([`rotate`], on the control thread): at [`renewal_time`] (about two thirds of
//!   the lifetime, with a little jitter) it renews over mutual TLS with the current certificate
//!   and, when `control_plane.join_token_file` is set, the credential in it again (the control
//!   plane re-attests it), writes key and certificate atomically and swaps the snapshot at once
//!   ([`Store::install_files`]). On failure the current certificate keeps serving and the
//!   renewal is retried with jittered backoff, well before expiry ([`retry_delay`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, RootCertStore};
use tokio::sync::watch;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::CertifyRequest;
use weft_certs::Identity;

use crate::identity::material;
use crate::store::{InstallError, Store};
use weft_policy::{ControlPlane, TlsPaths};

/// First retry delay of a failed renewal.
pub const RENEW_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay of a failed renewal: with thousands of sidecars and a control plane
/// down for hours, each retries about once a minute.
pub const RENEW_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Shortest retry delay, whatever the time left.
pub const RENEW_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// How often the rotation task looks at the certificate in force while waiting (a certificate
/// replaced by the operator, or a clock jump, is noticed within this).
pub const RECHECK: Duration = Duration::from_secs(30);
/// Limit of one `Certify` call, connection included (see [`attempt_limit`] for renewals).
pub const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest limit of one renewal attempt, however little time is left: a loaded control
/// plane answers well within it (tens of milliseconds when idle).
pub const CERTIFY_ATTEMPT_MIN: Duration = Duration::from_millis(300);
/// Mode of the private key file.
pub const KEY_MODE: u32 = 0o600;
/// Mode of the certificate and trust bundle files.
pub const CERT_MODE: u32 = 0o644;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The control plane could not be reached (or the call timed out).
    #[error("cannot reach the control plane {address}: {reason}")]
    Connect {
        /// `control_plane.address`.
        address: String,
        /// Why.
        reason: String,
    },
    /// The control plane answered with an error status.
    #[error("the control plane {address} refused the certificate request ({code:?}): {message}")]
    Refused {
        /// `control_plane.address`.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The certificate the control plane returned is not usable.
    #[error("the control plane {address} returned an unusable certificate: {reason}")]
    BadAnswer {
        /// `control_plane.address`.
        address: String,
        /// Why.
        reason: String,
    },
    /// Local configuration or files (join token, trust bundle) are not usable.
    #[error("{field}: {reason}")]
    Local {
        /// The config field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A key pair or CSR could not be generated.
    #[error("cannot generate a key pair and CSR: {0}")]
    Key(#[source] weft_certs::Error),
    /// The new files could not be installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Bootstrap kept failing until `control_plane.bootstrap_timeout`.
    #[error(
        "no certificate from the control plane {address} after {}: {last}",
        humantime::format_duration(*after)
    )]
    GaveUp {
        /// `control_plane.address`.
        address: String,
        /// How long it tried.
        after: Duration,
        /// The last failure.
        last: Box<CertifyError>,
    },
}

impl CertifyError {
    /// Whether trying again later may succeed (the control plane is down or failing), as
    /// opposed to a refusal or a local mistake that the same request will meet again.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Connect { .. } => true,
            Self::Refused { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::Internal
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// When to start renewing a certificate valid from `not_before` to `not_after` (two thirds of
/// the lifetime from the moment of issue; see [`weft_certs::renewal_time`]).
pub use weft_certs::renewal_time;

/// A random head start for a renewal, below 5% of the certificate's remaining lifetime at its
/// renewal time, so sidecars started together do not all renew in the same second.
fn jitter(not_before: SystemTime, not_after: SystemTime) -> Duration {
    let at = renewal_time(not_before, not_after);
    let rest = not_after.duration_since(at).unwrap_or_default();
    (rest / 20).mul_f64(fastrand::f64())
}

/// The delay before renewal retry `attempt` (from 0) with `left` until the certificate
/// expires: exponential from [`RENEW_BACKOFF_BASE`] up to [`RENEW_BACKOFF_MAX`], at most an
/// eighth of the time left (so several retries happen before expiry), at least
/// [`RENEW_BACKOFF_MIN`], then scaled by a random factor in [0.5, 1).
pub fn retry_delay(attempt: u32, left: Duration) -> Duration {
    weft_resilience::Backoff {
        base: RENEW_BACKOFF_BASE,
        max: RENEW_BACKOFF_MAX.min(left / 8).max(RENEW_BACKOFF_MIN),
    }
    .equal_jitter(attempt, fastrand::f64())
}

/// The limit of one renewal attempt with `left` until the certificate in force expires: at
/// most a third of it (at least [`CERTIFY_ATTEMPT_MIN`], at most [`CERTIFY_TIMEOUT`]), so an
/// attempt that hangs (a connection whose SYN was dropped, a stalled control plane) leaves time
/// for others before expiry instead of outliving the certificate. Once it has expired there is
/// nothing left to save: the full limit.
pub fn attempt_limit(left: Duration) -> Duration {
    if left.is_zero() {
        return CERTIFY_TIMEOUT;
    }
    (left / 3).clamp(CERTIFY_ATTEMPT_MIN, CERTIFY_TIMEOUT)
}

/// A client config without a client certificate that trusts the roots of `bundle_pem`: how a
/// sidecar without a usable certificate reaches the control plane.
pub(crate) fn anonymous_client(
    bundle_pem: &[u8],
    path: &Path,
) -> Result<ClientConfig, CertifyError> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let local = |reason: String| CertifyError::Local {
        field: "tls.trust_bundle".to_owned(),
        reason,
    };
    let roots = material::trust_bundle(bundle_pem, path).map_err(|e| local(e.reason))?;
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r)
            .map_err(|e| local(format!("{}: unusable root: {e}", path.display())))?;
    }
    Ok(
        ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// A checked key pair and certificate from the control plane.
pub(crate) struct Obtained {
    pub(crate) key_pem: String,
    pub(crate) chain_pem: String,
    pub(crate) not_after: SystemTime,
}

/// One `Certify` call within `limit`: a fresh key pair, its CSR (and `token`, if any) over
/// `client_tls`; the answer is checked against `identity` and `bundle_pem` as a reload would
/// check it.
pub(crate) async fn obtain(
    limit: Duration,
    cp: &ControlPlane,
    client_tls: ClientConfig,
    identity: &Identity,
    token: Option<&str>,
    paths: &TlsPaths,
    bundle_pem: &[u8],
) -> Result<Obtained, CertifyError> {
    let address = cp.address.clone();
    let (csr_pem, key_pem) = weft_certs::generate_csr(identity).map_err(CertifyError::Key)?;
    let call = async {
        let channel = crate::control::channel::connect(cp, client_tls)
            .await
            .map_err(|e| CertifyError::Connect {
                address: address.clone(),
                reason: format!("{e:#}"),
            })?;
        ControlPlaneClient::new(channel)
            .certify(CertifyRequest {
                csr_pem,
                join_token: token.unwrap_or_default().to_owned(),
            })
            .await
            .map_err(|s| {
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                    && s.message().contains("transport")
                {
                    CertifyError::Connect {
                        address: address.clone(),
                        reason: s.message().to_owned(),
                    }
                } else {
                    CertifyError::Refused {
                        address: address.clone(),
                        code: s.code(),
                        message: s.message().to_owned(),
                    }
                }
            })
    };
    let answer = tokio::time::timeout(limit, call)
        .await
        .map_err(|_| CertifyError::Connect {
            address: address.clone(),
            reason: format!(
                "no answer within {}",
                humantime::format_duration(Duration::from_millis(limit.as_millis() as u64))
            ),
        })??
        .into_inner();
    // Checked only (the store builds what serves); the protocol of its acceptor does not matter.
    let material = material::from_pem(
        paths,
        answer.cert_chain_pem.as_bytes(),
        key_pem.as_bytes(),
        bundle_pem,
        identity,
        weft_policy::Protocol::Http,
    )
    .map_err(|e| CertifyError::BadAnswer {
        address: address.clone(),
        reason: e.to_string(),
    })?;
    Ok(Obtained {
        key_pem,
        chain_pem: answer.cert_chain_pem,
        not_after: material.not_after,
    })
}

pub(crate) fn read_token(path: &Path) -> Result<String, CertifyError> {
    let local = |reason: String| CertifyError::Local {
        field: "control_plane.join_token_file".to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| local(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(local(format!("{} is empty", path.display())));
    }
    Ok(token)
}

/// Renew once: a new key pair and CSR, `Certify` over mutual TLS with the current certificate
/// (or, once it has expired, with the join token if one is configured), then install and
/// swap. Returns the new certificate's expiry.
async fn renew_once(
    store: &Arc<Store>,
    cp: &ControlPlane,
    limit: Duration,
) -> Result<SystemTime, CertifyError> {
    let snap = store.load();
    let identity = snap.tls.identity.clone();
    let paths = snap.tls_paths.clone();
    let expired = snap.tls.not_after <= SystemTime::now();
    let current_client = (*snap.tls.tcp_client).clone();
    drop(snap);
    let bundle = std::fs::read(&paths.trust_bundle).map_err(|e| CertifyError::Local {
        field: "tls.trust_bundle".to_owned(),
        reason: format!("cannot read {}: {e}", paths.trust_bundle.display()),
    })?;
    let (client, token) = match (&cp.join_token_file, expired) {
        // An expired certificate no longer authenticates; the join token still may.
        (Some(file), true) => (
            anonymous_client(&bundle, &paths.trust_bundle)?,
            Some(read_token(file)?),
        ),
        // The credential goes along with the certificate on every renewal: the control plane
        // re-attests it (a revoked token or a deleted service account stops renewing), and a
        // service account token can only be re-checked by presenting it. The file is read
        // each time because the kubelet refreshes a projected token.
        (Some(file), false) => (current_client, Some(read_token(file)?)),
        (None, _) => (current_client, None),
    };
    let got = obtain(
        limit,
        cp,
        client,
        &identity,
        token.as_deref(),
        &paths,
        &bundle,
    )
    .await?;
    // Writing (fsync) and rebuilding block; keep them off the control thread's runtime so the
    // admin API, the file watcher and the control-plane stream go on meanwhile.
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.install_files(&[
            (&paths.key, got.key_pem.as_bytes(), KEY_MODE),
            (&paths.cert, got.chain_pem.as_bytes(), CERT_MODE),
        ])?;
        Ok(got.not_after)
    })
    .await
    .map_err(|e| CertifyError::Local {
        field: "tls".to_owned(),
        reason: format!("install task failed: {e}"),
    })?
}

/// Log a renewal that took `took` of its `limit` with `left` before the old certificate expired.
fn log_renewed(took: Duration, limit: Duration, left: Duration, expiry: SystemTime) {
    // A renewal that used most of its limit is the warning before one that fails.
    if took > limit / 2 {
        log::warn!(
            "certificate renewed in {} ms, slow (limit {} ms with {} ms left), valid until {}",
            took.as_millis(),
            limit.as_millis(),
            left.as_millis(),
            humantime::format_rfc3339_seconds(expiry)
        );
    } else {
        log::info!(
            "certificate renewed in {} ms, valid until {}",
            took.as_millis(),
            humantime::format_rfc3339_seconds(expiry)
        );
    }
}

/// Renew the workload certificate before it expires, forever (on the renewal thread).
///
/// Each renewed expiry is sent on `renewed` (the control-plane stream reports it). Counts
/// `weft_cert_renewals_total{result}`.
pub async fn rotate(store: Arc<Store>, cp: ControlPlane, renewed: watch::Sender<SystemTime>) {
    let mut attempt = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut head_start: Option<(SystemTime, Duration)> = None;
    loop {
        let (not_before, not_after) = {
            let snap = store.load();
            (snap.tls.not_before, snap.tls.not_after)
        };
        let wait = match retry_at {
            Some(at) => at.saturating_duration_since(tokio::time::Instant::now()),
            None => {
                let early = match head_start {
                    Some((for_cert, d)) if for_cert == not_after => d,
                    _ => {
                        let d = jitter(not_before, not_after);
                        head_start = Some((not_after, d));
                        d
                    }
                };
                let due = renewal_time(not_before, not_after)
                    .checked_sub(early)
                    .unwrap_or(not_before);
                due.duration_since(SystemTime::now()).unwrap_or_default()
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(RECHECK)).await;
            continue;
        }
        let started = tokio::time::Instant::now();
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let limit = attempt_limit(left);
        match renew_once(&store, &cp, limit).await {
            Ok(expiry) => {
                store.metrics.cert_renewals.with_label_values(&["ok"]).inc();
                log_renewed(started.elapsed(), limit, left, expiry);
                attempt = 0;
                retry_at = None;
                renewed.send_replace(expiry);
            }
            Err(e) => {
                store
                    .metrics
                    .cert_renewals
                    .with_label_values(&["error"])
                    .inc();
                log::debug!(
                    "renewal attempt failed after {} ms",
                    started.elapsed().as_millis()
                );
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let delay = retry_delay(attempt, left);
                attempt = attempt.saturating_add(1).min(16);
                if left.is_zero() {
                    log::error!(
                        "certificate renewal failed and the certificate has expired; peers refuse this sidecar until it renews: {e}; retrying in {} ms",
                        delay.as_millis()
                    );
                } else {
                    log::warn!(
                        "certificate renewal failed, keeping the current certificate ({} left): {e}; retrying in {} ms",
                        humantime::format_duration(Duration::from_secs(left.as_secs())),
                        delay.as_millis()
                    );
                }
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn renewal_is_two_thirds_from_the_issue_not_the_backdated_not_before() {
        // Issued at t(60) for 3 s, backdated 60 s: renew at t(62), not 18 s before the issue.
        assert_eq!(renewal_time(t(0), t(63)), t(62));
        // 24 h: 16 h after the issue.
        assert_eq!(renewal_time(t(0), t(60 + 24 * 3600)), t(60 + 16 * 3600));
        // Not backdated and shorter than the allowance: from notBefore.
        assert_eq!(renewal_time(t(0), t(30)), t(20));
        // No lifetime: at once (at expiry, which is past).
        assert_eq!(renewal_time(t(10), t(10)), t(10));
    }

    #[test]
    fn jitter_is_a_small_head_start() {
        for _ in 0..100 {
            let j = jitter(t(0), t(60 + 24 * 3600));
            assert!(j < Duration::from_secs(8 * 3600 / 20), "{j:?}");
        }
    }

    #[test]
    fn retry_delay_backs_off_and_stays_well_before_expiry() {
        for _ in 0..100 {
            let hours = Duration::from_secs(8 * 3600);
            let d = retry_delay(0, hours);
            assert!(
                d >= RENEW_BACKOFF_BASE / 2 && d < RENEW_BACKOFF_BASE,
                "{d:?}"
            );
            let d = retry_delay(30, hours);
            assert!(d >= RENEW_BACKOFF_MAX / 2 && d < RENEW_BACKOFF_MAX, "{d:?}");
            // One second left: at most 1/8 of it.
            let d = retry_delay(30, Duration::from_secs(1));
            assert!(d <= Duration::from_millis(125), "{d:?}");
            // Expired: still a floor, never a busy loop.
            let d = retry_delay(30, Duration::ZERO);
            assert!(d >= RENEW_BACKOFF_MIN / 2, "{d:?}");
        }
    }

    #[test]
    fn a_renewal_attempt_leaves_time_for_others_before_expiry() {
        // A 24 h certificate at renewal (8 h left): the flat limit.
        assert_eq!(
            attempt_limit(Duration::from_secs(8 * 3600)),
            CERTIFY_TIMEOUT
        );
        // A 3 s certificate at renewal (1 s left): a third of it, so three attempts fit.
        assert_eq!(
            attempt_limit(Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
        // Almost expired: the floor, never a limit too short to finish.
        assert_eq!(
            attempt_limit(Duration::from_millis(100)),
            CERTIFY_ATTEMPT_MIN
        );
        // Expired: nothing left to save, the full limit.
        assert_eq!(attempt_limit(Duration::ZERO), CERTIFY_TIMEOUT);
    }

    /// A control plane that accepts the connection and never answers (what a renewal met when
    /// it stalled past its certificate's expiry): the attempt ends at its limit, with the reason.
    #[tokio::test]
    async fn an_attempt_against_a_silent_control_plane_ends_at_its_limit() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cp = ControlPlane {
            address: silent.local_addr().expect("addr").to_string(),
            identity: "spiffe://weft.local/ns/weft-system/sa/weft-control-plane"
                .parse()
                .expect("identity"),
            state_file: None,
            join_token_file: None,
            bootstrap_timeout: Duration::from_secs(1),
            bootstrap_authorization: None,
            trust_bundle: Default::default(),
        };
        let client = ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let identity: Identity = "spiffe://weft.local/ns/shop/sa/orders"
            .parse()
            .expect("identity");
        let paths = TlsPaths {
            cert: "unused.crt".into(),
            key: "unused.key".into(),
            trust_bundle: "unused.pem".into(),
        };
        let limit = Duration::from_millis(300);
        let attempt = obtain(limit, &cp, client, &identity, None, &paths, b"");
        // Bounded by far more than the limit: only a hang fails this.
        let err = match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("a silent control plane issued a certificate"),
            Err(_) => panic!("the attempt outlived its 300 ms limit by 20 s"),
        };
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("no answer within 300ms"), "{err}");
        drop(silent);
    }
}
