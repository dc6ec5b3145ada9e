//! Request matching and path rewriting over validated routes.

use http::Method;
use pingora_http::RequestHeader;

use crate::config::{HeaderValueMatch, PathMatch, RouteMatch};

/// Does the path (without query) fall under `prefix` on a segment boundary?
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

impl RouteMatch {
    /// Does the request satisfy every condition?
    pub fn matches(&self, method: &Method, path: &str, req: &RequestHeader) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => p == path,
            Some(PathMatch::Prefix(p)) => prefix_matches(p, path),
            Some(PathMatch::Regex(r)) => r.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|h| {
                let mut values = req.headers.get_all(&h.name).iter();
                match &h.value {
                    HeaderValueMatch::Present => values.next().is_some(),
                    HeaderValueMatch::Exact(v) => values.any(|x| x == v),
                    HeaderValueMatch::Regex(r) => {
                        values.any(|x| x.to_str().is_ok_and(|s| r.is_match(s)))
                    }
                }
            })
    }
}

/// Replace the matched `prefix` of `path_and_query` with `new_prefix`.
pub fn rewrite_prefix(prefix: &str, new_prefix: &str, path_and_query: &str) -> String {
    let rest = if prefix == "/" {
        path_and_query
    } else {
        path_and_query.get(prefix.len()..).unwrap_or("")
    };
    let mut out = String::with_capacity(new_prefix.len() + rest.len());
    out.push_str(new_prefix);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    } else if !out.ends_with('/') && !rest.is_empty() && !rest.starts_with(['/', '?']) {
        out.push('/');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_respects_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn rewrites_keep_the_rest_and_query() {
        assert_eq!(rewrite_prefix("/api", "/v2", "/api/x?q=1"), "/v2/x?q=1");
        assert_eq!(rewrite_prefix("/api", "/v2", "/api"), "/v2");
        assert_eq!(rewrite_prefix("/api", "/", "/api/x"), "/x");
        assert_eq!(rewrite_prefix("/api", "/v2/", "/api?q"), "/v2/?q");
        assert_eq!(rewrite_prefix("/", "/base", "/x"), "/base/x");
    }
}
