//! From a file and the environment to `RawConfig`.
//!
//! The file is parsed straight into a TOML table (JSON by extension), the
//! `TOKEN_BROKER__SECTION__KEY` variables are laid over it, and the table is deserialized
//! with the path of the first error tracked, so a problem names its key. Parsing the
//! table directly, rather than merging sources key by key, keeps a start with thousands
//! of credentials fast; the part of the file before the credentials is what the daemon
//! reads `server.listen` from to bind its port before the rest is parsed and checked.

use std::path::Path;

use toml::{Table, Value};

use super::{Config, Problem, Problems, RawConfig, validate};

/// Prefix and separator of environment overrides: `TOKEN_BROKER__SERVER__LISTEN`.
const ENV_PREFIX: &str = "TOKEN_BROKER";
const ENV_SEPARATOR: &str = "__";

/// A config file's text, read once.
pub struct Source {
    text: String,
    json: bool,
}

impl Source {
    /// Reads a config file (TOML, or JSON by extension).
    pub fn read(path: &Path) -> Result<Source, Problems> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| one("config", format!("cannot read {}: {e}", path.display())))?;
        let json = path.extension().is_some_and(|e| e == "json");
        Ok(Source { text, json })
    }

    /// The whole file as a table, environment overrides applied.
    pub fn table(&self) -> Result<Table, Problems> {
        parse(&self.text, self.json)
    }

    /// The whole file checked: a `Config`, or every problem found. The text is let go
    /// as soon as it parsed well, since thousands of credentials take room; when a key
    /// has the wrong shape it is parsed again to find every other one (`every`).
    pub fn config(self) -> Result<Config, Problems> {
        checked(self.text, self.json)
    }

    /// The part of a TOML file before its first `[credentials...]` header, environment
    /// overrides applied; `None` if that part does not parse. With thousands of
    /// credentials the full parse takes tens of milliseconds, this part microseconds, so
    /// the daemon can bind its port first. A document that is valid TOML cannot set a key
    /// of this part again further down, so what it says about `[server]` stands; a cut
    /// inside a multi-line string fails to parse and gives `None`.
    pub fn head(&self) -> Option<Table> {
        if self.json {
            return None;
        }
        let cut = if self.text.starts_with("[credentials") {
            0
        } else {
            self.text
                .find("\n[credentials")
                .map_or(self.text.len(), |i| i + 1)
        };
        let mut table: Table = toml::from_str(&self.text[..cut]).ok()?;
        overlay_env(&mut table, env_overrides()).ok()?;
        Some(table)
    }
}

/// Parses config text (TOML, or JSON when `json`) into a table, environment overrides
/// applied.
pub fn parse(text: &str, json: bool) -> Result<Table, Problems> {
    let mut table: Table = if json {
        serde_json::from_str(text).map_err(|e| {
            let at = format!("line {}, column {}", e.line(), e.column());
            one(
                "config",
                format!("not valid JSON at {at}: {}", json_reason(&e)),
            )
        })?
    } else {
        toml::from_str(text).map_err(|e| one("config", toml_syntax(text, &e)))?
    };
    overlay_env(&mut table, env_overrides())?;
    Ok(table)
}

/// A TOML syntax error as the place and the parser's reason, never the text around it:
/// the parser's own rendering quotes the offending line, which may hold an inline secret,
/// and this message reaches `check-config`, `run`'s stderr and the daemon's log.
fn toml_syntax(text: &str, e: &toml::de::Error) -> String {
    // The reason names what was expected (`expected `"``), not what was found.
    let reason = e.message().lines().next().unwrap_or("").trim();
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("not valid TOML at line {line}, column {column}: {reason}")
        }
        None => format!("not valid TOML: {reason}"),
    }
}

/// The kind of a JSON syntax error, without serde_json's position suffix (given apart).
fn json_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(cut) => full[..cut].to_owned(),
        None => full,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Config text checked: a `Config`, or every problem found.
