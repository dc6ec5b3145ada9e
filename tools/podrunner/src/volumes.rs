//! Pod volumes as directories under the pod's scratch directory, filled the way the kubelet
//! fills them: emptyDir (mode 0777), configMap and secret (one file per key or per listed item,
//! `defaultMode`/`mode`, default 0644), projected (serviceAccountToken minted through
//! [`ClusterApi::create_token`] with the audience and `expirationSeconds`, configMap, secret,
//! downwardAPI). With `fsGroup` every file is group-owned by it; without, a projected token is
//! owned by the pods' single `runAsUser` (the kubelet's rule, so a non-root sidecar can read a
//! 0600 token). The directories are bind-mounted into each container by the container stage.
//!
//! configMap, secret and projected volumes are laid out as the kubelet's atomic writer lays
//! them out (`..data` and a generation directory, [`crate::atomic`]); [`refresh`] reads their
//! ConfigMaps and Secrets again and swaps in what changed, as the kubelet's sync loop does
//! (the runner calls it every [`crate::RunnerOptions::volume_sync`], and
//! [`crate::PodHandle::sync_volumes`] on demand).
//!
//! A projected service-account token is minted again by a refresh once 80 % of its lifetime
//! has passed, or after 24 hours, as the kubelet's token manager does ([`crate::tokens`]).
//!
//! Not implemented (a clear error): hostPath (it would expose the host), persistent volumes,
//! CSI.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequestSpec};
use k8s_openapi::api::core::v1::{KeyToPath, Pod, PodSpec, Volume, VolumeProjection};

use crate::api::ClusterApi;
use crate::atomic::{self, FileOut};
use crate::env::{config_map_data, secret_data, PodFields};
use crate::tokens::{self, Minted};
use crate::{io_err, Error};

/// One bind mount of a container: a volume directory (or a path in it) at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the host (under the pod's scratch directory).
    pub source: PathBuf,
    /// The container's `mountPath`.
    pub target: PathBuf,
    /// `readOnly: true`: a read-only bind mount.
    pub read_only: bool,
}

/// Ownership the kubelet gives volume files.
#[derive(Debug, Clone, Copy, Default)]
struct Owner {
    fs_group: Option<u32>,
    token_uid: Option<u32>,
}

/// Creates and fills every volume of `pod` under `root/<volume name>`; returns the directories.
/// configMap, secret and projected volumes are written as the kubelet's atomic writer does
/// ([`crate::atomic`]), so [`refresh`] can update them in place.
pub async fn materialize(
    pod: &Pod,
    fields: &PodFields,
    api: &dyn ClusterApi,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>, Error> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::Spec("pod has no spec".into()))?;
    let owner = owner_of(spec)?;
    let mut dirs = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let dir = root.join(safe_name(&v.name)?);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        if v.empty_dir.is_some() {
            set_mode(&dir, 0o777)?;
        } else {
            set_mode(&dir, 0o755)?;
            let tokens = Tokens {
                records: root,
                volume: &v.name,
                kept: None,
            };
            let files = payload(v, fields, api, owner, tokens).await?;
            atomic::publish(&dir, &files, owner.fs_group)?;
        }
        if let Some(g) = owner.fs_group {
            chown_tree(&dir, None, Some(g))?;
        }
        dirs.insert(v.name.clone(), dir);
    }
    Ok(dirs)
}

/// Reads the ConfigMaps and Secrets of `pod`'s volumes under `root` again and publishes each
/// volume whose files changed (a projected token is kept until it is due, see
/// [`crate::tokens`]); returns how many volumes changed. What the kubelet's sync loop does.
pub async fn refresh(
    pod: &Pod,
    fields: &PodFields,
    api: &dyn ClusterApi,
    root: &Path,
) -> Result<usize, Error> {
    refresh_at(pod, fields, api, root, SystemTime::now()).await
}

