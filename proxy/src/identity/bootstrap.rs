//! Bootstrap (before the store opens): a sidecar with `control_plane.join_token_file` set and
//! no usable certificate obtains one from the control plane with the token, retrying with
//! jittered backoff up to `control_plane.bootstrap_timeout` (see [`super::certify`] for the
//! `Certify` call itself and for rotation).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::identity::certify::{
    anonymous_client, obtain, read_token, CertifyError, CERTIFY_TIMEOUT, CERT_MODE, KEY_MODE,
};
use crate::identity::material;
use crate::store::{write_atomically, InstallError};

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
            CERTIFY_TIMEOUT,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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
