//! What the benchmark binaries (`weft-bench`, `weft-bench-peers`) share at their edges:
//! duration flags, the temporary directory kept on failure, pinning the load generator to its
//! CPU, running the work until it ends or a signal arrives, and the open-files limit. One copy
//! here, so the two binaries cannot drift apart in how they clean up after themselves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Parses a duration flag: seconds (`2.5`) or humantime (`1500ms`, `5s`), at most an hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("bad duration {s:?}")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))?,
    };
    if d > Duration::from_secs(3600) {
        return Err(format!("duration {s:?} is over an hour"));
    }
    Ok(d)
}

/// The temporary directory; kept (and its path printed) unless the
/// benchmark finished cleanly, so the sidecars' stderr survives failures
/// and panics.
pub struct TempGuard {
    dir: Option<TempDir>,
    /// Keep the directory when dropped (set to the `--keep-temp` flag once the work ended cleanly).
    pub keep: bool,
}

impl TempGuard {
    /// A fresh `weft-bench-*` directory, kept unless [`TempGuard::keep`] is cleared.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        Ok(TempGuard {
            dir: Some(dir),
            keep: true,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), TempDir::path)
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if self.keep {
                eprintln!(
                    "weft-bench: kept {} (certs, configs, processes' stderr)",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Pins the calling thread (the only one so far; threads started later
/// inherit it) to `core`.
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    ensure!(
        allowed.is_set(core).unwrap_or(false),
        "CPU {core} is not available to this process; see --loadgen-core/--server-core"
    );
    let mut set = CpuSet::new();
    set.set(core).context("CPU index out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
}

/// Run `work` on a current-thread runtime until it ends or Ctrl-C or SIGTERM arrives (a CI
/// timeout or `kill PID` must not leave the pairs and apps running); the runtime, and every
/// process `work` still held, is gone on return.
pub fn until_interrupted<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("watching for SIGTERM")?;
        tokio::select! {
            r = work => r,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for ctrl-c")?;
                bail!("interrupted");
            }
            _ = term.recv() => bail!("terminated (SIGTERM)"),
        }
    })
}

/// Raises the open-files soft limit to the hard one (a socket per simulated sidecar or
/// connection; the soft limit is often 1024). Returns (soft before, soft now, hard).
pub fn raise_nofile_limit() -> anyhow::Result<(u64, u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .context("reading RLIMIT_NOFILE")?;
    let now = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    Ok((soft, now, hard))
}

/// The directory of the binaries to run (`--bin-dir`, else this executable's) and where the
/// reports go (`--out-dir`, else `bench/` beside the binaries' directory, i.e. target/bench).
pub fn bin_and_out_dirs(
    bin_dir: Option<&Path>,
    out_dir: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let bin_dir = match bin_dir {
        Some(d) => d.to_owned(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no directory")?
            .to_owned(),
    };
    let out_dir = match out_dir {
        Some(d) => d.to_owned(),
        None => bin_dir
            .parent()
            .map_or_else(|| bin_dir.join("bench"), |p| p.join("bench")),
    };
    Ok((bin_dir, out_dir))
}
