//! The tile kernels' dispatchers: each runs a tile of up to `MR` rows (`MR_WIDE` over grouped
//! layouts on AVX-512) × one or two panels on the kernel of the [`Isa`], which it checks first,
//! for a number of rows known at compile time. Also what a kernel writes ([`Target`]: the
//! output itself, or a tile on the stack for a panel cut short by the matrix's edge), what it
//! prefetches while it works ([`Ahead`]), and the sizes the kernels are built for.

use super::block::micro_panels_of;
use super::pack::{self, INT8_PANEL_ROW};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use super::{portable, Isa, NR};

/// Rows per micro-kernel call: 6 × 2 accumulators + 2 weight registers + 1 broadcast fit the
/// 16 AVX2 registers.
pub(super) const MR: usize = 6;
/// Rows per micro-kernel call of the AVX-512 kernels over grouped layouts: 12 × 2
/// accumulators + 2 weight registers + 1 broadcast of its 32 registers.
pub(super) const MR_WIDE: usize = 12;

/// Panels a one-row product (a decoded token) reads side by side: four streams from memory
/// per core instead of one. A core keeps more reads in flight across several streams: on the
/// 2-core Zen 3 VM, GPT-2 small's weight products for one token went from 66–79 to 69–92
/// tokens/s in f32 and from 126–143 to 132–154 in bf16 (2, 3 and 4 streams measured alike;
/// four keep eight FMA chains in flight).
pub(super) const ROW_STREAMS: usize = 4;
/// How far ahead of its reads a one-row product of bf16 or int8 weights asks for them
/// (`prefetcht0`), in bytes. Measured on the 2-core Zen 3 VM, GPT-2 small's weight products
/// for one token (tokens/s, six interleaved runs each): bf16 111 → 130 and int8 ~220 → ~255
/// at 1024 bytes (512: about half the gain; 1536–2048: no better). Those kernels consume
/// weights faster per instruction than the hardware prefetchers fetch them for one core.
/// f32 weights stream at the same rate without it and lost ~20% with it, so they go without.
const PREFETCH_AHEAD: usize = 1024;

/// How far ahead of the weights at `offset` bytes into its panel (of `panel_bytes`) a
/// one-row kernel reading `streams` panels side by side prefetches: [`PREFETCH_AHEAD`], or,
/// near the panel's end, as far into the panel that the same stream reads next (`streams`
/// panels on), so that the next group of panels starts with its first lines on the way
/// instead of waiting for memory on four cold streams. A token of GPT-2 small starts ~2,000
/// such groups; same-process A/B on its weight products (300 interleaved steps): bf16 +4%,
/// int8 +9% (its panels are half as long, so a cold start weighs twice as much).
#[inline(always)]
pub(super) fn prefetch_distance(offset: usize, panel_bytes: usize, streams: usize) -> usize {
    if offset + PREFETCH_AHEAD < panel_bytes {
        PREFETCH_AHEAD
    } else {
        PREFETCH_AHEAD + (streams - 1) * panel_bytes
    }
}

/// Cache lines of weights that a micro-kernel call asks L2 for (`prefetcht1`) while it
/// works, one every [`AHEAD_STEP`] input steps: its share of the panel blocks that its task
/// reads next (see `Block::run_float`), lines `first ..` of them, taken from each of the
/// `panels` blocks in turn. A model's weights come from memory once per forward
/// pass, and the first micro-panel of rows to read a panel block otherwise waits on memory
/// for it: the hardware prefetchers cannot fetch 48 KiB at the rate one core's FMAs consume
/// it. Same-process A/B on the 2-core Zen 3 VM: BERT-base 1×128 +3.8%, +4.2%, +2.2% and
/// +6.2% (T0, T1 and T2 hints alike); MiniLM 32×128 +1.5%. A product over weights that are
/// not in cache, 128×768 · 768×3072, one core: 87.0 → 93.3 GFLOP/s (median), as fast as
/// over weights already in L3 (90.1 without, 93.1 with).
#[derive(Clone, Copy)]
// Read by the AVX2 kernel only: the portable one does not prefetch.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Ahead {
    /// The next K block of the first next panel.
    pub(super) start: *const u8,
    /// Bytes from one panel to the next.
    pub(super) panel_bytes: usize,
    /// log2 of the panels the lines are taken from in turn (0 or 1): a shift, since the
    /// kernels compute an address every few steps and a division would cost more than the
    /// steps in between (it cost 4–5% of an AVX2 f32 forward pass).
    pub(super) panels_log2: u32,
    pub(super) first: usize,
    pub(super) lines: usize,
}

