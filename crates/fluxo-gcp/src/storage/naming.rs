//! Deterministic object names: a small template language, or any [`ObjectNamer`] (a closure works).

use std::fmt::Write as _;

use fluxo::{PaneInfo, Timestamp, Timing, Window};

/// What an object is made of, given to an [`ObjectNamer`].
#[derive(Debug, Clone, Copy)]
pub struct ObjectKey<'a> {
    /// The window of the elements (all elements of one object share it).
    pub window: Window,
    /// The pane of the elements.
    pub pane: PaneInfo,
    /// The partition time: the window start, or for unwindowed data (the global window) the start of
    /// the UTC hour of the elements' event time (elements are grouped by that hour).
    pub partition_time: Timestamp,
    /// The smallest event time among the elements.
    pub min_timestamp: Timestamp,
    /// Hash of the uncompressed content in lowercase hex: 32 digits of XXH3-128 or 64 of SHA-256
    /// (the sink's `content_hash`).
    pub hash: &'a str,
    /// The uncompressed content (for `raw_object`: exactly the element's bytes).
    pub content: &'a [u8],
    /// File extension including the compression suffix (`ndjson`, `ndjson.gz`, `parquet`, ...).
    pub extension: &'a str,
    /// Number of elements in the object.
    pub records: usize,
}

/// Names objects. Must be deterministic (a function of the key only, never of the clock or a random
/// value) and give different names to different contents, so a retried write replaces its object.
///
/// ```
/// use fluxo_gcp::storage::{ObjectKey, ObjectNamer};
/// // The invoice pipeline's raw archive layout: raw/dt=YYYY-MM-DD/hour=HH/<sha256>.json
/// // (with `format: raw_object` and `content_hash: sha256`)
/// let namer = |k: &ObjectKey<'_>| {
///     let (date, hour) = fluxo_gcp::storage::utc_date_hour(k.min_timestamp);
///     format!("raw/dt={date}/hour={hour:02}/{}.json", k.hash)
/// };
/// # let _: &dyn ObjectNamer = &namer;
/// ```
pub trait ObjectNamer: Send + Sync + 'static {
    /// The object name, relative to the sink URL's prefix.
    fn name(&self, key: &ObjectKey<'_>) -> String;
}

