//! Guest console input: when `--serial tty` and stdin is a terminal, stdin is put in raw mode
//! and every byte goes to COM1's receive FIFO. The terminal is restored when the guard drops.

use std::io::{IsTerminal, Read};
use std::sync::{Arc, Mutex};

use devices::Serial;
use vmm_sys_util::terminal::Terminal;

pub struct StdinForwarder {
    serial: Arc<Mutex<Serial>>,
}

/// Restores canonical mode on drop.
pub struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

impl StdinForwarder {
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        StdinForwarder { serial }
    }

    /// Starts forwarding if stdin is a terminal; returns the guard that restores it.
    pub fn start(self) -> Option<RawModeGuard> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        if let Err(e) = stdin.lock().set_raw_mode() {
            log::warn!("cannot put the terminal in raw mode, guest input disabled: {e}");
            return None;
        }
        let serial = self.serial;
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match std::io::stdin().lock().read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => serial
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .enqueue_input(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("reading stdin: {e}; guest input stops");
                            return;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(RawModeGuard),
            Err(e) => {
                let _ = std::io::stdin().lock().set_canon_mode();
                log::warn!("cannot start the stdin thread, guest input disabled: {e}");
                None
            }
        }
    }
}
