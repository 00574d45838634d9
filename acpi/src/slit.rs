//! SLIT (revision 1): the relative distance between every pair of proximity domains, one
//! byte each, row-major (entry [i][j] is the distance from domain i to domain j).
//!
//! Built here rather than with `acpi_tables::slit`: its `set_distance` writes [i][j] and
//! [j][i] together, so it cannot say a measured asymmetric matrix, it corrupts the checksum
//! when a diagonal entry changes, and it panics on an out-of-range domain.

use crate::encode::sdt;
use crate::{AcpiError, NumaDesc};

pub(crate) const REVISION: u8 = 1;

/// Expects a validated description: domains 0..n-1 in node order, an n x n matrix.
pub(crate) fn build(numa: &NumaDesc) -> Result<Vec<u8>, AcpiError> {
    let n = numa.nodes.len();
    let mut body = Vec::with_capacity(8usize.saturating_add(n.saturating_mul(n)));
    body.extend_from_slice(&(n as u64).to_le_bytes());
    for row in &numa.distances {
        body.extend_from_slice(row);
    }
    sdt(*b"SLIT", REVISION, *b"GHVMMSLI", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::numa_platform;

    #[test]
    fn header_localities_and_matrix_row_major() {
        let mut numa = numa_platform(4).numa.unwrap();
        // Asymmetric on purpose: [i][j] is from i to j, and that is what the guest must read.
        numa.distances[0][1] = 21;
        numa.distances[1][0] = 22;
        numa.distances[9][2] = 255;
        let t = build(&numa).unwrap();
        assert_eq!(&t[0..4], b"SLIT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.len(), 44 + 10 * 10);
        assert_eq!(t[8], 1, "revision");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        assert_eq!(&t[10..16], b"GHVMM ");
        assert_eq!(&t[16..24], b"GHVMMSLI");
        assert_eq!(u64::from_le_bytes(t[36..44].try_into().unwrap()), 10);
        let at = |i: usize, j: usize| t[44 + i * 10 + j];
        assert_eq!((at(0, 1), at(1, 0), at(9, 2), at(2, 9)), (21, 22, 255, 30));
        for i in 0..10 {
            assert_eq!(at(i, i), 10);
            for j in 0..10 {
                assert_eq!(at(i, j), numa.distances[i][j], "[{i}][{j}]");
            }
        }
    }
}
