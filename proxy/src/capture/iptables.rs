//! The iptables backend of `weft-proxy init`, for kernels without NAT in nftables' `inet`
//! family (before 5.2) or machines without `nft`. The same rules as the nftables table
//! (`rules.rs`), as two chains of Weft's own in table `nat`, `WEFT_INBOUND` (jumped to from
//! `PREROUTING`) and `WEFT_OUTBOUND` (from `OUTPUT`), once for IPv4 (`iptables-restore`) and
//! once for IPv6 (`ip6tables-restore`).
//!
//! Each family is one `iptables-restore --noflush` transaction: the table is committed whole
//! or not at all, and `--noflush` leaves every chain and rule the script does not name alone.
//! Declaring a chain (`:WEFT_INBOUND - [0:0]`) creates it or empties it, so refilling it is
//! idempotent; the jump from the built-in chain is appended only when `iptables-save` does not
//! already show it, and duplicate or stale jumps and chains of Weft's (an earlier run with
//! other options) are deleted. Nothing whose name does not start with `WEFT_` is touched.

use std::fmt::Write as _;

use super::rules::{Cidr, Plan};

/// Every chain capture owns starts with this; nothing else is ever deleted.
pub const PREFIX: &str = "WEFT_";
/// Inbound capture's chain, jumped to from `PREROUTING`.
pub const INBOUND: &str = "WEFT_INBOUND";
/// Outbound capture's chain, jumped to from `OUTPUT`.
pub const OUTBOUND: &str = "WEFT_OUTBOUND";

/// An address family: iptables keeps one ruleset per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// Both, in the order they are loaded.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback network, never captured as a destination.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether `cidr` belongs to this family.
    fn holds(self, cidr: &Cidr) -> bool {
        cidr.addr.is_ipv4() == (self == Family::V4)
    }

    /// `iptables` or `ip6tables`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The program of this family for `base`, a name or path whose file name starts with
    /// `iptables` (`iptables`, `iptables-legacy`, `/usr/sbin/iptables-nft`), with `suffix`
    /// (`-restore`, `-save`) appended: `ip6tables-legacy-save` for V6.
    pub fn program(self, base: &str, suffix: &str) -> String {
        let (dir, file) = match base.rfind('/') {
            Some(i) => base.split_at(i + 1),
            None => ("", base),
        };
        let file = match (self, file.strip_prefix("iptables")) {
            (Family::V6, Some(rest)) => format!("ip6tables{rest}"),
            _ => file.to_owned(),
        };
        format!("{dir}{file}{suffix}")
    }
}

/// The chains this plan wants, each with the built-in chain that jumps to it and its rules.
fn wanted(plan: &Plan, family: Family) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let mut chains = Vec::new();
    if plan.inbound {
        chains.push((INBOUND, "PREROUTING", inbound_rules(plan, family)));
    }
    if plan.outbound {
        chains.push((OUTBOUND, "OUTPUT", outbound_rules(plan, family)));
    }
    chains
}

/// `RETURN` rules for `ports` (one rule per range: `multiport` takes at most 15).
fn port_rules(rules: &mut Vec<String>, ports: &[super::rules::PortRange]) {
    for p in ports {
        let dport = if p.from == p.to {
            p.from.to_string()
        } else {
            format!("{}:{}", p.from, p.to)
        };
        rules.push(format!("-p tcp -m tcp --dport {dport} -j RETURN"));
    }
}

/// Prerouting, as `rules::Plan::inbound_chain`: TCP arriving from the network goes to the
/// inbound listener, except skipped ports and sources and (by default) loopback.
fn inbound_rules(plan: &Plan, family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    if !plan.capture_loopback {
        rules.push("-i lo -j RETURN".to_owned());
    }
    // Already for the listener: nothing to do (and no double translation).
    rules.push(format!(
        "-p tcp -m tcp --dport {} -j RETURN",
        plan.inbound_port
    ));
    port_rules(&mut rules, &plan.inbound_skip_ports);
    for c in plan.inbound_skip_cidrs.iter().filter(|c| family.holds(c)) {
        rules.push(format!("-s {c} -j RETURN"));
    }
    rules.push(format!(
        "-p tcp -j REDIRECT --to-ports {}",
        plan.inbound_port
    ));
    rules
}

