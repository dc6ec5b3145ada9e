//! `weftctl`: command-line tool of the Weft service mesh.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_cli::credentials::{CredentialsError, Place};
use weft_cli::ctl::{self, Command as CtlCommand};
use weft_control_plane::ca::certs::{self, CertsError};
use weft_control_plane::ca::denied::normalize_serial;
use weft_control_plane::ca::tokens::{NewToken, Revocation, TokenInfo};
use weft_control_plane::operator::client::{self as api, Connection};

/// Exit status of input that is invalid or refused: calling again unchanged cannot help.
const EXIT_INVALID: u8 = api::EXIT_REFUSED;
/// Exit status of a usage, connection or authentication error, or any other failure (files
/// missing or unreadable, I/O errors, ...).
const EXIT_FAILURE: u8 = api::EXIT_FAILURE;

/// Command-line tool of the Weft service mesh.
#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about,
    after_help = "Exit status: 0 success; 1 refused or invalid input (policy validation \
                  errors, a refused apply, an unknown version, bad names or values, an existing \
                  CA without --force, an unknown token id); 2 usage, connection or \
                  authentication error, or any other failure.\n\n\
                  Operator commands (validate needs no server) talk to the control plane's \
                  operator API: --server (or WEFT_SERVER; default http://127.0.0.1:7071) and \
                  the admin token from --token-file (or WEFT_ADMIN_TOKEN_FILE, or the token \
                  itself in WEFT_ADMIN_TOKEN). So do `tokens` and `certs deny` without \
                  --state-dir (on Kubernetes the only way: the state lives in the API)."
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the mesh CA and workload certificates kept in a directory.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Manage join tokens: how a service's sidecar proves who it is to the control plane
    /// without a Kubernetes service account token.
    #[command(subcommand)]
    Tokens(TokensCommand),
    #[command(flatten)]
    Ops(CtlCommand),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA: writes DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write the CA into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain the CA signs for.
        #[arg(long, default_value = certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate from the CA in DIR: writes DIR/NAME.crt and DIR/NAME.key (mode 0600).
    Issue {
        /// Directory holding the CA (from `weftctl certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// Namespace of the workload.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Service account of the workload; also names the files written.
        #[arg(long)]
        service_account: String,
        /// Validity of the certificate, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Deny a workload certificate's serial: the control plane refuses to renew it from now
    /// on, at every replica (the certificate itself works until it expires).
    Deny {
        /// The control plane's state directory (local mode, beside the server); without it,
        /// the control plane's operator API (--server).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The serial, hexadecimal (colons allowed), as the control plane logs it on issue
        /// or `openssl x509 -serial` prints it.
        serial: String,
    },
    /// Print the identity and expiry of a certificate (PEM file).
    Show {
        /// Certificate file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a join token for SERVICE and print it (once: only its hash is kept) on standard
    /// output.
    Create {
        /// The control plane's state directory (local mode, beside the server; created if
        /// missing); without it, the control plane's operator API (--server).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The service whose sidecar will present the token.
        service: String,
        /// Namespace of the identity the token proves.
        #[arg(long, default_value = weft_control_plane::ca::tokens::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Service account of the identity the token proves [default: SERVICE].
        #[arg(long)]
        service_account: Option<String>,
        /// Make the token expire after this long (such as `1h` or `7d`); `never` (or `0`)
        /// for a token that lasts until revoked. A certificate obtained with the token
        /// renews only while the token is valid.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Ttl,
    },
    /// List join tokens (ids, identities, status; never secrets).
    List {
        /// The control plane's state directory (local mode, beside the server); without it,
        /// the control plane's operator API (--server).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Revoke a join token: it is refused from now on.
    Revoke {
        /// The control plane's state directory (local mode, beside the server); without it,
        /// the control plane's operator API (--server).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Id of the token (as `weftctl tokens list` shows it), or the whole token.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` also arrive here, and are not errors. A bad value is
            // invalid input; anything else (missing or unknown arguments) is a usage error.
            return if !e.use_stderr() {
                ExitCode::SUCCESS
            } else if matches!(
                e.kind(),
                clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
            ) {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::from(EXIT_FAILURE)
            };
        }
    };
    if let Command::Ops(command) = cli.command {
        return run_ops(&cli.connection, command);
    }
    match run(&cli.connection, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {}", message(&e));
            ExitCode::from(exit_status(&e))
        }
    }
}

