//! The import graphs that tidy checks: which module of a crate, or of the Python package, names
//! which other, and the cycles among them. It reads source files and changes nothing; only the
//! tidy tests use it.
//!
//! # Rust: nodes and edges
//!
//! A crate's modules form a tree, and each module that has children of its own (the crate root
//! under `lib.rs` or `main.rs`, a folder `x/` under `x/mod.rs` or `x.rs`) is one graph. Its nodes
//! are its child modules, as its root file declares them (`mod y;`); a child with children of
//! its own is one node there, everything under it included, and its own children form the next
//! graph down, checked the same way. The root file itself is no node: it declares its children
//! and re-exports their items, and the items it defines itself (a crate's error type, the exit
//! status convention) sit below all of them.
//!
//! There is an edge `y -> z` when code of `y` (any of its files) names the module `z`: a path
//! through `crate::`, `super::` or `self::` (and `use` groups of them) that reaches `z`
//! (`use crate::z::Item`, `crate::z::f()`, `super::z`). An item reached through the root file's
//! re-exports (`crate::TopologyError`, which `error.rs` defines and `lib.rs` re-exports) is no
//! edge: the root is the crate's surface, and a module that names it depends on that surface,
//! not on whichever module is behind it. Comments and string literals are left out: a doc link
//! is no import. `super::` is read from the file, also inside an inline module such as
//! `mod tests { use super::*; }`, where the glob names no module and so adds no edge.
//!
//! # Python: nodes and edges
//!
//! The nodes are the package's `*.py` files, `__init__` included. Every import of the package's
//! own modules is an edge, wherever it is (inside functions too): `from gpucluster import x`
//! (`x` a module of the package, else an item of `__init__`), `from gpucluster.x import y`,
//! `import gpucluster.x`, `import gpucluster` (the `__init__`), `from . import x` and
//! `from .x import y`. Compiled modules (`_native`, which has a `.pyi` stub) are no nodes.
//! Docstrings, strings and comments are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One graph: the children of one module, and which of them names which.
#[derive(Debug)]
pub(crate) struct Graph {
    /// Where it is, for messages: `crates/launcher/src`, `crates/launcher/src/supervise`.
    pub(crate) name: String,
    /// The nodes.
    pub(crate) nodes: BTreeSet<String>,
    /// `from -> to`, with the first file and path that made the edge.
    pub(crate) edges: BTreeMap<(String, String), String>,
}

impl Graph {
    /// The nodes that `from` names.
    pub(crate) fn imports_of(&self, from: &str) -> Vec<&str> {
        self.edges.keys().filter(|(f, _)| f == from).map(|(_, t)| t.as_str()).collect()
    }

    /// Every elementary cycle, each once (starting at its smallest node), with the evidence for
    /// each of its edges; at most 100.
    pub(crate) fn cycles(&self) -> Vec<String> {
        let mut found = Vec::new();
        for start in &self.nodes {
            let mut path = vec![start.as_str()];
            self.cycles_from(start, &mut path, &mut found);
        }
        found
            .iter()
            .map(|cycle: &Vec<&str>| {
                let mut closed = cycle.clone();
                closed.push(cycle[0]);
                let why: Vec<String> = closed
                    .windows(2)
                    .map(|pair| {
                        let key = (pair[0].to_owned(), pair[1].to_owned());
                        format!("    {} -> {}: {}", pair[0], pair[1], self.edges.get(&key).map_or("?", String::as_str))
                    })
                    .collect();
                format!("{}: {}\n{}", self.name, closed.join(" -> "), why.join("\n"))
            })
            .collect()
    }

    fn cycles_from<'a>(&'a self, start: &'a str, path: &mut Vec<&'a str>, found: &mut Vec<Vec<&'a str>>) {
        let Some(&last) = path.last() else { return };
        for next in self.imports_of(last) {
            if found.len() >= 100 {
                return;
            }
            if next == start {
                found.push(path.clone());
            } else if next > start && !path.contains(&next) {
                path.push(next);
                self.cycles_from(start, path, found);
                path.pop();
            }
        }
    }
}

