//! Who may join the mesh as what: a sidecar's `Hello` checked against its certificate.
//!
//! A sidecar names the service it speaks for and the address its callers should dial. The
//! control plane believes neither on its word:
//!
//! - **Service, by identity.** The service must be a mesh service whose identity is the
//!   certificate's SPIFFE id: on Kubernetes `orders.shop` is the Service `orders` of namespace
//!   `shop`, whose identity is its pods' service account ([`crate::policy::kube::mapping`]),
//!   so a pod of `shop` running as `orders` may speak for it whatever the name. A service the
//!   policy does not list is refused on Kubernetes (the EndpointSlices name every pod of every
//!   mesh service, ready or not, so a pod that may join is listed); off Kubernetes it is
//!   allowed only when it is named after the certificate's service account (the rule before
//!   the policy knew the service).
//! - **Endpoint, by address.** Off Kubernetes the reported address is taken as it is, but an
//!   unspecified one (`0.0.0.0`) or port 0 is refused: nobody could dial it. On Kubernetes a
//!   sidecar listening on every address (as injected) reports `0.0.0.0:15006`; the IP is then
//!   the connection's source address, the pod's IP. Either way the IP must belong to a live pod
//!   (phase `Pending` or `Running`) of the certificate's namespace running as its service
//!   account ([`PodDirectory`]), so a workload cannot register another pod's address, nor one
//!   outside the cluster. `Pending` counts because a native sidecar starts, and must get its
//!   first snapshot to pass its startup probe, while the pod is still initializing.

use std::net::{IpAddr, SocketAddr};

use tonic::Code;
use weft_certs::Identity;

use crate::policy::mesh::MeshPolicy;

/// The pods the control plane knows of (the Kubernetes policy source's Pod store), asked who
/// owns an address.
pub trait PodDirectory: Send + Sync {
    /// The name of a live pod (phase `Pending` or `Running`) of `namespace` running as
    /// service account `account` with `ip` among its pod IPs, if there is one.
    fn live_pod(&self, ip: IpAddr, namespace: &str, account: &str) -> Option<String>;
}

/// Why a sidecar's `Hello` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The certificate is of another trust domain.
    #[error("{peer} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The certificate's identity.
        peer: String,
        /// The mesh's trust domain.
        trust_domain: String,
    },
    /// The policy lists the service with another identity.
    #[error(
        "{peer} may not speak for service {service:?}: its identity is {identity}, not the certificate's"
    )]
    IdentityMismatch {
        /// The service named in `Hello`.
        service: String,
        /// Its identity in the policy.
        identity: String,
        /// The certificate's identity.
        peer: String,
    },
    /// On Kubernetes: no mesh service of that name (no Service whose EndpointSlices name a
    /// pod running the sidecar).
    #[error(
        "{peer} may not speak for service {service:?}: it is not a mesh service (a Service \
         <name>.<namespace> whose EndpointSlices name pods running the sidecar)"
    )]
    NotAMeshService {
        /// The service named in `Hello`.
        service: String,
        /// The certificate's identity.
        peer: String,
    },
    /// Off Kubernetes: a service the policy does not list, not named after the certificate's
    /// service account.
    #[error(
        "{peer} may not speak for service {service:?}: the policy does not list it and it is \
         not named after the certificate's service account"
    )]
    NotItsService {
        /// The service named in `Hello`.
        service: String,
        /// The certificate's identity.
        peer: String,
    },
    /// The endpoint address does not parse.
    #[error("bad endpoint address {address:?}: {reason}")]
    BadAddress {
        /// The address as sent.
        address: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Off Kubernetes: an unspecified IP or port 0, which no other sidecar could dial.
    #[error(
        "endpoint address {0} is not reachable by other sidecars; set listen.inbound to the sidecar's own address"
    )]
    Unreachable(SocketAddr),
    /// An unspecified IP and no connection address to take instead.
    #[error("endpoint address {0} is unspecified and the connection's address is unknown")]
    NoPeerAddress(SocketAddr),
    /// On Kubernetes: no live pod of the certificate's namespace and service account has the
    /// endpoint's IP.
    #[error(
        "endpoint {endpoint}: no live pod of namespace {namespace} running as service account \
         {account} has IP {}", endpoint.ip()
    )]
    NotOwned {
        /// The endpoint as it would have been registered.
        endpoint: SocketAddr,
        /// The certificate's namespace.
        namespace: String,
        /// The certificate's service account.
        account: String,
    },
}

