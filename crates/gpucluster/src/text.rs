//! Text that came from outside (hostnames, scheduler addresses, workers' last lines) made safe to
//! print on a terminal: control characters are shown escaped, never sent raw.

/// `text` with every control character escaped (`\n`, `\u{1b}`), so input cannot move the
/// cursor, change colours or forge lines of our output.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("node-a"), "node-a");
        assert_eq!(printable("evil\u{1b}[2J\nforged"), "evil\\u{1b}[2J\\nforged");
    }
}
