//! `weftctl`, the binary operators run, against a control plane's operator API: how the tests
//! create and revoke join tokens and deny serials on Kubernetes, where no replica's state
//! directory holds them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_testkit::process::output_within;
use weft_testkit::tools;

/// What one `weftctl` run printed.
pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The `weftctl` binary the workspace build put beside this test (refused when stale).
fn binary() -> PathBuf {
    tools::workspace_binary(
        "weftctl",
        &["cli/src", "control-plane/src", "policy/src", "certs/src"],
    )
}

/// `weftctl --server http://ADMIN --token-file TOKEN_FILE ARGS…`, run on a blocking thread
/// (the control plane may be serving on this runtime), within 30 s.
pub(crate) async fn weftctl(admin: SocketAddr, token_file: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(binary());
    cmd.arg("--server")
        .arg(format!("http://{admin}"))
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("WEFT_SERVER")
        .env_remove("WEFT_ADMIN_TOKEN")
        .env_remove("WEFT_ADMIN_TOKEN_FILE");
    let (exit, stdout, stderr) =
        tokio::task::spawn_blocking(move || output_within(&mut cmd, Duration::from_secs(30)))
            .await
            .expect("weftctl ran");
    Out {
        code: exit.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// [`weftctl`] that must succeed: its standard output.
pub(crate) async fn ok(admin: SocketAddr, token_file: &Path, args: &[&str]) -> String {
    let out = weftctl(admin, token_file, args).await;
    assert_eq!(
        out.code, 0,
        "weftctl {args:?}: {}\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}
