//! The source layout: no import loop between files, and imports between folders only in the
//! directions ARCHITECTURE.md allows (lower folders never import higher ones).
//!
//! Read from the text of src/: every `crate::`, `super::` and `self::` path, and in a
//! folder's mod.rs every path through a child it declares, is resolved to the file that
//! holds the module it names. Unit tests at the bottom of a file (`#[cfg(test)]`) and
//! comments are left out: they are not the module's imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders (and root files) each may import. A name missing here imports nothing.
const ALLOWED: &[(&str, &[&str])] = &[
    ("protocol", &[]),
    ("storage", &[]),
    ("telemetry", &[]),
    ("probe", &[]),
    ("stop", &["telemetry"]),
    ("accept", &["stop"]),
    ("config", &["protocol", "storage"]),
    ("fleet", &["config", "protocol", "storage", "telemetry"]),
    ("edge", &["config", "protocol", "storage", "telemetry"]),
    ("routing", &["config", "fleet", "protocol", "telemetry", "probe"]),
    ("state", &["config", "edge", "fleet", "protocol", "stop", "storage", "telemetry"]),
    ("placement", &["config", "fleet", "protocol", "routing", "telemetry"]),
    ("ops", &["config", "fleet", "protocol", "storage", "telemetry"]),
    ("admin", &["config", "edge", "fleet", "placement", "protocol", "routing", "state", "storage", "telemetry"]),
    (
        "proxy",
        &[
            "admin",
            "config",
            "edge",
            "fleet",
            "ops",
            "placement",
            "protocol",
            "routing",
            "state",
            "stop",
            "storage",
            "telemetry",
        ],
    ),
    (
        "serve",
        &[
            "accept",
            "admin",
            "config",
            "edge",
            "fleet",
            "ops",
            "placement",
            "protocol",
            "proxy",
            "routing",
            "state",
            "stop",
            "storage",
            "telemetry",
        ],
    ),
];

/// One source file: its module path (`["fleet", "server"]`) and its text without tests and comments.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    is_folder: bool,
    text: String,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let mut path: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let last = path.pop().unwrap();
            let stem = last.trim_end_matches(".rs");
            let is_folder = stem == "mod" || (stem == "lib" && path.is_empty());
            if stem == "main" && path.is_empty() {
                continue; // the binary: not part of the library's graph
            }
            if !is_folder {
                path.push(stem.to_string());
            }
            let raw = std::fs::read_to_string(&p).unwrap();
            out.push(Module { path, file: rel.to_path_buf(), is_folder, text: strip(&raw) });
        }
    }
    out
}