/// A module of a crate: its path from the crate root, its file, its children.
#[derive(Debug)]
struct Module {
    path: Vec<String>,
    file: PathBuf,
    children: Vec<Module>,
}

impl Module {
    /// Reads the module tree under `file`, the module at `path`.
    fn read(file: &Path, path: Vec<String>) -> Module {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut module = Module { path, file: file.to_owned(), children: Vec::new() };
        let dir = module.dir();
        let beside = file.parent().unwrap_or(Path::new(".")).to_owned();
        module.children = declared_modules(&rust_code(&text), &text)
            .into_iter()
            .filter_map(|(name, path)| {
                // `#[path = "x_tests.rs"]` is relative to the declaring file's folder.
                let candidates = match path {
                    Some(path) => vec![beside.join(path)],
                    None => vec![dir.join(format!("{name}.rs")), dir.join(&name).join("mod.rs")],
                };
                let file = candidates.into_iter().find(|f| f.is_file())?;
                let mut child = module.path.clone();
                child.push(name);
                Some(Module::read(&file, child))
            })
            .collect();
        module
    }

    /// This module and its descendants.
    fn all(&self) -> Vec<&Module> {
        let mut all = vec![self];
        for child in &self.children {
            all.extend(child.all());
        }
        all
    }

    /// The folder its children's files are in: beside a root file, in `x/` for `x.rs`.
    fn dir(&self) -> PathBuf {
        let parent = self.file.parent().unwrap_or(Path::new("."));
        if self.file.file_name().is_some_and(|n| n == "lib.rs" || n == "main.rs" || n == "mod.rs") {
            parent.to_owned()
        } else {
            parent.join(self.file.file_stem().unwrap_or_default())
        }
    }

    /// The graph of this module's children, and those of every descendant with children.
    fn graphs(&self, root: &Path, out: &mut Vec<Graph>) {
        if self.children.is_empty() {
            return;
        }
        let depth = self.path.len();
        let nodes: BTreeSet<String> = self.children.iter().map(|c| c.path[depth].clone()).collect();
        let mut edges = BTreeMap::new();
        for child in &self.children {
            let from = &child.path[depth];
            for module in child.all() {
                let file = &module.file;
                let code = rust_code(&std::fs::read_to_string(file).unwrap_or_default());
                for path in named_paths(&code, &module.path) {
                    if path.len() <= depth || path[..depth] != self.path[..] {
                        continue;
                    }
                    let to = &path[depth];
                    if nodes.contains(to) && to != from {
                        let shown = file.strip_prefix(root).unwrap_or(file).display();
                        let evidence = format!("{shown} names {}", path.join("::"));
                        edges.entry((from.clone(), to.clone())).or_insert(evidence);
                    }
                }
            }
        }
        let dir = self.dir();
        let name = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
        out.push(Graph { name, nodes, edges });
        for child in &self.children {
            child.graphs(root, out);
        }
    }
}

