//! Dates: parsing the API's timestamps, the Sao Paulo rule for offset-less text, and formatting.
//!
//! Accepted shapes (ISO 8601 / RFC 3339 subset): `YYYY-MM-DD`, or
//! `YYYY-MM-DD(T|t| )HH:MM[:SS[.f]]` with 1 to 9 fraction digits, optionally followed by `Z`, `z`,
//! `+HH:MM`, `-HH:MM`, `+HHMM` or `-HHMM`. A date alone means local midnight.
//!
//! Text without an offset is local time in the configured zone (`America/Sao_Paulo` by default),
//! resolved with the zone's historical rules from the bundled tz database. Local times that do not
//! exist (the spring-forward gap of the daylight-saving years) or exist twice (the fall-back fold)
//! are resolved the "compatible" way (RFC 5545, Temporal): a gap time is moved forward by the gap
//! length, a fold time takes the earlier instant. The original text is always kept.

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A point in time as received: the UTC instant plus everything needed to explain it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moment {
    /// The instant, in UTC.
    #[serde(with = "timestamp_string")]
    pub utc: Timestamp,
    /// Offset from UTC in seconds that applied (written, or from the zone's rules).
    pub offset_seconds: i32,
    /// True when the text had no offset and the zone's rules supplied it.
    pub offset_assumed: bool,
    /// The text exactly as sent.
    pub original: String,
}

/// Why a date text was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not one of the accepted shapes.
    #[error("{0}")]
    Invalid(String),
    /// Well-formed but does not exist (Feb 30, hour 24, second 60, offset beyond 18 hours).
    #[error("{0}")]
    Impossible(String),
}

/// Fields of a date text, before zone resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i16,
    pub month: i8,
    pub day: i8,
    pub hour: i8,
    pub minute: i8,
    pub second: i8,
    pub nanos: i32,
    /// Written offset in seconds, if any.
    pub offset: Option<i32>,
}

fn num(b: &[u8], at: usize, len: usize) -> Option<u32> {
    let digits = b.get(at..at + len)?;
    let mut v = 0u32;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    Some(v)
}

fn invalid(text: &str) -> TimeError {
    let shown: String = text.chars().take(40).collect();
    TimeError::Invalid(format!(
        "\"{shown}\" is not a date like 2021-05-24T20:21:34.79 (ISO 8601, optional offset)"
    ))
}

pub(crate) fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Parses the text into civil fields, checking that the calendar date and clock time exist.
pub(crate) fn parse_civil(text: &str) -> Result<Civil, TimeError> {
    let b = text.as_bytes();
    let err = || invalid(text);
    let year = num(b, 0, 4).ok_or_else(err)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err(err());
    }
    let month = num(b, 5, 2).ok_or_else(err)?;
    let day = num(b, 8, 2).ok_or_else(err)?;
    let (mut hour, mut minute, mut second, mut nanos, mut offset) = (0, 0, 0, 0u32, None);
    let mut i = 10;
    if i < b.len() {
        if !matches!(b[i], b'T' | b't' | b' ') {
            return Err(err());
        }
        hour = num(b, 11, 2).ok_or_else(err)?;
        if b.get(13) != Some(&b':') {
            return Err(err());
        }
        minute = num(b, 14, 2).ok_or_else(err)?;
        i = 16;
        if b.get(i) == Some(&b':') {
            second = num(b, 17, 2).ok_or_else(err)?;
            i = 19;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let start = i;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let n = i - start;
                if n == 0 || n > 9 {
                    return Err(err());
                }
                nanos = num(b, start, n).ok_or_else(err)? * 10u32.pow(9 - n as u32);
            }
        }
        match b.get(i) {
            None => {}
            Some(b'Z' | b'z') if i + 1 == b.len() => offset = Some(0),
            Some(&sign @ (b'+' | b'-')) => {
                let oh = num(b, i + 1, 2).ok_or_else(err)?;
                let om = match b.len() - i {
                    6 if b.get(i + 3) == Some(&b':') => num(b, i + 4, 2).ok_or_else(err)?,
                    5 => num(b, i + 3, 2).ok_or_else(err)?,
                    _ => return Err(err()),
                };
                if oh > 18 || om > 59 || oh * 3600 + om * 60 > 18 * 3600 {
                    return Err(TimeError::Impossible(format!(
                        "offset in \"{text}\" is beyond +-18:00"
                    )));
                }
                let secs = (oh * 3600 + om * 60) as i32;
                offset = Some(if sign == b'-' { -secs } else { secs });
            }
            Some(_) => return Err(err()),
        }
    }
    let impossible = |what: &str| TimeError::Impossible(format!("\"{text}\": {what}"));
    if !(1..=12).contains(&month) {
        return Err(impossible("month must be 01-12"));
    }
    if day == 0 || day > days_in_month(year as i32, month) {
        return Err(impossible(&format!(
            "day {day:02} does not exist in {year:04}-{month:02}"
        )));
    }
    if hour > 23 {
        return Err(impossible("hour must be 00-23"));
    }
    if minute > 59 {
        return Err(impossible("minute must be 00-59"));
    }
    if second > 59 {
        return Err(impossible(
            "second must be 00-59 (leap seconds are not accepted)",
        ));
    }
    Ok(Civil {
        year: year as i16,
        month: month as i8,
        day: day as i8,
        hour: hour as i8,
        minute: minute as i8,
        second: second as i8,
        nanos: nanos as i32,
        offset,
    })
}