impl Ahead {
    pub(super) const NONE: Ahead = Ahead {
        start: std::ptr::null(),
        panel_bytes: 0,
        panels_log2: 0,
        first: 0,
        lines: 0,
    };

    /// Line `line` of this call's share (possibly past the weights: only prefetched).
    #[inline(always)]
    pub(super) fn address(&self, line: usize) -> *const u8 {
        let line = self.first + line;
        let panel = line & ((1 << self.panels_log2) - 1);
        let row = line >> self.panels_log2;
        self.start
            .wrapping_add(panel * self.panel_bytes)
            .wrapping_add(row * 64)
    }
}

/// Input steps of a micro-kernel per line asked for by [`Ahead`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const AHEAD_STEP: usize = 8;

/// Pairs of inputs summed in i32 before going to f32: 128 pairs of |16-bit · 8-bit| products
/// stay below 2^31 (128 · 2 · 32767 · 127 ≈ 1.07e9).
pub(super) const INT8_PAIRS_PER_SUM: usize = 128;

/// Where a micro-kernel puts its mr × (NR · panels) results: `c[i·ldc + j] = acc · scale[j] +
/// bias[j]` on the first K block, `c[i·ldc + j] += acc · scale[j]` on the others (null
/// `scales` and `bias` are 1 and 0). Integer sums over u8 quads first lose their zero
/// point's share, `acc − zero_points[i] · column_sums[j]`, where `column_sums` is not null
/// (the first K block).
#[derive(Clone, Copy)]
pub(super) struct Target {
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
    pub(super) first: bool,
    pub(super) bias: *const f32,
    pub(super) scales: *const f32,
    /// One scale per row (int8 products), or null.
    pub(super) row_scales: *const f32,
    /// One zero point per row (int8 quads), or null.
    pub(super) zero_points: *const i32,
    /// One sum of weights per column (int8 quads, first K block), or null.
    pub(super) column_sums: *const i32,
}

impl Target {
    pub(super) const NONE: Target = Target {
        c: std::ptr::null_mut(),
        ldc: 0,
        first: true,
        bias: std::ptr::null(),
        scales: std::ptr::null(),
        row_scales: std::ptr::null(),
        zero_points: std::ptr::null(),
        column_sums: std::ptr::null(),
    };

    /// The raw sums, into a tile on the stack (one panel wide).
    pub(super) fn tile(tile: &mut [[f32; NR]; MR]) -> Self {
        Self {
            c: tile.as_mut_ptr().cast(),
            ldc: NR,
            ..Target::NONE
        }
    }
}

/// `$call` with the const `$m` = `$mr` rows: one of the literals listed, or else `$most`.
macro_rules! with_rows_of {
    ($mr:expr, $m:ident => $call:expr; $($rows:literal)*; $most:expr) => {
        match $mr {
            $($rows => {
                const $m: usize = $rows;
                $call
            })*
            _ => {
                const $m: usize = $most;
                $call
            }
        }
    };
}

/// `$call` with the const `$m` = `$mr` rows (1 ..= MR; more is MR).
macro_rules! with_rows {
    ($mr:expr, $m:ident => $call:expr) => {
        with_rows_of!($mr, $m => $call; 1 2 3 4 5; MR)
    };
}

/// `$call` with the const `$m` = `$mr` rows (1 ..= MR_WIDE; more is MR_WIDE).
#[cfg(target_arch = "x86_64")]
macro_rules! with_wide_rows {
    ($mr:expr, $m:ident => $call:expr) => {
        with_rows_of!($mr, $m => $call; 1 2 3 4 5 6 7 8 9 10 11; MR_WIDE)
    };
}

/// `avx512::$kernel::<M, P>(args)` for M = `$mr` rows (up to MR_WIDE) and P = `$width`
/// panels (1 or 2).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_wide_tile {
    ($kernel:ident, $mr:expr, $width:expr, ($($arg:expr),*)) => {
        with_wide_rows!($mr, M => match $width {
            2 => avx512::$kernel::<M, 2>($($arg),*),
            _ => avx512::$kernel::<M, 1>($($arg),*),
        })
    };
}

