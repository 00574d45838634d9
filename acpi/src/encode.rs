//! Turning objects into table bytes, for every table builder: AML serialised ahead of time
//! (`Raw`), a complete SDT behind its standard header (`sdt`), and the checksum of a table
//! patched after the fact.

use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use crate::{AcpiError, OEM_ID, OEM_REVISION};

const CHECKSUM_OFFSET: usize = 9;
pub(crate) const HEADER_LEN: usize = 36;

/// Already-serialised AML, so objects can be built one at a time and then nested (the
/// `aml` builders borrow their children, which makes deep trees awkward to build in place).
pub(crate) struct Raw(pub(crate) Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

pub(crate) fn raw(aml: &dyn Aml) -> Raw {
    Raw(bytes(aml))
}

pub(crate) fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// Recomputes an SDT's checksum after its bytes were patched.
pub(crate) fn set_checksum(table: &mut [u8]) {
    if table.len() <= CHECKSUM_OFFSET {
        return;
    }
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[CHECKSUM_OFFSET] = sum.wrapping_neg();
}

/// A complete table: the standard header, then `body`. The body is appended in one piece
/// because `Sdt` recomputes the checksum over the whole table on every append.
pub(crate) fn sdt(
    signature: [u8; 4],
    revision: u8,
    oem_table_id: [u8; 8],
    body: &[u8],
) -> Result<Vec<u8>, AcpiError> {
    let size = HEADER_LEN.saturating_add(body.len());
    if u32::try_from(size).is_err() {
        return Err(AcpiError::TableTooLarge {
            signature: String::from_utf8_lossy(&signature).into_owned(),
            size,
        });
    }
    let mut t = Sdt::new(
        signature,
        HEADER_LEN as u32,
        revision,
        OEM_ID,
        oem_table_id,
        OEM_REVISION,
    );
    t.append_slice(body);
    Ok(t.as_slice().to_vec())
}
