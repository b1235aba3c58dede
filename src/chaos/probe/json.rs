//! The `json` criterion of HTTP probes: the value at an RFC 6901 pointer in a response
//! body must equal an expected JSON value, compared exactly.
//!
//! The body is never turned into a `serde_json::Value`, whose numbers beyond `i64`/`u64`
//! are `f64` (`12345678901234567.5` would read as `12345678901234568`, and `1e400` not at
//! all): it is walked as raw JSON text (`serde_json::value::RawValue`), and each number is
//! compared by the exact value of its digits ([`Decimal`]). Equality:
//!
//! - numbers are equal when their values are: JSON has one number type (RFC 8259,
//!   section 6), so `3`, `3.0` and `3e0` are equal, while `9007199254740993` and
//!   `9007199254740992` are not, nor `0.1` and `0.10000000000000001`;
//! - strings are equal when their characters are, once JSON escapes are decoded
//!   (`"\u00e9"` is `"é"`): case-sensitive, no trimming, no Unicode normalisation;
//! - arrays: same length, equal items in order; objects: the same keys with equal values,
//!   in any order (a key the body repeats counts with its last value, as serde_json reads
//!   it); `true`, `false` and `null` equal only themselves.
//!
//! The expected value comes from the catalog as a `serde_json::Value`: its integers are
//! exact within `i64`/`u64`, and any other number is the `f64` the catalog reader made of
//! it, taken as the shortest decimal that reads back as that `f64`.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use super::number::Decimal;

/// The body as raw JSON, checked to be one well-formed JSON value.
pub(crate) fn parse(body: &[u8]) -> Result<&RawValue, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The value `pointer` (RFC 6901, e.g. `/items/0/id`; `""` is the whole document) points
/// to, or `None` when nothing is there. Array indexes are `0` or digits without a leading
/// zero, as in serde_json's `Value::pointer`.
pub(crate) fn lookup<'a>(document: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(document);
    }
    let mut node = document;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        node = match node.get().as_bytes().first() {
            Some(b'{') => members(node)?.remove(&token)?,
            Some(b'[') => *items(node)?.get(array_index(&token)?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Whether `found` equals `expected`, by the rules of this module's documentation.
pub(crate) fn equals(found: &RawValue, expected: &Value) -> bool {
    let text = found.get();
    match (text.as_bytes().first(), expected) {
        (Some(b'{'), Value::Object(want)) => members(found).is_some_and(|got| {
            got.len() == want.len()
                && want
                    .iter()
                    .all(|(key, value)| got.get(key).is_some_and(|item| equals(item, value)))
        }),
        (Some(b'['), Value::Array(want)) => items(found).is_some_and(|got| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(item, value)| equals(item, value))
        }),
        (Some(b'"'), Value::String(want)) => {
            serde_json::from_str::<String>(text).is_ok_and(|got| got == *want)
        }
        (_, Value::Number(want)) => match (Decimal::parse(text), Decimal::of_json(want)) {
            (Some(got), Some(want)) => got == want,
            _ => false,
        },
        (_, Value::Bool(want)) => serde_json::from_str::<bool>(text).is_ok_and(|got| got == *want),
        (_, Value::Null) => text == "null",
        _ => false,
    }
}

/// `found` as failure texts show it: its text from the body, exactly, with the
/// whitespace between tokens of an object or array removed.
pub(crate) fn shown(found: &RawValue) -> String {
    let mut compact = String::with_capacity(found.get().len());
    let (mut in_string, mut escaped) = (false, false);
    for c in found.get().chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        } else {
            in_string = c == '"';
        }
        compact.push(c);
    }
    compact
}

/// The members of an object, each key with its last value.
fn members(object: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
    serde_json::from_str(object.get()).ok()
}

/// The items of an array.
fn items(array: &RawValue) -> Option<Vec<&RawValue>> {
    serde_json::from_str(array.get()).ok()
}