/// [`refresh`] as if the clock said `now` (tokens are minted again by their age).
async fn refresh_at(
    pod: &Pod,
    fields: &PodFields,
    api: &dyn ClusterApi,
    root: &Path,
    now: SystemTime,
) -> Result<usize, Error> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::Spec("pod has no spec".into()))?;
    let owner = owner_of(spec)?;
    let mut changed = 0;
    for v in spec.volumes.iter().flatten() {
        if v.empty_dir.is_some() {
            continue;
        }
        let dir = root.join(safe_name(&v.name)?);
        let tokens = Tokens {
            records: root,
            volume: &v.name,
            kept: Some((&dir, now)),
        };
        let files = payload(v, fields, api, owner, tokens).await?;
        if !atomic::unchanged(&dir, &files)? {
            atomic::publish(&dir, &files, owner.fs_group)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Where a volume's projected tokens come from: minted now, or (on a refresh, `kept`: the
/// volume's directory and the time) the one the volume holds until it is due.
#[derive(Clone, Copy)]
struct Tokens<'a> {
    /// The volumes' root, under which [`crate::tokens`] records each mint.
    records: &'a Path,
    volume: &'a str,
    kept: Option<(&'a Path, SystemTime)>,
}

/// The files of a configMap, secret or projected volume.
async fn payload(
    v: &Volume,
    fields: &PodFields,
    api: &dyn ClusterApi,
    owner: Owner,
    tokens: Tokens<'_>,
) -> Result<Vec<FileOut>, Error> {
    let ns = fields.namespace.as_str();
    let mut out = Vec::new();
    if let Some(cm) = &v.config_map {
        let optional = cm.optional.unwrap_or(false);
        let data = config_map_data(api, ns, &cm.name, optional).await?;
        let mode = cm.default_mode.unwrap_or(0o644);
        keys(&mut out, &data, cm.items.as_deref(), mode, optional)?;
        return Ok(out);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let data = secret_data(api, ns, &name, optional).await?;
        let mode = s.default_mode.unwrap_or(0o644);
        keys(&mut out, &data, s.items.as_deref(), mode, optional)?;
        return Ok(out);
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644);
        for source in p.sources.iter().flatten() {
            project(&mut out, source, mode, fields, api, owner, tokens).await?;
        }
        return Ok(out);
    }
    Err(Error::Unsupported(format!(
        "volume {}: only emptyDir, configMap, secret and projected volumes",
        v.name
    )))
}

async fn project(
    out: &mut Vec<FileOut>,
    source: &VolumeProjection,
    mode: i32,
    fields: &PodFields,
    api: &dyn ClusterApi,
    owner: Owner,
    tokens: Tokens<'_>,
) -> Result<(), Error> {
    let ns = fields.namespace.as_str();
    if let Some(t) = &source.service_account_token {
        let record = tokens::record_path(tokens.records, tokens.volume, relative(&t.path)?);
        let keep = tokens
            .kept
            .filter(|(_, now)| tokens::read(&record).is_some_and(|m| !m.due(*now)));
        let token = match keep {
            Some((dir, _)) => {
                let path = dir.join(relative(&t.path)?);
                std::fs::read(&path).map_err(io_err(format!("read {}", path.display())))?
            }
            None => {
                let spec = TokenRequestSpec {
                    audiences: t.audience.clone().into_iter().collect(),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3600)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(fields.name.clone()),
                        uid: Some(fields.uid.clone()),
                    }),
                };
                let ttl = spec.expiration_seconds.unwrap_or(3600);
                let status = api.create_token(ns, &fields.service_account, spec).await?;
                let expires = status.expiration_timestamp.0.as_second();
                tokens::write(&record, Minted::new(expires, ttl))?;
                status.token.into_bytes()
            }
        };
        let uid = owner.token_uid.filter(|_| owner.fs_group.is_none());
        out.push(file(&t.path, token, mode, uid)?);
        return Ok(());
    }
    if let Some(cm) = &source.config_map {
        let optional = cm.optional.unwrap_or(false);
        let data = config_map_data(api, ns, &cm.name, optional).await?;
        return keys(out, &data, cm.items.as_deref(), mode, optional);
    }
    if let Some(s) = &source.secret {
        let optional = s.optional.unwrap_or(false);
        let data = secret_data(api, ns, &s.name, optional).await?;
        return keys(out, &data, s.items.as_deref(), mode, optional);
    }
    if let Some(d) = &source.downward_api {
        for item in d.items.iter().flatten() {
            let Some(f) = &item.field_ref else {
                return Err(Error::Unsupported("downwardAPI resourceFieldRef".into()));
            };
            let value = fields.field(&f.field_path)?;
            out.push(file(
                &item.path,
                value.into_bytes(),
                item.mode.unwrap_or(mode),
                None,
            )?);
        }
        return Ok(());
    }
    Err(Error::Unsupported(
        "projected source (clusterTrustBundle)".into(),
    ))
}

