//! `weftctl tokens` and weftctl's exit statuses, through the binary.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_certs::{generate_csr, Identity};
use weft_control_plane::ca::attest::Credential;
use weft_control_plane::ca::ca_store::{CaStore, CaStoreOptions};
use weft_control_plane::ca::issuer::{IssueError, Issuer, IssuerOptions};
use weft_control_plane::ca::tokens::{JoinTokenAttestor, JOIN_TOKENS_FILE};
use weft_testkit::process::output_within;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn weftctl(args: &[&str]) -> Out {
    let (exit, stdout, stderr) = output_within(
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(args)
            .env_remove("WEFT_SERVER")
            .env_remove("WEFT_ADMIN_TOKEN")
            .env_remove("WEFT_ADMIN_TOKEN_FILE"),
        Duration::from_secs(30),
    );
    Out {
        code: exit.code().expect("exited"),
        stdout,
        stderr,
    }
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn create_list_revoke_and_use_a_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let dir = utf8(&state);

    // The control plane has started once: the trust domain is known to weftctl.
    let store =
        Arc::new(CaStore::open(&state, "weft.local", CaStoreOptions::default()).expect("open"));

    let out = weftctl(&["tokens", "create", "--state-dir", dir, "orders"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Standard output is the token alone, for `TOKEN=$(weftctl tokens create ...)`.
    let token = out.stdout.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && token.starts_with("wjt1_"),
        "{token:?}"
    );
    assert!(
        out.stderr
            .contains("identity: spiffe://weft.local/ns/default/sa/orders"),
        "{}",
        out.stderr
    );
    // Tokens expire after 24 hours unless told otherwise.
    let expires = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("expires:  "))
        .expect("an expiry line");
    let expires = humantime::parse_rfc3339(expires).expect("an RFC 3339 time");
    let in_a_day = SystemTime::now() + Duration::from_secs(24 * 3600);
    assert!(
        expires <= in_a_day && expires + Duration::from_secs(120) > in_a_day,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert!(!out.stderr.contains(token));
    let token_id = &token[5..21];

    let out = weftctl(&[
        "tokens",
        "create",
        "--state-dir",
        dir,
        "checkout",
        "--namespace",
        "prod",
        "--service-account",
        "payments",
        "--ttl",
        "2h",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("identity: spiffe://weft.local/ns/prod/sa/payments"),
        "{}",
        out.stderr
    );

    let out = weftctl(&["tokens", "list", "--state-dir", dir]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("ID"), "{}", out.stdout);
    assert!(
        lines[1].starts_with(token_id) && lines[1].ends_with("active"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].contains("prod") && lines[2].contains("payments"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&token[22..]), "no secrets listed");

    // The token created by weftctl obtains a certificate from the library's issuer.
    let attestor = Arc::new(JoinTokenAttestor::new(&state, "weft.local").expect("attestor"));
    let issuer = Issuer::new(store, attestor, IssuerOptions::default()).expect("issuer");
    let orders = Identity::new("weft.local", "default", "orders").expect("identity");
    let (csr, _) = generate_csr(&orders).expect("csr");
    let credential = Credential::JoinToken(token.to_owned());
    assert_eq!(
        issuer.issue(&credential, &csr).expect("issue").identity,
        orders
    );

    let out = weftctl(&["tokens", "revoke", "--state-dir", dir, token_id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("revoked join token"), "{}", out.stdout);
    // Takes effect in a running issuer at once.
    assert!(matches!(
        issuer.issue(&credential, &csr),
        Err(IssueError::BadCredential(_))
    ));
    let out = weftctl(&["tokens", "revoke", "--state-dir", dir, token_id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already revoked"), "{}", out.stdout);
    let out = weftctl(&["tokens", "list", "--state-dir", dir]);
    assert!(
        out.stdout.lines().nth(1).expect("row").ends_with("revoked"),
        "{}",
        out.stdout
    );
}

#[test]
fn exit_statuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = utf8(tmp.path());

    // 0: success, including help and an empty list.
    assert_eq!(weftctl(&["--help"]).code, 0);
    let out = weftctl(&["tokens", "list", "--state-dir", dir]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("no join tokens"), "{}", out.stderr);

    // 2: usage errors (a missing argument, an unknown subcommand).
    for args in [
        &["tokens", "create", "orders"][..],
        &["tokens", "frobnicate"],
    ] {
        let out = weftctl(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }

    // 1: invalid input (bad names and values).
    for args in [
        &["tokens", "create", "--state-dir", dir, "Orders"][..],
        &[
            "tokens",
            "create",
            "--state-dir",
            dir,
            "orders",
            "--namespace",
            "a.b",
        ],
        &[
            "tokens",
            "create",
            "--state-dir",
            dir,
            "orders",
            "--ttl",
            "soon",
        ],
        &[
            "tokens",
            "create",
            "--state-dir",
            dir,
            "orders",
            "--ttl",
            "0s",
        ],
        &["tokens", "revoke", "--state-dir", dir, "0123456789abcdef"],
    ] {
        let out = weftctl(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = weftctl(&["certs", "init", "--dir", dir]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = weftctl(&["certs", "init", "--dir", dir]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    let out = weftctl(&[
        "certs",
        "issue",
        "--dir",
        dir,
        "--service-account",
        "Bad_Name",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = weftctl(&[
        "certs",
        "issue",
        "--dir",
        dir,
        "--service-account",
        "x",
        "--hours",
        "0",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);

    // 2: other failures (unreadable files, a corrupt token file).
    let missing = tmp.path().join("missing.crt");
    let out = weftctl(&["certs", "show", utf8(&missing)]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("missing.crt"), "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("No such file").count(),
        1,
        "each cause once: {}",
        out.stderr
    );
    let out = weftctl(&[
        "certs",
        "issue",
        "--dir",
        utf8(&tmp.path().join("nope")),
        "--service-account",
        "x",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    fs::write(
        tmp.path().join(JOIN_TOKENS_FILE),
        "{\"version\": 1, \"tokens\": [], \"x\": 0}",
    )
    .expect("write");
    let out = weftctl(&["tokens", "list", "--state-dir", dir]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("unknown field"), "{}", out.stderr);
    let out = weftctl(&["tokens", "create", "--state-dir", dir, "orders"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no token printed on failure");
}

#[test]
fn a_token_that_never_expires_must_be_asked_for_and_is_warned_about() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = utf8(tmp.path());
    for never in ["never", "0"] {
        let out = weftctl(&[
            "tokens",
            "create",
            "--state-dir",
            dir,
            "orders",
            "--ttl",
            never,
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stderr.contains("expires:  never"), "{}", out.stderr);
        assert!(
            out.stderr.contains("warning: this token never expires"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn certs_deny_records_a_serial_the_issuer_then_refuses_to_renew() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let dir = utf8(&state);
    let store =
        Arc::new(CaStore::open(&state, "weft.local", CaStoreOptions::default()).expect("open"));
    let out = weftctl(&["tokens", "create", "--state-dir", dir, "orders"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let credential = Credential::JoinToken(out.stdout.trim().to_owned());
    let attestor = Arc::new(JoinTokenAttestor::new(&state, "weft.local").expect("attestor"));
    let issuer = Issuer::new(store, attestor, IssuerOptions::default()).expect("issuer");
    let orders = Identity::new("weft.local", "default", "orders").expect("identity");
    let (csr, _) = generate_csr(&orders).expect("csr");
    let issued = issuer.issue(&credential, &csr).expect("issue");
    let leaf = weft_certs::parse_cert_chain_pem(&issued.chain_pem)
        .expect("chain")
        .remove(0);
    issuer
        .renew(&leaf, None, &csr)
        .expect("renews before the denial");

    // As `openssl x509 -serial` prints it: upper case.
    let out = weftctl(&[
        "certs",
        "deny",
        "--state-dir",
        dir,
        &issued.serial.to_uppercase(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("denied serial"), "{}", out.stdout);
    let e = issuer.renew(&leaf, None, &csr).expect_err("denied");
    assert!(matches!(e, IssueError::Denied { .. }), "{e}");
    let out = weftctl(&["certs", "deny", "--state-dir", dir, &issued.serial]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already denied"), "{}", out.stdout);
    let out = weftctl(&["certs", "deny", "--state-dir", dir, "not-hex"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not a certificate serial"),
        "{}",
        out.stderr
    );
}

/// Without `--state-dir` the commands go to the operator API: a bad serial is refused before
/// anything is sent (exit 1), a control plane that is not there is a connection failure (exit
/// 2) naming the address, and without an admin token nothing is sent either.
#[test]
fn without_a_state_dir_the_commands_go_to_the_operator_api() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("admin.token");
    fs::write(&token, "t0ken\n").expect("token");
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let api = ["--server", &server, "--token-file", utf8(&token)];

    let out = weftctl(&[&api[..], &["certs", "deny", "zz:not-hex"]].concat());
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not a certificate serial"),
        "{}",
        out.stderr
    );

    for args in [
        &["tokens", "list"][..],
        &["tokens", "create", "orders"],
        &["tokens", "revoke", "0123456789abcdef"],
        &["certs", "deny", "0a:1b"],
    ] {
        let out = weftctl(&[&api[..], args].concat());
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("cannot reach the control plane") && out.stderr.contains(&server),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }

    let out = weftctl(&["--server", &server, "tokens", "list"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no admin token"), "{}", out.stderr);
}
