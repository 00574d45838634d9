#![no_main]
//! See ghvmm_fuzz::acpi_tables (fuzz/src/acpi_tables.rs) for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ghvmm_fuzz::acpi_tables::fuzz(data));
