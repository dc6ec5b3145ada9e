//! A certificate signing request as the control plane's CA signs it (`Issuer::issue_to` checks
//! the length, then `CertificateAuthority::sign_csr` parses, verifies and signs). Invariants: no
//! panic; whatever the CSR asked for, a certificate that is issued carries exactly the attested
//! identity (the CA never certifies a name the caller was not proven to have) and chains to the
//! CA's trust domain.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_certs::{CertificateAuthority, Identity};
// A longer CSR never reaches the parser in the control plane.
use weft_control_plane::ca::issuer::MAX_CSR_PEM_LEN;

fn ca() -> &'static (CertificateAuthority, Identity) {
    static CA: OnceLock<(CertificateAuthority, Identity)> = OnceLock::new();
    CA.get_or_init(|| {
        let ca = CertificateAuthority::generate_seeded("weft.local", 7).expect("seeded CA");
        let id: Identity = "spiffe://weft.local/ns/default/sa/orders"
            .parse()
            .expect("identity");
        (ca, id)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(csr_pem) = std::str::from_utf8(data) else {
        return;
    };
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return;
    }
    let (ca, expected) = ca();
    let Ok(cert_pem) = ca.sign_csr(csr_pem, expected, Duration::from_secs(3600)) else {
        return;
    };
    let chain = weft_certs::parse_cert_chain_pem(&cert_pem).expect("issued PEM parses");
    assert_eq!(chain.len(), 1, "one leaf");
    let id = weft_certs::identity_from_cert_der(&chain[0]).expect("issued cert has an ID");
    assert_eq!(
        &id, expected,
        "CA certified a name it was not asked to prove"
    );
});
