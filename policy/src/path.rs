//! The one canonical form of a request path, computed once per request before routing,
//! authorization and rewrite, and the path the app then receives.
//!
//! Matching the raw path is unsafe: with `default: deny` and a rule allowing `/public`, the
//! request `/public/../admin` matches the rule while most web frameworks serve it as `/admin`.
//! [`canonicalize`] applies what Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST` do, in this order:
//!
//! 1. percent-escapes of *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, so
//!    `%2e%2e` is `..` before dot segments are looked at; every other escape keeps its
//!    encoding with its hex digits upper-cased (`%3f` becomes `%3F`);
//! 2. repeated slashes are merged (`//admin` is `/admin`);
//! 3. dot segments are removed as RFC 3986 §5.2.4 says, never above the root
//!    (`/a/./b/../c` is `/a/c`, `/..` is `/`).
//!
//! Anything whose meaning differs between servers is refused ([`PathError`]), never guessed.
//! The function is pure, never panics, and is idempotent:
//! `canonicalize(canonicalize(x)) == canonicalize(x)`.

use std::borrow::Cow;

/// How a service wants escaped slashes and backslashes (`%2F`, `%5C`) treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Forward `%2F` and `%5C` encoded (upper-cased) instead of refusing the request. They are
    /// never decoded and never separate segments: path rules compare the encoded form.
    pub keep_escaped_slashes: bool,
}

/// Why a path has no canonical form; the request is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (`*` for `OPTIONS` is the caller's to allow).
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// `%2F`: an encoded slash is a separator for some servers and not for others.
    #[error("an encoded slash (%2F) in the path")]
    EncodedSlash,
    /// `%5C`: an encoded backslash, which some servers read as a separator.
    #[error("an encoded backslash (%5C) in the path")]
    EncodedBackslash,
    /// A raw `\`, which some servers (and every Windows one) read as a separator.
    #[error("a backslash in the path")]
    Backslash,
    /// An escape of a control character (`%00` to `%1F`, `%7F`): a NUL ends strings in C,
    /// a CR or LF splits headers in apps that decode the path into one.
    #[error("an encoded control character (%{0:02X}) in the path")]
    EncodedControl(u8),
    /// A raw control character or space.
    #[error("a control character in the path")]
    Control,
    /// `%` not followed by two hex digits.
    #[error("a malformed percent-escape in the path")]
    MalformedEscape,
    /// A raw byte outside ASCII: servers disagree on its encoding; send it percent-encoded.
    #[error("a raw non-ASCII character in the path (send it percent-encoded)")]
    NonAscii,
    /// A dot segment with parameters (`..;x`, `.;`): Tomcat and other servlet containers
    /// strip `;` parameters and then resolve the dots, so `/public/..;/admin` is `/admin`.
    #[error("a dot segment with ';' parameters in the path")]
    DotSegmentParameters,
}

/// The canonical form of `raw`, a request's path without its query; borrowed when `raw`
/// already is canonical (the common case costs one scan and no allocation).
pub fn canonicalize<'a>(raw: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plainly_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode(raw, opts)?;
    let out = remove_dot_segments(&decoded)?;
    Ok(if out == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(out)
    })
}

