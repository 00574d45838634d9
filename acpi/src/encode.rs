//! Turning objects into table bytes, for every table builder: AML serialised ahead of time
//! (`Raw`), a complete SDT behind its standard header (`sdt`), and the checksum of a table
//! patched after the fact.

use acpi_tables::aml::FieldEntry;
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

/// The entries of a `Field` over a device's register block, from the definition the device
/// uses too: `registers` are (AML name, byte offset) in address order, each `width` bytes
/// wide; the gaps between them are reserved.
pub(crate) fn register_fields(registers: &[([u8; 4], u64)], width: u64) -> Vec<FieldEntry> {
    let bits = |bytes: u64| usize::try_from(bytes * 8).unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    let mut at = 0;
    for &(name, offset) in registers {
        if offset > at {
            entries.push(FieldEntry::Reserved(bits(offset - at)));
        }
        entries.push(FieldEntry::Named(name, bits(width)));
        at = offset + width;
    }
    entries
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

/// Reading back what the builders encode, for the tests that hold the AML to the register
/// definitions the devices use.
#[cfg(test)]
pub(crate) mod decode {
    /// A PkgLength at `d[0..]`: (value, bytes it took).
    fn pkg_length(d: &[u8]) -> (usize, usize) {
        let follow = usize::from(d[0] >> 6);
        if follow == 0 {
            return (usize::from(d[0] & 0x3f), 1);
        }
        let mut v = usize::from(d[0] & 0x0f);
        for (i, b) in d[1..=follow].iter().enumerate() {
            v |= usize::from(*b) << (4 + 8 * i);
        }
        (v, follow + 1)
    }

    /// An integer as `acpi_tables` encodes it: (value, bytes it took).
    fn integer(d: &[u8]) -> (u64, usize) {
        let le = |n: usize| {
            let v = d[1..=n]
                .iter()
                .rev()
                .fold(0u64, |a, x| a << 8 | u64::from(*x));
            (v, n + 1)
        };
        match d[0] {
            0 => (0, 1),
            1 => (1, 1),
            0x0a => le(1),
            0x0b => le(2),
            0x0c => le(4),
            0x0e => le(8),
            p => panic!("not an integer: prefix {p:#x}"),
        }
    }

    /// The length `OperationRegion(region, ...)` declares in `aml`.
    pub(crate) fn region_len(aml: &[u8], region: &[u8; 4]) -> u64 {
        let op = [&[0x5b, 0x80][..], region].concat();
        let at = aml
            .windows(op.len())
            .position(|w| w == op)
            .expect("no such OperationRegion");
        // Op, name, space, then the offset and the length.
        let rest = &aml[at + op.len() + 1..];
        let (_, n) = integer(rest);
        integer(&rest[n..]).0
    }

    /// The named entries of `Field(region, ...)` in `aml`: (name, byte offset, byte width).
    pub(crate) fn fields(aml: &[u8], region: &[u8; 4]) -> Vec<(String, u64, u64)> {
        let body = (0..aml.len().saturating_sub(2))
            .filter(|&i| aml[i..].starts_with(&[0x5b, 0x81]))
            .filter_map(|i| {
                let (len, n) = pkg_length(aml.get(i + 2..i + 6)?);
                aml.get(i + 2 + n..i + 2 + len)
            })
            .find(|body| body.starts_with(region))
            .expect("no such Field");
        // Name and flags, then the entries.
        let mut d = &body[4 + 1..];
        let (mut bit, mut out) = (0u64, Vec::new());
        while !d.is_empty() {
            let (name, rest) = if d[0] == 0 {
                (None, &d[1..])
            } else {
                (Some(String::from_utf8_lossy(&d[..4]).into_owned()), &d[4..])
            };
            let (bits, n) = pkg_length(rest);
            if let Some(name) = name {
                out.push((name, bit / 8, bits as u64 / 8));
            }
            bit += bits as u64;
            d = &rest[n..];
        }
        out
    }
}
