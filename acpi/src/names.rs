//! The AML names the DSDT gives objects it creates for the platform's descriptions, shared by
//! the builders and the validation that keeps the descriptions' own names clear of them.

use crate::AcpiError;

/// A four-character AML NameSeg: A-Z, 0-9 and `_`, led by a letter. (AML also allows a
/// leading `_`, but such names are reserved for the ones ACPI defines.) Every `bridge_name`
/// is one.
pub(crate) fn aml_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4
        && b[0].is_ascii_uppercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// AML names are four characters: `PCI0`..`PCIF` for the first sixteen segments (the names
/// every guest expects for segment 0), then `P010`..`PFFF`.
pub(crate) fn bridge_name(segment: u16) -> Result<String, AcpiError> {
    match segment {
        0..=0xf => Ok(format!("PCI{segment:X}")),
        0x10..=0xfff => Ok(format!("P{segment:03X}")),
        _ => Err(AcpiError::BadSegment {
            segment,
            what: "only segments 0-0xFFF can be named in AML".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_four_characters() {
        assert_eq!(bridge_name(0).unwrap(), "PCI0");
        assert_eq!(bridge_name(0xf).unwrap(), "PCIF");
        assert_eq!(bridge_name(0x10).unwrap(), "P010");
        assert_eq!(bridge_name(0xfff).unwrap(), "PFFF");
        assert!(bridge_name(0x1000).is_err());
        assert!(bridge_name(u16::MAX).is_err());
    }

    #[test]
    fn bridge_names_are_aml_names() {
        for segment in [0, 9, 0xf, 0x10, 0xabc, 0xfff] {
            assert!(aml_name(&bridge_name(segment).unwrap()), "{segment:#x}");
        }
        assert!(aml_name("GPU0") && aml_name("N_0_") && !aml_name("_SB_"));
    }
}
