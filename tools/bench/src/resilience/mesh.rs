//! The resilience scenarios' processes: three app instances (one failing) behind their own
//! sidecars, and the outbound sidecars without and with the policies ([`ResilienceMesh`]),
//! verified before the runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};

use crate::http1::{get_request, Conn};
use crate::mesh::*;

use super::config::*;
use super::variant::*;

/// An outbound sidecar of the resilience scenarios.
#[derive(Debug)]
pub struct PolicySidecar {
    /// `healthy` (calls the pair's sidecar B) or `failing` (calls the three
    /// instances).
    pub kind: &'static str,
    /// Its balancer and whether it has the policies (the healthy-path ones
    /// use the default balancer).
    pub variant: Variant,
    /// The process.
    pub child: ChildGuard,
    /// Its outbound (plain HTTP) address: the load's target.
    pub outbound_addr: SocketAddr,
    /// Its admin address.
    pub admin_addr: SocketAddr,
}

impl PolicySidecar {
    /// `healthy-<without|with>` or `failing-<balancer>-<without|with>`.
    pub fn key(&self) -> String {
        if self.kind == "healthy" {
            format!("{}-{}", self.kind, self.variant.policies.as_str())
        } else {
            format!("{}-{}", self.kind, self.variant.key())
        }
    }
}
/// Prefixes of the metric families [`ResilienceMesh::metrics`] keeps: the
/// resilience policies' counters and gauges.
pub const POLICY_METRICS: [&str; 5] = [
    "weft_retr",
    "weft_outlier",
    "weft_requests_rejected",
    "weft_endpoint",
    "weft_in_flight",
];
/// The processes of the resilience scenarios, beside a running [`Mesh`]:
///
/// * for the healthy-path cost, two more client-side sidecars (without and
///   with policies) calling the mesh's sidecar B, i.e. the same pair with
///   another outbound config;
/// * for "one of three endpoints fails", three app instances
///   (`app-1`..`app-3`, the last answering every request with the fail
///   status), each behind its own inbound sidecar with its own certificate
///   of identity [`APP_ID`], and four outbound sidecars listing the three
///   endpoints, one per [`Variant`] (without / with policies, P2C / round
///   robin).
#[derive(Debug)]
pub struct ResilienceMesh {
    /// The app instances; the last one fails every request.
    pub apps: Vec<ChildGuard>,
    /// Their inbound sidecars, in the same order.
    pub app_sidecars: Vec<ChildGuard>,
    /// Healthy path: outbound sidecars to the mesh's sidecar B, indexed by
    /// [`Policies::index`].
    pub healthy: Vec<PolicySidecar>,
    /// Failing endpoint: outbound sidecars to the three instances, indexed
    /// by [`Variant::index`].
    pub failing: Vec<PolicySidecar>,
    /// The `services:` / `routes:` config parts of the failing-endpoint
    /// outbound sidecars, as run, by [`Variant::key`].
    pub services_yaml: BTreeMap<String, String>,
}

/// [`check_config`] for a config with the resilience policy fields; a proxy
/// that does not know them gets a hint.
pub(crate) fn check_policy_config(bins: &Binaries, cfg: &Path) -> anyhow::Result<()> {
    check_config(bins, cfg).map_err(|e| {
        if is_unknown_field_error(&format!("{e:#}")) {
            e.context(
                "this weft-proxy does not know the resilience policy fields \
                 (outlier_detection, retry_budget, limits, retry, rate_limit); \
                 rebuild it (cargo build --release -p weft-proxy) or skip the \
                 resilience scenarios with --no-resilience",
            )
        } else {
            e
        }
    })
}

impl ResilienceMesh {
    /// Checks, before anything of the resilience scenarios starts, that
    /// `weft-proxy --check` accepts every outbound config they will use
    /// (rendered with placeholder ports into `dir/check-*.yaml`; `dir` holds
    /// the certificates [`Mesh::start`] wrote), so a proxy without the
    /// policy fields is refused before minutes of other runs.
    pub fn preflight(dir: &Path, bins: &Binaries) -> anyhow::Result<()> {
        let ports = SidecarPorts {
            outbound: 1,
            inbound: 2,
            admin: 3,
        };
        for v in Variant::ALL {
            let sidecar = policy_client_sidecar(4, ports, &[5, 6, 7], v.policies, v.balancer);
            let cfg = dir.join(format!("check-{}.yaml", v.key()));
            write_config(&cfg, &sidecar)?;
            check_policy_config(bins, &cfg)?;
        }
        Ok(())
    }

