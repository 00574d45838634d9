use std::os::unix::io::{AsRawFd, RawFd};

use parking_lot::Mutex;
use pci::vfio::SparseArea as Area;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_VGA_REGION_INDEX,
};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::fake::{pattern, Fake, FakeRegion, Log};
use crate::host::HostRegion;

const PATH: &str = "/sys/bus/pci/devices/0000:01:00.0";
const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const RWM: u32 = RW | VFIO_REGION_INFO_FLAG_MMAP;
const EVENTFDS: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
const OFF: u32 = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;

fn host_offset(index: u32) -> u64 {
    u64::from(index) << 40
}

fn region(
    index: u32,
    size: u64,
    real: u64,
    flags: u32,
    sparse: Option<Vec<Area>>,
) -> (u32, FakeRegion) {
    let info = HostRegion {
        size,
        flags,
        offset: host_offset(index),
        sparse,
    };
    (index, FakeRegion::new(info, real))
}

/// Config space: BAR0 64-bit (VMM pads: 0x5000 bytes, MSI-X table at 0x2000, PBA at
/// 0x3000), BAR2 64-bit prefetchable (kernel pads: 0x10000 with one sparse area of 0x9000),
/// BAR4 32-bit (256 bytes); MSI (64-bit, 1 vector) at 0x50, MSI-X (3 vectors) at 0x70.
fn config_bytes() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..4].copy_from_slice(&0x2342_10deu32.to_le_bytes());
    b[6] = 0x10; // status: capability list
    b[0x10..0x14].copy_from_slice(&0x4u32.to_le_bytes());
    b[0x18..0x1c].copy_from_slice(&0xcu32.to_le_bytes());
    b[0x30..0x34].copy_from_slice(&0xfff0_0001u32.to_le_bytes()); // a ROM
    b[0x34] = 0x50;
    b[0x3d] = 1; // INTx pin A
    b[0x50..0x54].copy_from_slice(&0x0080_7005u32.to_le_bytes());
    b[0x70..0x74].copy_from_slice(&0x0002_0011u32.to_le_bytes());
    b[0x74..0x78].copy_from_slice(&0x0000_2000u32.to_le_bytes());
    b[0x78..0x7c].copy_from_slice(&0x0000_3000u32.to_le_bytes());
    b
}

fn fake_with(regions: Vec<(u32, FakeRegion)>) -> (Fake, Arc<Mutex<Log>>) {
    let fake = Fake::new(regions);
    let log = fake.log();
    (fake, log)
}

fn standard_regions() -> Vec<(u32, FakeRegion)> {
    let mut config = region(CONFIG_REGION, 4096, 0, RW, None);
    config.1 = FakeRegion::with_bytes(config.1.info, config_bytes());
    vec![
        region(0, 0x5000, 0x5000, RWM, None),
        region(
            2,
            0x10000,
            0x9000,
            RWM | vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_CAPS,
            Some(vec![Area {
                offset: 0,
                size: 0x9000,
            }]),
        ),
        region(4, 0x100, 0x100, RWM, None),
        region(VFIO_PCI_ROM_REGION_INDEX, 0x20000, 0, 0, None),
        config,
    ]
}

fn backend() -> (Backend<Fake>, Arc<Mutex<Log>>) {
    let (fake, log) = fake_with(standard_regions());
    (Backend::new(fake, PATH).unwrap(), log)
}

fn read(b: &mut Backend<Fake>, region: u32, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut data = vec![0xaa; len];
    b.region_read(region, offset, &mut data).map(|()| data)
}

fn read_u32(b: &mut Backend<Fake>, region: u32, offset: u64) -> u32 {
    u32::from_le_bytes(read(b, region, offset, 4).unwrap().try_into().unwrap())
}

fn expected(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(pattern).collect()
}

fn host_writes(log: &Mutex<Log>, index: u32) -> Vec<(u64, Vec<u8>)> {
    log.lock()
        .writes
        .iter()
        .filter(|w| w.0 == index)
        .map(|w| (w.1, w.2.clone()))
        .collect()
}

fn areas(r: &ServerRegion) -> Vec<(u64, u64)> {
    r.sparse_areas
        .iter()
        .map(|a| (a.area.offset, a.area.size))
        .collect()
}