pub fn checked(text: String, json: bool) -> Result<Config, Problems> {
    match raw(parse(&text, json)?) {
        Ok(raw) => {
            drop(text);
            validate(raw)
        }
        Err(_) => Err(super::every::problems(parse(&text, json)?)),
    }
}

/// Deserializes a table, naming the key of the first problem.
pub fn raw(table: Table) -> Result<RawConfig, Problems> {
    super::every::deserialize(table).map_err(|p| Problems(vec![p]))
}

/// The `TOKEN_BROKER__...` variables as (dotted lower-case path, value); the `config`
/// crate's environment source does the naming rules.
fn env_overrides() -> Vec<(String, String)> {
    use config::Source;
    let env = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR);
    let Ok(found) = env.collect() else {
        return Vec::new();
    };
    let mut overrides: Vec<(String, String)> = found
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.into_string().ok()?)))
        .collect();
    // Deterministic order: a shorter path (a whole table) first, its keys after.
    overrides.sort();
    overrides
}

/// Lays string values over the table at dotted paths, creating tables on the way.
/// Values stay strings: the raw config's fields accept text for numbers and booleans.
fn overlay_env(table: &mut Table, overrides: Vec<(String, String)>) -> Result<(), Problems> {
    for (path, value) in overrides {
        let mut parts: Vec<&str> = path.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut here = &mut *table;
        for part in parts {
            let slot = here
                .entry(part.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            here = match slot {
                Value::Table(inner) => inner,
                _ => {
                    let message = format!(
                        "{ENV_PREFIX}{ENV_SEPARATOR}... sets a key inside a value that is not a table"
                    );
                    return Err(one(&path, message));
                }
            };
        }
        here.insert(last.to_owned(), Value::String(value));
    }
    Ok(())
}

fn one(key: &str, message: String) -> Problems {
    Problems(vec![Problem {
        key: key.to_owned(),
        message,
    }])
}

/// Serde helper for numbers and booleans that may come as text (from the environment):
/// accepts `true` and `"true"`, `64` and `"64"`.
pub mod lenient {
    use std::str::FromStr;

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer};

    /// Deserializes an optional `T` written natively or as text. The value is taken
    /// as a TOML value first (every config is one), so a wrong shape is reported as
    /// `T`'s own error rather than serde's "untagged enum".
    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned + FromStr,
    {
        match Option::<toml::Value>::deserialize(d)? {
            None => Ok(None),
            Some(toml::Value::String(t)) => t.trim().parse().map(Some).map_err(|_| {
                let expected = super::super::every::expected_terms(std::any::type_name::<T>());
                serde::de::Error::custom(format!("expected {expected}, found `{t}`"))
            }),
            Some(native) => T::deserialize(native)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(e.message())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn overlaid(text: &str, env: &[(&str, &str)]) -> Result<RawConfig, Problems> {
        let mut table: Table = toml::from_str(text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        overlay_env(&mut table, env.collect())?;
        raw(table)
    }

    #[test]
    fn environment_values_override_and_extend_the_file() {
        let raw = overlaid(
            "[server]\nlisten = \"127.0.0.1:1\"\nrequire_header = true\n",
            &[
                ("server.listen", "127.0.0.1:2"),
                ("server.require_header", "false"),
                ("server.max_waiting_requests", "7"),
                ("idp.max_concurrent", "3"),
                ("credentials.a.refresh_ratio", "0.5"),
                ("credentials.a.client_id", "123"),
            ],
        )
        .unwrap();
        let server = raw.server.unwrap();
        assert!(
            matches!(server.listen, Some(super::super::raw::OneOrMany::One(ref a)) if a == "127.0.0.1:2")
        );
        assert_eq!(server.require_header, Some(false));
        assert_eq!(server.max_waiting_requests, Some(7));
        assert_eq!(raw.idp.unwrap().max_concurrent, Some(3));
        let a = &raw.credentials.unwrap()["a"];
        assert_eq!(a.refresh_ratio, Some(0.5));
        assert_eq!(a.client_id.as_deref(), Some("123"));
    }

    #[test]
    fn problems_name_their_key() {
        let cases = [
            ("[server]\nbogus = 1\n", vec![], "server.bogus"),
            (
                "[credentials.a]\ncolour = 1\n",
                vec![],
                "credentials.a.colour",
            ),
            (
                "",
                vec![("server.require_header", "maybe")],
                "server.require_header",
            ),
            ("[server]\nlisten = 5\n", vec![], "server.listen"),
            ("", vec![("server.listen.x", "1")], "server.listen"),
        ];
        for (text, env, key) in cases {
            let problems = overlaid(
                &format!("{text}\n[state]\ndir = \"/x\"\n"),
                &env.iter()
                    .map(|(k, v)| (*k, *v))
                    .collect::<Vec<(&str, &str)>>(),
            )
            .err()
            .unwrap_or_else(|| panic!("accepted {text} {env:?}"));
            assert!(problems.0[0].key.starts_with(key), "{key}: {problems}");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column_and_never_quote_the_text() {
        let cases = [
            ("[a]\nclient_secret = \"hunter2\n", 2),
            ("[a]\nx = 1\nclient_secret = hunter2\n", 3),
            ("[a]\nclient_secret = \"hun\\qter2\"\n", 2),
            ("[a]\nclient_secret = 'hunter2' 'hunter2'\n", 2),
            ("[a]\nclient_secret = { file = \"hunter2\" \n", 2),
            // An unterminated multi-line string is found at the end.
            ("[a]\nclient_secret = \"\"\"hunter2\n", 3),
            ("[a]\nhunter2 hunter2 = 1\n", 2),
        ];
        for (text, line) in cases {
            let problem = parse(text, false).unwrap_err().0.remove(0);
            assert_eq!(problem.key, "config");
            assert!(!problem.message.contains("hunter"), "{text}: {problem}");
            assert!(
                problem
                    .message
                    .starts_with(&format!("not valid TOML at line {line}, column ")),
                "{text}: {problem}"
            );
        }
        let problem = parse("{\"a\": {\"s\": \"hunter2\" \"x\"}}", true)
            .unwrap_err()
            .0
            .remove(0);
        assert!(!problem.message.contains("hunter"), "{problem}");
        assert!(
            problem
                .message
                .starts_with("not valid JSON at line 1, column "),
            "{problem}"
        );
    }

    fn source(text: &str) -> Source {
        Source {
            text: text.to_owned(),
            json: false,
        }
    }

    fn hint(text: &str) -> Option<Vec<crate::config::Listen>> {
        crate::config::listen_hint(&source(text).head()?)
    }

    #[test]
    fn the_head_names_the_listen_address_only_when_it_says_it_before_the_credentials() {
        let creds = "[credentials.a]\nclient_id = \"c\"\n[credentials.b]\nclient_id = \"d\"\n";
        let first = format!("[server]\nlisten = [\"127.0.0.1:7\"]\n\n{creds}");
        assert_eq!(
            hint(&first),
            Some(vec![crate::config::parse_listen("127.0.0.1:7").unwrap()])
        );
        // The head is small: the credentials are not in it.
        assert!(!source(&first).head().unwrap().contains_key("credentials"));
        // [server] after the credentials, or no listen at all: no guess.
        assert_eq!(
            hint(&format!("{creds}[server]\nlisten = \"127.0.0.1:7\"\n")),
            None
        );
        assert_eq!(hint(&format!("[state]\ndir = \"/x\"\n{creds}")), None);
        // A cut inside a multi-line string does not parse: no guess.
        let tricky = "[server]\nlisten = \"127.0.0.1:7\"\nx = \"\"\"\n[credentials.a]\n\"\"\"\n";
        assert_eq!(hint(tricky), None);
        assert_eq!(
            hint("[server]\nlisten = \"unix:/run/x.sock\"\n").map(|l| l.len()),
            Some(1)
        );
    }
}
