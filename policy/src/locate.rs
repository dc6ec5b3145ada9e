//! Where a field lives in YAML text: the line and column of the node a [`FieldError`] names,
//! so errors found after parsing (an unknown service, a bad regex) point at a line like syntax
//! errors do.
//!
//! It walks the document with serde_yaml's own parser (so anchors, flow and block styles,
//! comments and multi-line scalars are read exactly as the policy was) and stops at the named
//! node, whose position serde_yaml reports. A path that does not exist (a field the error
//! says is missing) resolves to its nearest existing ancestor.
//!
//! [`FieldError`]: crate::FieldError

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A position in YAML text, both numbers counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// The position of the node at `field` (a field path such as `routes[1].match.path.regex`)
/// in `text`, or of its nearest ancestor that exists; `None` when not even the first segment
/// exists or the text does not parse.
pub fn locate(text: &str, field: &str) -> Option<Location> {
    let mut path = parse_path(field)?;
    while !path.is_empty() {
        if let Some(l) = find(text, &path) {
            return Some(l);
        }
        path.pop();
    }
    None
}

#[derive(Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[1][2].c` into segments; `None` when malformed.
fn parse_path(field: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        out.push(Seg::Key(key.to_owned()));
        while let Some(r) = rest.strip_prefix('[') {
            let (n, tail) = r.split_once(']')?;
            out.push(Seg::Index(n.parse().ok()?));
            rest = tail;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// Marks the error the walk raises at its target, to tell it from any other.
const FOUND: &str = "\u{1}weft-locate-found\u{1}";

fn find(text: &str, path: &[Seg]) -> Option<Location> {
    let de = serde_yaml::Deserializer::from_str(text);
    match Walk(path).deserialize(de) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

/// Descends along the remaining path; at its end, fails on the node so serde_yaml records
/// that node's position in the error.
struct Walk<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            d.deserialize_any(Target)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            match (&self.0[0], key.as_str()) {
                (Seg::Key(want), Some(k)) if want == k => {
                    map.next_value_seed(Walk(&self.0[1..]))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let more = match &self.0[0] {
                Seg::Index(n) if *n == i => seq.next_element_seed(Walk(&self.0[1..]))?.is_some(),
                _ => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    // A scalar where the path goes on: the path does not exist.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The node the path names: fail on it, whatever it is.
struct Target;

impl<'de> Visitor<'de> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# the orders service
services:
  - name: orders
    endpoints: []
  - {name: inventory, identity: x}
routes:
  - name: r
    match:
      path:
        regex: \"((\"
  - {name: q, match: {path: {regex: x}}}
  - name: z
    from: [a,
      b]
    request_headers: {set: {x-route: z}}
";

    fn at(field: &str) -> Option<(usize, usize)> {
        locate(TEXT, field).map(|l| (l.line, l.column))
    }

    #[test]
    fn finds_nodes_in_block_and_flow_style() {
        assert_eq!(at("services[0]"), Some((3, 5)));
        assert_eq!(at("services[0].endpoints"), Some((4, 16)));
        assert_eq!(at("services[1].identity"), Some((5, 33)));
        assert_eq!(at("routes[0].match.path.regex"), Some((10, 16)));
        assert_eq!(at("routes[1]"), Some((11, 5)));
        assert_eq!(at("routes[1].match.path.regex"), Some((11, 37)));
        assert_eq!(at("routes[2].from[1]"), Some((14, 7)));
        assert_eq!(at("routes[2].request_headers.set.x-route"), Some((15, 38)));
    }

    #[test]
    fn missing_nodes_resolve_to_their_nearest_ancestor() {
        assert_eq!(at("routes[1].backends[0].weight"), at("routes[1]"));
        assert_eq!(at("routes[9].name"), Some((7, 3)), "the routes sequence");
        assert_eq!(at("authorization[0]"), None);
        assert_eq!(at("routes[0].name.deeper"), Some((7, 11)));
        assert_eq!(locate("a: 1", "b"), None);
        assert_eq!(parse_path("a[1]b"), None);
        assert_eq!(
            parse_path("a.b[1][2]"),
            Some(vec![
                Seg::Key("a".into()),
                Seg::Key("b".into()),
                Seg::Index(1),
                Seg::Index(2)
            ])
        );
    }
}
