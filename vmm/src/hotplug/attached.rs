//! The attached devices: ids (given, or `_vfio<N>` as Cloud Hypervisor names them), paths,
//! addresses and the token of each attachment.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use acpi::PciAddress;

use super::HotplugError;

/// Cloud Hypervisor names VFIO devices that were given no id `_vfio<N>`; so does ghvmm.
const AUTO_ID_PREFIX: &str = "_vfio";

/// An attached device as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDevice {
    pub id: String,
    pub path: PathBuf,
    /// `path` is a vfio-user server's socket, not a VFIO device's sysfs path.
    pub user: bool,
    pub address: PciAddress,
}

/// One attachment. Unlike its id, it is never reused: a request from the host names the
/// device it came from even if the id now belongs to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token(u64);

/// What a device path resolves to, recorded at attach: two spellings of one device (a
/// symlink, `..`, a hard link to a vfio-user socket, a bind mount) are the same key, and a
/// symlink re-pointed later does not change what an attached device was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DeviceKey {
    /// (dev, ino) of what the path resolves to (stat follows every symlink).
    Inode(u64, u64),
    /// A path that cannot be resolved now (it will fail to open): compared as spelled,
    /// made absolute and normalised.
    Path(PathBuf),
}

impl DeviceKey {
    pub fn of(path: &Path) -> Self {
        match std::fs::metadata(path) {
            Ok(m) => DeviceKey::Inode(m.dev(), m.ino()),
            Err(_) => DeviceKey::Path(
                std::path::absolute(path)
                    .map(|p| p.components().collect())
                    .unwrap_or_else(|_| path.to_path_buf()),
            ),
        }
    }
}

pub(super) struct Attached<D> {
    pub id: String,
    pub path: PathBuf,
    pub user: bool,
    pub key: DeviceKey,
    pub address: PciAddress,
    pub device: D,
    pub token: Token,
}

impl<D> Attached<D> {
    pub fn listed(&self) -> AttachedDevice {
        AttachedDevice {
            id: self.id.clone(),
            path: self.path.clone(),
            user: self.user,
            address: self.address,
        }
    }
}

/// The attached devices in attach order. Bounded by the VM's PCI slots.
pub(super) struct Registry<D> {
    list: Vec<Attached<D>>,
    /// The attachments a removal is waiting on (for the guest's eject); at most one removal
    /// per attachment. Bounded by `list`: only attached devices are marked.
    removing: Vec<Token>,
    next_auto_id: u32,
    next_token: u64,
}

impl<D> Default for Registry<D> {
    fn default() -> Self {
        Registry {
            list: Vec::new(),
            removing: Vec::new(),
            next_auto_id: 0,
            next_token: 0,
        }
    }
}

impl<D> Registry<D> {
    /// Refuses an id that is attached, or a path whose device is; returns the path's key,
    /// for the `Attached` it becomes.
    pub fn check_new(&self, id: Option<&str>, path: &Path) -> Result<DeviceKey, HotplugError> {
        if let Some(id) = id {
            if self.by_id(id).is_some() {
                return Err(HotplugError::DuplicateId(id.to_string()));
            }
        }
        // The same function twice would share one VFIO device fd's state.
        let key = DeviceKey::of(path);
        if self.list.iter().any(|a| a.key == key) {
            return Err(HotplugError::DuplicatePath(path.to_path_buf()));
        }
        Ok(key)
    }

    /// Whether GH slot k (00.0 of segment k+1) has a device.
    pub fn gh_slot_taken(&self, k: u16) -> bool {
        self.list
            .iter()
            .any(|a| a.address.segment == k + 1 && a.address.device == 0)
    }

    /// The next `_vfio<N>` no attached device has. Numbers are not reused, as in Cloud
    /// Hypervisor, so that a name in an old log line stays unambiguous.
    pub fn auto_id(&mut self) -> String {
        loop {
            let candidate = format!("{AUTO_ID_PREFIX}{}", self.next_auto_id);
            self.next_auto_id = self.next_auto_id.wrapping_add(1);
            if self.by_id(&candidate).is_none() {
                return candidate;
            }
        }
    }

    pub fn new_token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    pub fn push(&mut self, attached: Attached<D>) {
        self.list.push(attached);
    }

    /// The first attached device `which` picks.
    pub fn by(&self, which: impl Fn(&Attached<D>) -> bool) -> Option<&Attached<D>> {
        self.list.iter().find(|a| which(a))
    }

    fn by_id(&self, id: &str) -> Option<&Attached<D>> {
        self.by(|a| a.id == id)
    }

    /// Marks attachment `token` as being removed; false if a removal of it already runs.
    pub fn start_removing(&mut self, token: Token) -> bool {
        if self.removing.contains(&token) {
            return false;
        }
        self.removing.push(token);
        true
    }