/// `avx512::$kernel::<M, P>(args)` for M = `$mr` rows and P = `$width` panels (1 or 2).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_tile {
    ($kernel:ident, $mr:expr, $width:expr, ($($arg:expr),*)) => {
        with_rows!($mr, M => match $width {
            2 => avx512::$kernel::<M, 2>($($arg),*),
            _ => avx512::$kernel::<M, 1>($($arg),*),
        })
    };
}

/// The f32 micro-kernels: `mr` packed rows `a` × `width` panels of `b` (`stride` values
/// apart), by instruction set. Only AVX-512 takes two panels.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_f32(
    isa: Isa,
    mr: usize,
    width: usize,
    a: &[f32],
    b: &[f32],
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let kc = a.len() / mr;
    debug_assert!(b.len() == (width - 1) * stride + kc * NR);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ahead, stride);
    match isa {
        // SAFETY (each arm): the CPU has the instruction set's features (`Isa` is only
        // chosen when it does); `a` holds kc·mr values and `b` `width` panels of kc·NR values
        // `stride` apart, which is what the kernels read; a direct target holds mr rows of
        // the panels' columns, a tile target is one panel wide (width 1).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            let (a, b) = (a.as_ptr(), b.as_ptr());
            avx512_tile!(tile_f32, mr, width, (kc, a, b, stride, target, ahead))
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            with_rows!(mr, M => avx2::tile_f32::<M>(kc, a.as_ptr(), b.as_ptr(), target, ahead))
        },
        Isa::Portable => {
            with_rows!(mr, M => portable::tile::<M, f32>(a, b, target, |row, j| row[j]))
        }
    }
}

/// The bf16 micro-kernels over `Panels::Bf16` (one panel, f32 activations).
pub(super) fn tile_bf16(isa: Isa, mr: usize, a: &[f32], b: &[u16], target: Target, ahead: Ahead) {
    debug_assert!(a.len() == (b.len() / NR) * mr);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ahead;
    if isa.has_avx2() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA; `a` holds kc·mr values and `b` kc·NR.
        return unsafe {
            let kc = b.len() / NR;
            with_rows!(mr, M => avx2::tile_bf16::<M>(kc, a.as_ptr(), b.as_ptr(), target, ahead))
        };
    }
    let load = |row: &[u16], j| pack::bf16_value(row[pack::bf16_lane(j)]);
    with_rows!(mr, M => portable::tile::<M, u16>(a, b, target, load))
}

/// The int8 micro-kernels over `Panels::Int8`: `Σ_q even·w_even + odd·w_odd` per row and
/// column, exact in i32 per [`INT8_PAIRS_PER_SUM`] pairs, then f32.
pub(super) fn tile_int8(isa: Isa, mr: usize, a: &[i32], b: &[i8], target: Target) {
    debug_assert!(a.len() == (b.len() / INT8_PANEL_ROW) * mr);
    if isa.has_avx2() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA; the slices hold pc·mr pairs and pc panel rows,
        // which is what the kernel reads.
        return unsafe {
            let pc = b.len() / INT8_PANEL_ROW;
            with_rows!(mr, M => avx2::tile_int8::<M>(pc, a.as_ptr(), b.as_ptr(), target))
        };
    }
    with_rows!(mr, M => portable::tile_int8::<M>(a, b, target))
}

