//! Safetensors read tensor by tensor from the mapped files, each tensor's pages handed back
//! as soon as it has been read.
//!
//! Why: candle's own mmap backend leaves every page it has read mapped until the
//! `VarBuilder` is dropped, at the end of the load, and mapped file pages count in the
//! process's RSS. The peak of a load was therefore the whole checkpoint plus everything built
//! from it (BERT-base from a 438 MB f32 file: 921 MB peak in f32, 768 MB in bf16, 656 MB in
//! int8). Here each tensor is converted straight from the mapping into the dtype asked for
//! (candle reads it in the file's dtype first and then converts: two copies), one block at a
//! time, and each block's pages are unmapped from this process with `madvise(MADV_DONTNEED)`
//! once converted. They stay in the page cache, which RSS does not count, and a later read of
//! the same bytes (a tied weight read twice) faults them back in from the file: the mapping
//! is shared and read-only, so dropping its pages never changes what it reads.

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::tensor::TensorView;

/// Source bytes converted (in parallel) before their pages are handed back: large enough
/// that the `madvise` calls cost nothing next to the conversion, small enough that one
/// block's pages are a rounding error in the peak.
const BLOCK_BYTES: usize = 1 << 20;

/// Memory-mapped safetensors files whose pages are released as their tensors are read.
pub(super) struct ReleasedSafetensors(MmapedSafetensors);

impl ReleasedSafetensors {
    /// # Safety
    /// As `MmapedSafetensors::multi`: the files must not change while they are mapped.
    pub(super) unsafe fn open(paths: &[std::path::PathBuf]) -> candle_core::Result<Self> {
        // SAFETY: passed on to the caller.
        Ok(Self(unsafe { MmapedSafetensors::multi(paths) }?))
    }

    /// The tensors of all the files, each name with its shape.
    pub(super) fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.0
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect()
    }

    /// The values of the float tensor `name` as f32, its pages released once read (no
    /// tensor around them: a caller that writes them elsewhere holds them once).
    pub(super) fn f32_values(&self, name: &str) -> candle_core::Result<Vec<f32>> {
        let view = self.0.get(name)?;
        let data = view.data();
        let source = Source::of(view.dtype()).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "the tensor `{name}` is {:?}, not a float type",
                view.dtype()
            ))
        })?;
        let values = convert::<f32>(data, source);
        release(data, Rounding::Outward);
        Ok(values)
    }
}

