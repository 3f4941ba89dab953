//! GPT-2: the base model, the LM head with a KV cache, and sequence classification.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/gpt2/modeling_gpt2.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py>).
//! transformers calls these `GPT2Model`, `GPT2LMHeadModel` and `GPT2ForSequenceClassification`.
//!
//! Checkpoint quirks, each handled where it appears below:
//! - projections are `Conv1D`, whose weight is stored (in, out): the transpose of a linear layer;
//! - `lm_head.weight` is tied to `wte` and usually absent;
//! - old checkpoints carry `attn.bias` (the causal mask) and `attn.masked_bias` buffers, which are
//!   never read: the mask is built from the input;
//! - keys come with the `transformer.` prefix (task checkpoints) or without (the original `gpt2`).

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::cache::{KvCache, LayerKv};
use crate::models::causal_lm::{DecoderStack, DecoderWithHead};
use crate::models::config::Labels;
use crate::models::decoder::{attention_bias, prepare, prepare_decode, rows_as_alone};
use crate::models::layers::{
    require_divisible, require_positive, Activation, Embedding, LayerNorm, Linear,
};
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, tied_weight, ModelInput};

/// `GPT2Config` from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    /// Rows of `wte`, and the width of [`Gpt2LMHeadModel`]'s logits.
    pub vocab_size: usize,
    /// Size of the position table: prompt plus generated tokens may not exceed it.
    pub n_positions: usize,
    /// Width of the hidden states.
    pub n_embd: usize,
    /// Number of decoder blocks (`h.*`), and of layers in a [`KvCache`].
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the MLP; `None` means 4 × `n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    /// Activation of the MLP; `gelu_new` (the tanh approximation) when absent.
    pub activation_function: Activation,
    #[serde(default = "default_layer_norm_epsilon")]
    /// Epsilon of every layer norm; 1e-5 when absent.
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    /// Divide attention scores by √head_dim; true when absent.
    pub scale_attn_weights: bool,
    #[serde(default)]
    /// Also divide block `i`'s attention scores by `i + 1`; false when absent.
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    /// Must be false: GPT-2 as the decoder of an encoder-decoder is not implemented, and
    /// `true` is an [`Error::InvalidConfig`] when `config.json` is read.
    pub add_cross_attention: bool,
    #[serde(default)]
    /// Beginning-of-text token (50256, `<|endoftext|>`, in OpenAI's checkpoints). The model
    /// does not read it.
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    /// End-of-text token. The model does not read it; generation takes its stop tokens from
    /// the generation config (`generation_config.json`, else this file).
    pub eos_token_id: Option<u32>,
    /// Used by sequence classification to find each row's last real token.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    /// Class names of [`Gpt2ForSequenceClassification`]'s `score` head.
    pub id2label: Labels,
    #[serde(default)]
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    pub problem_type: Option<String>,
}

fn default_activation() -> Activation {
    Activation::GeluNew
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_true() -> bool {
    true
}

impl Gpt2Config {
    pub(crate) fn validate(&self) -> Result<()> {
        require_positive("vocab_size", self.vocab_size)?;
        require_positive("n_positions", self.n_positions)?;
        require_positive("n_embd", self.n_embd)?;
        require_positive("n_layer", self.n_layer)?;
        require_positive("n_head", self.n_head)?;
        require_divisible("n_embd", self.n_embd, "n_head", self.n_head)?;
        if self.add_cross_attention {
            return Err(Error::InvalidConfig(
                "add_cross_attention (GPT-2 as an encoder-decoder's decoder) is not supported"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Number of classes: `id2label`'s size, else transformers' default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }
}

/// A `Conv1D` layer as a [`Linear`]. GPT-2 stores these weights (in, out), transposed compared
/// with `torch.nn.Linear`; a transposed view makes them (out, in) without copying.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pytorch_utils.py#L94>
fn conv1d(vb: ModelWeights, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Linear::from_matrix(
        vb.transposed_matrix((out_dim, in_dim), "weight")?,
        Some(vb.get(out_dim, "bias")?),
        vb.weight_type(),
    )
}

/// `attn`: causal self-attention with the fused `c_attn` projection.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L156>
#[derive(Debug, Clone)]
struct Gpt2Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    head_dim: usize,
    scale: f64,
}

impl Gpt2Attention {
    fn load(vb: ModelWeights, config: &Gpt2Config, layer_idx: usize) -> Result<Self> {
        let n_embd = config.n_embd;
        let head_dim = n_embd / config.n_head;
        let mut scale = 1.0;
        if config.scale_attn_weights {
            scale /= (head_dim as f64).sqrt();
        }
        if config.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Ok(Self {
            c_attn: conv1d(vb.pp("c_attn"), n_embd, 3 * n_embd)?,
            c_proj: conv1d(vb.pp("c_proj"), n_embd, n_embd)?,
            n_head: config.n_head,
            head_dim,
            scale,
        })
    }

    /// Attention over `hidden` (the normed input), plus `residual`, added by `c_proj`.
    fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let qkv = self.c_attn.forward(hidden)?;
        let context = self.attend(&qkv, mask, cache)?;
        self.c_proj.forward_with(&context, None, Some(residual))
    }

    /// The attention context, (batch, seq, n_embd), of the fused projections `qkv`
    /// (batch, seq, 3 × n_embd), after appending their keys and values to `cache`.
    fn attend(
        &self,
        qkv: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (batch, seq, three_embd) = qkv.dims3()?;
        let n_embd = three_embd / 3;
        // (batch, seq, n_embd) -> (batch, heads, seq, head_dim)
        let head = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * n_embd, n_embd)?
                .reshape((batch, seq, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        Ok(
            crate::kernels::decoder_attention(&q, &k, &v, mask, self.scale)?
                .transpose(1, 2)?
                .reshape((batch, seq, n_embd))?,
        )
    }

    /// One new token of each of several sequences, `hidden` (rows, 1, n_embd) normed, each
    /// attending over its own cache in `layers`; plus `residual`.
    fn decode_step(
        &self,
        hidden: &Tensor,
        layers: &mut [&mut LayerKv],
        residual: &Tensor,
    ) -> Result<Tensor> {
        let qkv = rows_as_alone(&self.c_attn, hidden, None, None)?;
        // Attention per sequence: the caches differ in length, and padding them to one would
        // change the sums of the shorter ones.
        let contexts = layers
            .iter_mut()
            .enumerate()
            .map(|(row, layer)| self.attend(&qkv.narrow(0, row, 1)?, None, Some(&mut **layer)))
            .collect::<Result<Vec<_>>>()?;
        let context = Tensor::cat(&contexts, 0)?;
        rows_as_alone(&self.c_proj, &context, None, Some(residual))
    }
}

/// `h.N`: pre-norm attention and MLP blocks with residuals.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L381>
#[derive(Debug, Clone)]
struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Gpt2Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    activation: Activation,
    c_proj: Linear,
}

impl Gpt2Block {
    fn load(vb: ModelWeights, config: &Gpt2Config, layer_idx: usize) -> Result<Self> {
        let (n_embd, eps) = (config.n_embd, config.layer_norm_epsilon);
        let mlp = vb.pp("mlp");
        Ok(Self {
            ln_1: LayerNorm::load(vb.pp("ln_1"), n_embd, eps)?,
            attn: Gpt2Attention::load(vb.pp("attn"), config, layer_idx)?,
            ln_2: LayerNorm::load(vb.pp("ln_2"), n_embd, eps)?,
            c_fc: conv1d(mlp.pp("c_fc"), n_embd, config.inner_size())?,
            activation: config.activation_function,
            c_proj: conv1d(mlp.pp("c_proj"), config.inner_size(), n_embd)?,
        })
    }

    fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let hidden = self
            .attn
            .forward(&self.ln_1.forward(hidden)?, mask, cache, hidden)?;
        let inner = self
            .c_fc
            .forward_into_linear(&self.ln_2.forward(&hidden)?, Some(self.activation))?;
        self.c_proj.forward_with(&inner, None, Some(&hidden))
    }

    /// [`Gpt2Block::forward`] of one new token per sequence, (rows, 1, n_embd), each sequence
    /// with its own cache in `layers`.
    fn decode_step(&self, hidden: &Tensor, layers: &mut [&mut LayerKv]) -> Result<Tensor> {
        let hidden = self
            .attn
            .decode_step(&self.ln_1.forward(hidden)?, layers, hidden)?;
        let normed = self.ln_2.forward(&hidden)?;
        let inner = rows_as_alone(&self.c_fc, &normed, Some(self.activation), None)?;
        rows_as_alone(&self.c_proj, &inner, None, Some(&hidden))
    }
}

/// The GPT-2 decoder: `wte`, `wpe`, `h.*`, `ln_f`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L693>
#[derive(Debug, Clone)]
pub struct Gpt2Model {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    config: Gpt2Config,
}

impl Gpt2Model {
    /// Load from `wte`, `wpe`, `h.*`, `ln_f`, at the root or under `transformer.`.
    pub fn load(vb: ModelWeights, config: &Gpt2Config) -> Result<Self> {
        let vb = base_model_weights(&vb, "transformer", "wte.weight")?;
        let h = vb.pp("h");
        Ok(Self {
            wte: Embedding::load(vb.pp("wte"), config.vocab_size, config.n_embd)?,
            wpe: Embedding::load(vb.pp("wpe"), config.n_positions, config.n_embd)?,
            blocks: (0..config.n_layer)
                .map(|i| Gpt2Block::load(h.pp(i), config, i))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::load(vb.pp("ln_f"), config.n_embd, config.layer_norm_epsilon)?,
            config: config.clone(),
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Bytes of the linear layers' weights, as stored.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| {
                [&b.attn.c_attn, &b.attn.c_proj, &b.c_fc, &b.c_proj]
                    .iter()
                    .map(|l| l.weight_bytes())
                    .sum::<usize>()
            })
            .sum()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer)
    }

    /// Hidden states of the new tokens, (batch, new, n_embd).
    ///
    /// `input_ids`: (batch, new), the tokens after those already in `cache`.
    /// `attention_mask`: (batch, cached + new), 1 for real tokens and 0 for (left) padding,
    /// covering the cached positions too. Position ids are counted from it, so each row of a
    /// left-padded batch gives what it gives alone.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        crate::kernels::on_worker(|| self.forward_on_worker(input_ids, attention_mask, cache))
    }

    /// Hidden states, (rows, 1, n_embd), of one new token for each of several independent
    /// sequences: `tokens[i]` follows the positions in `caches[i]` (each a cache of one
    /// sequence, any length, even empty). The weight products run once over all the rows, and
    /// attention runs per sequence over its own cache, with no padding; each row is bitwise
    /// what [`Gpt2Model::forward`] gives that sequence alone on the CPU kernels.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        crate::kernels::on_worker(|| self.decode_step_on_worker(tokens, caches))
    }
}

impl DecoderStack for Gpt2Model {
    fn forward_on_worker(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let step = prepare(
            input_ids,
            attention_mask,
            cache.as_deref(),
            self.blocks.len(),
            self.config.n_positions,
        )?;
        let device = input_ids.device();
        let position_ids = Tensor::from_vec(step.positions, (step.batch, step.new), device)?;
        let mut hidden = self
            .wte
            .forward(input_ids)?
            .add(&self.wpe.forward(&position_ids)?)?;
        let mask = attention_bias(step.mask.as_deref(), step.past, step.new, None, device)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            hidden = block.forward(&hidden, mask.as_ref(), layer_cache)?;
        }
        self.ln_f.forward(&hidden)
    }

    fn decode_step_on_worker(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let positions = prepare_decode(tokens, caches, self.blocks.len(), self.config.n_positions)?;
        let rows = tokens.len();
        let device = self.wte.device();
        let ids = Tensor::from_vec(tokens.to_vec(), (rows, 1), device)?;
        let positions = Tensor::from_vec(positions, (rows, 1), device)?;
        let mut hidden = self
            .wte
            .forward(&ids)?
            .add(&self.wpe.forward(&positions)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut layers: Vec<&mut LayerKv> =
                caches.iter_mut().map(|cache| cache.layer_mut(i)).collect();
            hidden = block.decode_step(&hidden, &mut layers)?;
        }
        self.ln_f.forward(&hidden)
    }

    fn weight_bytes_per_token(&self) -> usize {
        Gpt2Model::weight_bytes_per_token(self)
    }
}

/// `GPT2LMHeadModel`: the decoder and `lm_head`, tied to `wte`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L981>
#[derive(Debug, Clone)]
pub struct Gpt2LMHeadModel {
    lm: DecoderWithHead<Gpt2Model>,
}

impl Gpt2LMHeadModel {
    /// Load the decoder (at the root or under `transformer.`) and `lm_head`, which is tied to
    /// `wte` and used from there when the checkpoint omits it.
    pub fn load(vb: ModelWeights, config: &Gpt2Config) -> Result<Self> {
        let decoder = Gpt2Model::load(vb.clone(), config)?;
        let lm_head = Linear::new(
            tied_weight(&vb.pp("lm_head"), "weight", decoder.wte.weight()?)?,
            None,
            vb.weight_type(),
        )?;
        Ok(Self {
            lm: DecoderWithHead { decoder, lm_head },
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &Gpt2Config {
        self.lm.decoder.config()
    }

    /// An empty KV cache to pass to every [`Gpt2LMHeadModel::forward`] of one generation; a
    /// cache holds one batch, so start a new one (or [`KvCache::reset`]) for the next.
    pub fn new_cache(&self) -> KvCache {
        self.lm.decoder.new_cache()
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.lm.decoder.wte.device()
    }

    /// Prompt plus new tokens may not exceed this (`n_positions`).
    pub fn max_positions(&self) -> usize {
        self.config().n_positions
    }

    /// Logits of the new tokens, (batch, new, vocab). See [`Gpt2Model::forward`].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.lm.forward(input_ids, attention_mask, cache)
    }

    /// Logits of the last new token only, (batch, vocab): what the next step of generation
    /// needs. The LM head (the largest matrix) runs on one row per sequence, not on every
    /// prompt position.
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.lm.forward_last(input_ids, attention_mask, cache)
    }

    /// Logits, (rows, vocab), of the token after `tokens[i]` for each of several independent
    /// sequences, each over its own cache `caches[i]`: one decoding step of a continuous batch.
    /// See [`Gpt2Model::decode_step`]; each row is bitwise what
    /// [`Gpt2LMHeadModel::forward_last`] gives that sequence alone on the CPU kernels.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        self.lm.decode_step(tokens, caches)
    }

    /// Bytes of weights one decoding step reads: every linear layer and the LM head
    /// (embedding lookups read one row each and are left out).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.lm.weight_bytes_per_token()
    }
}

/// `GPT2ForSequenceClassification`: `score` on each row's last token that is not padding.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L1315>
#[derive(Debug, Clone)]
pub struct Gpt2ForSequenceClassification {
    transformer: Gpt2Model,
    score: Linear,
}

impl Gpt2ForSequenceClassification {
    /// Load the decoder and `score` (no bias), with [`Gpt2Config::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &Gpt2Config) -> Result<Self> {
        let score = vb
            .pp("score")
            .get((config.num_labels(), config.n_embd), "weight")?;
        Ok(Self {
            transformer: Gpt2Model::load(vb.clone(), config)?,
            score: Linear::new(score, None, vb.weight_type())?,
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &Gpt2Config {
        self.transformer.config()
    }

    /// Class logits, (batch, num_labels). Each row is scored at its rightmost token that is not
    /// `pad_token_id`, which works for left and right padding alike. Token types are ignored.
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let input_ids = &input.input_ids;
        let attention_mask = input.attention_mask.as_ref();
        let (batch, seq) = input_ids.dims2()?;
        let hidden = self.transformer.forward(input_ids, attention_mask, None)?;
        let logits = self.score.forward(&hidden)?;
        let last = match self.config().pad_token_id {
            Some(pad) => {
                let real = input_ids.ne(pad)?.to_dtype(DType::F32)?;
                let index = Tensor::arange(0f32, seq as f32, input_ids.device())?;
                real.broadcast_mul(&index)?.argmax(1)?
            }
            None if batch == 1 => Tensor::new(&[seq as u32 - 1], input_ids.device())?,
            None => {
                return Err(Error::InvalidInput(
                    "a batch of several inputs needs pad_token_id in the config to find each \
                     input's last token"
                        .to_string(),
                ))
            }
        };
        let labels = logits.dim(2)?;
        let index = last
            .reshape((batch, 1, 1))?
            .broadcast_as((batch, 1, labels))?
            .contiguous()?;
        Ok(logits.gather(&index, 1)?.squeeze(1)?)
    }
}

from_pretrained_impls!(gpt2: Gpt2Model, Gpt2LMHeadModel, Gpt2ForSequenceClassification);