/// True when `raw` needs no work: no escape, no backslash, no control or non-ASCII byte, no
/// empty segment and no segment starting with a dot.
fn is_plainly_canonical(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter()
        .all(|&c| c.is_ascii_graphic() && c != b'%' && c != b'\\')
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// Unreserved characters (RFC 3986 §2.3): their escapes mean the same as the character.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Step 1: decode unreserved escapes, upper-case the rest, refuse what is ambiguous.
fn decode(raw: &str, opts: &PathOptions) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::MalformedEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    b'/' if !opts.keep_escaped_slashes => return Err(PathError::EncodedSlash),
                    b'\\' if !opts.keep_escaped_slashes => return Err(PathError::EncodedBackslash),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(hi)]));
                        out.push(char::from(HEX[usize::from(lo)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x20 | 0x7f => return Err(PathError::Control),
            0x80.. => return Err(PathError::NonAscii),
            _ => {
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Steps 2 and 3 on a decoded path (which starts with `/`): merge slashes, remove dot
/// segments. A path ending in `/`, `/.` or `/..` keeps a trailing slash, as RFC 3986 does.
fn remove_dot_segments(decoded: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = true;
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                if matches!(seg.split(';').next(), Some("." | "..")) {
                    return Err(PathError::DotSegmentParameters);
                }
                segments.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: PathOptions = PathOptions {
        keep_escaped_slashes: true,
    };

    fn canon(raw: &str) -> Result<String, PathError> {
        canonicalize(raw, &PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_repeated_slashes_go() {
        for (raw, want) in [
            ("/", "/"),
            ("/public/x", "/public/x"),
            ("/public/../admin", "/admin"),
            ("/public/./../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2e./admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/", "/a/b/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/./b/../c", "/a/c"),
            ("/...", "/..."),
            ("/.hidden/x", "/.hidden/x"),
            ("/%7euser/%41%2d", "/~user/A-"),
            ("/a%3fb%20c", "/a%3Fb%20c"),
            ("/a;b/c", "/a;b/c"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_with_their_reason() {
        for (raw, want) in [
            ("public", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/public/..%2fadmin", PathError::EncodedSlash),
            ("/public/..%2Fadmin", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/public\\..\\admin", PathError::Backslash),
            ("/a%00", PathError::EncodedControl(0)),
            ("/a%0d%0aX: y", PathError::EncodedControl(0x0d)),
            ("/a%7f", PathError::EncodedControl(0x7f)),
            ("/a\0b", PathError::Control),
            ("/a b", PathError::Control),
            ("/a\tb", PathError::Control),
            ("/a%", PathError::MalformedEscape),
            ("/a%2", PathError::MalformedEscape),
            ("/a%zz", PathError::MalformedEscape),
            ("/café", PathError::NonAscii),
            ("/public/..;/admin", PathError::DotSegmentParameters),
            ("/public/.;x/admin", PathError::DotSegmentParameters),
            ("/public/%2e%2e;/admin", PathError::DotSegmentParameters),
        ] {
            assert_eq!(canon(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn kept_escaped_slashes_stay_encoded_and_never_separate() {
        let k = |raw| canonicalize(raw, &KEEP).map(Cow::into_owned);
        assert_eq!(k("/public/..%2fadmin").as_deref(), Ok("/public/..%2Fadmin"));
        assert_eq!(k("/a/%2e%2e%2F/b").as_deref(), Ok("/a/..%2F/b"));
        assert_eq!(k("/files/a%5Cb").as_deref(), Ok("/files/a%5Cb"));
        // A raw backslash is not an escape: still refused.
        assert_eq!(k("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn a_canonical_path_is_borrowed() {
        assert!(matches!(
            canonicalize("/api/v1/x", &PathOptions::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            canonicalize("/a%20b", &PathOptions::default()),
            Ok(Cow::Borrowed(_))
        ));
    }

    /// A small deterministic generator (xorshift), so the property test needs no dependency
    /// and every run checks the same inputs.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn path(&mut self) -> String {
            const PIECES: &[&str] = &[
                "/",
                "/",
                "//",
                ".",
                "..",
                "a",
                "B",
                "%2e",
                "%2E",
                "%2f",
                "%2F",
                "%5c",
                "%41",
                "%7e",
                "%3f",
                "%3F",
                "%25",
                "%",
                "%z",
                "%0",
                "%00",
                ";",
                "\\",
                " ",
                "é",
                "~",
                "-",
                "_",
                "x.y",
                "*",
                "?",
                "#",
                "%2e%2e",
                ".%2e",
                "%25%32%65",
            ];
            let n = self.next() % 12;
            let mut s = String::new();
            if !self.next().is_multiple_of(8) {
                s.push('/');
            }
            for _ in 0..n {
                let i = usize::try_from(self.next() % PIECES.len() as u64).unwrap_or(0);
                s.push_str(PIECES[i]);
            }
            s
        }
    }

    #[test]
    fn canonicalize_is_idempotent_and_total() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let raw = g.path();
            for opts in [PathOptions::default(), KEEP] {
                let Ok(once) = canonicalize(&raw, &opts) else {
                    continue;
                };
                accepted += 1;
                let twice = canonicalize(&once, &opts);
                assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent on {raw:?}");
                assert!(matches!(twice, Ok(Cow::Borrowed(_))), "{raw:?}");
                assert!(once.starts_with('/'), "{raw:?}");
                assert!(!once.contains("//"), "{raw:?} -> {once:?}");
                assert!(
                    !once.split('/').any(|s| s == "." || s == ".."),
                    "{raw:?} -> {once:?}"
                );
            }
        }
        assert!(
            accepted > 10_000,
            "the generator exercises accepted paths: {accepted}"
        );
    }
}