/// The text up to its unit tests, without comments.
fn strip(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers of a `a::b::c` chain starting at `at` (after the leading keyword and `::`).
fn chain(text: &str, mut at: usize) -> Vec<String> {
    let mut segs = Vec::new();
    loop {
        let rest = &text[at..];
        let len = rest.find(|c: char| !ident_char(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segs.push(rest[..len].to_string());
        at += len;
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            break;
        }
    }
    segs
}

/// Every path the module names, made absolute (from the crate root).
fn references(m: &Module) -> Vec<Vec<String>> {
    let text = &m.text;
    // The module's own path, and its parent's, as `self` and `super` resolve them.
    let own = m.path.clone();
    let parent: Vec<String> = own[..own.len().saturating_sub(1)].to_vec();
    let children: Vec<String> = if m.is_folder {
        text.lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
                l.strip_prefix("mod ").map(|r| r.trim_end_matches(';').trim().to_string())
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let joined: String = bytes.iter().collect();
    let mut i = 0;
    while i < joined.len() {
        let rest = &joined[i..];
        let before = joined[..i].chars().last();
        let starts_word = before.is_none_or(|c| !ident_char(c) && c != ':');
        if starts_word {
            let found = ["crate::", "super::", "self::"].into_iter().find(|k| rest.starts_with(k));
            if let Some(k) = found {
                let segs = chain(&joined, i + k.len());
                let base = match k {
                    "crate::" => Vec::new(),
                    "super::" => parent.clone(),
                    _ => own.clone(),
                };
                out.push([base, segs].concat());
                i += k.len();
                continue;
            }
            if let Some(child) = children.iter().find(|c| rest.starts_with(&format!("{c}::"))) {
                let segs = chain(&joined, i);
                let _ = child;
                out.push([own.clone(), segs].concat());
                i += 1;
                continue;
            }
        }
        i += rest.chars().next().map_or(1, |c| c.len_utf8());
    }
    out
}

fn top(path: &[String]) -> String {
    path.first().cloned().unwrap_or_else(|| "lib".into())
}

#[test]
fn no_import_loops_and_folders_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    assert!(known.contains(&vec!["proxy".to_string()]), "the proxy module is found");

    // File-level edges: each reference goes to the deepest module file it passes through.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in &mods {
        let entry = edges.entry(m.path.clone()).or_default();
        for r in references(m) {
            let target = (0..=r.len()).rev().map(|n| r[..n].to_vec()).find(|p| known.contains(p));
            if let Some(t) = target.filter(|t| *t != m.path && !t.is_empty()) {
                // A module's reference to its own ancestors' faces is only a cycle if they
                // reference it back, which the search below finds like any other.
                entry.insert(t);
            }
        }
    }

    // Cycles, by depth-first search.
    let mut cycles = Vec::new();
    let mut state: BTreeMap<&Vec<String>, u8> = BTreeMap::new(); // 1 on the stack, 2 done
    fn visit<'a>(
        n: &'a Vec<String>,
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<&'a Vec<String>, u8>,
        stack: &mut Vec<&'a Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for t in edges.get(n).into_iter().flatten() {
            match state.get(t) {
                Some(1) => {
                    let from = stack.iter().position(|s| *s == t).unwrap();
                    let names: Vec<String> = stack[from..].iter().map(|p| p.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), t.join("::")));
                }
                Some(_) => {}
                None => visit(t, edges, state, stack, cycles),
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    for n in edges.keys() {
        if !state.contains_key(n) {
            visit(n, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import loops between files:\n{}", cycles.join("\n"));

    // Folder-level edges against the table.
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for m in &mods {
        let from = top(&m.path);
        if from == "lib" {
            continue;
        }
        for t in &edges[&m.path] {
            let to = top(t);
            if to != from && !allowed.get(from.as_str()).is_some_and(|a| a.contains(&to.as_str())) {
                wrong.push(format!("{} imports {} ({} -> {})", m.file.display(), t.join("::"), from, to));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (ARCHITECTURE.md):\n{}", wrong.join("\n"));

    // Every folder and root file is in the table, so a new one gets a place in it.
    let tops: BTreeSet<String> = mods.iter().map(|m| top(&m.path)).filter(|t| t != "lib").collect();
    for t in &tops {
        assert!(allowed.contains_key(t.as_str()), "src/{t} is not in the layering table of tests/layout.rs");
    }
}

#[test]
fn the_layering_table_itself_has_no_loop() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // A folder's allowed imports must all come before it in the table.
    let order: Vec<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    for (i, (name, deps)) in ALLOWED.iter().enumerate() {
        for d in *deps {
            let at = order.iter().position(|o| o == d).unwrap_or_else(|| panic!("{name} allows unknown {d}"));
            assert!(at < i, "{name} may import {d}, which comes later in the table (a loop is possible)");
        }
    }
    assert_eq!(allowed.len(), ALLOWED.len(), "each folder is listed once");
}

#[test]
fn the_checker_sees_a_loop() {
    // The checker itself: a reference through `super::` and through a declared child resolve.
    let m = Module {
        path: vec!["fleet".into()],
        file: "fleet/mod.rs".into(),
        is_folder: true,
        text: strip("pub mod server;\nuse server::Slot;\n// crate::proxy::Drover in a comment\n#[cfg(test)]\nmod tests { use crate::proxy; }\n"),
    };
    let refs = references(&m);
    assert_eq!(refs, vec![vec!["fleet".to_string(), "server".into(), "Slot".into()]]);
    let child = Module {
        path: vec!["fleet".into(), "server".into()],
        file: "fleet/server.rs".into(),
        is_folder: false,
        text: strip("use super::backends::Health;\nfn f() { crate::config::Settings::default(); }\n"),
    };
    let refs = references(&child);
    assert_eq!(refs[0], ["fleet", "backends", "Health"]);
    assert_eq!(refs[1], ["config", "Settings", "default"]);
}
