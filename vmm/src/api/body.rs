//! The JSON request bodies, shared by the server (which parses and checks them) and
//! `ghvmm-remote` (which sends them).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{AddDevice, ApiError};
use crate::config::{parse_id, DeviceConfig, DeviceSource, GhSlotRequest};

/// Cloud Hypervisor's `DeviceConfig` as `vm.add-device` takes it, plus ghvmm's `gh_slot`.
///
/// Every field any ch-remote release sends is accepted, so that its requests work unchanged;
/// the ones ghvmm does not implement are accepted only with their default value, and any
/// other field is refused by name. Older releases send all of `path`, `iommu`, `id`,
/// `pci_segment` and `x_nv_gpudirect_clique`; newer ones leave out the defaults and add
/// `x_exclude_mmap_bars: []`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDeviceBody {
    /// Required; `Option` so that its absence gets our message rather than serde's.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub iommu: bool,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub pci_segment: Option<u16>,
    #[serde(default)]
    pub x_nv_gpudirect_clique: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// Cloud Hypervisor passes a VFIO cdev fd out of band and writes null here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x_exclude_mmap_bars: Vec<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_gh_slot",
        deserialize_with = "de_gh_slot"
    )]
    pub gh_slot: Option<GhSlotRequest>,
}

impl AddDeviceBody {
    /// What `ghvmm-remote add-device ARG` sends: the fields and defaults an older ch-remote
    /// sends, plus `gh_slot` when the argument has one.
    pub fn from_config(d: &DeviceConfig) -> Self {
        AddDeviceBody {
            path: Some(d.source.path().to_string_lossy().into_owned()),
            id: d.id.clone(),
            pci_segment: Some(d.pci_segment.unwrap_or(0)),
            gh_slot: d.gh_slot,
            ..Default::default()
        }
    }

    /// Checks the body the way `DeviceConfig::parse` checks `--device`.
    pub fn into_request(self) -> Result<AddDevice, ApiError> {
        let bad = |msg: String| Err(ApiError::bad_request(format!("vm.add-device: {msg}")));
        let path = match self.path {
            Some(p) if !p.is_empty() => p,
            _ => return bad("missing required field 'path'".into()),
        };
        if self.iommu {
            return bad("iommu is not supported".into());
        }
        if self.x_nv_gpudirect_clique.is_some() {
            return bad("x_nv_gpudirect_clique is not supported".into());
        }
        if self.pci_device_id.is_some() {
            return bad("pci_device_id is not supported (ghvmm picks the slot)".into());
        }
        if self.fd.is_some() {
            return bad("fd is not supported (give the device by path)".into());
        }
        if !self.x_exclude_mmap_bars.is_empty() {
            return bad("x_exclude_mmap_bars is not supported".into());
        }
        placed(
            "vm.add-device",
            DeviceSource::Vfio(path.into()),
            self.id,
            self.pci_segment,
            self.gh_slot,
        )
    }
}

/// Cloud Hypervisor's `UserDeviceConfig` as `vm.add-user-device` takes it (`socket`, `id`,
/// `pci_segment`), plus ghvmm's `gh_slot`; any other field is refused by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUserDeviceBody {
    /// Required; `Option` so that its absence gets our message rather than serde's.
    #[serde(default)]
    pub socket: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub pci_segment: Option<u16>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_gh_slot",
        deserialize_with = "de_gh_slot"
    )]
    pub gh_slot: Option<GhSlotRequest>,
}

impl AddUserDeviceBody {
    /// What `ghvmm-remote add-user-device ARG` sends, as ch-remote does.
    pub fn from_config(d: &DeviceConfig) -> Self {
        AddUserDeviceBody {
            socket: Some(d.source.path().to_string_lossy().into_owned()),
            id: d.id.clone(),
            pci_segment: Some(d.pci_segment.unwrap_or(0)),
            gh_slot: d.gh_slot,
        }
    }

    /// Checks the body the way `DeviceConfig::parse_user` checks `--user-device`.
    pub fn into_request(self) -> Result<AddDevice, ApiError> {
        let bad = |msg: String| Err(ApiError::bad_request(format!("vm.add-user-device: {msg}")));
        let socket = match self.socket {
            Some(p) if !p.is_empty() => p,
            _ => return bad("missing required field 'socket'".into()),
        };
        placed(
            "vm.add-user-device",
            DeviceSource::User(socket.into()),
            self.id,
            self.pci_segment,
            self.gh_slot,
        )
    }
}

