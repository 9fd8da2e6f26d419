//! Loading: the file's YAML, the environment overlay, the file form, then each section's
//! `validate()`; every error scrubbed of the secrets it might repeat.

use std::path::Path;

use serde_norway::{Mapping, Value};

use super::env::{self, apply_env_override, drop_file_counterpart};
use super::raw::{Origin, RawConfig};
use super::secrets::{collect_secrets, is_secret, scrub};
use super::streaming::create_dir;
use super::{Config, ConfigError};

impl Config {
    /// Reads `path`, applies the process environment's overrides and validates everything.
    /// Creates nothing: the commands that write call [`Config::create_folders`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config file: {e}", path.display())))?;
        Self::from_parts(&path.display().to_string(), &text, &env::from_process())
    }

    /// Creates the lake, checkpoint and state folders if missing (`init`, `produce`,
    /// `consume`, `run`); an error names the key.
    pub fn create_folders(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("datalake.path", &self.datalake.path),
            ("streaming.checkpoint_location", &self.streaming.checkpoint_location),
            (
                "streaming.last_processed_timestamp_location",
                &self.streaming.last_processed_timestamp_location,
            ),
        ] {
            // A Delta table on object storage has no local folder.
            if key == "datalake.path" && !self.datalake.is_local() {
                continue;
            }
            create_dir(path).map_err(|m| ConfigError(format!("{key}: {m}")))?;
        }
        Ok(())
    }

    /// Builds the configuration from the file's text and `ORDERSTREAM__*` variables.
    /// `origin` names the file in error messages. Creates nothing.
    pub fn from_parts(origin: &str, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        // Whatever an error says, no secret of the file, the environment or the URL is in it.
        let mut secrets = Vec::new();
        Self::build(origin, text, env, &mut secrets)
            .map_err(|ConfigError(message)| ConfigError(scrub(message, &secrets)))
    }

    fn build(
        origin: &str,
        text: &str,
        env: &[(String, String)],
        secrets: &mut Vec<String>,
    ) -> Result<Config, ConfigError> {
        let mut root: Value = serde_norway::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: not valid YAML: {e}")))?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        if !root.is_mapping() {
            return Err(ConfigError(format!(
                "{origin}: expected sections postgres, kafka, datalake, streaming at the top level"
            )));
        }
        // Which keys came from the environment, so an error can name the variable.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (var, value) in env {
            let key = apply_env_override(&mut root, var, value)?;
            from_env.push((key, var.clone()));
        }
        drop_file_counterpart(&mut root, &from_env);
        collect_secrets(&root, secrets);

        let raw: RawConfig = serde_path_to_error::deserialize(root).map_err(|e| {
            let path = e.path().to_string();
            let inner = if is_secret(&path) {
                // serde's message repeats the value (`invalid type: integer 12345678`).
                "must be one string (quote a value YAML reads as a number or a boolean: \
                 password: \"…\"); the value is not shown"
                    .to_string()
            } else {
                e.into_inner().to_string()
            };
            // serde_norway appends " at line N column M" for file positions; keep it.
            let source = Origin { file: origin, from_env: &from_env }.source(&path);
            if path == "." || path.is_empty() {
                ConfigError(format!("{source}: {inner}"))
            } else {
                ConfigError(format!("{source}: {path}: {inner}"))
            }
        })?;

        let at = Origin { file: origin, from_env: &from_env };
        Ok(Config {
            postgres: raw.postgres.validate(&at)?,
            kafka: raw.kafka.validate(&at)?,
            datalake: raw.datalake.validate().map_err(|(key, m)| at.bad(key, m))?,
            streaming: raw.streaming.validate(&at)?,
            metrics: raw.metrics.validate(&at)?,
        })
    }
}
