//! What a causal LM (GPT-2's `GPT2LMHeadModel`, the Llama family's `LlamaForCausalLM`) does
//! the same way around its decoder: the LM head on every new position, on the last one only,
//! or on one decoding step of a continuous batch.

use candle_core::Tensor;

use crate::error::Result;
use crate::models::cache::KvCache;
use crate::models::decoder::rows_as_alone;
use crate::models::layers::Linear;

/// The decoder under an LM head: its blocks and final norm. Both passes run on the calling
/// thread, which the caller has put on a kernel worker ([`crate::kernels::on_worker`]).
pub(crate) trait DecoderStack: Sync {
    /// Hidden states of the new tokens, (batch, new, hidden): `input_ids` (batch, new) after
    /// those in `cache`, `attention_mask` (batch, cached + new).
    fn forward_on_worker(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;

    /// Hidden states, (rows, 1, hidden), of one new token for each of several independent
    /// sequences, each over its own cache.
    fn decode_step_on_worker(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor>;

    /// Bytes of the linear layers' weights, as stored.
    fn weight_bytes_per_token(&self) -> usize;
}

/// A decoder and its LM head (no bias), as every causal LM here is made.
#[derive(Debug, Clone)]
pub(crate) struct DecoderWithHead<D> {
    pub(crate) decoder: D,
    pub(crate) lm_head: Linear,
}

impl<D: DecoderStack> DecoderWithHead<D> {
    /// Logits of the new tokens, (batch, new, vocab).
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = crate::kernels::on_worker(|| {
            self.decoder
                .forward_on_worker(input_ids, attention_mask, cache)
        })?;
        self.lm_head.forward(&hidden)
    }

    /// Logits of the last new token only, (batch, vocab).
    pub(crate) fn forward_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        crate::kernels::on_worker(|| {
            let hidden = self
                .decoder
                .forward_on_worker(input_ids, attention_mask, cache)?;
            last_position_logits(&self.lm_head, &hidden)
        })
    }

    /// Logits, (rows, vocab), of one decoding step of several independent sequences, each row
    /// bitwise what [`DecoderWithHead::forward_last`] gives that sequence alone.
    pub(crate) fn decode_step(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        crate::kernels::on_worker(|| {
            let hidden = self
                .decoder
                .decode_step_on_worker(tokens, caches)?
                .squeeze(1)?;
            rows_as_alone(&self.lm_head, &hidden, None, None)
        })
    }

    /// Bytes of weights one decoding step reads: every linear layer and the LM head
    /// (embedding lookups read one row each and are left out).
    pub(crate) fn weight_bytes_per_token(&self) -> usize {
        self.decoder.weight_bytes_per_token() + self.lm_head.weight_bytes()
    }
}

/// `head` (the LM head) on the hidden state of each sequence's last position, (batch, new,
/// hidden) -> (batch, vocab): what the next step of generation needs, with the largest matrix
/// run on one row per sequence rather than on every prompt position.
fn last_position_logits(head: &Linear, hidden: &Tensor) -> Result<Tensor> {
    let last = hidden.dim(1)? - 1;
    head.forward(&hidden.narrow(1, last, 1)?.squeeze(1)?)
}
