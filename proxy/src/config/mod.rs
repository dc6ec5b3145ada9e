//! The sidecar's config: the policy model of the `weft-policy` crate (wire types, validated
//! types and their validation), shared with the control plane. Re-exported whole so the
//! sidecar reads `crate::config::*` as before.

pub use weft_policy::*;

use std::path::Path;

/// `weft-proxy --config-env NAME`: write the config text held in env var `name` to `path`
/// (mode 0600, atomically) before anything reads `path`. On Kubernetes the injector puts the
/// sidecar's config in an env var, where the kubelet expands `$(POD_NAMESPACE)` and the like,
/// and `path` lies in a writable emptyDir (the root filesystem is read-only); relative paths
/// in the config then resolve against that directory, as for any config file. Every later
/// reader (bootstrap, the store, reloads) keeps reading a plain file.
pub fn write_from_env(name: &str, path: &Path) -> Result<(), String> {
    let text = std::env::var(name).map_err(|e| format!("env var {name}: {e}"))?;
    if text.trim().is_empty() {
        return Err(format!("env var {name} is empty"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::state::write_atomically(path, text.as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_env_is_written_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/config.yaml");
        let text = "service:\n  name: orders.shop\n  identity: spiffe://weft.local/ns/shop/sa/orders\n  \
                    app: 127.0.0.1:8080\ntls:\n  cert: cert.pem\n  key: key.pem\n  trust_bundle: ca.crt\n";
        // A name no other test uses: the environment is shared by the test threads.
        std::env::set_var("WEFT_TEST_CONFIG_ENV_7F3A", text);
        write_from_env("WEFT_TEST_CONFIG_ENV_7F3A", &path).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        let raw: wire::ConfigFile = serde_yaml::from_str(text).expect("parse");
        assert_eq!(raw.service.name, "orders.shop");
        assert!(write_from_env("WEFT_TEST_CONFIG_ENV_MISSING_7F3A", &path)
            .expect_err("missing")
            .contains("WEFT_TEST_CONFIG_ENV_MISSING_7F3A"));
    }
}