    /// Writes the configs into `dir` (where [`Mesh::start`] wrote the
    /// certificates), checks them all with `weft-proxy --check` (a proxy
    /// that does not know the policy fields fails here, before anything
    /// starts), starts every process pinned to CPU `core` and waits until
    /// all are ready. `app_inbound` is the mesh's sidecar B inbound port.
    // Long: the scenario's processes in start order (instances, their sidecars, the outbound sidecars), each step a few lines with its own checks.
    pub async fn start(
        dir: &Path,
        bins: &Binaries,
        core: usize,
        app_inbound: u16,
        fail_status: u16,
    ) -> anyhow::Result<Self> {
        // Per instance: app, sidecar outbound / inbound / admin; per policy
        // sidecar (2 healthy, 4 failing): outbound / inbound / admin /
        // unused app port.
        let p = free_ports(ENDPOINTS * 4 + (2 + Variant::ALL.len()) * 4)?;
        let mut next = p.into_iter();
        let mut port = || next.next().context("out of ports");
        let mut instances = Vec::new();
        for i in 1..=ENDPOINTS {
            let app_port = port()?;
            let ports = SidecarPorts {
                outbound: port()?,
                inbound: port()?,
                admin: port()?,
            };
            let cfg = dir.join(format!("sidecar-app-{i}.yaml"));
            write_config(
                &cfg,
                &app_sidecar_with_cert(app_port, ports, &instance_cert(i)),
            )?;
            check_config(bins, &cfg)?;
            instances.push((i, app_port, ports, cfg));
        }
        let inbound_ports: Vec<u16> = instances.iter().map(|(_, _, p, _)| p.inbound).collect();

        // The outbound sidecars: healthy path first (in Policies order), then
        // the failing endpoint's (in Variant order).
        let healthy = Policies::BOTH.map(|p| ("healthy", Variant::new(Balancer::P2cEwma, p)));
        let failing = Variant::ALL.map(|v| ("failing", v));
        let mut outbound = Vec::new();
        let mut services_yaml = BTreeMap::new();
        for (kind, v) in healthy.into_iter().chain(failing) {
            let endpoints = if kind == "healthy" {
                vec![app_inbound]
            } else {
                inbound_ports.clone()
            };
            let ports = SidecarPorts {
                outbound: port()?,
                inbound: port()?,
                admin: port()?,
            };
            let sidecar = policy_client_sidecar(port()?, ports, &endpoints, v.policies, v.balancer);
            let stem = if kind == "healthy" {
                format!("{kind}-{}", v.policies.as_str())
            } else {
                services_yaml.insert(
                    v.key(),
                    super::config::services_yaml(&endpoints, v.policies, v.balancer)?,
                );
                format!("{kind}-{}", v.key())
            };
            let cfg = dir.join(format!("sidecar-{stem}.yaml"));
            write_config(&cfg, &sidecar)?;
            check_policy_config(bins, &cfg)?;
            outbound.push((kind, v, ports, cfg, stem));
        }

        let mut apps = Vec::new();
        let mut app_sidecars = Vec::new();
        for (i, app_port, _, cfg) in &instances {
            let name = instance_cert(*i);
            let failing = *i == ENDPOINTS;
            let mut cmd = pinned(core, &bins.sample);
            cmd.args([
                "http",
                "--listen",
                &loopback(*app_port).to_string(),
                "--name",
                &name,
                "--threads",
                "1",
            ]);
            if failing {
                cmd.args(["--fail-status", &fail_status.to_string()]);
            }
            apps.push(ChildGuard::spawn(
                &format!(
                    "{name} (weft-sample{})",
                    if failing { ", failing" } else { "" }
                ),
                cmd,
                &dir.join(format!("{name}.stderr")),
            )?);
            let mut cmd = pinned(core, &bins.proxy);
            cmd.arg("--config").arg(cfg);
            app_sidecars.push(ChildGuard::spawn(
                &format!("sidecar of {name}"),
                cmd,
                &dir.join(format!("sidecar-{name}.stderr")),
            )?);
        }
        let mut sidecars = Vec::new();
        for (kind, v, ports, cfg, stem) in &outbound {
            let mut cmd = pinned(core, &bins.proxy);
            cmd.arg("--config").arg(cfg);
            let child = ChildGuard::spawn(
                &format!("{kind}-endpoint client sidecar, {}", v.label()),
                cmd,
                &dir.join(format!("sidecar-{stem}.stderr")),
            )?;
            sidecars.push(PolicySidecar {
                kind,
                variant: *v,
                child,
                outbound_addr: loopback(ports.outbound),
                admin_addr: loopback(ports.admin),
            });
        }

        for ((i, app_port, ports, _), (app, sidecar)) in instances
            .iter()
            .zip(apps.iter_mut().zip(app_sidecars.iter_mut()))
        {
            let status = if *i == ENDPOINTS { fail_status } else { 200 };
            wait_status(app, loopback(*app_port), "/", status).await?;
            wait_ready(sidecar, loopback(ports.admin), "/ready").await?;
        }
        for s in &mut sidecars {
            wait_ready(&mut s.child, s.admin_addr, "/ready").await?;
        }
        let (healthy, failing): (Vec<_>, Vec<_>) =
            sidecars.into_iter().partition(|s| s.kind == "healthy");
        Ok(ResilienceMesh {
            apps,
            app_sidecars,
            healthy,
            failing,
            services_yaml,
        })
    }

