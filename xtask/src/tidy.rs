//! Tidy checks, run by a plain `cargo test`: every Rust file opens with its `//!` paragraph, no
//! placeholder or ignored test lands, and the binary's modules import each other one way only.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_rust_file_says_what_it_owns_and_nothing_is_left_half_done() {
        let root = crate::root();
        let mut files = Vec::new();
        for dir in ["crates", "xtask", "benches", "tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 20, "found only {} Rust files under {}", files.len(), root.display());
        // Spelled in pieces so that this file does not trip its own check.
        let forbidden = [["todo", "!("].concat(), ["unimplemented", "!("].concat(), ["#[", "ignore]"].concat()];
        let mut problems = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.starts_with("//!") {
                problems.push(format!("{}: does not open with a `//!` paragraph", file.display()));
            }
            for bad in &forbidden {
                if text.contains(bad.as_str()) {
                    problems.push(format!("{}: contains `{bad}`", file.display()));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The modules of `crate` that `text` names: `crate::x` and the `x` of `use crate::{x, y}`.
    fn crate_modules(text: &str) -> Vec<String> {
        let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        let mut found = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of the group only: `{a, b::{c, d}}` names `a` and `b`.
                let (mut depth, mut start) = (0, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            found.push(ident(&group[i..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                found.push(ident(rest));
            }
        }
        found
    }

    #[test]
    fn the_binary_s_modules_import_each_other_one_way() {
        let src = crate::root().join("crates").join("gpucluster").join("src");
        let mut imports: Vec<(String, Vec<String>)> = Vec::new();
        for entry in std::fs::read_dir(&src).expect("crates/gpucluster/src").flatten() {
            let path = entry.path();
            let Some(name) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            // The crate root declares every module and `main.rs` is another crate: neither is a node.
            if path.extension().is_none_or(|e| e != "rs") || name == "lib" || name == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let mut names = crate_modules(&text);
            names.retain(|n| *n != name);
            names.sort();
            names.dedup();
            imports.push((name, names));
        }
        assert!(imports.iter().any(|(m, _)| m == "args"), "no args module in {}", src.display());
        // Depth-first search from every module; a module met again on the current path closes a cycle.
        fn visit(m: &str, imports: &[(String, Vec<String>)], path: &mut Vec<String>, cycles: &mut Vec<String>) {
            if let Some(at) = path.iter().position(|p| p == m) {
                cycles.push([&path[at..], &[m.to_owned()]].concat().join(" -> "));
                return;
            }
            let Some((_, next)) = imports.iter().find(|(n, _)| n == m) else { return };
            path.push(m.to_owned());
            for n in next {
                visit(n, imports, path, cycles);
            }
            path.pop();
        }
        let mut cycles = Vec::new();
        for (m, _) in &imports {
            visit(m, &imports, &mut Vec::new(), &mut cycles);
        }
        assert!(cycles.is_empty(), "import cycles in crates/gpucluster/src:\n{}", cycles.join("\n"));
        // The shared arguments sit below every command.
        let (_, args) = imports.iter().find(|(m, _)| m == "args").expect("args");
        for command in ["cli", "up", "dask", "bench_dask"] {
            assert!(!args.contains(&command.to_owned()), "args imports {command}: {args:?}");
        }
    }
}