/// The checks both add endpoints share: the id's syntax, and a segment only without a GH
/// slot (whose slot fixes the segment); segment 0 is the default and becomes None.
fn placed(
    endpoint: &str,
    source: DeviceSource,
    id: Option<String>,
    pci_segment: Option<u16>,
    gh_slot: Option<GhSlotRequest>,
) -> Result<AddDevice, ApiError> {
    let bad = |msg: String| ApiError::bad_request(format!("{endpoint}: {msg}"));
    let id = match id {
        Some(id) => Some(parse_id(&id).map_err(|reason| bad(format!("id={id}: {reason}")))?),
        None => None,
    };
    let pci_segment = pci_segment.filter(|&s| s != 0);
    if let (Some(seg), Some(_)) = (pci_segment, gh_slot) {
        return Err(bad(format!(
            "pci_segment={seg} with gh_slot: a GH slot has its own segment"
        )));
    }
    Ok(AddDevice {
        source,
        id,
        pci_segment,
        gh_slot,
    })
}

/// Parses a request body. serde would also take a struct from a JSON array (by position),
/// which no client means, so the body must be an object.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err("the body must be a JSON object, not an array".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// `vm.remove-device`'s body, Cloud Hypervisor's `VmRemoveDevice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceBody {
    pub id: String,
}

impl RemoveDeviceBody {
    pub fn checked_id(self) -> Result<String, ApiError> {
        parse_id(&self.id).map_err(|reason| {
            ApiError::bad_request(format!("vm.remove-device: id={}: {reason}", self.id))
        })
    }
}

/// `gh_slot` is a number or "auto" in JSON, as in `--device gh_slot=K|auto`.
fn ser_gh_slot<S: Serializer>(v: &Option<GhSlotRequest>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(GhSlotRequest::Index(n)) => s.serialize_u16(*n),
        Some(GhSlotRequest::Auto) => s.serialize_str("auto"),
        None => s.serialize_none(),
    }
}

