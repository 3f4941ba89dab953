//! The tiny GPT-2 fixture for the generation tests, and a wrapper that counts the model's work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ferroformers::generation::{CausalLM, GenerationConfig};
use ferroformers::{
    Device, FromPretrained, Gpt2LMHeadModel, HubOptions, KvCache, LoadOptions, Pretrained, Tensor,
    Tokenizer,
};

use super::fixture_model;

/// Offline: the fixtures are local folders.
pub fn options() -> LoadOptions {
    LoadOptions::default().with_hub(HubOptions::default().with_offline(true))
}

/// `gpt2/lm-head` with its tokenizer and generation config.
pub fn model_and_tokenizer() -> (Gpt2LMHeadModel, Tokenizer, GenerationConfig) {
    let folder = fixture_model("gpt2/lm-head");
    let pretrained = Pretrained::open(&folder, &options().hub).unwrap();
    let model = Gpt2LMHeadModel::from_pretrained(&folder, &options()).unwrap();
    (
        model,
        pretrained.tokenizer().unwrap(),
        GenerationConfig::from_source(pretrained.source()).unwrap(),
    )
}

/// The GPT-2 model, counting its full forward passes (a prompt, or a step of `Generator`) and
/// the rows of each ragged decoding step (continuous batching).
pub struct CountingModel<'a> {
    inner: &'a Gpt2LMHeadModel,
    forward_passes: AtomicUsize,
    decode_rows: Mutex<Vec<usize>>,
}

impl<'a> CountingModel<'a> {
    pub fn new(inner: &'a Gpt2LMHeadModel) -> Self {
        Self {
            inner,
            forward_passes: AtomicUsize::new(0),
            decode_rows: Mutex::new(Vec::new()),
        }
    }

    /// Full forward passes so far (`forward` and `last_logits`).
    pub fn forward_passes(&self) -> usize {
        self.forward_passes.load(Ordering::SeqCst)
    }

    /// The rows of each decoding step so far.
    pub fn decode_rows(&self) -> Vec<usize> {
        self.decode_rows.lock().unwrap().clone()
    }
}

impl CausalLM for CountingModel<'_> {
    type Cache = KvCache;

    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> ferroformers::Result<Tensor> {
        self.forward_passes.fetch_add(1, Ordering::SeqCst);
        CausalLM::forward(self.inner, input_ids, attention_mask, cache)
    }

    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> ferroformers::Result<Tensor> {
        self.forward_passes.fetch_add(1, Ordering::SeqCst);
        CausalLM::last_logits(self.inner, input_ids, attention_mask, cache)
    }

    fn decode_scores(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> ferroformers::Result<Vec<Vec<f32>>> {
        self.decode_rows.lock().unwrap().push(tokens.len());
        CausalLM::decode_scores(self.inner, tokens, caches)
    }

    fn new_cache(&self) -> KvCache {
        CausalLM::new_cache(self.inner)
    }

    fn max_positions(&self) -> usize {
        CausalLM::max_positions(self.inner)
    }

    fn device(&self) -> &Device {
        CausalLM::device(self.inner)
    }
}
