//! The supply-chain check as CI runs it (`scripts/deny`), against an advisory database made
//! here: the RustSec database itself cannot be fetched on these machines, so this proves the
//! other half, that a database on the machine is used and that an advisory against a crate in
//! `Cargo.lock` fails the check with the advisory named, while one against no crate of ours
//! passes. The machine's own cargo home is not touched: the script runs with a cargo home of the
//! test's own, whose `registry` is the real one (read only: the check runs offline).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_testkit::process::output_within;
use weft_testkit::tools::workspace_root;

/// The cargo home the workspace was built with (its registry holds the sources).
fn real_cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME")
}

/// A git repository shaped like the RustSec advisory database, with one advisory against
/// `package` (every version below 99).
fn advisory_db(dir: &Path, package: &str) -> PathBuf {
    let db = dir.join("advisory-db");
    let crate_dir = db.join("crates").join(package);
    std::fs::create_dir_all(&crate_dir).expect("mkdir");
    std::fs::write(
        crate_dir.join("RUSTSEC-2026-9999.md"),
        format!(
            "```toml\n[advisory]\nid = \"RUSTSEC-2026-9999\"\npackage = \"{package}\"\n\
             date = \"2026-12-01\"\nurl = \"https://example.invalid/advisory\"\n\
             title = \"A test advisory CI must catch\"\ncategories = [\"memory-corruption\"]\n\n\
             [versions]\npatched = [\">= 99.0.0\"]\n```\n\n\
             # A test advisory CI must catch\n\nMade by the test, for the test.\n"
        ),
    )
    .expect("advisory");
    let commit = [
        "-c",
        "user.email=test@weft.invalid",
        "-c",
        "user.name=test",
        "commit",
        "-qm",
        "db",
    ];
    for args in [&["init", "-q"][..], &["add", "."], &commit] {
        let (exit, _, err) = output_within(
            Command::new("git").args(args).current_dir(&db),
            Duration::from_secs(30),
        );
        assert!(exit.success(), "git {args:?}: {err}");
    }
    db
}

/// `scripts/deny` with `WEFT_ADVISORY_DB=db` and a cargo home of its own in `dir`: the exit
/// code and everything it printed.
fn deny_with(dir: &Path, db: &Path) -> (Option<i32>, String) {
    let home = dir.join("cargo-home");
    std::fs::create_dir_all(&home).expect("cargo home");
    std::os::unix::fs::symlink(real_cargo_home().join("registry"), home.join("registry"))
        .expect("registry link");
    let root = workspace_root();
    let (exit, out, err) = output_within(
        Command::new("bash")
            .arg(root.join("scripts/deny"))
            .current_dir(&root)
            .env("CARGO_HOME", &home)
            .env("WEFT_ADVISORY_DB", db),
        Duration::from_secs(120),
    );
    (exit.code(), format!("{out}\n{err}"))
}

#[test]
fn an_advisory_against_a_locked_crate_fails_the_check_and_others_pass() {
    // `itoa` is in Cargo.lock (through serde_json, hyper, ...).
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).expect("lock");
    assert!(
        lock.contains("name = \"itoa\""),
        "the test's crate left Cargo.lock"
    );

    let bad = tempfile::tempdir().expect("tempdir");
    let (code, out) = deny_with(bad.path(), &advisory_db(bad.path(), "itoa"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("RUSTSEC-2026-9999"), "{out}");
    assert!(out.contains("itoa v"), "{out}");
    assert!(out.contains("advisories FAILED"), "{out}");

    let fine = tempfile::tempdir().expect("tempdir");
    let (code, out) = deny_with(
        fine.path(),
        &advisory_db(fine.path(), "weft-not-a-dependency"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("deny: advisories against"), "{out}");
    assert!(out.contains("advisories ok"), "{out}");
}
