//! Plain aligned text tables: the one layout every command's human output uses.
//!
//! Cells are printed as a terminal shows them: control characters escaped (a name from a file
//! may hold terminal escape sequences or newlines), and cells of padded columns longer than
//! [`MAX_CELL_CHARS`] shortened in the middle with an ellipsis, so one odd name cannot widen every
//! line of a table. The last cell of a row pads nothing and is printed whole, as is all JSON.

use std::borrow::Cow;
use std::io::{self, Write};

/// Longest cell, in characters. Device names (at most 66 characters, legacy MIG names) and
/// worker names of hosts with ordinary names fit; a 200-character GPU name does not.
pub(crate) const MAX_CELL_CHARS: usize = 80;

/// Rows of cells; the first row is the header. Columns are left-aligned and padded to the
/// widest cell; the last column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn write(&self, out: &mut dyn Write, indent: &str) -> io::Result<()> {
        let rows: Vec<Vec<Cow<'_, str>>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, c)| if i + 1 < r.len() { cell(c, MAX_CELL_CHARS) } else { escape(c) })
                    .collect()
            })
            .collect();
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::from(indent);
            for (c, text) in row.iter().enumerate() {
                line.push_str(text);
                if c + 1 < row.len() {
                    // Padded by hand: `format!("{:<width$}")` panics for widths over 65,535.
                    let pad = widths[c] - text.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `text` as a table shows it: control characters escaped, at most `max` characters, cut in the
/// middle (where names differ least: `very-long-host…-gpu3-mig2`).
pub(crate) fn cell(text: &str, max: usize) -> Cow<'_, str> {
    let escaped = escape(text);
    let count = escaped.chars().count();
    if count <= max {
        return escaped;
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut short: String = escaped.chars().take(head).collect();
    short.push('…');
    short.extend(escaped.chars().skip(count - tail));
    Cow::Owned(short)
}

/// Control characters as Rust writes them in strings (`\u{1b}`, `\n`); other text unchanged.
pub(crate) use gpu_topology::text::escape_controls as escape;

#[cfg(test)]
mod tests {
    use super::*;

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out, "").expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_cell_of_70000_characters_is_shortened_not_a_panic() {
        let mut t = Table::new(["NAME", "MEMORY"]);
        t.row(vec!["X".repeat(70_000), "80 GiB".into()]);
        let text = render(&t);
        let line = text.lines().nth(1).expect("row");
        assert_eq!(line.chars().count(), MAX_CELL_CHARS + 2 + "80 GiB".len(), "{line}");
        assert!(line.contains('…'), "{line}");
    }

    #[test]
    fn control_characters_are_escaped_and_columns_stay_aligned() {
        let mut t = Table::new(["HOST", "GPUS"]);
        t.row(vec!["evil\u{1b}[2J\nhost".into(), "8".into()]);
        t.row(vec!["ok".into(), "1".into()]);
        let text = render(&t);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("evil\\u{1b}[2J\\nhost  8"), "{text}");
        let widths: Vec<usize> = text.lines().skip(1).map(|l| l.rfind(' ').expect("two cells")).collect();
        assert_eq!(widths[0], widths[1], "{text}");
    }

    #[test]
    fn long_names_keep_both_ends() {
        let name = format!("{}-gpu3-mig2", "h".repeat(300));
        let shown = cell(&name, MAX_CELL_CHARS);
        assert_eq!(shown.chars().count(), MAX_CELL_CHARS);
        assert!(shown.starts_with("hhh") && shown.ends_with("-gpu3-mig2"), "{shown}");
    }
}
