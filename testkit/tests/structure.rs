//! The shape rules of issue 19, as checks that fail the suite: no shipped source file over 600
//! lines (`scripts/big-files`), no file-level import cycle (`scripts/import-cycles`), and no
//! function over 80 lines without a comment saying why (`scripts/long-fns`). Each script runs
//! on the workspace (it must pass) and on a small tree made here that breaks its rule (it must
//! fail and name the offender), so a script that stopped finding anything would not pass
//! silently.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_testkit::process::output_within;
use weft_testkit::tools::workspace_root;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs `scripts/NAME` from `root`: (exit code, stdout + stderr).
fn run(root: &Path, name: &str) -> (Option<i32>, String) {
    let mut cmd = Command::new(root.join("scripts").join(name));
    cmd.current_dir(root);
    let (exit, out, err) = output_within(&mut cmd, LIMIT);
    (exit.code(), format!("{out}{err}"))
}

/// A tree with `scripts/NAME` copied from the workspace and one crate `demo` with `files`
/// (path under `demo/src`, text).
fn tree(name: &str, files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir scripts");
    std::fs::copy(
        workspace_root().join("scripts").join(name),
        scripts.join(name),
    )
    .expect("copy script");
    let src = dir.path().join("demo").join("src");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::write(
        dir.path().join("demo").join("Cargo.toml"),
        "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .expect("Cargo.toml");
    for (path, text) in files {
        std::fs::write(src.join(path), text).expect("write source");
    }
    dir
}

fn assert_passes_on_workspace(name: &str) {
    let (code, out) = run(&workspace_root(), name);
    assert_eq!(code, Some(0), "scripts/{name} on the workspace:\n{out}");
}

#[test]
fn no_shipped_file_over_600_lines() {
    assert_passes_on_workspace("big-files");
    let long: String = (0..601)
        .map(|i| format!("const C{i}: u32 = {i};\n"))
        .collect();
    let dir = tree(
        "big-files",
        &[("lib.rs", "mod big;\n".into()), ("big.rs", long)],
    );
    let (code, out) = run(dir.path(), "big-files");
    assert_eq!(code, Some(1), "a 601-line file must fail:\n{out}");
    assert!(out.contains("601 ./demo/src/big.rs"), "{out}");
}

#[test]
fn no_file_level_import_cycle() {
    assert_passes_on_workspace("import-cycles");
    let dir = tree(
        "import-cycles",
        &[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n".into()),
            ("a.rs", "use crate::b::B;\npub struct A(pub B);\n".into()),
            (
                "b.rs",
                "pub struct B;\npub fn f() -> crate::c::C { crate::c::C }\n".into(),
            ),
            // c -> a closes the cycle a -> b -> c -> a.
            (
                "c.rs",
                "use super::a::A;\npub struct C;\npub fn g(_: A) {}\n".into(),
            ),
        ],
    );
    let (code, out) = run(dir.path(), "import-cycles");
    assert_eq!(code, Some(1), "a cycle must fail:\n{out}");
    assert!(
        out.contains("cycle: demo/src/a.rs <-> demo/src/b.rs <-> demo/src/c.rs"),
        "{out}"
    );
    assert!(out.contains("1 file-level import cycles"), "{out}");
}

#[test]
fn no_unexplained_function_over_80_lines() {
    assert_passes_on_workspace("long-fns");
    let body: String = (0..85).map(|i| format!("    let _x{i} = {i};\n")).collect();
    let dir = tree(
        "long-fns",
        &[
            ("lib.rs", format!("pub fn quiet() {{\n{body}}}\n")),
            (
                "ok.rs",
                format!("// Long: one table, row by row.\npub fn told() {{\n{body}}}\n"),
            ),
        ],
    );
    let (code, out) = run(dir.path(), "long-fns");
    assert_eq!(
        code,
        Some(1),
        "an unexplained long function must fail:\n{out}"
    );
    assert!(out.contains("demo/src/lib.rs:1 quiet"), "{out}");
    assert!(
        !out.contains("told"),
        "the explained one is not listed:\n{out}"
    );
}
