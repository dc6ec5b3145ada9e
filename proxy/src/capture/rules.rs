//! The nftables ruleset `weft-proxy init` loads: pure text built from a [`Plan`], so what the
//! kernel gets can be read and tested without privileges (`init --dry-run` prints it).
//!
//! One script does everything in one transaction (`nft -f` applies a file atomically: either
//! every rule is in or none): it declares the table, deletes it with whatever an earlier run
//! left in it, and declares it again with its chains. So running it twice leaves the same
//! ruleset, and nothing outside table `inet weft` is read or changed.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

/// The nftables family and name of the one table capture owns.
pub const TABLE: &str = "inet weft";

/// A script that removes the table if present and succeeds if it is not (`add` of an existing
/// table is a no-op, so the `delete` always has something to delete).
pub fn remove_script() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

/// A port or an inclusive port range (`8080`, `9000-9100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port (equal to `from` for one port).
    pub to: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (from, to) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if from > to {
            return Err(format!("{s:?}: the range runs backwards"));
        }
        Ok(PortRange { from, to })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits are cleared when the rule is written).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// The network with host bits cleared: nft refuses `10.1.2.3/8`.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// What to capture, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The sidecar's UID: its own connections are never redirected (else they would loop).
    pub proxy_uid: u32,
    /// Where outbound TCP goes (the outbound listener, on 127.0.0.1).
    pub outbound_port: u16,
    /// Where inbound TCP goes (the inbound mTLS listener, on the pod IP or 0.0.0.0).
    pub inbound_port: u16,
    /// Destination ports whose outbound connections are left alone.
    pub outbound_skip_ports: Vec<PortRange>,
    /// Destination networks whose outbound connections are left alone.
    pub outbound_skip_cidrs: Vec<Cidr>,
    /// Local ports whose inbound connections are left alone (probes, metrics scrapes).
    pub inbound_skip_ports: Vec<PortRange>,
    /// Source networks whose inbound connections are left alone.
    pub inbound_skip_cidrs: Vec<Cidr>,
    /// Also capture connections over loopback (default: loopback is left alone, so an app
    /// calling itself or a helper container on 127.0.0.1 is unaffected).
    pub capture_loopback: bool,
    /// Capture outbound connections.
    pub outbound: bool,
    /// Capture inbound connections.
    pub inbound: bool,
}

/// `{ a, b }` for nft (a set literal; a single element needs no braces but takes them).
fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// `return` rules for the networks in `cidrs`, by family; `dir` is `saddr` or `daddr`.
fn cidr_rules(out: &mut String, cidrs: &[Cidr], dir: &str) {
    let (v4, v6): (Vec<Cidr>, Vec<Cidr>) = cidrs.iter().partition(|c| c.addr.is_ipv4());
    if !v4.is_empty() {
        let _ = writeln!(out, "\t\tip {dir} {} return", set(&v4));
    }
    if !v6.is_empty() {
        let _ = writeln!(out, "\t\tip6 {dir} {} return", set(&v6));
    }
}

impl Plan {
    /// The whole script: replace table `inet weft` with this plan's chains, atomically.
    pub fn script(&self) -> String {
        let mut out = remove_script();
        let _ = writeln!(out, "table {TABLE} {{");
        if self.inbound {
            self.inbound_chain(&mut out);
        }
        if self.outbound {
            self.outbound_chain(&mut out);
        }
        out.push_str("}\n");
        out
    }

    /// Prerouting (connections arriving from the network): everything TCP goes to the
    /// inbound listener, except skipped ports and sources. `redirect` in prerouting rewrites
    /// the destination to the receiving interface's primary address, where the inbound
    /// listener is bound.
    fn inbound_chain(&self, out: &mut String) {
        out.push_str("\tchain inbound {\n");
        out.push_str("\t\ttype nat hook prerouting priority -100; policy accept;\n");
        out.push_str("\t\tmeta l4proto != tcp return\n");
        if !self.capture_loopback {
            out.push_str("\t\tiifname \"lo\" return\n");
        }
        // Already for the listener: nothing to do (and no double translation).
        let _ = writeln!(out, "\t\ttcp dport {} return", self.inbound_port);
        if !self.inbound_skip_ports.is_empty() {
            let _ = writeln!(
                out,
                "\t\ttcp dport {} return",
                set(&self.inbound_skip_ports)
            );
        }
        cidr_rules(out, &self.inbound_skip_cidrs, "saddr");
        let _ = writeln!(
            out,
            "\t\tmeta l4proto tcp redirect to :{}",
            self.inbound_port
        );
        out.push_str("\t}\n");
    }

