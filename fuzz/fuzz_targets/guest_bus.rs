#![no_main]
//! See ghvmm_fuzz::guest_bus (fuzz/src/guest_bus.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::guest_bus::fuzz(data));
