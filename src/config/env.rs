//! The environment overlay: `ORDERSTREAM__<SECTION>__<KEY>[__<NAME>]` variables written into
//! the file's tree before it is read, each remembered so that an error names the variable.

use serde_norway::{Mapping, Value};

use super::{ConfigError, ENV_PREFIX};

/// The process's `ORDERSTREAM__*` variables.
pub(super) fn from_process() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            k.starts_with(ENV_PREFIX).then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// `metrics.port` and `metrics.listen` say the same thing: one set by the environment replaces
/// the other in the file (as any override replaces the file's value), so
/// `ORDERSTREAM__METRICS__PORT` works with a file that sets `listen`. Both from the environment
/// stay an error.
pub(super) fn drop_file_counterpart(root: &mut Value, from_env: &[(String, String)]) {
    let by_env = |k: &str| from_env.iter().any(|(key, _)| key == k);
    let drop = match (by_env("metrics.port"), by_env("metrics.listen")) {
        (true, false) => "listen",
        (false, true) => "port",
        _ => return,
    };
    if let Some(metrics) = root.get_mut("metrics").and_then(Value::as_mapping_mut) {
        metrics.remove(drop);
    }
}

/// Puts one `ORDERSTREAM__SECTION__KEY[__PROPERTY]=value` into the YAML tree as a string and
/// returns the dotted key it set.
pub(super) fn apply_env_override(root: &mut Value, var: &str, value: &str) -> Result<String, ConfigError> {
    let rest = &var[ENV_PREFIX.len()..];
    let parts: Vec<&str> = rest.split("__").collect();
    let bad = |m: &str| ConfigError(format!("{var}: {m}"));
    let (section, key, property) = match parts.as_slice() {
        [section, key] => (section.to_lowercase(), key.to_lowercase(), None),
        [section, key, property] => (section.to_lowercase(), key.to_lowercase(), Some(*property)),
        _ => {
            return Err(bad("expected ORDERSTREAM__<SECTION>__<KEY>, e.g. ORDERSTREAM__KAFKA__TOPIC"));
        }
    };
    if section.is_empty() || key.is_empty() {
        return Err(bad("expected ORDERSTREAM__<SECTION>__<KEY>, e.g. ORDERSTREAM__KAFKA__TOPIC"));
    }
    let map = root.as_mapping_mut().ok_or_else(|| bad("the config file has no top-level mapping"))?;
    let section_map =
        map.entry(Value::String(section.clone())).or_insert_with(|| Value::Mapping(Mapping::new()));
    let section_map = section_map
        .as_mapping_mut()
        .ok_or_else(|| bad(&format!("section `{section}` in the file is not a mapping")))?;
    match property {
        None => {
            section_map.insert(Value::String(key.clone()), Value::String(value.to_string()));
            Ok(format!("{section}.{key}"))
        }
        Some(property) if section == "kafka" && key == "properties" && !property.is_empty() => {
            // Shell variable names cannot hold dots: SESSION_TIMEOUT_MS means session.timeout.ms.
            let name = if property.contains('.') {
                property.to_string()
            } else {
                property.to_lowercase().replace('_', ".")
            };
            let props = section_map
                .entry(Value::String("properties".into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let props =
                props.as_mapping_mut().ok_or_else(|| bad("kafka.properties in the file is not a mapping"))?;
            props.insert(Value::String(name.clone()), Value::String(value.to_string()));
            Ok(format!("kafka.properties.{name}"))
        }
        Some(property) if section == "datalake" && key == "storage_options" && !property.is_empty() => {
            let opts = section_map
                .entry(Value::String("storage_options".into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let opts = opts
                .as_mapping_mut()
                .ok_or_else(|| bad("datalake.storage_options in the file is not a mapping"))?;
            // Upper case, as AWS names are written; the validation folds the case it needs.
            let name = property.to_ascii_uppercase();
            opts.insert(Value::String(name.clone()), Value::String(value.to_string()));
            Ok(format!("datalake.storage_options.{name}"))
        }
        Some(_) => Err(bad("only kafka.properties and datalake.storage_options take a third name part \
                 (ORDERSTREAM__KAFKA__PROPERTIES__<NAME>, ORDERSTREAM__DATALAKE__STORAGE_OPTIONS__<NAME>)")),
    }
}
