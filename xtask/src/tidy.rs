//! Tidy checks, run by a plain `cargo test`: every Rust file opens with its `//!` paragraph, and
//! no placeholder or ignored test lands.

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
}
