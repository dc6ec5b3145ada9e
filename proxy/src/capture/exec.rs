//! Running the rule loaders (`nft`, `iptables-restore`, `iptables-save`): a program fed a
//! script on stdin, its stdout returned, its stderr turned into the error when it fails.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::CaptureError;

/// Runs `program args`, writes `input` to its stdin and closes it, and returns its stdout.
/// `package` names the Debian package that provides `program`, for the error when it is
/// missing.
pub fn pipe(
    program: &str,
    args: &[&str],
    input: &str,
    package: &'static str,
) -> Result<String, CaptureError> {
    let spawn = |source| CaptureError::Spawn {
        program: program.to_owned(),
        package,
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // Written whole before the output is read: the loaders read their input to the end
        // before they print anything, and the scripts are a few KiB (far below a pipe's
        // buffer), so this cannot deadlock. Dropped here: end of input.
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(CaptureError::Failed {
        program: format!("{program} {}", args.join(" ")).trim().to_owned(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether `program` can be started at all (found on PATH, executable). Used where a missing
/// loader is not an error: `--remove` with `--backend auto` on a machine with only one of the
/// two tool sets.
pub fn present(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