/// The graphs of every crate of the workspace at `root`: each library, binary and test-binary
/// root with modules.
pub(crate) fn rust_graphs(root: &Path) -> Vec<Graph> {
    let mut packages: Vec<PathBuf> =
        std::fs::read_dir(root.join("crates")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    packages.extend(["xtask", "benches", "tests"].map(|p| root.join(p)));
    packages.sort();
    let mut roots = Vec::new();
    for package in packages {
        roots.extend(["src/lib.rs", "src/main.rs", "lib.rs", "it/main.rs"].map(|f| package.join(f)));
        let bins = std::fs::read_dir(package.join("src").join("bin")).into_iter().flatten().flatten();
        roots.extend(bins.map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rs")));
    }
    let mut graphs = Vec::new();
    for file in roots.into_iter().filter(|f| f.is_file()) {
        Module::read(&file, Vec::new()).graphs(root, &mut graphs);
    }
    graphs
}

/// `code` without comments, and with every string and character literal emptied.
fn rust_code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some((start, hashes)) = raw_string_at(&chars, i) {
            // A raw string: `r"…"`, `r#"…"#`, `br"…"`.
            i = start + hashes + 1;
            while i < chars.len()
                && !(chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes)
            {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal (else a lifetime, kept).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Where a raw string starts at `i` (`r"`, `r#"`, `br"`): the position after its `r` and how
/// many `#` it has.
fn raw_string_at(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let start = match (chars[i], chars.get(i + 1)) {
        ('r', _) => i + 1,
        ('b', Some('r')) => i + 2,
        _ => return None,
    };
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    let hashes = chars[start..].iter().take_while(|&&h| h == '#').count();
    (chars.get(start + hashes) == Some(&'"')).then_some((start, hashes))
}

/// The modules that `code` (the file's `text` without comments and strings) declares from
/// files: `mod x;`, `pub(crate) mod x;` (not inline ones), each with the file its
/// `#[path = "..."]` attribute names, if it has one.
fn declared_modules(code: &str, text: &str) -> Vec<(String, Option<String>)> {
    const PATH: &str = "#[path = \"";
    // The attributes' values, in order: `code` has them emptied.
    let mut values = text.match_indices(PATH).filter_map(|(at, _)| {
        let rest = &text[at + PATH.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    });
    let mut events: Vec<(usize, Option<String>)> = code.match_indices("#[path = ").map(|(at, _)| (at, None)).collect();
    for (at, _) in code.match_indices("mod ") {
        if at > 0 && code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[at + 4..].trim_start();
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && rest[name.len()..].trim_start().starts_with(';') {
            events.push((at, Some(name)));
        }
    }
    events.sort();
    // A path attribute belongs to the declaration after it.
    let mut found = Vec::new();
    let mut path = None;
    for (_, event) in events {
        match event {
            None => path = values.next(),
            Some(name) => found.push((name, path.take())),
        }
    }
    found
}

/// Every path through `crate::`, `super::` or `self::` that `code`, the module at `module`,
/// names, made absolute (module names from the crate root, then an item or `*`). `use` groups
/// give one path per member: `crate::{a, b::{c, d}}` names `a`, `b::c` and `b::d`.
fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let keywords: Vec<Vec<char>> = ["crate::", "super::", "self::"].iter().map(|k| k.chars().collect()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let before = if i == 0 { ' ' } else { chars[i - 1] };
        match keywords.iter().find(|k| chars[i..].starts_with(k)) {
            Some(keyword) if !(before.is_alphanumeric() || before == '_' || before == ':') => {
                let word: String = keyword[..keyword.len() - 2].iter().collect();
                let mut at = i + word.len();
                let mut paths = Vec::new();
                read_tree(&chars, &mut at, vec![word], &mut paths);
                out.extend(paths.into_iter().filter_map(|p| absolute(&p, module)));
                i = at.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Reads the rest of a path or use tree after its first segment, which `path` holds.
fn read_tree(chars: &[char], at: &mut usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        let save = *at;
        skip_space(chars, at);
        if !(chars.get(*at) == Some(&':') && chars.get(*at + 1) == Some(&':')) {
            *at = save;
            out.push(path);
            return;
        }
        *at += 2;
        skip_space(chars, at);
        match chars.get(*at) {
            Some('{') => {
                *at += 1;
                loop {
                    skip_space(chars, at);
                    match chars.get(*at) {
                        None => return,
                        Some('}') => {
                            *at += 1;
                            return;
                        }
                        Some(',') => *at += 1,
                        Some('*') => {
                            *at += 1;
                            out.push([&path[..], &["*".to_owned()]].concat());
                        }
                        Some(_) => {
                            let name = ident_at(chars, at);
                            if name.is_empty() {
                                *at += 1;
                                continue;
                            }
                            if name == "as" {
                                // An alias: `a::B as C`.
                                skip_space(chars, at);
                                ident_at(chars, at);
                                continue;
                            }
                            let sub = if name == "self" { path.clone() } else { [&path[..], &[name]].concat() };
                            read_tree(chars, at, sub, out);
                        }
                    }
                }
            }
            Some('*') => {
                *at += 1;
                path.push("*".to_owned());
                out.push(path);
                return;
            }
            _ => {
                let name = ident_at(chars, at);
                if name.is_empty() {
                    // A turbofish or the like: the path ends here.
                    out.push(path);
                    return;
                }
                path.push(name);
            }
        }
    }
}

fn skip_space(chars: &[char], at: &mut usize) {
    while chars.get(*at).is_some_and(|c| c.is_whitespace()) {
        *at += 1;
    }
}

fn ident_at(chars: &[char], at: &mut usize) -> String {
    let start = *at;
    while chars.get(*at).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
        *at += 1;
    }
    chars[start..*at].iter().collect()
}

/// `path` (starting with `crate`, `super` or `self`) from the crate root, for code of `module`.
fn absolute(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        _ => module.to_vec(),
    };
    let mut rest = path;
    if rest[0] == "crate" || rest[0] == "self" {
        rest = &rest[1..];
    }
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    Some([&base[..], rest].concat())
}

/// The graph of the Python package in `dir` (`gpucluster/*.py`), named `package`.
pub(crate) fn python_graph(dir: &Path, package: &str, root: &Path) -> Graph {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let nodes: BTreeSet<String> = files.iter().map(|p| stem(p)).collect();
    // A name of the package: one of its modules, a compiled module (no node), or an `__init__` item.
    let target = |name: &str| -> Option<String> {
        if nodes.contains(name) {
            Some(name.to_owned())
        } else if dir.join(format!("{name}.pyi")).exists() {
            None
        } else {
            Some("__init__".to_owned())
        }
    };
    let mut edges = BTreeMap::new();
    for file in &files {
        let from = stem(file);
        let code = python_code(&std::fs::read_to_string(file).unwrap_or_default());
        for statement in python_statements(&code) {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let mut named: Vec<Option<String>> = Vec::new();
            match words.as_slice() {
                ["from", module, "import", names @ ..] => {
                    let names = names.join(" ");
                    let names: Vec<&str> = names
                        .split(',')
                        .filter_map(|n| n.trim().trim_matches(['(', ')']).split_whitespace().next())
                        .collect();
                    if *module == package || *module == "." {
                        named.extend(names.iter().map(|n| target(n)));
                    } else if let Some(sub) =
                        module.strip_prefix(&format!("{package}.")).or_else(|| module.strip_prefix('.'))
                    {
                        // The module named first: `gpucluster.x.y` and `.x` import `x`.
                        let first = sub.split('.').next().unwrap_or(sub);
                        if !first.is_empty() {
                            named.push(target(first));
                        }
                    }
                }
                ["import", modules @ ..] => {
                    for module in modules.join(" ").split(',') {
                        let module = module.split_whitespace().next().unwrap_or("");
                        if module == package {
                            named.push(Some("__init__".to_owned()));
                        } else if let Some(sub) = module.strip_prefix(&format!("{package}.")) {
                            named.push(target(sub.split('.').next().unwrap_or(sub)));
                        }
                    }
                }
                _ => {}
            }
            for to in named.into_iter().flatten().filter(|to| *to != from) {
                let shown = file.strip_prefix(root).unwrap_or(file).display();
                edges.entry((from.clone(), to)).or_insert_with(|| format!("{shown}: {statement}"));
            }
        }
    }
    let name = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    Graph { name, nodes, edges }
}

/// Python `text` without comments, and with every string (docstrings included) emptied.
fn python_code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' {
            let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
            i += if triple { 3 } else { 1 };
            while i < chars.len() {
                if chars[i] == '\\' {
                    i += 2;
                } else if chars[i] == c && (!triple || (chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c))) {
                    i += if triple { 3 } else { 1 };
                    break;
                } else if chars[i] == '\n' && !triple {
                    break;
                } else {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
            out.push_str("''");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The import statements of Python `code`, each on one line (a parenthesised list joined), from
/// wherever they are: the top level, a function, a `try`, after a `;`.
fn python_statements(code: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        for part in line.split(';') {
            let part = part.trim();
            if !(part.starts_with("from ") || part.starts_with("import ")) {
                continue;
            }
            let mut statement = part.to_owned();
            // `from x import (a,\n b)` and `\` continuations.
            while (statement.contains('(') && !statement.contains(')')) || statement.ends_with('\\') {
                let Some(more) = lines.next() else { break };
                statement = format!("{} {}", statement.trim_end_matches('\\'), more.trim());
            }
            statements.push(statement);
        }
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_through_groups_and_made_absolute() {
        let code = rust_code(concat!(
            "use crate::{a, b::{c, D as E}, f::*};\n",
            "// crate::commented\n/* crate::block */\n",
            "let s = \"crate::quoted\"; let q = '\"'; let r = r#\"crate::raw\"#;\n",
            "fn f<'l>(x: &'l str) { super::g::h(); self::i::J; crate::k::<u8>(); }\n",
        ));
        let paths = named_paths(&code, &["x".to_owned(), "y".to_owned()]);
        let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
        assert_eq!(shown, ["a", "b::c", "b::D", "f::*", "x::g::h", "x::y::i::J", "k"]);
    }

    #[test]
    fn modules_are_declared_by_mod_lines_with_their_path_attributes() {
        let text = concat!(
            "mod a;\npub(crate) mod b;\n#[cfg(test)]\n#[path = \"a_tests.rs\"]\nmod tests;\n",
            "mod inline {\n}\n// mod commented;\n",
        );
        let declared = declared_modules(&rust_code(text), text);
        let shown: Vec<(&str, Option<&str>)> = declared.iter().map(|(n, p)| (n.as_str(), p.as_deref())).collect();
        assert_eq!(shown, [("a", None), ("b", None), ("tests", Some("a_tests.rs"))]);
    }

    #[test]
    fn python_imports_outside_strings_and_comments_are_statements() {
        let code = python_code(concat!(
            "\"\"\"from gpucluster import doc\"\"\"\n",
            "import os  # from gpucluster import c\n",
            "x = 'from gpucluster import s'\n",
            "def f():\n    from gpucluster import (a,\n        b)\n",
        ));
        assert_eq!(python_statements(&code), ["import os", "from gpucluster import (a, b)"]);
    }

    #[test]
    fn python_edges_follow_every_form_of_import_and_cycles_are_reported() {
        let dir = std::env::temp_dir().join(format!("xtask-imports-{}", std::process::id()));
        let package = dir.join("pkg");
        std::fs::create_dir_all(&package).expect("dir");
        for (file, text) in [
            ("__init__.py", "from pkg._native import thing\n"),
            ("_native.pyi", ""),
            ("a.py", "from . import b\nimport pkg.c as c\n"),
            ("b.py", "from .c import x\nfrom pkg import _native, helper\n"),
            ("c.py", "def f():\n    import pkg\n    from pkg.a import y\n"),
        ] {
            std::fs::write(package.join(file), text).expect("write");
        }
        let graph = python_graph(&package, "pkg", &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let edges: Vec<String> = graph.edges.keys().map(|(f, t)| format!("{f}->{t}")).collect();
        assert_eq!(edges, ["a->b", "a->c", "b->__init__", "b->c", "c->__init__", "c->a"]);
        let cycles = graph.cycles();
        let first_lines: Vec<&str> = cycles.iter().filter_map(|c| c.lines().next()).collect();
        assert_eq!(first_lines, ["pkg: a -> b -> c -> a", "pkg: a -> c -> a"]);
    }
}
