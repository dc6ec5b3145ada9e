//! API keys by header: each key names a consumer. Keys are held as SHA-256 digests and a
//! presented key is compared with every one of them in constant time (no early exit), so
//! neither the comparison nor the loop tells an attacker how close a guess came.

use std::path::Path;

use ring::digest::{digest, SHA256};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// The most keys one file may hold (each costs a 32-byte compare per request).
pub const MAX_KEYS: usize = 10_000;
/// Shortest key accepted: shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key a request may present (longer ones are refused unhashed).
pub const MAX_PRESENTED_LEN: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    consumer: String,
    key: String,
}

/// Why a keys file was refused: `file:line:col: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {reason}")]
pub struct KeysError {
    /// The file.
    pub file: String,
    /// Line (0 when unknown).
    pub line: usize,
    /// Column.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

/// One set of API keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    consumers: Vec<String>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl ApiKeys {
    /// Read a YAML file `keys: [{consumer, key}, ...]`.
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let err = |line, column, reason: String| KeysError {
            file: path.display().to_string(),
            line,
            column,
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(0, 0, e.to_string()))?;
        Self::parse(&text).map_err(|(l, c, r)| err(l, c, r))
    }

    /// [`ApiKeys::load`] from text; errors are (line, column, reason).
    pub fn parse(text: &str) -> Result<Self, (usize, usize, String)> {
        let file: KeysFile = serde_yaml::from_str(text).map_err(|e| {
            let (l, c) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            (l, c, e.to_string())
        })?;
        let entries = file.keys;
        if entries.len() > MAX_KEYS {
            return Err((
                0,
                0,
                format!("{} keys; the limit is {MAX_KEYS}", entries.len()),
            ));
        }
        let mut keys = Self::default();
        for (i, e) in entries.into_iter().enumerate() {
            let at = |reason: String| {
                let loc = weft_policy::locate(text, &format!("keys[{i}].key"));
                let (l, c) = loc.map_or((0, 0), |l| (l.line, l.column));
                (l, c, reason)
            };
            if e.key.len() < MIN_KEY_LEN || e.key.len() > MAX_PRESENTED_LEN {
                return Err(at(format!(
                    "key of {}: keys are {MIN_KEY_LEN} to {MAX_PRESENTED_LEN} bytes",
                    e.consumer
                )));
            }
            let d = sha256(e.key.as_bytes());
            if keys.digests.contains(&d) {
                return Err(at(format!("key of {} is a duplicate", e.consumer)));
            }
            keys.digests.push(d);
            keys.consumers.push(e.consumer);
        }
        Ok(keys)
    }

    /// The consumer whose key `presented` is, if any.
    pub fn consumer(&self, presented: &[u8]) -> Option<&str> {
        if presented.len() > MAX_PRESENTED_LEN {
            return None;
        }
        let d = sha256(presented);
        let mut found = usize::MAX;
        for (i, k) in self.digests.iter().enumerate() {
            let hit = k.ct_eq(&d);
            // Branch-free select: `found` takes `i` on a hit without a data-dependent jump.
            let mask = 0usize.wrapping_sub(usize::from(hit.unwrap_u8()));
            found = (i & mask) | (found & !mask);
        }
        self.consumers.get(found).map(String::as_str)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_consumers() {
        let keys = ApiKeys::parse(
            "keys:\n- {consumer: alice, key: alice-key-0123456789}\n- {consumer: bob, key: bob-key-0123456789ab}\n",
        )
        .expect("valid");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.consumer(b"bob-key-0123456789ab"), Some("bob"));
        assert_eq!(keys.consumer(b"alice-key-0123456789"), Some("alice"));
        assert_eq!(keys.consumer(b"alice-key-012345678"), None);
        assert_eq!(keys.consumer(b""), None);
        assert_eq!(keys.consumer(&[b'a'; 10_000]), None);
    }

    #[test]
    fn bad_files_say_where() {
        let short = ApiKeys::parse("keys:\n  - consumer: a\n    key: short\n").expect_err("short");
        assert_eq!((short.0, short.1), (3, 10), "{}", short.2);
        let dup = ApiKeys::parse(
            "keys:\n- {consumer: a, key: same-key-0123456789}\n- {consumer: b, key: same-key-0123456789}\n",
        )
        .expect_err("duplicate");
        assert_eq!(dup.0, 3, "{}", dup.2);
        let unknown = ApiKeys::parse("keys: [{consumer: a, key: k0123456789abcdef, kye: x}]\n")
            .expect_err("unknown field");
        assert!(unknown.2.contains("kye"), "{}", unknown.2);
    }
}
