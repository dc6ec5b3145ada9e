//! A command run to its end within a deadline, with its output captured (bounded): what
//! `PodHandle::exec` and the probes' `exec` actions run.

use std::time::Duration;

/// What a command run in a container printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its standard output (at most 1 MiB).
    pub stdout: String,
    /// Its standard error (at most 1 MiB).
    pub stderr: String,
}

/// Runs `cmd` to its end within `timeout` (killed after it), capturing up to 1 MiB of each
/// output stream.
pub(crate) fn output_within(
    cmd: &mut std::process::Command,
    timeout: Duration,
) -> Result<ExecOutput, String> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut g = weft_testkit::process::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("start {cmd:?}: {e}"))?;
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(1 << 20).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        g.take_stdout()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let err = reader(
        g.take_stderr()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let exit = g.wait_within(timeout);
    drop(g);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let exit = exit.ok_or_else(|| format!("timed out after {timeout:?}; stderr: {stderr}"))?;
    Ok(ExecOutput {
        code: exit.code(),
        stdout,
        stderr,
    })
}
