//! Text that others chose (a device path, a server's message), made safe to print on one
//! line: here because ghvmm and ghvmm-vfio-user both need it and this is the one crate
//! below both that does no I/O.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with its control characters written as Rust-style escapes (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{85}`); borrowed when it has none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_character_is_escaped_and_nothing_else() {
        assert_eq!(
            escape_controls("a\n\r\t\x1b[2J\x7f\u{85}\0 é"),
            "a\\n\\r\\t\\x1b[2J\\x7f\\u{85}\\x00 é"
        );
        assert!(matches!(
            escape_controls("plain é"),
            Cow::Borrowed("plain é")
        ));
    }
}
