//! The observability scenario's processes: a sidecar pair per [`ObsVariant`] in front of the
//! benchmark's app, the in-process trace collector they export to, and what the pairs'
//! counters say after each run ([`ObservabilityMesh`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use tokio::time::Instant;

use crate::collector::Collector;
use crate::mesh::*;

use super::telemetry::*;
use super::variant::*;

/// One variant's sidecar pair in the observability scenario.
#[derive(Debug)]
pub struct ObsPair {
    /// Which variant.
    pub variant: ObsVariant,
    /// Sidecar A, beside the client. (Declared first: it ends first, closing
    /// its pooled connections to sidecar B, which can then exit at once.)
    pub client: ChildGuard,
    /// Sidecar B, beside the app (the benchmark's app).
    pub app: ChildGuard,
    /// Sidecar A's outbound address: the load's target.
    pub outbound_addr: SocketAddr,
    /// Sidecar A's admin address.
    pub client_admin: SocketAddr,
    /// Sidecar B's admin address.
    pub app_admin: SocketAddr,
    /// The access log files (A, B), if the variant writes them.
    pub access_logs: Vec<PathBuf>,
}

/// The observability scenario's processes, beside a running [`Mesh`]: one
/// sidecar pair per [`ObsVariant`] in front of the mesh's app (all at once,
/// or one at a time: [`PairLifetime`](crate::observability::PairLifetime)),
/// and the in-process trace collector
/// the tracing variants export to.
#[derive(Debug)]
pub struct ObservabilityMesh {
    /// The running pairs, indexed by [`ObsVariant::index`]. (Declared before
    /// the collector: the sidecars end first, so they never export into a
    /// stopped collector.)
    pub(crate) pairs: Vec<Option<ObsPair>>,
    /// The OTLP/gRPC collector.
    pub collector: Collector,
    /// What each variant adds to sidecar A's config, by [`ObsVariant::key`].
    pub config_lines: BTreeMap<String, String>,
    pub(crate) dir: PathBuf,
    pub(crate) bins: Binaries,
    pub(crate) core: usize,
    pub(crate) app_port: u16,
    /// Pairs started so far.
    pub starts: usize,
}

/// How long [`ObservabilityMesh::settle`] waits at most for a run's spans
/// and log lines (the sidecars export a partial batch after `export_interval`,
/// 1 s by default).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

