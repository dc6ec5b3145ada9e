//! The W3C `traceparent` header as the sidecar reads it (`TraceParent::parse`, strict) and as it
//! arrives among headers (`from_headers`). Invariants: no panic; whatever parses prints back to
//! exactly the bytes it came from (the parser accepts only the canonical form) and parses again
//! to the same value; a header that repeats is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::telemetry::trace::{TraceParent, TRACEPARENT};

fuzz_target!(|data: &[u8]| {
    let parsed = TraceParent::parse(data);
    if let Some(tp) = parsed {
        let printed = tp.encode();
        assert_eq!(
            &printed[..],
            data,
            "parse accepted a non-canonical traceparent"
        );
        assert_eq!(TraceParent::parse(&printed), Some(tp));
        assert!(
            tp.trace_id.0 != 0 && tp.parent_id.0 != 0,
            "an all-zero id passed"
        );
    }
    // As a header: the same verdict when it is the only one, none when it repeats.
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(TRACEPARENT, value.clone());
    assert_eq!(TraceParent::from_headers(&headers), parsed);
    headers.append(TRACEPARENT, value);
    assert_eq!(TraceParent::from_headers(&headers), None);
});
