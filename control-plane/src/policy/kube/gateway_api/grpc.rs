//! `GRPCRoute` (GAMMA): read as the `HTTPRoute` it amounts to, since a gRPC call is an HTTP/2
//! POST to `/<package.Service>/<Method>`. A method match becomes a path match (`Exact` service
//! and method: the exact path; service alone: the prefix `/<service>`; method alone, or
//! `RegularExpression`: an anchored regex), headers stay headers; filters and backendRefs are
//! an HTTPRoute rule's (`RequestHeaderModifier` is the one a GRPCRoute has that the mesh does).

use serde::Deserialize;

use super::types::{
    BackendRef, HttpHeaderMatch, HttpPathMatch, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, ParentRef,
};

/// The `spec` of a `GRPCRoute` (`gateway.networking.k8s.io/v1`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// Parents.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names (refused on a Service parent).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// One rule of a GRPCRoute.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// The rule's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any one selects the rule (none: every call).
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// One match of a GRPCRoute.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// The gRPC method.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
}

/// A gRPC method condition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// `package.Service`.
    #[serde(default)]
    pub service: Option<String>,
    /// `Method`.
    #[serde(default)]
    pub method: Option<String>,
}

impl From<GrpcRouteSpec> for HttpRouteSpec {
    fn from(g: GrpcRouteSpec) -> Self {
        HttpRouteSpec {
            parent_refs: g.parent_refs,
            hostnames: g.hostnames,
            rules: g
                .rules
                .into_iter()
                .map(|r| HttpRouteRule {
                    name: r.name,
                    matches: r.matches.into_iter().map(http_match).collect(),
                    filters: r.filters,
                    backend_refs: r.backend_refs,
                    timeouts: None,
                })
                .collect(),
        }
    }
}

fn http_match(m: GrpcRouteMatch) -> HttpRouteMatch {
    let path = m.method.map(|mm| {
        let regex = mm.type_.as_deref() == Some("RegularExpression");
        let (kind, value) = match (regex, mm.service, mm.method) {
            (false, Some(s), Some(m)) => ("Exact", format!("/{s}/{m}")),
            (false, Some(s), None) => ("PathPrefix", format!("/{s}")),
            (false, None, Some(m)) => ("RegularExpression", format!("/[^/]+/{}", escape(&m))),
            (false, None, None) => ("PathPrefix", "/".to_owned()),
            (true, s, m) => (
                "RegularExpression",
                format!(
                    "/{}/{}",
                    s.unwrap_or_else(|| "[^/]+".into()),
                    m.unwrap_or_else(|| "[^/]+".into())
                ),
            ),
        };
        HttpPathMatch {
            type_: Some(kind.to_owned()),
            value: Some(value),
        }
    });
    HttpRouteMatch {
        path,
        headers: m.headers,
        query_params: Vec::new(),
        method: None,
    }
}

/// `s` with the regex metacharacters a method name could hold escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_become_paths() {
        let spec: GrpcRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "inventory"}],
            "rules": [{"matches": [
                {"method": {"service": "shop.Inventory", "method": "Stock"}},
                {"method": {"service": "shop.Inventory"}},
                {"method": {"method": "Stock"}, "headers": [{"name": "x-a", "value": "1"}]},
                {"method": {"type": "RegularExpression", "service": "shop\\..*"}}
            ], "backendRefs": [{"name": "inventory"}]}]
        }))
        .expect("spec");
        let http = HttpRouteSpec::from(spec);
        let paths: Vec<(String, String)> = http.rules[0]
            .matches
            .iter()
            .map(|m| {
                let p = m.path.clone().expect("path");
                (p.type_.unwrap_or_default(), p.value.unwrap_or_default())
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("Exact".into(), "/shop.Inventory/Stock".into()),
                ("PathPrefix".into(), "/shop.Inventory".into()),
                ("RegularExpression".into(), "/[^/]+/Stock".into()),
                ("RegularExpression".into(), "/shop\\..*/[^/]+".into()),
            ]
        );
        assert_eq!(http.rules[0].matches[2].headers.len(), 1);
    }
}
