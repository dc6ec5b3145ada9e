//! Capabilities as a kubelet's runtime sets them (`securityContext.capabilities`,
//! `allowPrivilegeEscalation`, `readOnlyRootFilesystem`): a container that adds only
//! `NET_ADMIN` and `NET_RAW` to an empty set can load nftables rules in its pod's network
//! namespace, as Weft's capture init container does; one that drops everything cannot, and
//! neither can one with the runtime's default set (which lacks `NET_ADMIN`).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{can_run, pod, runner, wait_log};
use weft_podrunner::InMemoryApi;

/// Each container tries to add its own nftables table, says whether it could, prints its
/// effective capabilities and whether it could write to `/`, then waits.
const SPEC: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: caps, namespace: test}
spec:
  containers:
  - name: netadmin
    image: tools
    command: [sh, -c, 'grep CapEff /proc/self/status; if nft add table inet podrunner_netadmin; then echo NFT-LOADED; else echo NFT-REFUSED; fi; if (: > /podrunner-caps-probe) 2>/dev/null; then echo ROOT-WRITABLE; else echo ROOT-READONLY; fi; echo done; exec sleep 300']
    securityContext:
      runAsUser: 0
      runAsNonRoot: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_ADMIN, NET_RAW]}
  - name: nocaps
    image: tools
    command: [sh, -c, 'grep CapEff /proc/self/status; if nft add table inet podrunner_nocaps; then echo NFT-LOADED; else echo NFT-REFUSED; fi; echo done; exec sleep 300']
    securityContext:
      runAsUser: 0
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
  - name: default
    image: tools
    command: [sh, -c, 'grep CapEff /proc/self/status; if nft add table inet podrunner_default; then echo NFT-LOADED; else echo NFT-REFUSED; fi; echo done; exec sleep 300']
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_capabilities_the_spec_adds_are_effective() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let p = runner.start(pod(SPEC)).await.expect("start");
    for c in ["netadmin", "nocaps", "default"] {
        wait_log(&p, c, "done").await;
    }
    let netadmin = p.logs("netadmin");
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13): 0x3000, nothing else.
    assert!(netadmin.contains("CapEff:\t0000000000003000"), "{netadmin}");
    assert!(netadmin.contains("NFT-LOADED"), "{netadmin}");
    assert!(netadmin.contains("ROOT-READONLY"), "{netadmin}");
    let nocaps = p.logs("nocaps");
    assert!(nocaps.contains("CapEff:\t0000000000000000"), "{nocaps}");
    assert!(nocaps.contains("NFT-REFUSED"), "{nocaps}");
    let default = p.logs("default");
    assert!(default.contains("NFT-REFUSED"), "{default}");
    assert!(!default.contains("CapEff:\t0000000000000000"), "{default}");

    // `kubectl exec` gets the container's capabilities too.
    let out = p
        .exec(
            "netadmin",
            &["grep", "CapEff", "/proc/self/status"],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert!(out.stdout.contains("0000000000003000"), "{out:?}");

    // The pod's network namespace holds exactly the table the privileged container added.
    let tables = Command::new("ip")
        .args(["netns", "exec", p.netns(), "nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(tables.contains("inet podrunner_netadmin"), "{tables}");
    assert!(!tables.contains("podrunner_nocaps"), "{tables}");
    assert!(!tables.contains("podrunner_default"), "{tables}");
    p.delete().await.expect("delete");
}
