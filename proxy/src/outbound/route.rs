//! Path rewriting over validated routes (matching is `RouteMatch::matches` in the policy model).

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
    fn rewrites_keep_the_rest_and_query() {
        assert_eq!(rewrite_prefix("/api", "/v2", "/api/x?q=1"), "/v2/x?q=1");
        assert_eq!(rewrite_prefix("/api", "/v2", "/api"), "/v2");
        assert_eq!(rewrite_prefix("/api", "/", "/api/x"), "/x");
        assert_eq!(rewrite_prefix("/api", "/v2/", "/api?q"), "/v2/?q");
        assert_eq!(rewrite_prefix("/", "/base", "/x"), "/base/x");
    }
}
