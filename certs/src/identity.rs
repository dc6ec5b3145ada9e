//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use crate::error::IdentityError;

const SPIFFE_SCHEME: &str = "spiffe://";
/// Maximum length of a DNS name in presentation form (RFC 1035, without the trailing dot).
const MAX_DNS_NAME: usize = 253;
/// Maximum length of one DNS label.
const MAX_LABEL: usize = 63;
/// Fixed part of [`Identity::dns_name`] between the namespace and the trust domain.
const DNS_INFIX: &str = "serviceaccount.identity";

/// A validated workload identity.
///
/// Its canonical form is the SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
/// (also its [`Display`](fmt::Display) form); it also has a DNS form,
/// `<service-account>.<namespace>.serviceaccount.identity.<trust-domain>`, that workload
/// certificates carry as a DNS SAN so TLS hostname verification can check a peer's identity.
///
/// The namespace and service account are DNS labels (`[a-z0-9-]`, 1 to 63 characters, no leading
/// or trailing `-`); the trust domain is a lowercase DNS name of such labels, such as `weft.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity, validating each part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_namespace(namespace)?;
        validate_service_account(service_account)?;
        let dns_len =
            service_account.len() + namespace.len() + DNS_INFIX.len() + trust_domain.len() + 3;
        if dns_len > MAX_DNS_NAME {
            return Err(IdentityError::DnsNameTooLong { len: dns_len });
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain, such as `weft.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The SPIFFE ID: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_uri(&self) -> String {
        self.to_string()
    }

    /// The DNS form: `<service-account>.<namespace>.serviceaccount.identity.<trust-domain>`.
    ///
    /// Always a valid DNS name (and so a valid TLS server name).
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.{DNS_INFIX}.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parses a SPIFFE ID of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_owned()))?;
        let malformed = |reason| IdentityError::MalformedSpiffeId {
            value: s.to_owned(),
            reason,
        };
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| malformed("missing path /ns/<namespace>/sa/<service-account>"))?;
        let mut segments = path.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
                Identity::new(trust_domain, namespace, service_account)
            }
            _ => Err(malformed(
                "path must be exactly /ns/<namespace>/sa/<service-account>",
            )),
        }
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;

    /// Same as [`Identity::from_str`].
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Checks that `trust_domain` is a lowercase DNS name such as `weft.local`.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    let invalid = |reason| IdentityError::InvalidTrustDomain {
        value: trust_domain.to_owned(),
        reason,
    };
    if trust_domain.is_empty() {
        return Err(invalid("empty"));
    }
    if trust_domain.len() > MAX_DNS_NAME {
        return Err(invalid("longer than 253 characters"));
    }
    let mut last = "";
    for label in trust_domain.split('.') {
        check_label(label).map_err(invalid)?;
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        // rustls refuses such names as TLS server names (they look like IP addresses).
        return Err(invalid("last label must not be all digits"));
    }
    Ok(())
}

/// Checks that `namespace` is a valid identity namespace: a DNS label (`[a-z0-9-]`, 1 to 63
/// characters, no leading or trailing `-`).
///
/// For callers that record a namespace before the trust domain is known (such as join tokens);
/// [`Identity::new`] checks the same and more.
pub fn validate_namespace(namespace: &str) -> Result<(), IdentityError> {
    check_label(namespace).map_err(|reason| IdentityError::InvalidNamespace {
        value: namespace.to_owned(),
        reason,
    })
}

/// Checks that `service_account` is a valid identity service account: a DNS label (`[a-z0-9-]`,
/// 1 to 63 characters, no leading or trailing `-`).
///
/// See [`validate_namespace`].
pub fn validate_service_account(service_account: &str) -> Result<(), IdentityError> {
    check_label(service_account).map_err(|reason| IdentityError::InvalidServiceAccount {
        value: service_account.to_owned(),
        reason,
    })
}

/// Checks one DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > MAX_LABEL {
        return Err("label longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("label must not start or end with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_round_trips() {
        let id = Identity::new("weft.local", "default", "frontend").expect("valid");
        assert_eq!(
            id.spiffe_uri(),
            "spiffe://weft.local/ns/default/sa/frontend"
        );
        assert_eq!(id.to_string(), id.spiffe_uri());
        assert_eq!(
            id.dns_name(),
            "frontend.default.serviceaccount.identity.weft.local"
        );
        let parsed: Identity = id.spiffe_uri().parse().expect("parses");
        assert_eq!(parsed, id);
        assert_eq!(Identity::try_from(id.spiffe_uri().as_str()), Ok(id));
    }

    #[test]
    fn rejects_invalid_parts() {
        assert!(matches!(
            Identity::new("Weft.local", "default", "a"),
            Err(IdentityError::InvalidTrustDomain { .. })
        ));
        assert!(matches!(
            Identity::new("weft..local", "default", "a"),
            Err(IdentityError::InvalidTrustDomain { .. })
        ));
        assert!(matches!(
            Identity::new("10.0.0.1", "default", "a"),
            Err(IdentityError::InvalidTrustDomain { .. })
        ));
        assert!(matches!(
            Identity::new("weft.local:443", "default", "a"),
            Err(IdentityError::InvalidTrustDomain { .. })
        ));
        assert!(matches!(
            Identity::new("weft.local", "Default", "a"),
            Err(IdentityError::InvalidNamespace { .. })
        ));
        assert!(matches!(
            Identity::new("weft.local", "default", "-a"),
            Err(IdentityError::InvalidServiceAccount { .. })
        ));
        assert!(matches!(
            Identity::new("weft.local", "default", "a.b"),
            Err(IdentityError::InvalidServiceAccount { .. })
        ));
        assert!(matches!(
            Identity::new("weft.local", "default", &"a".repeat(64)),
            Err(IdentityError::InvalidServiceAccount { .. })
        ));
        let long_td = [&"a".repeat(60)[..]; 4].join(".") + ".local";
        assert!(validate_trust_domain(&long_td).is_ok());
        assert!(matches!(
            Identity::new(&long_td, "default", "frontend"),
            Err(IdentityError::DnsNameTooLong { .. })
        ));
    }

    #[test]
    fn rejects_malformed_spiffe_ids() {
        for bad in [
            "http://weft.local/ns/default/sa/a",
            "SPIFFE://weft.local/ns/default/sa/a",
            "weft.local/ns/default/sa/a",
        ] {
            assert!(
                matches!(bad.parse::<Identity>(), Err(IdentityError::NotSpiffe(_))),
                "{bad}"
            );
        }
        for bad in [
            "spiffe://weft.local",
            "spiffe://weft.local/",
            "spiffe://weft.local/ns/default",
            "spiffe://weft.local/ns/default/sa",
            "spiffe://weft.local/ns/default/sa/a/",
            "spiffe://weft.local/ns/default/sa/a/extra",
            "spiffe://weft.local/sa/a/ns/default",
            "spiffe://weft.local//ns/default/sa/a",
        ] {
            assert!(
                matches!(
                    bad.parse::<Identity>(),
                    Err(IdentityError::MalformedSpiffeId { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            "spiffe://weft.local/ns/default/sa/a?x=1",
            "spiffe://weft.local/ns/default/sa/a#frag",
            "spiffe://user@weft.local/ns/default/sa/a",
            "spiffe://weft.local:8443/ns/default/sa/a",
            "spiffe://weft.local/ns//sa/a",
            "spiffe:///ns/default/sa/a",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
