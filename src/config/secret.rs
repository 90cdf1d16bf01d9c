//! Secret values: never printed, read from the file or from a `*_path` file with `${VAR}` expansion.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use super::reader::Section;

/// A secret string. `Debug` never shows it and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Expand `${VAR}` in a path; an unset variable is an error naming it.
pub(crate) fn expand_vars(s: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated ${{ in {s:?}"));
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("${{{name}}} in {s:?} is not a variable name"));
        }
        match env.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(format!(
                    "environment variable {name} is not set (used in {s:?})"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Section<'_> {
    /// `key` or `key_path` (a file holding the value, `${VAR}` expanded, content trimmed); both set is an error.
    pub(crate) fn secret(
        &mut self,
        key: &'static str,
        path_key: &'static str,
        env: &HashMap<String, String>,
    ) -> Option<Secret> {
        let both = self.is_set(key) && self.is_set(path_key);
        let value = self.string(key);
        let path = self.string(path_key);
        if both {
            let k = self.key(key);
            self.error(
                path_key,
                format!("both {k} and {} are set: keep only one", self.key(path_key)),
            );
            return None;
        }
        if let Some(v) = value {
            let v = v.trim().to_string();
            if v.is_empty() {
                self.error(key, "is empty");
                return None;
            }
            return Some(Secret(v));
        }
        let raw = path?;
        let expanded = match expand_vars(&raw, env) {
            Ok(p) => PathBuf::from(p),
            Err(e) => {
                self.error(path_key, e);
                return None;
            }
        };
        match std::fs::read_to_string(&expanded) {
            Ok(content) => {
                let v = content.trim().to_string();
                if v.is_empty() {
                    self.error(
                        path_key,
                        format!("the file {} is empty", expanded.display()),
                    );
                    return None;
                }
                Some(Secret(v))
            }
            Err(e) => {
                self.error(path_key, format!("cannot read {}: {e}", expanded.display()));
                None
            }
        }
    }
}
