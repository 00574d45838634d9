#![no_main]
//! See ghvmm_fuzz::api (fuzz/src/api.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::api::fuzz(data));