/// The weights of one micro-kernel call over a grouped layout.
#[derive(Clone, Copy)]
pub(super) enum GroupedBlock<'a> {
    Bf16Pairs(&'a [u16]),
    Int8Quads(&'a [i8]),
}

/// `out = a · b` for a small product made inside a task of its own (attention's per-head
/// products), on this thread, by the AVX-512 `vdpbf16ps` tile kernels: `a` is `m` rows of
/// `groups` bf16 pairs, `lda` pairs apart (`bf16_pairs_row`); `b` is `panels` panels of
/// `groups` pair rows × `NR` columns, one pair per column (`bf16_column_pairs`); `out` gets
/// `m` rows of `panels · NR` f32 sums from `out`, `ldc` apart, overwritten. Only for an `isa`
/// with AVX-512 BF16 (panics otherwise: callers choose this product only there).
///
/// # Safety
/// `out` is valid for writes of `m` rows of `panels · NR` values, `ldc` apart, that no one
/// else reads or writes meanwhile. Panics if `a` or `b` is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn bf16_pairs_product(
    isa: Isa,
    a: &[i32],
    lda: usize,
    m: usize,
    b: &[i32],
    groups: usize,
    panels: usize,
    out: *mut f32,
    ldc: usize,
) {
    assert!(isa.has_avx512(), "bf16 pair products need AVX-512 BF16");
    if m == 0 || panels == 0 {
        return;
    }
    assert!(lda >= groups && ldc >= panels * NR);
    assert!(a.len() >= (m - 1) * lda + groups && b.len() >= panels * groups * NR);
    #[cfg(target_arch = "x86_64")]
    for (r0, mr) in micro_panels_of(0..m, MR_WIDE) {
        let mut panel = 0;
        while panel < panels {
            let width = if panel + 2 <= panels { 2 } else { 1 };
            let target = Target {
                // SAFETY: rows r0 .. r0 + mr and columns panel·NR .. (panel + width)·NR are
                // the caller's to write.
                c: unsafe { out.add(r0 * ldc + panel * NR) },
                ldc,
                ..Target::NONE
            };
            // SAFETY: the CPU has the AVX-512 features (checked above); rows r0 .. r0 + mr of
            // `a` and panels panel .. panel + width of `b` lie in the slices (asserted above),
            // and the target holds mr rows of width·NR columns.
            unsafe {
                let a = a.as_ptr().add(r0 * lda);
                let b = b.as_ptr().add(panel * groups * NR).cast::<u16>();
                let stride = groups * NR * 2;
                avx512_wide_tile!(
                    tile_bf16,
                    mr,
                    width,
                    (groups, a, lda, b, stride, target, Ahead::NONE)
                )
            }
            panel += width;
        }
    }
}

/// The rows of one micro-kernel call over a grouped layout: `mr` rows of `gc` groups.
#[derive(Clone, Copy)]
pub(super) enum GroupedA<'a> {
    /// Packed side by side (`pack_groups`), for the portable kernels.
    Packed(&'a [i32]),
    /// Where they are, `lda` groups apart, for the AVX-512 kernels.
    InPlace { values: &'a [i32], lda: usize },
}

/// The micro-kernels over grouped layouts: on AVX-512 `vdpbf16ps` (bf16 pairs) or
/// `vpdpbusd` (int8 quads and u8 rows), reading rows in place; else portable code over packed
/// rows, one panel at a time (for int8 the same integer sums).
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_grouped(
    isa: Isa,
    mr: usize,
    width: usize,
    gc: usize,
    a: GroupedA,
    b: GroupedBlock,
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let a = match a {
        GroupedA::Packed(a) => {
            debug_assert!(a.len() == gc * mr);
            a
        }
        #[cfg(target_arch = "x86_64")]
        GroupedA::InPlace { values, lda } if isa.has_avx512() => {
            assert!(mr <= MR_WIDE && values.len() >= (mr - 1) * lda + gc);
            // SAFETY: as in `tile_f32`, with mr rows of gc groups `lda` apart in `values`
            // (checked above) and gc group rows per panel.
            return unsafe {
                let a = values.as_ptr();
                match b {
                    GroupedBlock::Bf16Pairs(b) => {
                        debug_assert!(b.len() == (width - 1) * stride + gc * NR * 2);
                        let b = b.as_ptr();
                        avx512_wide_tile!(
                            tile_bf16,
                            mr,
                            width,
                            (gc, a, lda, b, stride, target, ahead)
                        )
                    }
                    GroupedBlock::Int8Quads(b) => {
                        debug_assert!(b.len() == (width - 1) * stride + gc * NR * 4);
                        let b = b.as_ptr();
                        avx512_wide_tile!(
                            tile_int8,
                            mr,
                            width,
                            (gc, a, lda, b, stride, target, ahead)
                        )
                    }
                }
            };
        }
        GroupedA::InPlace { .. } => unreachable!("rows in place are for the AVX-512 kernels"),
    };
    let _ = (isa, width, stride, ahead);
    match b {
        GroupedBlock::Bf16Pairs(b) => {
            with_rows!(mr, M => portable::tile_bf16_pairs::<M>(a, b, target))
        }
        GroupedBlock::Int8Quads(b) => {
            with_rows!(mr, M => portable::tile_int8_quads::<M>(a, b, target))
        }
    }
}
