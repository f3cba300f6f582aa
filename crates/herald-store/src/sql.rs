//! Compiles a filter AST and listing bounds into a SQLite `WHERE` clause with bound
//! parameters.
//!
//! It exists apart from the SQLite store so that its output can be tested as text, and so the
//! rules that make queries use the indexes are in one place: type prefixes become ranges,
//! `data.` paths become the exact `herald_path` expressions the path indexes are built on,
//! and negation is written `IS NOT 1` so that an absent field counts as "not equal".

use herald_core::cursor::Cursor;
use herald_core::filter::{CmpOp, Cond, Field, Filter, Pattern, TermKind, Value};
use herald_core::Access;
use rusqlite::types::Value as SqlValue;
use std::fmt::Write;

/// A compiled `WHERE` clause (without the keyword) and its parameters, in order.
#[derive(Debug, Default)]
pub struct Where {
    pub sql: String,
    pub params: Vec<SqlValue>,
    /// The clause asks the full-text index (a list of hits, built once per statement).
    pub uses_fts: bool,
}

/// The stored JSON of an event in SQL: `herald_body` (see `sqlite::register_body_function`)
/// reads it from its segment, or from the row for events stored before segments.
pub const BODY: &str = "herald_body(body,loc,len)";

/// An event's day in SQL: its `time` divided by a day's microseconds, truncated toward zero
/// like Rust's `/` (see [`day_of`]). The day-bucketed indexes (attributes and paths) lead
/// with exactly this text, so that SQLite matches it in queries.
pub const DAY_EXPR: &str = "time/86400000000";

/// A day in microseconds.
pub const DAY_US: i64 = 86_400_000_000;

/// The day of an event time, as [`DAY_EXPR`] computes it.
pub fn day_of(time_us: i64) -> i64 {
    time_us / DAY_US
}

/// The times whose day is `day`, as `[from, to)`. Truncation toward zero makes day 0 twice
/// as long as the others (it holds the day on each side of the epoch).
pub fn day_span(day: i64) -> (i64, i64) {
    let from = match day {
        d if d > 0 => d.saturating_mul(DAY_US),
        d => d.saturating_sub(1).saturating_mul(DAY_US).saturating_add(1),
    };
    let to = match day {
        d if d >= 0 => d.saturating_add(1).saturating_mul(DAY_US),
        d => d.saturating_mul(DAY_US).saturating_add(1),
    };
    (from, to)
}

/// The days a listing may hold, lowest and highest (inclusive), from its bounds.
pub fn day_range(
    since_us: Option<i64>,
    until_us: Option<i64>,
    cursor: Option<Cursor>,
) -> (i64, i64) {
    let lo = since_us.map_or(i64::MIN, day_of);
    let mut hi = until_us.map_or(i64::MAX, |u| day_of(u.saturating_sub(1)));
    if let Some(c) = cursor {
        hi = hi.min(day_of(c.time_us));
    }
    (lo, hi)
}

/// Whether a listing is read day by day: a positive condition of the filter, or the caller's
/// tenant or subject restriction, is on an attribute or path whose index is bucketed by day
/// (it leads with [`DAY_EXPR`], so it serves a query one day at a time). Reading day by day
/// costs one statement per day that holds events; an attribute or path without an index
/// is then scanned day by day, newest first, which is the work one statement would do.
pub fn day_indexed(filter: &Filter, access: &Access) -> bool {
    if access.only_tenants.as_ref().is_some_and(|t| !t.is_empty()) || access.only_subject.is_some()
    {
        return true;
    }
    filter.terms.iter().any(|t| {
        let TermKind::Field { field, cond } = &t.kind else {
            return false;
        };
        !t.negated
            && !matches!(cond, Cond::Exists)
            && matches!(
                field,
                Field::Tenant
                    | Field::Actor
                    | Field::Subject
                    | Field::CorrelationId
                    | Field::CausationId
                    | Field::Data(_)
                    | Field::Context(_)
            )
    })
}

/// The SQL expression reading a `data.`/`context.` path out of the stored body:
/// `herald_path(body,loc,len,'$.data."a"."b"')`, which gives what `json_extract` of the body
/// would (see `sqlite::register_body_function` and `jsonpath`). The path indexes are created
/// on exactly this text, so queries and indexes must both use it.
pub fn path_expr(root: &str, segs: &[String]) -> String {
    format!("herald_path(body,loc,len,'{}')", json_path(root, segs))
}