impl JoinError {
    /// The gRPC status code the sidecar is answered with: the caller's claim is refused
    /// (`PERMISSION_DENIED`) or malformed (`INVALID_ARGUMENT`).
    pub fn code(&self) -> Code {
        match self {
            JoinError::BadAddress { .. }
            | JoinError::Unreachable(_)
            | JoinError::NoPeerAddress(_) => Code::InvalidArgument,
            _ => Code::PermissionDenied,
        }
    }
}

/// Whether `peer` may speak for `service` under `policy` (see the module docs).
pub(crate) fn check_service(
    policy: &MeshPolicy,
    peer: &Identity,
    trust_domain: &str,
    service: &str,
    on_kubernetes: bool,
) -> Result<(), JoinError> {
    if peer.trust_domain() != trust_domain {
        return Err(JoinError::ForeignTrustDomain {
            peer: peer.to_string(),
            trust_domain: trust_domain.to_owned(),
        });
    }
    let listed = policy.services().iter().find(|s| s.name == service);
    match listed {
        Some(s) if s.identity == peer.to_string() => Ok(()),
        Some(s) => Err(JoinError::IdentityMismatch {
            service: service.to_owned(),
            identity: s.identity.clone(),
            peer: peer.to_string(),
        }),
        None if on_kubernetes => Err(JoinError::NotAMeshService {
            service: service.to_owned(),
            peer: peer.to_string(),
        }),
        None if peer.service_account() == service => Ok(()),
        None => Err(JoinError::NotItsService {
            service: service.to_owned(),
            peer: peer.to_string(),
        }),
    }
}

