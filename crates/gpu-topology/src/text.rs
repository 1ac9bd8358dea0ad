//! Reading description files as text, and showing text from them safely.
//!
//! Files are read with a size bound (`limits`), so `/dev/zero` or a wrong multi-gigabyte file is
//! refused instead of filling memory; a UTF-8 byte-order mark is dropped (editors on Windows add
//! one), UTF-16 and binary files are named as such, and lines may end in `\n`, `\r\n` or a lone
//! `\r`. Text that came from a file and goes into a message passes through [`printable`], so a
//! name holding terminal escape sequences or newlines cannot rewrite the user's terminal.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use crate::TopologyError;

/// Reads `path` as UTF-8 text of at most `limit` bytes, without a leading byte-order mark.
///
/// # Errors
/// [`TopologyError::Io`] when the file cannot be read, [`TopologyError::TooLarge`] past
/// `limit`, [`TopologyError::NotText`] for UTF-16, NUL bytes or bytes that are not UTF-8.
pub fn read_text(path: &Path, limit: u64) -> Result<String, TopologyError> {
    let io = |error| TopologyError::Io { path: path.to_owned(), error };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file of exactly `limit` bytes from a longer one, and the
    // bound holds for files that never end (`/dev/zero`) or lie about their size (`/proc`).
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(TopologyError::TooLarge { path: path.to_owned(), limit });
    }
    decode(bytes).map_err(|reason| TopologyError::NotText { path: path.to_owned(), reason })
}

/// UTF-8 bytes to text: a leading byte-order mark dropped, UTF-16 and binary data refused with
/// what they look like and the line where they go wrong.
pub(crate) fn decode(mut bytes: Vec<u8>) -> Result<String, String> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("it is UTF-16 text (as Windows PowerShell writes `>` redirections); convert it to UTF-8, \
                    e.g. `iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`"
            .to_owned());
    }
    if bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        bytes.drain(..3);
    }
    let line_of = |offset: usize| bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        return Err(format!("it holds a NUL byte (line {}); is it a binary file?", line_of(nul)));
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        let at = e.valid_up_to();
        return Err(format!("byte {at} (line {}) is not UTF-8; save the file as UTF-8 text", line_of(at)));
    }
    String::from_utf8(bytes).map_err(|e| format!("byte {} is not UTF-8", e.utf8_error().valid_up_to()))
}

/// The lines of `text`, ending at `\n`, `\r\n` or a lone `\r` (old Mac line ends), without
/// their ends.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text).filter(|t| !t.is_empty());
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\n', '\r']) {
            Some(end) => {
                let skip = if current[end..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&current[end + skip..]).filter(|r| !r.is_empty());
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The first control character of `text` (a terminal escape, a newline, a NUL...), if any.
pub fn control_char(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_control())
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`), and nothing else changed.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if control_char(text).is_none() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect(),
    )
}

/// Characters [`printable`] keeps before it shortens text.
pub const PRINTABLE_CHARS: usize = 120;

/// `text` fit to print in a message: control characters escaped (`\u{1b}`, `\n`), and text
/// longer than [`PRINTABLE_CHARS`] characters cut in the middle with an ellipsis.
pub fn printable(text: &str) -> Cow<'_, str> {
    let long = text.chars().nth(PRINTABLE_CHARS).is_some();
    if !long && control_char(text).is_none() {
        return Cow::Borrowed(text);
    }
    let escape = |s: &str| -> String { escape_controls(s).into_owned() };
    if !long {
        return Cow::Owned(escape(text));
    }
    let head: String = text.chars().take(PRINTABLE_CHARS / 2).collect();
    let total = text.chars().count();
    let tail: String = text.chars().skip(total - PRINTABLE_CHARS / 2 + 1).collect();
    Cow::Owned(format!("{}…{} ({total} characters)", escape(&head), escape(&tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_of_every_kind_split_lines() {
        assert_eq!(lines("a\nb\r\nc\rd").collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(lines("a\n\nb\n").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\r\r").collect::<Vec<_>>(), ["", ""]);
    }

    #[test]
    fn byte_order_marks_utf16_and_binary_are_named() {
        assert_eq!(decode(b"\xef\xbb\xbf{}".to_vec()).expect("bom"), "{}");
        assert!(decode(b"\xff\xfeG\0P\0".to_vec()).expect_err("utf-16").contains("UTF-16"));
        assert!(decode(b"GPU 0\n\0\0".to_vec()).expect_err("nul").contains("NUL byte (line 2)"));
        assert!(decode(b"ok\n\xc3(".to_vec()).expect_err("latin").contains("byte 3 (line 2) is not UTF-8"));
    }

    #[test]
    fn printable_escapes_controls_and_shortens() {
        assert_eq!(printable("node-1"), "node-1");
        assert_eq!(printable("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        let long = "x".repeat(70_000);
        let shown = printable(&long);
        assert!(shown.chars().count() < PRINTABLE_CHARS + 30, "{shown}");
        assert!(shown.ends_with("(70000 characters)"), "{shown}");
    }
}
