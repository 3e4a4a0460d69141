//! Config checks that span sections: bounds on every duration, names, and problems
//! reported together.

#![allow(clippy::unwrap_used)]

use super::load_str;

const CREDENTIAL: &str = "[credentials.a]\ntoken_url = \"https://idp.example.com/t\"\n\
                          client_id = \"c\"\nrefresh_token = \"r\"\n";

/// Every problem of a config, as `key: message` lines.
fn problems(toml: &str) -> Vec<String> {
    match load_str(toml) {
        Ok(_) => Vec::new(),
        Err(p) => p.0.iter().map(|p| p.to_string()).collect(),
    }
}

/// Each duration key in a config that is otherwise valid, with `{}` for its value.
fn duration_keys() -> Vec<(&'static str, String)> {
    let redis = "[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\n";
    let mut cases = Vec::new();
    for key in ["request_timeout", "shutdown_grace", "header_timeout"] {
        cases.push((key, format!("[server]\n{key} = {{}}\n{CREDENTIAL}")));
    }
    for key in ["lease_duration", "poll_interval", "timeout"] {
        cases.push((key, format!("{redis}{key} = {{}}\n{CREDENTIAL}")));
    }
    for key in ["connect_timeout", "timeout"] {
        cases.push((key, format!("[idp]\n{key} = {{}}\n{CREDENTIAL}")));
    }
    for key in [
        "default_lifetime",
        "min_refresh_interval",
        "backoff_initial",
        "backoff_max",
        "bootstrap_poll",
        "idp_reuse_grace",
    ] {
        cases.push((key, format!("{CREDENTIAL}{key} = {{}}\n")));
    }
    cases.push((
        "assertion_lifetime",
        format!(
            "{CREDENTIAL}client_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"/k.pem\" }}\n\
             assertion_lifetime = {{}}\n"
        ),
    ));
    cases.push((
        "timeout",
        "[credentials.e]\ngrant = \"exec\"\nexec.command = [\"/bin/true\"]\nexec.timeout = {}\n"
            .to_owned(),
    ));
    cases.push((
        "response_timeout",
        format!(
            "{CREDENTIAL}[proxies.p]\nlisten = \"127.0.0.1:0\"\nupstream = \"https://api.example.com\"\n\
             credential = \"a\"\nresponse_timeout = {{}}\n"
        ),
    ));
    cases
}

#[test]
fn every_duration_is_bounded_and_the_error_says_so() {
    for (key, template) in duration_keys() {
        // A sane value passes, so the problem below is the bound's.
        let sane = match key {
            "lease_duration" | "assertion_lifetime" => "\"10s\"",
            _ => "\"1s\"",
        };
        let found = problems(&template.replace("{}", sane));
        assert_eq!(found, Vec::<String>::new(), "{template}");
        for huge in [
            "9223372036854775807",
            "\"18446744073709551615\"",
            "\"1000000000h\"",
            "\"366days\"",
        ] {
            let found = problems(&template.replace("{}", huge));
            assert!(
                found
                    .iter()
                    .any(|p| p.contains(&format!("{key}: ")) && p.contains("365 days")),
                "{key} = {huge}: {found:?}"
            );
        }
    }
}

#[test]
fn credential_names_differing_only_in_case_are_refused() {
    let two = |a: &str, b: &str| {
        problems(&format!(
            "{}{}",
            CREDENTIAL.replace("credentials.a", &format!("credentials.{a}")),
            CREDENTIAL.replace("credentials.a", &format!("credentials.{b}"))
        ))
    };
    let found = two("GitHub", "github");
    assert!(
        found.iter().any(|p| p.contains("only in case")),
        "{found:?}"
    );
    assert_eq!(two("github", "gitlab"), Vec::<String>::new());
}
