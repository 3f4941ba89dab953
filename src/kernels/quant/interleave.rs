//! The interleaved layout: [`ROWS`] weight rows of one type held block by block, so that a
//! kernel loads the same block of all of them at once and gives each row one 32-bit lane.
//!
//! A block of a row is cut into columns: its f16 fields (2 bytes) and 4-byte runs of its
//! values. A group of [`ROWS`] rows holds its rows' block 0, then their block 1, and so on;
//! within a block, column after column, each column of the [`ROWS`] rows side by side. Q4_0's
//! 18 bytes are the columns `d`, `qs[0..4]`, `qs[4..8]`, `qs[8..12]`, `qs[12..16]`, so a
//! group's block is 8 `d` (one f16 vector), then four 32-byte registers whose lane r holds
//! four bytes of row r: their low nibbles are values 4j..4j + 4 of the row, their high ones
//! values 16 + 4j.., each lane multiplying the same four activations (one broadcast).
//!
//! The bytes are the file's, moved: a group takes the bytes its rows took, so a matrix is
//! repacked in place and holds no more memory. A segment's rows past its last whole group
//! stay as they were (row after row), for the per-row kernels.

use super::GgmlType;
use rayon::prelude::*;

/// Rows per group: one 32-bit lane of a 256-bit register each.
pub(super) const ROWS: usize = 8;

const Q4_K_COLUMNS: [usize; 37] = {
    let mut columns = [4; 37];
    columns[0] = 2;
    columns[1] = 2;
    columns
};

/// The widths of the columns of a block of `ty`, in order, if `ty` is held interleaved.
fn columns(ty: GgmlType) -> Option<&'static [usize]> {
    match ty {
        GgmlType::Q4_0 => Some(&[2, 4, 4, 4, 4]),
        // `d`, `dmin`, the three words of packed scales and minimums, `qs` in 4-byte runs.
        GgmlType::Q4_K => Some(&Q4_K_COLUMNS),
        _ => None,
    }
}

/// Whether whole groups of `ty` are held interleaved.
pub(super) fn interleaved(ty: GgmlType) -> bool {
    columns(ty).is_some()
}

/// Rearranges `bytes` (whole groups of [`ROWS`] rows of `ty`, `row_bytes` each, row after
/// row) into groups, in place; a no-op for a type that is not held interleaved.
pub(super) fn interleave(ty: GgmlType, bytes: &mut [u8], row_bytes: usize) {
    let Some(columns) = columns(ty) else { return };
    let block_bytes = ty.block().1;
    bytes.par_chunks_exact_mut(ROWS * row_bytes).for_each_init(
        Vec::new,
        |rows: &mut Vec<u8>, group| {
            rows.clear();
            rows.extend_from_slice(group);
            for (b, out) in group.chunks_exact_mut(ROWS * block_bytes).enumerate() {
                let mut column = 0;
                for &width in columns {
                    for r in 0..ROWS {
                        let from = r * row_bytes + b * block_bytes + column;
                        let to = ROWS * column + r * width;
                        out[to..to + width].copy_from_slice(&rows[from..from + width]);
                    }
                    column += width;
                }
            }
        },
    );
}

/// Row `r` of a group (`group`: its bytes, of `ty`, held interleaved), as the file holds it:
/// its blocks in `out` (`row_bytes` long).
pub(super) fn row_of_group(ty: GgmlType, group: &[u8], r: usize, out: &mut [u8]) {
    let columns = columns(ty).expect("only interleaved types are held in groups");
    let block_bytes = ty.block().1;
    for (block, out) in group
        .chunks_exact(ROWS * block_bytes)
        .zip(out.chunks_exact_mut(block_bytes))
    {
        let mut column = 0;
        for &width in columns {
            let from = ROWS * column + r * width;
            out[column..column + width].copy_from_slice(&block[from..from + width]);
            column += width;
        }
    }
}