impl<F> ObjectNamer for F
where
    F: Fn(&ObjectKey<'_>) -> String + Send + Sync + 'static,
{
    fn name(&self, key: &ObjectKey<'_>) -> String {
        self(key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Date,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    WindowStartMs,
    WindowEndMs,
    Pane,
    Timing,
    Hash,
    Hash16,
    Ext,
}

/// A parsed naming template such as `dt={date}/hour={hour}/part-{window_start_ms}-{pane}-{hash16}.{ext}`
/// (placeholders are listed on [`super::StorageSinkConfig::naming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

impl NameTemplate {
    /// Parses a template; it must contain `{hash}` or `{hash16}` (so different contents get different
    /// names) and must not start with `/`.
    pub fn parse(template: &str) -> Result<NameTemplate, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| "unclosed '{'".to_string())?;
            let part = match &after[..close] {
                "date" => Part::Date,
                "year" => Part::Year,
                "month" => Part::Month,
                "day" => Part::Day,
                "hour" => Part::Hour,
                "minute" => Part::Minute,
                "window_start_ms" => Part::WindowStartMs,
                "window_end_ms" => Part::WindowEndMs,
                "pane" => Part::Pane,
                "timing" => Part::Timing,
                "hash" => Part::Hash,
                "hash16" => Part::Hash16,
                "ext" => Part::Ext,
                other => return Err(format!("unknown placeholder '{{{other}}}'")),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err("unmatched '}'".into());
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !parts.iter().any(|p| matches!(p, Part::Hash | Part::Hash16)) {
            return Err(
                "must contain {hash} or {hash16} so that different contents get different names"
                    .into(),
            );
        }
        if template.starts_with('/') || template.split('/').any(|s| s == ".." || s == ".") {
            return Err("must be a relative name without '.' or '..' segments".into());
        }
        Ok(NameTemplate { parts })
    }

    /// Renders the name of an object.
    pub fn render(&self, key: &ObjectKey<'_>) -> String {
        let mut s = String::with_capacity(96);
        let t = Civil::from(key.partition_time);
        for p in &self.parts {
            // Writing to a String cannot fail.
            let _ = match p {
                Part::Lit(l) => {
                    s.push_str(l);
                    Ok(())
                }
                Part::Date => write!(s, "{:04}-{:02}-{:02}", t.year, t.month, t.day),
                Part::Year => write!(s, "{:04}", t.year),
                Part::Month => write!(s, "{:02}", t.month),
                Part::Day => write!(s, "{:02}", t.day),
                Part::Hour => write!(s, "{:02}", t.hour),
                Part::Minute => write!(s, "{:02}", t.minute),
                Part::WindowStartMs => {
                    write!(s, "{}", key.partition_time.micros().div_euclid(1000))
                }
                Part::WindowEndMs => {
                    if key.window.is_global() {
                        write!(
                            s,
                            "{}",
                            key.partition_time.micros().div_euclid(1000) + 3_600_000
                        )
                    } else {
                        write!(s, "{}", key.window.end.micros().div_euclid(1000))
                    }
                }
                Part::Pane => write!(s, "{}", key.pane.index),
                Part::Timing => {
                    s.push_str(match key.pane.timing {
                        Timing::Early => "early",
                        Timing::OnTime => "on_time",
                        Timing::Late => "late",
                        Timing::Unknown => "unknown",
                    });
                    Ok(())
                }
                Part::Hash => {
                    s.push_str(key.hash);
                    Ok(())
                }
                Part::Hash16 => {
                    s.push_str(&key.hash[..key.hash.len().min(16)]);
                    Ok(())
                }
                Part::Ext => {
                    s.push_str(key.extension);
                    Ok(())
                }
            };
        }
        s
    }
}

impl ObjectNamer for NameTemplate {
    fn name(&self, key: &ObjectKey<'_>) -> String {
        self.render(key)
    }
}

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

impl From<Timestamp> for Civil {
    fn from(t: Timestamp) -> Civil {
        // Clamp the sentinels (MIN/MAX) into a printable range.
        let micros = t
            .micros()
            .clamp(-62_135_596_800_000_000, 253_402_300_799_999_999);
        let secs = micros.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: ((sod % 3600) / 60) as u32,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date (`YYYY-MM-DD`) and hour of a timestamp, for namers that build Hive partitions.
pub fn utc_date_hour(t: Timestamp) -> (String, u32) {
    let c = Civil::from(t);
    (format!("{:04}-{:02}-{:02}", c.year, c.month, c.day), c.hour)
}

/// The event time encoded in a Hive-style partitioned name: `dt=YYYY-MM-DD` with optional `hour=HH`
/// and `minute=MM` path segments. None when the name has no valid `dt=` segment.
pub fn partition_time(name: &str) -> Option<Timestamp> {
    let mut date = None;
    let mut hour = 0i64;
    let mut minute = 0i64;
    for seg in name.split('/') {
        if let Some(d) = seg
            .strip_prefix("dt=")
            .or_else(|| seg.strip_prefix("date="))
        {
            let mut it = d.splitn(3, '-');
            let y: i64 = it.next()?.parse().ok()?;
            let m: u32 = it.next()?.parse().ok()?;
            let dd: u32 = it.next()?.parse().ok()?;
            if !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
                return None;
            }
            date = Some(days_from_civil(y, m, dd));
        } else if let Some(h) = seg.strip_prefix("hour=") {
            hour = h.parse().ok().filter(|h| (0..24).contains(h))?;
        } else if let Some(mi) = seg.strip_prefix("minute=") {
            minute = mi.parse().ok().filter(|m| (0..60).contains(m))?;
        }
    }
    let days = date?;
    Some(Timestamp::from_secs(
        days * 86_400 + hour * 3600 + minute * 60,
    ))
}

/// The partition time of an element: the window start, or the start of its event time's UTC hour when
/// unwindowed.
pub(crate) fn partition_of(window: Window, timestamp: Timestamp) -> Timestamp {
    if window.is_global() {
        const HOUR: i64 = 3_600_000_000;
        if timestamp == Timestamp::MIN || timestamp == Timestamp::MAX {
            return Timestamp(0);
        }
        Timestamp(timestamp.micros().div_euclid(HOUR) * HOUR)
    } else {
        window.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(t: Timestamp, hash: &'a str) -> ObjectKey<'a> {
        ObjectKey {
            window: Window::new(t, t.plus(std::time::Duration::from_secs(3600))),
            pane: PaneInfo::default(),
            partition_time: t,
            min_timestamp: t,
            hash,
            content: b"",
            extension: "ndjson.gz",
            records: 1,
        }
    }

    #[test]
    fn renders_hive_partitions() {
        // 2021-05-24T23:21:34.79Z
        let t = Timestamp::from_millis(1_621_898_494_790);
        let h = "ab".repeat(32);
        let tpl = NameTemplate::parse(super::super::config::DEFAULT_NAMING).unwrap();
        assert_eq!(
            tpl.render(&key(t, &h)),
            "dt=2021-05-24/hour=23/part-1621898494790-0-abababababababab.ndjson.gz"
        );
        let tpl =
            NameTemplate::parse("raw/{year}/{month}/{day}/{hour}{minute}-{timing}-{hash}").unwrap();
        assert_eq!(
            tpl.render(&key(t, &h)),
            format!("raw/2021/05/24/2321-unknown-{h}")
        );
        assert!(NameTemplate::parse("{date}/{nope}-{hash}").is_err());
        assert!(NameTemplate::parse("{date}/x").is_err());
        assert!(NameTemplate::parse("../{hash}").is_err());
        assert!(NameTemplate::parse("{hash").is_err());
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-800_000i64, -1, 0, 1, 18_771, 59, 60, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(18_771), (2021, 5, 24));
        assert_eq!(
            utc_date_hour(Timestamp::from_secs(1_621_825_200)),
            ("2021-05-24".to_string(), 3)
        );
    }

    #[test]
    fn parses_partitions_from_names() {
        assert_eq!(
            partition_time("raw/dt=2021-05-24/hour=23/x.json"),
            Some(Timestamp::from_secs(1_621_897_200))
        );
        assert_eq!(
            partition_time("dt=2021-05-24/a"),
            Some(Timestamp::from_secs(1_621_814_400))
        );
        assert_eq!(partition_time("raw/x.json"), None);
        assert_eq!(partition_time("dt=2021-13-01/x"), None);
        assert_eq!(partition_time("dt=2021-05-01/hour=24/x"), None);
    }
}
