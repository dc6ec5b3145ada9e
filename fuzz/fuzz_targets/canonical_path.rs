//! The canonical request path (`weft_policy::path::canonicalize`), computed once per request
//! before route matching, authorization and rewrite. Invariants, under both options: no panic;
//! the result is a fixed point (canonicalizing it again gives it back unchanged); it starts
//! with `/` and has no empty, `.` or `..` segment and no backslash; with escaped slashes
//! refused it carries no `%2F`/`%5C`; nothing percent-encodes an unreserved character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_policy::path::{canonicalize, PathOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for keep in [false, true] {
        let opts = PathOptions {
            keep_escaped_slashes: keep,
        };
        let Ok(path) = canonicalize(raw, &opts) else {
            continue;
        };
        assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
        let again = canonicalize(&path, &opts).expect("a canonical path canonicalizes");
        assert_eq!(again, path, "not a fixed point: {raw:?}");
        assert!(!path.contains('\\'), "{raw:?} -> {path:?}");
        for segment in path[1..].split('/') {
            assert!(
                !matches!(segment, "." | ".."),
                "dot segment left: {raw:?} -> {path:?}"
            );
        }
        assert!(
            !path[1..].contains("//"),
            "empty segment left: {raw:?} -> {path:?}"
        );
        let upper = path.to_ascii_uppercase();
        if !keep {
            assert!(
                !upper.contains("%2F") && !upper.contains("%5C"),
                "{raw:?} -> {path:?}"
            );
        }
        for (i, _) in path.match_indices('%') {
            let hex = &path[i + 1..i + 3];
            let byte = u8::from_str_radix(hex, 16).expect("a valid escape");
            assert!(
                !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
                "an unreserved character left encoded: {raw:?} -> {path:?}"
            );
            assert_eq!(hex, hex.to_ascii_uppercase(), "lower-case escape: {path:?}");
        }
    }
});
