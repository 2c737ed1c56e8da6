//! Loading: the TOML file, then the `SYNC_GATEWAY__SECTION__KEY` environment over it, through
//! figment; each section deserialized into its `Raw*` shape. Every error names its key and
//! where the value came from (file and line, or the variable).

use super::error::ConfigError;
use super::names::{AZURE_ENV, ENV_PREFIX, HOSTNAME_ENV};
use super::origin::{line_col, EnvVars, Origins, TomlFile};
use super::raw::{RawConfig, SECTIONS};
use figment::error::Kind;
use figment::Figment;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The platform's `AZURE_*` variables (see [`AZURE_ENV`]) present at load.
#[derive(Debug, Default)]
pub(super) struct AzureEnv(BTreeMap<String, String>);

impl AzureEnv {
    /// The variable's value, if set and not blank.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }
}

/// What loading produced: the raw sections, where each value came from, the platform's
/// variables. Validation turns it into a `Config`.
pub(super) struct Loaded {
    pub raw: RawConfig,
    pub origins: Origins,
    pub azure: AzureEnv,
    /// `HOSTNAME` at load (the pod name under Kubernetes): the default `state.replica_id`.
    pub hostname: Option<String>,
    /// Unknown top-level tables, reported with validation's findings.
    pub unknown: Vec<ConfigError>,
}

/// Parses `text` (named `file` in errors) and the environment `env` into raw sections.
pub(super) fn load(
    file: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, Vec<ConfigError>> {
    // Parsed once here for its spans: figment's TOML errors carry neither file nor line.
    if let Err(e) = text.parse::<toml_edit::ImDocument<String>>() {
        let at = match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("{file}, line {line}, column {col}")
            }
            None => file.to_string(),
        };
        // One line: the parser's message spans several ("invalid table header\nexpected ...").
        let message: Vec<&str> = e.message().lines().map(str::trim).collect();
        return Err(vec![ConfigError::new(
            at,
            format!("not valid TOML: {}", message.join("; ")),
        )]);
    }
    let mut azure = AzureEnv::default();
    let mut hostname = None;
    let mut vars = Vec::new();
    for (k, v) in env {
        if k.starts_with(ENV_PREFIX) {
            vars.push((k, v));
        } else if k == HOSTNAME_ENV {
            hostname = Some(v);
        } else if AZURE_ENV.contains(&k.as_str()) {
            azure.0.insert(k, v);
        }
    }
    let figment = Figment::new()
        .merge(TomlFile { name: file, text })
        .merge(EnvVars(vars));
    let origins = Origins::new(figment.clone(), file, text);

    // An unknown table leaves the known ones intact: reported beside validation's findings.
    let mut unknown = Vec::new();
    if let Ok(root) = figment.extract::<figment::value::Dict>() {
        for key in root.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
            unknown.push(unknown_key(&origins, "", key, &SECTIONS));
        }
    }
    let mut errors = Vec::new();
    let raw = RawConfig {
        server: section(&figment, "server", &origins, &mut errors),
        entra: section(&figment, "entra", &origins, &mut errors),
        callers: section(&figment, "callers", &origins, &mut errors),
        graph: section(&figment, "graph", &origins, &mut errors),
        limits: section(&figment, "limits", &origins, &mut errors),
        audit: section(&figment, "audit", &origins, &mut errors),
        actions: section(&figment, "actions", &origins, &mut errors),
        identities: section(&figment, "identities", &origins, &mut errors),
        hooks: section(&figment, "hooks", &origins, &mut errors),
        telemetry: section(&figment, "telemetry", &origins, &mut errors),
        state: section(&figment, "state", &origins, &mut errors),
    };
    // A value that did not parse left its section at the defaults; validating those would
    // add errors about values nobody wrote.
    if !errors.is_empty() {
        unknown.extend(errors);
        return Err(unknown);
    }
    Ok(Loaded {
        raw,
        origins,
        azure,
        hostname,
        unknown,
    })
}

/// One section, or its defaults when absent; a bad value is an error naming its key.
fn section<T: DeserializeOwned + Default>(
    figment: &Figment,
    name: &str,
    origins: &Origins,
    errors: &mut Vec<ConfigError>,
) -> T {
    if !figment.contains(name) {
        return T::default();
    }
    figment.extract_inner(name).unwrap_or_else(|e| {
        errors.extend(figment_errors(e, name, origins));
        T::default()
    })
}

/// figment's errors as ours: the key in full, the message in words, the value's origin.
fn figment_errors(e: figment::Error, section: &str, origins: &Origins) -> Vec<ConfigError> {
    e.into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            // figment's `extract_inner` appends the section to the path instead of putting
            // it first.
            if !section.is_empty() {
                if path.last().map(String::as_str) == Some(section) {
                    path.pop();
                }
                path.insert(0, section.to_string());
            }
            let key = path.join(".");
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    if path.last() == Some(field) {
                        path.pop();
                    }
                    return unknown_key(origins, &path.join("."), field, expected);
                }
                Kind::InvalidType(actual, expected) => {
                    format!("must be {}, found {actual}", expected_in_words(expected))
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("must be {}, found {actual}", expected_in_words(expected))
                }
                Kind::UnknownVariant(v, expected) => format!(
                    "{v:?} is not one of {}",
                    expected
                        .iter()
                        .map(|x| format!("{x:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Kind::MissingField(field) => {
                    path.push(field.to_string());
                    return ConfigError::new(path.join("."), "is required");
                }
                Kind::Message(m) => m.clone(),
                other => other.to_string(),
            };
            ConfigError::at(&key, message, origins)
        })
        .collect()
}

/// serde's names of what it expected, in an operator's words.
fn expected_in_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" | "string" => "text in quotes".into(),
        other => other.to_string(),
    }
}

/// An unknown key `field` in the table `parent` (empty for the top level), with the closest
/// known key when one is close.
fn unknown_key(origins: &Origins, parent: &str, field: &str, known: &[&str]) -> ConfigError {
    let full = |k: &str| {
        if parent.is_empty() {
            k.to_string()
        } else {
            format!("{parent}.{k}")
        }
    };
    let table = if parent.is_empty() {
        "the configuration".to_string()
    } else {
        format!("[{parent}]")
    };
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(field, k), *k))
        .min()
        // Close enough to be a slip (a letter or a suffix like `_id`), not another key.
        .filter(|(d, k)| *d <= if k.len() >= 6 { 3 } else { 2 });
    let hint = match closest {
        Some((_, k)) => format!("; did you mean {}?", full(k)),
        None => format!("; {table} has {}", known.join(", ")),
    };
    ConfigError::at(
        &full(field),
        format!("is not a key of {table}{hint}"),
        origins,
    )
}
