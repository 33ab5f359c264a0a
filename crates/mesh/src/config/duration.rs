//! Durations as human-readable text (`30s`, `5m`, `250ms`), read and written
//! with humantime.
//!
//! Kept by hand rather than taken from `humantime-serde`: the same formats
//! in and out, but a bad value's error says what was wrong (`unknown time
//! unit "x"`) where `humantime-serde` only says `expected a duration`, and
//! there is no codec there for a map of durations.

/// Durations as human-readable text (`30s`, `5m`, `250ms`).
pub(super) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like `30s` or `5m`: {e}"
            ))
        })
    }
}

/// Maps of durations as human-readable text.
pub(super) mod duration_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &BTreeMap<String, Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            value
                .iter()
                .map(|(k, v)| (k, humantime::format_duration(*v).to_string())),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer)?
            .into_iter()
            .map(|(k, text)| {
                let d = humantime::parse_duration(&text).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{k}`: `{text}` is not a duration like `30d` or `12h`: {e}"
                    ))
                })?;
                Ok((k, d))
            })
            .collect()
    }
}
