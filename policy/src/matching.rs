//! Request matching over validated routes: pure functions of the method, the path and the
//! headers, so any proxy can call them with its own request type's parts.

use http::{HeaderMap, Method};

use crate::model::{HeaderValueMatch, PathMatch, RouteMatch};

/// Does the path (without query) fall under `prefix` on a segment boundary?
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

impl RouteMatch {
    /// Does the request satisfy every condition?
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
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
                let mut values = headers.get_all(&h.name).iter();
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
}
