//! What the resilience scenarios vary: with or without the policies ([`Policies`]), the
//! balancer ([`Balancer`]), their combinations ([`Variant`]) and run orders, and the
//! scenarios' fixed numbers (endpoints, fail status, the bounds).

use serde::Serialize;

use crate::mesh::APP_INSTANCES;

/// The largest healthy-path throughput cost of the policies the issue allows, percent.
pub const MAX_HEALTHY_COST_PCT: f64 = 5.0;

/// The with-policies success rate this benchmark expects (percent) when one
/// of three endpoints fails.
pub const MIN_SUCCESS_WITH_POLICIES_PCT: f64 = 99.9;

/// Endpoints of the service in the failing-endpoint scenario.
pub const ENDPOINTS: usize = APP_INSTANCES;

/// The status the failing endpoint answers every request with.
pub const FAIL_STATUS: u16 = 500;

/// The outbound sidecar's load balancer in the failing-endpoint scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// The default: power of two choices on peak-EWMA latency (no
    /// `load_balancer` line in the config).
    P2cEwma,
    /// `load_balancer: round_robin`.
    RoundRobin,
}

impl Balancer {
    /// Both, default first.
    pub const ALL: [Balancer; 2] = [Balancer::P2cEwma, Balancer::RoundRobin];

    /// The config value: `p2c_ewma` / `round_robin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "p2c_ewma",
            Balancer::RoundRobin => "round_robin",
        }
    }

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "P2C (default)",
            Balancer::RoundRobin => "round robin",
        }
    }
}

/// One variant of the failing-endpoint scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// The outbound sidecar's balancer.
    pub balancer: Balancer,
    /// Without or with the policies.
    pub policies: Policies,
}

impl Variant {
    /// Every variant, in the order of [`Variant::index`].
    pub const ALL: [Variant; 4] = [
        Variant::new(Balancer::P2cEwma, Policies::Without),
        Variant::new(Balancer::P2cEwma, Policies::With),
        Variant::new(Balancer::RoundRobin, Policies::Without),
        Variant::new(Balancer::RoundRobin, Policies::With),
    ];

    /// The variant.
    pub const fn new(balancer: Balancer, policies: Policies) -> Self {
        Variant { balancer, policies }
    }

    /// Position in [`Variant::ALL`].
    pub fn index(self) -> usize {
        let b = match self.balancer {
            Balancer::P2cEwma => 0,
            Balancer::RoundRobin => 2,
        };
        b + self.policies.index()
    }

    /// `<balancer>-<without|with>`, e.g. `round_robin-with`.
    pub fn key(self) -> String {
        format!("{}-{}", self.balancer.as_str(), self.policies.as_str())
    }

    /// Name in messages, e.g. `round robin, with policies`.
    pub fn label(self) -> String {
        format!("{}, {}", self.balancer.label(), self.policies.label())
    }

    /// The order the variants run in during run `run` (from 1): balancer by
    /// balancer, each pair in [`Policies::order`].
    pub fn order(run: usize) -> [Variant; 4] {
        let [a, b] = Policies::order(run);
        [
            Variant::new(Balancer::P2cEwma, a),
            Variant::new(Balancer::P2cEwma, b),
            Variant::new(Balancer::RoundRobin, a),
            Variant::new(Balancer::RoundRobin, b),
        ]
    }
}

/// Whether the outbound sidecar's config carries the resilience policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policies {
    /// Outlier detection off (`consecutive_failures: 0`), no retry, no rate
    /// limit; everything else default.
    Without,
    /// Outlier detection, retry budget, limits, retries and a rate limit
    /// (never reached): see [`services_yaml`].
    With,
}

impl Policies {
    /// Both variants.
    pub const BOTH: [Policies; 2] = [Policies::Without, Policies::With];

    /// Short name: `without` / `with`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policies::Without => "without",
            Policies::With => "with",
        }
    }

    /// Name in tables: `without policies` / `with policies`.
    pub fn label(self) -> &'static str {
        match self {
            Policies::Without => "without policies",
            Policies::With => "with policies",
        }
    }

    /// Index into per-variant arrays (`Without` 0, `With` 1).
    pub fn index(self) -> usize {
        match self {
            Policies::Without => 0,
            Policies::With => 1,
        }
    }

    /// The order the two variants run in during run `run` (from 1):
    /// alternating (without, with), (with, without), ... so that neither
    /// always goes first.
    pub fn order(run: usize) -> [Policies; 2] {
        if run % 2 == 1 {
            [Policies::Without, Policies::With]
        } else {
            [Policies::With, Policies::Without]
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P2C: Balancer = Balancer::P2cEwma;
    const RR: Balancer = Balancer::RoundRobin;

    #[test]
    fn variant_order_alternates() {
        assert_eq!(Policies::order(1), [Policies::Without, Policies::With]);
        assert_eq!(Policies::order(2), [Policies::With, Policies::Without]);
        assert_eq!(Policies::order(3), [Policies::Without, Policies::With]);
        assert_eq!(Policies::With.index(), 1);
        assert_eq!(
            serde_json::to_value(Policies::Without).unwrap(),
            serde_json::json!("without")
        );
        assert_eq!(
            serde_json::to_value(Variant::new(RR, Policies::With)).unwrap(),
            serde_json::json!({"balancer": "round_robin", "policies": "with"})
        );
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            assert_eq!(v.index(), i);
        }
        assert_eq!(
            Variant::order(2),
            [
                Variant::new(P2C, Policies::With),
                Variant::new(P2C, Policies::Without),
                Variant::new(RR, Policies::With),
                Variant::new(RR, Policies::Without),
            ]
        );
        assert_eq!(
            Variant::new(RR, Policies::Without).key(),
            "round_robin-without"
        );
        assert_eq!(
            Variant::new(P2C, Policies::With).label(),
            "P2C (default), with policies"
        );
    }
}
