//! The numbers behind `weftctl top` and `weft up`'s live view: per route, from two scrapes of
//! the sidecars' Prometheus text, requests per second, success rate, p50/p99 latency, retries
//! and open breakers (like `linkerd viz stat`).
//!
//! Everything is computed from the difference of two scrapes, so the view shows what happens
//! now, not since start. Latency quantiles are interpolated inside histogram buckets, as
//! Prometheus's `histogram_quantile` does, so the view and the dashboards agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// One sample of the text format: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes for histograms).
    pub name: String,
    /// Label pairs, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A line of the text format that is not a sample, comment or blank.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parse Prometheus text exposition (version 0.0.4). Timestamps are ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| ParseError {
            line: i + 1,
            reason: reason.to_owned(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(body).map_err(|r| err(&r))?;
            labels = parsed;
            rest = after;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err(&format!("bad value {v:?}")))?,
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Labels up to the closing `}`; returns them and the text after it.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

/// Which traffic a row describes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Calling service.
    pub src_service: String,
    /// Called service.
    pub dst_service: String,
    /// Route name.
    pub route: String,
}

/// One line of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Which traffic.
    pub key: RowKey,
    /// Requests per second.
    pub rps: f64,
    /// Share of responses that were not 5xx (or not written), `None` without responses.
    pub success: Option<f64>,
    /// Median latency, seconds.
    pub p50: Option<f64>,
    /// 99th percentile latency, seconds.
    pub p99: Option<f64>,
    /// Retries per second.
    pub retries_per_sec: f64,
    /// Endpoints of the destination whose breaker is open now (outbound rows).
    pub breakers_open: u64,
}

#[derive(Debug, Default)]
struct Acc {
    requests: f64,
    responses: f64,
    failures: f64,
    retries: f64,
    buckets: BTreeMap<u64, f64>,
}

fn key_of(s: &Sample) -> Option<RowKey> {
    let l = |k: &str| s.labels.get(k).cloned();
    Some(RowKey {
        direction: l("direction")?,
        src_service: l("src_service")?,
        dst_service: l("dst_service")?,
        route: l("route")?,
    })
}

/// Sum per row of the counters the view uses, from one scrape of every sidecar.
fn accumulate(samples: &[Sample]) -> BTreeMap<RowKey, Acc> {
    let mut rows: BTreeMap<RowKey, Acc> = BTreeMap::new();
    for s in samples {
        let field = match s.name.as_str() {
            "weft_requests_total" => 0,
            "weft_responses_total" => 1,
            "weft_retries_total" => 2,
            "weft_request_duration_seconds_bucket" => 3,
            _ => continue,
        };
        let Some(key) = key_of(s) else { continue };
        let acc = rows.entry(key).or_default();
        match field {
            0 => acc.requests += s.value,
            1 => {
                acc.responses += s.value;
                let class = s.labels.get("status_class").map(String::as_str);
                if matches!(class, Some("5xx") | Some("other")) {
                    acc.failures += s.value;
                }
            }
            2 => acc.retries += s.value,
            _ => {
                let le = s.labels.get("le").map(String::as_str).unwrap_or("+Inf");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                // Key buckets by the bound's bits so they sort and sum across status classes.
                *acc.buckets.entry(bound.to_bits()).or_default() += s.value;
            }
        }
    }
    rows
}

/// Open breakers per (src_service, dst_service), from `weft_endpoint_ejected`.
fn breakers(samples: &[Sample]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == "weft_endpoint_ejected") {
        if let (Some(src), Some(dst)) = (s.labels.get("src_service"), s.labels.get("dst_service")) {
            if s.value >= 1.0 {
                *out.entry((src.clone(), dst.clone())).or_default() += 1;
            }
        }
    }
    out
}

/// The `q` quantile of cumulative buckets (bound, count), interpolated linearly inside the
/// bucket that holds it; `None` without observations. A quantile in the `+Inf` bucket is the
/// largest finite bound, as Prometheus answers.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (bound - prev.0) * frac);
        }
        prev = (bound, count);
    }
    Some(prev.0)
}

