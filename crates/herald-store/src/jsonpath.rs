//! The value at a `data.`/`context.` path of a stored event's JSON, typed as SQLite's
//! `json_extract` types it, for the SQL function `herald_path` that path indexes and
//! filters evaluate (see [`crate::sql::path_expr`]).
//!
//! It exists because `json_extract` turns the whole body into SQLite's JSONB before it looks
//! up one member: with a path index, that was a quarter of the indexer's instructions per
//! event. This walks the text to the value and stops there, skipping what is not on the path
//! without parsing it (stored bodies are JSON, written by Herald). The values are those
//! `json_extract` gives (checked against it in the tests): JSON `null` and a missing member
//! are NULL, `true`/`false` the integers 1/0, an integer that fits 64 bits an integer (a
//! larger one a real), other numbers reals (beyond a double's range, an infinity), a string
//! its unescaped text, an object or an array its JSON text.

/// A value read at a path, as SQL sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum PathValue<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(std::borrow::Cow<'a, str>),
}

/// The text is not JSON where the walk to the value went through it.
#[derive(Debug)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed JSON")
    }
}

impl std::error::Error for Malformed {}

impl From<serde_json::Error> for Malformed {
    fn from(_: serde_json::Error) -> Malformed {
        Malformed
    }
}

/// The value at `path` (object member names, outermost first) in the JSON text `json`.
/// The text must be JSON (stored bodies are): what the walk passes through is checked only
/// as far as finding its end needs, so other text may give NULL where `json_extract` would
/// fail; the value found is parsed in full.
pub fn extract<'a, S: AsRef<str>>(json: &'a str, path: &[S]) -> Result<PathValue<'a>, Malformed> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    for seg in path {
        if b.get(i) != Some(&b'{') {
            // Not an object: no member (if it is a JSON value at all).
            typed(&json[i..value_end(b, i)?])?;
            return Ok(PathValue::Null);
        }
        i = skip_ws(b, i + 1);
        if b.get(i) == Some(&b'}') {
            return Ok(PathValue::Null);
        }
        // The members, until the first one with the name (SQLite takes the first too).
        loop {
            let key_end = value_end(b, i)?;
            if b[i] != b'"' {
                return Err(Malformed);
            }
            let hit = key_is(&json[i..key_end], seg.as_ref());
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(Malformed);
            }
            i = skip_ws(b, i + 1);
            if hit {
                break;
            }
            i = skip_ws(b, value_end(b, i)?);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => return Ok(PathValue::Null),
                _ => return Err(Malformed),
            }
        }
    }
    let end = value_end(b, i)?;
    typed(&json[i..end])
}

/// Whether the JSON string `quoted` (with its quotes) is `want`. A name whose escapes do
/// not decode (a lone surrogate, which ingest lets through) is not any name a path can
/// hold (`[A-Za-z0-9_-]`): the walk goes on past it, as SQLite's does.
fn key_is(quoted: &str, want: &str) -> bool {
    unescaped(quoted).is_ok_and(|k| k == want)
}

/// The text of the JSON string `quoted` (with its quotes): borrowed when it has no escape.
fn unescaped(quoted: &str) -> Result<std::borrow::Cow<'_, str>, Malformed> {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains('\\') {
        return Ok(inner.into());
    }
    Ok(serde_json::from_str::<String>(quoted)?.into())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Where the JSON value that starts at `i` ends.
fn value_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    match b.get(i).ok_or(Malformed)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j).ok_or(Malformed)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            // A number or a literal: up to the next delimiter.
            let n = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - i);
            if n == 0 {
                return Err(Malformed);
            }
            Ok(i + n)
        }
    }
}

/// Where the JSON string that starts (with its quote) at `i` ends, past its closing quote.
fn string_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', &b[j.min(b.len())..]).ok_or(Malformed)?;
        if b[j] == b'"' {
            return Ok(j + 1);
        }
        j += 2;
    }
}

/// Parses a JSON path as `sql::path_expr` writes it: `$.root."seg"."seg"`.
pub fn parse_json_path(p: &str) -> Option<Vec<String>> {
    let rest = p.strip_prefix("$.")?;
    let (root, mut rest) = match rest.find('.') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if root.is_empty() || root.contains('"') {
        return None;
    }
    let mut segs = vec![root.to_string()];
    while !rest.is_empty() {
        let quoted = rest.strip_prefix(".\"")?;
        let end = quoted.find('"')?;
        segs.push(quoted[..end].to_string());
        rest = &quoted[end + 1..];
    }
    Some(segs)
}

