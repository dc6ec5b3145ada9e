//! The operator API's answers as text: the aligned tables of `weftctl get`, `status` and
//! `history`, and the lines of an apply or rollback.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// `applied: version a -> b` (or unchanged / nothing written for a dry run).
pub(crate) fn outcome_line(r: &Value, what: &str) -> String {
    let (from, to) = (s(&r["from_version"]), s(&r["to_version"]));
    let changed = r["changed"].as_bool().unwrap_or(false);
    match (what, changed) {
        ("dry run", true) => format!("dry run: version {from} -> {to} (nothing written)"),
        ("dry run", false) => format!("dry run: version {from} unchanged (nothing written)"),
        (_, true) => format!("{what}: version {from} -> {to}"),
        (_, false) => format!("{what}: version {to} (unchanged)"),
    }
}

pub(crate) fn summary_text(summary: &Value) -> String {
    let mut out = String::new();
    for (key, label) in [
        ("services_added", "services added"),
        ("services_removed", "services removed"),
        ("services_changed", "services changed"),
        ("routes_added", "routes added"),
        ("routes_removed", "routes removed"),
        ("routes_changed", "routes changed"),
    ] {
        let names: Vec<&str> = summary[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !names.is_empty() {
            out.push_str(&format!("{label}: {}\n", names.join(", ")));
        }
    }
    out
}

/// A JSON value as a table cell: strings bare, null empty.
pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows aligned under a header, columns two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn labels(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub(crate) fn services_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|svc| {
            vec![
                s(&svc["name"]),
                svc["protocol"].as_str().unwrap_or("http").to_owned(),
                s(&svc["port"]),
                svc["endpoints"].as_array().map_or(0, Vec::len).to_string(),
                s(&svc["identity"]),
            ]
        })
        .collect();
    table(
        &["NAME", "PROTOCOL", "PORT", "STATIC ENDPOINTS", "IDENTITY"],
        &rows,
    )
}

pub(crate) fn routes_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let from = r["from"]
                .as_array()
                .map(|f| f.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "*".to_owned());
            let m = &r["match"];
            let mut matches = Vec::new();
            if let Some(p) = m["path"].as_object() {
                for (k, v) in p {
                    matches.push(format!("path {k} {}", s(v)));
                }
            }
            if !m["method"].is_null() {
                matches.push(format!("method {}", s(&m["method"])));
            }
            for h in m["headers"].as_array().into_iter().flatten() {
                matches.push(format!("header {}", s(&h["name"])));
            }
            let backends: Vec<String> = r["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let subset = labels(&b["subset"]);
                    let subset = if subset.is_empty() {
                        "*".to_owned()
                    } else {
                        subset
                    };
                    format!("{subset}:{}", b["weight"].as_u64().unwrap_or(1))
                })
                .collect();
            vec![
                s(&r["name"]),
                s(&r["service"]),
                from,
                if matches.is_empty() {
                    "*".to_owned()
                } else {
                    matches.join(" ")
                },
                backends.join(" "),
            ]
        })
        .collect();
    table(&["NAME", "SERVICE", "FROM", "MATCH", "BACKENDS"], &rows)
}

pub(crate) fn endpoints_table(v: &Value) -> String {
    let mut rows = Vec::new();
    for (service, list) in v["endpoints"].as_object().into_iter().flatten() {
        for e in list.as_array().into_iter().flatten() {
            let connected = match e["connected"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no (grace)",
                None => "",
            };
            rows.push(vec![
                service.clone(),
                s(&e["address"]),
                labels(&e["labels"]),
                s(&e["source"]),
                connected.to_owned(),
            ]);
        }
    }
    table(
        &["SERVICE", "ADDRESS", "LABELS", "SOURCE", "CONNECTED"],
        &rows,
    )
}