fn eventfd_files(n: usize) -> Vec<File> {
    (0..n)
        .map(|_| TempFile::new().unwrap().into_file())
        .collect()
}

#[test]
fn regions_are_power_of_two_bars_whose_mapped_pieces_are_host_fd_areas() {
    let (b, _) = backend();
    let regions = b.regions();
    assert_eq!(regions.len(), 9);
    let fd = b.host.mmap_fd();

    // VMM pads: 0x5000 -> 0x8000; the MSI-X pages stay out of the areas.
    let bar0 = &regions[0];
    assert_eq!(bar0.region_info.size, 0x8000);
    assert_eq!(bar0.region_info.offset, host_offset(0));
    assert_eq!(bar0.region_info.flags, RWM);
    assert_eq!(areas(bar0), vec![(0, 0x2000), (0x4000, 0x1000)]);
    assert_eq!(bar0.mmap_fd, fd);
    // BAR 1 is BAR 0's upper half.
    assert_eq!(regions[1].region_info.size, 0);
    assert!(regions[1].mmap_fd.is_none());

    // Kernel pads: the region is a power of two already; only its sparse area is mapped.
    let bar2 = &regions[2];
    assert_eq!(bar2.region_info.size, 0x10000);
    assert_eq!(bar2.region_info.offset, host_offset(2));
    assert_eq!(areas(bar2), vec![(0, 0x9000)]);
    assert_eq!(bar2.mmap_fd, fd);

    // Smaller than a page: not mapped at all, one page of BAR.
    let bar4 = &regions[4];
    assert_eq!(bar4.region_info.size, 0x1000);
    assert_eq!(bar4.region_info.flags, RW);
    assert!(bar4.sparse_areas.is_empty() && bar4.mmap_fd.is_none());

    for hidden in [3, 5, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_VGA_REGION_INDEX] {
        assert_eq!(
            regions[hidden as usize].region_info.size, 0,
            "region {hidden}"
        );
        assert_eq!(regions[hidden as usize].region_info.index, hidden);
    }
    let config = &regions[CONFIG_REGION as usize];
    assert_eq!(config.region_info.size, 4096);
    assert_eq!(config.region_info.flags, RW);
}