/// The view between two scrapes `interval` apart (each the samples of every sidecar,
/// concatenated). Counters that went down (a restarted sidecar) count from zero.
pub fn rows(before: &[Sample], after: &[Sample], interval: Duration) -> Vec<Row> {
    let secs = interval.as_secs_f64().max(1e-3);
    let old = accumulate(before);
    let breakers = breakers(after);
    let empty = Acc::default();
    accumulate(after)
        .into_iter()
        .filter(|(key, now)| {
            // Series that saw nothing in the interval (an unused route) are not news.
            let was = old.get(key).unwrap_or(&empty);
            now.requests != was.requests || now.responses != was.responses
        })
        .map(|(key, now)| {
            let was = old.get(&key).unwrap_or(&empty);
            let delta = |n: f64, o: f64| if n >= o { n - o } else { n };
            let responses = delta(now.responses, was.responses);
            let failures = delta(now.failures, was.failures);
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .map(|(bits, c)| {
                    let o = was.buckets.get(bits).copied().unwrap_or(0.0);
                    (f64::from_bits(*bits), delta(*c, o))
                })
                .collect();
            let breakers_open = if key.direction == "outbound" {
                breakers
                    .get(&(key.src_service.clone(), key.dst_service.clone()))
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
            Row {
                rps: delta(now.requests, was.requests) / secs,
                success: (responses > 0.0).then(|| 1.0 - failures / responses),
                p50: quantile(0.5, &buckets),
                p99: quantile(0.99, &buckets),
                retries_per_sec: delta(now.retries, was.retries) / secs,
                breakers_open,
                key,
            }
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s * 1000.0))
}

/// The view as an aligned text table, busiest direction first, then by service and route.
pub fn render(rows: &[Row]) -> String {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by(|a, b| {
        (
            &b.key.direction,
            &a.key.src_service,
            &a.key.dst_service,
            &a.key.route,
        )
            .cmp(&(
                &a.key.direction,
                &b.key.src_service,
                &b.key.dst_service,
                &b.key.route,
            ))
    });
    let header = [
        "DIRECTION",
        "FROM",
        "TO",
        "ROUTE",
        "RPS",
        "SUCCESS",
        "P50",
        "P99",
        "RETRY/S",
        "BREAKERS",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.key.direction.clone(),
                r.key.src_service.clone(),
                r.key.dst_service.clone(),
                r.key.route.clone(),
                format!("{:.1}", r.rps),
                r.success
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.2}%", s * 100.0)),
                ms(r.p50),
                ms(r.p99),
                format!("{:.1}", r.retries_per_sec),
                r.breakers_open.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let text: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP weft_requests_total requests
# TYPE weft_requests_total counter
weft_requests_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x"} 100
weft_responses_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",status_code="200"} 100
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="0.001"} 50
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="0.01"} 100
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="+Inf"} 100
"#;

    const AFTER: &str = r#"
weft_requests_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x"} 300
weft_responses_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",status_code="200"} 290
weft_responses_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="5xx",status_code="503"} 10
weft_retries_total{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x"} 4
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="0.001"} 50
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="0.01"} 290
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="2xx",le="+Inf"} 290
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="5xx",le="0.001"} 0
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="5xx",le="0.01"} 0
weft_request_duration_seconds_bucket{direction="outbound",src_service="frontend",dst_service="orders",route="default",caller="spiffe://x",status_class="5xx",le="+Inf"} 10
weft_endpoint_ejected{src_service="frontend",dst_service="orders",endpoint="127.0.0.1:1"} 1
weft_endpoint_ejected{src_service="frontend",dst_service="orders",endpoint="127.0.0.1:2"} 0
"#;

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let s =
            parse("a_total{x=\"q\\\"uote\",y=\"n\\nl\"} +Inf 123\nb 2.5\n# c\n").expect("parses");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["x"], "q\"uote");
        assert_eq!(s[0].labels["y"], "n\nl");
        assert!(s[0].value.is_infinite());
        assert_eq!(s[1].value, 2.5);
        assert_eq!(parse("x{a=\"1\"").expect_err("invalid").line, 1);
        assert!(parse("x notanumber").is_err());
    }

    #[test]
    fn rates_success_latency_and_breakers_come_from_the_difference() {
        let rows = rows(
            &parse(BEFORE).expect("parses"),
            &parse(AFTER).expect("parses"),
            Duration::from_secs(2),
        );
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.rps, 100.0);
        assert_eq!(r.success, Some(0.95));
        assert_eq!(r.retries_per_sec, 2.0);
        assert_eq!(r.breakers_open, 1);
        // 200 new observations: 190 in (1 ms, 10 ms], 10 above: p50 is rank 100 of 190 in
        // that bucket, p99 falls in +Inf and reports the largest finite bound.
        let p50 = r.p50.expect("parses");
        assert!(
            (p50 - (0.001 + 0.009 * 100.0 / 190.0)).abs() < 1e-9,
            "{p50}"
        );
        assert_eq!(r.p99, Some(0.01));
        let table = render(&rows);
        assert!(table.starts_with("DIRECTION"), "{table}");
        assert!(table.contains("95.00%"), "{table}");
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero() {
        let rows = rows(
            &parse(AFTER).expect("parses"),
            &parse(BEFORE).expect("parses"),
            Duration::from_secs(1),
        );
        assert_eq!(rows[0].rps, 100.0);
    }

    #[test]
    fn quantile_of_nothing_is_none() {
        assert_eq!(quantile(0.5, &[]), None);
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
