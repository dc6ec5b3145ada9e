//! Finding the external tools the tests call (kubectl, kubernetes-validate, prometheus,
//! promtool), where `scripts/setup` put them.
//!
//! A test must never depend on what a developer happened to put on PATH by hand: on a fresh
//! machine, in an empty environment, the tools are exactly where `scripts/setup` installed them.
//! So the lookup order is setup's own directories first (`target/tools/*/bin` of the
//! workspace), then PATH, then the system directories an empty environment's PATH may lack
//! (Debian puts some daemons in `/usr/sbin`). A missing tool fails the test with what to run:
//! never a silent skip.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `scripts/setup` installs tools that are not system packages, one directory each.
pub const SETUP_DIRS: [&str; 1] = ["target/tools/k8s/bin"];

/// Directories searched after PATH.
const SYSTEM_DIRS: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin"];

/// The path of `name`; panics, naming where it looked, if it is not installed.
pub fn find(name: &str) -> PathBuf {
    let root = workspace_root();
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let dirs = SETUP_DIRS
        .iter()
        .map(|d| root.join(d))
        .chain(path_dirs)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from));
    let mut looked = Vec::new();
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
        looked.push(d.display().to_string());
    }
    panic!(
        "{name} is not installed (looked in {}): run scripts/setup, which installs it",
        looked.join(", ")
    )
}

/// The path of workspace binary `bin` as cargo built it beside this test (a test runs from
/// `<target>/<profile>/deps/`, the binaries are in `<target>/<profile>/`), so a test of one
/// package can run another package's binary. Panics, saying what to build, when it is missing
/// or older than any file under `sources` (workspace-relative directories it is built from):
/// a stale binary would test old code.
pub fn workspace_binary(bin: &str, sources: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("locating the test: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()));
    let path = dir.join(bin);
    let build = format!("build it first: cargo build -p <its package> --bin {bin}");
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing; {build}", path.display()));
    let root = workspace_root();
    // Cargo's dep-info file beside the binary lists exactly the sources it was built from:
    // checked against those, a binary cargo rightly did not relink (only another binary's
    // files changed) is not called stale. Without it, every file under `sources` counts.
    if let Ok(info) = std::fs::read_to_string(dir.join(format!("{bin}.d"))) {
        let newer = dep_info_sources(&info)
            .into_iter()
            .filter(|f| f.starts_with(&root))
            .find(|f| {
                std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m > built)
            });
        if let Some(newer) = newer {
            panic!(
                "{} is older than {}; {build}",
                path.display(),
                newer.display()
            );
        }
        return path;
    }
    for s in sources {
        if let Some(newer) = newer_than(&root.join(s), built) {
            panic!(
                "{} is older than {}; {build}",
                path.display(),
                newer.display()
            );
        }
    }
    path
}

/// The sources a Makefile-style dep-info file (`target: a b\\ c`) names (its first rule only;
/// `\\ ` is a space inside a path).
fn dep_info_sources(info: &str) -> Vec<PathBuf> {
    let first = info.lines().next().unwrap_or_default();
    let Some((_, deps)) = first.split_once(": ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// A file under `dir` modified after `t`, if any (bounded by the tree's size).
fn newer_than(dir: &Path, t: std::time::SystemTime) -> Option<PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.modified().is_ok_and(|m| m > t) {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_names_each_source_with_escaped_spaces() {
        let info = "/t/debug/weftctl: /w/a.rs /w/my\\ dir/b.rs  /w/c.rs\n\n/w/a.rs:\n";
        assert_eq!(
            dep_info_sources(info),
            ["/w/a.rs", "/w/my dir/b.rs", "/w/c.rs"].map(PathBuf::from)
        );
        assert!(dep_info_sources("").is_empty());
    }

    #[test]
    fn finds_a_system_tool() {
        assert!(find("sh").is_file());
    }

    #[test]
    #[should_panic(expected = "not installed")]
    fn a_missing_tool_fails_with_what_to_run() {
        find("weft-no-such-tool");
    }
}