#[test]
fn vmm_padding_reads_zero_and_drops_writes() {
    let (mut b, log) = backend();
    assert_eq!(read(&mut b, 0, 0x4ff0, 16).unwrap(), expected(0x4ff0, 16));
    assert_eq!(read(&mut b, 0, 0x5000, 8).unwrap(), vec![0; 8]);
    // Straddling the end of the real region: real bytes, then zeros.
    let mut want = expected(0x4ffe, 2);
    want.extend([0, 0]);
    assert_eq!(read(&mut b, 0, 0x4ffe, 4).unwrap(), want);
    b.region_write(0, 0x6000, &[1, 2, 3, 4]).unwrap();
    b.region_write(0, 0x4ffe, &[1, 2, 3, 4]).unwrap();
    assert_eq!(host_writes(&log, 0), vec![(0x4ffe, vec![1, 2])]);
    // Past the BAR.
    for (offset, len) in [(0x8000, 1), (0x7ffd, 4), (u64::MAX, 1)] {
        assert_eq!(
            read(&mut b, 0, offset, len).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}

#[test]
fn kernel_padding_is_answered_by_the_host() {
    let (mut b, log) = backend();
    assert_eq!(read(&mut b, 2, 0x8ffc, 4).unwrap(), expected(0x8ffc, 4));
    // The fake answers [0x9000, 0x10000) with 0xff, as nvgrace-gpu does.
    assert_eq!(read(&mut b, 2, 0xa000, 8).unwrap(), vec![0xff; 8]);
    b.region_write(2, 0xa000, &[9; 4]).unwrap();
    assert_eq!(host_writes(&log, 2), vec![(0xa000, vec![9; 4])]);
}

#[test]
fn every_bar_access_served_is_counted_once_by_kind() {
    let (mut b, _) = backend();
    let counters = b.counters();
    let zero = counters.report();
    assert!(zero.values().all(|&v| v == 0), "{zero:?}");
    assert_eq!(zero.len(), 3 * 3, "three counters for each of BARs 0, 2, 4");
    read(&mut b, 0, 0x5000, 8).unwrap(); // VMM padding
    read(&mut b, 0, 0x4ffe, 4).unwrap(); // straddling: reaches the device
    b.region_write(0, 0x6000, &[1]).unwrap(); // VMM padding
    read(&mut b, 2, 0xa000, 4).unwrap(); // the kernel's padding: forwarded
    read(&mut b, 0, 0x2010, 4).unwrap(); // the MSI-X table
    read(&mut b, CONFIG_REGION, 0, 4).unwrap(); // config space is not a BAR
    let _ = read(&mut b, 0, 0x8000, 4); // refused: not served
    let r = counters.report();
    assert_eq!(
        (r["bar0.padding"], r["bar0.forwarded"], r["bar0.msix"]),
        (2, 1, 1)
    );
    assert_eq!((r["bar2.padding"], r["bar2.forwarded"]), (0, 1));
    assert_eq!(r["bar4.forwarded"] + r["bar4.padding"], 0);
}

#[test]
fn a_small_region_gets_padding_up_to_a_page() {
    let (mut b, log) = backend();
    assert_eq!(read(&mut b, 4, 0xfc, 4).unwrap(), expected(0xfc, 4));
    assert_eq!(read(&mut b, 4, 0x100, 4).unwrap(), vec![0; 4]);
    b.region_write(4, 0x200, &[1]).unwrap();
    assert!(host_writes(&log, 4).is_empty());
}

#[test]
fn the_msix_table_is_emulated_and_never_reaches_the_device() {
    let (mut b, log) = backend();
    let entry = [
        0x00, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0, 0, 0, 0, 0,
    ];
    for (i, dword) in entry.chunks(4).enumerate() {
        b.region_write(0, 0x2010 + 4 * i as u64, dword).unwrap();
    }
    // A write the table does not take (wider than 8 bytes) is dropped, not sent on.
    b.region_write(0, 0x2000, &[0xff; 16]).unwrap();
    assert!(host_writes(&log, 0).is_empty());
    let back: Vec<u8> = (0..4)
        .flat_map(|i| read(&mut b, 0, 0x2010 + 4 * i, 4).unwrap())
        .collect();
    assert_eq!(back, entry);
    // The PBA (not the table) is the device's.
    assert_eq!(read(&mut b, 0, 0x3000, 8).unwrap(), expected(0x3000, 8));
    assert!(log.lock().set_irqs.is_empty());
}

#[test]
fn config_space_is_ghvmms_guest_view() {
    let (mut b, log) = backend();
    let c = CONFIG_REGION;
    assert_eq!(read_u32(&mut b, c, 0), 0x2342_10de);
    // BAR sizing: 0x8000-byte 64-bit BAR, 0x10000-byte prefetchable one.
    b.region_write(c, 0x10, &[0xff; 4]).unwrap();
    assert_eq!(read_u32(&mut b, c, 0x10), 0xffff_8004);
    b.region_write(c, 0x18, &[0xff; 4]).unwrap();
    assert_eq!(read_u32(&mut b, c, 0x18), 0xffff_000c);
    assert_eq!(read_u32(&mut b, c, 0x30), 0, "ROM hidden");
    assert_eq!(read(&mut b, c, 0x3d, 1).unwrap(), vec![0], "no INTx");
    assert_eq!(read_u32(&mut b, c, 0x100), 0, "extended space hidden");
    // The BAR registers never reach the device.
    assert!(host_writes(&log, c).is_empty());
    // A 4-byte read at an odd offset is answered byte by byte.
    let whole = read(&mut b, c, 0, 8).unwrap();
    assert_eq!(read(&mut b, c, 1, 4).unwrap(), whole[1..5]);
    assert_eq!(read(&mut b, c, 4092, 4).unwrap(), vec![0; 4]);
    assert!(read(&mut b, c, 4093, 4).is_err());
}

#[test]
fn msi_programming_is_absorbed_and_programs_nothing() {
    let (mut b, log) = backend();
    let c = CONFIG_REGION;
    // MSI: address, data, then enable.
    b.region_write(c, 0x54, &0xfee0_0000u32.to_le_bytes())
        .unwrap();
    b.region_write(c, 0x5c, &0x41u16.to_le_bytes()).unwrap();
    b.region_write(c, 0x52, &1u16.to_le_bytes()).unwrap();
    assert_eq!(read_u32(&mut b, c, 0x54), 0xfee0_0000);
    assert_eq!(read_u32(&mut b, c, 0x50) >> 16 & 1, 1, "enable reads back");
    // MSI-X enable.
    b.region_write(c, 0x72, &0x8000u16.to_le_bytes()).unwrap();
    assert_eq!(read_u32(&mut b, c, 0x70) >> 31, 1);
    assert!(host_writes(&log, c).is_empty());
    assert!(
        log.lock().set_irqs.is_empty(),
        "only SET_IRQS programs the device"
    );
    // The command register reaches the device (its memory decode enables the mmaps).
    b.region_write(c, 4, &6u16.to_le_bytes()).unwrap();
    assert_eq!(host_writes(&log, c), vec![(4, vec![6, 0])]);
}

#[test]
fn set_irqs_reaches_the_device_unchanged() {
    let (mut b, log) = backend();
    let irqs = b.irqs();
    let counts: Vec<_> = irqs.iter().map(|i| (i.index, i.count)).collect();
    assert_eq!(counts, vec![(0, 0), (1, 1), (2, 3)], "INTx not offered");

    b.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, EVENTFDS, 1, 2, eventfd_files(2))
        .unwrap();
    // vfio-pci does not mask MSI-X: its answer comes back as it is.
    let e = b
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
            0,
            3,
            vec![],
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
    assert_eq!(
        log.lock().set_irqs,
        vec![
            (2, EVENTFDS, 1, 2, 2),
            (
                2,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
                0,
                3,
                0
            )
        ]
    );
    b.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, OFF, 0, 0, vec![])
        .unwrap();
    assert!(b.irqs_on.is_empty());
    assert_eq!(log.lock().irq_enabled, None);
}