fn de_gh_slot<'de, D: Deserializer<'de>>(d: D) -> Result<Option<GhSlotRequest>, D::Error> {
    struct SlotVisitor;

    impl<'de> Visitor<'de> for SlotVisitor {
        type Value = Option<GhSlotRequest>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a GH slot number or \"auto\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            u16::try_from(n)
                .map(|n| Some(GhSlotRequest::Index(n)))
                .map_err(|_| E::custom(format!("gh_slot {n} is too large")))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom(format!("gh_slot {n} is negative"))),
            }
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            GhSlotRequest::parse(s)
                .map(Some)
                .map_err(|e| E::custom(format!("gh_slot: {e}")))
        }
    }

    d.deserialize_any(SlotVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AddDevice, String> {
        let body: AddDeviceBody = from_json(json.as_bytes())?;
        body.into_request().map_err(|e| e.message)
    }

    #[test]
    fn ch_remote_bodies_are_accepted() {
        // An older ch-remote: every field, with its default.
        let d = parse(r#"{"path":"/sys/bus/pci/devices/0000:01:00.0","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#)
            .unwrap();
        assert_eq!(
            d,
            AddDevice {
                source: DeviceSource::Vfio("/sys/bus/pci/devices/0000:01:00.0".into()),
                id: None,
                pci_segment: None,
                gh_slot: None,
            }
        );
        // A newer one: defaults left out, the new fields in.
        let d = parse(r#"{"pci_segment":0,"path":"/p","x_exclude_mmap_bars":[],"pci_device_id":null,"fd":null}"#)
            .unwrap();
        assert_eq!(d.source, DeviceSource::Vfio("/p".into()));
        assert_eq!(
            parse(r#"{"path":"/p","id":"gpu-0_a"}"#)
                .unwrap()
                .id
                .as_deref(),
            Some("gpu-0_a")
        );
        assert_eq!(
            parse(r#"{"path":"/p","pci_segment":3}"#)
                .unwrap()
                .pci_segment,
            Some(3)
        );
        assert_eq!(
            parse(r#"{"path":"/p","pci_segment":null}"#)
                .unwrap()
                .pci_segment,
            None
        );
    }

    #[test]
    fn gh_slot_json() {
        let slot = |j: &str| parse(j).map(|d| d.gh_slot);
        assert_eq!(
            slot(r#"{"path":"/p","gh_slot":2}"#),
            Ok(Some(GhSlotRequest::Index(2)))
        );
        assert_eq!(
            slot(r#"{"path":"/p","gh_slot":"auto"}"#),
            Ok(Some(GhSlotRequest::Auto))
        );
        assert_eq!(
            slot(r#"{"path":"/p","gh_slot":"7"}"#),
            Ok(Some(GhSlotRequest::Index(7)))
        );
        assert_eq!(slot(r#"{"path":"/p","gh_slot":null}"#), Ok(None));
        assert_eq!(
            slot(r#"{"path":"/p","pci_segment":0,"gh_slot":0}"#),
            Ok(Some(GhSlotRequest::Index(0)))
        );
        for bad in [
            r#"{"path":"/p","gh_slot":65536}"#,
            r#"{"path":"/p","gh_slot":-1}"#,
            r#"{"path":"/p","gh_slot":1.5}"#,
            r#"{"path":"/p","gh_slot":"Auto"}"#,
            r#"{"path":"/p","gh_slot":""}"#,
            r#"{"path":"/p","gh_slot":true}"#,
            r#"{"path":"/p","gh_slot":[1]}"#,
            r#"{"path":"/p","pci_segment":2,"gh_slot":0}"#,
        ] {
            let e = slot(bad).expect_err(bad);
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{"path":"/p","iommu":true}"#, "iommu is not supported"),
            (
                r#"{"path":"/p","x_nv_gpudirect_clique":1}"#,
                "x_nv_gpudirect_clique",
            ),
            (r#"{"path":"/p","pci_device_id":3}"#, "pci_device_id"),
            (r#"{"path":"/p","fd":5}"#, "fd is not supported"),
            (
                r#"{"path":"/p","x_exclude_mmap_bars":[0]}"#,
                "x_exclude_mmap_bars",
            ),
            (r#"{"path":"/p","bogus":1}"#, "unknown field `bogus`"),
            (
                r#"{"path":"/p","readonly":false}"#,
                "unknown field `readonly`",
            ),
            (r#"{"id":"a"}"#, "missing required field 'path'"),
            (r#"{"path":""}"#, "missing required field 'path'"),
            (r#"{"path":null}"#, "missing required field 'path'"),
            (r#"{"path":"/p","id":"a b"}"#, "id=a b: use letters"),
            (r#"{"path":"/p","id":""}"#, "id=: use letters"),
            (r#"{"path":"/p","id":"a,b"}"#, "id=a,b"),
            (r#"{"path":7}"#, "invalid type"),
            (r#"{"path":"/p","iommu":"no"}"#, "invalid type"),
            (r#"{"path":"/p","pci_segment":65536}"#, "invalid value"),
            (r#"{"path":"/p","path":"/q"}"#, "duplicate field `path`"),
            (r#"["/p"]"#, "must be a JSON object"),
            (r#" [{"path":"/p"}]"#, "must be a JSON object"),
            ("7", "invalid type"),
            ("null", "invalid type"),
            (r#"{"path":"/p"} x"#, "trailing characters"),
        ];
        for (json, want) in cases {
            let e = parse(json).expect_err(json);
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains('\n'), "{json}: {e}");
        }
    }

    #[test]
    fn ghvmm_remote_sends_ch_json() {
        let d = DeviceConfig::parse("path=/sys/bus/pci/devices/0000:01:00.0").unwrap();
        assert_eq!(
            serde_json::to_string(&AddDeviceBody::from_config(&d)).unwrap(),
            r#"{"path":"/sys/bus/pci/devices/0000:01:00.0","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#
        );
        let d = DeviceConfig::parse("path=/g,id=gpu0,gh_slot=auto").unwrap();
        let json = serde_json::to_string(&AddDeviceBody::from_config(&d)).unwrap();
        assert_eq!(
            json,
            r#"{"path":"/g","iommu":false,"id":"gpu0","pci_segment":0,"x_nv_gpudirect_clique":null,"gh_slot":"auto"}"#
        );
        let d = DeviceConfig::parse("path=/g,gh_slot=3").unwrap();
        let json = serde_json::to_string(&AddDeviceBody::from_config(&d)).unwrap();
        assert!(json.ends_with(r#""gh_slot":3}"#), "{json}");
        assert_eq!(parse(&json).unwrap().gh_slot, Some(GhSlotRequest::Index(3)));
    }

    #[test]
    fn remove_device_body() {
        let id = |j: &str| -> Result<String, String> {
            let b: RemoveDeviceBody = from_json(j.as_bytes())?;
            b.checked_id().map_err(|e| e.message)
        };
        assert_eq!(id(r#"{"id":"gpu0"}"#), Ok("gpu0".into()));
        assert!(id(r#"{}"#).unwrap_err().contains("missing field `id`"));
        assert!(id(r#"{"id":null}"#).is_err());
        assert!(id(r#"{"id":3}"#).is_err());
        assert!(id(r#"{"id":"a","x":1}"#)
            .unwrap_err()
            .contains("unknown field `x`"));
        assert!(id(r#"{"id":"../x"}"#).unwrap_err().contains("id=../x"));
        assert!(id(r#"["gpu0"]"#).is_err());
    }
}
