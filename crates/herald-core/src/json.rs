//! A single-pass scanner over already-validated JSON text that minifies it and measures its
//! nesting depth.
//!
//! It exists because events are stored and streamed as one line of canonical JSON: copying
//! the producer's `data` with its whitespace removed is much cheaper than parsing it into a
//! tree and serializing it again, and the same pass enforces the depth limit. The input must
//! be valid JSON (it always comes out of `serde_json::value::RawValue`).

/// The deepest nesting of `raw` is more than the allowed depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// Appends `raw` without insignificant whitespace to `out`; fails when arrays and objects nest
/// deeper than `max_depth` (a scalar has depth 0, `{}` depth 1).
pub fn append_minified(raw: &str, out: &mut String, max_depth: usize) -> Result<(), TooDeep> {
    let bytes = raw.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let mut start = 0; // start of the pending run of bytes to copy
    out.reserve(raw.len());
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = after_string(bytes, i),
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(TooDeep);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&raw[start..i]);
                while i < bytes.len() && matches!(bytes[i], b' ' | b'\n' | b'\r' | b'\t') {
                    i += 1;
                }
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&raw[start..]);
    Ok(())
}

/// The nesting depth of `raw` (valid JSON).
pub fn depth(raw: &str) -> usize {
    let bytes = raw.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = after_string(bytes, i);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// The index just past the string that starts (with its opening quote) at `start`, honouring
/// escapes. Strings are most of an event's bytes: this jumps from quote or backslash to the
/// next with `memchr2` instead of testing every byte.
fn after_string(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(k) = bytes
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        i += k;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(s: &str, d: usize) -> Result<String, TooDeep> {
        let mut out = String::new();
        append_minified(s, &mut out, d).map(|_| out)
    }

    #[test]
    fn minifies_outside_strings_only() {
        assert_eq!(
            min("{ \"a b\" : [ 1 , \"x\\\" y\" ],\n\t\"c\": {} }", 8).unwrap(),
            r#"{"a b":[1,"x\" y"],"c":{}}"#
        );
        assert_eq!(min("  42 ", 0).unwrap(), "42");
        assert_eq!(min(r#""\\""#, 0).unwrap(), r#""\\""#);
    }

    proptest::proptest! {
        /// Minifying indented JSON gives the compact form, whatever its strings hold
        /// (quotes, backslashes, brackets, whitespace, other scripts), and the depth is
        /// counted outside strings only.
        #[test]
        fn minified_pretty_json_is_compact_json(
            members in proptest::collection::btree_map(".{0,12}", proptest::collection::vec("[\\\\\"\\[\\]{} \tx\n]{0,6}", 0..3), 0..5)
        ) {
            let pretty = serde_json::to_string_pretty(&members).unwrap();
            let compact = serde_json::to_string(&members).unwrap();
            proptest::prop_assert_eq!(min(&pretty, 2).unwrap(), compact.clone());
            let want = if members.is_empty() { 1 } else { 2 };
            proptest::prop_assert_eq!(depth(&pretty), want);
            proptest::prop_assert_eq!(min(&pretty, 1).is_err(), want == 2);
        }
    }

    #[test]
    fn depth_limit() {
        assert_eq!(min("[[[]]]", 3).unwrap(), "[[[]]]");
        assert_eq!(min("[[[]]]", 2), Err(TooDeep));
        assert_eq!(min(r#"{"a":"[[[[["}"#, 1).unwrap(), r#"{"a":"[[[[["}"#);
        assert_eq!(depth(r#"{"a":[{"b":"]]]"}]}"#), 3);
    }
}
