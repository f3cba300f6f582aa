//! The filter language, shared by the API, the CLI, the UI search box, stream subscriptions
//! and notification rules.
//!
//! ```text
//! type:import.* severity:>=error tenant:acme data.country:fr,be -source:/test "timeout"
//! ```
//!
//! Terms are separated by spaces and ANDed. `field:a,b` is OR within a field, a leading `-`
//! negates a term, a trailing `*` is a prefix glob, `field:>=v` (and `>`, `<`, `<=`) compares
//! severities, times, sequence numbers and `data.`/`context.` values, `field:*` asks that a
//! field be present, and bare or quoted words are full-text terms. The full grammar is in
//! `docs/filter.md`.
//!
//! The parser turns text into a [`Filter`] AST once; the store compiles the AST to SQL with
//! parameters and (later) the live stream evaluates it in memory, so the semantics are written
//! down in one place. Errors carry the byte span of the offending term.

use crate::timespec::{parse_bound, Micros};
use herald_wire::{Severity, Visibility};
use std::fmt;

/// A parsed filter: all terms must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub negated: bool,
    pub kind: TermKind,
    /// Byte range of the term in the filter text.
    pub span: (usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TermKind {
    /// A condition on one field.
    Field { field: Field, cond: Cond },
    /// Full-text: a word or a quoted phrase.
    Text(String),
}

/// The fields a filter can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Type,
    Source,
    Subject,
    Id,
    Severity,
    Actor,
    Tenant,
    CorrelationId,
    CausationId,
    Visibility,
    Time,
    Seq,
    /// `data.a.b`: the path segments after `data`.
    Data(Vec<String>),
    /// `context.a.b`.
    Context(Vec<String>),
}

impl Field {
    /// The names of the fixed fields, for error messages and docs.
    pub const NAMES: &'static [&'static str] = &[
        "type",
        "source",
        "subject",
        "id",
        "severity",
        "actor",
        "tenant",
        "correlationid",
        "causationid",
        "visibility",
        "time",
        "seq",
    ];

    fn from_name(name: &str) -> Option<Field> {
        if let Some(path) = name.strip_prefix("data.") {
            return parse_path(path).map(Field::Data);
        }
        if let Some(path) = name.strip_prefix("context.") {
            return parse_path(path).map(Field::Context);
        }
        Some(match name {
            "type" => Field::Type,
            "source" => Field::Source,
            "subject" => Field::Subject,
            "id" => Field::Id,
            "severity" => Field::Severity,
            "actor" => Field::Actor,
            "tenant" => Field::Tenant,
            "correlationid" => Field::CorrelationId,
            "causationid" => Field::CausationId,
            "visibility" => Field::Visibility,
            "time" => Field::Time,
            "seq" => Field::Seq,
            _ => return None,
        })
    }

    /// The field as written in a filter.
    pub fn name(&self) -> String {
        match self {
            Field::Data(p) => format!("data.{}", p.join(".")),
            Field::Context(p) => format!("context.{}", p.join(".")),
            other => Self::NAMES[match other {
                Field::Type => 0,
                Field::Source => 1,
                Field::Subject => 2,
                Field::Id => 3,
                Field::Severity => 4,
                Field::Actor => 5,
                Field::Tenant => 6,
                Field::CorrelationId => 7,
                Field::CausationId => 8,
                Field::Visibility => 9,
                Field::Time => 10,
                _ => 11,
            }]
            .to_owned(),
        }
    }
}

/// Parses `a.b.c` into segments of letters, digits, `_` and `-`.
pub fn parse_path(path: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
    let ok = segs.iter().all(|s| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    });
    (ok && segs.len() <= 16).then_some(segs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Equal to one of the patterns.
    AnyOf(Vec<Pattern>),
    /// An ordered comparison.
    Cmp(CmpOp, Value),
    /// The field is present.
    Exists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Exact(Value),
    /// Strings starting with this text (`abc*`).
    Prefix(String),
}

/// A typed value, as the field it is compared with requires.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    Severity(Severity),
    Visibility(Visibility),
    /// Microseconds since the epoch.
    Time(Micros),
    Seq(u64),
}

/// A filter that could not be parsed: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    /// Byte offset of the offending term in the filter text.
    pub offset: usize,
    /// The offending term.
    pub term: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (in `{}` at offset {})",
            self.message, self.term, self.offset
        )
    }
}

impl std::error::Error for ParseError {}

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 8192;
/// Most terms in one filter.
pub const MAX_TERMS: usize = 64;
/// Most values in one `a,b,c` list.
pub const MAX_VALUES: usize = 256;

