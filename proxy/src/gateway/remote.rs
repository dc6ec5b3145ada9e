//! The gateway's config from the control plane (`weft-proxy --gateway PATH --gateway-name
//! <namespace>/<name>`): the sidecar's control-plane stream names the Gateway in `Hello`
//! and receives its `GatewayConfig` (the gateway file's text and the files it names) as a
//! resource of its own. The stream hands each one to the gateway's reloader through a
//! [`GatewayFeed`]; the reloader puts it in force through the same validate-build-swap step
//! as a changed gateway file ([`crate::gateway::reload`]) and the stream answers `Ack`, or
//! `Nack` with the reason while the config in force keeps serving.
//!
//! Files: a config's files are written to `.control-plane/<version>/` beside PATH (its own
//! directory, so a refused config never touches the files the config in force reads), the
//! text is validated in memory against that directory, and once in force the config is
//! persisted as the last good: its files beside PATH, then PATH itself, each replaced
//! atomically. A gateway restarted without the control plane serves PATH. Older staged
//! versions are removed.

use std::path::{Component, Path, PathBuf};

use tokio::sync::{mpsc, oneshot};
use weft_api::v1::GatewayConfig;

/// The prefix of the gateway config's resource name in `Ack` / `Nack`.
pub const RESOURCE_PREFIX: &str = "gateway/";
/// Where staged configs are kept, beside the gateway file.
pub const STAGING: &str = ".control-plane";
/// Most files one config may name (a certificate and key per listener).
const MAX_FILES: usize = 256;
/// Most bytes of one config's files together.
const MAX_BYTES: usize = 8 << 20;

/// One config from the stream, with where its verdict goes.
pub struct Remote {
    /// The config.
    pub config: GatewayConfig,
    /// `Ok` once in force, else the NACK reason.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// The stream's end of the way to the gateway's reloader.
#[derive(Debug)]
pub struct GatewayFeed {
    /// `<namespace>/<name>` of the Gateway served (`Hello.gateway`).
    pub name: String,
    tx: mpsc::Sender<Remote>,
}

impl GatewayFeed {
    /// A feed for Gateway `name` and the receiver the reloader takes configs from.
    pub fn new(name: String) -> (Self, mpsc::Receiver<Remote>) {
        let (tx, rx) = mpsc::channel(4);
        (GatewayFeed { name, tx }, rx)
    }

    /// Hand `config` to the reloader and wait for its verdict (the NACK reason on error).
    pub async fn apply(&self, config: GatewayConfig) -> Result<(), String> {
        if config.gateway != self.name {
            return Err(format!(
                "a config for Gateway {:?}, but this gateway serves {:?}",
                config.gateway, self.name
            ));
        }
        let (reply, verdict) = oneshot::channel();
        self.tx
            .send(Remote { config, reply })
            .await
            .map_err(|_| "the gateway's reloader has stopped".to_owned())?;
        verdict
            .await
            .map_err(|_| "the gateway's reloader dropped the config".to_owned())?
    }
}

/// Check a `<namespace>/<name>` as `--gateway-name` takes it.
pub fn check_name(name: &str) -> Result<(), String> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match name.split_once('/') {
        Some((ns, n)) if label(ns) && label(n) => Ok(()),
        _ => Err(format!(
            "--gateway-name {name:?}: expected <namespace>/<name> (lower-case DNS labels)"
        )),
    }
}

/// The relative path `name` names, if it stays below its directory.
fn relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let plain = !name.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !name.starts_with(STAGING);
    plain.then(|| p.to_owned())
}

