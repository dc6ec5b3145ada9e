//! The mesh policy the control plane holds: every service, route and authorization block of
//! the operators' policy files, validated as a whole, and cut into one [`PolicySnapshot`] per
//! calling service.
//!
//! Validation is `weft-policy`'s, the sidecar's own code: the files are parsed into its wire
//! types (unknown fields rejected) and checked by [`weft_policy::validate_mesh`]. Every error
//! names its file, line and column, and the reason:
//!
//! ```text
//! policy/routes.yaml:14:20: routes[2].match.path.regex: bad regex "((": regex parse error: ...
//! policy/orders.yaml:6:5: services[0]: unknown field `colour`, expected one of `name`, ...
//! ```
//!
//! Field paths in errors count within their own file (`routes[2]` is the third route of that
//! file).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use weft_policy::wire::{
    Authorization, MeshFile, PolicySnapshot, Route, Service, ServiceAuthorization,
};

/// One problem in the policy files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// Line and column (from 1) of the node at fault, when known.
    pub location: Option<(usize, usize)>,
    /// Field path within the file, e.g. `routes[2].match.path.regex`, for errors found after
    /// parsing; `None` for YAML syntax and schema errors (their reason names the field).
    pub field: Option<String>,
    /// What is wrong, with the bad value.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        match &self.field {
            Some(field) => write!(f, ": {field}: {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

/// Why a policy was refused: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// A single problem with a file as a whole (unreadable, missing).
    pub fn file(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        PolicyErrors(vec![PolicyError {
            file: file.into(),
            location: None,
            field: None,
            reason: reason.into(),
        }])
    }

    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &PolicyError> {
        self.0.iter()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Where an item of the merged policy came from: a file and its index in that file's section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    file: usize,
    index: usize,
}

/// A valid mesh policy: the merged sections of its files, in file order (files sorted by name,
/// items in the order they are written).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshPolicy {
    files: Vec<PathBuf>,
    /// The text of each file exactly as validated, so history keeps what was in force rather
    /// than what the directory holds a moment later.
    texts: Vec<String>,
    mesh: MeshFile,
    version: String,
}

