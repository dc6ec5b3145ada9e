//! One Gateway API match as a mesh route match, with its precedence ([`Rank`]).

use weft_policy::wire;

use super::error::RouteError;
use super::types::HttpRouteMatch;

/// Gateway API precedence, most specific first: an exact path, then the longest prefix, then
/// regular expressions (implementation-specific: after every prefix), then a method before
/// none, then more headers before fewer; ties go to the oldest route, then by namespace/name,
/// then rule and match order (the caller adds those).
pub type Rank = (u8, std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>);

/// One match as a mesh match, its rank, and whether its path is a prefix.
// Long: path, headers, method and query of one match, each checked and ranked in turn.
pub(super) fn route_match(
    fm: &str,
    m: &HttpRouteMatch,
) -> Result<(wire::Match, Rank, bool), RouteError> {
    use std::cmp::Reverse;
    if !m.query_params.is_empty() {
        return Err(RouteError::unsupported(
            format!("{fm}.queryParams"),
            "query parameter matches are not supported",
        ));
    }
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    let kind = m
        .path
        .as_ref()
        .and_then(|p| p.type_.clone())
        .unwrap_or_else(|| "PathPrefix".into());
    let (path, class, len) = match kind.as_str() {
        "Exact" => (
            wire::PathMatch {
                exact: Some(value),
                prefix: None,
                regex: None,
            },
            0,
            0,
        ),
        "PathPrefix" => {
            let len = value.len();
            (
                wire::PathMatch {
                    exact: None,
                    prefix: Some(value),
                    regex: None,
                },
                1,
                len,
            )
        }
        "RegularExpression" => (
            wire::PathMatch {
                exact: None,
                prefix: None,
                regex: Some(value),
            },
            2,
            0,
        ),
        other => {
            return Err(RouteError::unsupported(
                format!("{fm}.path.type"),
                format!("{other:?} is not a path match type"),
            ))
        }
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (hi, h) in m.headers.iter().enumerate() {
        let (exact, regex) = match h.type_.as_deref().unwrap_or("Exact") {
            "Exact" => (Some(h.value.clone()), None),
            "RegularExpression" => (None, Some(h.value.clone())),
            other => {
                return Err(RouteError::unsupported(
                    format!("{fm}.headers[{hi}].type"),
                    format!("{other:?} is not a header match type"),
                ))
            }
        };
        headers.push(wire::HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            exact,
            regex,
        });
    }
    let rank = (
        class,
        Reverse(len),
        u8::from(m.method.is_none()),
        Reverse(headers.len()),
    );
    Ok((
        wire::Match {
            path: Some(path),
            method: m.method.clone(),
            headers,
        },
        rank,
        class == 1,
    ))
}
