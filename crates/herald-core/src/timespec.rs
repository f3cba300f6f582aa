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
    let year = match u32::try_from(y) {
        Ok(year) if year <= 9999 => year,
        _ => {
            return format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
                t.microsecond()
            )
        }
    };
    // Digits into a fixed buffer: this runs for every event ingested (its recordedtime) and
    // `format!` took about a tenth of an HTTP thread's instructions per single-event request.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    for (at, width, v) in [
        (0, 4, year),
        (5, 2, u32::from(mo)),
        (8, 2, u32::from(d)),
        (11, 2, u32::from(h)),
        (14, 2, u32::from(mi)),
        (17, 2, u32::from(s)),
        (20, 6, t.microsecond()),
    ] {
        let mut v = v;
        for slot in b[at..at + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    String::from_utf8(b.to_vec()).expect("the layout is ASCII")
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

    /// The digit-by-digit layout gives what `format!` gives, padding included, from year -9999
    /// (which takes the `format!` path) to 9999.
    #[test]
    fn format_matches_the_formatter() {
        let reference = |us: Micros| {
            let t = OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            )
        };
        for us in [
            0,
            1,
            999_999,
            1_793_577_600_123_456,
            1_793_577_599_999_999,
            -1,
            -62_135_596_800_000_000,  // 0001-01-01
            -62_167_219_200_000_000,  // 0000-01-01
            -62_167_219_200_000_001,  // the year -1
            -377_705_116_800_000_000, // -9999-01-01
            253_402_300_799_999_999,  // 9999-12-31T23:59:59.999999
        ] {
            assert_eq!(format_rfc3339(us), reference(us), "{us}");
        }
        let mut us: Micros = 1_000_003;
        for _ in 0..2000 {
            assert_eq!(format_rfc3339(us), reference(us), "{us}");
            us = us
                .wrapping_mul(6_364_136_223_846_793)
                .rem_euclid(4_000_000_000_000_000);
        }
    }
}
