//! The server's log lines: one record is one line. Messages quote the command line's paths
//! and what the client or the host driver said; a newline there would look like a second
//! record and an escape sequence would reach the operator's terminal, so control characters
//! are written escaped (`\n`, `\x1b`: `pci::escape_controls`), like ghvmm's own logger.

use std::io::Write as _;

use pci::escape_controls;

/// Installs the logger: `RUST_LOG` if set, else `default_filter`; timestamps in
/// milliseconds, one line per record.
pub fn init(default_filter: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .format(|buf, record| {
            let ts = buf.timestamp_millis();
            let message = record.args().to_string();
            let message = escape_controls(&message);
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
            "/run/a\\n[x ERROR y] forged\\r\\x1b[2J\\tz é"
        );
    }
}
