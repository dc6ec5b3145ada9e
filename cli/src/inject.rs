//! `weftctl inject`: the Kubernetes sidecar injection of the control plane's library
//! ([`weft_control_plane::inject`], which the admission webhook runs too) on manifests read from
//! a file or standard input, written to standard output.

use weft_control_plane::inject::{
    inject_yaml, Settings, DEFAULT_CONTROL_PLANE, DEFAULT_IMAGE, DEFAULT_TRUST_DOMAIN,
};
use weft_control_plane::operator::client::CtlError;

/// The flags of `weftctl inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Manifest file to read, `-` for standard input.
    #[arg(
        short = 'f',
        long = "filename",
        default_value = "-",
        value_name = "FILE"
    )]
    pub file: std::path::PathBuf,
    /// The control plane's sidecar address (`host:port`) the sidecars connect to.
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE, value_name = "ADDR")]
    pub control_plane: String,
    /// The mesh trust domain.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The sidecar image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
}

impl InjectArgs {
    /// The injection settings these flags give (defaults for the rest).
    pub fn settings(&self) -> Settings {
        Settings {
            control_plane: self.control_plane.clone(),
            trust_domain: self.trust_domain.clone(),
            image: self.image.clone(),
            ..Settings::default()
        }
    }
}

/// `weftctl inject`: read the manifests, inject, write YAML to `out`. Invalid input (or bad
/// flag values) is [`CtlError::Refused`] (exit 1) naming the object; an
/// unreadable file is a usage error (exit 2).
pub fn run(args: &InjectArgs, out: &mut dyn std::io::Write) -> Result<(), CtlError> {
    use std::io::Read as _;
    let settings = args.settings();
    settings
        .validate()
        .map_err(|e| CtlError::Refused(e.to_string()))?;
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Usage(format!("cannot read standard input: {e}")))?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", args.file.display())))?;
        (args.file.display().to_string(), text)
    };
    let injected =
        inject_yaml(&text, &settings).map_err(|e| CtlError::Refused(format!("{name}: {e}")))?;
    out.write_all(injected.as_bytes())
        .map_err(|e| CtlError::Server(format!("writing output: {e}")))
}
