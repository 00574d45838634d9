#![no_main]
//! See ghvmm_fuzz::bar_layout (fuzz/src/bar_layout.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::bar_layout::fuzz(data));
