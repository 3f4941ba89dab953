//! [`PackedWeights`]: a weight matrix in the layout of the kernels it was packed for (the
//! packing itself is `pack`'s), and the [`WeightFormat`] it is stored in.

use super::pack::{self, INT8_PANEL_ROW};
use super::NR;
use crate::runtime::buffer::StreamBuffer;

/// How the packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32, as loaded.
    F32,
    /// bfloat16: the upper half of an f32, rounded to nearest even.
    Bf16,
    /// Symmetric int8 with one f32 scale per output channel: `w ≈ q · max|w_row| / 127`.
    Int8,
}

/// The packed weights, in the layout of the kernels they were packed for.
#[derive(Debug, Clone)]
pub(super) enum Panels {
    F32(StreamBuffer<f32>),
    /// One input per panel row, columns in `bf16_lane` order (widened to f32 by AVX2).
    Bf16(StreamBuffer<u16>),
    /// Pairs of inputs per column (`grouped_panels`), for `vdpbf16ps`.
    Bf16Pairs(StreamBuffer<u16>),
    /// Pairs of inputs per column, as `vpmaddwd` takes them beside 16-bit activations.
    Int8 {
        values: StreamBuffer<i8>,
        scales: Vec<f32>,
    },
    /// Quads of inputs per column (`grouped_panels`), for `vpdpbusd`; `column_sums`: each
    /// column's sum of its integer weights, to take the activations' zero points out.
    Int8Quads {
        values: StreamBuffer<i8>,
        scales: Vec<f32>,
        column_sums: Vec<i32>,
    },
}

/// A weight matrix packed for [`matmul`](super::matmul).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Input features (`in`).
    pub(super) inner: usize,
    /// Output features (`out`).
    pub(super) outer: usize,
    pub(super) panels: Panels,
}

impl PackedWeights {
    /// Input features (`in`).
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Output features (`out`).
    pub fn outer(&self) -> usize {
        self.outer
    }

    /// How the weights are stored, whatever their layout.
    pub fn format(&self) -> WeightFormat {
        match self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Bf16(_) | Panels::Bf16Pairs(_) => WeightFormat::Bf16,
            Panels::Int8 { .. } | Panels::Int8Quads { .. } => WeightFormat::Int8,
        }
    }

    /// Whether the kernels read bf16 activations as they are
    /// ([`Activations::Bf16`](super::Activations::Bf16)): the AVX-512 layout of bf16 weights,
    /// pairs of inputs per column.
    pub fn reads_bf16_rows(&self) -> bool {
        matches!(self.panels, Panels::Bf16Pairs(_))
    }

    /// Inputs per 32-bit group of the activations this layout multiplies: 2 (16-bit int8
    /// pairs, bf16 pairs), 4 (int8 quads), or 1 (f32 activations).
    pub(super) fn group(&self) -> usize {
        match self.panels {
            Panels::F32(_) | Panels::Bf16(_) => 1,
            Panels::Int8 { .. } | Panels::Bf16Pairs(_) => 2,
            Panels::Int8Quads { .. } => 4,
        }
    }

    /// Bytes of weights streamed per product (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) | Panels::Bf16Pairs(v) => v.len() * 2,
            Panels::Int8 { values, scales } => values.len() + scales.len() * 4,
            Panels::Int8Quads {
                values,
                scales,
                column_sums,
            } => values.len() + scales.len() * 4 + column_sums.len() * 4,
        }
    }

    /// Output row `o` as the product sees it (`inner` values, dequantized where the weights
    /// are int8): what a tied embedding table reads for token `o`, so that the table is not
    /// held a second time beside its packed LM head.
    ///
    /// Panics if `o` is not below `outer` or `out` is not `inner` long.
    pub fn unpack_row(&self, o: usize, out: &mut [f32]) {
        assert!(o < self.outer && out.len() == self.inner);
        let (panel, lane) = (o / NR, o % NR);
        for (i, w) in out.iter_mut().enumerate() {
            let index = (panel * self.inner + i) * NR + lane;
            *w = match &self.panels {
                Panels::F32(v) => v[index],
                Panels::Bf16(v) => pack::bf16_value(v[index - lane + pack::bf16_lane(lane)]),
                Panels::Int8 { values, scales } => {
                    let pairs = self.inner.div_ceil(2);
                    let row = (panel * pairs + i / 2) * INT8_PANEL_ROW;
                    values[row + pack::int8_lane(lane, i % 2)] as f32 * scales[o]
                }
                Panels::Bf16Pairs(v) => {
                    pack::bf16_value(v[pack::grouped_index(self.inner, 2, o, i)])
                }
                Panels::Int8Quads { values, scales, .. } => {
                    values[pack::grouped_index(self.inner, 4, o, i)] as f32 * scales[o]
                }
            };
        }
    }

    /// The weights as the product sees them, (out, in) row-major, for the tests.
    #[cfg(test)]
    pub(super) fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.outer * self.inner];
        for (o, row) in out.chunks_mut(self.inner.max(1)).enumerate() {
            self.unpack_row(o, row);
        }
        out
    }
}
