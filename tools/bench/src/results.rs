//! Result vocabulary every scenario shares: a target and whether a measurement meets it, the
//! watched processes' indices and the "disturbed run" threshold. Scenarios build these values;
//! [`crate::report`] only formats them, so neither needs to import the other's file.

use serde::Serialize;

/// Index of the app in the watched processes.
pub const APP: usize = 0;
/// Index of sidecar A (client side) in the watched processes.
pub const SIDECAR_A: usize = 1;
/// Index of sidecar B (app side) in the watched processes.
pub const SIDECAR_B: usize = 2;

/// Other work on the benchmark's CPUs above this (percent of one CPU) marks a
/// run as disturbed.
pub const DISTURBED_PCT: f64 = 10.0;

/// One of the targets and whether the measurement meets it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub what: String,
    /// The target, as text.
    pub target: String,
    /// The measured value (`None` if it could not be measured).
    pub measured: Option<f64>,
    /// Whether the target is met.
    pub met: bool,
}

/// A target check: `measured` meets `target` if `ok` says so.
pub fn check(
    what: &str,
    target: &str,
    measured: Option<f64>,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    TargetCheck {
        what: what.to_owned(),
        target: target.to_owned(),
        measured,
        met: measured.is_some_and(ok),
    }
}
