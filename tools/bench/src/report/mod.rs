//! The one way results become the report: each scenario hands over its result values (the
//! pair's [`crate::pair::Report`], which holds the observability and resilience results,
//! and [`crate::cp_push::CpPushReport`]); the submodules write their Markdown, and
//! [`write`] puts the Markdown and the JSON of the same values into the output directory.
//! Nothing here measures or decides: it formats what it is given.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::results::DISTURBED_PCT;

mod cp_push;
mod observability;
mod pair;
mod resilience;

/// The one way a report leaves the benchmark: writes `<stem>.md` and `<stem>.json` into `out_dir`, then the Markdown to stdout.
pub fn write(
    out_dir: &Path,
    stem: &str,
    md: &str,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let md_path = out_dir.join(format!("{stem}.md"));
    let json_path = out_dir.join(format!("{stem}.json"));
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    // Files first, then stdout: a closed stdout (e.g. `| head`) must neither lose them nor
    // panic.
    let _ = writeln!(std::io::stdout(), "{md}");
    eprintln!(
        "weft-bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// `x` with `prec` decimals and thin grouping of thousands (`12 345.6`).
pub fn fmt_num(x: f64, prec: usize) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{:.*}", prec, x.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    if x < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// [`fmt_num`], or `–` for `None`.
pub fn fmt_opt(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "–".to_owned(), |v| fmt_num(v, prec))
}

/// A ratio as `0.927×`, or `–`.
pub fn fmt_times(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{}×", fmt_num(r, 3)))
}

/// Other work on the machine during a run (percent of one CPU), in bold when it marks the
/// run as disturbed.
pub fn fmt_other_work(pct: f64) -> String {
    if pct > DISTURBED_PCT {
        format!("**{}**", fmt_num(pct, 0))
    } else {
        fmt_num(pct, 0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.0, 0), "0");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(1234.5, 1), "1 234.5");
        assert_eq!(fmt_num(1234567.0, 0), "1 234 567");
        assert_eq!(fmt_num(-1234.0, 0), "-1 234");
        assert_eq!(fmt_num(0.1234, 3), "0.123");
        assert_eq!(fmt_opt(None, 2), "–");
    }
}
