//! Distributed tracing: W3C Trace Context propagation on every HTTP hop, and OpenTelemetry
//! spans for sampled requests, exported over OTLP/gRPC by a thread of their own.
//!
//! Per request a hop ([`Hop::start`]) reads the `traceparent` it received (strictly: version
//! `00`, lowercase hex, ids not all zero; anything else counts as absent) and decides:
//!
//! * **recording** (the trace is sampled and a collector is configured): the hop gets a span id
//!   of its own, sends `traceparent: 00-<trace>-<own span id>-<flags>` on, and at the end hands a
//!   [`SpanRecord`] to the exporter's bounded queue ([`export::Tracer::record`], never blocks);
//! * **not recording**: a valid `traceparent` passes through untouched (no span of ours
//!   exists to parent anything, so the app's spans hang off the caller's);
//! * **absent or malformed**: a new trace id starts here, sampled with probability
//!   `tracing.sampling`, and its `traceparent` is sent on, whether or not spans are exported,
//!   so the trace id reaches the app and both sides' access logs.
//!
//! The incoming sampled flag always wins (parent-based sampling). `tracestate` is never
//! touched. An unsampled request costs an id check, or two random numbers and one header
//! when it starts the trace; no span is built.

pub mod export;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::metrics::{Direction, RouteMetrics};

pub use export::Tracer;

/// The W3C `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The sampled bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// Length of a version-00 `traceparent` value: `00-` + 32 + `-` + 16 + `-` + 2.
const LEN: usize = 55;

/// A W3C trace id (16 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A W3C span id (8 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl TraceId {
    /// A fresh random id.
    pub fn random() -> Self {
        TraceId(fastrand::u128(1..))
    }
}

