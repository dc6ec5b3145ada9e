//! A sidecar's own file: its local part (own service, listeners, control plane, tracing) and
//! how it joins its policy part.

use std::path::PathBuf;
use std::time::Duration;

use crate::detection::{DEFAULT_DETECT_TIMEOUT, DEFAULT_OPAQUE_PORTS, DETECT_TIMEOUT_RANGE};
use crate::fields::*;
use crate::model::*;
use crate::{wire, Validator};

impl Validator<'_> {
    pub(super) fn config(&mut self, raw: wire::ConfigFile) -> Option<Config> {
        let (local, policy) = raw.split();
        if local.control_plane.is_some() {
            for (field, set) in [
                ("services", !policy.services.is_empty()),
                ("routes", !policy.routes.is_empty()),
                ("authorization", policy.authorization.is_some()),
            ] {
                if set {
                    self.err(
                        field,
                        "must be absent when control_plane is set: the policy comes from the control plane"
                            .to_owned(),
                    );
                }
            }
        }
        let (local, reserved) = self.local(local);
        let policy = self.policy(policy, &reserved);
        Some(Config::from_parts(local?, policy))
    }

    /// The `control_plane` block: where the policy comes from, and how a first certificate
    /// and a first policy are had.
    pub(super) fn control_plane(&mut self, cp: wire::ControlPlane) -> Option<ControlPlane> {
        let address = self.check("control_plane.address", host_port(&cp.address));
        let identity = self.check("control_plane.identity", identity(&cp.identity));
        let bootstrap_timeout = self.duration(
            "control_plane.bootstrap_timeout",
            cp.bootstrap_timeout,
            DEFAULT_BOOTSTRAP_TIMEOUT,
        );
        if cp.join_token_file.as_deref() == Some("") {
            self.err(
                "control_plane.join_token_file",
                "must name a file (or be left out)",
            );
        }
        let bootstrap_authorization = cp
            .bootstrap_authorization
            .map(|a| self.authorization_at("control_plane.bootstrap_authorization", Some(a)));
        Some(ControlPlane {
            bootstrap_authorization,
            address: address?,
            identity: identity?,
            state_file: cp.state_file.map(|f| self.base.join(f)),
            join_token_file: cp
                .join_token_file
                .filter(|f| !f.is_empty())
                .map(|f| self.base.join(f)),
            bootstrap_timeout,
            trust_bundle: cp.trust_bundle.unwrap_or_default(),
        })
    }

    /// The sidecar-local part, and the ports its loopback listeners take (known when the
    /// listeners are valid, even if something else is not).
    pub(super) fn local(&mut self, raw: wire::LocalFile) -> (Option<Local>, Vec<u16>) {
        let own = self.own(raw.service);
        let listen = self.listen(raw.listen);
        let tls = TlsPaths {
            cert: self.base.join(raw.tls.cert),
            key: self.base.join(raw.tls.key),
            trust_bundle: self.base.join(raw.tls.trust_bundle),
        };
        let workers = raw.workers.unwrap_or(DEFAULT_WORKERS);
        if !(1..=64).contains(&workers) {
            self.err("workers", format!("must be 1 to 64, got {workers}"));
        }
        let drain_timeout =
            self.duration("drain_timeout", raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let connect_timeout = self.duration(
            "connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration("idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let max_connections_per_listener = raw
            .max_connections_per_listener
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_LISTENER);
        if !(1..=1_000_000).contains(&max_connections_per_listener) {
            self.err(
                "max_connections_per_listener",
                format!("must be 1 to 1000000, got {max_connections_per_listener}"),
            );
        }
        let tracing = self.tracing(raw.tracing.unwrap_or_default());
        let access_log = raw.access_log.map(|p| {
            if p == "-" {
                PathBuf::from("-")
            } else {
                self.base.join(p)
            }
        });
        let control_plane = raw.control_plane.and_then(|cp| self.control_plane(cp));
        let reserved = listen
            .as_ref()
            .map(|l| vec![l.outbound.port(), l.admin.port()])
            .unwrap_or_default();
        let local = match (own, listen) {
            (Some(own), Some(listen)) => Some(Local {
                own,
                listen,
                tls,
                workers,
                drain_timeout,
                connect_timeout,
                access_log,
                idle_timeout,
                max_connections_per_listener,
                tracing,
                control_plane,
            }),
            _ => None,
        };
        (local, reserved)
    }

    pub(super) fn tracing(&mut self, raw: wire::Tracing) -> Tracing {
        let d = Tracing::default();
        let collector = raw
            .collector
            .and_then(|c| self.check("tracing.collector", collector_url(&c)));
        let sampling = raw.sampling.unwrap_or(d.sampling);
        if !(0.0..=1.0).contains(&sampling) {
            self.err(
                "tracing.sampling",
                format!("must be a probability from 0.0 to 1.0, got {sampling}"),
            );
        }
        let max_queue = raw.max_queue.unwrap_or(d.max_queue);
        if !(1..=1_000_000).contains(&max_queue) {
            self.err(
                "tracing.max_queue",
                format!("must be 1 to 1000000, got {max_queue}"),
            );
        }
        let export_interval = self.bounded(
            "tracing.export_interval",
            raw.export_interval.as_deref(),
            d.export_interval,
            (Duration::from_millis(10), Duration::from_secs(60)),
        );
        Tracing {
            collector,
            sampling: if (0.0..=1.0).contains(&sampling) {
                sampling
            } else {
                d.sampling
            },
            max_queue,
            export_interval,
        }
    }

    pub(super) fn own(&mut self, raw: wire::OwnService) -> Option<OwnService> {
        let name = self.check("service.name", service_name(&raw.name));
        let identity = self.check("service.identity", identity(&raw.identity));
        let app = self.check("service.app", loopback_addr(&raw.app));
        let protocol = self.check(
            "service.protocol",
            Protocol::from_field(raw.protocol.as_deref()),
        );
        let rate_limit = self.rate_limit("service", raw.rate_limit, true);
        let detect_timeout = self.bounded(
            "service.detect_timeout",
            raw.detect_timeout.as_deref(),
            DEFAULT_DETECT_TIMEOUT,
            DETECT_TIMEOUT_RANGE,
        );
        let opaque_ports = match raw.opaque_ports {
            None => DEFAULT_OPAQUE_PORTS.to_vec(),
            Some(p) => self.opaque_ports("service.opaque_ports", p),
        };
        Some(OwnService {
            name: name?,
            identity: identity?,
            app: app?,
            protocol: protocol?,
            rate_limit,
            labels: raw.labels,
            egress: raw.egress.unwrap_or_default(),
            detect_timeout,
            opaque_ports,
        })
    }

    pub(super) fn listen(&mut self, raw: wire::Listen) -> Option<Listen> {
        let outbound = self.check(
            "listen.outbound",
            loopback_addr(raw.outbound.as_deref().unwrap_or(DEFAULT_OUTBOUND)),
        );
        let inbound = self.check(
            "listen.inbound",
            socket_addr(raw.inbound.as_deref().unwrap_or(DEFAULT_INBOUND)),
        );
        let admin = self.check(
            "listen.admin",
            loopback_addr(raw.admin.as_deref().unwrap_or(DEFAULT_ADMIN)),
        );
        let metrics = match raw.metrics.as_deref() {
            Some(m) => Some(self.check("listen.metrics", socket_addr(m))?),
            None => None,
        };
        let l = Listen {
            outbound: outbound?,
            inbound: inbound?,
            admin: admin?,
            metrics,
        };
        let mut ports = vec![l.outbound.port(), l.inbound.port(), l.admin.port()];
        ports.extend(l.metrics.map(|m| m.port()));
        // Port 0 asks the kernel for a free port (the sidecar reports the one it got), so
        // any number of listeners may ask for it.
        ports.retain(|&p| p != 0);
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        if distinct.len() != ports.len() {
            self.err(
                "listen",
                format!("listeners need distinct ports, got {ports:?}"),
            );
        }
        Some(l)
    }
}