/// vfio-pci enables MSI/MSI-X for `start + count` vectors on the first SET_IRQS with
/// eventfds, even for count 0 (start 1, count 0: one vector, no eventfd). The clean-up must
/// turn that off too, or the next client finds MSI-X on and cannot enable MSI (found by the
/// fuzz target vfio_user_backend).
#[test]
fn eventfds_for_no_vector_enable_and_are_turned_off_when_the_client_leaves() {
    let (mut b, log) = backend();
    b.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, EVENTFDS, 1, 0, vec![])
        .unwrap();
    assert_eq!(log.lock().irq_enabled, Some(VFIO_PCI_MSIX_IRQ_INDEX));
    b.client_gone();
    assert_eq!(log.lock().irq_enabled, None);
    b.set_irqs(VFIO_PCI_MSI_IRQ_INDEX, EVENTFDS, 0, 1, eventfd_files(1))
        .unwrap();
}

#[test]
fn set_irqs_outside_what_is_offered_is_refused() {
    let (mut b, log) = backend();
    for (index, start, count) in [
        (VFIO_PCI_INTX_IRQ_INDEX, 0, 1),
        (VFIO_PCI_MSI_IRQ_INDEX, 0, 2),
        (VFIO_PCI_MSI_IRQ_INDEX, 1, 1),
        (VFIO_PCI_MSIX_IRQ_INDEX, 3, 1),
        (VFIO_PCI_MSIX_IRQ_INDEX, u32::MAX, 2),
        (VFIO_PCI_MSIX_IRQ_INDEX, 0, u32::MAX),
        (3, 0, 0),
        (u32::MAX, 0, 1),
    ] {
        let e = b
            .set_irqs(index, EVENTFDS, start, count, eventfd_files(3))
            .unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "{index} {start} {count}"
        );
    }
    assert!(log.lock().set_irqs.is_empty());
}

#[test]
fn a_dma_map_without_a_descriptor_names_shared_on() {
    let (mut b, log) = backend();
    let e = b
        .dma_map(DmaMapFlags::READ_WRITE, 0, 0x1000, 0x1000, None)
        .unwrap_err();
    assert!(e.to_string().contains("shared=on"), "{e}");
    assert!(log.lock().dma.is_empty());
}

