//! The processes under test: a child process that ends with its guard ([`ChildGuard`]), a
//! command pinned to a CPU, where the binaries are and what version they are, and
//! `weft-proxy --check` of a config before it runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process this benchmark started. Dropping it ends the process (by
/// its PID: SIGTERM, then SIGKILL if it has not exited within a second) and
/// reaps it, also when unwinding from a panic.
#[derive(Debug)]
pub struct ChildGuard {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin/stdout from/to nowhere and stderr to
    /// `stderr_path`.
    pub fn spawn(name: &str, mut cmd: Command, stderr_path: &Path) -> anyhow::Result<Self> {
        let stderr = File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            stderr_path: stderr_path.to_owned(),
        })
    }

    /// The process's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The last `lines` lines of the process's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.stderr_path) {
            Ok(s) => {
                let all: Vec<&str> = s.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.stderr_path.display()),
        }
    }

    /// Fails (with the end of its stderr) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} (pid {}) exited: {status}; stderr ({}) ends with:\n{}",
                self.name,
                self.pid(),
                self.stderr_path.display(),
                self.stderr_tail(30)
            ),
            Err(e) => bail!("{}: cannot check its status: {e}", self.name),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        // Only ever the PID of the child we spawned and have not yet reaped.
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
/// A command that runs `program` pinned to CPU `core` with `taskset`.
/// (`taskset` execs the program, so the child's PID is the program's.)
pub fn pinned(core: usize, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program);
    cmd.env("RUST_LOG", "warn");
    cmd
}
/// Where the binaries the benchmark runs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `weft-proxy`.
    pub proxy: PathBuf,
    /// `weft-sample`.
    pub sample: PathBuf,
}

/// Drops `path`'s pages from the page cache (after writing back any not yet on disk), so the
/// processes started from it read it back as from any installed binary. A file just written in
/// large chunks (as a post-link optimiser writes) sits in large page-cache folios, and mapping
/// one page of such a folio maps all of it: a sidecar's RSS then reads several MiB higher than
/// for the same bytes read from disk. Best effort: the measured binaries also run without it.
pub fn drop_cached(path: &Path) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_data();
        let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

impl Binaries {
    /// The binaries in `dir`, which must exist; `proxy`, when given, instead of the
    /// `weft-proxy` there.
    pub fn in_dir(dir: &Path, proxy: Option<&Path>) -> anyhow::Result<Self> {
        let b = Binaries {
            proxy: proxy.map_or_else(|| dir.join("weft-proxy"), Path::to_path_buf),
            sample: dir.join("weft-sample"),
        };
        for p in [&b.proxy, &b.sample] {
            ensure!(
                p.is_file(),
                "{} not found; build it first: cargo build --release -p weft-proxy -p weft-samples -p weft-benches",
                p.display()
            );
        }
        drop_cached(&b.proxy);
        drop_cached(&b.sample);
        Ok(b)
    }

    /// The first line of `weft-proxy --version` (it says whether the build is
    /// profile-guided and BOLT-optimised), for the reports.
    pub fn proxy_version(&self) -> String {
        version_of(&self.proxy, "--version")
    }
}

/// The first line of a program's version output (stderr when it writes there, as HAProxy
/// and NGINX do; else stdout).
pub fn version_of(program: &Path, flag: &str) -> String {
    match std::process::Command::new(program).arg(flag).output() {
        Ok(out) => {
            let text = if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("(cannot run {}: {e})", program.display()),
    }
}
/// Runs `weft-proxy --config cfg --check`; fails with its output if the
/// config is rejected.
pub fn check_config(bins: &Binaries, cfg: &Path) -> anyhow::Result<()> {
    let out = Command::new(&bins.proxy)
        .arg("--config")
        .arg(cfg)
        .arg("--check")
        .output()
        .with_context(|| format!("running {} --check", bins.proxy.display()))?;
    ensure!(
        out.status.success(),
        "{} rejected by weft-proxy --check: {}{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The last lines of each child's stderr, for a flagged run.
pub fn show_stderr<'a>(children: impl IntoIterator<Item = &'a ChildGuard>) {
    for child in children {
        eprintln!(
            "weft-bench: {} stderr ({}), last lines:\n{}",
            child.name(),
            child.stderr_path().display(),
            child.stderr_tail(20)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn child_guard_ends_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut g = ChildGuard::spawn("sleep", cmd, &dir.path().join("sleep.stderr")).unwrap();
        g.check_alive().unwrap();
        let pid = g.pid();
        drop(g);
        // Reaped: the PID no longer names our child.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.map_or(true, |s| !s.contains("(sleep)")));
    }
}
