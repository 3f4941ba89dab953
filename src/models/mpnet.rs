//! MPNet and its task heads.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/mpnet/modeling_mpnet.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py>).
//! The blocks are BERT's with other key names (`attention.attn.{q,k,v,o}`), no token types,
//! RoBERTa's position numbering, and one difference in attention: a bias for the distance
//! between query and key, looked up in one table (`encoder.relative_attention_bias`) that
//! every layer shares, is added to the scores. all-mpnet-base-v2 is this encoder.

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::PositionBias;
use crate::models::bert::Positions;
use crate::models::config::Labels;
use crate::models::layers::{
    padding_mask, require_encoder_sizes, require_positive, Activation, Embedding, LayerNorm,
    Linear, Pooler, SelfAttention,
};
use crate::models::task_heads::task_heads;
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, EncoderOutput, ModelInput};

/// `MPNetConfig` from `config.json`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/configuration_mpnet.py#L81>
#[derive(Debug, Clone, Deserialize)]
pub struct MpNetConfig {
    /// Rows of the word-embedding table; every token id must be below it.
    pub vocab_size: usize,
    /// Width of the hidden states: the last dimension of [`EncoderOutput::last_hidden_state`].
    pub hidden_size: usize,
    /// Number of transformer blocks (`encoder.layer.*`).
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of each block's feed-forward layer (`intermediate.dense`).
    pub intermediate_size: usize,
    /// Activation of the feed-forward layers (the masked-LM head always uses exact GELU).
    pub hidden_act: Activation,
    /// Rows of the position table; positions start at 2, so it takes 2 fewer tokens (514
    /// rows give 512).
    pub max_position_embeddings: usize,
    #[serde(default = "default_layer_norm_eps")]
    /// Epsilon of every layer norm; 1e-12 when absent (all-mpnet-base-v2 says 1e-5).
    pub layer_norm_eps: f64,
    #[serde(default = "default_relative_attention_num_buckets")]
    /// Rows of `encoder.relative_attention_bias`; 32 when absent, and at least 32 (see
    /// [`RELATIVE_POSITION_BUCKETS`]).
    pub relative_attention_num_buckets: usize,
    /// Class names of classification heads.
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_relative_attention_num_buckets() -> usize {
    RELATIVE_POSITION_BUCKETS
}

impl MpNetConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        // Before the shared sizes, which would refuse 0 heads as a divisor rather than name them.
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_encoder_sizes!(self)?;
        if self.relative_attention_num_buckets < RELATIVE_POSITION_BUCKETS {
            return Err(Error::InvalidConfig(format!(
                "relative_attention_num_buckets {} is below {RELATIVE_POSITION_BUCKETS}: MPNet \
                 sorts relative positions into {RELATIVE_POSITION_BUCKETS} buckets whatever the \
                 config says, so its table needs that many rows",
                self.relative_attention_num_buckets
            )));
        }
        Ok(())
    }

    /// Number of classes of a classification head: `id2label`'s size, else transformers' default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }
}

/// How many buckets relative positions fall into. transformers' encoder calls
/// `compute_position_bias(hidden_states)`, whose `num_buckets` defaults to 32, and never passes
/// `config.relative_attention_num_buckets`, which only sizes the table.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L331>
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L363>
pub const RELATIVE_POSITION_BUCKETS: usize = 32;

/// The bucket of the distance from a query to a key, `relative = key − query`, as T5's
/// bidirectional `relative_position_bucket` with 32 buckets and `max_distance` 128: keys at or
/// before the query in buckets 0..16, keys after it in 16..32; within each half, distances 0
/// to 7 have a bucket each and the longer ones share 8 more, spaced logarithmically up to 128,
/// past which all fall in the last.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L381>
///
/// transformers computes the logarithmic bucket as `8 + trunc(ln(n / 8) / ln(128 / 8) · 8)`
/// in f32, which is `8 + floor(2 · log2(n / 8))`, i.e. `2 + floor(log2(n²))`: done here in
/// integers, exact where the float form lands on a whole number (n = 16, 32, 64), and equal to
/// transformers' buckets for every distance (tests/encoders.rs checks -1100..=1100).
pub fn relative_position_bucket(relative: i64) -> u32 {
    const HALF: u32 = RELATIVE_POSITION_BUCKETS as u32 / 2;
    const EXACT: u64 = HALF as u64 / 2;
    let direction = if relative > 0 { HALF } else { 0 };
    let distance = relative.unsigned_abs();
    let within = if distance < EXACT {
        distance as u32
    } else {
        // distance² < 2^127 for any i64 distance, so the square fits in u128.
        let square = u128::from(distance) * u128::from(distance);
        (2 + square.ilog2()).min(HALF - 1)
    };
    direction + within
}

