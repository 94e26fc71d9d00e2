//! Strict JSON for JOSE headers and claim sets: a member name that appears twice anywhere in the
//! document makes it invalid (RFC 7515 §4 / RFC 7519 §4: "MUST either reject ... or use a JSON
//! parser that returns only the lexically last duplicate member name" — we reject, so two parsers
//! can never disagree about which `alg` or `sub` a token carries).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};

/// Why a JOSE part is not acceptable JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StrictJsonError {
    /// Not JSON, or not an object at the top.
    #[error("not a json object")]
    Invalid,
    /// A member name occurs twice in one object.
    #[error("duplicate member name")]
    Duplicate,
}

/// Parses `bytes` as one JSON object, refusing duplicate member names at every depth.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    match parse_with(bytes, StrictValue)? {
        Value::Object(map) => Ok(map),
        _ => Err(StrictJsonError::Invalid),
    }
}

/// Parses `bytes` as one JSON document with `seed`, which must refuse duplicate member names
/// with [`duplicate`] (and may use [`StrictValue`] for values it does not keep).
pub(crate) fn parse_with<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match seed.deserialize(&mut de) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with(DUPLICATE) => return Err(StrictJsonError::Duplicate),
        Err(_) => return Err(StrictJsonError::Invalid),
    };
    de.end().map_err(|_| StrictJsonError::Invalid)?;
    Ok(value)
}

/// The error a strict visitor raises on a duplicate member name.
pub(crate) fn duplicate<E: de::Error>() -> E {
    E::custom(DUPLICATE)
}

/// The error text our visitor raises on a duplicate, recognised above.
const DUPLICATE: &str = "duplicate json member";

/// Any JSON value, refusing duplicate member names at every depth.
pub(crate) struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// The visitor of [`StrictValue`].
pub(crate) struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The map itself tells a duplicate: no second set of the names.
            if out.contains_key(&key) {
                return Err(duplicate());
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_object_parses() {
        let m = parse_object(br#"{"a":1,"b":[1,{"c":"x"}],"d":null,"e":1.5}"#).unwrap();
        assert_eq!(m["a"], 1);
        assert_eq!(m["b"][1]["c"], "x");
        assert_eq!(m["e"], 1.5);
    }

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        for doc in [
            r#"{"alg":"ES256","alg":"none"}"#,
            r#"{"a":{"x":1,"x":2}}"#,
            r#"{"a":[{"x":1,"x":1}]}"#,
        ] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(StrictJsonError::Duplicate),
                "{doc}"
            );
        }
    }

    #[test]
    fn non_objects_and_trailing_data_are_invalid() {
        for doc in ["[]", "1", "\"s\"", "{} {}", "{", "", "{\"a\":1}x"] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(StrictJsonError::Invalid),
                "{doc}"
            );
        }
    }
}