impl ObservabilityMesh {
    /// Checks, before anything else runs, that `weft-proxy --check` accepts
    /// the tracing variants' configs (rendered with placeholder ports into
    /// `dir/check-obs-*.yaml`; `dir` holds the certificates): a proxy
    /// without the `tracing` block is refused with a hint.
    pub fn preflight(dir: &Path, bins: &Binaries) -> anyhow::Result<()> {
        let ports = SidecarPorts {
            outbound: 1,
            inbound: 2,
            admin: 3,
        };
        for v in ObsVariant::ALL
            .into_iter()
            .filter(|v| v.sampling().is_some())
        {
            let mut sidecar = client_sidecar(4, ports, 5);
            v.apply(&mut sidecar, Side::Client, loopback(6));
            let cfg = dir.join(format!("check-obs-{}.yaml", v.key()));
            write_config(&cfg, &sidecar)?;
            check_config(bins, &cfg).map_err(|e| {
                if crate::resilience::is_unknown_field_error(&format!("{e:#}")) {
                    e.context(
                        "this weft-proxy does not know the `tracing` block; rebuild it \
                         (cargo build --release -p weft-proxy) or skip the observability \
                         scenario with --no-observability",
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    /// Starts the collector (a thread of this process, pinned to CPU
    /// `loadgen_core`); pairs run on CPU `core` in front of the app on
    /// 127.0.0.1:`app_port`, their configs and stderr in `dir` (where
    /// [`Mesh::start`] wrote the certificates). No pair runs yet.
    pub fn new(
        dir: &Path,
        bins: &Binaries,
        core: usize,
        loadgen_core: usize,
        app_port: u16,
    ) -> anyhow::Result<Self> {
        let collector = Collector::start(loadgen_core).context("starting the trace collector")?;
        let config_lines = ObsVariant::ALL
            .into_iter()
            .map(|v| {
                (
                    v.key().to_owned(),
                    v.config_lines(Side::Client, collector.addr()),
                )
            })
            .collect();
        Ok(ObservabilityMesh {
            pairs: ObsVariant::ALL.map(|_| None).into_iter().collect(),
            collector,
            config_lines,
            dir: dir.to_owned(),
            bins: bins.clone(),
            core,
            app_port,
            starts: 0,
        })
    }

    /// Starts the pair of `v` (unless it runs): writes both configs (fresh
    /// ports), checks them with `weft-proxy --check` the first time, starts
    /// both sidecars and waits until they are ready.
    pub async fn start_pair(&mut self, v: ObsVariant) -> anyhow::Result<()> {
        if self.pairs[v.index()].is_some() {
            return Ok(());
        }
        let c_addr = self.collector.addr();
        let p = free_ports(7)?;
        let a_ports = SidecarPorts {
            outbound: p[0],
            inbound: p[1],
            admin: p[2],
        };
        let unused_app_port = p[3];
        let b_ports = SidecarPorts {
            outbound: p[4],
            inbound: p[5],
            admin: p[6],
        };
        let dir = &self.dir;
        let b_cfg = dir.join(format!("sidecar-obs-{}-b.yaml", v.key()));
        let a_cfg = dir.join(format!("sidecar-obs-{}-a.yaml", v.key()));
        let first = !b_cfg.exists();
        let mut b = app_sidecar(self.app_port, b_ports);
        v.apply(&mut b, Side::App, c_addr);
        write_config(&b_cfg, &b)?;
        let mut a = client_sidecar(unused_app_port, a_ports, b_ports.inbound);
        v.apply(&mut a, Side::Client, c_addr);
        write_config(&a_cfg, &a)?;
        if first {
            for cfg in [&b_cfg, &a_cfg] {
                check_config(&self.bins, cfg)?;
            }
        }
        let mut b_cmd = pinned(self.core, &self.bins.proxy);
        b_cmd.arg("--config").arg(&b_cfg);
        let mut app = ChildGuard::spawn(
            &format!("observability {}: sidecar B (app)", v.label()),
            b_cmd,
            &dir.join(format!("sidecar-obs-{}-b.stderr", v.key())),
        )?;
        let mut a_cmd = pinned(self.core, &self.bins.proxy);
        a_cmd.arg("--config").arg(&a_cfg);
        let mut client = ChildGuard::spawn(
            &format!("observability {}: sidecar A (client)", v.label()),
            a_cmd,
            &dir.join(format!("sidecar-obs-{}-a.stderr", v.key())),
        )?;
        self.starts += 2;
        wait_ready(&mut app, loopback(b_ports.admin), "/ready").await?;
        wait_ready(&mut client, loopback(a_ports.admin), "/ready").await?;
        let access_logs = if v.access_log() {
            [Side::Client, Side::App]
                .map(|s| dir.join(v.access_log_file(s)))
                .to_vec()
        } else {
            Vec::new()
        };
        self.pairs[v.index()] = Some(ObsPair {
            variant: v,
            client,
            app,
            outbound_addr: loopback(a_ports.outbound),
            client_admin: loopback(a_ports.admin),
            app_admin: loopback(b_ports.admin),
            access_logs,
        });
        Ok(())
    }

    /// Ends the pair of `v` (by PID: sidecar A, then B), if it runs.
    pub fn stop_pair(&mut self, v: ObsVariant) {
        drop(self.pairs[v.index()].take());
    }

    /// The running pair of `v`.
    pub fn pair(&self, v: ObsVariant) -> anyhow::Result<&ObsPair> {
        self.pairs[v.index()]
            .as_ref()
            .with_context(|| format!("the observability pair {} is not running", v.label()))
    }

    /// PIDs a run of `v` watches: `app`, the pair of `v` (A, B), then every
    /// idle sidecar: the other running pairs' and `idle_extra` (from
    /// [`crate::observability::FIRST_IDLE`] on).
    pub fn watch(&self, v: ObsVariant, app: u32, idle_extra: &[u32]) -> anyhow::Result<Vec<u32>> {
        let p = self.pair(v)?;
        Ok([app, p.client.pid(), p.app.pid()]
            .into_iter()
            .chain(
                self.pairs
                    .iter()
                    .flatten()
                    .filter(|o| o.variant != v)
                    .flat_map(|o| [o.client.pid(), o.app.pid()]),
            )
            .chain(idle_extra.iter().copied())
            .collect())
    }

    /// Checks once, through the pair of `v`, that a request answers 200, the
    /// app sees the client's identity, and the trace context the app
    /// receives is the variant's ([`ObsVariant::expected_trace_flags`]): none
    /// without a collector, a `traceparent` the outbound sidecar started,
    /// unsampled at 0 % and sampled at 100 %.
    pub async fn verify(&self, v: ObsVariant) -> anyhow::Result<()> {
        let p = self.pair(v)?;
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), get(p.outbound_addr, "app", "/"))
                .await
                .with_context(|| format!("observability {}: timed out", v.label()))??;
        let text = String::from_utf8_lossy(&body);
        ensure!(
            status == 200,
            "observability {}: status {status}: {text}",
            v.label()
        );
        let caller = caller_of(&body)?;
        ensure!(
            caller.as_deref() == Some(CLIENT_ID),
            "observability {}: the app saw caller {caller:?}: {text}",
            v.label()
        );
        let tp = header_of(&body, "traceparent")?;
        match (v.expected_trace_flags(), tp.as_deref()) {
            (None, None) => Ok(()),
            (Some(flags), Some(tp)) if traceparent_flags(tp) == Some(flags) => Ok(()),
            (want, got) => bail!(
                "observability {}: the app got traceparent {got:?}, expected {}",
                v.label(),
                want.map_or_else(|| "none".to_owned(), |f| format!("one with flags {f}"))
            ),
        }
    }

    /// Both sidecars' counters of `v`'s pair: (A, B).
    pub async fn counters(
        &self,
        v: ObsVariant,
    ) -> anyhow::Result<(SidecarCounters, SidecarCounters)> {
        let p = self.pair(v)?;
        let a = fetch_metrics(p.client_admin)
            .await
            .with_context(|| format!("metrics of {}", p.client.name()))?;
        let b = fetch_metrics(p.app_admin)
            .await
            .with_context(|| format!("metrics of {}", p.app.name()))?;
        Ok((SidecarCounters::parse(&a), SidecarCounters::parse(&b)))
    }

    /// After a run of `v`: waits (at most [`SETTLE_TIMEOUT`], polling every
    /// 100 ms) until what the run produced is accounted for
    /// ([`accounted_for`]), counted from `before` (the pair's counters and
    /// the collector's spans and requests before the run); then reads and
    /// empties the access log files.
    pub async fn settle(
        &self,
        v: ObsVariant,
        before: (SidecarCounters, SidecarCounters),
        collector_before: (u64, u64),
    ) -> anyhow::Result<RunTelemetry> {
        let started = Instant::now();
        let polls = SETTLE_TIMEOUT.as_millis() / 100 + 1;
        let mut t = RunTelemetry::default();
        for i in 0..polls {
            let (a, b) = self.counters(v).await?;
            t.client = a.since(&before.0);
            t.app = b.since(&before.1);
            t.collector_spans = self.collector.spans().saturating_sub(collector_before.0);
            t.collector_requests = self.collector.requests().saturating_sub(collector_before.1);
            t.accounted_for = accounted_for(v, &t.client, &t.app, t.collector_spans);
            if t.accounted_for || i + 1 == polls {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t.wait_s = started.elapsed().as_secs_f64();
        for path in &self.pair(v)?.access_logs {
            t.access_log_bytes += take_file_len(path)?;
        }
        Ok(t)
    }

    /// Writes the whole `/metrics` of each running sidecar to
    /// `dir/metrics-obs-<key>-<a|b>.txt`.
    pub async fn save_metrics(&self, dir: &Path) {
        for v in ObsVariant::ALL {
            self.save_pair_metrics(v, dir).await;
        }
    }

    /// Writes the whole `/metrics` of both sidecars of `v`'s pair (if it
    /// runs) to `dir/metrics-obs-<key>-<a|b>.txt`.
    pub async fn save_pair_metrics(&self, v: ObsVariant, dir: &Path) {
        let Ok(p) = self.pair(v) else { return };
        for (side, admin) in [(Side::Client, p.client_admin), (Side::App, p.app_admin)] {
            let path = dir.join(format!("metrics-obs-{}-{}.txt", v.key(), side.letter()));
            let text = match fetch_metrics(admin).await {
                Ok(t) => t,
                Err(e) => format!("(metrics not read: {e:#})"),
            };
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("weft-bench: writing {}: {e}", path.display());
            }
        }
    }

    /// Every running process, for messages.
    pub fn children(&self) -> Vec<&ChildGuard> {
        self.pairs
            .iter()
            .flatten()
            .flat_map(|p| [&p.client, &p.app])
            .collect()
    }

    /// Fails if any of the running processes has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.pairs.iter_mut().flatten() {
            p.client.check_alive()?;
            p.app.check_alive()?;
        }
        Ok(())
    }
}
/// The length of the file at `path` (0 if it does not exist), which is then
/// emptied. (The sidecars open their access logs for appending, so they go
/// on writing at the new end.)
pub(crate) fn take_file_len(path: &Path) -> anyhow::Result<u64> {
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata()?.len();
    f.set_len(0)
        .with_context(|| format!("emptying {}", path.display()))?;
    Ok(len)
}

/// A request header the sample app echoed in its JSON body (`headers`).
pub fn header_of(body: &[u8], name: &str) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the app's answer is not JSON")?;
    Ok(v.get("headers")
        .and_then(|h| h.get(name))
        .and_then(|c| c.as_str())
        .map(str::to_owned))
}

/// The flags of a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn traceparent_flags(tp: &str) -> Option<&str> {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        ["00", trace, parent, flags] if hex(trace, 32) && hex(parent, 16) && hex(flags, 2) => {
            Some(flags)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trace_headers() {
        let body = br#"{"service":"app","caller":null,"headers":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","host":"app"}}"#;
        let tp = header_of(body, "traceparent").unwrap().unwrap();
        assert_eq!(traceparent_flags(&tp), Some("01"));
        assert_eq!(header_of(body, "tracestate").unwrap(), None);
        assert_eq!(
            header_of(br#"{"service":"app"}"#, "traceparent").unwrap(),
            None
        );
        assert_eq!(
            traceparent_flags("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            Some("00")
        );
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
        ] {
            assert_eq!(traceparent_flags(bad), None, "{bad}");
        }
    }
    #[test]
    fn take_file_len_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        assert_eq!(take_file_len(&path).unwrap(), 0);
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"0123456789").unwrap();
            assert_eq!(take_file_len(&path).unwrap(), 10);
            // An appending writer goes on at the new end.
            f.write_all(b"abc").unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }
}
