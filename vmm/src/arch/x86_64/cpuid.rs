//! CPUID as the guest sees it: what KVM supports, with each vCPU's APIC id and topology patched
//! in (the guest's SMP bring-up and scheduler topology read them), and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const EDX_HTT: u32 = 1 << 28;

/// Level types of leaf 0xB / 0x1F (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Patches `cpuid` for vCPU `index` of `count` (one socket, one thread per core).
pub fn patch(cpuid: &mut CpuId, index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count);
    // Bits needed to number `count` cores, as leaf 0xB's "shift to next level".
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (apic_id << EBX_APIC_ID_SHIFT)
                    | (count.min(255) << EBX_LOGICAL_COUNT_SHIFT);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                patch_topology(e, apic_id, count, core_bits)
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                // Core id in EBX[7:0], one thread per core (EBX[15:8] = 0).
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0] = number of cores - 1, ECX[15:12] = APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_bits << 12);
            }
            _ => {}
        }
    }
}

fn patch_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    e.edx = apic_id;
    match e.index {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = (LEVEL_SMT << 8) | e.index;
        }
        1 => {
            e.eax = core_bits;
            e.ebx = count;
            e.ecx = (LEVEL_CORE << 8) | e.index;
        }
        _ => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = e.index;
        }
    }
}

/// Guest physical address bits, from leaf 0x8000_0008 EAX[7:0]; 36 if the leaf is missing
/// (the architectural minimum).
pub fn phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_AMD_SIZE_IDS)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|b| *b >= 32)
        .unwrap_or(36)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xdead,
            ebx: 0xbeef_1234,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn patches_apic_id_and_topology() {
        let mut c = CpuId::from_entries(&[
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x8000_0008, 0),
        ])
        .unwrap();
        patch(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x1234);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx), (2, 4, (2 << 8) | 1));
        assert_eq!(s[3].ecx & 0xff, 3);
    }

    #[test]
    fn single_cpu_topology() {
        let mut c = CpuId::from_entries(&[entry(0xb, 1)]).unwrap();
        patch(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].eax, 0);
    }

    #[test]
    fn phys_bits_from_leaf() {
        let mut e = entry(0x8000_0008, 0);
        e.eax = 0x3028;
        assert_eq!(phys_bits(&CpuId::from_entries(&[e]).unwrap()), 40);
        assert_eq!(phys_bits(&CpuId::from_entries(&[entry(1, 0)]).unwrap()), 36);
    }
}