/// `weftctl status`: the policy line, the last refusal, the sidecars table, and the gateways
/// table when gateways are connected.
pub fn status_text(v: &Value, now: SystemTime) -> String {
    let files = v["policy_files"].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "policy version {} ({files} files)\n",
        s(&v["policy_version"])
    );
    if let Some(e) = v["last_policy_error"].as_str() {
        out.push_str("last policy change refused:\n");
        for line in e.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let rows: Vec<Vec<String>> = v["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sc| sidecar_row(sc, now))
        .collect();
    if rows.is_empty() {
        out.push_str("no sidecars connected\n");
    } else {
        out.push_str(&table(
            &[
                "SERVICE",
                "ENDPOINT",
                "ACKED",
                "IN SYNC",
                "NACK",
                "CERT EXPIRES IN",
            ],
            &rows,
        ));
    }
    out.push_str(&gateways_text(v));
    out
}

/// `"<version>: <reason>"` of a `nack` object, empty for `null`.
fn nack_text(nack: &Value) -> String {
    if nack.is_null() {
        String::new()
    } else {
        format!("{}: {}", s(&nack["version"]), s(&nack["reason"]))
    }
}

/// Whether a stream entry ACKed what it was last sent: `yes`, `no`, or `disconnected`.
fn in_sync(entry: &Value) -> &'static str {
    if !entry["connected"].as_bool().unwrap_or(false) {
        "disconnected"
    } else if !entry["sent_version"].is_null() && entry["acked_version"] == entry["sent_version"] {
        "yes"
    } else {
        "no"
    }
}

fn sidecar_row(sc: &Value, now: SystemTime) -> Vec<String> {
    let expires = sc["cert_not_after"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map(|t| match t.duration_since(now) {
            Ok(d) => {
                humantime::format_duration(Duration::from_secs(d.as_secs() / 60 * 60)).to_string()
            }
            Err(_) => "expired".to_owned(),
        })
        .unwrap_or_default();
    vec![
        s(&sc["service"]),
        s(&sc["endpoint"]),
        s(&sc["acked_version"]),
        in_sync(sc).to_owned(),
        nack_text(&sc["nack"]),
        expires,
    ]
}

/// The gateways (proxies in gateway mode fed by the stream) and their Gateway configs: which
/// version each ACKed and why it refused the last one it refused. Empty without gateways.
fn gateways_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            vec![
                s(&g["gateway"]),
                s(&g["identity"]),
                s(&g["endpoint"]),
                s(&g["acked_version"]),
                in_sync(g).to_owned(),
                nack_text(&g["nack"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(
        &[
            "GATEWAY", "IDENTITY", "ENDPOINT", "ACKED", "IN SYNC", "NACK",
        ],
        &rows,
    )
}

pub(crate) fn history_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                s(&e["seq"]),
                s(&e["version"]),
                s(&e["time"]),
                s(&e["actor"]),
                s(&e["action"]),
            ]
        })
        .collect();
    table(&["SEQ", "VERSION", "TIME", "ACTOR", "ACTION"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_sync_nack_and_expiry() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").expect("time");
        let v = serde_json::json!({
            "policy_version": "abc",
            "policy_files": ["/p/mesh.yaml"],
            "last_policy_error": null,
            "sidecars": [
                {"service": "frontend", "endpoint": "127.0.0.1:1", "connected": true,
                 "sent_version": "v2", "acked_version": "v1",
                 "nack": {"version": "v2", "reason": "port clash"},
                 "cert_not_after": "2026-01-01T02:00:00Z"},
                {"service": "orders", "endpoint": "127.0.0.1:2", "connected": true,
                 "sent_version": "v9", "acked_version": "v9", "nack": null,
                 "cert_not_after": null},
            ]
        });
        let text = status_text(&v, now);
        assert!(text.starts_with("policy version abc (1 files)\n"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("SERVICE   ENDPOINT"), "{text}");
        assert!(
            lines[2].contains("no") && lines[2].contains("v2: port clash"),
            "{text}"
        );
        assert!(lines[2].ends_with("2h"), "{text}");
        assert!(lines[3].contains("yes"), "{text}");
        assert!(!text.contains("GATEWAY"), "no gateways, no table: {text}");
    }

    #[test]
    fn status_text_lists_gateways_with_their_nack() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").expect("time");
        let v = serde_json::json!({
            "policy_version": "abc",
            "policy_files": [],
            "sidecars": [],
            "gateways": [
                {"gateway": "shop/edge", "identity": "spiffe://td/ns/shop/sa/edge",
                 "endpoint": "127.0.0.1:3", "connected": true,
                 "sent_version": "g2", "acked_version": "g1",
                 "nack": {"version": "g2", "reason": "gateway certificates: bad PEM"}},
            ]
        });
        let text = status_text(&v, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "no sidecars connected", "{text}");
        assert!(lines[2].starts_with("GATEWAY"), "{text}");
        for want in [
            "shop/edge",
            "spiffe://td/ns/shop/sa/edge",
            "g1",
            "no",
            "g2: gateway certificates: bad PEM",
        ] {
            assert!(lines[3].contains(want), "{want}: {text}");
        }
    }
}