/// The keys of a ConfigMap or Secret as files: every key, or only `items` (to their paths).
fn keys(
    out: &mut Vec<FileOut>,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: i32,
    optional: bool,
) -> Result<(), Error> {
    match items {
        None => {
            for (k, v) in data {
                out.push(file(k, v.clone(), mode, None)?);
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        out.push(file(
                            &item.path,
                            v.clone(),
                            item.mode.unwrap_or(mode),
                            None,
                        )?);
                    }
                    None if optional => {}
                    None => return Err(Error::Spec(format!("key {} not found", item.key))),
                }
            }
        }
    }
    Ok(())
}

/// A payload file at `rel` (a relative path without `..`, checked) with `mode`.
fn file(rel: &str, data: Vec<u8>, mode: i32, uid: Option<u32>) -> Result<FileOut, Error> {
    let mode = u32::try_from(mode)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| Error::Spec(format!("file mode {mode} is not 0 to 0777")))?;
    Ok(FileOut {
        rel: relative(rel)?.to_path_buf(),
        data,
        mode,
        uid,
    })
}

/// A relative path of normal components only: volume item paths and `subPath` come from the
/// spec and must not escape their volume.
pub(crate) fn relative(rel: &str) -> Result<&Path, Error> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::Spec(format!(
            "path {rel:?} must be relative, without `..`"
        )));
    }
    Ok(p)
}

fn safe_name(name: &str) -> Result<&str, Error> {
    relative(name)?;
    if name.contains('/') {
        return Err(Error::Spec(format!("volume name {name:?}")));
    }
    Ok(name)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn chown_tree(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
    let uid = uid.map(nix::unistd::Uid::from_raw);
    let gid = gid.map(nix::unistd::Gid::from_raw);
    nix::unistd::chown(path, uid, gid)
        .map_err(|e| io_err(format!("chown {}", path.display()))(e.into()))?;
    if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(io_err(format!("read {}", path.display())))?;
        for e in entries {
            let e = e.map_err(io_err(format!("read {}", path.display())))?;
            chown_tree(&e.path(), uid.map(|u| u.as_raw()), gid.map(|g| g.as_raw()))?;
        }
    }
    Ok(())
}

/// `fsGroup`, and the one `runAsUser` every container shares (if they share one).
fn owner_of(spec: &PodSpec) -> Result<Owner, Error> {
    let pod_ctx = spec.security_context.as_ref();
    let fs_group = pod_ctx.and_then(|c| c.fs_group).map(id).transpose()?;
    let pod_uid = pod_ctx.and_then(|c| c.run_as_user);
    let uids: std::collections::BTreeSet<Option<i64>> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.run_as_user)
                .or(pod_uid)
        })
        .collect();
    let token_uid = match uids.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(u)] => Some(id(*u)?),
        _ => None,
    };
    Ok(Owner {
        fs_group,
        token_uid,
    })
}