impl Filter {
    /// Parses filter text. `now` anchors relative times such as `time:>24h`.
    pub fn parse(input: &str, now: Micros) -> Result<Filter, ParseError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(ParseError {
                message: format!("filter is longer than {MAX_FILTER_LEN} bytes"),
                offset: MAX_FILTER_LEN,
                term: String::new(),
            });
        }
        let mut terms = Vec::new();
        for (start, end) in split_terms(input) {
            let text = &input[start..end];
            let err = |message: String| ParseError {
                message,
                offset: start,
                term: text.to_owned(),
            };
            if terms.len() >= MAX_TERMS {
                return Err(err(format!("more than {MAX_TERMS} terms")));
            }
            terms.push(parse_term(text, start, now).map_err(err)?);
        }
        Ok(Filter { terms })
    }

    /// True when the filter has a free-text term (otherwise every term maps to a column or a
    /// path).
    pub fn has_text(&self) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(t.kind, TermKind::Text(_)))
    }
}

/// Splits on whitespace outside double quotes. Returns byte spans.
fn split_terms(input: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut in_quotes = false;
        while i < bytes.len() {
            let c = bytes[i];
            if in_quotes {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    in_quotes = false;
                }
            } else if c == b'"' {
                in_quotes = true;
            } else if c.is_ascii_whitespace() {
                break;
            }
            i += 1;
        }
        out.push((start, i.min(bytes.len())));
    }
    out
}

/// One value as written: its text, whether it was quoted, whether it ends in `*`.
struct RawValue {
    text: String,
    quoted: bool,
    prefix: bool,
}

/// Splits `a,"b,c",d*` into values.
fn split_values(s: &str) -> Result<Vec<RawValue>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut v = RawValue {
            text: String::new(),
            quoted: false,
            prefix: false,
        };
        if chars.peek() == Some(&'"') {
            chars.next();
            v.quoted = true;
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e) => v.text.push(e),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => v.text.push(c),
                }
            }
            if !closed {
                return Err("unterminated quote".to_owned());
            }
            match chars.peek() {
                None | Some(',') => {}
                Some(c) => return Err(format!("unexpected `{c}` after a quoted value")),
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err("a quote can only start a value".to_owned());
                }
                v.text.push(c);
                chars.next();
            }
            if let Some(stripped) = v.text.strip_suffix('*') {
                v.text = stripped.to_owned();
                v.prefix = true;
                if v.text.contains('*') {
                    return Err("`*` is only allowed at the end of a value".to_owned());
                }
            } else if v.text.contains('*') {
                return Err("`*` is only allowed at the end of a value".to_owned());
            }
        }
        if v.text.is_empty() && !v.quoted && !v.prefix {
            return Err("empty value".to_owned());
        }
        out.push(v);
        if out.len() > MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} values"));
        }
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => unreachable!("values end at a comma or the end"),
        }
    }
    Ok(out)
}

fn unquote_phrase(s: &str) -> Result<String, String> {
    let vals = split_values(s)?;
    match vals.as_slice() {
        [v] if v.quoted => Ok(v.text.clone()),
        _ => Err("a quoted phrase must be a single quoted string".to_owned()),
    }
}

fn parse_term(text: &str, _start: usize, now: Micros) -> Result<Term, String> {
    let span = (_start, _start + text.len());
    let (negated, body) = match text.strip_prefix('-') {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, text),
    };
    if body.starts_with('"') {
        let phrase = unquote_phrase(body)?;
        if phrase.trim().is_empty() {
            return Err("empty phrase".to_owned());
        }
        return Ok(Term {
            negated,
            kind: TermKind::Text(phrase),
            span,
        });
    }
    let Some(colon) = body.find(':') else {
        return Ok(Term {
            negated,
            kind: TermKind::Text(body.to_owned()),
            span,
        });
    };
    let (name, rest) = (&body[..colon], &body[colon + 1..]);
    let field = Field::from_name(name).ok_or_else(|| {
        if name.starts_with("data.") || name.starts_with("context.") {
            format!("`{name}` is not a valid path: use segments of letters, digits, `_` and `-` separated by dots")
        } else {
            format!(
                "unknown field `{name}`; fields are {}, data.PATH and context.PATH (quote the term to search for it as text)",
                Field::NAMES.join(", ")
            )
        }
    })?;
    if rest.is_empty() {
        return Err(format!("missing value after `{name}:`"));
    }
    let cond = parse_cond(&field, rest, now)?;
    Ok(Term {
        negated,
        kind: TermKind::Field { field, cond },
        span,
    })
}

