//! SPIFFE IDs and certificates as `weft_certs` reads them: `Identity::from_str` (the IDs in
//! policy files and in certificates), the DER readers a sidecar and the control plane apply to a
//! peer's certificate (`identity_from_cert_der`, validity, a CA's trust domain) and PEM chains.
//! Invariants: no panic; an ID that parses prints back to exactly its text and rebuilds from its
//! parts; an identity read from a certificate prints to an ID that parses back to it; a PEM
//! chain that parses re-encodes (`cert_pem_from_der`) to a chain that parses to the same DER.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_certs::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        spiffe_id(text);
        pem_chain(text);
    }
    if let Ok(id) = weft_certs::identity_from_cert_der(data) {
        let back: Identity = id
            .to_string()
            .parse()
            .expect("a certificate's ID parses back");
        assert_eq!(back, id);
    }
    let _ = weft_certs::not_after_from_cert_der(data);
    let _ = weft_certs::not_before_from_cert_der(data);
    if let Ok(td) = weft_certs::trust_domain_from_ca_cert_der(data) {
        weft_certs::validate_trust_domain(&td).expect("a CA's trust domain is a valid one");
    }
});

fn spiffe_id(text: &str) {
    let Ok(id) = text.parse::<Identity>() else {
        return;
    };
    assert_eq!(
        id.to_string(),
        text,
        "a SPIFFE ID parsed from non-canonical text"
    );
    assert_eq!(id.spiffe_uri(), text);
    let rebuilt = Identity::new(id.trust_domain(), id.namespace(), id.service_account())
        .expect("the parts of a parsed ID are valid");
    assert_eq!(rebuilt, id);
}

fn pem_chain(text: &str) {
    let Ok(chain) = weft_certs::parse_cert_chain_pem(text) else {
        return;
    };
    let pem: String = chain
        .iter()
        .map(|der| weft_certs::cert_pem_from_der(der))
        .collect();
    let again = weft_certs::parse_cert_chain_pem(&pem).expect("re-encoded chain parses");
    assert_eq!(again, chain);
}