/// Parses a date text into a [`Moment`], using `zone` when the text carries no offset.
pub fn parse_moment(text: &str, zone: &TimeZone) -> Result<Moment, TimeError> {
    let c = parse_civil(text)?;
    let impossible = || TimeError::Impossible(format!("\"{text}\" is outside the supported range"));
    let dt = DateTime::new(c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanos)
        .map_err(|_| impossible())?;
    let (utc, offset_seconds, offset_assumed) = match c.offset {
        Some(secs) => {
            let off = Offset::from_seconds(secs).map_err(|_| impossible())?;
            (off.to_timestamp(dt).map_err(|_| impossible())?, secs, false)
        }
        None => {
            // The "compatible" choice: the offset before a gap or of the first occurrence in a
            // fold (what `AmbiguousTimestamp::compatible` does), kept to report it.
            let offset = match zone.to_ambiguous_timestamp(dt).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset,
                AmbiguousOffset::Gap { before, .. } => before,
                AmbiguousOffset::Fold { before, .. } => before,
            };
            let ts = offset.to_timestamp(dt).map_err(|_| impossible())?;
            (ts, offset.seconds(), true)
        }
    };
    Ok(Moment {
        utc,
        offset_seconds,
        offset_assumed,
        original: text.to_owned(),
    })
}

/// Civil UTC fields of an instant.
fn utc_fields(ts: Timestamp) -> DateTime {
    Offset::UTC.to_datetime(ts)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microseconds, truncated): the BigQuery `TIMESTAMP` text form.
pub fn format_rfc3339_micros(ts: Timestamp) -> String {
    let mut out = Vec::with_capacity(27);
    push_rfc3339_micros(&mut out, ts);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds truncated).
pub(crate) fn push_rfc3339_micros(out: &mut Vec<u8>, ts: Timestamp) {
    let d = utc_fields(ts);
    push_date(out, d.date());
    out.push(b'T');
    push_padded(out, d.hour().unsigned_abs().into(), 2);
    out.push(b':');
    push_padded(out, d.minute().unsigned_abs().into(), 2);
    out.push(b':');
    push_padded(out, d.second().unsigned_abs().into(), 2);
    out.push(b'.');
    push_padded(out, (d.subsec_nanosecond() / 1000).unsigned_abs().into(), 6);
    out.push(b'Z');
}

/// Appends `YYYY-MM-DD` (years 0..=9999; others as their absolute value, which never occurs
/// after validation).
pub(crate) fn push_date(out: &mut Vec<u8>, d: Date) {
    push_padded(out, d.year().unsigned_abs().into(), 4);
    out.push(b'-');
    push_padded(out, d.month().unsigned_abs().into(), 2);
    out.push(b'-');
    push_padded(out, d.day().unsigned_abs().into(), 2);
}

/// `YYYYMMDDHHMMSSmmm` (UTC, milliseconds truncated): fixed width, sorts like the instant.
pub(crate) fn push_compact_millis(out: &mut Vec<u8>, ts: Timestamp) {
    let d = utc_fields(ts);
    let fields: [(i64, usize); 7] = [
        (i64::from(d.year()), 4),
        (i64::from(d.month()), 2),
        (i64::from(d.day()), 2),
        (i64::from(d.hour()), 2),
        (i64::from(d.minute()), 2),
        (i64::from(d.second()), 2),
        (i64::from(d.subsec_nanosecond() / 1_000_000), 3),
    ];
    for (v, width) in fields {
        push_padded(out, v.max(0) as u64, width);
    }
}

/// Writes `v` in decimal at the end of `buf`; returns the digits.
pub(crate) fn digits(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `v` in decimal, left-padded with zeros to `width`.
pub(crate) fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = [0u8; 20];
    let d = digits(v, &mut buf);
    for _ in d.len()..width {
        out.push(b'0');
    }
    // Byte pushes: these runs are 1-19 bytes, where a `memcpy` call costs more than the copy.
    for &b in d {
        out.push(b);
    }
}

