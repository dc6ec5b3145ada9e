//! The trust bundle a control-plane snapshot carries: taken (written and rebuilt) when the
//! sidecar owns its bundle file, or compared with the mounted one when something else owns it
//! (a ConfigMap on Kubernetes), as `control_plane.trust_bundle` says.

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::identity::certify::CERT_MODE;
use crate::identity::material;
use crate::store::Store;

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
    use super::*;

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
}
