//! Where each value came from: the file and line, or the environment variable, so every error
//! names what to edit. figment tags each value with the provider that set it
//! ([`Figment::find_metadata`]); the line comes from the TOML document's spans.

use super::names::ENV_PREFIX;
use figment::value::Dict;
use figment::{Figment, Metadata, Profile, Provider};
use std::collections::BTreeMap;

/// The name of the environment's metadata; its interpolater gives the variable of a key.
pub(super) const ENV_SOURCE: &str = "environment variable";

/// The environment variables `SYNC_GATEWAY__SECTION__KEY`, as a figment provider.
///
/// figment's own `Env` reads only the process environment, and its interpolater names a key
/// `GRAPH.TIMEOUT_SECONDS` rather than the variable; this one takes the variables it is given
/// (tests and `dev` pass their own) and names each exactly. Values are parsed the way `Env`
/// parses them (`figment::value::Value`'s `FromStr`: numbers, booleans, `[..]`, `{..}`, text).
pub(super) struct EnvVars(pub Vec<(String, String)>);

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE).interpolater(|_: &Profile, keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", keys.join("__"))
        })
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        // Untagged values: figment tags them with this provider, so `find_metadata` names it.
        let mut dict = Dict::new();
        for (name, value) in &self.0 {
            let key = env_key(name);
            // A secret is text whatever it looks like: parsed, `0012345` would become 12345.
            let secret = SECRET_KEYS
                .iter()
                .any(|k| key.rsplit('.').next() == Some(*k));
            let value: figment::value::Value = if secret {
                value.trim().into()
            } else {
                value.parse().expect("infallible")
            };
            if let Some(nested) = figment::util::nest(&key, value).into_dict() {
                merge(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `new` over `old`, table by table (two variables may set keys of one table).
fn merge(old: &mut Dict, new: Dict) {
    for (k, v) in new {
        match (old.get_mut(&k), v) {
            (Some(figment::value::Value::Dict(_, o)), figment::value::Value::Dict(_, n)) => {
                merge(o, n)
            }
            (_, v) => {
                old.insert(k, v);
            }
        }
    }
}

/// The last part of every secret key (`entra.client_secret`, `identities.NAME.store_key`, ...).
const SECRET_KEYS: [&str; 5] = [
    "client_secret",
    "store_key",
    "hmac_key",
    "postgres_url",
    // `hooks.NAME.secrets`: a comma-separated list, split by validation.
    "secrets",
];

/// `SYNC_GATEWAY__GRAPH__TIMEOUT_SECONDS` → `graph.timeout_seconds`.
pub(super) fn env_key(var: &str) -> String {
    var[ENV_PREFIX.len()..]
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// The configuration file as a figment provider that names the file (figment's `Toml::string`
/// would name "a TOML source string"; `Toml::file` would read the file a second time).
pub(super) struct TomlFile<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Provider for TomlFile<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("file {}", self.name))
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        use figment::providers::Format;
        figment::providers::Toml::string(self.text).data()
    }
}

/// Answers "where did this key's value come from?" for error messages.
pub(super) struct Origins {
    figment: Figment,
    /// The file's name as errors show it.
    file: String,
    /// Dotted key (without quotes) → 1-based line of its value in the file.
    lines: BTreeMap<String, usize>,
}

impl Origins {
    pub(super) fn new(figment: Figment, file: &str, text: &str) -> Origins {
        let mut lines = BTreeMap::new();
        if let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() {
            collect_lines(doc.as_table(), "", text, &mut lines);
        }
        Origins {
            figment,
            file: file.to_string(),
            lines,
        }
    }

    /// The file's name, for errors about the file as a whole.
    pub(super) fn file(&self) -> &str {
        &self.file
    }

    fn metadata(&self, key: &str) -> Option<&Metadata> {
        self.figment.find_metadata(&normalize(key))
    }

    /// The variable that set `key`, if the environment did.
    pub(super) fn env_var(&self, key: &str) -> Option<String> {
        let md = self.metadata(key)?;
        if md.name != ENV_SOURCE {
            return None;
        }
        let key = normalize(key);
        let parts: Vec<&str> = key.split('.').collect();
        Some(md.interpolate(&Profile::Default, &parts))
    }

    /// True when `key`'s value was written in the file (not the environment, not a default).
    pub(super) fn in_file(&self, key: &str) -> bool {
        self.metadata(key).is_some() && self.env_var(key).is_none()
    }

    /// True when the file or the environment set `key`.
    pub(super) fn is_set(&self, key: &str) -> bool {
        self.metadata(key).is_some()
    }

    /// `environment variable NAME`, `FILE, line N`, or `None` for a default or a missing key.
    pub(super) fn describe(&self, key: &str) -> Option<String> {
        if let Some(var) = self.env_var(key) {
            return Some(format!("{ENV_SOURCE} {var}"));
        }
        if !self.is_set(key) && !self.lines.contains_key(&normalize(key)) {
            return None;
        }
        Some(match self.line(key) {
            Some(n) => format!("{}, line {n}", self.file),
            None => self.file.clone(),
        })
    }

    /// The line of `key` in the file, or of its closest enclosing table.
    pub(super) fn line(&self, key: &str) -> Option<usize> {
        let mut key = normalize(key);
        loop {
            if let Some(n) = self.lines.get(&key) {
                return Some(*n);
            }
            key = key.rsplit_once('.')?.0.to_string();
        }
    }
}

/// `callers.apps."6666…".run_as` → `callers.apps.6666….run_as`: the path figment uses.
fn normalize(key: &str) -> String {
    key.replace('"', "")
}

/// The 1-based line and column of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn collect_lines(
    table: &dyn toml_edit::TableLike,
    prefix: &str,
    text: &str,
    out: &mut BTreeMap<String, usize>,
) {
    for (k, item) in table.iter() {
        let key = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        // The key's own span where it has one (a `[table]` header or `key = value`).
        let span = table.key(k).and_then(|k| k.span()).or_else(|| item.span());
        if let Some(span) = span {
            out.insert(key.clone(), line_col(text, span.start).0);
        }
        if let Some(t) = item.as_table_like() {
            collect_lines(t, &key, text, out);
        }
    }
}
