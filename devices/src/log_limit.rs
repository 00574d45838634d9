//! Rate limiting of the log lines a guest can trigger (writes to read-only or unknown
//! registers, BAR moves, interrupt set-ups): a guest doing it in a loop must not flood
//! ghvmm's log (and the disk or terminal behind it). Each call site, or each device's call
//! site, has a `LogLimit`: at most `MAX_LINES` lines per `WINDOW`; the first line of the next
//! window is preceded by one "N similar messages suppressed" line.
//!
//! `log_limited!(limit, level, ...)` logs through a limiter the caller holds (one per device);
//! `log_limited_here!(level, ...)` through one of its own per call site.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines a call site may log per window.
pub const MAX_LINES: u32 = 10;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Window {
    /// When the current window started; None before the first line.
    start: Option<Instant>,
    lines: u32,
    /// Lines dropped in the current window.
    suppressed: u64,
}

/// One call site's budget of log lines.
#[derive(Default)]
pub struct LogLimit(Mutex<Window>);

/// What `LogLimit::admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log the line, after one saying that this many were suppressed (when not 0).
    Log {
        suppressed_before: u64,
    },
    Suppress,
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit(Mutex::new(Window {
            start: None,
            lines: 0,
            suppressed: 0,
        }))
    }

    /// Whether a line may be logged at `now` (the caller's clock: `Instant::now()`, or a
    /// test's).
    pub fn admit(&self, now: Instant) -> Admit {
        let mut w = self.0.lock();
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            let suppressed_before = w.suppressed;
            *w = Window {
                start: Some(now),
                lines: 1,
                suppressed: 0,
            };
            return Admit::Log { suppressed_before };
        }
        if w.lines < MAX_LINES {
            w.lines += 1;
            return Admit::Log {
                suppressed_before: 0,
            };
        }
        w.suppressed += 1;
        Admit::Suppress
    }
}

/// `log::log!` through the `LogLimit` `$limit` (e.g. a device's own).
#[macro_export]
macro_rules! log_limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {{
        let level: ::log::Level = $level;
        if ::log::log_enabled!(level) {
            if let $crate::log_limit::Admit::Log { suppressed_before } =
                $crate::log_limit::LogLimit::admit(&$limit, ::std::time::Instant::now())
            {
                if suppressed_before > 0 {
                    ::log::log!(level, "{} similar messages suppressed", suppressed_before);
                }
                ::log::log!(level, $($arg)+);
            }
        }
    }};
}

/// `log::log!` through a `LogLimit` of this call site's own.
#[macro_export]
macro_rules! log_limited_here {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        $crate::log_limited!(LIMIT, $level, $($arg)+)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Admit = Admit::Log {
        suppressed_before: 0,
    };

    #[test]
    fn ten_lines_per_window_then_one_line_for_the_rest() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for i in 0..10 {
            assert_eq!(limit.admit(at(i)), LOG, "line {i}");
        }
        for i in 10..1000 {
            assert_eq!(limit.admit(at(i)), Admit::Suppress, "line {i}");
        }
        // Still the same window just before it ends.
        assert_eq!(limit.admit(at(9_999)), Admit::Suppress);
        // The next window: the count of the suppressed ones first.
        assert_eq!(
            limit.admit(at(10_000)),
            Admit::Log {
                suppressed_before: 991
            }
        );
        assert_eq!(limit.admit(at(10_001)), LOG);
        // A quiet window later: nothing to report.
        assert_eq!(limit.admit(at(60_000)), LOG);
    }

    #[test]
    fn limits_are_independent_and_a_clock_going_back_is_harmless() {
        let (a, b) = (LogLimit::new(), LogLimit::new());
        let t0 = Instant::now() + Duration::from_secs(100);
        for _ in 0..10 {
            a.admit(t0);
        }
        assert_eq!(a.admit(t0), Admit::Suppress);
        assert_eq!(b.admit(t0), LOG);
        assert_eq!(a.admit(t0 - Duration::from_secs(50)), Admit::Suppress);
    }

    /// Records the lines logged on each thread (the tests of this crate run in parallel).
    struct Capture(Mutex<Vec<(std::thread::ThreadId, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let line = record.args().to_string();
            self.0.lock().push((std::thread::current().id(), line));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    /// The lines this thread logged while `f` ran.
    fn logged_by(f: impl FnOnce()) -> Vec<String> {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURE).unwrap();
            log::set_max_level(log::LevelFilter::Trace);
        });
        let me = std::thread::current().id();
        CAPTURE.0.lock().retain(|(t, _)| *t != me);
        f();
        CAPTURE
            .0
            .lock()
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn a_guest_writing_an_ignored_register_in_a_loop_logs_ten_lines() {
        use crate::BusDevice;
        let mut ged = crate::Ged::new(
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        );
        let lines = logged_by(|| {
            for _ in 0..1000 {
                ged.write(0, 0, &[1]);
            }
        });
        // The call site's budget is shared with the GED's own tests, which may have taken
        // a line of this window.
        let shown = &lines[..lines.len().min(12)];
        assert!(
            !lines.is_empty() && lines.len() <= MAX_LINES as usize,
            "{} lines: {shown:?}",
            lines.len()
        );
        assert!(lines.iter().all(|l| l.starts_with("GED: ignored write")));
    }
}