impl MeshPolicy {
    /// Parse and validate policy files given as (name, text), in the order given. Errors from
    /// every file are reported together; semantic checks run only when every file parses.
    pub fn from_texts(files: &[(PathBuf, String)]) -> Result<Self, PolicyErrors> {
        let mut errors = Vec::new();
        let mut parsed = Vec::with_capacity(files.len());
        for (path, text) in files {
            match serde_yaml::from_str::<Option<MeshFile>>(text) {
                Ok(doc) => parsed.push(doc.unwrap_or_default()),
                Err(e) => errors.push(syntax_error(path, &e)),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }

        let mut mesh = MeshFile::default();
        let (mut services, mut routes, mut authz) = (Vec::new(), Vec::new(), Vec::new());
        for (file, doc) in parsed.into_iter().enumerate() {
            let origin = |index| Origin { file, index };
            services.extend((0..doc.services.len()).map(origin));
            routes.extend((0..doc.routes.len()).map(origin));
            authz.extend((0..doc.authorization.len()).map(origin));
            mesh.services.extend(doc.services);
            mesh.routes.extend(doc.routes);
            mesh.authorization.extend(doc.authorization);
        }

        if let Err(field_errors) = weft_policy::validate_mesh(mesh.clone()) {
            let mut errors: Vec<(Origin, PolicyError)> = field_errors
                .into_iter()
                .map(|e| {
                    let (origin, field) = localize(&e.field, &services, &routes, &authz);
                    let (path, text) = &files[origin.file];
                    let location = weft_policy::locate(text, &field).map(|l| (l.line, l.column));
                    let error = PolicyError {
                        file: path.clone(),
                        location,
                        field: Some(field),
                        reason: e.reason,
                    };
                    (origin, error)
                })
                .collect();
            // File order, then line order: the order an operator reads them in.
            errors.sort_by_key(|(o, e)| (o.file, e.location));
            return Err(PolicyErrors(errors.into_iter().map(|(_, e)| e).collect()));
        }

        let version = digest(&mesh);
        Ok(MeshPolicy {
            files: files.iter().map(|(p, _)| p.clone()).collect(),
            texts: files.iter().map(|(_, t)| t.clone()).collect(),
            mesh,
            version,
        })
    }

    /// A policy from a source other than files (Kubernetes resources), validated as a mesh whose
    /// endpoints change at run time ([`weft_policy::validate_mesh_dynamic`]). It is kept as one
    /// document named `name` (its YAML), so history and diffs show it like a policy file.
    pub fn from_mesh(name: &str, mesh: MeshFile) -> Result<Self, PolicyErrors> {
        let text =
            serde_yaml::to_string(&mesh).map_err(|e| PolicyErrors::file(name, e.to_string()))?;
        if let Err(errors) = weft_policy::validate_mesh_dynamic(mesh.clone()) {
            return Err(PolicyErrors(
                errors
                    .into_iter()
                    .map(|e| PolicyError {
                        file: name.into(),
                        location: weft_policy::locate(&text, &e.field).map(|l| (l.line, l.column)),
                        field: Some(e.field),
                        reason: e.reason,
                    })
                    .collect(),
            ));
        }
        let version = digest(&mesh);
        Ok(MeshPolicy {
            files: vec![PathBuf::from(name)],
            texts: vec![text],
            mesh,
            version,
        })
    }

    /// Read, parse and validate policy files, in the order given.
    pub fn load_files(paths: &[PathBuf]) -> Result<Self, PolicyErrors> {
        let mut texts = Vec::with_capacity(paths.len());
        let mut errors = Vec::new();
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(t) => texts.push((p.clone(), t)),
                Err(e) => errors.extend(PolicyErrors::file(p, format!("cannot read: {e}")).0),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Self::from_texts(&texts)
    }

    /// A content hash of the whole policy: equal policies have equal versions.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The files it was read from, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Each file's name (its last path component) and the text that was validated.
    pub fn file_texts(&self) -> std::collections::BTreeMap<String, String> {
        self.files
            .iter()
            .zip(&self.texts)
            .map(|(p, t)| (file_name(p), t.clone()))
            .collect()
    }

    /// Every service, in file order.
    pub fn services(&self) -> &[Service] {
        &self.mesh.services
    }

    /// Every route, in match order per destination.
    pub fn routes(&self) -> &[Route] {
        &self.mesh.routes
    }

    /// Every authorization block, one per protected service.
    pub fn authorization(&self) -> &[ServiceAuthorization] {
        &self.mesh.authorization
    }

    /// The names of the services, sorted.
    pub fn service_names(&self) -> BTreeSet<&str> {
        self.mesh.services.iter().map(|s| s.name.as_str()).collect()
    }

    /// What the sidecars of `service` need, and nothing more:
    /// - `services`: every other service of the mesh (a sidecar does not route to its own
    ///   service through the mesh), with endpoints and traffic policies;
    /// - `routes`: the routes to those services that apply to this caller (no `from`, or a
    ///   `from` naming it), in order, without `from`;
    /// - `authorization`: the block for this service, if any (none allows every mesh identity);
    /// - `version`: a hash of the above, so an unchanged snapshot keeps its version across
    ///   policy changes that do not concern this service.
    ///
    /// A service the policy does not list gets every service and no authorization block.
    pub fn snapshot_for(&self, service: &str) -> PolicySnapshot {
        // One escaped-slash setting per service, whichever side names it (validation refused
        // the two disagreeing): callers canonicalize as the service's own inbound does.
        let slashes = |name: &str| {
            let own = self.mesh.services.iter().find(|s| s.name == name);
            own.and_then(|s| s.escaped_slashes).or_else(|| {
                let block = self.mesh.authorization.iter().find(|a| a.service == name);
                block.and_then(|a| a.escaped_slashes)
            })
        };
        let services: Vec<Service> = self
            .mesh
            .services
            .iter()
            .filter(|s| s.name != service)
            .map(|s| Service {
                escaped_slashes: slashes(&s.name),
                ..s.clone()
            })
            .collect();
        let routes = self
            .mesh
            .routes
            .iter()
            .filter(|r| r.service != service)
            .filter(|r| {
                r.from
                    .as_ref()
                    .is_none_or(|f| f.iter().any(|c| c == service))
            })
            .map(|r| Route {
                from: None,
                ..r.clone()
            })
            .collect();
        let mut authorization = self
            .mesh
            .authorization
            .iter()
            .find(|a| a.service == service)
            .map(ServiceAuthorization::to_sidecar);
        if let Some(keep) = slashes(service) {
            // No block allows every mesh identity, as a block with no rules does.
            authorization
                .get_or_insert_with(Authorization::default)
                .escaped_slashes = Some(keep);
        }
        let mut snapshot = PolicySnapshot {
            version: String::new(),
            services,
            routes,
            authorization,
        };
        snapshot.version = digest(&snapshot);
        snapshot
    }
}

impl MeshPolicy {
    /// [`snapshot_for`](Self::snapshot_for) with endpoints registered at run time merged into
    /// the services' endpoint lists (after the static ones, skipping addresses already
    /// listed), and the version recomputed over the result.
    pub fn snapshot_with_endpoints(
        &self,
        service: &str,
        registered: &std::collections::BTreeMap<String, Vec<weft_policy::wire::Endpoint>>,
    ) -> PolicySnapshot {
        let mut snapshot = self.snapshot_for(service);
        for s in &mut snapshot.services {
            if let Some(extra) = registered.get(&s.name) {
                for e in extra {
                    if !s.endpoints.iter().any(|x| x.address == e.address) {
                        s.endpoints.push(e.clone());
                    }
                }
            }
        }
        snapshot.version = String::new();
        snapshot.version = digest(&snapshot);
        snapshot
    }
}

impl MeshPolicy {
    /// [`snapshot_for`](Self::snapshot_for) without any service's endpoints, for a sidecar
    /// that takes endpoints as separate per-service resources
    /// ([`crate::push::hub::resources`]): its version changes with the policy only, never
    /// with a pod coming or going.
    pub fn snapshot_without_endpoints(&self, service: &str) -> PolicySnapshot {
        let mut snapshot = self.snapshot_for(service);
        for s in &mut snapshot.services {
            s.endpoints.clear();
        }
        snapshot.version = String::new();
        snapshot.version = digest(&snapshot);
        snapshot
    }