/// The SQL value of one JSON value's text.
fn typed(t: &str) -> Result<PathValue<'_>, Malformed> {
    Ok(match t.as_bytes().first() {
        Some(b'"') => PathValue::Text(unescaped(t)?),
        Some(b'{' | b'[') => {
            // Checked whole, as json_extract would.
            serde_json::from_str::<serde::de::IgnoredAny>(t)?;
            PathValue::Text(t.into())
        }
        Some(b't' | b'f' | b'n') => match t {
            "true" => PathValue::Int(1),
            "false" => PathValue::Int(0),
            "null" => PathValue::Null,
            _ => return Err(Malformed),
        },
        _ if !is_json_number(t) => return Err(Malformed),
        // A number beyond a double's range is an infinity, as SQLite reads it (serde_json
        // refuses it). Rust's parser rounds exactly; SQLite keeps about 19 significant
        // digits, so a number written with more may differ in its last bit from
        // `json_extract`'s (index and filters both read it here, so they agree).
        _ if t.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => {
            PathValue::Real(t.parse::<f64>().map_err(|_| Malformed)?)
        }
        // An integer too large for 64 bits is a real, as in SQLite.
        _ => match t.parse::<i64>() {
            Ok(i) => PathValue::Int(i),
            Err(_) => PathValue::Real(t.parse::<f64>().map_err(|_| Malformed)?),
        },
    })
}