/// Check `config`'s version and files (names below the gateway's directory, bounded count
/// and size).
fn check(config: &GatewayConfig) -> Result<(), String> {
    let v = &config.version;
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "version {:?}: not a plain word",
            v.chars().take(80).collect::<String>()
        ));
    }
    if config.files.len() > MAX_FILES {
        return Err(format!("{} files, over {MAX_FILES}", config.files.len()));
    }
    let bytes: usize = config.files.values().map(Vec::len).sum();
    if bytes > MAX_BYTES {
        return Err(format!("{bytes} bytes of files, over {MAX_BYTES}"));
    }
    for name in config.files.keys() {
        if relative(name).is_none() {
            return Err(format!(
                "file {:?}: not a relative path below the gateway's directory",
                name.chars().take(200).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// The gateway file's directory.
fn dir_of(gateway_file: &Path) -> &Path {
    gateway_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Write `files` under `dir`, keys (`.key`) mode 0600, each replaced atomically.
fn write_files(dir: &Path, config: &GatewayConfig) -> std::io::Result<()> {
    let mut names: Vec<&String> = config.files.keys().collect();
    names.sort();
    for name in names {
        let Some(rel) = relative(name) else { continue };
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        crate::store::write_atomically(&path, &config.files[name], mode)?;
    }
    Ok(())
}

/// Check `config` and write its files to its own staging directory beside `gateway_file`;
/// returns the directory its relative paths resolve against.
pub fn stage(gateway_file: &Path, config: &GatewayConfig) -> Result<PathBuf, String> {
    check(config)?;
    let dir = dir_of(gateway_file).join(STAGING).join(&config.version);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_files(&dir, config).map_err(|e| format!("staging in {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Keep `config` (in force) as the last good: its files beside `gateway_file`, then the file.
pub fn persist(gateway_file: &Path, config: &GatewayConfig) -> std::io::Result<()> {
    write_files(dir_of(gateway_file), config)?;
    let text = format!(
        "# The last good config of Gateway {} (version {}) from the control plane, written by \
         weft-proxy: a restart without the control plane serves it. Replaced on the next one.\n{}",
        config.gateway, config.version, config.config_yaml
    );
    crate::store::write_atomically(gateway_file, text.as_bytes(), 0o644)
}

/// Remove the staged configs beside `gateway_file` other than version `keep`.
pub fn clean(gateway_file: &Path, keep: Option<&str>) {
    let staging = dir_of(gateway_file).join(STAGING);
    let Ok(entries) = std::fs::read_dir(&staging) else {
        return;
    };
    for e in entries.flatten() {
        if keep.is_some_and(|k| e.file_name() == k) {
            continue;
        }
        if let Err(err) = std::fs::remove_dir_all(e.path()) {
            log::warn!("removing {}: {err}", e.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(files: &[(&str, &str)]) -> GatewayConfig {
        GatewayConfig {
            gateway: "shop/edge".into(),
            version: "abc123".into(),
            config_yaml: "listen: {}\n".into(),
            files: files
                .iter()
                .map(|(n, b)| ((*n).to_owned(), b.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn files_outside_the_gateways_directory_are_refused() {
        for bad in [
            "../x.crt",
            "/etc/x",
            "tls/../../x",
            "",
            ".control-plane/v/x",
        ] {
            let e = check(&config(&[(bad, "x")])).expect_err(bad);
            assert!(e.contains("not a relative path"), "{bad}: {e}");
        }
        let mut c = config(&[("tls/listener-0.crt", "x")]);
        check(&c).expect("plain");
        c.version = "../v".into();
        assert!(check(&c).expect_err("version").contains("not a plain word"));
        let big = "x".repeat(MAX_BYTES + 1);
        assert!(check(&config(&[("a", &big)]))
            .expect_err("size")
            .contains("over"));
        assert!(check_name("shop/edge").is_ok());
        assert!(check_name("shop").is_err() && check_name("Shop/edge").is_err());
    }

    #[test]
    fn a_config_is_staged_apart_then_persisted_and_older_stages_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("gw/gateway.yaml");
        let c = config(&[
            ("tls/listener-0.crt", "CERT"),
            ("tls/listener-0.key", "KEY"),
        ]);
        let staged = stage(&file, &c).expect("staged");
        assert_eq!(staged, dir.path().join("gw/.control-plane/abc123"));
        assert_eq!(
            std::fs::read_to_string(staged.join("tls/listener-0.crt")).expect("crt"),
            "CERT"
        );
        assert!(
            !file.exists(),
            "nothing beside the file until it is in force"
        );
        persist(&file, &c).expect("persist");
        let text = std::fs::read_to_string(&file).expect("file");
        assert!(
            text.contains("Gateway shop/edge (version abc123)") && text.ends_with("listen: {}\n")
        );
        let key = dir.path().join("gw/tls/listener-0.key");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = stage(
            &file,
            &GatewayConfig {
                version: "def".into(),
                ..c.clone()
            },
        )
        .expect("2");
        clean(&file, Some("def"));
        assert!(!staged.exists() && other.exists());
    }
}
