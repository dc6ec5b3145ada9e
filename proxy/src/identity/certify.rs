//! Workload certificates from the control plane (`Certify`): bootstrap with a join token, and
//! rotation before expiry.
//!
//! The sidecar generates every key pair itself (ECDSA P-256) and sends only a CSR, so private
//! keys exist only in this process and its own `tls.key` file (mode 0600).
//!
//! - **Bootstrap** ([`bootstrap_if_needed`], before the store opens): with
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

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::watch;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::CertifyRequest;
use weft_certs::Identity;

use crate::identity::material;
use crate::store::{write_atomically, InstallError, Store};
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
/// Limit of one `Certify` call, connection included.
pub const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);
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

/// A client config without a client certificate that trusts the roots of `bundle_pem`: how a
/// sidecar without a usable certificate reaches the control plane.
fn anonymous_client(bundle_pem: &[u8], path: &Path) -> Result<ClientConfig, CertifyError> {
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
struct Obtained {
    key_pem: String,
    chain_pem: String,
    not_after: SystemTime,
}

/// One `Certify` call: a fresh key pair, its CSR (and `token`, if any) over `client_tls`;
/// the answer is checked against `identity` and `bundle_pem` as a reload would check it.
async fn obtain(
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
    let answer = tokio::time::timeout(CERTIFY_TIMEOUT, call)
        .await
        .map_err(|_| CertifyError::Connect {
            address: address.clone(),
            reason: format!(
                "no answer within {}",
                humantime::format_duration(CERTIFY_TIMEOUT)
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

fn read_token(path: &Path) -> Result<String, CertifyError> {
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

/// Run `attempt` until it succeeds, fails for good ([`CertifyError::is_retryable`] false), or
/// `limit` passes; between attempts wait [`crate::control::channel::backoff`] (jittered, doubling),
/// never past the limit. At most 1000 attempts whatever the limit.
pub async fn retry_until<T, F, Fut>(
    address: &str,
    limit: Duration,
    mut attempt: F,
) -> Result<T, CertifyError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CertifyError>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    let mut n = 0u32;
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        n += 1;
        let now = tokio::time::Instant::now();
        let delay = crate::control::channel::backoff(n - 1);
        if now + delay >= deadline || n >= 1000 {
            // Whole tenths of a second read better in the error than nanoseconds.
            let after = now.duration_since(start).as_millis() / 100 * 100;
            return Err(CertifyError::GaveUp {
                address: address.to_owned(),
                after: Duration::from_millis(u64::try_from(after).unwrap_or(u64::MAX)),
                last: Box::new(e),
            });
        }
        log::warn!("{e}; retrying in {} ms", delay.as_millis());
        tokio::time::sleep(delay).await;
    }
}

/// Before the store opens: with `control_plane.join_token_file` set and no usable
/// certificate, obtain one from the control plane and write `tls.key` (0600) and `tls.cert`.
///
/// Does nothing without a join token file, with a usable certificate, or with a config that
/// does not load (opening the store reports that). Blocks the calling thread (its own
/// short-lived runtime) for at most `control_plane.bootstrap_timeout` plus one call.
pub fn bootstrap_if_needed(config_path: &Path) -> Result<(), CertifyError> {
    let Ok(config) = weft_policy::load(config_path) else {
        return Ok(());
    };
    let Some(cp) = config.control_plane.clone() else {
        return Ok(());
    };
    let Some(token_file) = cp.join_token_file.clone() else {
        return Ok(());
    };
    let identity = config.own.identity.clone();
    let paths = config.tls.clone();
    // Checked only: whether the files make usable material (the protocol does not matter).
    let why = match material::load(&paths, &identity, weft_policy::Protocol::Http) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    log::info!(
        "no usable workload certificate ({why}); asking the control plane {} for one with the join token",
        cp.address
    );
    let token = read_token(&token_file)?;
    let bundle = std::fs::read(&paths.trust_bundle).map_err(|e| CertifyError::Local {
        field: "tls.trust_bundle".to_owned(),
        reason: format!("cannot read {}: {e}", paths.trust_bundle.display()),
    })?;
    let client = anonymous_client(&bundle, &paths.trust_bundle)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CertifyError::Local {
            field: "runtime".to_owned(),
            reason: e.to_string(),
        })?;
    let got = rt.block_on(retry_until(&cp.address, cp.bootstrap_timeout, || {
        obtain(
            &cp,
            client.clone(),
            &identity,
            Some(&token),
            &paths,
            &bundle,
        )
    }))?;
    for (path, bytes, mode) in [
        (&paths.key, got.key_pem.as_bytes(), KEY_MODE),
        (&paths.cert, got.chain_pem.as_bytes(), CERT_MODE),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        write_atomically(path, bytes, mode).map_err(|source| {
            CertifyError::Install(InstallError::Write {
                path: path.clone(),
                source,
            })
        })?;
    }
    log::info!(
        "obtained a certificate for {identity} from the control plane {}, valid until {}",
        cp.address,
        humantime::format_rfc3339_seconds(got.not_after)
    );
    Ok(())
}

/// Renew once: a new key pair and CSR, `Certify` over mutual TLS with the current certificate
/// (or, once it has expired, with the join token if one is configured), then install and
/// swap. Returns the new certificate's expiry.
async fn renew_once(store: &Arc<Store>, cp: &ControlPlane) -> Result<SystemTime, CertifyError> {
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
    let got = obtain(cp, client, &identity, token.as_deref(), &paths, &bundle).await?;
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
        match renew_once(&store, &cp).await {
            Ok(expiry) => {
                store.metrics.cert_renewals.with_label_values(&["ok"]).inc();
                log::info!(
                    "certificate renewed in {} ms, valid until {}",
                    started.elapsed().as_millis(),
                    humantime::format_rfc3339_seconds(expiry)
                );
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

/// Take the trust bundle of a control-plane snapshot: refuse an empty or unparsable one (the
/// error is the NACK reason). With `control_plane.trust_bundle: pushed`, if its roots differ
/// from `tls.trust_bundle`'s, write it there atomically and rebuild, so a second root (CA
/// rotation) is trusted at once. With `mounted` the file is someone else's (a read-only
/// ConfigMap on Kubernetes) and the only source: nothing is written, and a difference is
/// logged and shown in `weft_trust_bundle_differs`.
pub fn take_trust_bundle(store: &Store, pem: &str) -> Result<(), String> {
    if pem.trim().is_empty() {
        return Err("the snapshot's trust bundle is empty".to_owned());
    }
    let path = store.load().tls_paths.trust_bundle.clone();
    let roots = material::trust_bundle(pem.as_bytes(), &path)
        .map_err(|e| format!("the snapshot's trust bundle is not usable: {}", e.reason))?;
    let mut check = RootCertStore::empty();
    for r in &roots {
        check
            .add(r.clone())
            .map_err(|e| format!("the snapshot's trust bundle holds an unusable root: {e}"))?;
    }
    // Compared with the roots in force (in memory), not with the file, as sets: the order
    // of roots does not change what is trusted, and the two sides list them in different
    // orders during a rotation (the control plane its signing root first, the documented
    // ConfigMap edit the old root first).
    let current = material::trust_bundle(&store.trust_bundle_pem(), &path).ok();
    let differs = current.is_none_or(|c| !same_roots(&c, &roots));
    let mounted = store
        .load()
        .control_plane
        .as_ref()
        .is_some_and(|cp| cp.trust_bundle == weft_policy::wire::TrustBundleSource::Mounted);
    if mounted {
        let gauge = &store.metrics.trust_bundle_differs;
        if differs && gauge.get() == 0 {
            log::warn!(
                "the control plane's trust bundle ({} root(s)) differs from the mounted {}: \
                 kept the mounted one (control_plane.trust_bundle: mounted); a CA rotation \
                 must add the new root to the mounted bundle first",
                roots.len(),
                path.display()
            );
        }
        gauge.set(i64::from(differs));
        return Ok(());
    }
    if !differs {
        return Ok(());
    }
    store
        .install_files(&[(&path, pem.as_bytes(), CERT_MODE)])
        .map_err(|e| format!("cannot take the snapshot's trust bundle: {e}"))?;
    log::info!(
        "trust bundle updated from the control plane: {} root(s) in {}",
        roots.len(),
        path.display()
    );
    Ok(())
}

/// Whether `a` and `b` hold the same roots, in any order.
fn same_roots(a: &[CertificateDer<'_>], b: &[CertificateDer<'_>]) -> bool {
    let set = |r: &[CertificateDer<'_>]| -> std::collections::BTreeSet<Vec<u8>> {
        r.iter().map(|c| c.as_ref().to_vec()).collect()
    };
    set(a) == set(b)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn roots_compare_as_sets() {
        let ab = [
            CertificateDer::from(vec![1u8, 2]),
            CertificateDer::from(vec![3u8]),
        ];
        let ba = [ab[1].clone(), ab[0].clone()];
        assert!(same_roots(&ab, &ba));
        assert!(!same_roots(&ab, &ab[..1]));
        assert!(!same_roots(&ab[..1], &ab[1..]));
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
    fn a_pushed_trust_bundle_with_a_second_root_replaces_the_file_and_bad_ones_are_refused() {
        let (dir, store, ca) = crate::store::test_support::store_with_files(7);
        let bundle = dir.path().join("ca.crt");
        let v = store.load().version;
        let e = take_trust_bundle(&store, "  \n").expect_err("empty");
        assert!(e.contains("empty"), "{e}");
        let e = take_trust_bundle(&store, "not PEM at all").expect_err("garbage");
        assert!(e.contains("trust bundle"), "{e}");
        let e = take_trust_bundle(
            &store,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect_err("bad certificate");
        assert!(e.contains("trust bundle"), "{e}");
        assert_eq!(store.load().version, v, "nothing rebuilt");
        // The same root (even as other text): nothing written, nothing rebuilt.
        take_trust_bundle(&store, &format!("\n{}", ca.cert_pem())).expect("same root");
        assert_eq!(
            std::fs::read_to_string(&bundle).expect("read"),
            ca.cert_pem()
        );
        assert_eq!(store.load().version, v);
        // A second root (CA rotation): written and in force at once.
        let next = weft_certs::CertificateAuthority::generate_seeded("weft.local", 8).expect("ca");
        let two = format!("{}{}", ca.cert_pem(), next.cert_pem());
        take_trust_bundle(&store, &two).expect("two roots");
        assert_eq!(std::fs::read_to_string(&bundle).expect("read"), two);
        let snap = store.load();
        assert_eq!(snap.version, v + 1);
        assert_eq!(snap.tls.root_count, 2);
    }

    fn down() -> CertifyError {
        CertifyError::Connect {
            address: "127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bootstrap_retries_give_up_at_the_limit() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), _> = retry_until("cp", Duration::from_secs(5), || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(down()) }
        })
        .await;
        let e = r.expect_err("gives up");
        assert!(matches!(e, CertifyError::GaveUp { .. }), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(start.elapsed() <= Duration::from_secs(5));
        let n = calls.load(Ordering::Relaxed);
        assert!((3..=20).contains(&n), "{n} attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn bootstrap_retries_until_success_and_stops_on_refusal() {
        let calls = AtomicU32::new(0);
        let r = retry_until("cp", Duration::from_secs(30), || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    Err(down())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.expect("succeeds"), 3);
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), _> = retry_until("cp", Duration::from_secs(30), || {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                Err(CertifyError::Refused {
                    address: "cp".into(),
                    code: tonic::Code::Unauthenticated,
                    message: "join token 1 was revoked".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
