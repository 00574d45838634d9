#![no_main]
//! See ghvmm_fuzz::config_space (fuzz/src/config_space.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::config_space::fuzz(data));