/// Output, as `rules::Plan::outbound_chain`: TCP this pod opens from a UID other than the
/// sidecar's goes to the outbound listener, except skipped ports and destinations, loopback
/// destinations always, and (by default) the loopback interface.
fn outbound_rules(plan: &Plan, family: Family) -> Vec<String> {
    let mut rules = vec![format!("-m owner --uid-owner {} -j RETURN", plan.proxy_uid)];
    if !plan.capture_loopback {
        rules.push("-o lo -j RETURN".to_owned());
    }
    rules.push(format!("-d {} -j RETURN", family.loopback()));
    port_rules(&mut rules, &plan.outbound_skip_ports);
    for c in plan.outbound_skip_cidrs.iter().filter(|c| family.holds(c)) {
        rules.push(format!("-d {c} -j RETURN"));
    }
    rules.push(format!(
        "-p tcp -j REDIRECT --to-ports {}",
        plan.outbound_port
    ));
    rules
}

/// What `iptables-save -t nat` shows of Weft: its chains and the rules that jump to them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// Chains named `WEFT_*`, as declared.
    pub chains: Vec<String>,
    /// Rules in other chains whose target is a `WEFT_*` chain, as `-A CHAIN spec` lines.
    pub jumps: Vec<String>,
}

impl Current {
    /// Reads the `nat` table of `iptables-save` output; other tables and lines are ignored.
    pub fn parse(save: &str) -> Current {
        let mut current = Current::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.starts_with(PREFIX) {
                    current.chains.push(name.to_owned());
                }
                continue;
            }
            let mut words = line.split_whitespace();
            if words.next() != Some("-A") {
                continue;
            }
            let chain = words.next().unwrap_or("");
            let words: Vec<&str> = words.collect();
            let to_weft = words
                .windows(2)
                .any(|w| matches!(w[0], "-j" | "-g") && w[1].starts_with(PREFIX));
            if !chain.starts_with(PREFIX) && to_weft {
                current.jumps.push(line.to_owned());
            }
        }
        current
    }
}

/// `-D CHAIN spec` for an `-A CHAIN spec` line.
fn delete(jump: &str) -> String {
    format!("-D{}", jump.strip_prefix("-A").unwrap_or(jump))
}