/// Run an operator command on a small single-threaded runtime (one request at a time).
fn run_ops(connection: &Connection, command: CtlCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftctl: runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    match rt.block_on(ctl::run(connection, command, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("weftctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The error and its causes on one line. Our error types already include their source in
/// their message, so a cause whose text is already there is not repeated.
fn message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

/// 1 when some error in the chain says the request was invalid, else 2.
fn exit_status(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<CredentialsError>() {
            return e.exit_code();
        }
        if cause
            .downcast_ref::<CertsError>()
            .is_some_and(CertsError::is_invalid_request)
        {
            return EXIT_INVALID;
        }
    }
    EXIT_FAILURE
}

fn run(connection: &Connection, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Certs(command) => run_certs(connection, command),
        Command::Tokens(command) => block_on(run_tokens(connection, command)),
        // Handled by run_ops before.
        Command::Ops(_) => Ok(()),
    }
}

/// Runs `f` on a small single-threaded runtime (the operator API's client is async).
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(f)
}

fn run_certs(connection: &Connection, command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init {
            dir,
            trust_domain,
            days,
            force,
        } => {
            let validity = Duration::from_secs(days.saturating_mul(24 * 3600));
            let report = certs::init(&dir, &trust_domain, validity, force)
                .context("cannot create the CA")?;
            println!("{report}");
        }
        CertsCommand::Issue {
            dir,
            namespace,
            service_account,
            hours,
        } => {
            let validity = Duration::from_secs(hours.saturating_mul(3600));
            let report = certs::issue(&dir, &namespace, &service_account, validity)
                .context("cannot issue the certificate")?;
            println!("{report}");
        }
        CertsCommand::Deny { state_dir, serial } => {
            let place = Place::new(state_dir, connection);
            let newly =
                block_on(async { place.deny(&serial).await.context("cannot deny the serial") })?;
            let serial = normalize_serial(&serial)?;
            if newly {
                println!(
                    "denied serial {serial}: {} no longer renews it",
                    place.describe()
                );
            } else {
                println!("serial {serial} was already denied");
            }
        }
        CertsCommand::Show { file } => {
            let summary = certs::show(&file).context("cannot read the certificate")?;
            println!("{summary}");
        }
    }
    Ok(())
}

/// A token's TTL on the command line: a duration, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ttl {
    /// Expires after this long.
    After(Duration),
    /// Never expires (until revoked).
    Never,
}

fn parse_ttl(text: &str) -> Result<Ttl, String> {
    match text.trim() {
        "never" | "0" => Ok(Ttl::Never),
        // `0s` and the like stay a (refused) zero duration: only the two explicit spellings
        // opt out of expiry.
        t => humantime::parse_duration(t)
            .map(Ttl::After)
            .map_err(|e| format!("{e} (a duration such as 1h or 7d, or never)")),
    }
}

async fn run_tokens(connection: &Connection, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create {
            state_dir,
            service,
            namespace,
            service_account,
            ttl,
        } => {
            let ttl = match ttl {
                Ttl::After(d) => Some(d),
                Ttl::Never => {
                    eprintln!(
                        "warning: this token never expires: whoever holds it can obtain and \
                         renew {service}'s identity until it is revoked (weftctl tokens revoke)"
                    );
                    None
                }
            };
            let request = NewToken {
                service,
                namespace,
                service_account,
                ttl,
            };
            let place = Place::new(state_dir, connection);
            let created = place
                .create(&request)
                .await
                .context("cannot create the join token")?;
            // Only the token on standard output, so `TOKEN=$(weftctl tokens create ...)` works.
            println!("{}", created.token);
            let info = &created.info;
            eprintln!(
                "created join token {} for service {}",
                info.id, info.service
            );
            match &created.identity {
                Some(identity) => eprintln!("identity: {identity}"),
                None => eprintln!(
                    "identity: namespace {}, service account {} (in the control plane's trust domain)",
                    info.namespace, info.service_account
                ),
            }
            eprintln!("expires:  {}", expiry(info.expires));
            eprintln!(
                "The token is shown only now; {} keeps only its hash.",
                place.describe()
            );
        }
        TokensCommand::List { state_dir } => {
            let place = Place::new(state_dir, connection);
            let tokens = place.list().await.context("cannot list join tokens")?;
            if tokens.is_empty() {
                eprintln!("no join tokens in {}", place.describe());
            } else {
                print!("{}", token_table(&tokens, SystemTime::now()));
            }
        }
        TokensCommand::Revoke { state_dir, id } => {
            let place = Place::new(state_dir, connection);
            let revoked = place
                .revoke(&id)
                .await
                .context("cannot revoke the join token")?;
            match revoked {
                Revocation::Revoked(info) => println!(
                    "revoked join token {} (service {}, namespace {})",
                    info.id, info.service, info.namespace
                ),
                Revocation::AlreadyRevoked(info) => println!(
                    "join token {} (service {}) was already revoked",
                    info.id, info.service
                ),
            }
        }
    }
    Ok(())
}

fn expiry(expires: Option<SystemTime>) -> String {
    expires.map_or_else(|| "never".to_owned(), certs::rfc3339)
}

fn token_table(tokens: &[TokenInfo], now: SystemTime) -> String {
    let header = [
        "ID",
        "SERVICE",
        "NAMESPACE",
        "SERVICE ACCOUNT",
        "CREATED",
        "EXPIRES",
        "STATUS",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 7]> = tokens
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.service.clone(),
                t.namespace.clone(),
                t.service_account.clone(),
                certs::rfc3339(t.created),
                expiry(t.expires),
                t.status(now).to_string(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
