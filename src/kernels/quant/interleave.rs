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
//! The bytes are the file's, moved (Q5_0's `qh`, 32 bits, in another order: see
//! [`hold_fifth_bits`]): a group takes the bytes its rows took, so a matrix is repacked in
//! place and holds no more memory. A segment's rows past its last whole group
//! stay as they were (row after row), for the per-row kernels.

use super::GgmlType;
use rayon::prelude::*;

/// Rows per group: one 32-bit lane of a 256-bit register each.
pub(super) const ROWS: usize = 8;

/// A column of a block, as a group holds it.
#[derive(Clone, Copy)]
enum Column {
    /// This many bytes, as the file holds them.
    Bytes(usize),
    /// Q5_0's `qh`, its 32 bits reordered (see [`hold_fifth_bits`]).
    FifthBits,
}

impl Column {
    fn width(self) -> usize {
        match self {
            Column::Bytes(width) => width,
            Column::FifthBits => 4,
        }
    }
}

const Q4_K_COLUMNS: [Column; 37] = {
    let mut columns = [Column::Bytes(4); 37];
    columns[0] = Column::Bytes(2);
    columns[1] = Column::Bytes(2);
    columns
};

/// The columns of a block of `ty`, in order, if `ty` is held interleaved.
fn columns(ty: GgmlType) -> Option<&'static [Column]> {
    use Column::{Bytes, FifthBits};
    match ty {
        GgmlType::Q4_0 => Some(&[Bytes(2), Bytes(4), Bytes(4), Bytes(4), Bytes(4)]),
        // `d`, then the 32 signed values in 4-byte runs.
        GgmlType::Q8_0 => Some(&[
            Bytes(2),
            Bytes(4),
            Bytes(4),
            Bytes(4),
            Bytes(4),
            Bytes(4),
            Bytes(4),
            Bytes(4),
            Bytes(4),
        ]),
        GgmlType::Q5_0 => Some(&[Bytes(2), FifthBits, Bytes(4), Bytes(4), Bytes(4), Bytes(4)]),
        // `d`, `dmin`, the three words of packed scales and minimums, `qs` in 4-byte runs.
        GgmlType::Q4_K => Some(&Q4_K_COLUMNS),
        _ => None,
    }
}

/// Q5_0's fifth bits as a group holds them: the bit of value `16h + 4j + k` (h: low or high
/// nibbles, j: the 4-byte column of `qs`, k: the byte in it) at bit `8k + 4h + j`. Byte k
/// then holds the eight bits of the values in byte k of a lane, and a shift by `4 − (4h + j)`
/// puts those of column j's low (h = 0) or high (h = 1) nibbles at bit 4 of their bytes,
/// beside the nibble: a shift, a mask and an or per register, where the file's order needs
/// a shuffle and a compare.
fn hold_fifth_bits(qh: u32) -> u32 {
    (0..32).fold(0, |held, v| {
        let (h, j, k) = (v / 16, v % 16 / 4, v % 4);
        held | ((qh >> v) & 1) << (8 * k + 4 * h + j)
    })
}

/// The inverse of [`hold_fifth_bits`].
fn file_fifth_bits(held: u32) -> u32 {
    (0..32).fold(0, |qh, v| {
        let (h, j, k) = (v / 16, v % 16 / 4, v % 4);
        qh | ((held >> (8 * k + 4 * h + j)) & 1) << v
    })
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
                let mut at = 0;
                for &column in columns {
                    let width = column.width();
                    for r in 0..ROWS {
                        let from = &rows[r * row_bytes + b * block_bytes + at..][..width];
                        let to = &mut out[ROWS * at + r * width..][..width];
                        to.copy_from_slice(from);
                        if let Column::FifthBits = column {
                            let qh = u32::from_le_bytes([to[0], to[1], to[2], to[3]]);
                            to.copy_from_slice(&hold_fifth_bits(qh).to_le_bytes());
                        }
                    }
                    at += width;
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
        let mut at = 0;
        for &column in columns {
            let width = column.width();
            let to = &mut out[at..at + width];
            to.copy_from_slice(&block[ROWS * at + r * width..][..width]);
            if let Column::FifthBits = column {
                let held = u32::from_le_bytes([to[0], to[1], to[2], to[3]]);
                to.copy_from_slice(&file_fifth_bits(held).to_le_bytes());
            }
            at += width;
        }
    }
}
