#![no_main]
//! See ghvmm_fuzz::cli (fuzz/src/cli.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::cli::fuzz(data));