    /// Output (connections this pod opens): everything TCP from a UID other than the
    /// sidecar's goes to the outbound listener, except skipped ports and destinations.
    /// `redirect` in output rewrites the destination to 127.0.0.1 (`::1`), and conntrack
    /// keeps the original, which the sidecar reads back with `SO_ORIGINAL_DST`.
    fn outbound_chain(&self, out: &mut String) {
        out.push_str("\tchain outbound {\n");
        out.push_str("\t\ttype nat hook output priority -100; policy accept;\n");
        out.push_str("\t\tmeta l4proto != tcp return\n");
        let _ = writeln!(out, "\t\tmeta skuid {} return", self.proxy_uid);
        if !self.capture_loopback {
            out.push_str("\t\toifname \"lo\" return\n");
        }
        // Never loopback destinations, even with loopback captured: the sidecar's own
        // listeners and the app's local helpers live there.
        out.push_str("\t\tip daddr 127.0.0.0/8 return\n");
        out.push_str("\t\tip6 daddr ::1 return\n");
        if !self.outbound_skip_ports.is_empty() {
            let _ = writeln!(
                out,
                "\t\ttcp dport {} return",
                set(&self.outbound_skip_ports)
            );
        }
        cidr_rules(out, &self.outbound_skip_cidrs, "daddr");
        let _ = writeln!(
            out,
            "\t\tmeta l4proto tcp redirect to :{}",
            self.outbound_port
        );
        out.push_str("\t}\n");
    }
}

#[cfg(test)]
impl Plan {
    /// The tests' plan: both directions captured for UID 2102 (outbound to 15001, inbound to
    /// 15006), loopback left alone, nothing skipped.
    pub(crate) fn for_tests() -> Plan {
        Plan {
            proxy_uid: 2102,
            outbound_port: 15001,
            inbound_port: 15006,
            outbound_skip_ports: vec![],
            outbound_skip_cidrs: vec![],
            inbound_skip_ports: vec![],
            inbound_skip_cidrs: vec![],
            capture_loopback: false,
            outbound: true,
            inbound: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            "8080".parse::<PortRange>(),
            Ok(PortRange {
                from: 8080,
                to: 8080
            })
        );
        assert_eq!(
            "9000-9100".parse::<PortRange>().expect("range").to_string(),
            "9000-9100"
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("9100-9000"
            .parse::<PortRange>()
            .expect_err("backwards")
            .contains("backwards"));
        assert!("http".parse::<PortRange>().is_err());
    }

    #[test]
    fn cidrs_parse_clear_host_bits_and_refuse_bad_prefixes() {
        let c: Cidr = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().expect("host").to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            "fd00::1/8".parse::<Cidr>().expect("v6").to_string(),
            "fd00::/8"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().expect("all").to_string(),
            "0.0.0.0/0"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("orders/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn the_script_replaces_only_its_own_table() {
        let s = Plan::for_tests().script();
        assert!(s.starts_with("add table inet weft\ndelete table inet weft\ntable inet weft {"));
        assert!(s.contains("meta skuid 2102 return"));
        assert!(s.contains("meta l4proto tcp redirect to :15001"));
        assert!(s.contains("meta l4proto tcp redirect to :15006"));
        assert!(s.contains("oifname \"lo\" return"));
        // Only one table is named anywhere: nothing else is flushed or deleted.
        assert_eq!(s.lines().filter(|l| l.contains("table ")).count(), 3, "{s}");
        assert!(!s.contains("flush"));
    }

    #[test]
    fn skips_land_in_the_right_chain_by_family() {
        let mut p = Plan::for_tests();
        p.outbound_skip_ports = vec!["443".parse().expect("p"), "9000-9100".parse().expect("p")];
        p.outbound_skip_cidrs = vec![
            "10.96.0.0/12".parse().expect("c"),
            "fd00::/8".parse().expect("c"),
        ];
        p.inbound_skip_ports = vec!["4191".parse().expect("p")];
        p.inbound_skip_cidrs = vec!["192.0.2.0/24".parse().expect("c")];
        let s = p.script();
        let (inbound, outbound) = s.split_once("chain outbound").expect("two chains");
        assert!(inbound.contains("tcp dport { 4191 } return"));
        assert!(inbound.contains("ip saddr { 192.0.2.0/24 } return"));
        assert!(outbound.contains("tcp dport { 443, 9000-9100 } return"));
        assert!(outbound.contains("ip daddr { 10.96.0.0/12 } return"));
        assert!(outbound.contains("ip6 daddr { fd00::/8 } return"));
        assert!(!outbound.contains("4191"));
    }

    #[test]
    fn loopback_and_directions_can_be_chosen() {
        let mut p = Plan::for_tests();
        p.capture_loopback = true;
        p.inbound = false;
        let s = p.script();
        assert!(!s.contains("\"lo\""));
        assert!(!s.contains("chain inbound"));
        // Loopback destinations stay alone whatever the flag says.
        assert!(s.contains("ip daddr 127.0.0.0/8 return"));
    }
}
