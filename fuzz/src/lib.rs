//! The fuzz targets' code, shared by the libFuzzer binaries in fuzz_targets/ (one line each)
//! and by this crate's tests, which run every seed through the same checks without libFuzzer
//! and write the seed corpus (`cargo test -- --ignored write_seeds`).
//!
//! Targets (docs/reliability.md, "Fuzzing"): `config_space`, `bar_layout`, `api_request`,
//! `cli`, `acpi_tables`, `vfio_user_backend`, `guest_bus`. Each module's doc comment says what it drives
//! and what it checks.

// Only `heap` (a global allocator has to be unsafe code) may opt out.
#![deny(unsafe_code)]

pub mod acpi_tables;
pub mod api;
pub mod bar_layout;
pub mod cli;
pub mod config_space;
pub mod guest_bus;
#[allow(unsafe_code)]
pub mod heap;
pub mod seed;
pub mod vfio_user_backend;

/// Counts each thread's heap bytes for `guest_bus`'s bound on memory growth (`heap`). It
/// serves every target: counting costs two thread-local additions per allocation.
#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// `crate::config` for the REST API sources compiled by `api` (vmm/src/api/body.rs).
pub use vmm::config;

/// A target's seeds: (file name, bytes).
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every target with its seeds.
pub fn all_seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("config_space", config_space::seeds()),
        ("bar_layout", bar_layout::seeds()),
        ("api_request", api::seeds()),
        ("cli", cli::seeds()),
        ("acpi_tables", acpi_tables::seeds()),
        ("vfio_user_backend", vfio_user_backend::seeds()),
        ("guest_bus", guest_bus::seeds()),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn corpus() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
    }

    /// Writes fuzz/corpus/<target>/<seed>; run it after changing an input format or a seed.
    #[test]
    #[ignore]
    fn write_seeds() {
        for (target, seeds) in super::all_seeds() {
            let dir = corpus().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    /// Prints an input as its target decodes it and runs it outside libFuzzer:
    /// `FUZZ_INPUT=config_space:fuzz/artifacts/config_space/crash-... cargo test --lib -- \
    /// --ignored show_input --nocapture`.
    #[test]
    #[ignore]
    fn show_input() {
        let spec = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT=target:path");
        let (target, path) = spec.split_once(':').unwrap();
        let data = std::fs::read(path).unwrap();
        match target {
            "config_space" => {
                let i = crate::seed::decode::<crate::config_space::Input>(&data);
                println!("{i:#?}");
                crate::config_space::fuzz(&data);
            }
            "bar_layout" => {
                let i = crate::seed::decode::<crate::bar_layout::Input>(&data);
                println!("{i:#?}");
                crate::bar_layout::fuzz(&data);
            }
            "acpi_tables" => {
                let i = crate::seed::decode::<crate::acpi_tables::Input>(&data);
                println!("{i:#?}");
                crate::acpi_tables::fuzz(&data);
            }
            "vfio_user_backend" => {
                let i = crate::seed::decode::<crate::vfio_user_backend::Input>(&data);
                println!("{i:#?}");
                crate::vfio_user_backend::fuzz(&data);
            }
            "guest_bus" => {
                let i = crate::seed::decode::<crate::guest_bus::Input>(&data);
                println!("{i:#?}");
                crate::guest_bus::fuzz(&data);
            }
            "api_request" => {
                println!("{:?}", String::from_utf8_lossy(&data));
                crate::api::fuzz(&data);
            }
            "cli" => {
                println!("{:?}", String::from_utf8_lossy(&data));
                crate::cli::fuzz(&data);
            }
            t => panic!("unknown target {t}"),
        }
    }

    /// The checked-in seeds are what the seed functions write (none went stale, none is
    /// missing, nothing else is there), and they stay a handful per target.
    #[test]
    fn checked_in_seeds_are_current() {
        for (target, seeds) in super::all_seeds() {
            let dir = corpus().join(target);
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut want: Vec<String> = seeds.iter().map(|(n, _)| n.to_string()).collect();
            want.sort();
            assert_eq!(names, want, "{target}: seeds on disk");
            assert!(seeds.len() < 100);
            for (name, bytes) in seeds {
                assert_eq!(
                    std::fs::read(dir.join(name)).unwrap(),
                    bytes,
                    "{target}/{name} is stale: cargo test -- --ignored write_seeds"
                );
            }
        }
    }
}
