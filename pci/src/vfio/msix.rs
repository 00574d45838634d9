//! MSI-X of a passed-through function, emulated: ghvmm owns the capability's control word and
//! the vector table (the guest's writes never reach the device's own table), and turns them
//! into decisions for the VMM: enable or disable the device's MSI-X vectors (VFIO_DEVICE_SET_IRQS)
//! and route each vector to the message the guest programmed (a KVM GSI route + irqfd), or to
//! nothing while it is masked. Interrupts then go device → eventfd → KVM → guest, never through
//! a ghvmm thread.

use super::irq_types::{IrqKind, IrqUpdate, MsiMessage};

/// One table entry (16 bytes in the BAR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    pub addr: u64,
    pub data: u32,
    pub masked: bool,
}

impl Default for MsixEntry {
    /// Entries come out of reset masked (PCI spec).
    fn default() -> Self {
        MsixEntry {
            addr: 0,
            data: 0,
            masked: true,
        }
    }
}

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_TABLE_SIZE: u16 = 0x7ff;
const ENTRY_SIZE: u64 = 16;

/// The MSI-X capability as read from the device, and its emulated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixState {
    /// Table size, enable and function mask as the guest sees them.
    control: u16,
    pub table_bar: usize,
    pub table_offset: u64,
    pub pba_bar: usize,
    pub pba_offset: u64,
    entries: Vec<MsixEntry>,
    /// The route each vector has now, as last reported.
    applied: Vec<Option<MsiMessage>>,
}

