//! FADT (rev 6): hardware-reduced ACPI, so no FACS, no PM1/GPE blocks; sleep and reset go
//! through three byte-wide port registers.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use crate::encode::bytes;
use crate::{PmDesc, OEM_ID, OEM_REVISION};

/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5). "Legacy devices"
/// (bit 0) and "8042" (bit 1) stay clear: there is no ISA bus to probe, and the i8042 stub
/// only understands the reset command.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// A one-byte register in port I/O space.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT's length is fixed, so it can be placed before the DSDT address is known.
pub(crate) fn len() -> usize {
    acpi_tables::fadt::FADT::len()
}

pub(crate) fn build(pm: &PmDesc, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"GHVMMFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io_register(pm.reset_port);
    f.reset_value = pm.reset_value;
    f.sleep_control_reg = io_register(pm.sleep_control_port);
    f.sleep_status_reg = io_register(pm.sleep_status_port);
    bytes(&f.finalize())
}