/// The `iptables-restore --noflush` script that takes the nat table of `family` from
/// `current` to `plan` (`None`: to no Weft rules at all, for `--remove`). `None` back when
/// there is nothing to do.
pub fn script(plan: Option<&Plan>, family: Family, current: &Current) -> Option<String> {
    let wanted = plan.map(|p| wanted(p, family)).unwrap_or_default();
    let mut out = String::from("*nat\n");
    let mut changes = false;
    // Jumps first: a chain can only be deleted once nothing jumps to it. One jump per wanted
    // chain is kept where it is; any other jump to a Weft chain goes.
    let mut kept = Vec::new();
    for jump in &current.jumps {
        let wanted_jump = wanted
            .iter()
            .map(|(chain, hook, _)| format!("-A {hook} -j {chain}"))
            .find(|j| j == jump);
        match wanted_jump {
            Some(j) if !kept.contains(&j) => kept.push(j),
            _ => {
                let _ = writeln!(out, "{}", delete(jump));
                changes = true;
            }
        }
    }
    for stale in current
        .chains
        .iter()
        .filter(|c| !wanted.iter().any(|(w, _, _)| w == c))
    {
        // Declaring it empties it (so it can be deleted).
        let _ = writeln!(out, ":{stale} - [0:0]\n-X {stale}");
        changes = true;
    }
    for (chain, hook, rules) in &wanted {
        let _ = writeln!(out, ":{chain} - [0:0]");
        for rule in rules {
            let _ = writeln!(out, "-A {chain} {rule}");
        }
        let jump = format!("-A {hook} -j {chain}");
        if !kept.contains(&jump) {
            let _ = writeln!(out, "{jump}");
        }
        changes = true;
    }
    out.push_str("COMMIT\n");
    changes.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Plan::for_tests`] with ports and networks skipped both ways.
    fn plan() -> Plan {
        Plan {
            outbound_skip_ports: vec!["443".parse().expect("p"), "9000-9100".parse().expect("p")],
            outbound_skip_cidrs: vec![
                "10.96.0.0/12".parse().expect("c"),
                "fd00::/8".parse().expect("c"),
            ],
            inbound_skip_ports: vec!["4191".parse().expect("p")],
            inbound_skip_cidrs: vec!["192.0.2.0/24".parse().expect("c")],
            ..Plan::for_tests()
        }
    }

    const SAVE: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n\
        -A INPUT -j WEFT_NOT_NAT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :WEFT_INBOUND - [0:0]\n:WEFT_OLD - [0:0]\n:KUBE-X - [0:0]\n\
        -A PREROUTING -p tcp -m tcp --dport 9 -j RETURN\n-A PREROUTING -j WEFT_INBOUND\n\
        -A OUTPUT -j KUBE-X\n-A OUTPUT -j WEFT_OLD\n-A PREROUTING -j WEFT_INBOUND\n\
        -A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 1\nCOMMIT\n";

    #[test]
    fn program_names_follow_the_variant_and_family() {
        assert_eq!(
            Family::V4.program("iptables", "-restore"),
            "iptables-restore"
        );
        assert_eq!(
            Family::V6.program("iptables-legacy", "-save"),
            "ip6tables-legacy-save"
        );
        assert_eq!(
            Family::V6.program("/usr/sbin/iptables-nft", "-restore"),
            "/usr/sbin/ip6tables-nft-restore"
        );
    }

    #[test]
    fn a_fresh_table_gets_both_chains_and_their_jumps_per_family() {
        let v4 = script(Some(&plan()), Family::V4, &Current::default()).expect("changes");
        assert!(v4.starts_with("*nat\n:WEFT_INBOUND - [0:0]\n-A WEFT_INBOUND -i lo -j RETURN\n"));
        assert!(v4.ends_with("-A OUTPUT -j WEFT_OUTBOUND\nCOMMIT\n"), "{v4}");
        for rule in [
            "-A WEFT_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
            "-A WEFT_INBOUND -s 192.0.2.0/24 -j RETURN",
            "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -j WEFT_INBOUND",
            "-A WEFT_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "-A WEFT_OUTBOUND -o lo -j RETURN",
            "-A WEFT_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-A WEFT_OUTBOUND -p tcp -m tcp --dport 9000:9100 -j RETURN",
            "-A WEFT_OUTBOUND -d 10.96.0.0/12 -j RETURN",
            "-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(v4.lines().any(|l| l == rule), "{rule} missing:\n{v4}");
        }
        assert!(!v4.contains("fd00"), "an IPv6 network in the IPv4 table");
        let v6 = script(Some(&plan()), Family::V6, &Current::default()).expect("changes");
        assert!(v6.contains("-A WEFT_OUTBOUND -d ::1/128 -j RETURN"));
        assert!(v6.contains("-A WEFT_OUTBOUND -d fd00::/8 -j RETURN"));
        assert!(!v6.contains("192.0.2") && !v6.contains("127.0.0.0"));
        // Nothing but Weft's chains is named, and nothing is flushed wholesale.
        for line in v4.lines().chain(v6.lines()) {
            assert!(
                line.contains(PREFIX) || line == "*nat" || line == "COMMIT",
                "{line}"
            );
        }
    }

    #[test]
    fn the_save_output_is_read_for_weft_chains_and_jumps_in_nat_only() {
        let c = Current::parse(SAVE);
        assert_eq!(c.chains, ["WEFT_INBOUND", "WEFT_OLD"]);
        assert_eq!(
            c.jumps,
            [
                "-A PREROUTING -j WEFT_INBOUND",
                "-A OUTPUT -j WEFT_OLD",
                "-A PREROUTING -j WEFT_INBOUND"
            ]
        );
    }

    #[test]
    fn a_second_run_keeps_one_jump_and_drops_stale_chains() {
        let s = script(Some(&plan()), Family::V4, &Current::parse(SAVE)).expect("changes");
        let lines: Vec<&str> = s.lines().collect();
        // The duplicate jump and the stale chain's jump go, before the stale chain itself.
        assert_eq!(
            &lines[..6],
            [
                "*nat",
                "-D OUTPUT -j WEFT_OLD",
                "-D PREROUTING -j WEFT_INBOUND",
                ":WEFT_OLD - [0:0]",
                "-X WEFT_OLD",
                ":WEFT_INBOUND - [0:0]"
            ]
        );
        // The kept jump is not appended again; the missing one is.
        assert!(!lines.contains(&"-A PREROUTING -j WEFT_INBOUND"));
        assert!(lines.contains(&"-A OUTPUT -j WEFT_OUTBOUND"));
        assert!(!s.contains("KUBE") && !s.contains("--dport 9 "));
    }

    #[test]
    fn removal_deletes_only_weft_and_nothing_when_absent() {
        let s = script(None, Family::V4, &Current::parse(SAVE)).expect("changes");
        assert_eq!(
            s,
            "*nat\n-D PREROUTING -j WEFT_INBOUND\n-D OUTPUT -j WEFT_OLD\n\
             -D PREROUTING -j WEFT_INBOUND\n:WEFT_INBOUND - [0:0]\n-X WEFT_INBOUND\n\
             :WEFT_OLD - [0:0]\n-X WEFT_OLD\nCOMMIT\n"
        );
        assert_eq!(script(None, Family::V6, &Current::default()), None);
    }
}
