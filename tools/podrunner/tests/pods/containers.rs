//! What a container sees: its environment (`$(VAR)` expansion and fieldRefs as the kubelet
//! does them), its user, hostname and volumes (modes, read-only mounts, a minted token), and
//! that nothing it writes reaches the host's real paths.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{can_run, pod, runner, wait_log, LIMIT};
use weft_podrunner::InMemoryApi;

const SPEC: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: env-vol, namespace: team, labels: {app: probe-me}}
spec:
  serviceAccountName: reporter
  securityContext: {runAsUser: 65532, runAsGroup: 65532}
  containers:
  - name: main
    image: tools
    command: [sh, -c, 'printf "ARG:%s\n" "$@"; echo started; exec sleep 300', sh]
    args: ["$(B)", "$$(A)", "$(NOPE)", "$(LATER)"]
    workingDir: /var/lib/weft-podrunner-test/work
    securityContext: {readOnlyRootFilesystem: true}
    env:
    - {name: A, value: one}
    - {name: B, value: "$(A)-two"}
    - {name: EARLY, value: "$(LATER)"}
    - {name: ESCAPED, value: "$$(A)"}
    - {name: UNKNOWN, value: "x$(NOPE)y"}
    - {name: LATER, value: late}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: ID, value: "spiffe://weft.local/ns/$(POD_NAMESPACE)/sa/$(SA)"}
    volumeMounts:
    - {name: scratch, mountPath: /var/lib/weft-podrunner-test/data}
    - {name: settings, mountPath: /etc/weft-podrunner-test/settings, readOnly: true}
    - {name: creds, mountPath: /etc/weft-podrunner-test/creds, readOnly: true}
    - {name: identity, mountPath: /var/run/secrets/weft-podrunner-test, readOnly: true}
  volumes:
  - {name: scratch, emptyDir: {}}
  - name: settings
    configMap: {name: settings, defaultMode: 288}  # 0440 (decimal: YAML 1.2 has no leading-zero octal)
  - name: creds
    secret:
      secretName: creds
      items: [{key: password, path: nested/pw, mode: 256}]  # 0400
  - name: identity
    projected:
      defaultMode: 292
      sources:
      - serviceAccountToken: {audience: weft, expirationSeconds: 3600, path: token}
      - configMap:
          name: trust
          items: [{key: ca.crt, path: ca.crt}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_expansion_field_refs_and_volumes_as_the_kubelet_makes_them() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    api.put_config_map("team", "settings", &[("mode", "strict")]);
    api.put_config_map(
        "team",
        "trust",
        &[("ca.crt", "-----BEGIN CERTIFICATE-----\n")],
    );
    api.put_secret("team", "creds", &[("password", b"hunter2")]);
    let runner = runner(&api);
    let p = runner.start(pod(SPEC)).await.expect("start");
    p.wait_ready(LIMIT).await.expect("ready");
    wait_log(&p, "main", "started").await;
    let sh = |cmd: &'static str| {
        let p = &p;
        async move {
            let out = p
                .exec("main", &["sh", "-c", cmd], Duration::from_secs(10))
                .await
                .expect("exec");
            (out.code, out.stdout.trim_end().to_string(), out.stderr)
        }
    };

    // Arguments expand against the whole environment; `$$` escapes; unknown stays as written.
    let log = p.logs("main");
    for want in ["ARG:one-two", "ARG:$(A)", "ARG:$(NOPE)", "ARG:late"] {
        assert!(log.lines().any(|l| l == want), "{want} missing in {log}");
    }
    let (code, env, err) = sh("env").await;
    assert_eq!(code, Some(0), "env: {err}");
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    assert_eq!(var("B").as_deref(), Some("one-two"));
    // Only variables defined earlier in the list expand.
    assert_eq!(var("EARLY").as_deref(), Some("$(LATER)"));
    assert_eq!(var("ESCAPED").as_deref(), Some("$(A)"));
    assert_eq!(var("UNKNOWN").as_deref(), Some("x$(NOPE)y"));
    assert_eq!(var("POD_NAME").as_deref(), Some("env-vol"));
    assert_eq!(var("POD_NAMESPACE").as_deref(), Some("team"));
    assert_eq!(var("POD_IP"), Some(p.ip().to_string()));
    assert_eq!(var("NODE").as_deref(), Some("weft-node"));
    assert_eq!(
        var("ID").as_deref(),
        Some("spiffe://weft.local/ns/team/sa/reporter")
    );
    assert_eq!(var("HOSTNAME").as_deref(), Some("env-vol"));

    // User, working directory, hostname.
    assert_eq!(
        sh("id -u; id -g; pwd; hostname").await.1,
        "65532\n65532\n/var/lib/weft-podrunner-test/work\nenv-vol"
    );

    // Modes: configMap defaultMode 0440, secret item mode 0400 at its nested path, projected 0444;
    // the token is owned by the pod's one runAsUser (the kubelet's rule). `-L`: the names are
    // links into `..data`, as the kubelet's atomic writer lays a volume out.
    let (_, modes, _) = sh(
        "stat -L -c '%a %u' /etc/weft-podrunner-test/settings/mode /etc/weft-podrunner-test/creds/nested/pw \
         /var/run/secrets/weft-podrunner-test/token /var/run/secrets/weft-podrunner-test/ca.crt",
    )
    .await;
    assert_eq!(modes, "440 0\n400 0\n444 65532\n444 0");
    // The modes bind: root's 0440 file is closed to user 65532 (no fsGroup), 0444 is open.
    let (code, _, err) = sh("cat /etc/weft-podrunner-test/settings/mode").await;
    assert!(
        code != Some(0) && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(
        sh("cat /var/run/secrets/weft-podrunner-test/ca.crt")
            .await
            .1,
        "-----BEGIN CERTIFICATE-----"
    );

    // The token was minted through the API with the audience, lifetime and bound pod.
    let tokens = api.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].subject, "system:serviceaccount:team:reporter");
    assert_eq!(
        (tokens[0].audiences.clone(), tokens[0].expiration_seconds),
        (vec!["weft".to_string()], Some(3600))
    );
    assert_eq!(tokens[0].pod.as_deref(), Some("env-vol"));
    assert_eq!(
        sh("cat /var/run/secrets/weft-podrunner-test/token").await.1,
        tokens[0].token
    );

    // readOnly mounts refuse writes, even where the files' modes would not; emptyDir takes them.
    let (code, _, err) = sh("echo x > /var/run/secrets/weft-podrunner-test/new").await;
    assert_ne!(code, Some(0));
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, err) = sh("echo x > /etc/weft-podrunner-test/settings/new").await;
    assert!(
        code != Some(0) && err.contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(sh("echo kept > /var/lib/weft-podrunner-test/data/f && cat /var/lib/weft-podrunner-test/data/f").await.1, "kept");

    // readOnlyRootFilesystem: the root is read-only, the emptyDir mounted on it is not.
    let (code, _, err) = sh("echo x > /tmp/weft-podrunner-test-ro").await;
    assert!(
        code != Some(0) && err.contains("Read-only file system"),
        "{err}"
    );

    // None of the mount paths exist on the host: they live in the container's mount namespace.
    for host_path in [
        "/var/lib/weft-podrunner-test",
        "/etc/weft-podrunner-test",
        "/var/run/secrets/weft-podrunner-test",
    ] {
        assert!(
            !std::path::Path::new(host_path).exists(),
            "{host_path} was created on the host"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_map_is_a_clear_error_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let api = Arc::new(InMemoryApi::new());
    let runner = runner(&api);
    let err = match runner.start(pod(SPEC)).await {
        Ok(_) => panic!("started without its ConfigMap"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("configmap team/settings not found"), "{err}");
    let pods = format!("{}-p", runner.node().run_id());
    let left: Vec<String> = weft_podrunner::net::namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&pods))
        .collect();
    assert!(
        left.is_empty(),
        "the pod's network namespace was left: {left:?}"
    );
}
