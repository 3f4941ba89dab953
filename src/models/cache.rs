//! The cache of past keys and values that a decoder keeps between generation steps.
//!
//! [`DecoderCache`] is what generation asks of a decoder's cache, whatever the decoder;
//! [`KvCache`] is one for any decoder whose layers each cache (batch, heads, positions,
//! head_dim) keys and values, whatever their dtype: GPT-2's, and that of decoders to come
//! with rotary positions or grouped-query heads, whose cached keys have the same shape.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// What generation needs of a decoder's cache (see
/// [`CausalLM::Cache`](crate::generation::CausalLM::Cache)): a cache holds one batch of rows,
/// and each sequence of a continuous batch has a cache of its own.
pub trait DecoderCache {
    /// Number of positions cached.
    fn len(&self) -> usize;

    /// True when no position is cached.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make row `i` of the cache a copy of row `parents[i]`, as beam search needs after each
    /// step.
    fn reorder(&mut self, parents: &[usize]) -> Result<()>;
}

/// Keys and values of every layer, kept between decoding steps.
///
/// Each layer's buffer is allocated with room to spare and filled in place, so a decoding step
/// writes only its new positions; the buffer grows by doubling when full.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

/// One layer's keys and values.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerKv {
    /// (batch, heads, capacity, head_dim) each.
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `n_layer` layers.
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); n_layer],
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.len)
    }

    /// True before the first forward and after [`KvCache::reset`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget the cached positions; the buffers are kept for reuse.
    pub fn reset(&mut self) {
        for layer in &mut self.layers {
            layer.len = 0;
        }
    }

    /// Make row `i` of the cache a copy of row `parents[i]`, as beam search needs after each
    /// step. Only rows whose parent is another row are copied.
    pub fn reorder(&mut self, parents: &[usize]) -> Result<()> {
        for layer in &mut self.layers {
            layer.reorder(parents)?;
        }
        Ok(())
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .and_then(|layer| layer.keys.as_ref())
            .map_or(0, |keys| keys.dim(2).unwrap_or(0))
    }

    /// The batch size the cache holds, if it holds anything.
    pub(crate) fn batch_size(&self) -> Option<usize> {
        let layer = self.layers.first()?;
        layer.keys.as_ref().filter(|_| layer.len > 0)?.dim(0).ok()
    }

    /// Number of layers, which must be the model's.
    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s keys and values.
    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }
}

impl DecoderCache for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }

    fn reorder(&mut self, parents: &[usize]) -> Result<()> {
        KvCache::reorder(self, parents)
    }
}

/// Room for this many positions at least, to avoid growing on every early step.
const MIN_CACHE_CAPACITY: usize = 64;

impl LayerKv {
    /// Append (batch, heads, new, head_dim) keys and values; return all of them so far.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let needed = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |t| t.dim(2).unwrap_or(0));
        let same_batch = self
            .keys
            .as_ref()
            .is_some_and(|t| t.dim(0).ok() == k.dim(0).ok());
        if needed > capacity || !same_batch {
            let capacity = needed.max(2 * capacity).max(MIN_CACHE_CAPACITY);
            self.keys = Some(grow(
                self.keys.as_ref().filter(|_| same_batch),
                k,
                self.len,
                capacity,
            )?);
            self.values = Some(grow(
                self.values.as_ref().filter(|_| same_batch),
                v,
                self.len,
                capacity,
            )?);
        }
        let (keys, values) = match (&self.keys, &self.values) {
            (Some(keys), Some(values)) => (keys, values),
            _ => {
                return Err(Error::InvalidInput(
                    "the KV cache lost its buffers".to_string(),
                ))
            }
        };
        keys.slice_set(&k.contiguous()?, 2, self.len)?;
        values.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((keys.narrow(2, 0, needed)?, values.narrow(2, 0, needed)?))
    }
}

impl LayerKv {
    fn reorder(&mut self, parents: &[usize]) -> Result<()> {
        for buffer in [&self.keys, &self.values].into_iter().flatten() {
            let batch = buffer.dim(0)?;
            if parents.len() != batch || parents.iter().any(|&p| p >= batch) {
                return Err(Error::InvalidInput(format!(
                    "cannot reorder a cache of {batch} rows with parents {parents:?}"
                )));
            }
            // Snapshot the source rows first: a row may be both read and overwritten.
            let moved: Vec<(usize, Tensor)> = parents
                .iter()
                .enumerate()
                .filter(|(row, parent)| row != *parent)
                .map(|(row, &parent)| Ok((row, buffer.narrow(0, parent, 1)?.copy()?)))
                .collect::<Result<_>>()?;
            for (row, source) in moved {
                buffer.slice_set(&source, 0, row)?;
            }
        }
        Ok(())
    }
}

/// A zeroed (batch, heads, capacity, head_dim) buffer shaped like `like`, holding the first
/// `len` positions of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let (batch, heads, _, head_dim) = like.dims4()?;
    let buffer = Tensor::zeros(
        (batch, heads, capacity, head_dim),
        like.dtype(),
        like.device(),
    )?;
    if let Some(old) = old.filter(|_| len > 0) {
        buffer.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
    }
    Ok(buffer)
}
