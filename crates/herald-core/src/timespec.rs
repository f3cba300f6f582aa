//! Time bounds as users write them (`24h`, `7d`, `2026-11-01`, RFC 3339) and timestamps as
//! Herald stores them (microseconds since the Unix epoch, UTC).
//!
//! Parsing takes "now" as an argument so that the core never reads a clock.

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// Parses an RFC 3339 timestamp into microseconds (sub-microsecond digits are truncated).
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Formats microseconds as RFC 3339 in UTC with microsecond precision.
pub fn format_rfc3339(us: Micros) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Fixed layout: 2026-11-01T12:34:56.123456Z
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        t.microsecond()
    )
}

/// Parses a duration such as `90s`, `10m`, `24h`, `7d`, `2w`, `500ms` into microseconds.
pub fn parse_duration(s: &str) -> Option<Micros> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    if split == 0 {
        return None;
    }
    let n: i64 = s[..split].parse().ok()?;
    let unit: i64 = match &s[split..] {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" | "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        "w" => 7 * 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Parses a time bound: a duration back from `now` (`24h`), `now`, a date (`2026-11-01`,
/// midnight UTC), or an RFC 3339 timestamp.
pub fn parse_bound(s: &str, now: Micros) -> Result<Micros, String> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(d) = parse_duration(s) {
        return Ok(now.saturating_sub(d));
    }
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = Date::parse(s, &fmt) {
        let t = date.midnight().assume_utc();
        return Ok(t.unix_timestamp() * 1_000_000);
    }
    Err(format!(
        "`{s}` is not a time: use a duration back from now (30m, 24h, 7d), a date (2026-11-01) or an RFC 3339 timestamp"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let now = 1_000_000_000_000_000;
        assert_eq!(parse_bound("24h", now), Ok(now - 86_400_000_000));
        assert_eq!(parse_bound("now", now), Ok(now));
        assert_eq!(parse_bound("1970-01-02", now), Ok(86_400_000_000));
        assert_eq!(
            parse_bound("1970-01-01T00:00:01.5+00:00", now),
            Ok(1_500_000)
        );
        assert!(parse_bound("yesterday", now).is_err());
        assert!(parse_bound("h", now).is_err());
    }

    #[test]
    fn format_roundtrip() {
        let us = 1_793_577_600_123_456;
        let s = format_rfc3339(us);
        assert_eq!(s, "2026-11-02T00:00:00.123456Z");
        assert_eq!(parse_rfc3339(&s), Some(us));
    }
}