fn parse_cond(field: &Field, rest: &str, now: Micros) -> Result<Cond, String> {
    if rest == "*" {
        return Ok(Cond::Exists);
    }
    let (op, vtext) = if let Some(v) = rest.strip_prefix(">=") {
        (Some(CmpOp::Ge), v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Some(CmpOp::Le), v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Some(CmpOp::Gt), v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Some(CmpOp::Lt), v)
    } else {
        (None, rest)
    };
    let name = field.name();
    let values = split_values(vtext)?;
    if let Some(op) = op {
        let [v] = values.as_slice() else {
            return Err(format!(
                "a comparison takes one value, not a list (in `{name}`)"
            ));
        };
        if v.prefix {
            return Err("a comparison cannot use a `*` prefix".to_owned());
        }
        let value = match field {
            Field::Severity | Field::Time | Field::Seq => typed_value(field, v, now)?,
            Field::Data(_) | Field::Context(_) => json_value(v),
            _ => {
                return Err(format!(
                    "`{name}` cannot be compared with {}; comparisons work on severity, time, seq, data.PATH and context.PATH",
                    op.as_str()
                ))
            }
        };
        return Ok(Cond::Cmp(op, value));
    }
    if matches!(field, Field::Time) {
        return Err("time takes a comparison such as time:>24h or time:<=2026-11-01".to_owned());
    }
    let mut pats = Vec::with_capacity(values.len());
    for v in &values {
        if v.prefix {
            match field {
                Field::Severity | Field::Visibility | Field::Seq => {
                    return Err(format!("`{name}` does not take a `*` prefix"));
                }
                Field::Type if !v.text.is_empty() => {
                    let lowered_ok = v.text.bytes().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || matches!(c, b'.' | b'_' | b'-')
                    });
                    if !lowered_ok {
                        return Err(format!(
                            "type pattern `{}*` can only contain a-z, 0-9, `.`, `_`, `-`",
                            v.text
                        ));
                    }
                }
                _ => {}
            }
            pats.push(Pattern::Prefix(v.text.clone()));
        } else {
            let value = match field {
                Field::Data(_) | Field::Context(_) => json_value(v),
                Field::Severity | Field::Visibility | Field::Seq => typed_value(field, v, now)?,
                Field::Type => {
                    crate::event::validate_type(&v.text)?;
                    Value::Str(v.text.clone())
                }
                _ => Value::Str(v.text.clone()),
            };
            pats.push(Pattern::Exact(value));
        }
    }
    Ok(Cond::AnyOf(pats))
}

/// A value for a `data.`/`context.` path: unquoted numbers and booleans are typed, the rest
/// (and anything quoted) is a string.
fn json_value(v: &RawValue) -> Value {
    if !v.quoted {
        if let Ok(n) = v.text.parse::<f64>() {
            if n.is_finite()
                && v.text
                    .bytes()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'e' | b'E' | b'+'))
            {
                return Value::Num(n);
            }
        }
        match v.text.as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::Str(v.text.clone())
}

fn typed_value(field: &Field, v: &RawValue, now: Micros) -> Result<Value, String> {
    match field {
        Field::Severity => v.text.parse().map(Value::Severity).map_err(|_| {
            format!(
                "`{}` is not a severity; use debug, info, notice, warning, error or critical",
                v.text
            )
        }),
        Field::Visibility => v.text.parse().map(Value::Visibility).map_err(|_| {
            format!(
                "`{}` is not a visibility; use public, internal or private",
                v.text
            )
        }),
        Field::Seq => v
            .text
            .parse()
            .map(Value::Seq)
            .map_err(|_| format!("`{}` is not a sequence number", v.text)),
        Field::Time => parse_bound(&v.text, now).map(Value::Time),
        _ => Ok(Value::Str(v.text.clone())),
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Severity(s) => write!(f, "{s}"),
            Value::Visibility(v) => write!(f, "{v}"),
            Value::Time(t) => write!(f, "@{t}"),
            Value::Seq(s) => write!(f, "#{s}"),
        }
    }
}

