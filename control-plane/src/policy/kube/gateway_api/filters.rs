//! A rule's filters, the same for GAMMA (east-west) and north-south routes:
//! `RequestHeaderModifier` (`set`, `remove`; header names lowercased) and `URLRewrite` with
//! `ReplacePrefixMatch`. Every other filter, `add`, host rewrites and other path rewrites are
//! refused naming the field: neither mesh routes nor gateway routes have a field for them.

use weft_policy::wire;

use super::error::RouteError;
use super::types::HttpRouteFilter;

/// Where the filters apply: only the refusals' wording differs.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// Mesh routes of a Service (GAMMA).
    Mesh,
    /// Gateway routes (a Gateway parent).
    Gateway,
}

impl Place {
    fn here(self) -> &'static str {
        match self {
            Place::Mesh => "on mesh routes",
            Place::Gateway => "at the gateway",
        }
    }

    /// What a host rewrite would need that this place lacks.
    fn host_hint(self) -> &'static str {
        match self {
            Place::Mesh => "a mesh route keeps the Host its caller sent",
            Place::Gateway => "the gateway sends the mesh service's name as Host",
        }
    }
}

/// The prefix rewrite and header edits of the filters of the rule at field path `f`.
pub fn translate(
    f: &str,
    filters: &[HttpRouteFilter],
    place: Place,
) -> Result<(Option<wire::Rewrite>, Option<wire::HeaderEdits>), RouteError> {
    let mut rewrite = None;
    let mut headers: Option<wire::HeaderEdits> = None;
    for (fi, filter) in filters.iter().enumerate() {
        let ff = format!("{f}.filters[{fi}]");
        match filter.type_.as_str() {
            "RequestHeaderModifier" => {
                let m = filter.request_header_modifier.clone().unwrap_or_default();
                if !m.add.is_empty() {
                    return Err(RouteError::unsupported(
                        format!("{ff}.requestHeaderModifier.add"),
                        "appending to a header is not supported (use set)",
                    ));
                }
                let edits = headers.get_or_insert_with(Default::default);
                for nv in m.set {
                    edits.set.insert(nv.name.to_ascii_lowercase(), nv.value);
                }
                // Header names are case-insensitive; the proxy compares them lowercased.
                edits
                    .remove
                    .extend(m.remove.into_iter().map(|n| n.to_ascii_lowercase()));
            }
            "URLRewrite" => {
                let r = filter.url_rewrite.clone().unwrap_or_default();
                if r.hostname.is_some() {
                    return Err(RouteError::unsupported(
                        format!("{ff}.urlRewrite.hostname"),
                        format!("host rewrites are not supported ({})", place.host_hint()),
                    ));
                }
                match r.path {
                    Some(p) if p.type_ == "ReplacePrefixMatch" => {
                        rewrite = Some(wire::Rewrite {
                            prefix: p.replace_prefix_match.unwrap_or_else(|| "/".into()),
                        });
                    }
                    Some(p) => {
                        return Err(RouteError::unsupported(
                            format!("{ff}.urlRewrite.path.type"),
                            format!("{:?} is not supported (ReplacePrefixMatch is)", p.type_),
                        ))
                    }
                    None => {}
                }
            }
            other => {
                return Err(RouteError::unsupported(
                    format!("{ff}.type"),
                    format!(
                        "{other} is not supported {} (RequestHeaderModifier and URLRewrite are)",
                        place.here()
                    ),
                ))
            }
        }
    }
    Ok((rewrite, headers))
}
