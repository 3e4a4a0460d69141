//! Every type error of a config at once, in the user's terms.
//!
//! The happy path deserializes the whole table in one go (`load::raw`), which stops at
//! the first error. When it fails, this module takes the table apart and deserializes
//! each key of each section and of each credential and proxy on its own, so one run of
//! `check-config` names every key of the wrong shape. It then checks the rest of the
//! config with those keys left out, keeping only the problems of sections and entries
//! that had none of their own (a key removed for its type would otherwise come back as
//! "is required"). Only the error path pays for this.
//!
//! Messages are serde's, reworded: "invalid type: string \"x\", expected u32" becomes
//! "expected a whole number, found text", which also keeps the value out of the message.

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::raw::{RawConfig, RawCredential, RawIdp, RawProxy, RawServer, RawState};
use super::{Problem, Problems};

/// Every problem of a table whose whole deserialization failed.
pub fn problems(mut table: Table) -> Problems {
    let mut found = Vec::new();
    // Scopes (a section, `credentials.NAME`) in which a key had the wrong shape.
    let mut scopes = Vec::new();
    section::<RawServer>(&mut table, "server", &mut found, &mut scopes);
    section::<RawState>(&mut table, "state", &mut found, &mut scopes);
    section::<RawIdp>(&mut table, "idp", &mut found, &mut scopes);
    entries::<RawCredential>(&mut table, "credentials", &mut found, &mut scopes);
    entries::<RawProxy>(&mut table, "proxies", &mut found, &mut scopes);
    // What is left: unknown sections, and sections that are not tables at all.
    split::<RawConfig>(&mut table, "", &mut found, &mut scopes);
    let rest = super::load::raw(table).and_then(super::validate);
    if let Err(Problems(others)) = rest {
        let own = |key: &str| {
            scopes
                .iter()
                .any(|s: &String| key == s || key.starts_with(&format!("{s}.")))
        };
        found.extend(others.into_iter().filter(|p| !own(&p.key)));
    }
    Problems(found)
}

/// Splits each entry of `[credentials.NAME]` or `[proxies.NAME]`.
fn entries<T: DeserializeOwned>(
    table: &mut Table,
    section: &str,
    found: &mut Vec<Problem>,
    scopes: &mut Vec<String>,
) {
    let Some(Value::Table(entries)) = table.get_mut(section) else {
        return;
    };
    for (name, entry) in entries.iter_mut() {
        if let Value::Table(fields) = entry {
            split::<T>(fields, &format!("{section}.{name}"), found, scopes);
        }
    }
}

fn section<T: DeserializeOwned>(
    table: &mut Table,
    name: &str,
    found: &mut Vec<Problem>,
    scopes: &mut Vec<String>,
) {
    if let Some(Value::Table(fields)) = table.get_mut(name) {
        split::<T>(fields, name, found, scopes);
    }
}

/// Deserializes each key of `fields` alone as a `T` (every field of the raw types is
/// optional, so a table of one key fails only for that key); removes the keys that fail
/// and records their problems under `scope`.
fn split<T: DeserializeOwned>(
    fields: &mut Table,
    scope: &str,
    found: &mut Vec<Problem>,
    scopes: &mut Vec<String>,
) {
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        let Some(value) = fields.get(&key) else {
            continue;
        };
        let mut alone = Table::new();
        alone.insert(key.clone(), value.clone());
        if let Err(problem) = deserialize::<T>(alone) {
            let key_path = match scope {
                "" => problem.key,
                scope => format!("{scope}.{}", problem.key),
            };
            found.push(Problem {
                key: key_path,
                message: problem.message,
            });
            fields.remove(&key);
            let scope = if scope.is_empty() { &key } else { scope };
            scopes.push(scope.to_owned());
        }
    }
}

/// Deserializes a table, naming the key of the first problem (relative to the table),
/// in the user's terms.
pub fn deserialize<T: DeserializeOwned>(table: Table) -> Result<T, Problem> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "config".to_owned() } else { key };
        Problem {
            key,
            message: user_terms(e.into_inner().message().trim()),
        }
    })
}

/// Rewords serde's messages about shapes, without the value they quote.
pub fn user_terms(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            let out_of_range = prefix == "invalid value: ";
            return format!(
                "expected {}, found {}",
                expected_terms(expected),
                found_terms(found, out_of_range)
            );
        }
    }
    message.to_owned()
}

/// Rust's names for what was expected, in a config file's words.
pub(super) fn expected_terms(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        "a string" => "text in quotes",
        // A nested table (`exec`, `login`): serde names the Rust type.
        other if other.starts_with("struct ") => "a table",
        other => other,
    }
}

/// What was found, by kind only: the value may be a secret.
fn found_terms(found: &str, out_of_range: bool) -> &'static str {
    let kind = found.split([' ', '`']).next().unwrap_or("");
    match kind {
        _ if out_of_range && matches!(kind, "integer" | "floating") => "a number out of range",
        "string" | "char" => "text",
        "integer" | "floating" => "a number",
        "boolean" => "true or false",
        "sequence" => "a list",
        "map" => "a table",
        "unit" | "Option" => "nothing",
        _ => "a value of another kind",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_the_users_and_drop_the_value() {
        let cases = [
            (
                "invalid type: string \"hunter2\", expected u32",
                "expected a whole number, 0 or more, found text",
            ),
            (
                "invalid type: integer `12345`, expected a string",
                "expected text in quotes, found a number",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "expected a whole number, 0 or more, found a number out of range",
            ),
            (
                "invalid type: sequence, expected a boolean",
                "expected true or false, found a list",
            ),
            (
                "invalid type: integer `5`, expected struct RawLogin",
                "expected a table, found a number",
            ),
            ("unknown field `x`", "unknown field `x`"),
        ];
        for (serde, ours) in cases {
            assert_eq!(user_terms(serde), ours);
        }
    }
}