    /// The healthy-path outbound sidecar of `policies`.
    pub fn healthy(&self, policies: Policies) -> &PolicySidecar {
        &self.healthy[policies.index()]
    }

    /// The failing-endpoint outbound sidecar of `variant`.
    pub fn failing(&self, variant: Variant) -> &PolicySidecar {
        &self.failing[variant.index()]
    }

    /// PIDs a failing-endpoint run watches: the outbound sidecar of
    /// `variant`, the inbound sidecars, the apps.
    pub fn failing_watch(&self, variant: Variant) -> Vec<u32> {
        std::iter::once(self.failing(variant).child.pid())
            .chain(self.app_sidecars.iter().map(ChildGuard::pid))
            .chain(self.apps.iter().map(ChildGuard::pid))
            .collect()
    }

    /// Each outbound sidecar's `/metrics`, written whole to
    /// `dir/metrics-<key>.txt`; returns, by [`PolicySidecar::key`], the
    /// lines of the policy metric families ([`POLICY_METRICS`]). A sidecar
    /// whose metrics cannot be read gets one line saying why.
    pub async fn metrics(&self, dir: &Path) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for s in self.healthy.iter().chain(&self.failing) {
            let lines = match fetch_metrics(s.admin_addr).await {
                Ok(text) => {
                    let path = dir.join(format!("metrics-{}.txt", s.key()));
                    if let Err(e) = std::fs::write(&path, &text) {
                        eprintln!("weft-bench: writing {}: {e}", path.display());
                    }
                    metric_lines(&text, &POLICY_METRICS)
                }
                Err(e) => vec![format!("(metrics not read: {e:#})")],
            };
            out.insert(s.key(), lines);
        }
        out
    }

    /// Every process, for messages.
    pub fn children(&self) -> Vec<&ChildGuard> {
        self.healthy
            .iter()
            .chain(&self.failing)
            .map(|s| &s.child)
            .chain(&self.app_sidecars)
            .chain(&self.apps)
            .collect()
    }

    /// Fails if any of the processes has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in self.healthy.iter_mut().chain(self.failing.iter_mut()) {
            s.child.check_alive()?;
        }
        for c in self.app_sidecars.iter_mut().chain(self.apps.iter_mut()) {
            c.check_alive()?;
        }
        Ok(())
    }

    /// Checks the setup once, returning by variant the instances that
    /// answered:
    ///
    /// * both healthy-path sidecars answer 200 and the app sees the client's
    ///   identity;
    /// * through the round-robin sidecar without policies, each of the three
    ///   instances answers (with its own status: 200, or `fail_status` from
    ///   the failing one), so mTLS to every inbound sidecar works;
    /// * through the P2C sidecar without policies, the answers come from the
    ///   instances and at least one is healthy (one request at a time, P2C
    ///   on peak-EWMA latency may never try an endpoint: untried ones are
    ///   assumed slow, a 5xx is charged as a slow answer);
    /// * the sidecars with policies answer.
    pub async fn verify(&self, fail_status: u16) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let timeout = Duration::from_secs(5);
        for p in Policies::BOTH {
            let addr = self.healthy(p).outbound_addr;
            let (status, body) = tokio::time::timeout(timeout, get(addr, "app", "/"))
                .await
                .with_context(|| format!("healthy path {}: timed out", p.label()))??;
            let text = String::from_utf8_lossy(&body);
            ensure!(
                status == 200,
                "healthy path {}: status {status}: {text}",
                p.label()
            );
            let caller = caller_of(&body)?;
            ensure!(
                caller.as_deref() == Some(CLIENT_ID),
                "healthy path {}: the app saw caller {caller:?}: {text}",
                p.label()
            );
        }
        let failing = instance_cert(ENDPOINTS);
        let mut seen_by = BTreeMap::new();
        for balancer in Balancer::ALL {
            let v = Variant::new(balancer, Policies::Without);
            let seen = self.answering(v, fail_status, 30).await?;
            let ok = match balancer {
                Balancer::RoundRobin => seen.len() == ENDPOINTS,
                Balancer::P2cEwma => seen.iter().any(|n| *n != failing),
            };
            ensure!(
                ok,
                "through the failing-endpoint sidecar ({}) only {seen:?} answered in 30 requests",
                v.label()
            );
            seen_by.insert(v.key(), seen);
        }
        for balancer in Balancer::ALL {
            let v = Variant::new(balancer, Policies::With);
            tokio::time::timeout(timeout, get(self.failing(v).outbound_addr, "app", "/"))
                .await
                .with_context(|| format!("failing endpoint, {}: timed out", v.label()))??;
        }
        Ok(seen_by)
    }

    /// Sends `n` requests, one at a time, through the failing-endpoint
    /// sidecar of `v`; checks that each answer comes from one of the
    /// instances with its status (200, `fail_status` from the failing one)
    /// and returns the names of those that answered.
    pub(crate) async fn answering(
        &self,
        v: Variant,
        fail_status: u16,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let timeout = Duration::from_secs(5);
        let addr = self.failing(v).outbound_addr;
        let failing = instance_cert(ENDPOINTS);
        let names: Vec<String> = (1..=ENDPOINTS).map(instance_cert).collect();
        let mut seen = std::collections::BTreeSet::new();
        let req = get_request("app", "/");
        let mut conn = None;
        for _ in 0..n {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(
                    tokio::time::timeout(timeout, Conn::connect(addr))
                        .await
                        .with_context(|| {
                            format!("connecting to {addr} ({}) timed out", v.label())
                        })??,
                ),
            };
            let resp = tokio::time::timeout(timeout, c.request(&req))
                .await
                .with_context(|| format!("request through {addr} ({}) timed out", v.label()))??;
            let body: serde_json::Value = serde_json::from_slice(resp.body).with_context(|| {
                format!(
                    "failing endpoint, {}: status {}: {}",
                    v.label(),
                    resp.status,
                    String::from_utf8_lossy(resp.body)
                )
            })?;
            let name = body["service"].as_str().unwrap_or("?").to_owned();
            ensure!(
                names.contains(&name),
                "failing endpoint, {}: answered by {name:?}, not one of {names:?}: {body}",
                v.label()
            );
            let want = if name == failing { fail_status } else { 200 };
            ensure!(
                resp.status == want,
                "failing endpoint, {}: {name} answered {}: {body}",
                v.label(),
                resp.status
            );
            seen.insert(name);
            if c.is_closed() {
                conn = None;
            }
        }
        Ok(seen.into_iter().collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_configs() {
        let ports = SidecarPorts {
            outbound: 1001,
            inbound: 1002,
            admin: 1003,
        };
        let base = client_sidecar_base(1000, ports);
        for p in Policies::BOTH {
            for b in Balancer::ALL {
                let c = policy_client_sidecar(1000, ports, &[3001, 3002, 3003], p, b);
                let part = policy_part(&[3001, 3002, 3003], p, b);
                assert_eq!(c.services, part.services);
                assert_eq!(c.routes, part.routes);
                assert_eq!(
                    (c.service, c.listen, c.tls),
                    (base.service.clone(), base.listen.clone(), base.tls.clone())
                );
            }
        }
        // The plain client config is the same base and one endpoint, without policies.
        let plain = client_sidecar(1000, ports, 3001);
        assert_eq!(plain.service, base.service);
        assert!(plain.services[0].outlier_detection.is_none());
        let b = app_sidecar_with_cert(1000, ports, &instance_cert(2));
        assert_eq!(
            (
                b.tls.cert.as_str(),
                b.tls.key.as_str(),
                b.tls.trust_bundle.as_str()
            ),
            ("app-2.crt", "app-2.key", "ca.crt")
        );
        assert_eq!(b.service.identity, APP_ID);
        assert_eq!(
            app_sidecar(1000, ports),
            app_sidecar_with_cert(1000, ports, "app")
        );
    }
    #[test]
    fn policy_metric_lines() {
        let text = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n\
            # HELP weft_retries_total retry attempts sent\n\
            # TYPE weft_retries_total counter\n\
            weft_retries_total{route=\"all\"} 12\n\
            weft_requests_total{code=\"200\"} 5\n\
            weft_outlier_ejections_total{endpoint=\"127.0.0.1:9\"} 1\n\
            weft_endpoint_ejected{endpoint=\"127.0.0.1:9\"} 1\n";
        assert_eq!(
            metric_lines(text, &POLICY_METRICS),
            vec![
                "weft_retries_total{route=\"all\"} 12",
                "weft_outlier_ejections_total{endpoint=\"127.0.0.1:9\"} 1",
                "weft_endpoint_ejected{endpoint=\"127.0.0.1:9\"} 1",
            ]
        );
    }
    #[test]
    fn caller_field() {
        let body = br#"{"service":"app","caller":"spiffe://weft.local/ns/default/sa/client","headers":{}}"#;
        assert_eq!(caller_of(body).unwrap().as_deref(), Some(CLIENT_ID));
        assert_eq!(caller_of(br#"{"caller":null}"#).unwrap(), None);
        assert!(caller_of(b"nope").is_err());
    }
}
