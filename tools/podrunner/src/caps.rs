//! Linux capabilities as a container runtime gives them: the runtime's default set, minus the
//! spec's `securityContext.capabilities.drop`, plus its `add` (`ALL` in either means every
//! capability), everything for `privileged: true`. The result is the container's bounding set
//! (`setpriv --bounding-set`), so a process running as UID 0 holds exactly those in its
//! effective set after `execve`, and a non-root process none (Kubernetes sets no ambient
//! capabilities); `allowPrivilegeEscalation: false` is `no_new_privs` (`setpriv
//! --no-new-privs`): no setuid binary or file capability can add any.

use k8s_openapi::api::core::v1::SecurityContext;

use crate::Error;

/// The capabilities containerd and CRI-O give a container whose spec adds or drops none
/// (containerd's `oci.DefaultCaps`, Docker's defaults).
pub(crate) const RUNTIME_DEFAULT: [&str; 14] = [
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

/// Every capability `setpriv` (libcap-ng) knows by name, in kernel order.
const KNOWN: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// What the spec asks of the process's privileges beyond its user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Privileges {
    /// The bounding set, lowercase names without `cap_`; `None`: unchanged (privileged).
    pub bounding: Option<Vec<String>>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
}

/// `NET_ADMIN` or `CAP_NET_ADMIN` (any case) as `net_admin`; `None` for `ALL`.
fn name(spec: &str) -> Result<Option<String>, Error> {
    let lower = spec.trim().to_ascii_lowercase();
    if lower == "all" {
        return Ok(None);
    }
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    if KNOWN.contains(&bare) {
        Ok(Some(bare.to_owned()))
    } else {
        Err(Error::Spec(format!("unknown capability {spec:?}")))
    }
}

/// The privileges of a container with this security context (see the module docs).
pub(crate) fn of(sc: Option<&SecurityContext>) -> Result<Privileges, Error> {
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    if sc.and_then(|s| s.privileged) == Some(true) {
        return Ok(Privileges {
            bounding: None,
            no_new_privs,
        });
    }
    let mut set: Vec<String> = RUNTIME_DEFAULT.iter().map(|c| (*c).to_owned()).collect();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    for d in caps.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        match name(d)? {
            Some(n) => set.retain(|c| *c != n),
            None => set.clear(),
        }
    }
    for a in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        match name(a)? {
            Some(n) if !set.contains(&n) => set.push(n),
            Some(_) => {}
            None => set = KNOWN.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
    Ok(Privileges {
        bounding: Some(set),
        no_new_privs,
    })
}

impl Privileges {
    /// The `setpriv` options (empty when nothing changes).
    pub(crate) fn setpriv_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(set) = &self.bounding {
            let mut spec = String::from("-all");
            for c in set {
                spec.push_str(",+");
                spec.push_str(c);
            }
            out.push(format!("--bounding-set={spec}"));
            out.push("--inh-caps=-all".to_owned());
        }
        if self.no_new_privs {
            out.push("--no-new-privs".to_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Capabilities;

    use super::*;

    fn sc(drop: &[&str], add: &[&str]) -> SecurityContext {
        let list = |l: &[&str]| Some(l.iter().map(|s| (*s).to_owned()).collect());
        SecurityContext {
            capabilities: Some(Capabilities {
                drop: list(drop),
                add: list(add),
            }),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }
    }

    #[test]
    fn drop_all_add_two_leaves_exactly_two() {
        let p = of(Some(&sc(&["ALL"], &["NET_ADMIN", "CAP_NET_RAW"]))).expect("caps");
        assert_eq!(
            p.setpriv_args(),
            [
                "--bounding-set=-all,+net_admin,+net_raw",
                "--inh-caps=-all",
                "--no-new-privs"
            ]
        );
        let none = of(Some(&sc(&["ALL"], &[]))).expect("caps");
        assert_eq!(none.setpriv_args()[0], "--bounding-set=-all");
    }

    #[test]
    fn no_context_is_the_runtime_default_and_privileged_changes_nothing() {
        let p = of(None).expect("caps");
        assert_eq!(
            p.bounding.as_ref().map(Vec::len),
            Some(RUNTIME_DEFAULT.len())
        );
        assert!(!p.bounding.expect("set").contains(&"net_admin".to_owned()));
        let privileged = SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        };
        assert!(of(Some(&privileged))
            .expect("caps")
            .setpriv_args()
            .is_empty());
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = of(Some(&sc(&[], &["NET_WIZARD"]))).expect_err("unknown");
        assert!(err.to_string().contains("NET_WIZARD"), "{err}");
    }
}