fn map(b: &mut Backend<Fake>, iova: u64, size: u64) -> io::Result<()> {
    let file = TempFile::new().unwrap().into_file();
    b.dma_map(DmaMapFlags::READ_WRITE, 0, iova, size, Some(file))
}

#[test]
fn dma_maps_may_not_overlap_and_unmaps_take_whole_mappings() {
    let (mut b, log) = backend();
    map(&mut b, 0x10000, 0x10000).unwrap();
    map(&mut b, 0x20000, 0x1000).unwrap();
    for (iova, size) in [
        (0x10000, 1),
        (0xf000, 0x2000),
        (0x1f000, 0x10000),
        (0, u64::MAX),
    ] {
        let e = map(&mut b, iova, size).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{iova:#x}+{size:#x}");
    }
    for (iova, size) in [(0x40000, 0), (u64::MAX, 2)] {
        let e = map(&mut b, iova, size).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{iova:#x}+{size:#x}");
    }
    let e = b
        .dma_map(
            DmaMapFlags::from_bits_retain(8),
            0,
            0x50000,
            0x1000,
            Some(TempFile::new().unwrap().into_file()),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(
        b.dma_mappings(),
        vec![(0x10000, 0x10000), (0x20000, 0x1000)]
    );

    let unmap = |b: &mut Backend<Fake>, iova, size| {
        b.dma_unmap(DmaUnmapFlags::empty(), iova, size)
            .map_err(|e| e.raw_os_error())
    };
    assert_eq!(unmap(&mut b, 0x30000, 0x1000), Err(Some(libc::ENOENT)));
    assert_eq!(
        unmap(&mut b, 0x18000, 0x1000),
        Err(Some(libc::EINVAL)),
        "cuts one"
    );
    assert_eq!(
        unmap(&mut b, 0x10000, 0x10800),
        Err(Some(libc::EINVAL)),
        "cuts the second"
    );
    assert_eq!(unmap(&mut b, u64::MAX, 2), Err(Some(libc::EINVAL)));
    assert_eq!(b.dma_mappings().len(), 2, "a refused unmap changes nothing");
    assert_eq!(unmap(&mut b, 0, 0x30000), Ok(()));
    assert!(b.dma_mappings().is_empty());
    assert!(log.lock().dma.is_empty());
    assert_eq!(unmap(&mut b, 0x10000, 0x10000), Err(Some(libc::ENOENT)));
}

#[test]
fn unmap_all_and_failed_maps_leave_nothing() {
    let (mut b, log) = backend();
    map(&mut b, 0, 0x1000).unwrap();
    map(&mut b, 0x1000, 0x1000).unwrap();
    b.dma_unmap(DmaUnmapFlags::UNMAP_ALL, 0, 0).unwrap();
    assert!(log.lock().dma.is_empty() && b.dma_mappings().is_empty());
    let e = b
        .dma_unmap(DmaUnmapFlags::GET_DIRTY_PAGE_INFO, 0, 0x1000)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    log.lock().fail_dma_map = true;
    assert!(map(&mut b, 0, 0x1000).is_err());
    assert!(b.dma_mappings().is_empty());
    log.lock().fail_dma_map = false;
    map(&mut b, 0, 0x1000).unwrap();
}

#[test]
fn when_the_client_leaves_interrupts_go_off_memory_is_unmapped_and_the_device_reset() {
    let (mut b, log) = backend();
    b.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, EVENTFDS, 0, 3, eventfd_files(3))
        .unwrap();
    map(&mut b, 0x10000, 0x1000).unwrap();
    let c = CONFIG_REGION;
    b.region_write(c, 0x10, &0xe000_0000u32.to_le_bytes())
        .unwrap();
    b.region_write(c, 0x72, &0x8000u16.to_le_bytes()).unwrap();
    log.lock().set_irqs.clear();

    b.client_gone();
    let l = log.lock();
    assert_eq!(l.set_irqs, vec![(VFIO_PCI_MSIX_IRQ_INDEX, OFF, 0, 0, 0)]);
    assert!(l.dma.is_empty());
    assert_eq!(l.resets, 1);
    drop(l);
    // The next client starts from a fresh view.
    assert_eq!(read_u32(&mut b, c, 0x10), 0x4);
    assert_eq!(read_u32(&mut b, c, 0x70) >> 31, 0);
    b.client_gone();
    assert_eq!(log.lock().set_irqs.len(), 1, "nothing left to turn off");
}

#[test]
fn a_reset_resets_the_device_and_the_view() {
    let (mut b, log) = backend();
    let c = CONFIG_REGION;
    b.region_write(c, 0x10, &0xe000_0000u32.to_le_bytes())
        .unwrap();
    b.reset().unwrap();
    assert_eq!(log.lock().resets, 1);
    assert_eq!(read_u32(&mut b, c, 0x10), 0x4);
}

#[test]
fn dropping_the_backend_unmaps_what_the_client_left() {
    let (mut b, log) = backend();
    map(&mut b, 0x10000, 0x1000).unwrap();
    drop(b);
    assert!(log.lock().dma.is_empty());
}

#[test]
fn bad_region_info_is_refused_with_ghvmms_text() {
    let mut regions = standard_regions();
    regions[0].1.info.sparse = Some(vec![Area {
        offset: 0x4000,
        size: 0x2000,
    }]);
    let (fake, _) = fake_with(regions);
    let e = Backend::new(fake, PATH).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{PATH}: region 0: sparse area 0x4000+0x2000 lies outside the region (0x5000 bytes)"
        )
    );

    let mut regions = standard_regions();
    regions[0].1.info.size = u64::MAX;
    let (fake, _) = fake_with(regions);
    let e = Backend::new(fake, PATH).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("{PATH}: region 0: size 0xffffffffffffffff cannot be rounded up to a power of two")
    );

    let mut regions = standard_regions();
    let last = regions.len() - 1;
    regions[last].1.bytes[0x24..0x28].copy_from_slice(&0x4u32.to_le_bytes());
    regions.push(region(5, 0x1000, 0x1000, RW, None));
    let (fake, _) = fake_with(regions);
    let e = Backend::new(fake, PATH).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("config space: {PATH}: BAR 5: a 64-bit BAR needs two registers (BAR 5 cannot be 64-bit)")
    );

    let mut regions = standard_regions();
    regions.pop();
    let (fake, _) = fake_with(regions);
    let e = Backend::new(fake, PATH).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("config space: {PATH}: the device has no config region")
    );
}

