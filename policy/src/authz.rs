//! Inbound authorization: allow rules by caller identity, path prefix and method, and a
//! default for requests no rule allows. Validated here; evaluated by the inbound proxy on
//! every request (a few string comparisons, no allocation).

use std::collections::HashSet;

use http::Method;

use super::{wire, Validator};
use crate::path::PathOptions;

/// Who may call this sidecar's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Allow what no rule matches (the default), or deny it with 403.
    pub default_allow: bool,
    /// Allow rules, in order.
    pub rules: Vec<AuthzRule>,
    /// How inbound request paths are canonicalized (`escaped_slashes`).
    pub paths: PathOptions,
}

impl Default for Authorization {
    fn default() -> Self {
        Self {
            default_allow: true,
            rules: Vec::new(),
            paths: PathOptions::default(),
        }
    }
}

/// One allow rule; every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRule {
    /// Name, for the operator.
    pub name: String,
    /// Caller identities; empty means any mesh identity (`"*"`).
    pub from: Vec<String>,
    /// Path prefixes on a segment boundary (`/api` takes `/api` and `/api/x`); empty: any.
    pub paths: Vec<String>,
    /// Methods; empty: any.
    pub methods: Vec<Method>,
}

impl AuthzRule {
    fn caller_matches(&self, caller: &str) -> bool {
        self.from.is_empty() || self.from.iter().any(|f| f == caller)
    }

    fn matches(&self, caller: &str, method: &Method, path: &str) -> bool {
        self.caller_matches(caller)
            && (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| crate::prefix_matches(p, path)))
    }
}

/// Why a request may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed<'a> {
    /// This rule allows it.
    ByRule(&'a str),
    /// No rule matched and the default allows.
    ByDefault,
}

impl Authorization {
    /// Why an HTTP request may pass, or `None` when it is denied.
    pub fn check_http(&self, caller: &str, method: &Method, path: &str) -> Option<Allowed<'_>> {
        match self.rules.iter().find(|r| r.matches(caller, method, path)) {
            Some(r) => Some(Allowed::ByRule(&r.name)),
            None if self.default_allow => Some(Allowed::ByDefault),
            None => None,
        }
    }

    /// Whether a TCP tunnel from `caller` may open: a rule for the caller without path or
    /// method conditions (a tunnel has neither), else the default.
    pub fn allows_tcp(&self, caller: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.paths.is_empty() && r.methods.is_empty() && r.caller_matches(caller))
            || self.default_allow
    }
}

impl Validator<'_> {
    pub(super) fn authorization(&mut self, raw: Option<wire::Authorization>) -> Authorization {
        self.authorization_at("authorization", raw)
    }

    /// An authorization block whose fields are named under `at`.
    pub(super) fn authorization_at(
        &mut self,
        at: &str,
        raw: Option<wire::Authorization>,
    ) -> Authorization {
        let Some(raw) = raw else {
            return Authorization::default();
        };
        let default_allow = match raw.default.as_deref() {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(other) => {
                self.err(
                    format!("{at}.default"),
                    format!("expected allow or deny, got {other:?}"),
                );
                true
            }
        };
        let paths_opts = crate::fields::path_options(raw.escaped_slashes);
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let f = format!("{at}.rules[{i}]");
            if !names.insert(r.name.clone()) {
                self.err(format!("{f}.name"), format!("duplicate rule {:?}", r.name));
            }
            rules.push(self.authz_rule(&f, r, &paths_opts));
        }
        Authorization {
            default_allow,
            rules,
            paths: paths_opts,
        }
    }

    /// One allow rule: caller identities (or `*`), canonical path prefixes, upper-case methods.
    fn authz_rule(&mut self, f: &str, r: wire::AuthzRule, paths_opts: &PathOptions) -> AuthzRule {
        if r.from.is_empty() {
            self.err(
                format!("{f}.from"),
                "name at least one caller identity, or \"*\" for any mesh identity",
            );
        }
        let mut from = Vec::new();
        let any = r.from.iter().any(|c| c == "*");
        for (j, c) in r.from.iter().enumerate() {
            if c == "*" {
                continue;
            }
            match crate::fields::identity(c) {
                Ok(id) => from.push(id.to_string()),
                Err(e) => self.err(format!("{f}.from[{j}]"), e),
            }
        }
        if any {
            from.clear();
        }
        let mut paths = Vec::new();
        for (j, p) in r.paths.iter().enumerate() {
            if p.starts_with('/') {
                self.canonical(&format!("{f}.paths[{j}]"), p, paths_opts);
                let trimmed = p.trim_end_matches('/');
                paths.push(if trimmed.is_empty() {
                    "/".to_owned()
                } else {
                    trimmed.to_owned()
                });
            } else {
                self.err(
                    format!("{f}.paths[{j}]"),
                    format!("must start with '/', got {p:?}"),
                );
            }
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(m) if m.as_str().bytes().all(|b| b.is_ascii_uppercase()) => methods.push(m),
                _ => self.err(
                    format!("{f}.methods[{j}]"),
                    format!("not an HTTP method in upper case: {m:?}"),
                ),
            }
        }
        AuthzRule {
            name: r.name,
            from,
            paths,
            methods,
        }
    }
}