/// SQL true when the path is present in the body, even as JSON `null` (which
/// [`path_expr`] reads as NULL, like a missing member).
fn path_present(root: &str, segs: &[String]) -> String {
    format!("json_type({BODY},'{}') IS NOT NULL", json_path(root, segs))
}

/// The JSON path of a `data.`/`context.` path: `$.data."a"."b"`.
fn json_path(root: &str, segs: &[String]) -> String {
    let mut p = format!("$.{root}");
    for s in segs {
        // Segments are [A-Za-z0-9_-] (checked by the parser); quoting keeps `-` literal.
        let _ = write!(p, ".\"{s}\"");
    }
    p
}

fn column(field: &Field) -> String {
    match field {
        Field::Type => "type".into(),
        Field::Source => "source".into(),
        Field::Subject => "subject".into(),
        Field::Id => "id".into(),
        Field::Severity => "severity".into(),
        Field::Actor => "actor".into(),
        Field::Tenant => "tenant".into(),
        Field::CorrelationId => "correlationid".into(),
        Field::CausationId => "causationid".into(),
        Field::Visibility => "visibility".into(),
        Field::Time => "time".into(),
        Field::Seq => "seq".into(),
        Field::Data(p) => path_expr("data", p),
        Field::Context(p) => path_expr("context", p),
    }
}

fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Str(s) => SqlValue::Text(s.clone()),
        Value::Num(n) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                SqlValue::Integer(*n as i64)
            } else {
                SqlValue::Real(*n)
            }
        }
        Value::Bool(b) => SqlValue::Integer(*b as i64),
        Value::Severity(s) => SqlValue::Integer(s.rank() as i64),
        Value::Visibility(v) => SqlValue::Integer(v.rank() as i64),
        Value::Time(t) => SqlValue::Integer(*t),
        Value::Seq(s) => SqlValue::Integer(i64::try_from(*s).unwrap_or(i64::MAX)),
    }
}

/// The smallest string greater than every string starting with `prefix` (for range scans
/// in SQLite's BINARY collation, which compares UTF-8 bytes).
fn prefix_upper(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    s.push(char::MAX);
    s
}

/// An FTS5 query asking for every token (each quoted, so none is read as an operator), or
/// `None` without tokens. The index holds the core's tokens and its `ascii` tokenizer never
/// cuts one (see `sqlite::FTS_SCHEMA`), so each quoted token is one token, never a phrase
/// (which a `detail=none` index refuses).
pub(crate) fn fts_query(tokens: &[String]) -> Option<String> {
    let quoted: Vec<String> = tokens
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    (!quoted.is_empty()).then(|| quoted.join(" AND "))
}

/// Text terms on events the full-text index does not hold: `herald_text` (registered on
/// every read connection, see [`crate::sqlite`]) decides exactly as the index and the live
/// stream do, after a cheap search of the body for the phrase's words
/// (`herald_core::matcher::JsonPhrase`).
fn text_scan(w: &mut Where, text: &str) {
    w.sql.push_str("herald_text(");
    w.sql.push_str(BODY);
    w.sql.push_str(", ");
    w.param(SqlValue::Text(text.to_owned()));
    w.sql.push(')');
}

impl Where {
    pub(crate) fn and(&mut self) {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
    }

    pub(crate) fn param(&mut self, v: SqlValue) {
        self.params.push(v);
        self.sql.push('?');
    }
}

/// The separator around each principal in the `readers` column: `\x1fuser:1\x1fgroup:a\x1f`
/// (principals cannot contain control characters), so that `instr` finds whole principals.
pub const READER_SEP: char = '\u{1f}';

/// The `readers` column value for a list of principals (`None` when empty).
pub fn readers_column(readers: &[String]) -> Option<String> {
    if readers.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(readers.iter().map(|r| r.len() + 1).sum::<usize>() + 1);
    s.push(READER_SEP);
    for r in readers {
        s.push_str(r);
        s.push(READER_SEP);
    }
    Some(s)
}