/// Word and position embeddings, summed and normalised (no token types).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L68>
#[derive(Debug, Clone)]
struct MpNetEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl MpNetEmbeddings {
    fn load(vb: ModelWeights, config: &MpNetConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            word_embeddings: Embedding::load(vb.pp("word_embeddings"), config.vocab_size, hidden)?,
            position_embeddings: Embedding::load(
                vb.pp("position_embeddings"),
                config.max_position_embeddings,
                hidden,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
        })
        // `embeddings.position_ids` (a buffer that older checkpoints saved) is never read.
    }

    fn forward(&self, input_ids: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let words = self.word_embeddings.forward(input_ids)?;
        let positions = self.position_embeddings.forward(position_ids)?;
        self.layer_norm.forward(&(words + positions)?)
    }
}

/// `attention`: `attn` (q, k, v, the position bias, o), then a residual layer norm.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L204>
#[derive(Debug, Clone)]
struct MpNetAttention {
    /// `attn.{q,k,v}`: the projections and scaled dot-product attention with the bias added
    /// to the scores before the mask.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L178>
    attn: SelfAttention,
    /// `attn.o`: the output projection, which MPNet keeps inside `attn`.
    o: Linear,
    layer_norm: LayerNorm,
}

impl MpNetAttention {
    fn load(vb: ModelWeights, config: &MpNetConfig) -> Result<Self> {
        let attn = vb.pp("attn");
        let hidden = config.hidden_size;
        Ok(Self {
            attn: SelfAttention::load(
                attn.clone(),
                ["q", "k", "v"],
                hidden,
                config.num_attention_heads,
            )?,
            o: Linear::load(attn.pp("o"), hidden, hidden)?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
        })
    }

    fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        position_bias: &Tensor,
    ) -> Result<Tensor> {
        let attended =
            self.attn
                .forward_with_bias(hidden, mask, Some(PositionBias::Table(position_bias)))?;
        let output = self.o.forward_with(&attended, None, Some(hidden))?;
        self.layer_norm.forward(&output)
    }
}

/// One transformer block: `attention`, `intermediate.dense`, `output.{dense,LayerNorm}`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L281>
#[derive(Debug, Clone)]
struct MpNetLayer {
    attention: MpNetAttention,
    intermediate: Linear,
    activation: Activation,
    output: Linear,
    output_layer_norm: LayerNorm,
}

impl MpNetLayer {
    fn load(vb: ModelWeights, config: &MpNetConfig) -> Result<Self> {
        let output = vb.pp("output");
        Ok(Self {
            attention: MpNetAttention::load(vb.pp("attention"), config)?,
            intermediate: Linear::load(
                vb.pp("intermediate").pp("dense"),
                config.hidden_size,
                config.intermediate_size,
            )?,
            activation: config.hidden_act,
            output: Linear::load(
                output.pp("dense"),
                config.intermediate_size,
                config.hidden_size,
            )?,
            output_layer_norm: LayerNorm::load(
                output.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
        })
    }

    fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        position_bias: &Tensor,
    ) -> Result<Tensor> {
        let hidden = self.attention.forward(hidden, mask, position_bias)?;
        let inner = self
            .intermediate
            .forward_into_linear(&hidden, Some(self.activation))?;
        let output = self.output.forward_with(&inner, None, Some(&hidden))?;
        self.output_layer_norm.forward(&output)
    }
}

/// `encoder`: the blocks, and the relative-position table they share.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L313>
#[derive(Debug, Clone)]
struct MpNetEncoder {
    layers: Vec<MpNetLayer>,
    /// (buckets, heads): one bias per head for each bucket of distances.
    relative_attention_bias: Embedding,
}

