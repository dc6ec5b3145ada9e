//! What the peer comparison compares: the workloads, the columns (direct, Weft, HAProxy,
//! NGINX) and their run order, a pair's ports and the peers' sizing. Kept apart from the
//! configs and the processes so that both, and the results, name them without a cycle.

use serde::Serialize;
use weft_benches::mesh::free_ports;

/// The only TLS 1.3 suite the peers are given: the one two rustls endpoints
/// (the Weft pair) negotiate by default, so every pair encrypts alike.
pub const TLS13_SUITE: &str = "TLS_AES_256_GCM_SHA384";

/// The app side's DNS name in its workload certificate (the name the peers
/// verify; Weft verifies the SPIFFE URI).
pub const APP_DNS: &str = "app.default.serviceaccount.identity.weft.local";

/// Where Debian's dynamic NGINX stream module lives (package `libnginx-mod-stream`).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// HTTP/1.1 keep-alive `GET /` against `weft-sample http`.
    Http,
    /// gRPC unary calls over HTTP/2 against `weft-sample grpc`.
    Grpc,
    /// Bulk TCP through `weft-sample tcp` (an echo).
    Tcp,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 3] = [Workload::Http, Workload::Grpc, Workload::Tcp];

    /// Its name in messages and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Http => "http",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }
}

/// A column of the comparison: direct or one of the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    /// Client → app.
    Direct,
    /// The Weft sidecar pair.
    Weft,
    /// A second Weft pair running another `weft-proxy` build (`--baseline-proxy`), e.g. the
    /// plain release build beside the optimised one (PGO + BOLT), so one run shows what the
    /// build gained.
    WeftBaseline,
    /// An HAProxy pair.
    Haproxy,
    /// An NGINX pair.
    Nginx,
}

impl Column {
    /// Every column.
    pub const ALL: [Column; 5] = [
        Column::Direct,
        Column::Weft,
        Column::WeftBaseline,
        Column::Haproxy,
        Column::Nginx,
    ];

    /// Its name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::Weft => "weft",
            Column::WeftBaseline => "weft-baseline",
            Column::Haproxy => "haproxy",
            Column::Nginx => "nginx",
        }
    }

    /// Whether this is one of the other proxies (not direct, not Weft).
    pub fn is_peer(self) -> bool {
        matches!(self, Column::Haproxy | Column::Nginx)
    }

    /// Whether this is a Weft pair (the measured build or the baseline build).
    pub fn is_weft(self) -> bool {
        matches!(self, Column::Weft | Column::WeftBaseline)
    }

    /// `cols` in the order of run `run` (from 1): a balanced Latin square (Williams design).
    /// Over as many runs as columns each column runs once in each position, and over twice as
    /// many each column follows each other column equally often, so whatever one leaves behind
    /// (caches, page cache, the CPU's clock) does not always fall on the same neighbour.
    pub fn order(cols: &[Column], run: usize) -> Vec<Column> {
        let n = cols.len();
        if n == 0 {
            return Vec::new();
        }
        // First row 0, 1, n-1, 2, n-2, ...; row r adds r to each. With an odd count the rows
        // alone give each neighbour pair one way only, so the next n runs take them reversed.
        let r = run.saturating_sub(1) % (2 * n);
        let mut v: Vec<Column> = (0..n)
            .map(|j| {
                let b = if j % 2 == 1 {
                    j.div_ceil(2)
                } else {
                    (n - j / 2) % n
                };
                cols[(b + r) % n]
            })
            .collect();
        if r >= n && n % 2 == 1 {
            v.reverse();
        }
        v
    }
}

/// Ports of one pair: where the client connects, the TLS listener between
/// the proxies, and the rest Weft needs (admin, unused listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairPorts {
    /// Proxy A's plain listener (the client's target).
    pub entry: u16,
    /// Proxy B's mutual-TLS listener.
    pub tls: u16,
    /// Weft only: A's admin, A's (unused) inbound, B's admin, B's (unused)
    /// outbound, A's (absent) app.
    pub weft: [u16; 5],
}

impl PairPorts {
    /// Fresh free ports.
    pub fn free() -> anyhow::Result<Self> {
        let p = free_ports(7)?;
        Ok(PairPorts {
            entry: p[0],
            tls: p[1],
            weft: [p[2], p[3], p[4], p[5], p[6]],
        })
    }
}

/// Sizes the peers' configs follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizing {
    /// HAProxy `maxconn` (what the open-files limit allows: two sockets per
    /// connection plus slack).
    pub maxconn: u64,
    /// NGINX upstream `keepalive` (idle connections kept per upstream): at
    /// least the client connection count.
    pub upstream_keepalive: u64,
    /// NGINX `worker_connections` and `worker_rlimit_nofile`.
    pub worker_connections: u64,
}

impl Sizing {
    /// From the open-files soft limit and the most client connections any
    /// workload opens.
    pub fn new(nofile: u64, client_connections: u64) -> Self {
        let usable = nofile.saturating_sub(64);
        Sizing {
            maxconn: (usable / 2).clamp(256, 100_000),
            upstream_keepalive: client_connections.max(16) * 2,
            worker_connections: (usable / 2).clamp(256, 100_000),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn sizing_follows_the_fd_limit_and_connections() {
        let s = Sizing::new(20_000, 32);
        assert_eq!(s.maxconn, 9_968);
        assert_eq!(s.upstream_keepalive, 64);
        assert!(Sizing::new(100, 1).maxconn >= 256);
    }

    #[test]
    fn order_is_a_balanced_latin_square() {
        for cols in [&Column::ALL[..], &Column::ALL[..4], &Column::ALL[..3]] {
            let n = cols.len();
            for r in 1..=2 * n {
                let mut o = Column::order(cols, r);
                o.sort();
                assert_eq!(o, cols.to_vec(), "run {r} is a permutation");
            }
            // Over n runs each column holds each position once.
            for &c in cols {
                let mut at: Vec<usize> = (1..=n)
                    .map(|r| Column::order(cols, r).iter().position(|&x| x == c).unwrap())
                    .collect();
                at.sort_unstable();
                assert_eq!(at, (0..n).collect::<Vec<_>>(), "{c:?} in {n} columns");
            }
            // Over 2n runs each column follows each other one equally often.
            let mut follows = BTreeMap::new();
            for r in 1..=2 * n {
                for w in Column::order(cols, r).windows(2) {
                    *follows.entry((w[0], w[1])).or_insert(0) += 1;
                }
            }
            assert_eq!(follows.len(), n * (n - 1), "{follows:?}");
            assert!(follows.values().all(|&k| k == 2), "{follows:?}");
        }
        assert_eq!(Column::order(&Column::ALL, 1)[0], Column::Direct);
    }
}
