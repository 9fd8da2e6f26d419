//! The file form: exactly the keys a user may write, and where each came from.

use std::str::FromStr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::ConfigError;
use super::datalake::RawDatalake;
use super::kafka::RawKafka;
use super::postgres::RawPostgres;
use super::streaming::{RawMetrics, RawStreaming};

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) postgres: RawPostgres,
    pub(super) kafka: RawKafka,
    pub(super) datalake: RawDatalake,
    pub(super) streaming: RawStreaming,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
}

/// Where the keys came from: the file, or the environment variables that set some of them.
pub(super) struct Origin<'a> {
    /// The file's name.
    pub(super) file: &'a str,
    /// `(dotted key, variable)` for each key an environment variable set.
    pub(super) from_env: &'a [(String, String)],
}

impl Origin<'_> {
    /// The variable that set `key`, else the file.
    pub(super) fn source(&self, key: &str) -> String {
        self.from_env
            .iter()
            .find(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
            .map(|(_, var)| var.clone())
            .unwrap_or_else(|| self.file.to_string())
    }

    /// An error about `key`: `ORDERSTREAM__X__Y (x.y): …` or `file: x.y: …`.
    pub(super) fn bad(&self, key: &str, msg: String) -> ConfigError {
        match self.from_env.iter().find(|(k, _)| k == key) {
            Some((_, var)) => ConfigError(format!("{var} ({key}): {msg}")),
            None => ConfigError(format!("{}: {key}: {msg}", self.file)),
        }
    }
}

/// Accepts a number, or a string holding one (environment overrides are always strings).
pub(super) fn number<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr + DeserializeOwned,
{
    use serde::de::Error;
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| D::Error::custom(format!("expected a number, got `{s}`")))
        }
        Some(v @ Value::Number(_)) => serde_norway::from_value(v.clone())
            .map(Some)
            .map_err(|_| D::Error::custom(format!("number `{}` is out of range", show(&v)))),
        Some(v) => Err(D::Error::custom(format!("expected a number, got `{}`", show(&v)))),
    }
}

/// A YAML value on one line, for messages.
pub(super) fn show(v: &Value) -> String {
    serde_norway::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default()
}
