//! Cloud Storage object names of dead letters (the raw and processed archives are named by the
//! `invoices` pipeline's storage sinks, see `docs/storage-layout.md`).
//!
//! Every name is deterministic: a retried write of the same thing produces the same name, so it
//! replaces the object instead of adding a duplicate. Partitions are Hive-style
//! `dt=YYYY-MM-DD/hour=HH` in UTC (UTC has no daylight-saving gaps or repeated hours). Layout:
//! `docs/storage-layout.md`.

use jiff::Timestamp;

use crate::hash::sha256_hex;
use crate::time::{push_padded, utc_date_hour};

/// Prefix of the dead letters.
pub const DEAD_LETTER_PREFIX: &str = "dead-letter";

fn partition(prefix: &str, at: Timestamp) -> String {
    let (date, hour) = utc_date_hour(at);
    let mut s = String::with_capacity(prefix.len() + 100);
    s.push_str(prefix);
    s.push_str("/dt=");
    s.push_str(&date.to_string());
    s.push_str("/hour=");
    let mut h = Vec::with_capacity(2);
    push_padded(&mut h, u64::from(hour.unsigned_abs()), 2);
    s.push_str(std::str::from_utf8(&h).unwrap_or("00"));
    s
}

/// Keeps `[a-z0-9_-]` (lowercasing ASCII letters) and maps anything else to `_`; empty becomes
/// `unknown`. Used for path components that come from configuration (table, stage).
pub fn path_component(s: &str) -> String {
    let out: String = s
        .chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out
    }
}

/// Dead-letter object of one record that failed at `stage`, partitioned by publish time:
/// `dead-letter/dt=YYYY-MM-DD/hour=HH/stage=<stage>/<sha256 of the raw bytes>.json`.
pub fn dead_letter_object_name(stage: &str, publish_time: Timestamp, raw: &[u8]) -> String {
    dead_letter_object_name_by_hash(stage, publish_time, &sha256_hex(raw))
}

/// [`dead_letter_object_name`] from the raw bytes' SHA-256 (64 lowercase hex digits).
pub fn dead_letter_object_name_by_hash(
    stage: &str,
    publish_time: Timestamp,
    raw_sha256: &str,
) -> String {
    format!(
        "{}/stage={}/{}.json",
        partition(DEAD_LETTER_PREFIX, publish_time),
        path_component(stage),
        raw_sha256.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_partitioned_and_deterministic() {
        let t: Timestamp = "2021-05-24T23:21:34.79Z".parse().unwrap();
        let raw = b"{\"NFeID\":1}";
        let dl = dead_letter_object_name("Validate", t, raw);
        assert!(
            dl.starts_with("dead-letter/dt=2021-05-24/hour=23/stage=validate/"),
            "{dl}"
        );
        assert_eq!(
            dl.len(),
            "dead-letter/dt=2021-05-24/hour=23/stage=validate/".len() + 64 + 5
        );
        assert_eq!(dl, dead_letter_object_name("validate", t, raw));
        assert_ne!(dl, dead_letter_object_name("validate", t, b"{\"NFeID\":2}"));
        assert_eq!(path_component("../x y"), "___x_y");
        assert_eq!(path_component(""), "unknown");
        let early: Timestamp = "2021-05-24T03:00:00Z".parse().unwrap();
        assert!(dead_letter_object_name("validate", early, raw)
            .starts_with("dead-letter/dt=2021-05-24/hour=03/"));
    }
}
