//! ghvmm's log lines: one record is one line, whatever it quotes.
//!
//! Log messages quote what others chose: a device path or id from an API request, a socket
//! path from the command line, a message from the kernel or a vfio-user server. A newline
//! there would let a client forge what looks like a second record, and an escape sequence
//! would reach the operator's terminal. So every control character in a message is shown
//! escaped (`\n`, `\r`, `\t`, `\x1b`, `\u{85}`).

use std::io::Write as _;

use pci::escape_controls;

/// The text of one log line (without its timestamp): level, target and the escaped message.
pub fn line(record: &log::Record<'_>) -> String {
    let message = record.args().to_string();
    format!(
        "{:<5} {}] {}",
        record.level(),
        record.target(),
        escape_controls(&message)
    )
}

/// Installs the logger: `RUST_LOG` if set, else `default_filter`; timestamps in
/// milliseconds, one line per record; to `file` (`--log-file`) if given, else stderr.
pub fn init(default_filter: &str, file: Option<std::fs::File>) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    builder.format(|buf, record| {
        let ts = buf.timestamp_millis();
        writeln!(buf, "[{ts} {}", line(record))
    });
    if let Some(file) = file {
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn logged(message: std::fmt::Arguments<'_>) -> String {
        line(
            &log::Record::builder()
                .args(message)
                .level(log::Level::Info)
                .target("vmm::hotplug")
                .build(),
        )
    }

    #[test]
    fn a_record_quoting_control_characters_stays_one_line() {
        let path = "/x\n[2026-12-06T00:00:00Z ERROR vmm] forged\r\x1b[2J\u{85}end\ttab";
        let l = logged(format_args!("{path}: attached as gpu0"));
        assert!(!l.chars().any(char::is_control), "{l:?}");
        assert_eq!(
            l,
            "INFO  vmm::hotplug] /x\\n[2026-12-06T00:00:00Z ERROR vmm] forged\\r\\x1b[2J\\u{85}end\\ttab: attached as gpu0"
        );
        assert_eq!(
            logged(format_args!("plain é")),
            "INFO  vmm::hotplug] plain é"
        );
        assert!(matches!(escape_controls("plain"), Cow::Borrowed("plain")));
    }
}