#[test]
fn no_region_access_panics() {
    let (mut b, _) = backend();
    let offsets = [
        0,
        1,
        3,
        4,
        0x3c,
        0xfff,
        0x1000,
        0x1fff,
        0x2000,
        0x202c,
        0x2ffe,
        0x3000,
        0x4ffe,
        0x5000,
        0x7fff,
        0x8000,
        0x8ffe,
        0xffff,
        0x10000,
        u64::MAX - 1,
        u64::MAX,
    ];
    for region in 0..12 {
        for &offset in &offsets {
            for len in [0, 1, 2, 3, 4, 5, 8, 16, 0x1001] {
                let _ = read(&mut b, region, offset, len);
                let _ = b.region_write(region, offset, &vec![0xff; len]);
            }
        }
    }
}

/// The backend behind the `vfio_user` crate's own server and client, over a real socket:
/// what a client learns (regions with the host fd for their areas, interrupts) and that
/// accesses, DMA maps and SET_IRQS arrive as sent.
#[test]
fn over_the_wire_with_the_crates_client() {
    use std::os::unix::fs::MetadataExt;
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    let tmp = TempDir::new().unwrap();
    let path = tmp.as_path().join("dev.sock");
    let (mut b, log) = backend();
    let (listener, socket) = crate::socket::bind(&path).unwrap();
    let server = vfio_user::Server::from_owned_fd(listener.into(), true, b.irqs(), b.regions());
    let mmap_id = {
        let m = b.host.mmap_file().unwrap().metadata().unwrap();
        (m.dev(), m.ino())
    };
    let serving = std::thread::spawn(move || {
        let r = server.run(&mut b);
        b.client_gone();
        (r.map_err(|e| e.to_string()), b)
    });

    let mut client = vfio_user::Client::new(&path).unwrap();
    let bar0 = client.region(0).unwrap();
    assert_eq!(bar0.size, 0x8000);
    let areas: Vec<_> = bar0
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(areas, vec![(0, 0x2000), (0x4000, 0x1000)]);
    let fo = bar0.file_offset.as_ref().unwrap();
    assert_eq!(fo.start(), host_offset(0));
    let m = fo.file().metadata().unwrap();
    assert_eq!((m.dev(), m.ino()), mmap_id, "the client got the host fd");
    assert!(client.region(4).unwrap().file_offset.is_none());
    assert_eq!(client.region(CONFIG_REGION).unwrap().size, 4096);

    let mut id = [0u8; 4];
    client.region_read(CONFIG_REGION, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x2342_10de);
    let mut pad = [0xaau8; 4];
    client.region_read(0, 0x4ffe, &mut pad).unwrap();
    assert_eq!(pad[2..], [0, 0]);
    client.region_write(0, 0x1000, &[7; 4]).unwrap();

    let msix = client.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!(msix.count, 3);
    assert_eq!(
        client.get_irq_info(VFIO_PCI_INTX_IRQ_INDEX).unwrap().count,
        0
    );
    let efds: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_raw_fd()).collect();
    client
        .set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, EVENTFDS, 0, 2, &raw)
        .unwrap();

    let mem = TempFile::new().unwrap().into_file();
    mem.set_len(0x2000).unwrap();
    client
        .dma_map(0x1000, 0x100000, 0x1000, mem.as_raw_fd())
        .unwrap();
    client.reset().unwrap();
    drop(client);

    let (result, b) = serving.join().unwrap();
    result.unwrap();
    let l = log.lock();
    assert!(l.writes.contains(&(0, 0x1000, vec![7; 4])));
    assert_eq!(
        l.set_irqs,
        vec![
            (VFIO_PCI_MSIX_IRQ_INDEX, EVENTFDS, 0, 2, 2),
            (VFIO_PCI_MSIX_IRQ_INDEX, OFF, 0, 0, 0)
        ]
    );
    assert_eq!(
        l.resets, 2,
        "the client's reset, then the one after it left"
    );
    assert!(l.dma.is_empty(), "unmapped when the client left");
    drop(l);
    assert!(b.dma_mappings().is_empty());
    drop(socket);
    assert!(!path.exists());
}

