//! Guest console input: when `--serial tty` and stdin is a terminal, stdin is put in raw mode
//! and every byte goes to COM1's receive FIFO. The original terminal settings come back when
//! the guard drops.
//!
//! The input thread reads fd 0 directly rather than through `std::io::stdin()`: std's handle
//! holds a lock for the whole of a blocking read, and restoring the terminal on exit would then
//! wait forever for a key press.

use std::io::IsTerminal;
use std::sync::Arc;

use parking_lot::Mutex;

use devices::Serial;

use crate::vm::exit::ExitState;
use crate::vm::threads::spawn_guarded;

const STDIN: libc::c_int = 0;

/// The current VM's COM1, for the input thread that outlives each VM of a reboot loop; None
/// while the VM is being rebuilt (input typed then is dropped, as a real UART would).
pub type SerialSlot = Arc<Mutex<Option<Arc<Mutex<Serial>>>>>;

pub struct StdinForwarder {
    serial: SerialSlot,
    /// Ended with a fault if the input thread panics.
    exit: Arc<ExitState>,
}

/// Restores the terminal settings saved before raw mode.
pub struct RawModeGuard {
    saved: libc::termios,
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads a termios we own; fd 0 stays open for the process lifetime.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &self.saved) };
    }
}

fn enter_raw_mode() -> std::io::Result<RawModeGuard> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails without touching it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes only the termios we pass, which outlives the call.
    if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw only edits the struct we pass.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so our own log lines still start at column 0.
    raw.c_oflag |= libc::OPOST;
    // SAFETY: tcsetattr only reads the termios we pass, which outlives the call.
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(RawModeGuard { saved })
}

impl StdinForwarder {
    pub fn new(serial: SerialSlot, exit: Arc<ExitState>) -> Self {
        StdinForwarder { serial, exit }
    }

    /// Starts forwarding if stdin is a terminal; returns the guard that restores it.
    pub fn start(self) -> Option<RawModeGuard> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let guard = match enter_raw_mode() {
            Ok(g) => g,
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode, guest input disabled: {e}");
                return None;
            }
        };
        let (serial, exit) = (self.serial, self.exit.clone());
        let spawned = spawn_guarded("stdin", self.exit, move || {
            if crate::seccomp::enter_or_end(crate::seccomp::ThreadKind::Stdin, &exit) {
                forward(serial)
            }
        });
        match spawned {
            Ok(_) => Some(guard),
            Err(e) => {
                log::warn!("cannot start the stdin thread, guest input disabled: {e}");
                None
            }
        }
    }
}

fn forward(serial: SerialSlot) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a buffer we own, at most its length.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return,
            n if n > 0 => {
                if let Some(com1) = serial.lock().as_ref() {
                    com1.lock().enqueue_input(&buf[..n as usize]);
                }
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::warn!("reading stdin: {e}; guest input stops");
                    return;
                }
            }
        }
    }
}
