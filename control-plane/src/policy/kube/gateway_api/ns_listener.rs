//! A north-south Gateway's listeners one by one: what Weft's gateway can serve of each
//! (protocol, port, hostname, the route kinds it takes, TLS termination) and the certificate
//! of an HTTPS listener, from a `kubernetes.io/tls` Secret (another namespace's only with a
//! ReferenceGrant).

use super::gateway_types::Listener;
use super::ns_route::Inputs;

/// A certificate chain and its key, PEM.
pub(super) type Pems = (Vec<u8>, Vec<u8>);

/// The route kinds Weft's gateway serves: a GRPCRoute is the HTTPRoute it amounts to
/// ([`super::grpc`]), served on the same HTTPS listener (HTTP/2 by ALPN).
pub(super) const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// The route kinds `l` takes: those its `allowedRoutes.kinds` lists, else every kind Weft
/// serves (the Gateway API's default for HTTPS: the protocol's kinds).
pub(super) fn served_kinds(l: &Listener) -> Vec<&'static str> {
    let listed = l
        .allowed_routes
        .as_ref()
        .map(|a| a.kinds.as_slice())
        .unwrap_or_default();
    ROUTE_KINDS
        .into_iter()
        .filter(|k| listed.is_empty() || listed.iter().any(|l| l.kind == *k))
        .collect()
}

/// What any listener must be: HTTP or HTTPS, a port, routes Weft can take.
pub(super) fn listener_shape(f: &str, l: &Listener) -> Result<(), (&'static str, String)> {
    if l.protocol != "HTTP" && l.protocol != "HTTPS" {
        return Err((
            "UnsupportedProtocol",
            format!(
                "{f}.protocol: {} (Weft's gateway serves HTTP and HTTPS)",
                l.protocol
            ),
        ));
    }
    if !(1..=65535).contains(&l.port) {
        return Err((
            "UnsupportedValue",
            format!("{f}.port: {} is no port", l.port),
        ));
    }
    if let Some(h) = &l.hostname {
        if weft_policy::gateway::host_pattern(h).is_err() {
            return Err(("UnsupportedValue", format!("{f}.hostname: bad host {h:?}")));
        }
    }
    let allowed = l.allowed_routes.clone().unwrap_or_default();
    let from = allowed.namespaces.as_ref().and_then(|n| n.from.as_deref());
    if !matches!(from, None | Some("Same") | Some("All")) {
        return Err((
            "UnsupportedValue",
            format!(
                "{f}.allowedRoutes.namespaces.from: {from:?} is not supported (Same and All are)"
            ),
        ));
    }
    if let Some(k) = allowed.kinds.iter().find(|k| {
        !ROUTE_KINDS.contains(&k.kind.as_str())
            || k.group.as_deref().unwrap_or(super::GROUP) != super::GROUP
    }) {
        return Err((
            "InvalidRouteKinds",
            format!(
                "{f}.allowedRoutes.kinds: {} is not served (HTTPRoute and GRPCRoute are)",
                k.kind
            ),
        ));
    }
    let tls = l.tls.clone().unwrap_or_default();
    match l.protocol.as_str() {
        "HTTP" if l.tls.is_some() => Err(("UnsupportedValue", format!("{f}.tls: HTTP takes none"))),
        "HTTP" => Ok(()),
        _ if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" => Err((
            "UnsupportedValue",
            format!("{f}.tls.mode: only Terminate is supported"),
        )),
        _ if !tls.options.is_empty() || tls.frontend_validation.is_some() => Err((
            "UnsupportedValue",
            format!("{f}.tls: options and frontendValidation are not supported"),
        )),
        _ if tls.certificate_refs.len() > 1 => Err((
            "UnsupportedValue",
            format!("{f}.tls.certificateRefs: one certificate per listener"),
        )),
        _ => Ok(()),
    }
}

/// The listener's certificate and key (PEM), or why not (`InvalidCertificateRef`,
/// `RefNotPermitted`).
pub(super) fn certificate(
    inputs: &Inputs<'_>,
    gw_ns: &str,
    f: &str,
    l: &Listener,
) -> Result<Pems, (&'static str, String)> {
    let tls = l.tls.clone().unwrap_or_default();
    let f = format!("{f}.tls.certificateRefs[0]");
    let Some(r) = tls.certificate_refs.first() else {
        return Err((
            "InvalidCertificateRef",
            format!("{f}: an HTTPS listener needs a certificate"),
        ));
    };
    if !r.group.as_deref().unwrap_or("").is_empty()
        || r.kind.as_deref().unwrap_or("Secret") != "Secret"
    {
        return Err(("InvalidCertificateRef", format!("{f}: only core Secrets")));
    }
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if ns != gw_ns && !inputs.granted(("Gateway", gw_ns), ("Secret", ns, &r.name)) {
        return Err((
            "RefNotPermitted",
            format!(
                "{f}: Secret {ns}/{} is of another namespace and no ReferenceGrant in {ns} lets \
                 Gateways of {gw_ns} refer to it",
                r.name
            ),
        ));
    }
    let Some(secrets) = inputs.secrets else {
        return Err((
            "InvalidCertificateRef",
            format!(
                "{f}: the control plane may not read Secrets (grant it get, list, watch on \
                 secrets: docs/KUBERNETES.md)"
            ),
        ));
    };
    let secret = secrets.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(&r.name)
    });
    let Some(secret) = secret else {
        return Err((
            "InvalidCertificateRef",
            format!("{f}: no Secret {ns}/{}", r.name),
        ));
    };
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err((
            "InvalidCertificateRef",
            format!(
                "{f}: Secret {ns}/{} is not of type kubernetes.io/tls",
                r.name
            ),
        ));
    }
    let data = secret.data.clone().unwrap_or_default();
    let pem = |k: &str| {
        data.get(k)
            .map(|b| b.0.clone())
            .filter(|b| std::str::from_utf8(b).is_ok_and(|s| s.contains("-----BEGIN ")))
    };
    match (pem("tls.crt"), pem("tls.key")) {
        (Some(c), Some(k)) => Ok((c, k)),
        _ => Err((
            "InvalidCertificateRef",
            format!(
                "{f}: Secret {ns}/{} lacks a PEM tls.crt and tls.key",
                r.name
            ),
        )),
    }
}
