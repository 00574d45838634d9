//! Lays the tables out in guest memory and links them: RSDP -> XSDT -> FADT -> DSDT, MADT, MCFG.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::{dsdt, madt, AcpiError, PlatformDesc, OEM_ID, OEM_REVISION};

/// What to copy into guest memory, and where the guest finds the RSDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBlob {
    pub rsdp_addr: u64,
    pub regions: Vec<(u64, Vec<u8>)>,
}

const CHECKSUM_OFFSET: usize = 9;
const TABLE_ALIGN: u64 = 16;
/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5). "No 8042" is bit 1
/// being clear, and "legacy devices" bit 0 clear: there is no ISA bus to probe.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// Recomputes an SDT's checksum after its bytes were patched.
pub(crate) fn set_checksum(table: &mut [u8]) {
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[CHECKSUM_OFFSET] = sum.wrapping_neg();
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(desc: &PlatformDesc, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"GHVMMFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io_register(desc.pm.reset_port);
    f.reset_value = desc.pm.reset_value;
    f.sleep_control_reg = io_register(desc.pm.sleep_control_port);
    f.sleep_status_reg = io_register(desc.pm.sleep_status_port);
    bytes(&f.finalize())
}

fn mcfg(desc: &PlatformDesc) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"GHVMMMCF", OEM_REVISION);
    for s in &desc.pci_segments {
        m.add_ecam(s.ecam_base, s.segment, s.bus_start, s.bus_end);
    }
    bytes(&m)
}

fn align(v: u64) -> Option<u64> {
    v.checked_add(TABLE_ALIGN - 1)
        .map(|v| v & !(TABLE_ALIGN - 1))
}

/// Builds every table and places them from `base` (RSDP first) up to `limit`.
pub fn build_tables(desc: &PlatformDesc, base: u64, limit: u64) -> Result<AcpiBlob, AcpiError> {
    let dsdt = dsdt::build(desc)?;
    let madt = madt::build(desc)?;
    let mcfg = mcfg(desc);
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_len = 36 + 8 * 3;
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;

    let too_large = |end: Option<u64>| AcpiError::TooLarge {
        base,
        size: end.map_or(u64::MAX, |e| e.saturating_sub(base)),
        limit,
    };
    let mut cursor = Some(base);
    let mut place = |len: u64| -> Option<u64> {
        let at = align(cursor?)?;
        cursor = at.checked_add(len);
        Some(at)
    };
    let rsdp_addr = place(rsdp_len);
    let xsdt_addr = place(xsdt_len);
    let fadt_addr = place(fadt_len);
    let dsdt_addr = place(dsdt.len() as u64);
    let madt_addr = place(madt.len() as u64);
    let mcfg_addr = place(mcfg.len() as u64);
    let end = cursor;
    let (
        Some(rsdp_addr),
        Some(xsdt_addr),
        Some(fadt_addr),
        Some(dsdt_addr),
        Some(madt_addr),
        Some(mcfg_addr),
        Some(e),
    ) = (
        rsdp_addr, xsdt_addr, fadt_addr, dsdt_addr, madt_addr, mcfg_addr, end,
    )
    else {
        return Err(too_large(None));
    };
    if e > limit {
        return Err(too_large(end));
    }

    let mut xsdt = XSDT::new(OEM_ID, *b"GHVMMXSD", OEM_REVISION);
    for t in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(t);
    }
    Ok(AcpiBlob {
        rsdp_addr,
        regions: vec![
            (rsdp_addr, bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
            (xsdt_addr, bytes(&xsdt)),
            (fadt_addr, fadt(desc, dsdt_addr)),
            (dsdt_addr, dsdt),
            (madt_addr, madt),
            (mcfg_addr, mcfg),
        ],
    })
}
