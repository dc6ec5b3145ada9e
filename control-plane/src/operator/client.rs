//! The client of the operator API: the operator commands of `weftctl` (`validate`, `apply`,
//! `get`, `status`, `history`, `rollback`), requests and their answers as text. Here, beside
//! the API it speaks, so tests of the server run it in process; the `weftctl` binary and its
//! other commands are the `weft-cli` crate's.
//!
//! Exit statuses ([`CtlError::exit_code`]): 0 success; 1 refused or invalid (validation
//! errors, a refused apply, an unknown version, a bad request); 2 usage, connection or
//! authentication error, or any other failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::operator::http::ACTOR_HEADER;
use crate::operator::tables::{
    endpoints_table, history_table, outcome_line, routes_table, s, services_table, status_text,
    summary_text,
};
use crate::policy::mesh::{file_name, MeshPolicy};

/// Where `weftctl` finds the operator API unless told otherwise: `weft-control-plane`'s
/// default `--admin` address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7071";
/// Environment variable naming the server (like `--server`).
pub const SERVER_ENV: &str = "WEFT_SERVER";
/// Environment variable naming the token file (like `--token-file`).
pub const TOKEN_FILE_ENV: &str = "WEFT_ADMIN_TOKEN_FILE";
/// Environment variable holding the token itself.
pub const TOKEN_ENV: &str = "WEFT_ADMIN_TOKEN";
/// How long one API request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit status: refused or invalid.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: usage, connection, authentication or other failure.
pub const EXIT_FAILURE: u8 = 2;

/// How to reach the operator API (global flags of `weftctl`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Connection {
    /// Operator API URL [env: WEFT_SERVER] [default: http://127.0.0.1:7071].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// File holding the admin token (the control plane's state directory has it as
    /// admin.token) [env: WEFT_ADMIN_TOKEN_FILE; or WEFT_ADMIN_TOKEN with the token itself].
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// What `weftctl get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The policy's services.
    Services,
    /// The policy's routes.
    Routes,
    /// Endpoints per service: listed in the policy, and registered by sidecars.
    Endpoints,
}

/// The operator commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OpsCommand {
    /// Validate policy files as a policy directory, offline (no server): prints
    /// `file:line:column: reason` per error; exit 1 when invalid.
    Validate {
        /// The policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Add or replace policy files in the control plane's policy directory: validated, written
    /// and pushed at once.
    Apply {
        /// The policy files (their names are kept; their directories are not).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Show the diff and what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List services, routes or endpoints.
    Get {
        /// What to list.
        #[arg(value_enum)]
        kind: Kind,
    },
    /// The policy version in force and every sidecar: version acknowledged, in sync, NACK,
    /// certificate expiry.
    Status,
    /// Accepted policy versions, newest first.
    History,
    /// Restore the files of an earlier policy version (from `weftctl history`) and apply it.
    Rollback {
        /// The version.
        version: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line or a local file is wrong.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached, or answered something unreadable.
    #[error("{0}")]
    Connection(String),
    /// No token, or the server refused it.
    #[error("{0}")]
    Auth(String),
    /// The server refused the request (invalid policy, unknown version, bad request).
    #[error("{0}")]
    Refused(String),
    /// The server failed.
    #[error("{0}")]
    Server(String),
}

impl CtlError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => EXIT_REFUSED,
            CtlError::Usage(_) | CtlError::Connection(_) | CtlError::Auth(_) => EXIT_FAILURE,
            CtlError::Server(_) => EXIT_FAILURE,
        }
    }
}

fn out_err(e: std::io::Error) -> CtlError {
    output_error(e)
}

/// The error of a failed write to a command's output.
pub fn output_error(e: std::io::Error) -> CtlError {
    CtlError::Server(format!("writing output: {e}"))
}

/// `GET path` on the operator API: the answer's JSON, or the error a command reports (for
/// commands built on the API, such as `weftctl top`).
pub async fn get(conn: &Connection, path: &str) -> Result<Value, CtlError> {
    Api::new(conn)?.get(path).await
}

