//! Validation limits: a serde config with documented defaults, checked into a [`Validator`].

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// Limits and rules of record validation.
///
/// Unknown keys are rejected. Every field has a default (see [`ValidationConfig::default`] and
/// `docs/validation.md` for the reasoning); build a [`Validator`] with [`ValidationConfig::build`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest accepted record, in bytes. Default 1 MiB (1,048,576): 990 items with the longest
    /// names fit in about 0.6 MiB; Pub/Sub's own message limit is 10 MB.
    pub max_record_bytes: usize,
    /// Largest accepted `ItemList`. Default 990, the NF-e maximum (item number `nItem` 1-990).
    pub max_items: usize,
    /// Longest accepted `ProductName`, in Unicode scalar values. Default 120, the NF-e `xProd`
    /// maximum.
    pub max_string_chars: usize,
    /// Deepest accepted nesting of arrays/objects. Default 32 (a record needs 3).
    pub max_depth: usize,
    /// Most issues kept per rejected record; later ones are counted (`omitted`) but not described,
    /// so a hostile record's dead letter stays small and cheap to build. Default 100.
    pub max_issues: usize,
    /// Most significant fractional digits of `Value` and `Discount`. Default 4.
    pub max_value_fraction_digits: u32,
    /// Most significant fractional digits of `Quantity`. Default 4 (NF-e `qCom` has 4).
    pub max_quantity_fraction_digits: u32,
    /// How far `EmissionDate` may be later than `CreateDate`, in seconds. Default 3,900 (65
    /// minutes): one hour for an issuer on UTC-2 (Fernando de Noronha) whose offset-less local
    /// time is read as Sao Paulo time (UTC-3), plus five minutes of clock skew between the
    /// issuer's and the API's clocks.
    pub emission_tolerance_secs: u64,
    /// Dates before January 1st of this year (in `time_zone`) are rejected. Default 2006, the
    /// year the first NF-e was issued; it also keeps every cell timestamp positive.
    pub earliest_year: i16,
    /// IANA zone of dates written without an offset. Default `America/Sao_Paulo`.
    pub time_zone: String,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_record_bytes: 1 << 20,
            max_items: 990,
            max_string_chars: 120,
            max_depth: 32,
            max_issues: 100,
            max_value_fraction_digits: 4,
            max_quantity_fraction_digits: 4,
            emission_tolerance_secs: 3_900,
            earliest_year: 2006,
            time_zone: "America/Sao_Paulo".to_owned(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit is outside its accepted range.
    #[error("invalid validation config: {field} = {value}: {reason}")]
    OutOfRange {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// The time zone is not in the bundled tz database.
    #[error("invalid validation config: time_zone = {0:?} is not a known IANA time zone")]
    UnknownTimeZone(String),
}

fn check<T: PartialOrd + ToString>(
    field: &'static str,
    value: T,
    lo: T,
    hi: T,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        Err(ConfigError::OutOfRange {
            field,
            value: value.to_string(),
            reason,
        })
    } else {
        Ok(())
    }
}

impl ValidationConfig {
    /// Checks the limits and loads the time zone.
    pub fn build(&self) -> Result<Validator, ConfigError> {
        check(
            "max_record_bytes",
            self.max_record_bytes,
            64,
            64 << 20,
            "must be 64..=67108864",
        )?;
        check(
            "max_items",
            self.max_items,
            1,
            100_000,
            "must be 1..=100000",
        )?;
        check(
            "max_string_chars",
            self.max_string_chars,
            1,
            1 << 20,
            "must be 1..=1048576",
        )?;
        check("max_depth", self.max_depth, 3, 128, "must be 3..=128")?;
        check("max_issues", self.max_issues, 1, 1000, "must be 1..=1000")?;
        check(
            "max_value_fraction_digits + max_quantity_fraction_digits",
            u64::from(self.max_value_fraction_digits)
                + u64::from(self.max_quantity_fraction_digits),
            0,
            9,
            "must be at most 9, so that line totals fit BigQuery NUMERIC (scale 9)",
        )?;
        check(
            "emission_tolerance_secs",
            self.emission_tolerance_secs,
            0,
            7 * 86_400,
            "must be 0..=604800 (one week)",
        )?;
        check(
            "earliest_year",
            self.earliest_year,
            1971,
            9999,
            "must be 1971..=9999",
        )?;
        let zone = TimeZone::get(&self.time_zone)
            .map_err(|_| ConfigError::UnknownTimeZone(self.time_zone.clone()))?;
        let earliest = DateTime::new(self.earliest_year, 1, 1, 0, 0, 0, 0)
            .ok()
            .and_then(|dt| zone.to_ambiguous_timestamp(dt).compatible().ok())
            .ok_or(ConfigError::OutOfRange {
                field: "earliest_year",
                value: self.earliest_year.to_string(),
                reason: "not representable in the time zone",
            })?;
        Ok(Validator::from_parts(self.clone(), zone, earliest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_and_unknown_keys_are_rejected() {
        assert!(ValidationConfig::default().build().is_ok());
        let c: ValidationConfig = serde_json::from_str(r#"{"max_items": 10}"#).unwrap();
        assert_eq!(c.max_items, 10);
        assert_eq!(c.max_string_chars, 120);
        assert!(serde_json::from_str::<ValidationConfig>(r#"{"max_itemz": 10}"#).is_err());
    }

    #[test]
    fn bad_limits_are_config_errors() {
        let bad = ValidationConfig {
            max_items: 0,
            ..Default::default()
        };
        assert!(matches!(
            bad.build(),
            Err(ConfigError::OutOfRange {
                field: "max_items",
                ..
            })
        ));
        let bad = ValidationConfig {
            max_value_fraction_digits: 6,
            ..Default::default()
        };
        assert!(bad.build().is_err());
        let bad = ValidationConfig {
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        };
        assert_eq!(
            bad.build().unwrap_err().to_string(),
            "invalid validation config: time_zone = \"Mars/Olympus\" is not a known IANA time zone"
        );
    }
}
