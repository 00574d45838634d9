#![no_main]
//! See ghvmm_fuzz::vfio_user_backend (fuzz/src/vfio_user_backend.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::vfio_user_backend::fuzz(data));
