//! The `weft.dev/*` annotations' values: each checked (a bad one names what is wrong), and the
//! sidecar's tuning they give, with defaults from the settings.

use super::{ADMIN_PORT, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT};

/// The tuning read from annotations, with defaults from the settings.
pub(super) struct Tuning {
    pub(super) service: Option<String>,
    pub(super) app_port: Option<u16>,
    pub(super) protocol: Option<String>,
    pub(super) cpu_request: String,
    pub(super) memory_request: String,
    pub(super) memory_limit: String,
    pub(super) log_level: String,
}

pub(super) fn tuned(
    given: Option<String>,
    default: &str,
    check: fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    check(given.as_deref().unwrap_or(default))
}

pub(super) fn service_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes Service name (1-63 of a-z, 0-9 and '-')"
        ))
    }
}

pub(super) fn app_port(s: &str) -> Result<u16, String> {
    let port = s
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} is not a port number (1-65535)"))?;
    if [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, METRICS_PORT].contains(&port) {
        return Err(format!("{port} is one of the sidecar's own ports"));
    }
    Ok(port)
}

pub(super) fn protocol(s: &str) -> Result<String, String> {
    match s {
        "http" | "grpc" | "tcp" => Ok(s.to_owned()),
        _ => Err(format!("{s:?}: want http, grpc or tcp")),
    }
}

pub(super) fn log_level(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        l @ ("off" | "error" | "warn" | "info" | "debug" | "trace") => Ok(l.to_owned()),
        _ => Err(format!(
            "{s:?}: want off, error, warn, info, debug or trace"
        )),
    }
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), not negative.
pub(super) fn quantity(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a Kubernetes quantity (such as 100m or 64Mi)");
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if number_ok && suffix_ok {
        Ok(s.to_owned())
    } else {
        Err(bad())
    }
}
