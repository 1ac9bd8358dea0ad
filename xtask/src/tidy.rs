//! Tidy checks, run by a plain `cargo test`: every Rust file opens with its `//!` paragraph, no
//! placeholder or ignored test lands, no crate's modules (nor the Python package's) import each
//! other in a circle, and the binary's shared modules sit below its commands.

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
        // Module folders are walked too (`supervise/`, `sim/`), not only each crate's top level.
        assert!(files.iter().any(|f| f.ends_with("mod.rs")), "no module folder found under {}", root.display());
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

    /// No crate of the workspace has modules that import each other in a circle, nor does the
    /// Python package: a cycle means neither module can be read, tested or moved without the
    /// other. What a node and an edge are is `crate::imports`'s documentation. Every cycle found
    /// is reported, with the file and path behind each of its edges.
    #[test]
    fn no_crate_and_not_the_python_package_imports_in_a_circle() {
        let root = crate::root();
        let graphs = crate::imports::rust_graphs(&root);
        // The walk must reach the crates, their module folders and the tests' library, and see
        // imports written each way: a `use` group, a path in code, `super::`, `from x import`.
        let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
        let package = root.join("crates/gpucluster-py/python/gpucluster");
        let python = crate::imports::python_graph(&package, "gpucluster", &root);
        for (graph, from, to) in [
            ("crates/launcher/src", "supervise", "guard"),
            ("crates/launcher/src/supervise", "job", "spawn"),
            ("crates/launcher/src/supervise", "config", "spec"),
            ("crates/gpu-topology/src", "source", "sim"),
            ("tests", "scenarios", "process"),
            ("crates/gpucluster-py/python/gpucluster", "bench", "sim"),
        ] {
            let found = graphs
                .iter()
                .chain([&python])
                .any(|g| g.name == graph && g.edges.contains_key(&(from.to_owned(), to.to_owned())));
            assert!(found, "no import {from} -> {to} found in {graph} (graphs: {names:?})");
        }
        let cycles: Vec<String> = graphs.iter().chain([&python]).flat_map(crate::imports::Graph::cycles).collect();
        assert!(cycles.is_empty(), "{} import cycle(s):\n{}", cycles.len(), cycles.join("\n"));
    }

    /// The binary's shared layer sits below its commands: `table` and `logging` import no other
    /// module of the binary, and `args` (the arguments several commands share) imports only
    /// those two. Every other module is a command (or belongs to one), whatever its name, so a
    /// new command is covered without being listed here.
    #[test]
    fn the_binary_s_shared_modules_sit_below_its_commands() {
        let root = crate::root();
        let graphs = crate::imports::rust_graphs(&root);
        let binary =
            graphs.iter().find(|g| g.name == "crates/gpucluster/src").expect("the graph of crates/gpucluster/src");
        const HELPERS: [&str; 2] = ["table", "logging"];
        let commands: Vec<&str> =
            binary.nodes.iter().map(String::as_str).filter(|m| *m != "args" && !HELPERS.contains(m)).collect();
        assert!(commands.contains(&"cli") && commands.contains(&"up"), "commands found: {commands:?}");
        let mut problems = Vec::new();
        for helper in HELPERS {
            assert!(binary.nodes.contains(helper), "no {helper} module in {}", binary.name);
            for imported in binary.imports_of(helper) {
                problems.push(format!(
                    "{helper} imports {imported}: {}",
                    binary.edges[&(helper.to_owned(), imported.to_owned())]
                ));
            }
        }
        assert!(binary.nodes.contains("args"), "no args module in {}", binary.name);
        for imported in binary.imports_of("args").into_iter().filter(|m| !HELPERS.contains(m)) {
            problems.push(format!(
                "args imports {imported}, a command module: {} (move what it needs into args or below it)",
                binary.edges[&("args".to_owned(), imported.to_owned())]
            ));
        }
        assert!(
            problems.is_empty(),
            "the shared modules must not import the commands ({}):\n{}",
            commands.join(", "),
            problems.join("\n")
        );
    }
}