/// Appends the access rule of [`herald_core::access`] as SQL: every read path compiles
/// through this, so listings, pages, counts and catch-up reads never hold an event the
/// caller may not read.
pub fn access_clause(w: &mut Where, access: &Access) {
    if let Some(only) = &access.only_tenants {
        w.and();
        if only.is_empty() {
            w.sql.push('0');
        } else {
            w.sql.push_str("tenant IN (");
            for (i, t) in only.iter().enumerate() {
                if i > 0 {
                    w.sql.push_str(", ");
                }
                w.param(SqlValue::Text(t.clone()));
            }
            w.sql.push(')');
        }
    }
    if let Some(s) = &access.only_subject {
        w.and();
        w.sql.push_str("subject = ");
        w.param(SqlValue::Text(s.clone()));
    }
    if access.admin {
        return;
    }
    w.and();
    w.sql.push_str("(visibility = 0");
    if access.authenticated {
        w.sql.push_str(" OR (visibility = 1 AND (tenant IS NULL");
        let tenants: Vec<&str> = access.tenants().collect();
        if !tenants.is_empty() {
            w.sql.push_str(" OR tenant IN (");
            for (i, t) in tenants.iter().enumerate() {
                if i > 0 {
                    w.sql.push_str(", ");
                }
                w.param(SqlValue::Text((*t).to_owned()));
            }
            w.sql.push(')');
        }
        w.sql.push_str("))");
    }
    if !access.principals.is_empty() {
        w.sql.push_str(" OR (visibility = 2 AND (");
        for (i, p) in access.principals.iter().enumerate() {
            if i > 0 {
                w.sql.push_str(" OR ");
            }
            w.sql.push_str("instr(readers, ");
            w.param(SqlValue::Text(format!("{READER_SEP}{p}{READER_SEP}")));
            w.sql.push_str(") > 0");
        }
        w.sql.push_str("))");
    }
    w.sql.push(')');
}

/// The events a statement's snapshot may hold that the full-text index does not: how text
/// terms find them.
#[derive(Clone, Copy)]
pub enum TextTail<'a> {
    /// The index holds every event up to this seq; the events after it are scanned (their
    /// bodies read and tested by `herald_text`).
    Past(u64),
    /// The seqs of those events that hold a phrase, already found in memory (see
    /// `sqlite::Untexted`).
    Hits(&'a dyn Fn(&str) -> Vec<u64>),
}

/// A list of seqs as a JSON array (`[1,2,3]`), for `json_each`.
pub(crate) fn json_array(seqs: &[u64]) -> String {
    let mut json = String::with_capacity(2 + seqs.len() * 8);
    json.push('[');
    for (i, s) in seqs.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "{s}");
    }
    json.push(']');
    json
}

/// A text term's hits in the full-text index, as a listing counted them (see
/// `sqlite::count_text_terms`), and the FTS5 query its index check uses.
#[derive(Debug, Clone)]
pub struct TermHits {
    /// Every token's, or only the rare ones' (see `sqlite::count_text_terms`).
    pub query: String,
    /// How many events `query` finds, counted up to a bound (a count past it means many).
    pub hits: i64,
}

/// [`TermHits`] by term text.
pub type TextCounts = std::collections::HashMap<String, TermHits>;

/// Compiles the listing conditions. `fts` is `Some` when the FTS5 index is maintained: text
/// terms use the index, and find the events it does not hold yet as [`TextTail`] says.
/// Without it, text terms scan the bodies within the other bounds.
pub fn compile(
    filter: &Filter,
    access: &Access,
    since_us: Option<i64>,
    until_us: Option<i64>,
    cursor: Option<Cursor>,
    fts: Option<TextTail<'_>>,
) -> Where {
    compile_counted(
        filter,
        access,
        (since_us, until_us),
        cursor,
        fts,
        &TextCounts::new(),
    )
}

