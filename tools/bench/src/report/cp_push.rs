//! The control-plane push report, from a [`CpPushReport`] it is given.

use std::fmt::Write as _;

use crate::cp_push::{CpPushReport, TARGET_ACK, TARGET_KIB_PER_SIDECAR};

impl CpPushReport {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let f = |x: Option<f64>, p: usize| x.map_or("n/a".to_owned(), |v| format!("{v:.p$}"));
        let mut out = format!(
            "## Control-plane push at scale\n\n\
             {} services, a fresh control plane per sidecar count and run; {} run(s) x {} policy change(s); medians.\n\n\
             | sidecars | connect storm (s) | ACK after change p50 (ms) | p99 (ms) | max (ms) | worst max (ms) | CP RSS idle (MiB) | CP RSS after change (MiB) | CP peak RSS, VmHWM (MiB) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.services, self.runs, self.changes
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.sidecars,
                f(s.connect_s, 2),
                f(s.p50_ms, 0),
                f(s.p99_ms, 0),
                f(s.max_ms, 0),
                f(s.worst_max_ms, 0),
                f(s.idle_rss_mib, 1),
                f(s.after_rss_mib, 1),
                f(s.peak_hwm_mib, 1),
            );
        }
        let _ = write!(
            out,
            "\nTime to ACK: from the rename of the policy file until each sidecar sent its ACK of the new \
             version (the control plane polls the directory every 250 ms). Targets: every sidecar within {} s, \
             control plane RSS growth at most {TARGET_KIB_PER_SIDECAR} KiB per connected sidecar.\n\n\
             | sidecars | CP RSS per sidecar (KiB) | one pod added: receivers | Endpoints msgs / bytes | snapshots msgs / bytes | all ACKed (ms) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            TARGET_ACK.as_secs()
        );
        for s in &self.summary {
            let Some(c) = &s.endpoint_change else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} | {} / {} | {:.0} |",
                s.sidecars,
                f(s.kib_per_sidecar, 1),
                c.receivers,
                c.endpoints_messages,
                c.endpoints_bytes,
                c.snapshot_messages,
                c.snapshot_bytes,
                c.all_acked_ms
            );
        }
        out.push('\n');
        for s in &self.summary {
            let _ = writeln!(
                out,
                "- {} sidecars: {}",
                s.sidecars,
                if s.meets_targets() {
                    "targets met"
                } else {
                    "TARGETS MISSED"
                }
            );
        }
        let _ = write!(
            out,
            "\nControl plane: {}.\nSidecars: {}.\n",
            self.control_plane, self.sidecars
        );
        out
    }
}
