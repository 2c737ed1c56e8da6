//! The architecture invariants of `ARCHITECTURE.md` ("Layers"), checked on the source text: the
//! modules each file refers to (`crate::...`, `super::...`, and a `mod.rs` re-exporting its
//! children), with comments and `#[cfg(test)]` modules left out. It fails when a file reaches a
//! layer above its own, or when source files form an import cycle, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A source file by its module path: `["runs", "schedule"]` for `src/runs/schedule.rs`,
/// `["audit"]` for `src/audit/mod.rs`.
type Module = Vec<String>;

fn sources() -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    collect(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut Vec::new(),
        &mut out,
    );
    out
}

fn collect(dir: &Path, prefix: &mut Vec<String>, out: &mut BTreeMap<Module, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            prefix.push(name);
            collect(&path, prefix, out);
            prefix.pop();
        } else if path.extension().is_some_and(|e| e == "rs") {
            // The crate roots declare modules; they are not part of the layering.
            if prefix.is_empty() && (name == "lib" || name == "main") {
                continue;
            }
            let mut module = prefix.clone();
            if name != "mod" {
                module.push(name);
            }
            out.insert(module, code_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The file's code without its test module and without comments.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifier paths following `prefix` (`crate::`, `super::`), expanding `{a::b, c}` groups.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        // `foo_crate::` is not `crate::`.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand(&code[i + prefix.len()..], Vec::new(), &mut out);
    }
    out
}

fn expand(rest: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&group[start..i], base.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&group[start..i], base.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !base.is_empty() {
            out.push(base);
        }
        return;
    }
    let mut path = base;
    path.push(ident.clone());
    match rest[ident.len()..].strip_prefix("::") {
        Some(more) => expand(more, path, out),
        None => out.push(path),
    }
}

/// Paths after `super::` chains, with how many levels each climbs.
fn super_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("super::") {
        // Only the start of a chain: `super::super::x` is one reference, two levels up.
        if code[..i].ends_with("::")
            || code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let mut rest = &code[i..];
        let mut levels = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            levels += 1;
            rest = r;
        }
        let mut paths = Vec::new();
        expand(rest, Vec::new(), &mut paths);
        out.extend(paths.into_iter().map(|p| (levels, p)));
    }
    out
}

/// The deepest source file a path names (`crate::audit::CallerSummary` → `audit`).
fn resolve(modules: &BTreeMap<Module, String>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|m| modules.contains_key(m))
}

fn is_mod_rs(module: &Module) -> bool {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).join(module.join("/"));
    dir.is_dir()
}

/// Which files each file refers to.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = sources();
    let mut edges = BTreeMap::new();
    for (module, code) in &modules {
        let mut to = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            to.extend(resolve(&modules, &path));
        }
        // `super::` is the parent module (of a file, and of a `mod.rs` too); each further
        // `super::` one level up.
        for (levels, path) in super_paths(code) {
            let keep = module.len().saturating_sub(levels);
            let full: Vec<String> = module[..keep].iter().cloned().chain(path).collect();
            to.extend(resolve(&modules, &full));
        }
        // A `mod.rs` using its children by their relative paths: `pub use event::X;`,
        // `entra::SimEntra::start(..)`.
        if is_mod_rs(module) {
            for m in modules.keys() {
                if m.len() != module.len() + 1 || m[..module.len()] != module[..] {
                    continue;
                }
                let child = format!("{}::", m[module.len()]);
                let used = code.match_indices(&child).any(|(i, _)| {
                    !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                });
                if used {
                    to.insert(m.clone());
                }
            }
        }
        to.remove(module);
        edges.insert(module.clone(), to);
    }
    edges
}

/// The layer of a file, bottom first. See `ARCHITECTURE.md`, "Layers".
fn layer(module: &Module) -> (u8, &'static str) {
    match module[0].as_str() {
        "domain" | "error" | "secret" | "trace" => (0, "domain"),
        "config" => (1, "config"),
        "audit" | "metrics" | "background" | "retry" | "telemetry" | "otel" | "clock" | "state" => {
            (2, "runtime")
        }
        "caller" | "policy" | "limits" | "credentials" | "upstream" | "runs" | "hooks" => {
            (3, "step")
        }
        "admit" | "pipeline" | "hook_answer" | "problem" | "server" | "openapi" | "preflight"
        | "tls" => (4, "http"),
        "sim" | "dev" => (5, "simulators"),
        other => panic!("src/{other} is in no layer: add it to ARCHITECTURE.md and this test"),
    }
}

fn name(m: &Module) -> String {
    format!("src/{}", m.join("/"))
}

#[test]
fn no_file_refers_to_a_layer_above_its_own() {
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        for to in tos {
            let (a, la) = layer(&from);
            let (b, lb) = layer(&to);
            if b > a {
                wrong.push(format!("{} ({la}) -> {} ({lb})", name(&from), name(&to)));
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn a_step_reaches_another_step_only_through_its_root_module() {
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        if layer(&from).0 != 3 {
            continue;
        }
        for to in tos {
            if layer(&to).0 == 3 && to[0] != from[0] && to.len() > 1 {
                wrong.push(format!("{} -> {}", name(&from), name(&to)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a step's internals used from another step:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_source_files_form_no_import_cycle() {
    let g = graph();
    // Tarjan's strongly connected components.
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        cycles: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.g[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(name(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.cycles.push(component);
            }
        }
    }
    let mut s = State {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        cycles: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    assert!(s.cycles.is_empty(), "import cycles: {:#?}", s.cycles);
}

#[test]
fn the_checker_sees_references_of_every_form() {
    let code = code_of(
        "use crate::{audit::{AuditLog, event::RunRecord}, domain::Decision};\n\
         // crate::server is only mentioned in a comment\n\
         fn f() { crate::runs::schedule::after(); super::sibling::x(); }\n\
         #[cfg(test)]\nmod tests { use crate::pipeline::Gateway; }",
    );
    let crate_paths = paths_after(&code, "crate::");
    assert!(crate_paths.contains(&vec!["audit".into(), "AuditLog".into()]));
    assert!(crate_paths.contains(&vec!["audit".into(), "event".into(), "RunRecord".into()]));
    assert!(crate_paths.contains(&vec!["domain".into(), "Decision".into()]));
    assert!(crate_paths.contains(&vec!["runs".into(), "schedule".into(), "after".into()]));
    assert!(!crate_paths
        .iter()
        .any(|p| p[0] == "server" || p[0] == "pipeline"));
    assert_eq!(
        super_paths(&code),
        vec![(1, vec!["sibling".to_string(), "x".into()])]
    );
    assert_eq!(
        super_paths("use super::super::keys::SigningKey;"),
        vec![(2, vec!["keys".to_string(), "SigningKey".into()])]
    );
    // And the graph is not empty: the pipeline reaches the steps.
    let g = graph();
    assert!(g[&vec!["pipeline".to_string()]].contains(&vec!["runs".to_string()]));
}
