//! A reader over one TOML table that records every problem instead of stopping at the first, so that
//! `check-config` and `serve` can report all of them at once, each naming its key.
//!
//! Values set through `HEADGATE_<SECTION>__<KEY>` arrive as strings; the typed getters coerce those (and only
//! those) into booleans, numbers, lists and tables.

use std::collections::{BTreeMap, HashSet};

use super::error::ConfigError;

pub(crate) struct Section<'e> {
    /// Dotted prefix of this table (`server`, `oidc`), used in every message.
    name: String,
    table: toml::Table,
    known: Vec<&'static str>,
    /// Keys holding arrays of tables (their own keys are documented as `section.key.<key>`).
    arrays: Vec<&'static str>,
    from_env: HashSet<String>,
    errors: &'e mut Vec<ConfigError>,
}

impl<'e> Section<'e> {
    pub(crate) fn new(
        name: &str,
        table: toml::Table,
        from_env: HashSet<String>,
        errors: &'e mut Vec<ConfigError>,
    ) -> Self {
        Section {
            name: name.to_string(),
            table,
            known: Vec::new(),
            arrays: Vec::new(),
            from_env,
            errors,
        }
    }

    /// The full dotted name of `key` in this section.
    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}.{}", self.name, key)
    }

    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        let key = self.key(key);
        self.errors.push(ConfigError::new(key, message));
    }

    pub(crate) fn is_set(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn take(&mut self, key: &'static str) -> Option<(toml::Value, bool)> {
        self.known.push(key);
        let env = self.from_env.contains(key);
        self.table.remove(key).map(|v| (v, env))
    }

    fn type_error(&mut self, key: &str, want: &str, got: &toml::Value) {
        let msg = format!("expected {want}, found {}", describe(got));
        self.error(key, msg);
    }

    pub(crate) fn string(&mut self, key: &'static str) -> Option<String> {
        match self.take(key)? {
            (toml::Value::String(s), _) => Some(s),
            (v, _) => {
                self.type_error(key, "a string", &v);
                None
            }
        }
    }

    /// A string that, when set, must not be empty (an empty value is almost always a templating mistake).
    pub(crate) fn non_empty_string(&mut self, key: &'static str) -> Option<String> {
        let s = self.string(key)?;
        if s.trim().is_empty() {
            self.error(key, "is empty: remove the key or give it a value");
            return None;
        }
        Some(s)
    }

    pub(crate) fn bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.take(key) {
            None => default,
            Some((toml::Value::Boolean(b), _)) => b,
            Some((toml::Value::String(s), true)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.error(key, format!("expected true or false, found {s:?}"));
                    default
                }
            },
            Some((v, _)) => {
                self.type_error(key, "true or false", &v);
                default
            }
        }
    }

    /// A non-negative integer within `min..=max`.
    pub(crate) fn u64_in(&mut self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let n = match self.take(key) {
            None => return default,
            Some((toml::Value::Integer(i), _)) if i >= 0 => i as u64,
            Some((toml::Value::String(s), true)) => match s.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    self.error(key, format!("expected a whole number, found {s:?}"));
                    return default;
                }
            },
            Some((v, _)) => {
                self.type_error(key, "a whole number", &v);
                return default;
            }
        };
        if n < min || n > max {
            self.error(
                key,
                format!("{n} is out of range: use a value from {min} to {max}"),
            );
            return default;
        }
        n
    }

    pub(crate) fn string_list(&mut self, key: &'static str) -> Option<Vec<String>> {
        let (v, env) = self.take(key)?;
        let v = match (v, env) {
            (toml::Value::String(s), true) => match parse_env_list(&s) {
                Some(v) => v,
                None => {
                    self.error(
                        key,
                        format!("expected a list like [\"a\", \"b\"] or a,b; found {s:?}"),
                    );
                    return None;
                }
            },
            (v, _) => v,
        };
        match v {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => {
                            let k = format!("{key}[{i}]");
                            let msg = format!("expected a string, found {}", describe(&other));
                            self.error(&k, msg);
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.type_error(key, "a list of strings", &other);
                None
            }
        }
    }

    pub(crate) fn string_map(&mut self, key: &'static str) -> BTreeMap<String, String> {
        let Some((v, env)) = self.take(key) else {
            return BTreeMap::new();
        };
        let v = match (v, env) {
            (toml::Value::String(s), true) => match format!("v = {s}").parse::<toml::Table>() {
                Ok(mut t) => t
                    .remove("v")
                    .unwrap_or(toml::Value::Table(Default::default())),
                Err(_) => {
                    self.error(
                        key,
                        format!("expected a table like {{ prompt = \"login\" }}, found {s:?}"),
                    );
                    return BTreeMap::new();
                }
            },
            (v, _) => v,
        };
        match v {
            toml::Value::Table(t) => {
                let mut out = BTreeMap::new();
                for (k, item) in t {
                    match item {
                        toml::Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => {
                            let kk = format!("{key}.{k}");
                            let msg = format!("expected a string, found {}", describe(&other));
                            self.error(&kk, msg);
                        }
                    }
                }
                out
            }
            other => {
                self.type_error(key, "a table of strings", &other);
                BTreeMap::new()
            }
        }
    }

    /// An array of tables (`[[section.key]]`, or through the environment an inline array such as
    /// `[{ path = "/x", public = true }]`). Entry `i` is read by `read` as its own section named
    /// `section.key[i]`, so its problems and unknown keys name `section.key[i].<key>`; each result comes with
    /// its `i`.
    pub(crate) fn table_array<T>(
        &mut self,
        key: &'static str,
        mut read: impl FnMut(&mut Section<'_>) -> T,
    ) -> Vec<(usize, T)> {
        self.arrays.push(key);
        let Some((v, env)) = self.take(key) else {
            return Vec::new();
        };
        let v = match (v, env) {
            (toml::Value::String(s), true) => {
                match format!("v = {s}").parse::<toml::Table>() {
                    Ok(mut t) => t.remove("v").unwrap_or(toml::Value::Array(Vec::new())),
                    Err(_) => {
                        self.error(
                        key,
                        format!("expected a list of tables like [{{ key = \"value\" }}], found {s:?}"),
                    );
                        return Vec::new();
                    }
                }
            }
            (v, _) => v,
        };
        let items = match v {
            toml::Value::Array(items) => items,
            other => {
                let msg = format!(
                    "expected a list of tables ([[{}]] entries), found {}",
                    self.key(key),
                    describe(&other)
                );
                self.error(key, msg);
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                toml::Value::Table(t) => {
                    let name = format!("{}[{i}]", self.key(key));
                    let mut child = Section::new(&name, t, HashSet::new(), &mut *self.errors);
                    out.push((i, read(&mut child)));
                    child.finish();
                }
                other => {
                    let msg = format!("expected a table, found {}", describe(&other));
                    self.error(&format!("{key}[{i}]"), msg);
                }
            }
        }
        out
    }

    /// The keys this section read (arrays of tables excluded: their entries' keys are listed separately).
    pub(crate) fn known_keys(&self) -> Vec<&'static str> {
        self.known
            .iter()
            .filter(|k| !self.arrays.contains(k))
            .copied()
            .collect()
    }

    /// Report every key nobody asked for, with the nearest known key as a suggestion.
    pub(crate) fn finish(self) {
        let Section {
            name,
            table,
            known,
            errors,
            ..
        } = self;
        for key in table.keys() {
            let mut msg = "unknown key".to_string();
            if let Some(hint) = headplane_key(&name, key) {
                msg.push_str(&format!(": {hint}"));
            } else if let Some(s) = nearest(key, &known) {
                msg.push_str(&format!(": did you mean `{s}`?"));
            }
            errors.push(ConfigError::new(format!("{name}.{key}"), msg));
        }
    }
}

/// Headplane's own OIDC keys that have no headgate key of the same name (a section copied from Headplane's
/// `config.yaml`): where their setting lives in headgate.
fn headplane_key(section: &str, key: &str) -> Option<&'static str> {
    match (section, key) {
        ("oidc", "redirect_uri") => Some(
            "Headplane's setting; headgate's redirect URI is server.base_url + oidc.callback_path (by default \
             /admin/oidc/callback, the URL Headplane registers): remove this key",
        ),
        ("oidc", "headscale_api_key") => Some(
            "Headplane's setting; headgate's Headscale key is headscale.api_key (or headscale.api_key_path)",
        ),
        ("oidc", "user_storage_file") => Some(
            "Headplane's setting; headgate keeps people and roles in its own store under server.data_path: \
             remove this key",
        ),
        _ => None,
    }
}

/// The known name closest to `got`, when it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(got: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(got, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn parse_env_list(s: &str) -> Option<toml::Value> {
    let t = s.trim();
    if t.starts_with('[') {
        let mut table = format!("v = {t}").parse::<toml::Table>().ok()?;
        return table.remove("v");
    }
    let items = t
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| toml::Value::String(x.to_string()))
        .collect();
    Some(toml::Value::Array(items))
}

pub(crate) fn describe(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}