impl MsixState {
    /// From the capability's first three dwords (header+control, table, PBA).
    pub fn new(header: u32, table: u32, pba: u32) -> Self {
        let control = ((header >> 16) as u16) & CONTROL_TABLE_SIZE;
        let vectors = usize::from(control) + 1;
        MsixState {
            control,
            table_bar: (table & 7) as usize,
            table_offset: u64::from(table & !7),
            pba_bar: (pba & 7) as usize,
            pba_offset: u64::from(pba & !7),
            entries: vec![MsixEntry::default(); vectors],
            applied: vec![None; vectors],
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    pub fn control(&self) -> u16 {
        self.control
    }

    pub fn entry(&self, vector: usize) -> Option<MsixEntry> {
        self.entries.get(vector).copied()
    }

    /// The guest writes the control word (only enable and function mask are writable).
    pub fn write_control(&mut self, value: u16) -> Vec<IrqUpdate> {
        let was = self.enabled();
        let writable = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;
        self.control = (self.control & !writable) | (value & writable);
        let mut updates = Vec::new();
        match (was, self.enabled()) {
            (false, true) => updates.push(IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: self.vectors(),
            }),
            (true, false) => {
                // Routes first, so nothing stays routed to a disabled function.
                updates.extend(self.reroute());
                updates.push(IrqUpdate::Disable {
                    kind: IrqKind::Msix,
                });
                return updates;
            }
            _ => {}
        }
        updates.extend(self.reroute());
        updates
    }

    /// Reads `data.len()` bytes at `offset` into the table; outside it or at odd widths,
    /// zeros (the guest learns nothing from a bad access).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let Some(at) = offset.checked_add(4 * i as u64) else {
                return;
            };
            if let Some(v) = self.table_dword(at) {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn table_dword(&self, at: u64) -> Option<u32> {
        let e = self.entries.get(usize::try_from(at / ENTRY_SIZE).ok()?)?;
        Some(match at % ENTRY_SIZE {
            0 => e.addr as u32,
            4 => (e.addr >> 32) as u32,
            8 => e.data,
            _ => u32::from(e.masked),
        })
    }

    /// The guest writes the table: dword or qword accesses at dword alignment.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Vec<IrqUpdate> {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return Vec::new();
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let Some(at) = offset.checked_add(4 * i as u64) else {
                break;
            };
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let Some(e) = usize::try_from(at / ENTRY_SIZE)
                .ok()
                .and_then(|i| self.entries.get_mut(i))
            else {
                continue;
            };
            match at % ENTRY_SIZE {
                0 => e.addr = (e.addr & !0xffff_ffff) | u64::from(v),
                4 => e.addr = (e.addr & 0xffff_ffff) | (u64::from(v) << 32),
                8 => e.data = v,
                _ => e.masked = v & 1 != 0,
            }
        }
        self.reroute()
    }

    /// What each vector should be routed to now.
    fn wanted(&self, vector: usize) -> Option<MsiMessage> {
        let live = self.enabled() && self.control & CONTROL_FUNCTION_MASK == 0;
        let e = self.entries[vector];
        (live && !e.masked).then_some(MsiMessage {
            addr: e.addr,
            data: e.data,
        })
    }

    /// Route updates for every vector whose wanted route changed since last reported.
    fn reroute(&mut self) -> Vec<IrqUpdate> {
        let mut updates = Vec::new();
        for v in 0..self.entries.len() {
            let want = self.wanted(v);
            if self.applied[v] != want {
                self.applied[v] = want;
                updates.push(IrqUpdate::Route {
                    kind: IrqKind::Msix,
                    vector: v as u16,
                    message: want,
                });
            }
        }
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 vectors, table in BAR 1 at 0, PBA in BAR 1 at 0x800.
    fn state() -> MsixState {
        MsixState::new(0x0003_0011, 0x0000_0001, 0x0000_0801)
    }

    fn program(s: &mut MsixState, v: u64, addr: u64, data: u32) -> Vec<IrqUpdate> {
        let base = v * 16;
        let mut u = s.table_write(base, &(addr as u32).to_le_bytes());
        u.extend(s.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes()));
        u.extend(s.table_write(base + 8, &data.to_le_bytes()));
        u
    }

    #[test]
    fn decodes_the_capability() {
        let s = state();
        assert_eq!(s.vectors(), 4);
        assert_eq!(
            (s.table_bar, s.table_offset, s.pba_bar, s.pba_offset),
            (1, 0, 1, 0x800)
        );
        assert_eq!(s.table_len(), 64);
        assert!(!s.enabled());
        assert!(s.entry(0).unwrap().masked, "entries reset masked");
    }

    #[test]
    fn linux_style_enable_sequence_routes_unmasked_vectors() {
        let mut s = state();
        // Enable with the function masked, program, unmask an entry, unmask the function.
        assert_eq!(
            s.write_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK),
            vec![IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: 4
            }]
        );
        assert!(
            program(&mut s, 1, 0xfee0_1000, 0x4041).is_empty(),
            "masked: no route yet"
        );
        assert!(
            s.table_write(16 + 12, &0u32.to_le_bytes()).is_empty(),
            "function still masked"
        );
        let u = s.write_control(CONTROL_ENABLE);
        let msg = MsiMessage {
            addr: 0xfee0_1000,
            data: 0x4041,
        };
        assert_eq!(
            u,
            vec![IrqUpdate::Route {
                kind: IrqKind::Msix,
                vector: 1,
                message: Some(msg)
            }]
        );
        // Masking the vector removes its route; unmasking restores it.
        assert_eq!(
            s.table_write(16 + 12, &1u32.to_le_bytes()),
            vec![IrqUpdate::Route {
                kind: IrqKind::Msix,
                vector: 1,
                message: None
            }]
        );
        assert_eq!(
            s.table_write(16 + 12, &0u32.to_le_bytes()),
            vec![IrqUpdate::Route {
                kind: IrqKind::Msix,
                vector: 1,
                message: Some(msg)
            }]
        );
        // Reprogramming a live vector reroutes it.
        let u = program(&mut s, 1, 0xfee0_2000, 0x4042);
        assert_eq!(
            u.last(),
            Some(&IrqUpdate::Route {
                kind: IrqKind::Msix,
                vector: 1,
                message: Some(MsiMessage {
                    addr: 0xfee0_2000,
                    data: 0x4042
                })
            })
        );
        // Disabling unroutes first, then disables.
        assert_eq!(
            s.write_control(0),
            vec![
                IrqUpdate::Route {
                    kind: IrqKind::Msix,
                    vector: 1,
                    message: None
                },
                IrqUpdate::Disable {
                    kind: IrqKind::Msix
                }
            ]
        );
    }

    #[test]
    fn table_reads_back_what_was_written() {
        let mut s = state();
        program(&mut s, 3, 0x1_2345_6789, 0xabcd);
        let mut q = [0u8; 8];
        s.table_read(48, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_2345_6789);
        let mut d = [0u8; 4];
        s.table_read(48 + 8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xabcd);
        s.table_read(48 + 12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "still masked");
        // A qword write of address lo/hi at once.
        s.table_write(0, &0xfee0_0000u64.to_le_bytes());
        assert_eq!(s.entry(0).unwrap().addr, 0xfee0_0000);
    }

    #[test]
    fn control_keeps_table_size_read_only() {
        let mut s = state();
        s.write_control(0xffff);
        assert_eq!(s.control() & CONTROL_TABLE_SIZE, 3);
        assert!(s.enabled());
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let mut s = state();
        let before = s.clone();
        assert!(s.table_write(2, &[1, 2, 3, 4]).is_empty());
        assert!(s.table_write(0, &[1, 2]).is_empty());
        assert!(s.table_write(64, &[1, 2, 3, 4]).is_empty());
        assert!(s.table_write(u64::MAX - 3, &[1, 2, 3, 4]).is_empty());
        assert!(s.table_write(u64::MAX - 3, &[1; 8]).is_empty());
        let mut q = [0u8; 8];
        s.table_read(u64::MAX - 3, &mut q);
        assert_eq!(q, [0; 8]);
        assert_eq!(s, before);
        let mut b = [0xaau8; 2];
        s.table_read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut d = [0xaau8; 4];
        s.table_read(1 << 40, &mut d);
        assert_eq!(d, [0; 4]);
        // The largest table the capability can describe.
        let big = MsixState::new(0x07ff_0011, 0, 0);
        assert_eq!(big.vectors(), 2048);
    }
}