    /// The endpoints the policy itself lists for `service` (static, or on Kubernetes its
    /// EndpointSlices'); empty for a service it does not list.
    pub fn static_endpoints(&self, service: &str) -> &[weft_policy::wire::Endpoint] {
        self.mesh
            .services
            .iter()
            .find(|s| s.name == service)
            .map_or(&[], |s| &s.endpoints[..])
    }
}

/// The last component of `path`, as shown to operators (`mesh.yaml`).
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A syntax or schema error from serde_yaml: its location goes in front, once.
fn syntax_error(path: &Path, e: &serde_yaml::Error) -> PolicyError {
    let location = e.location().map(|l| (l.line(), l.column()));
    let mut reason = e.to_string();
    if let Some((line, column)) = location {
        // serde_yaml says where at the end (or mid-sentence, before libyaml's context).
        reason = reason.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    PolicyError {
        file: path.to_owned(),
        location,
        field: None,
        reason,
    }
}

/// Turn a field path of the merged policy (`routes[7].match`) into its file and the path
/// within that file (`routes[2].match`).
fn localize(
    field: &str,
    services: &[Origin],
    routes: &[Origin],
    authz: &[Origin],
) -> (Origin, String) {
    let parsed = field.split_once('[').and_then(|(section, rest)| {
        let (index, tail) = rest.split_once(']')?;
        let index: usize = index.parse().ok()?;
        let origins = match section {
            "services" => services,
            "routes" => routes,
            "authorization" => authz,
            _ => return None,
        };
        let o = *origins.get(index)?;
        Some((o, format!("{section}[{}]{tail}", o.index)))
    });
    // Every mesh error names an item of a section; were one not to, blame the first file.
    parsed.unwrap_or_else(|| (Origin { file: 0, index: 0 }, field.to_owned()))
}

/// A short content hash: the first 16 hex digits of the SHA-256 of the value's JSON.
fn digest<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_paths_map_back_to_their_file() {
        let o = |file, index| Origin { file, index };
        let routes = [o(0, 0), o(1, 0), o(1, 1)];
        assert_eq!(
            localize("routes[2].match.path.regex", &[], &routes, &[]),
            (o(1, 1), "routes[1].match.path.regex".to_owned())
        );
        assert_eq!(
            localize("authorization[0].rules[3].from[1]", &[], &[], &[o(2, 4)]),
            (o(2, 4), "authorization[4].rules[3].from[1]".to_owned())
        );
        assert_eq!(localize("listen", &[], &[], &[]).1, "listen");
    }

    #[test]
    fn errors_render_file_line_field_and_reason() {
        let e = PolicyError {
            file: "p/routes.yaml".into(),
            location: Some((14, 20)),
            field: Some("routes[2].match.path.regex".into()),
            reason: "bad regex".into(),
        };
        assert_eq!(
            e.to_string(),
            "p/routes.yaml:14:20: routes[2].match.path.regex: bad regex"
        );
        let e = PolicyError {
            location: None,
            field: None,
            ..e
        };
        assert_eq!(e.to_string(), "p/routes.yaml: bad regex");
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;
    use std::collections::BTreeMap;
    use weft_policy::wire::Endpoint;

    #[test]
    fn registered_endpoints_merge_after_static_ones_and_change_the_version() {
        let text = "services:\n  - name: frontend\n    identity: spiffe://weft.local/ns/default/sa/frontend\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n    endpoints: [{address: \"10.0.0.1:15006\"}]\n";
        let p = MeshPolicy::from_texts(&[("p.yaml".into(), text.to_owned())]).expect("valid");
        let none = p.snapshot_with_endpoints("frontend", &BTreeMap::new());
        assert_eq!(none, p.snapshot_for("frontend"));
        let ep = |a: &str| Endpoint {
            address: a.to_owned(),
            labels: BTreeMap::from([("version".to_owned(), "v2".to_owned())]),
        };
        let registered = BTreeMap::from([(
            "orders".to_owned(),
            vec![ep("10.0.0.1:15006"), ep("10.0.0.2:15006")],
        )]);
        let s = p.snapshot_with_endpoints("frontend", &registered);
        let orders = &s.services[0];
        let addrs: Vec<&str> = orders
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:15006", "10.0.0.2:15006"]);
        assert!(
            orders.endpoints[0].labels.is_empty(),
            "the static entry wins"
        );
        assert_ne!(s.version, none.version);
        // Orders' own snapshot does not list orders, so its version does not move.
        assert_eq!(
            p.snapshot_with_endpoints("orders", &registered).version,
            p.snapshot_for("orders").version
        );
    }
}

#[cfg(test)]
mod escaped_slash_tests {
    use super::*;
    use weft_policy::wire::{EscapedSlashes, TrafficPolicy};

    const SERVICES: &str = "services:\n  - name: frontend\n    identity: spiffe://weft.local/ns/default/sa/frontend\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n    endpoints: [{address: \"10.0.0.1:15006\"}]\n";

    fn policy(text: &str) -> Result<MeshPolicy, PolicyErrors> {
        MeshPolicy::from_texts(&[("p.yaml".into(), text.to_owned())])
    }

    /// Both sides of `orders`: what frontend's sidecar does with `%2F` towards orders, and
    /// what orders' own inbound does.
    fn sides(p: &MeshPolicy) -> (Option<EscapedSlashes>, Option<EscapedSlashes>) {
        let callers = p.snapshot_for("frontend");
        let outbound = callers.services.iter().find(|s| s.name == "orders");
        let own = p.snapshot_for("orders").authorization;
        (
            outbound.and_then(|s| s.escaped_slashes),
            own.and_then(|a| a.escaped_slashes),
        )
    }

    /// Set on either side (the service, or its authorization block), the setting reaches
    /// both: callers never forward what the service's own sidecar refuses, nor the reverse.
    #[test]
    fn one_setting_reaches_callers_and_the_service_itself() {
        let keep = Some(EscapedSlashes::Keep);
        let on_service = SERVICES.replace(
            "    endpoints: [{address: \"10.0.0.1:15006\"}]\n",
            "    endpoints: [{address: \"10.0.0.1:15006\"}]\n    escaped_slashes: keep\n",
        );
        assert_eq!(sides(&policy(&on_service).expect("valid")), (keep, keep));
        let on_authz = format!(
            "{SERVICES}authorization:\n  - service: orders\n    escaped_slashes: keep\n    rules: [{{name: all, from: [\"*\"]}}]\n"
        );
        assert_eq!(sides(&policy(&on_authz).expect("valid")), (keep, keep));
        assert_eq!(sides(&policy(SERVICES).expect("valid")), (None, None));
    }

    /// The two sides disagreeing is an error at the authorization block's field, with both
    /// values named.
    #[test]
    fn disagreeing_sides_are_refused_at_the_field() {
        let text = format!(
            "{}authorization:\n  - service: orders\n    escaped_slashes: reject\n",
            SERVICES.replace(
                "    endpoints: [{address: \"10.0.0.1:15006\"}]\n",
                "    endpoints: [{address: \"10.0.0.1:15006\"}]\n    escaped_slashes: keep\n",
            )
        );
        let errors = policy(&text).expect_err("disagreement");
        let e = errors.iter().next().expect("one error");
        assert_eq!(e.field.as_deref(), Some("authorization[0].escaped_slashes"));
        assert_eq!(e.location, Some((10, 22)), "{e}");
        assert!(
            e.reason
                .contains("reject here but keep on service \"orders\""),
            "{e}"
        );
    }

    /// A `TrafficPolicy` (the Kubernetes resource) sets it like the service field does.
    #[test]
    fn a_traffic_policy_sets_it() {
        let mut mesh: MeshFile = serde_yaml::from_str(SERVICES).expect("wire");
        let tp = TrafficPolicy {
            service: "orders".into(),
            escaped_slashes: Some(EscapedSlashes::Keep),
            ..TrafficPolicy::default()
        };
        tp.apply_to(&mut mesh.services[1]);
        let p = MeshPolicy::from_mesh("kubernetes", mesh).expect("valid");
        let keep = Some(EscapedSlashes::Keep);
        assert_eq!(sides(&p), (keep, keep));
    }
}