impl SimpleBackend for ReleasedSafetensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let view = self.0.get(name)?;
        // Checked before reading, so that a wrong checkpoint costs no conversion.
        check_shape(name, shape, view.shape())?;
        read(&view, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        read(&self.0.get(name)?, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// candle's error for a checkpoint tensor `name` of another shape than asked for.
pub(crate) fn check_shape(name: &str, expected: Shape, got: &[usize]) -> candle_core::Result<()> {
    if expected.dims() == got {
        return Ok(());
    }
    Err(candle_core::Error::UnexpectedShape {
        msg: format!("shape mismatch for {name}"),
        expected,
        got: got.into(),
    }
    .bt())
}

/// `view` as a tensor of `dtype` on `device`, its pages released once read.
fn read(view: &TensorView<'_>, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let data = view.data();
    let tensor = match (Source::of(view.dtype()), dtype) {
        (Some(source), DType::F32) => {
            Tensor::from_vec(convert::<f32>(data, source), view.shape(), device)
        }
        (Some(source), DType::BF16) => {
            Tensor::from_vec(convert::<bf16>(data, source), view.shape(), device)
        }
        (Some(source), DType::F16) => {
            Tensor::from_vec(convert::<f16>(data, source), view.shape(), device)
        }
        // Integers, f64 and the 8-bit floats: rare in checkpoints and small; candle's path.
        _ => view.load(device).and_then(|t| t.to_dtype(dtype)),
    };
    // The whole range, rounded out to pages: the blocks released only their inner pages.
    release(data, Rounding::Outward);
    tensor
}

/// The float dtypes read straight from the file.
#[derive(Debug, Clone, Copy)]
enum Source {
    F32,
    Bf16,
    F16,
}

impl Source {
    fn of(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(Source::F32),
            safetensors::Dtype::BF16 => Some(Source::Bf16),
            safetensors::Dtype::F16 => Some(Source::F16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Source::F32 => 4,
            Source::Bf16 | Source::F16 => 2,
        }
    }

    /// The little-endian values of `bytes` into `values`, one per value's bytes; a match per
    /// block rather than per value, so that the loops vectorise.
    fn decode_into<T: Target>(self, bytes: &[u8], values: &mut [T]) {
        match self {
            Source::F32 => {
                for (value, bytes) in values.iter_mut().zip(bytes.as_chunks::<4>().0) {
                    *value = T::from_f32(f32::from_le_bytes(*bytes));
                }
            }
            Source::Bf16 => {
                for (value, bytes) in values.iter_mut().zip(bytes.as_chunks::<2>().0) {
                    *value = T::from_f32(bf16::from_le_bytes(*bytes).to_f32());
                }
            }
            Source::F16 => {
                for (value, bytes) in values.iter_mut().zip(bytes.as_chunks::<2>().0) {
                    *value = T::from_f32(f16::from_le_bytes(*bytes).to_f32());
                }
            }
        }
    }
}

/// Float types a tensor is converted into, rounded as candle's `to_dtype` rounds them
/// (`half`'s `from_f32`, to nearest even), so that a model reads the same values as before.
trait Target: WithDType {
    fn from_f32(value: f32) -> Self;
}

impl Target for f32 {
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Target for bf16 {
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Target for f16 {
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

/// Every value of `data` (of dtype `source`) as `T`, block by block, each block's pages
/// released once it is converted. Exact when `T` is the source's own type or wider.
fn convert<T: Target>(data: &[u8], source: Source) -> Vec<T> {
    let size = source.size();
    let mut values = vec![T::from_f32(0.0); data.len() / size];
    values
        .par_chunks_mut(BLOCK_BYTES / size)
        .zip(data.par_chunks(BLOCK_BYTES))
        .for_each(|(values, bytes)| {
            source.decode_into(bytes, values);
            // Inner pages only: the pages at a block's edges hold its neighbours' bytes,
            // which another thread may be reading.
            release(bytes, Rounding::Inward);
        });
    values
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Rounding {
    /// Only the pages that lie wholly inside the bytes.
    Inward,
    /// Every page the bytes touch.
    Outward,
}

/// Unmap the pages of `bytes`, a part of a read-only shared file mapping (a safetensors or
/// GGUF file's), from this process.
#[cfg(target_os = "linux")]
pub(crate) fn release(bytes: &[u8], rounding: Rounding) {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        page if page > 0 => page as usize,
        _ => return,
    };
    let (start, end) = (
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
    let (start, end) = match rounding {
        Rounding::Inward => (start.next_multiple_of(page), end - end % page),
        Rounding::Outward => (start - start % page, end.next_multiple_of(page)),
    };
    if start < end {
        // SAFETY: the range is pages of a `PROT_READ`, `MAP_SHARED` file mapping (memmap2's
        // `Mmap`, which `MmapedSafetensors` holds for as long as `bytes` is borrowed from
        // it; rounding out stays inside it, since a mapping is whole pages). Dropping such
        // pages changes no byte that the mapping reads: the next access faults the page
        // back in from the file. A refusal leaves the pages mapped, which is only memory.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release(_: &[u8], _: Rounding) {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::var_builder::SimpleBackend;

    /// Values of every kind a checkpoint holds: ordinary, tiny, huge, subnormal, infinite,
    /// and ties that bf16 and f16 must round to even.
    fn values(count: usize) -> Vec<f32> {
        let specials = [
            0.0,
            -0.0,
            1.0 + f32::EPSILON * 64.0,
            1e-40,
            -3.3e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            6.1e-5,
        ];
        (0..count)
            .map(|i| match specials.get(i % 40) {
                Some(&special) => special,
                None => ((i as f32) * 0.7548777).sin() * 10f32.powi((i % 9) as i32 - 4),
            })
            .collect()
    }

    /// A safetensors file holding `values` as f32, bf16 and f16 tensors of `shape`, through
    /// candle's writer; and candle's own reading of each in each dtype, the reference.
    fn checkpoint(dir: &std::path::Path, shape: (usize, usize)) -> std::path::PathBuf {
        let device = Device::Cpu;
        let source = Tensor::from_vec(values(shape.0 * shape.1), shape, &device).unwrap();
        let tensors: std::collections::HashMap<String, Tensor> = [
            ("f32", DType::F32),
            ("bf16", DType::BF16),
            ("f16", DType::F16),
        ]
        .into_iter()
        .map(|(name, dtype)| (name.to_string(), source.to_dtype(dtype).unwrap()))
        .collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        path
    }

    fn bits(tensor: &Tensor) -> Vec<u64> {
        match tensor.dtype() {
            DType::F32 => tensor
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            DType::BF16 => tensor
                .to_vec1::<bf16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            DType::F16 => tensor
                .to_vec1::<f16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            DType::F64 => tensor
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect(),
            other => panic!("no bits for {other:?}"),
        }
    }

    /// Every source dtype read as every dtype gives, bit for bit, what candle's own backend
    /// gives (f64 takes candle's path); over several blocks and a ragged last one.
    #[test]
    fn reads_what_candle_reads() {
        let dir = tempfile::tempdir().unwrap();
        let shape = (3 * BLOCK_BYTES / 4 / 512 + 1, 512);
        let path = checkpoint(dir.path(), shape);
        let ours = unsafe { ReleasedSafetensors::open(std::slice::from_ref(&path)) }.unwrap();
        let candle = unsafe { MmapedSafetensors::new(&path) }.unwrap();
        for name in ["f32", "bf16", "f16"] {
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let expected = SimpleBackend::get(
                    &candle,
                    shape.into(),
                    name,
                    candle_nn::Init::Const(0.),
                    dtype,
                    &Device::Cpu,
                )
                .unwrap();
                let got = ours
                    .get(
                        shape.into(),
                        name,
                        candle_nn::Init::Const(0.),
                        dtype,
                        &Device::Cpu,
                    )
                    .unwrap();
                assert_eq!(got.dtype(), dtype);
                assert_eq!(got.dims(), expected.dims());
                assert!(
                    bits(&got.flatten_all().unwrap()) == bits(&expected.flatten_all().unwrap()),
                    "{name} read as {dtype:?} differs from candle's reading"
                );
            }
        }
        // Read again after its pages were released: the same values.
        let again = ours.get_unchecked("f32", DType::F32, &Device::Cpu).unwrap();
        let first = candle.load("f32", &Device::Cpu).unwrap();
        assert!(bits(&again.flatten_all().unwrap()) == bits(&first.flatten_all().unwrap()));
    }

    /// Resident bytes of this process's mappings of `path` (the `Rss:` lines of
    /// /proc/self/smaps under each mapping whose line names the file).
    #[cfg(target_os = "linux")]
    fn mapped_rss(path: &std::path::Path) -> usize {
        let name = path.to_str().unwrap();
        let kilobytes: usize = crate::runtime::smaps::mappings()
            .iter()
            .filter(|m| m.header.ends_with(name))
            .map(|m| {
                let rss = m.field("Rss").unwrap();
                rss.split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        kilobytes * 1024
    }

    /// After every tensor is read, almost none of the file stays mapped in memory; candle's
    /// backend, measured the same way, keeps all of it (so the measure can see the pages).
    #[cfg(target_os = "linux")]
    #[test]
    fn releases_the_pages_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let shape = (2048, 512);
        let path = checkpoint(dir.path(), shape);
        let data_bytes = shape.0 * shape.1 * (4 + 2 + 2);
        let ours = unsafe { ReleasedSafetensors::open(std::slice::from_ref(&path)) }.unwrap();
        for name in ["f32", "bf16", "f16"] {
            ours.get_unchecked(name, DType::F32, &Device::Cpu).unwrap();
        }
        let ours_rss = mapped_rss(&path);
        drop(ours);
        let candle = unsafe { MmapedSafetensors::new(&path) }.unwrap();
        for name in ["f32", "bf16", "f16"] {
            candle.load(name, &Device::Cpu).unwrap();
        }
        let candle_rss = mapped_rss(&path);
        assert!(
            candle_rss >= data_bytes,
            "candle's backend keeps {candle_rss} bytes of {data_bytes} mapped: the measure is broken"
        );
        assert!(
            ours_rss <= 64 << 10,
            "{ours_rss} bytes of the {data_bytes}-byte file stay mapped after reading it"
        );
    }

    /// `WeightFiles::var_builder` reads safetensors through this backend: a tensor it has
    /// read is not left mapped while the builder lives (with candle's backend it would be).
    #[cfg(target_os = "linux")]
    #[test]
    fn checkpoints_are_read_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint(dir.path(), (2048, 512));
        let files = super::super::WeightFiles::Safetensors(vec![path.clone()]);
        let vb = files.var_builder(DType::F32, &Device::Cpu).unwrap();
        vb.get((2048, 512), "f32").unwrap();
        let rss = mapped_rss(&path);
        assert!(rss <= 64 << 10, "{rss} bytes stay mapped");
    }

    #[test]
    fn a_wrong_shape_is_an_error_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint(dir.path(), (4, 8));
        let ours = unsafe { ReleasedSafetensors::open(std::slice::from_ref(&path)) }.unwrap();
        let error = ours
            .get(
                (8, 4).into(),
                "f32",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap_err();
        assert!(
            error.to_string().contains("shape mismatch for f32"),
            "{error}"
        );
        assert!(!ours.contains_tensor("missing"));
        assert!(ours.contains_tensor("bf16"));
    }
}