impl MpNetEncoder {
    fn load(vb: ModelWeights, config: &MpNetConfig) -> Result<Self> {
        let layer = vb.pp("layer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| MpNetLayer::load(layer.pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            relative_attention_bias: Embedding::load(
                vb.pp("relative_attention_bias"),
                config.relative_attention_num_buckets,
                config.num_attention_heads,
            )?,
        })
    }

    /// (heads, seq, seq) f32: the bias of key j for query i, by the bucket of j − i. Positions
    /// are 0..seq in every row, not the embeddings' position ids: transformers calls
    /// `compute_position_bias` without them, so padding (which batches put at the end) does
    /// not move a real token's distances.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L363>
    fn position_bias(&self, seq: usize) -> Result<Tensor> {
        let seq_i64 = i64::try_from(seq)
            .map_err(|_| Error::InvalidInput(format!("{seq} tokens are too many")))?;
        let buckets: Vec<u32> = (0..seq_i64)
            .flat_map(|query| (0..seq_i64).map(move |key| relative_position_bucket(key - query)))
            .collect();
        let device = self.relative_attention_bias.device();
        let buckets = Tensor::from_vec(buckets, (seq, seq), device)?;
        // (seq, seq, heads) -> (heads, seq, seq)
        let bias = self.relative_attention_bias.forward(&buckets)?;
        Ok(bias
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .contiguous()?)
    }

    fn forward(&self, hidden: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let position_bias = self.position_bias(hidden.dim(1)?)?;
        self.layers.iter().try_fold(hidden, |hidden, layer| {
            layer.forward(&hidden, mask, &position_bias)
        })
    }
}

/// The MPNet encoder: embeddings, `encoder.*` and an optional pooler.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L419>
#[derive(Debug, Clone)]
pub struct MpNetModel {
    embeddings: MpNetEmbeddings,
    encoder: MpNetEncoder,
    pooler: Option<Pooler>,
    config: MpNetConfig,
}

impl MpNetModel {
    /// Positions as RoBERTa numbers them, after a padding index that transformers fixes at 1
    /// (`self.padding_idx = 1`), whatever `pad_token_id` says.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L71>
    const POSITIONS: Positions = Positions::AfterPadding { padding_idx: 1 };

    /// Load from `embeddings.*`, `encoder.*`, `pooler.*`, at the root or under `mpnet.`.
    pub fn load(vb: ModelWeights, config: &MpNetConfig) -> Result<Self> {
        let vb = base_model_weights(&vb, "mpnet", "embeddings.word_embeddings.weight")?;
        let pooler = Pooler::load_if_present(&vb, config.hidden_size)?;
        Ok(Self {
            embeddings: MpNetEmbeddings::load(vb.pp("embeddings"), config)?,
            encoder: MpNetEncoder::load(vb.pp("encoder"), config)?,
            pooler,
            config: config.clone(),
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &MpNetConfig {
        &self.config
    }

    /// Run the encoder. `last_hidden_state` is (batch, seq, hidden_size), f32 on the CPU
    /// whatever the weights' dtype. Token type ids are ignored: MPNet has none.
    /// Errors: [`Error::InputTooLong`] past the position table, [`Error::InvalidInput`] for an
    /// id outside the vocabulary.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        crate::kernels::on_worker(|| self.forward_on_worker(input))
    }

    fn forward_on_worker(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let position_ids =
            Self::POSITIONS.ids(&input.input_ids, self.config.max_position_embeddings)?;
        let hidden = self.embeddings.forward(&input.input_ids, &position_ids)?;
        let mask = padding_mask(input.attention_mask.as_ref())?;
        let hidden = self.encoder.forward(hidden, mask.as_ref())?;
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|pooler| pooler.forward(&hidden))
            .transpose()?;
        Ok(EncoderOutput {
            last_hidden_state: hidden,
            pooler_output,
        })
    }

    fn word_embeddings(&self) -> Result<&Tensor> {
        self.embeddings.word_embeddings.weight()
    }

    fn last_hidden_state(&self, input: &ModelInput) -> Result<Tensor> {
        Ok(self.forward(input)?.last_hidden_state)
    }
}

task_heads! {
    model: MpNetModel,
    config: MpNetConfig,
    under: "`mpnet.`",
    num_labels: "[`MpNetConfig::num_labels`]",
    /// `MPNetForMaskedLM`: `lm_head` is dense, exact GELU (whatever `hidden_act` says), layer
    /// norm, then a decoder tied to the word embeddings, whose bias is `lm_head.bias`.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L579>
    masked_lm: MpNetForMaskedLM = roberta,
    /// `MPNetForSequenceClassification`: `classifier.dense`, tanh, `classifier.out_proj`, on the
    /// `<s>` token (no pooler), as RoBERTa's head.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L852>
    sequence_classification: MpNetForSequenceClassification = first_token,
    /// `MPNetForTokenClassification`: `classifier` on every token.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L787>
    token_classification: MpNetForTokenClassification,
    /// `MPNetForQuestionAnswering`: `qa_outputs` gives a start and an end logit per token.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/mpnet/modeling_mpnet.py#L872>
    question_answering: MpNetForQuestionAnswering,
}

from_pretrained_impls!(
    mpnet:
    MpNetModel,
    MpNetForMaskedLM,
    MpNetForSequenceClassification,
    MpNetForTokenClassification,
    MpNetForQuestionAnswering
);
