//! The stand-in's PKI: a CA, and a serving certificate for `localhost` and 127.0.0.1 it signs.

use std::sync::Arc;

pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stand-in kubernetes CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.signed_by(&key, &ca).expect("server cert");
        Self {
            ca_pem: ca.pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    pub(crate) fn server_config(&self) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![self.cert.clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into()),
        )
        .expect("tls config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}
