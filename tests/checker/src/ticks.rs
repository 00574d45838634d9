//! `ghvmm.mode=ticks`: after the standard checks the guest keeps vCPU 0 busy and prints
//! `@@TICK <n>` every `TICK` of its own time, forever. L2 pauses the VM and sees the
//! counter (and the console) stop, and the vCPU threads use no CPU; after a resume it sees
//! the counter go on. The busy loop, rather than a sleep, makes vCPU 0 use CPU time while
//! it runs, so that a thread's CPU time standing still while paused is not vacuous.

use std::io::Write;
use std::time::{Duration, Instant};

/// Guest time between two ticks.
const TICK: Duration = Duration::from_millis(100);

pub fn forever() -> ! {
    let mut out = std::io::stdout();
    let mut n: u64 = 0;
    loop {
        let start = Instant::now();
        while start.elapsed() < TICK {
            std::hint::spin_loop();
        }
        n += 1;
        let _ = writeln!(out, "@@TICK {n}");
        let _ = out.flush();
    }
}