/// Whether `t` is a JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn parses_the_paths_path_expr_writes() {
        assert_eq!(
            parse_json_path(r#"$.data."org""#),
            Some(vec!["data".to_string(), "org".to_string()])
        );
        assert_eq!(
            parse_json_path(r#"$.context."a-b"."c_1""#),
            Some(vec!["context".into(), "a-b".into(), "c_1".into()])
        );
        assert_eq!(parse_json_path("$.data"), Some(vec!["data".to_string()]));
        for bad in [
            "data.org",
            "$.",
            r#"$.data.org"#,
            r#"$.data."org"#,
            r#"$."x""#,
        ] {
            assert_eq!(parse_json_path(bad), None, "{bad}");
        }
    }

    /// What SQLite gives for `json_extract(json, path)`: its type and value.
    fn sqlite(conn: &Connection, json: &str, path: &str) -> (String, rusqlite::types::Value) {
        conn.query_row(
            "SELECT typeof(json_extract(?1, ?2)), json_extract(?1, ?2)",
            [json, path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    fn ours(json: &str, path: &str) -> (String, rusqlite::types::Value) {
        use rusqlite::types::Value;
        let segs = parse_json_path(path).unwrap();
        match extract(json, &segs).unwrap() {
            PathValue::Null => ("null".into(), Value::Null),
            PathValue::Int(i) => ("integer".into(), Value::Integer(i)),
            PathValue::Real(r) => ("real".into(), Value::Real(r)),
            PathValue::Text(t) => ("text".into(), Value::Text(t.into_owned())),
        }
    }

    /// Every kind of value, nesting, escapes, duplicates, numbers at the edges of 64 bits,
    /// and paths that go through what is not an object: the same as `json_extract`.
    #[test]
    fn values_are_what_json_extract_gives() {
        let conn = Connection::open_in_memory().unwrap();
        let docs = [
            r#"{"seq":1,"data":{"org":"org-0001","n":42,"neg":-7,"r":1.5,"e":1e3,"E":-2.5E-3,"t":true,"f":false,"z":null,"o":{"a":[1,{"b":"c"}],"d":{}},"a":[1,"x",null],"s":"tab\tq\"uote\\ \u00e9\u2603 \ud83d\ude00 \/","big":12345678901234567890,"min":-9223372036854775808,"max":9223372036854775807,"over":9223372036854775808,"negz":-0,"zero":0.0,"dup":1,"dup":2,"a-b":"dash","k\u0065y":"escaped key","":"empty"},"context":{"ip":"10.0.0.1","deep":{"x":{"y":{"z":"bottom"}}}}}"#,
            r#"{"data":"not an object","context":[{"a":1}]}"#,
            r#"{"data":{"org":{"nested":true}},"data":{"org":"second"}}"#,
            r#"{"data":{}}"#,
            r#"{"data":{"\udc00":1,"org":"acme","n":2}}"#,
            r#"{"data":[],"context":null}"#,
            r#"{"data":{"unicode":"日本語","emoji":"😀","pi":3.141592653589793,"tiny":5e-324,"huge":1.7976931348623157e308,"frac":0.1,"inf":1e400,"ninf":-1E+400,"under":1e-400,"long":123456789012345678901234567890.5e-3,"exp0":2e0,"negexp":-5E-1}}"#,
        ];
        let paths = [
            r#"$.data"#,
            r#"$.context"#,
            r#"$.data."org""#,
            r#"$.data."n""#,
            r#"$.data."neg""#,
            r#"$.data."r""#,
            r#"$.data."e""#,
            r#"$.data."E""#,
            r#"$.data."t""#,
            r#"$.data."f""#,
            r#"$.data."z""#,
            r#"$.data."o""#,
            r#"$.data."o"."a""#,
            r#"$.data."o"."d""#,
            r#"$.data."o"."a"."b""#,
            r#"$.data."a""#,
            r#"$.data."s""#,
            r#"$.data."big""#,
            r#"$.data."min""#,
            r#"$.data."max""#,
            r#"$.data."over""#,
            r#"$.data."negz""#,
            r#"$.data."zero""#,
            r#"$.data."dup""#,
            r#"$.data."a-b""#,
            r#"$.data."key""#,
            r#"$.data."missing""#,
            r#"$.data."org"."nested""#,
            r#"$.data."unicode""#,
            r#"$.data."emoji""#,
            r#"$.data."pi""#,
            r#"$.data."tiny""#,
            r#"$.data."huge""#,
            r#"$.data."frac""#,
            r#"$.data."inf""#,
            r#"$.data."ninf""#,
            r#"$.data."under""#,
            r#"$.data."long""#,
            r#"$.data."exp0""#,
            r#"$.data."negexp""#,
            r#"$.context."ip""#,
            r#"$.context."deep"."x"."y"."z""#,
            r#"$.context."deep"."x""#,
            r#"$.context."a""#,
            r#"$.seq"#,
        ];
        let mut compared = 0;
        for doc in docs {
            for path in paths {
                assert_eq!(ours(doc, path), sqlite(&conn, doc, path), "{path} in {doc}");
                compared += 1;
            }
        }
        assert_eq!(compared, docs.len() * paths.len());
    }

    /// The 115 real events of the Wikimedia corpus (in herald-core's tests): every member
    /// of each, three levels deep, read as `json_extract` reads it.
    #[test]
    fn corpus_values_are_what_json_extract_gives() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../herald-core/tests/corpus/wikimedia-schemas/primary");
        let conn = Connection::open_in_memory().unwrap();
        let mut compared = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("the corpus is in the repository") {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if !p.to_string_lossy().ends_with(".examples.json") {
                    continue;
                }
                let examples: Vec<serde_json::Value> =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                for ex in examples {
                    let body = serde_json::json!({ "seq": 1, "data": ex }).to_string();
                    let mut paths = Vec::new();
                    member_paths(&ex, "$.data".to_string(), 3, &mut paths);
                    for path in paths {
                        assert_eq!(
                            ours(&body, &path),
                            sqlite(&conn, &body, &path),
                            "{path} in {body}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 900, "only {compared} values compared");
    }

    /// The paths of `v`'s members (names a filter can write), down to `depth` levels.
    fn member_paths(v: &serde_json::Value, at: String, depth: usize, out: &mut Vec<String>) {
        let Some(o) = v.as_object() else { return };
        if depth == 0 {
            return;
        }
        for (k, child) in o {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                continue;
            }
            let p = format!("{at}.\"{k}\"");
            out.push(p.clone());
            member_paths(child, p, depth - 1, out);
        }
    }

    /// Text cut short, or not JSON where the walk goes, is an error, not a value.
    #[test]
    fn text_that_is_not_json_is_an_error() {
        for bad in [
            "{\"data\":",
            "{\"data\":\"open",
            "{\"data\":{\"a\":[1,2}",
            "{\"x\":1 \"data\":2}",
            "{\"x\" 1}",
            "{1:2}",
            "{\"data\":tru}",
            "{\"data\":01x}",
            "{\"data\":01}",
            "{\"data\":+1}",
            "{\"data\":1.}",
            "{\"data\":.5}",
            "{\"data\":1e}",
            "{\"data\":-}",
            "{\"data\":1e+}",
            "not json",
        ] {
            assert!(
                extract(bad, &["data"]).is_err() || extract(bad, &["data", "a"]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            extract(r#"{"x":{"y":[1,"}]\""]},"data":7}"#, &["data"]).unwrap(),
            PathValue::Int(7)
        );
        // A member name with a lone surrogate is passed over, not an error.
        assert_eq!(
            extract(r#"{"data":{"\udc00":1,"org":"acme"}}"#, &["data", "org"]).unwrap(),
            PathValue::Text("acme".into())
        );
        // What follows the value is not read: the body's end is the writer's business.
        assert_eq!(
            extract(r#"{"data":{"a":1}"#, &["data", "a"]).unwrap(),
            PathValue::Int(1)
        );
    }
}
