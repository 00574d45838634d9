//! The server's log lines: one record is one line. Messages quote the command line's paths
//! and what the client or the host driver said; a newline there would look like a second
//! record and an escape sequence would reach the operator's terminal, so control characters
//! are written escaped (`\n`, `\u{1b}`), like ghvmm's own logger.

use std::io::Write as _;

/// `s` with every control character escaped.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Installs the logger: `RUST_LOG` if set, else `default_filter`; timestamps in
/// milliseconds, one line per record.
pub fn init(default_filter: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .format(|buf, record| {
            let ts = buf.timestamp_millis();
            let message = escape_controls(&record.args().to_string());
            writeln!(
                buf,
                "[{ts} {:<5} {}] {message}",
                record.level(),
                record.target()
            )
        })
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("/run/a\n[x ERROR y] forged\r\x1b[2J\tz é"),
            "/run/a\\n[x ERROR y] forged\\r\\u{1b}[2J\\tz é"
        );
    }
}