    pub fn end_removing(&mut self, token: Token) {
        self.removing.retain(|t| *t != token);
    }

    pub fn take(&mut self, token: Token) -> Option<Attached<D>> {
        let i = self.list.iter().position(|a| a.token == token)?;
        Some(self.list.remove(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attached<D>> {
        self.list.iter()
    }

    pub fn listed(&self) -> Vec<AttachedDevice> {
        self.list.iter().map(Attached::listed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(reg: &mut Registry<()>, id: &str, path: &str, segment: u16, device: u8) -> Token {
        let token = reg.new_token();
        reg.push(Attached {
            id: id.into(),
            path: path.into(),
            user: false,
            key: DeviceKey::of(Path::new(path)),
            address: PciAddress {
                segment,
                bus: 0,
                device,
                function: 0,
            },
            device: (),
            token,
        });
        token
    }

    #[test]
    fn auto_ids_count_up_skip_taken_ones_and_are_not_reused() {
        let mut reg = Registry::<()>::default();
        assert_eq!(reg.auto_id(), "_vfio0");
        attached(&mut reg, "_vfio1", "/a", 0, 1);
        assert_eq!(reg.auto_id(), "_vfio2", "_vfio1 is taken");
        assert_eq!(reg.auto_id(), "_vfio3");
    }

    #[test]
    fn ids_and_paths_are_unique_and_free_again_once_taken_out() {
        let mut reg = Registry::<()>::default();
        let t = attached(&mut reg, "gpu0", "/a", 0, 1);
        assert!(matches!(
            reg.check_new(Some("gpu0"), Path::new("/b")),
            Err(HotplugError::DuplicateId(id)) if id == "gpu0"
        ));
        assert!(matches!(
            reg.check_new(Some("gpu1"), Path::new("/a")),
            Err(HotplugError::DuplicatePath(p)) if p == Path::new("/a")
        ));
        assert!(reg.check_new(None, Path::new("/b")).is_ok());
        assert_eq!(reg.take(t).map(|a| a.id), Some("gpu0".to_string()));
        assert!(reg.take(t).is_none());
        assert!(reg.check_new(Some("gpu0"), Path::new("/a")).is_ok());
    }

    #[test]
    fn another_spelling_of_an_attached_device_is_the_same_device() {
        let tmp = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let t = tmp.as_path();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        std::fs::create_dir_all(t.join("devices/0000:01:00.0")).unwrap();
        std::fs::create_dir_all(t.join("devices/0000:02:00.0")).unwrap();
        std::fs::create_dir(t.join("bus")).unwrap();
        let link = t.join("bus/gpu");
        std::os::unix::fs::symlink(t.join("devices/0000:01:00.0"), &link).unwrap();
        let mut reg = Registry::<()>::default();
        attached(&mut reg, "gpu0", &s(&link), 0, 1);
        let dup = |reg: &Registry<()>, p: &Path| {
            matches!(reg.check_new(None, p), Err(HotplugError::DuplicatePath(_)))
        };
        assert!(dup(&reg, &t.join("devices/0000:01:00.0")));
        assert!(dup(&reg, &t.join("bus/../devices/./0000:01:00.0")));
        // The link now names another device: the attached one is still the first.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(t.join("devices/0000:02:00.0"), &link).unwrap();
        assert!(dup(&reg, &t.join("devices/0000:01:00.0")));
        // Two names of one vfio-user socket (a hard link).
        std::fs::write(t.join("gpu.sock"), b"").unwrap();
        std::fs::hard_link(t.join("gpu.sock"), t.join("other.sock")).unwrap();
        attached(&mut reg, "gpu1", &s(&t.join("gpu.sock")), 0, 2);
        assert!(dup(&reg, &t.join("other.sock")));
        // Paths that do not resolve compare as spelled, normalised.
        attached(&mut reg, "gpu2", "/nonexistent/x", 0, 3);
        assert!(dup(&reg, Path::new("/nonexistent/./x")));
        assert!(!dup(&reg, Path::new("/nonexistent/y")));
    }

    #[test]
    fn a_token_names_one_attachment_only() {
        let mut reg = Registry::<()>::default();
        let old = attached(&mut reg, "gpu0", "/a", 1, 0);
        reg.take(old);
        let new = attached(&mut reg, "gpu0", "/a", 1, 0);
        assert_ne!(old, new);
        assert!(reg.by(|a| a.token == old).is_none());
        assert_eq!(
            reg.by(|a| a.token == new).map(|a| a.id.as_str()),
            Some("gpu0")
        );
        assert!(reg.gh_slot_taken(0));
        assert!(!reg.gh_slot_taken(1));
    }
}