/// A compact, unambiguous rendering used by the parser's snapshot tests.
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("(not ")?;
        }
        match &self.kind {
            TermKind::Text(t) => write!(f, "(text {t:?})")?,
            TermKind::Field { field, cond } => {
                let name = field.name();
                match cond {
                    Cond::Exists => write!(f, "(exists {name})")?,
                    Cond::Cmp(op, v) => write!(f, "({name} {} {v})", op.as_str())?,
                    Cond::AnyOf(pats) => {
                        write!(f, "({name} in")?;
                        for p in pats {
                            match p {
                                Pattern::Exact(v) => write!(f, " {v}")?,
                                Pattern::Prefix(p) => write!(f, " {p:?}*")?,
                            }
                        }
                        f.write_str(")")?;
                    }
                }
            }
        }
        if self.negated {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    const NOW: Micros = 1_000_000_000_000_000;

    fn check(input: &str, expect: Expect) {
        let actual = match Filter::parse(input, NOW) {
            Ok(f) => f.to_string(),
            Err(e) => format!("error at {}: {} [{}]", e.offset, e.message, e.term),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn product_example() {
        check(
            r#"type:import.* severity:>=error tenant:acme data.country:fr,be -source:/test "timeout""#,
            expect![[
                r#"(type in "import."*) (severity >= error) (tenant in "acme") (data.country in "fr" "be") (not (source in "/test")) (text "timeout")"#
            ]],
        );
    }

    #[test]
    fn fields_and_values() {
        check("", expect![[r#""#]]);
        check("type:a.b,c", expect![[r#"(type in "a.b" "c")"#]]);
        check(
            "severity:error,critical",
            expect![[r#"(severity in error critical)"#]],
        );
        check("visibility:public", expect![[r#"(visibility in public)"#]]);
        check(
            "time:>24h time:<=1h",
            expect![[r#"(time > @999913600000000) (time <= @999996400000000)"#]],
        );
        check("time:>=2026-11-01", expect!["(time >= @1793491200000000)"]);
        check("seq:>100 seq:5", expect![[r#"(seq > #100) (seq in #5)"#]]);
        check(
            "data.n:>10 data.n:<=2.5e3",
            expect![[r#"(data.n > 10) (data.n <= 2500)"#]],
        );
        check(
            r#"data.code:"10",10"#,
            expect![[r#"(data.code in "10" 10)"#]],
        );
        check(
            "data.ok:true context.user.id:u-1",
            expect![[r#"(data.ok in true) (context.user.id in "u-1")"#]],
        );
        check("subject:*", expect![[r#"(exists subject)"#]]);
        check("-data.x:*", expect![[r#"(not (exists data.x))"#]]);
        check(
            r#"subject:"a b",c* actor:user:42"#,
            expect![[r#"(subject in "a b" "c"*) (actor in "user:42")"#]],
        );
        check(
            r#"correlationid:run-1 causationid:e1 id:x"#,
            expect![[r#"(correlationid in "run-1") (causationid in "e1") (id in "x")"#]],
        );
        check(
            "timeout -debug \"disk full\"",
            expect![[r#"(text "timeout") (not (text "debug")) (text "disk full")"#]],
        );
        check(r#"  "say \"hi\""  "#, expect![[r#"(text "say \"hi\"")"#]]);
        check("- -", expect![[r#"(text "-") (text "-")"#]]);
    }

    #[test]
    fn errors_point_at_the_term() {
        check(
            "type:a foo:bar",
            expect![[
                r#"error at 7: unknown field `foo`; fields are type, source, subject, id, severity, actor, tenant, correlationid, causationid, visibility, time, seq, data.PATH and context.PATH (quote the term to search for it as text) [foo:bar]"#
            ]],
        );
        check(
            "severity:>=fatal",
            expect![[
                r#"error at 0: `fatal` is not a severity; use debug, info, notice, warning, error or critical [severity:>=fatal]"#
            ]],
        );
        check(
            "type:",
            expect![[r#"error at 0: missing value after `type:` [type:]"#]],
        );
        check(
            "type:Import",
            expect![[
                r#"error at 0: type `Import` is not a dotted lowercase name such as `import.completed` (segments of a-z, 0-9, `_`, `-`, each starting with a letter or digit) [type:Import]"#
            ]],
        );
        check(
            "tenant:>a",
            expect![[
                r#"error at 0: `tenant` cannot be compared with >; comparisons work on severity, time, seq, data.PATH and context.PATH [tenant:>a]"#
            ]],
        );
        check(
            "time:yesterday",
            expect![[
                r#"error at 0: time takes a comparison such as time:>24h or time:<=2026-11-01 [time:yesterday]"#
            ]],
        );
        check(
            "time:>yesterday",
            expect![[
                r#"error at 0: `yesterday` is not a time: use a duration back from now (30m, 24h, 7d), a date (2026-11-01) or an RFC 3339 timestamp [time:>yesterday]"#
            ]],
        );
        check(
            r#"subject:"abc"#,
            expect![[r#"error at 0: unterminated quote [subject:"abc]"#]],
        );
        check(
            "subject:a,,b",
            expect![[r#"error at 0: empty value [subject:a,,b]"#]],
        );
        check(
            "subject:a*b",
            expect![[r#"error at 0: `*` is only allowed at the end of a value [subject:a*b]"#]],
        );
        check(
            "data.a..b:1",
            expect![[
                r#"error at 0: `data.a..b` is not a valid path: use segments of letters, digits, `_` and `-` separated by dots [data.a..b:1]"#
            ]],
        );
        check(
            "seq:>=x",
            expect![[r#"error at 0: `x` is not a sequence number [seq:>=x]"#]],
        );
        check(
            "severity:>error,critical",
            expect![[
                r#"error at 0: a comparison takes one value, not a list (in `severity`) [severity:>error,critical]"#
            ]],
        );
    }
}
