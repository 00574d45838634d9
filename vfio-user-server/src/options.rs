//! The `--device` option body, Cloud Hypervisor style (`path=/sys/bus/pci/devices/BDF`).
//! ghvmm's own option parser lives in the `vmm` crate, which links KVM; this server must not,
//! so it has this small one for the one key it takes.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOption {
    /// The device's sysfs directory.
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("--device: `{0}` is not key=value")]
    NotKeyValue(String),
    #[error("--device: unknown key `{0}` (the only key is path)")]
    UnknownKey(String),
    #[error("--device: `{0}` is given twice")]
    Repeated(String),
    #[error("--device: path= is empty")]
    EmptyPath,
}

/// Parses `path=...` (comma-separated key=value pairs; path is the only key).
pub fn parse_device(body: &str) -> Result<DeviceOption, OptionError> {
    let mut path = None;
    for item in body.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| OptionError::NotKeyValue(item.to_string()))?;
        match key {
            "path" => {
                if path.is_some() {
                    return Err(OptionError::Repeated(key.into()));
                }
                if value.is_empty() {
                    return Err(OptionError::EmptyPath);
                }
                path = Some(PathBuf::from(value));
            }
            other => return Err(OptionError::UnknownKey(other.into())),
        }
    }
    Ok(DeviceOption {
        // Every item either set the path or was refused, and there is at least one.
        path: path.ok_or_else(|| OptionError::NotKeyValue(body.into()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_taken_as_given() {
        let d = parse_device("path=/sys/bus/pci/devices/0000:01:00.0").unwrap();
        assert_eq!(d.path, PathBuf::from("/sys/bus/pci/devices/0000:01:00.0"));
        // A value may itself hold '=' (only the first one splits).
        let d = parse_device("path=/tmp/a=b").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a=b"));
    }

    #[test]
    fn bad_bodies_are_refused_with_what_is_wrong() {
        for (body, want) in [
            ("", OptionError::NotKeyValue(String::new())),
            (
                "/sys/bus/pci/devices/x",
                OptionError::NotKeyValue("/sys/bus/pci/devices/x".into()),
            ),
            ("path=", OptionError::EmptyPath),
            ("path=/a,path=/b", OptionError::Repeated("path".into())),
            ("path=/a,id=gpu0", OptionError::UnknownKey("id".into())),
            ("path=/a,", OptionError::NotKeyValue(String::new())),
        ] {
            assert_eq!(parse_device(body), Err(want), "{body:?}");
        }
        assert_eq!(
            parse_device("path=/a,iommu=on").unwrap_err().to_string(),
            "--device: unknown key `iommu` (the only key is path)"
        );
    }
}