/// `POST path` with the JSON `body` on the operator API: the answer's JSON, or the error a
/// command reports (for commands built on the API, such as `weftctl tokens`).
pub async fn post(conn: &Connection, path: &str, body: &Value) -> Result<Value, CtlError> {
    Api::new(conn)?.post(path, body, &mut std::io::sink()).await
}

/// The operator API's URL `conn` names: `--server`, else [`SERVER_ENV`], else
/// [`DEFAULT_SERVER`]; `http://` when no scheme is given.
pub fn server_url(conn: &Connection) -> String {
    let server = conn
        .server
        .clone()
        .or_else(|| std::env::var(SERVER_ENV).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let base = if server.contains("://") {
        server
    } else {
        format!("http://{server}")
    };
    base.trim_end_matches('/').to_owned()
}

/// Run `command`, writing its output to `out`.
pub async fn run(
    conn: &Connection,
    command: OpsCommand,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match command {
        OpsCommand::Validate { files } => validate_offline(&files, out),
        OpsCommand::Apply { files, dry_run } => {
            let api = Api::new(conn)?;
            apply(&api, &files, dry_run, out).await
        }
        OpsCommand::Get { kind } => {
            let api = Api::new(conn)?;
            let text = match kind {
                Kind::Services => services_table(&api.get("/v1/services").await?),
                Kind::Routes => routes_table(&api.get("/v1/routes").await?),
                Kind::Endpoints => endpoints_table(&api.get("/v1/endpoints").await?),
            };
            out.write_all(text.as_bytes()).map_err(out_err)
        }
        OpsCommand::Status => {
            let api = Api::new(conn)?;
            let text = status_text(&api.get("/v1/status").await?, SystemTime::now());
            out.write_all(text.as_bytes()).map_err(out_err)
        }
        OpsCommand::History => {
            let api = Api::new(conn)?;
            let text = history_table(&api.get("/v1/history").await?);
            out.write_all(text.as_bytes()).map_err(out_err)
        }
        OpsCommand::Rollback { version } => {
            let api = Api::new(conn)?;
            let r = api
                .post(
                    "/v1/rollback",
                    &serde_json::json!({ "version": version }),
                    out,
                )
                .await?;
            writeln!(out, "{}", outcome_line(&r, "rolled back")).map_err(out_err)?;
            if let Some(w) = r["warning"].as_str() {
                writeln!(out, "warning: {w}").map_err(out_err)?;
            }
            Ok(())
        }
    }
}

/// Read files given on the command line into name → text; two files of one name are an error.
fn read_files(paths: &[PathBuf]) -> Result<BTreeMap<String, (PathBuf, String)>, CtlError> {
    let mut out = BTreeMap::new();
    for p in paths {
        let text = std::fs::read_to_string(p)
            .map_err(|e| CtlError::Usage(format!("{}: {e}", p.display())))?;
        let name = file_name(p);
        if let Some((other, _)) = out.insert(name.clone(), (p.clone(), text)) {
            return Err(CtlError::Usage(format!(
                "{} and {} have the same name {name}: a policy directory holds one file per name",
                other.display(),
                p.display()
            )));
        }
    }
    Ok(out)
}

fn validate_offline(paths: &[PathBuf], out: &mut dyn Write) -> Result<(), CtlError> {
    let files = read_files(paths)?;
    // In name order, as the control plane reads its directory.
    let texts: Vec<(PathBuf, String)> = files.into_values().collect();
    match MeshPolicy::from_texts(&texts) {
        Ok(p) => writeln!(
            out,
            "valid: {} files, {} services, {} routes (version {})",
            texts.len(),
            p.services().len(),
            p.routes().len(),
            p.version()
        )
        .map_err(out_err),
        Err(errors) => {
            for e in errors.iter() {
                writeln!(out, "{e}").map_err(out_err)?;
            }
            Err(CtlError::Refused(format!(
                "the policy is invalid ({} errors)",
                errors.0.len()
            )))
        }
    }
}

async fn apply(
    api: &Api,
    paths: &[PathBuf],
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let files: BTreeMap<String, String> = read_files(paths)?
        .into_iter()
        .map(|(name, (_, text))| (name, text))
        .collect();
    let path = if dry_run {
        "/v1/apply?dry_run=true"
    } else {
        "/v1/apply"
    };
    let r = api
        .post(path, &serde_json::json!({ "files": files }), out)
        .await?;
    let mut text = String::new();
    for d in r["diffs"].as_array().into_iter().flatten() {
        text.push_str(d["diff"].as_str().unwrap_or_default());
    }
    text.push_str(&summary_text(&r["summary"]));
    text.push_str(&outcome_line(
        &r,
        if dry_run { "dry run" } else { "applied" },
    ));
    text.push('\n');
    if let Some(w) = r["warning"].as_str() {
        text.push_str(&format!("warning: {w}\n"));
    }
    out.write_all(text.as_bytes()).map_err(out_err)
}

/// The operator API, with the token to present.
struct Api {
    base: String,
    token: String,
    actor: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

fn read_token(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Auth(format!("admin token {}: {e}", path.display())))?;
    Ok(text.trim().to_owned())
}

impl Api {
    fn new(conn: &Connection) -> Result<Self, CtlError> {
        let base = server_url(conn);
        if !base.starts_with("http://") {
            return Err(CtlError::Usage(format!(
                "--server {base}: only http:// (the operator API listens on loopback)"
            )));
        }
        // The flag first, then the token itself, then the token file from the environment.
        let token = match (&conn.token_file, std::env::var(TOKEN_ENV).ok()) {
            (Some(path), _) => read_token(path)?,
            (None, Some(t)) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => match std::env::var_os(TOKEN_FILE_ENV).filter(|v| !v.is_empty()) {
                Some(path) => read_token(Path::new(&path))?,
                None => {
                    return Err(CtlError::Auth(format!(
                        "no admin token: pass --token-file (the control plane's state directory \
                         has admin.token), or set {TOKEN_FILE_ENV} or {TOKEN_ENV}"
                    )))
                }
            },
        };
        let actor = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty());
        Ok(Api {
            base,
            token,
            actor,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, CtlError> {
        let (status, v) = self.send(hyper::Method::GET, path, None).await?;
        self.check(status, v, &mut std::io::sink())
    }

    async fn post(&self, path: &str, body: &Value, out: &mut dyn Write) -> Result<Value, CtlError> {
        let (status, v) = self
            .send(hyper::Method::POST, path, Some(body.to_string()))
            .await?;
        self.check(status, v, out)
    }

    /// Map the answer to a result; policy errors are printed to `out`, one per line.
    fn check(&self, status: u16, v: Value, out: &mut dyn Write) -> Result<Value, CtlError> {
        let message = v["error"].as_str().unwrap_or("").to_owned();
        match status {
            200..=299 => Ok(v),
            401 | 403 => Err(CtlError::Auth(format!(
                "{}: authentication refused: {message}",
                self.base
            ))),
            422 => {
                for e in v["errors"].as_array().into_iter().flatten() {
                    writeln!(out, "{}", s(&e["message"])).map_err(out_err)?;
                }
                Err(CtlError::Refused(message))
            }
            400..=499 => Err(CtlError::Refused(message)),
            _ => Err(CtlError::Server(format!(
                "{}: server error {status}: {message}",
                self.base
            ))),
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Value), CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(actor) = &self.actor {
            req = req.header(ACTOR_HEADER, actor.as_str());
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CtlError::Usage(format!("{url}: {e}")))?;
        let unreachable = |e: &dyn std::fmt::Display| {
            CtlError::Connection(format!(
                "cannot reach the control plane at {}: {e}",
                self.base
            ))
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| unreachable(&"timed out reading the answer"))?
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim().to_owned() }),
        );
        Ok((status, v))
    }
}

/// An error with its causes (hyper's "client error (Connect)" alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}