/// A user or group id from the spec (an `int64` there).
pub(crate) fn id(v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Spec(format!("id {v} out of range")))
}

/// The bind mounts of one container's `volumeMounts`.
pub fn mounts_of(
    container: &k8s_openapi::api::core::v1::Container,
    dirs: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, Error> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let dir = dirs.get(&m.name).ok_or_else(|| {
            Error::Spec(format!(
                "container {}: no volume named {}",
                container.name, m.name
            ))
        })?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => dir.join(relative(sub)?),
            None => dir.clone(),
        };
        let target = PathBuf::from(&m.mount_path);
        if !target.is_absolute() {
            return Err(Error::Spec(format!(
                "mountPath {} is not absolute",
                m.mount_path
            )));
        }
        out.push(Mount {
            source,
            target,
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape_the_volume() {
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "./."] {
            assert!(relative(bad).is_err(), "{bad:?} accepted");
        }
        assert!(relative("a/b.crt").is_ok());
    }

    /// The injected sidecar's identity volume: a token and the trust bundle ConfigMap,
    /// projected. An edit of the ConfigMap reaches the file by a refresh; the token stays until
    /// 80 % of its lifetime has passed, then a refresh mints a new one.
    #[tokio::test]
    async fn a_refresh_swaps_in_the_edited_config_map_and_renews_the_token_when_due() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "identity", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "weft"}},
                    {"configMap": {"name": "weft-trust-bundle",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
                {"name": "plain", "configMap": {"name": "weft-trust-bundle"}},
                {"name": "scratch", "emptyDir": {}}]}
        }))
        .expect("a Pod");
        let api = crate::InMemoryApi::new();
        api.put_config_map("shop", "weft-trust-bundle", &[("ca.crt", "old\n")]);
        let fields = PodFields::of(
            &pod,
            "10.0.0.2".parse().expect("ip"),
            "n",
            "10.0.0.1".parse().expect("ip"),
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = materialize(&pod, &fields, &api, tmp.path())
            .await
            .expect("materialize");
        let read = |vol: &str, f: &str| std::fs::read_to_string(dirs[vol].join(f)).expect("read");
        let token = read("identity", "token");
        assert_eq!(read("identity", "ca.crt"), "old\n");
        assert_eq!(
            refresh(&pod, &fields, &api, tmp.path())
                .await
                .expect("refresh"),
            0
        );

        api.put_config_map("shop", "weft-trust-bundle", &[("ca.crt", "old\nnew\n")]);
        assert_eq!(
            refresh(&pod, &fields, &api, tmp.path())
                .await
                .expect("refresh"),
            2
        );
        assert_eq!(read("identity", "ca.crt"), "old\nnew\n");
        assert_eq!(read("plain", "ca.crt"), "old\nnew\n");
        assert_eq!(read("identity", "token"), token, "the token is kept");
        assert_eq!(api.tokens().len(), 1, "no second token minted");
        assert_eq!(
            refresh(&pod, &fields, &api, tmp.path())
                .await
                .expect("refresh"),
            0
        );

        // The token's lifetime is the default hour: kept at 70 %, minted again at 81 %.
        let later = |secs| std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
        let at = |secs| refresh_at(&pod, &fields, &api, tmp.path(), later(secs));
        assert_eq!(at(2520).await.expect("refresh"), 0);
        assert_eq!(api.tokens().len(), 1);
        assert_eq!(at(2916).await.expect("refresh"), 1);
        assert_eq!(api.tokens().len(), 2, "a second token minted");
        let minted = &api.tokens()[1];
        assert_eq!(minted.audiences, ["weft"]);
        assert_eq!(minted.pod.as_deref(), Some("p"));
        assert_ne!(read("identity", "token"), token);
        assert_eq!(read("identity", "ca.crt"), "old\nnew\n");
        // Nothing but volumes is mounted from the volumes' root: the record sits beside them.
        assert!(tmp.path().join(".tokens").join("identity").is_dir());
    }
}