/// [`compile`], with the index check of each text term in `counts` made with its query
/// there instead of every token's. Any subset of a term's tokens finds every event that
/// holds the term (`herald_text` then decides), so results are the same; a query without a
/// common token is what keeps FTS5 from reading that token's whole list.
pub fn compile_counted(
    filter: &Filter,
    access: &Access,
    (since_us, until_us): (Option<i64>, Option<i64>),
    cursor: Option<Cursor>,
    fts: Option<TextTail<'_>>,
    counts: &TextCounts,
) -> Where {
    let mut w = Where::default();
    access_clause(&mut w, access);
    if let Some(s) = since_us {
        w.and();
        w.sql.push_str("time >= ");
        w.param(SqlValue::Integer(s));
    }
    if let Some(u) = until_us {
        w.and();
        w.sql.push_str("time < ");
        w.param(SqlValue::Integer(u));
    }
    if let Some(c) = cursor {
        w.and();
        w.sql.push_str("(time, seq) < (");
        w.param(SqlValue::Integer(c.time_us));
        w.sql.push_str(", ");
        w.param(SqlValue::Integer(i64::try_from(c.seq).unwrap_or(i64::MAX)));
        w.sql.push(')');
    }
    for term in &filter.terms {
        w.and();
        let start = w.sql.len();
        w.sql.push('(');
        match &term.kind {
            TermKind::Text(text) => {
                let tokens: Vec<String> = herald_core::matcher::tokens(text).collect();
                let indexed = fts.and_then(|tail| {
                    counts
                        .get(text)
                        .map(|c| c.query.clone())
                        .or_else(|| fts_query(&tokens))
                        .map(|q| (tail, q))
                });
                match (tokens.as_slice(), indexed) {
                    // No token: matches nothing, as in the index and the live stream.
                    ([], _) => w.sql.push('0'),
                    (_, Some((tail, query))) => {
                        // The index finds the events holding every token; for a phrase of
                        // several, `herald_text` checks that they are consecutive. CASE fixes
                        // the order: SQLite would otherwise call `herald_text` (which reads
                        // and tokenizes the body) on every row before the cheap membership
                        // test, seconds over a million events.
                        w.uses_fts = true;
                        w.sql.push_str(
                            "(CASE WHEN seq IN (SELECT rowid FROM fts.events_fts WHERE events_fts MATCH ",
                        );
                        w.param(SqlValue::Text(query));
                        w.sql.push_str(") THEN ");
                        // The index holds the core's tokens: one token is found exactly.
                        if tokens.len() > 1 {
                            w.sql.push_str("herald_text(");
                            w.sql.push_str(BODY);
                            w.sql.push_str(", ");
                            w.param(SqlValue::Text(text.clone()));
                            w.sql.push(')');
                        } else {
                            w.sql.push('1');
                        }
                        w.sql.push_str(" ELSE 0 END)");
                        match tail {
                            TextTail::Past(wm) => {
                                w.sql.push_str(" OR (CASE WHEN seq > ");
                                w.param(SqlValue::Integer(i64::try_from(wm).unwrap_or(i64::MAX)));
                                w.sql.push_str(" THEN ");
                                text_scan(&mut w, text);
                                w.sql.push_str(" ELSE 0 END)");
                            }
                            TextTail::Hits(hits) => {
                                let hits = hits(text);
                                if !hits.is_empty() {
                                    w.sql.push_str(" OR seq IN (SELECT value FROM json_each(");
                                    w.param(SqlValue::Text(json_array(&hits)));
                                    w.sql.push_str("))");
                                }
                            }
                        }
                    }
                    (_, None) => text_scan(&mut w, text),
                }
            }
            TermKind::Field { field, cond } => {
                let col = column(field);
                match cond {
                    Cond::Exists => {
                        if let Field::Data(p) | Field::Context(p) = field {
                            let root = if matches!(field, Field::Data(_)) {
                                "data"
                            } else {
                                "context"
                            };
                            // json_type tells a JSON null (present) from a missing member.
                            w.sql.push_str(&path_present(root, p));
                        } else {
                            let _ = write!(w.sql, "{col} IS NOT NULL");
                        }
                    }
                    Cond::Cmp(op, v) => {
                        let _ = write!(w.sql, "{col} {} ", op_sql(*op));
                        w.param(sql_value(v));
                        if matches!(field, Field::Data(_) | Field::Context(_)) {
                            // Compare numbers with numbers and strings with strings only. In
                            // SQLite every number sorts before every string, so `< ''` means
                            // "is a number" and `>= ''` "is a string"; both keep the path
                            // index usable as a range.
                            match v {
                                Value::Str(_) => {
                                    let _ = write!(w.sql, " AND {col} >= ''");
                                }
                                _ => {
                                    let _ = write!(w.sql, " AND {col} < ''");
                                }
                            }
                        }
                    }
                    Cond::AnyOf(pats) => {
                        let exact: Vec<&Value> = pats
                            .iter()
                            .filter_map(|p| match p {
                                Pattern::Exact(v) => Some(v),
                                _ => None,
                            })
                            .collect();
                        let mut first = true;
                        if exact.len() == 1 {
                            let _ = write!(w.sql, "{col} = ");
                            w.param(sql_value(exact[0]));
                            first = false;
                        } else if exact.len() > 1 {
                            let _ = write!(w.sql, "{col} IN (");
                            for (i, v) in exact.iter().enumerate() {
                                if i > 0 {
                                    w.sql.push_str(", ");
                                }
                                w.param(sql_value(v));
                            }
                            w.sql.push(')');
                            first = false;
                        }
                        for p in pats {
                            if let Pattern::Prefix(prefix) = p {
                                if !first {
                                    w.sql.push_str(" OR ");
                                }
                                first = false;
                                let _ = write!(w.sql, "({col} >= ");
                                w.param(SqlValue::Text(prefix.clone()));
                                let _ = write!(w.sql, " AND {col} < ");
                                w.param(SqlValue::Text(prefix_upper(prefix)));
                                w.sql.push(')');
                            }
                        }
                    }
                }
            }
        }
        w.sql.push(')');
        if term.negated {
            // NULL (field absent) must count as "does not match".
            w.sql.insert_str(start, "NOT COALESCE(");
            w.sql.push_str(", 0)");
        }
    }
    if w.sql.is_empty() {
        w.sql.push('1');
    }
    w
}

