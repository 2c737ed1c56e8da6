//! Durations as people write them: the `*_seconds` and `*_ms` keys take a whole number in
//! their unit (what deployments and the Helm chart already write) or a `humantime` text such
//! as `"30s"`, `"5m"` or `"1h 30m"`.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A `*_seconds` key: whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seconds(pub u64);

/// A `*_ms` key: whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Millis(pub u64);

/// The unit of a key, for parsing and for the error that names it.
#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Millis,
}

impl Unit {
    fn count(self, text: &str, d: Duration) -> Result<u64, String> {
        match self {
            Unit::Seconds if d.subsec_nanos() != 0 => {
                Err(format!("{text:?} is not a whole number of seconds"))
            }
            Unit::Seconds => Ok(d.as_secs()),
            Unit::Millis if d.subsec_nanos() % 1_000_000 != 0 => {
                Err(format!("{text:?} is not a whole number of milliseconds"))
            }
            Unit::Millis => {
                u64::try_from(d.as_millis()).map_err(|_| format!("{text:?} is too long"))
            }
        }
    }

    fn example(self) -> &'static str {
        match self {
            Unit::Seconds => "whole seconds (30) or a duration (\"30s\", \"5m\", \"1h\")",
            Unit::Millis => "whole milliseconds (2000) or a duration (\"2s\", \"500ms\")",
        }
    }
}

struct DurationVisitor(Unit);

impl Visitor<'_> for DurationVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.example())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("must not be negative, got {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        // A number written as text (e.g. from the environment) counts in the key's unit.
        if let Ok(n) = v.trim().parse::<u64>() {
            return Ok(n);
        }
        let d = humantime::parse_duration(v.trim()).map_err(|_| {
            E::custom(format!(
                "{v:?} is not a duration: write {}",
                self.0.example()
            ))
        })?;
        self.0.count(v, d).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor(Unit::Seconds))
            .map(Seconds)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor(Unit::Millis)).map(Millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(v: &str) -> Result<u64, String> {
        let t: toml::Table = toml::from_str(&format!("v = {v}")).unwrap();
        Seconds::deserialize(t["v"].clone())
            .map(|s| s.0)
            .map_err(|e| e.to_string())
    }

    fn millis(v: &str) -> Result<u64, String> {
        let t: toml::Table = toml::from_str(&format!("v = {v}")).unwrap();
        Millis::deserialize(t["v"].clone())
            .map(|s| s.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_count_in_the_keys_unit_and_durations_are_converted() {
        assert_eq!(seconds("30"), Ok(30));
        assert_eq!(seconds("\"30s\""), Ok(30));
        assert_eq!(seconds("\"5m\""), Ok(300));
        assert_eq!(seconds("\"1h 30m\""), Ok(5400));
        assert_eq!(millis("2000"), Ok(2000));
        assert_eq!(millis("\"2s\""), Ok(2000));
        assert_eq!(millis("\"250ms\""), Ok(250));
    }

    #[test]
    fn fractions_of_the_unit_negative_numbers_and_prose_are_refused() {
        assert!(seconds("\"1500ms\"")
            .unwrap_err()
            .contains("whole number of seconds"));
        assert!(seconds("-1").unwrap_err().contains("must not be negative"));
        let e = seconds("\"soon\"").unwrap_err();
        assert!(
            e.contains("\"soon\" is not a duration") && e.contains("\"30s\""),
            "{e}"
        );
    }
}