/// An RFC 6901 array index: `0`, or digits with no leading zero (no sign).
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0" || !token.starts_with(['0', '+']);
    canonical.then(|| token.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judge(body: &str, pointer: &str, expected: Value) -> bool {
        let document = parse(body.as_bytes()).expect("the test body is JSON");
        lookup(document, pointer).is_some_and(|found| equals(found, &expected))
    }

    #[test]
    fn numbers_equal_by_exact_value_whatever_their_spelling() {
        assert!(judge(r#"{"n": 3}"#, "/n", json!(3.0)));
        assert!(judge(r#"{"n": 3.0}"#, "/n", json!(3)));
        assert!(judge(r#"{"n": 3e0}"#, "/n", json!(3)));
        assert!(judge(r#"{"n": -0}"#, "/n", json!(0)));
        assert!(!judge(r#"{"n": 4}"#, "/n", json!(3)));
    }

    #[test]
    fn numbers_beyond_a_double_keep_every_digit() {
        // 2^53 + 1 and 2^53 are one f64.
        assert!(!judge(
            r#"{"n": 9007199254740993}"#,
            "/n",
            json!(9007199254740992u64)
        ));
        assert!(judge(
            r#"{"n": 9007199254740993}"#,
            "/n",
            json!(9007199254740993u64)
        ));
        assert!(judge(r#"[9223372036854775807]"#, "/0", json!(i64::MAX)));
        assert!(judge(r#"[-9223372036854775808]"#, "/0", json!(i64::MIN)));
        assert!(judge(r#"[18446744073709551615]"#, "/0", json!(u64::MAX)));
        assert!(!judge(r#"[18446744073709551615]"#, "/0", json!(-1)));
        // Beyond u64 the body keeps its digits; serde_json's Value would round them.
        assert!(!judge(
            r#"[18446744073709551616]"#,
            "/0",
            json!(1.8446744073709552e19)
        ));
        assert!(!judge(
            r#"[12345678901234567.5]"#,
            "/0",
            json!(12345678901234568u64)
        ));
        assert!(!judge(r#"[0.10000000000000001]"#, "/0", json!(0.1)));
        assert!(judge(r#"[0.1]"#, "/0", json!(0.1)));
        assert!(!judge(r#"[1e400]"#, "/0", json!(1e300)));
    }

    #[test]
    fn strings_equal_exactly_once_escapes_are_decoded() {
        assert!(judge(r#"{"s": "caf\u00e9"}"#, "/s", json!("café")));
        assert!(!judge(r#"{"s": "ok "}"#, "/s", json!("ok")));
        assert!(!judge(r#"{"s": "OK"}"#, "/s", json!("ok")));
        assert!(!judge(r#"{"s": "3"}"#, "/s", json!(3)));
        assert!(!judge(r#"{"s": 3}"#, "/s", json!("3")));
    }

    #[test]
    fn objects_and_arrays_equal_structurally() {
        let body = r#"{"a": {"x": [1, 2.0, {"y": null}], "z": true}}"#;
        assert!(judge(
            body,
            "/a",
            json!({"z": true, "x": [1, 2, {"y": null}]})
        ));
        assert!(!judge(
            body,
            "/a",
            json!({"z": true, "x": [2, 1, {"y": null}]})
        ));
        assert!(!judge(body, "/a", json!({"x": [1, 2, {"y": null}]})));
        assert!(!judge(body, "/a", json!({"z": true, "x": [1, 2]})));
        assert!(!judge(body, "/a/z", json!(1)));
        assert!(!judge(body, "/a/x/2/y", json!(false)));
        assert!(judge(body, "/a/x/2/y", Value::Null));
        // A repeated key counts with its last value, as serde_json reads it.
        assert!(judge(r#"{"k": 1, "k": 2}"#, "", json!({"k": 2})));
    }

    #[test]
    fn a_yaml_number_with_a_leading_zero_equals_its_decimal_value() {
        // YAML 1.2's core schema reads `017` as the integer 17; serde-saphyr makes it the
        // float 17.0, which is the same number, so the comparison is unchanged.
        let document = crate::catalog::document::Document::parse("equals: 017\n").unwrap();
        let expected = &document.value["equals"];
        assert!(judge(r#"{"n": 17}"#, "/n", expected.clone()), "{expected}");
        assert!(!judge(r#"{"n": 15}"#, "/n", expected.clone()), "not octal");
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let body = r#"{"a/b": {"m~n": [10, 20]}, "": 1}"#;
        assert!(judge(body, "/a~1b/m~0n/1", json!(20)));
        assert!(judge(body, "/", json!(1)));
        let document = parse(body.as_bytes()).unwrap();
        for missing in [
            "/a~1b/m~0n/01",
            "/a~1b/m~0n/+1",
            "/a~1b/m~0n/2",
            "/a~1b/m~0n/-",
            "a",
        ] {
            assert!(lookup(document, missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn found_values_are_shown_as_written_without_layout() {
        let document = parse(b"{\"a\": [ 1.50,\n  \"x y\\\" \" , 18446744073709551616 ]}").unwrap();
        let found = lookup(document, "/a").unwrap();
        assert_eq!(shown(found), r#"[1.50,"x y\" ",18446744073709551616]"#);
    }
}