fn op_sql(op: CmpOp) -> &'static str {
    op.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(filter: &str, expect: Expect) {
        let f = Filter::parse(filter, 1_000_000_000).unwrap();
        let w = compile(
            &f,
            &Access::all(),
            Some(5),
            None,
            Some(Cursor { time_us: 9, seq: 3 }),
            Some(TextTail::Past(77)),
        );
        let params: Vec<String> = w.params.iter().map(|p| format!("{p:?}")).collect();
        expect.assert_eq(&format!("{}\n{}", w.sql, params.join(" ")));
    }

    #[test]
    fn compiles_to_parameters() {
        check(
            r#"type:import.* severity:>=error tenant:acme,beta data.country:fr -source:/test "time out""#,
            expect![[r#"
                time >= ? AND (time, seq) < (?, ?) AND ((type >= ? AND type < ?)) AND (severity >= ?) AND (tenant IN (?, ?)) AND (herald_path(body,loc,len,'$.data."country"') = ?) AND NOT COALESCE((source = ?), 0) AND ((CASE WHEN seq IN (SELECT rowid FROM fts.events_fts WHERE events_fts MATCH ?) THEN herald_text(herald_body(body,loc,len), ?) ELSE 0 END) OR (CASE WHEN seq > ? THEN herald_text(herald_body(body,loc,len), ?) ELSE 0 END))
                Integer(5) Integer(9) Integer(3) Text("import.") Text("import.\u{10ffff}") Integer(4) Text("acme") Text("beta") Text("fr") Text("/test") Text("\"time\" AND \"out\"") Text("time out") Integer(77) Text("time out")"#]],
        );
        check(
            "data.n:>10 -context.a-b:* subject:x,y* 'quote",
            expect![[r#"
                time >= ? AND (time, seq) < (?, ?) AND (herald_path(body,loc,len,'$.data."n"') > ? AND herald_path(body,loc,len,'$.data."n"') < '') AND NOT COALESCE((json_type(herald_body(body,loc,len),'$.context."a-b"') IS NOT NULL), 0) AND (subject = ? OR (subject >= ? AND subject < ?)) AND ((CASE WHEN seq IN (SELECT rowid FROM fts.events_fts WHERE events_fts MATCH ?) THEN 1 ELSE 0 END) OR (CASE WHEN seq > ? THEN herald_text(herald_body(body,loc,len), ?) ELSE 0 END))
                Integer(5) Integer(9) Integer(3) Integer(10) Text("x") Text("y") Text("y\u{10ffff}") Text("\"quote\"") Integer(77) Text("'quote")"#]],
        );
    }

    /// A single token found by the full-text index is taken as is, in any script (the index
    /// holds the core's tokens); a phrase is confirmed by `herald_text`.
    #[test]
    fn single_tokens_are_taken_from_the_index() {
        let one = |text: &str| {
            let f = Filter::parse(text, 0).unwrap();
            compile(
                &f,
                &Access::all(),
                None,
                None,
                None,
                Some(TextTail::Past(7)),
            )
            .sql
        };
        for word in ["kettle", "ΟΔΟΣ", "naïve"] {
            let sql = one(word);
            assert!(sql.contains("THEN 1 ELSE 0 END"), "{word}: {sql}");
        }
        let phrase = one("\"green tea\"");
        assert!(
            phrase.contains("THEN herald_text(herald_body(body,loc,len), ?) ELSE 0 END"),
            "{phrase}"
        );
    }

    /// A day's span holds exactly the times whose day it is, on both sides of the epoch
    /// (SQLite's integer division truncates toward zero, as Rust's does).
    #[test]
    fn day_spans_match_day_of() {
        for t in [
            0,
            1,
            -1,
            DAY_US - 1,
            DAY_US,
            -DAY_US + 1,
            -DAY_US,
            -DAY_US - 1,
            3 * DAY_US + 5,
            -3 * DAY_US - 5,
            -3 * DAY_US,
            1_790_000_000_000_000,
            -62_135_596_800_000_000,
        ] {
            let d = day_of(t);
            let (from, to) = day_span(d);
            assert!(from <= t && t < to, "{t} is not in day {d}: [{from}, {to})");
            assert_eq!(day_of(from), d, "start of day {d}");
            assert_eq!(day_of(to - 1), d, "end of day {d}");
            assert_ne!(day_of(from - 1), d, "before day {d}");
            assert_ne!(day_of(to), d, "after day {d}");
        }
        assert_eq!(day_span(0), (-DAY_US + 1, DAY_US));
    }

    #[test]
    fn day_ranges_follow_bounds_and_cursor() {
        assert_eq!(day_range(None, None, None), (i64::MIN, i64::MAX));
        let c = Cursor {
            time_us: 3 * DAY_US + 7,
            seq: 1,
        };
        assert_eq!(day_range(Some(DAY_US), Some(5 * DAY_US), None), (1, 4));
        assert_eq!(day_range(Some(DAY_US), Some(5 * DAY_US), Some(c)), (1, 3));
        assert_eq!(
            day_range(None, Some(2 * DAY_US + 1), Some(c)),
            (i64::MIN, 2)
        );
    }

    #[test]
    fn listings_on_attributes_and_paths_are_read_day_by_day() {
        let by_day = |f: &str, access: &Access| day_indexed(&Filter::parse(f, 0).unwrap(), access);
        let all = Access::all();
        for f in [
            "actor:user:1",
            "tenant:a,b",
            "subject:x*",
            "correlationid:c",
            "causationid:c",
            "data.org:o",
            "context.a.b:>3",
            "type:t actor:u",
        ] {
            assert!(by_day(f, &all), "{f}");
        }
        for f in [
            "",
            "type:t",
            "-actor:u",
            "data.org:*",
            "severity:>=error",
            "word",
            "source:/s",
        ] {
            assert!(!by_day(f, &all), "{f}");
        }
        let restricted = Access {
            only_tenants: Some(vec!["a".into()]),
            ..Access::all()
        };
        assert!(by_day("type:t", &restricted));
        let viewer = Access {
            only_subject: Some("s".into()),
            ..Access::default()
        };
        assert!(by_day("", &viewer));
    }

    /// Each token is quoted on its own, whatever its script.
    #[test]
    fn fts_queries_quote_each_token() {
        let q = |toks: &[&str]| fts_query(&toks.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        assert_eq!(
            q(&["kettle", "tea"]).as_deref(),
            Some("\"kettle\" AND \"tea\"")
        );
        assert_eq!(
            q(&["क्षेत्र", "i\u{307}stanbul"]).as_deref(),
            Some("\"क्षेत्र\" AND \"i\u{307}stanbul\"")
        );
        assert_eq!(q(&[]), None);
    }
}