/// The endpoint to register for a sidecar that reported `reported`, connected from
/// `connection`; with `pods` (on Kubernetes) the address must be a live pod's of the
/// certificate's namespace and service account (see the module docs).
pub(crate) fn endpoint(
    peer: &Identity,
    reported: &str,
    connection: Option<SocketAddr>,
    pods: Option<&dyn PodDirectory>,
) -> Result<SocketAddr, JoinError> {
    let mut endpoint: SocketAddr = reported.parse().map_err(|e| JoinError::BadAddress {
        address: reported.to_owned(),
        reason: format!("{e}"),
    })?;
    let Some(pods) = pods else {
        if endpoint.ip().is_unspecified() || endpoint.port() == 0 {
            return Err(JoinError::Unreachable(endpoint));
        }
        return Ok(endpoint);
    };
    if endpoint.port() == 0 {
        return Err(JoinError::Unreachable(endpoint));
    }
    if endpoint.ip().is_unspecified() {
        let from = connection.ok_or(JoinError::NoPeerAddress(endpoint))?;
        // An IPv4 pod reaching a dual-stack listener shows up as ::ffff:a.b.c.d.
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        endpoint.set_ip(ip);
    }
    let (namespace, account) = (peer.namespace(), peer.service_account());
    match pods.live_pod(endpoint.ip(), namespace, account) {
        Some(_) => Ok(endpoint),
        None => Err(JoinError::NotOwned {
            endpoint,
            namespace: namespace.to_owned(),
            account: account.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pods(Vec<(IpAddr, &'static str, &'static str)>);

    impl PodDirectory for Pods {
        fn live_pod(&self, ip: IpAddr, namespace: &str, account: &str) -> Option<String> {
            self.0
                .iter()
                .any(|p| p.0 == ip && p.1 == namespace && p.2 == account)
                .then(|| "pod".to_owned())
        }
    }

    fn policy() -> MeshPolicy {
        let text = "services:\n  - name: orders.shop\n    identity: spiffe://weft.local/ns/shop/sa/orders\n";
        MeshPolicy::from_texts(&[("p.yaml".into(), text.into())]).expect("valid")
    }

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new("weft.local", ns, sa).expect("identity")
    }

    #[test]
    fn a_service_is_joined_by_identity_not_by_name() {
        let p = policy();
        let orders = id("shop", "orders");
        assert_eq!(
            check_service(&p, &orders, "weft.local", "orders.shop", true),
            Ok(())
        );
        let other = check_service(
            &p,
            &id("shop", "frontend"),
            "weft.local",
            "orders.shop",
            true,
        );
        assert!(
            matches!(other, Err(JoinError::IdentityMismatch { .. })),
            "{other:?}"
        );
        let e = check_service(&p, &orders, "weft.local", "orders", true).expect_err("unlisted");
        assert!(matches!(e, JoinError::NotAMeshService { .. }), "{e}");
        assert_eq!(e.code(), Code::PermissionDenied);
        // Off Kubernetes an unlisted service named after the account is still allowed.
        assert_eq!(
            check_service(&p, &orders, "weft.local", "orders", false),
            Ok(())
        );
        assert!(matches!(
            check_service(&p, &orders, "weft.local", "payments", false),
            Err(JoinError::NotItsService { .. })
        ));
        assert!(matches!(
            check_service(&p, &orders, "other.td", "orders.shop", true),
            Err(JoinError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn on_kubernetes_the_endpoint_is_a_live_pod_of_the_certificates_account() {
        let pods = Pods(vec![("10.1.0.7".parse().expect("ip"), "shop", "orders")]);
        let orders = id("shop", "orders");
        let from: SocketAddr = "10.1.0.7:40000".parse().expect("addr");
        // Unspecified: the connection's address, with the reported port.
        assert_eq!(
            endpoint(&orders, "0.0.0.0:15006", Some(from), Some(&pods)),
            Ok("10.1.0.7:15006".parse().expect("addr"))
        );
        let mapped: SocketAddr = "[::ffff:10.1.0.7]:40000".parse().expect("addr");
        assert_eq!(
            endpoint(&orders, "0.0.0.0:15006", Some(mapped), Some(&pods)),
            Ok("10.1.0.7:15006".parse().expect("addr"))
        );
        assert_eq!(
            endpoint(&orders, "10.1.0.7:15006", None, Some(&pods)),
            Ok("10.1.0.7:15006".parse().expect("addr"))
        );
        // Another pod's address, another account's pod, a connection from elsewhere.
        for (who, reported, from) in [
            (&orders, "10.1.0.8:15006", None),
            (&id("shop", "frontend"), "10.1.0.7:15006", None),
            (&id("other", "orders"), "10.1.0.7:15006", None),
            (
                &orders,
                "0.0.0.0:15006",
                Some("10.9.9.9:1".parse().expect("addr")),
            ),
        ] {
            let e = endpoint(who, reported, from, Some(&pods)).expect_err("not owned");
            assert!(matches!(e, JoinError::NotOwned { .. }), "{e}");
            assert_eq!(e.code(), Code::PermissionDenied);
            assert!(e.to_string().contains("no live pod"), "{e}");
        }
        assert!(matches!(
            endpoint(&orders, "0.0.0.0:15006", None, Some(&pods)),
            Err(JoinError::NoPeerAddress(_))
        ));
        assert!(matches!(
            endpoint(&orders, "nonsense", None, Some(&pods)),
            Err(JoinError::BadAddress { .. })
        ));
    }

    #[test]
    fn off_kubernetes_the_reported_endpoint_is_kept_unless_unreachable() {
        let orders = id("shop", "orders");
        assert_eq!(
            endpoint(&orders, "127.0.0.1:9", None, None),
            Ok("127.0.0.1:9".parse().expect("addr"))
        );
        for bad in ["0.0.0.0:15006", "127.0.0.1:0", "[::]:1"] {
            let e = endpoint(
                &orders,
                bad,
                Some("127.0.0.1:5".parse().expect("addr")),
                None,
            )
            .expect_err("unreachable");
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
    }
}
