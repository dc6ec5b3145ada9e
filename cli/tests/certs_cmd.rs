//! `weftctl certs` init + issue + show, through the library and through the binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use weft_certs::{identity_from_cert_der, parse_cert_chain_pem, CertificateAuthority, Identity};
use weft_control_plane::ca::certs::{self, CertSubject, CertsError};
use weft_testkit::process::output_within;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn init_issue_show() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");

    let init = certs::init(&dir, "mesh.example", DAY * 10, false).expect("init");
    assert_eq!(init.trust_domain, "mesh.example");
    assert_eq!(init.cert_path, dir.join("ca.crt"));
    assert_eq!(init.key_path, dir.join("ca.key"));
    assert_eq!(mode(&init.key_path), 0o600);
    assert_eq!(mode(&init.cert_path), 0o644);
    assert_eq!(mode(&dir), 0o700);
    let ca_pem = fs::read_to_string(&init.cert_path).expect("ca.crt");

    // A second init without --force leaves the CA alone.
    assert!(matches!(
        certs::init(&dir, "mesh.example", DAY, false),
        Err(CertsError::CaExists(_))
    ));
    assert_eq!(fs::read_to_string(&init.cert_path).expect("ca.crt"), ca_pem);

    let issued =
        certs::issue(&dir, "shop", "frontend", Duration::from_secs(2 * 3600)).expect("issue");
    let expected = Identity::new("mesh.example", "shop", "frontend").expect("identity");
    assert_eq!(issued.identity, expected);
    assert_eq!(issued.cert_path, dir.join("frontend.crt"));
    assert_eq!(issued.key_path, dir.join("frontend.key"));
    assert_eq!(mode(&issued.key_path), 0o600);
    assert_eq!(mode(&issued.cert_path), 0o644);
    let left = issued
        .not_after
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(2 * 3600 - 60) && left <= Duration::from_secs(2 * 3600));

    let cert_pem = fs::read_to_string(&issued.cert_path).expect("frontend.crt");
    let chain = parse_cert_chain_pem(&cert_pem).expect("pem");
    assert_eq!(chain.len(), 1);
    assert_eq!(
        identity_from_cert_der(&chain[0]).expect("identity"),
        expected
    );
    let key_pem = fs::read_to_string(&issued.key_path).expect("frontend.key");
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    // The files on disk form a working CA again.
    let ca = certs::load_ca(&dir).expect("load");
    assert_eq!(ca.trust_domain(), "mesh.example");

    let shown = certs::show(&issued.cert_path).expect("show");
    assert_eq!(shown.subject, CertSubject::Workload(expected.clone()));
    assert_eq!(shown.not_after, issued.not_after);
    let text = shown.to_string();
    assert!(
        text.contains("spiffe://mesh.example/ns/shop/sa/frontend"),
        "{text}"
    );
    assert!(
        text.contains("frontend.shop.serviceaccount.identity.mesh.example"),
        "{text}"
    );

    let shown_ca = certs::show(&init.cert_path).expect("show CA");
    assert_eq!(
        shown_ca.subject,
        CertSubject::CertificateAuthority {
            trust_domain: "mesh.example".into()
        }
    );

    // A key file is not a certificate.
    assert!(certs::show(&issued.key_path).is_err());
    // "ca" would overwrite the CA's files.
    assert!(matches!(
        certs::issue(&dir, "default", "ca", DAY),
        Err(CertsError::ReservedName(_))
    ));
    assert!(certs::issue(&dir, "default", "Bad_Name", DAY).is_err());

    // --force replaces the CA; the old workload certificate no longer chains to it.
    let replaced = certs::init(&dir, "mesh.example", DAY, true).expect("force init");
    assert_eq!(mode(&replaced.key_path), 0o600);
    assert_ne!(
        fs::read_to_string(&replaced.cert_path).expect("ca.crt"),
        ca_pem
    );
    let old_ca = CertificateAuthority::from_pem(
        &ca_pem,
        &fs::read_to_string(&replaced.key_path).expect("key"),
    );
    assert!(matches!(old_ca, Err(weft_certs::Error::CaKeyMismatch)));
    // No temporary files are left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key", "frontend.crt", "frontend.key"]);
}

#[test]
fn issue_without_a_ca_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        certs::issue(tmp.path(), "default", "frontend", DAY),
        Err(CertsError::Io { .. })
    ));
}

fn weftctl(args: &[&str]) -> (bool, String, String) {
    let (exit, out, err) = output_within(
        Command::new(env!("CARGO_BIN_EXE_weftctl")).args(args),
        Duration::from_secs(30),
    );
    (exit.success(), out, err)
}

#[test]
fn weftctl_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf8 path");

    let (ok, out, err) = weftctl(&["certs", "init", "--dir", dir]);
    assert!(ok, "{err}");
    assert!(out.contains("weft.local"), "{out}");

    let (ok, _, err) = weftctl(&["certs", "init", "--dir", dir]);
    assert!(!ok);
    assert!(err.contains("--force"), "{err}");

    let (ok, out, err) = weftctl(&[
        "certs",
        "issue",
        "--dir",
        dir,
        "--service-account",
        "backend",
        "--hours",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("spiffe://weft.local/ns/default/sa/backend"),
        "{out}"
    );
    assert!(
        out.contains("(in 59m") || out.contains("(in 1h 0m)"),
        "{out}"
    );

    let cert = tmp.path().join("backend.crt");
    let (ok, out, err) = weftctl(&["certs", "show", cert.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("spiffe://weft.local/ns/default/sa/backend"),
        "{out}"
    );
    assert!(
        out.contains("backend.default.serviceaccount.identity.weft.local"),
        "{out}"
    );
    assert!(out.contains("not after:"), "{out}");
}