/// A Version message shorter than its own header panics inside the crate; the session ends,
/// the device is cleaned up, and the next client is served.
#[test]
fn a_malformed_message_ends_only_that_client() {
    use std::io::Write;
    use vmm_sys_util::tempdir::TempDir;

    use crate::serve::{serve_one, SessionEnd};

    let tmp = TempDir::new().unwrap();
    let path = tmp.as_path().join("dev.sock");
    let (mut b, log) = backend();
    let (listener, _socket) = crate::socket::bind(&path).unwrap();
    let server = vfio_user::Server::from_owned_fd(listener.into(), true, b.irqs(), b.regions());
    let serving = std::thread::spawn(move || {
        let first = serve_one(&server, &mut b);
        let second = serve_one(&server, &mut b);
        (
            matches!(first, SessionEnd::Malformed)
                .then_some(())
                .ok_or(format!("{first:?}")),
            matches!(second, SessionEnd::Left)
                .then_some(())
                .ok_or(format!("{second:?}")),
        )
    });
    let mut evil = std::os::unix::net::UnixStream::connect(&path).unwrap();
    // message id 0, command 1 (VERSION), message size 4, flags 0, error 0.
    let mut header = Vec::new();
    for w in [0u16, 1] {
        header.extend(w.to_le_bytes());
    }
    for w in [4u32, 0, 0] {
        header.extend(w.to_le_bytes());
    }
    evil.write_all(&header).unwrap();
    evil.write_all(&[0; 8]).unwrap();
    let client = vfio_user::Client::new(&path).unwrap();
    assert_eq!(client.region(0).unwrap().size, 0x8000);
    drop(client);
    let (first, second) = serving.join().unwrap();
    first.unwrap();
    second.unwrap();
    assert_eq!(log.lock().resets, 2, "cleaned up after each");
}
