//! The floor order of the modules, enforced: every top-level module of `src/` sits on a
//! floor, and a module may use only modules on its own floor or below. A plain text scan
//! of `crate::...` paths (comments skipped), so it needs no parser; a new top-level module
//! fails here until it is given a floor.
//!
//! On one floor, modules may use each other, but no import circle may span two top-level
//! modules: a circle means two modules that cannot be understood, or changed, apart.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module on a floor may use the modules of that floor and those below.
const FLOORS: &[&[&str]] = &[
    // The command line and its clients of a running broker (`dev`: the try-it-now mode).
    &["cli", "client", "helpers", "login", "dev"],
    // Wiring the daemon; checking a config on the machine that will run it.
    &["daemon", "preflight"],
    // Faces of the broker: the HTTP API, SDK protocols, proxies, file sinks.
    &["server", "emulate", "proxy", "sink"],
    &["broker"],
    // Token sources and persistence. The dev IdP is the other end of `idp`'s protocol,
    // used only by the command line, `dev` and tests.
    &["idp", "exec", "store", "dev_idp"],
    &["config", "token"],
    // Leaves: they use no module of the crate, so any module may use them.
    &[
        "secret",
        "duration",
        "error",
        "metrics",
        "signal",
        "limits",
        "dpop",
        "test_keys",
    ],
];

/// Imports that run upward, each with why it stays for now: (from, to, reason). None
/// today: a new one needs its reason here, and the test below fails once it is gone.
const ALLOWED_UPWARD: &[(&str, &str, &str)] = &[];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`, including `crate::{a, b::{c}}`.
fn imports(text: &str) -> BTreeSet<String> {
    let code: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    let code = code.join("\n");
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.extend(name(rest));
            continue;
        };
        // Each name right after the group's opening brace or one of its own commas.
        let (mut depth, mut start) = (0, true);
        for (i, c) in group.char_indices() {
            if start && !c.is_whitespace() {
                found.extend(name(&group[i..]));
                start = false;
            }
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => start = true,
                _ => {}
            }
        }
    }
    found
}

/// The identifier `text` starts with, if any.
fn name(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// For each top-level module, the modules it uses and the first file that uses each.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        // The crate root declares modules and uses none; this file names them all.
        if ["lib", "main", "floors_tests"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for used in imports(&text).into_iter().filter(|u| *u != module) {
            uses.entry(used)
                .or_insert_with(|| relative.display().to_string());
        }
    }
    graph
}

#[test]
fn no_module_uses_one_on_a_floor_above_it() {
    let mut wrong = Vec::new();
    for (module, uses) in graph() {
        let Some(floor) = floor_of(&module) else {
            wrong.push(format!("src/{module}: on no floor (add it to FLOORS)"));
            continue;
        };
        for (used, file) in uses {
            let allowed = ALLOWED_UPWARD
                .iter()
                .any(|(from, to, _)| *from == module && *to == used);
            match floor_of(&used) {
                None => wrong.push(format!("src/{file} uses crate::{used}, on no floor")),
                Some(above) if above < floor && !allowed => wrong.push(format!(
                    "src/{file} uses crate::{used}, a floor above {module}"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the floor order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_circle_spans_two_top_level_modules() {
    let graph = graph();
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_owned()];
        while let Some(module) = next.pop() {
            for used in graph.get(&module).into_iter().flat_map(|u| u.keys()) {
                if used == to {
                    return true;
                }
                if seen.insert(used.clone()) {
                    next.push(used.clone());
                }
            }
        }
        false
    };
    let mut circles = Vec::new();
    for (module, uses) in &graph {
        for (used, file) in uses {
            if reaches(used, module) {
                circles.push(format!(
                    "src/{file} uses crate::{used}, which leads back to {module}"
                ));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_scan_sees_every_form_of_path() {
    let text = "use crate::config::Config;\n\
                //! see crate::daemon\n\
                #[serde(with = \"crate::duration::serde_opt\")]\n\
                use crate::{broker::{Want, Outcome}, server};\n\
                use crate::{\n    sink::Sink,\n    store::Store,\n};\n\
                let x = $crate::token; let y = my_crate::store;\n";
    let found: Vec<_> = imports(text).into_iter().collect();
    assert_eq!(
        found,
        ["broker", "config", "duration", "server", "sink", "store"]
    );
}

#[test]
fn every_allowed_upward_import_is_still_needed() {
    let graph = graph();
    for (from, to, _) in ALLOWED_UPWARD {
        assert!(
            graph.get(*from).is_some_and(|uses| uses.contains_key(*to)),
            "{from} no longer uses {to}: drop it from ALLOWED_UPWARD"
        );
        assert!(
            floor_of(to) < floor_of(from),
            "{from} -> {to} is not upward"
        );
    }
}