/// `YYYY-MM-DD` and `HH` of an instant in UTC (object-name partitions).
pub(crate) fn utc_date_hour(ts: Timestamp) -> (Date, i8) {
    let d = utc_fields(ts);
    (d.date(), d.hour())
}

/// The civil date of an instant in `zone`.
pub fn local_date(ts: Timestamp, zone: &TimeZone) -> Date {
    zone.to_datetime(ts).date()
}

/// Serde helpers: a timestamp as RFC 3339 text in UTC (`2021-05-24T23:21:34.79Z`).
pub(crate) mod timestamp_string {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde helpers: an optional timestamp as RFC 3339 text.
pub(crate) mod option_timestamp_string {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(t),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde helpers: a civil date as `YYYY-MM-DD`.
pub(crate) mod date_string {
    use jiff::civil::Date;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> TimeZone {
        TimeZone::get("America/Sao_Paulo").unwrap()
    }

    fn utc(text: &str) -> String {
        parse_moment(text, &sp()).unwrap().utc.to_string()
    }

    #[test]
    fn offsetless_text_is_sao_paulo_local_time_with_history() {
        // 2021: no daylight saving any more, UTC-3.
        assert_eq!(utc("2021-05-24T20:21:34.79"), "2021-05-24T23:21:34.79Z");
        assert_eq!(utc("2021-05-24T00:00:00"), "2021-05-24T03:00:00Z");
        // January 2018: daylight saving, UTC-2.
        assert_eq!(utc("2018-01-15T12:00:00"), "2018-01-15T14:00:00Z");
        let m = parse_moment("2018-01-15T12:00:00", &sp()).unwrap();
        assert_eq!((m.offset_seconds, m.offset_assumed), (-7200, true));
        assert_eq!(m.original, "2018-01-15T12:00:00");
        // Gap (2018-11-04 00:00 -> 01:00): moved forward.
        assert_eq!(utc("2018-11-04T00:30:00"), "2018-11-04T03:30:00Z");
        // Fold (2019-02-16 23:00-24:00 happened twice): earlier instant.
        assert_eq!(utc("2019-02-16T23:30:00"), "2019-02-17T01:30:00Z");
        // Date only: local midnight.
        assert_eq!(utc("2021-05-24"), "2021-05-24T03:00:00Z");
    }

    #[test]
    fn written_offsets_win() {
        assert_eq!(utc("2021-05-24T20:21:34Z"), "2021-05-24T20:21:34Z");
        assert_eq!(utc("2021-05-24T20:21:34-02:00"), "2021-05-24T22:21:34Z");
        assert_eq!(utc("2021-05-24 20:21+0130"), "2021-05-24T18:51:00Z");
        let m = parse_moment("2021-05-24T20:21:34.123456789+00:00", &sp()).unwrap();
        assert!(!m.offset_assumed);
        assert_eq!(m.utc.subsec_nanosecond(), 123_456_789);
    }

    #[test]
    fn invalid_and_impossible_texts() {
        for bad in [
            "",
            "2021-05-24X",
            "2021/05/24",
            "21-05-24",
            "2021-05-24T2:00",
            "2021-05-24T20:21:34.",
            "2021-05-24T20:21:34.1234567890",
            "2021-05-24T20:21:34+3",
            "2021-05-24T20:21:34Zx",
            "2021-05-24T20:21:34 ",
            "２０２１-05-24",
        ] {
            assert!(
                matches!(parse_moment(bad, &sp()), Err(TimeError::Invalid(_))),
                "{bad}"
            );
        }
        for bad in [
            "2021-02-29T00:00:00",
            "2021-13-01",
            "2021-00-01",
            "2021-04-31",
            "2021-05-24T24:00:00",
            "2021-05-24T23:60:00",
            "2016-12-31T23:59:60",
            "2021-05-24T20:00:00+19:00",
        ] {
            assert!(
                matches!(parse_moment(bad, &sp()), Err(TimeError::Impossible(_))),
                "{bad}"
            );
        }
        assert!(parse_moment("2020-02-29T00:00:00", &sp()).is_ok());
    }

    #[test]
    fn formats() {
        let ts: Timestamp = "2021-05-24T23:21:34.79Z".parse().unwrap();
        assert_eq!(format_rfc3339_micros(ts), "2021-05-24T23:21:34.790000Z");
        let mut v = Vec::new();
        push_compact_millis(&mut v, ts);
        assert_eq!(v, b"20210524232134790");
        assert_eq!(local_date(ts, &sp()).to_string(), "2021-05-24");
    }
}