impl SpanId {
    /// A fresh random id.
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span (the parent of ours).
    pub parent_id: SpanId,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Hex digit values; 0x80 marks a byte that is not a lowercase hex digit.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Up to 16 lowercase hex digits to a number; `None` on any other byte.
fn hex(s: &[u8]) -> Option<u64> {
    let (mut acc, mut bad) = (0u64, 0u8);
    for &b in s {
        let d = HEX_VALUE[usize::from(b)];
        bad |= d;
        acc = acc << 4 | u64::from(d & 0x0f);
    }
    (bad & 0x80 == 0).then_some(acc)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl TraceParent {
    /// Parse a `traceparent` value strictly: exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase,
    /// neither id all zeros. Anything else (other versions included) is `None`.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() != LEN || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id = u128::from(hex(&v[3..19])?) << 64 | u128::from(hex(&v[19..35])?);
        let parent_id = hex(&v[36..52])?;
        let flags = u8::try_from(hex(&v[53..55])?).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    /// The one valid `traceparent` among `headers`; several values are as bad as a malformed
    /// one (W3C: the header must not repeat).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        let mut all = headers.get_all(TRACEPARENT).iter();
        let first = all.next()?;
        if all.next().is_some() {
            return None;
        }
        Self::parse(first.as_bytes())
    }

    /// The header text, `00-<trace>-<parent>-<flags>`.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[..2].copy_from_slice(b"00");
        put_hex(&mut out[3..35], self.trace_id.0);
        put_hex(&mut out[36..52], u128::from(self.parent_id.0));
        put_hex(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// As a header value.
    pub fn header(&self) -> HeaderValue {
        // Always ASCII hex and dashes; from_bytes cannot fail on it.
        HeaderValue::from_bytes(&self.encode()).unwrap_or(HeaderValue::from_static(""))
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// One hop's trace state: the trace it belongs to and what it sends on.
#[derive(Debug, Default)]
pub struct Hop {
    /// The trace this request belongs to, received or started here (`None` before
    /// [`Hop::start`]).
    pub trace_id: Option<TraceId>,
    /// The span id the caller sent (our span's parent), when a trace arrived.
    pub parent: Option<SpanId>,
    /// This hop's own span id (meaningful when recording).
    pub span_id: Option<SpanId>,
    /// Trace flags sent on.
    pub flags: u8,
    /// A span is recorded for this request.
    pub recording: bool,
    /// The `traceparent` to send on, when it differs from the one received (kept as ids: a
    /// header value is made per attempt, the only allocation tracing adds to a request).
    pub send: Option<TraceParent>,
}

impl Hop {
    /// Decide for a request with these headers. `exporting`: a collector is configured;
    /// `sampling`: probability for traces started here.
    pub fn start(headers: &HeaderMap, exporting: bool, sampling: f64) -> Hop {
        Self::decide(TraceParent::from_headers(headers), exporting, sampling)
    }

    fn decide(incoming: Option<TraceParent>, exporting: bool, sampling: f64) -> Hop {
        match incoming {
            Some(tp) if tp.sampled() && exporting => {
                let span_id = SpanId::random();
                Hop {
                    trace_id: Some(tp.trace_id),
                    parent: Some(tp.parent_id),
                    span_id: Some(span_id),
                    flags: tp.flags,
                    recording: true,
                    send: Some(TraceParent {
                        parent_id: span_id,
                        ..tp
                    }),
                }
            }
            Some(tp) => Hop {
                trace_id: Some(tp.trace_id),
                parent: Some(tp.parent_id),
                span_id: None,
                flags: tp.flags,
                recording: false,
                send: None,
            },
            // Without a collector nothing records a trace started here, and a fresh
            // `traceparent` is a unique value HPACK cannot index: measured, writing it on
            // every request cost several percent of the pair's throughput. So a sidecar that
            // does not export starts no traces; it still passes on those it receives.
            None if !exporting => Hop::default(),
            None => {
                let sampled = fastrand::f64() < sampling;
                let tp = TraceParent {
                    trace_id: TraceId::random(),
                    parent_id: SpanId::random(),
                    flags: if sampled { SAMPLED } else { 0 },
                };
                let recording = sampled && exporting;
                Hop {
                    trace_id: Some(tp.trace_id),
                    parent: None,
                    span_id: recording.then_some(tp.parent_id),
                    flags: tp.flags,
                    recording,
                    send: Some(tp),
                }
            }
        }
    }

    /// Trace and span id of this hop's span, when it is recorded.
    pub fn span(&self) -> Option<(TraceId, SpanId)> {
        if !self.recording {
            return None;
        }
        Some((self.trace_id?, self.span_id?))
    }

    /// Put this hop's `traceparent` on the request going on, if it differs from the one
    /// received.
    pub fn propagate(&self, req: &mut pingora_http::RequestHeader) -> pingora_core::Result<()> {
        if let Some(tp) = &self.send {
            req.insert_header(TRACEPARENT, tp.header())?;
        }
        Ok(())
    }
}

/// A finished request's span, as queued for export. Built only for recorded requests; holds
/// shared handles, no formatted strings (the exporter thread formats).
#[derive(Debug)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This hop's span.
    pub span_id: SpanId,
    /// The caller's span, when the trace arrived with the request.
    pub parent: Option<SpanId>,
    /// Trace flags.
    pub flags: u8,
    /// Outbound (a CLIENT span) or inbound (SERVER).
    pub direction: Direction,
    /// The request's series, whose labels name route, services and caller.
    pub labels: Option<Arc<RouteMetrics>>,
    /// HTTP method.
    pub method: http::Method,
    /// The request URI (its path is an attribute).
    pub uri: http::Uri,
    /// Status sent downstream (0: none).
    pub status: u16,
    /// `grpc-status` seen in the response headers or trailers.
    pub grpc_status: Option<u32>,
    /// The endpoint (outbound) or app (inbound) the request went to.
    pub server: Option<std::net::SocketAddr>,
    /// Retries made (outbound).
    pub retries: Option<u32>,
    /// Why the sidecar answered itself, if it did.
    pub flag: Option<&'static str>,
    /// When the response ended.
    pub end: SystemTime,
    /// How long the request took.
    pub duration: Duration,
}

/// A `grpc-status` header value as a number (the retry classifier reads the same one).
pub use weft_resilience::retry::grpc_status;

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_round_trip() {
        let tp = TraceParent::parse(TP.as_bytes()).expect("valid");
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        assert_eq!(&tp.encode()[..], TP.as_bytes());
        assert_eq!(tp.header().to_str().expect("ascii"), TP);
        let small = TraceParent {
            trace_id: TraceId(1),
            parent_id: SpanId(2),
            flags: 0,
        };
        assert_eq!(
            std::str::from_utf8(&small.encode()).expect("ascii"),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert_eq!(
            TraceParent::parse(&small.encode()),
            Some(small),
            "leading zeros survive"
        );
        let max = TraceParent {
            trace_id: TraceId(u128::MAX),
            parent_id: SpanId(u64::MAX),
            flags: 0xff,
        };
        assert_eq!(TraceParent::parse(&max.encode()), Some(max));
    }

    #[test]
    fn rejects_everything_not_strictly_version_00() {
        let bad = [
            "",
            "00",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // other versions, including the forbidden ff
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // uppercase, non-hex, wrong lengths, wrong separators, trailing data
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn a_repeated_header_counts_as_malformed() {
        let mut h = HeaderMap::new();
        assert_eq!(TraceParent::from_headers(&h), None);
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        assert!(TraceParent::from_headers(&h).is_some());
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        assert_eq!(TraceParent::from_headers(&h), None);
    }

    #[test]
    fn sampled_trace_with_export_gets_a_span_of_its_own() {
        let tp = TraceParent::parse(TP.as_bytes());
        let hop = Hop::decide(tp, true, 0.0);
        assert!(hop.recording);
        let span = hop.span_id.expect("span id");
        assert_eq!(hop.parent.map(|p| p.0), Some(0x00f067aa0ba902b7));
        let sent = hop.send.expect("rewritten");
        assert_eq!(sent.trace_id, tp.expect("tp").trace_id);
        assert_eq!(sent.parent_id, span);
        assert_eq!(sent.flags, 1);
    }

    #[test]
    fn incoming_decision_wins_and_passes_through_when_not_recording() {
        let unsampled =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        // Unsampled stays unsampled even at sampling 1.0, and the header passes untouched.
        let hop = Hop::decide(unsampled, true, 1.0);
        assert!(!hop.recording);
        assert!(hop.send.is_none());
        assert_eq!(hop.trace_id, unsampled.map(|t| t.trace_id));
        // Sampled but nothing exports: pass through too.
        let hop = Hop::decide(TraceParent::parse(TP.as_bytes()), false, 1.0);
        assert!(!hop.recording && hop.send.is_none());
        assert_eq!(hop.flags, 1);
    }

    #[test]
    fn absent_trace_starts_here_sampled_by_probability() {
        let hop = Hop::decide(None, true, 1.0);
        assert!(hop.recording);
        assert_eq!(hop.parent, None);
        let sent = hop.send.expect("created");
        assert_eq!(Some(sent.trace_id), hop.trace_id);
        assert!(sent.sampled());
        assert_eq!(hop.span_id, Some(sent.parent_id));
        // Nothing exports: no trace starts, nothing is written.
        let hop = Hop::decide(None, false, 1.0);
        assert!(!hop.recording && hop.send.is_none() && hop.trace_id.is_none());
        let hop = Hop::decide(None, true, 0.0);
        assert!(!hop.recording);
        let sent = hop.send.expect("created");
        assert!(!sent.sampled());
        let sampled = (0..4000)
            .filter(|_| Hop::decide(None, true, 0.25).recording)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 0.25");
    }

    #[test]
    fn fresh_ids_differ() {
        let a = Hop::decide(None, true, 0.0);
        let b = Hop::decide(None, true, 0.0);
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn grpc_status_parses_numbers_only() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&h), None);
    }
}
