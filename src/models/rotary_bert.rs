//! The encoder that GTE and NomicBERT share: BERT's post-norm blocks with rotary positions in
//! place of a position table and a gated feed-forward (`down(act(gate) · up)`) in place of
//! BERT's two products. transformers 5 writes both over one layer, JinaEmbeddingsV3's (each
//! sub-block added to its input, then layer-normed); only the checkpoints' key names, the
//! biases and the activation differ, and [`gte`](super::gte) and
//! [`nomic_bert`](super::nomic_bert) say which.
//! <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/jina_embeddings_v3/modular_jina_embeddings_v3.py>
//!
//! Positions count from 0 in every row (`position_ids = arange(seq)`), padding on the right,
//! and the heads of q and k are rotated as the Llama family rotates them (`rotate_half`).

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::kernels::gemm::WeightFormat;
use crate::kernels::AttentionProducts;
use crate::models::layers::{gated, padding_mask, Activation, Embedding, LayerNorm, Linear};
use crate::models::rope::RotaryEmbedding;
use crate::models::weights::ModelWeights;
use crate::models::ModelInput;

/// The sizes of one encoder, from its family's config.
#[derive(Debug, Clone)]
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    /// Rows of the word embeddings (the vocabulary, padded where the checkpoint pads it).
    pub vocab_rows: usize,
    /// 0 when the checkpoint has no token-type embeddings (GTE's English models).
    pub type_vocab_size: usize,
    /// The gate's activation.
    pub activation: Activation,
    pub layer_norm_eps: f64,
    /// Whether the q/k/v, output and down projections have biases (GTE's do).
    pub biases: bool,
    /// The longest input (no table bounds a rotary embedding; the config does).
    pub max_positions: usize,
}

/// How the feed-forward's two input products are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UpGate {
    /// One matrix whose first half of rows is `up` and second `gate` (GTE's `up_gate_proj`).
    Stacked(&'static str),
    /// Two matrices (Nomic's `fc11`, the up half, and `fc12`, the gate).
    Apart {
        up: &'static str,
        gate: &'static str,
    },
}

/// The checkpoint's names of one family's tensors: the embeddings' norm beside
/// `embeddings.word_embeddings`, the list of layers, and within a layer its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyNames {
    pub embeddings_norm: &'static str,
    pub layers: &'static str,
    /// The q, k and v projections as one matrix (q's rows, then k's, then v's).
    pub qkv: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub up_gate: UpGate,
    pub down: &'static str,
    pub mlp_norm: &'static str,
}

/// Embeddings, then the layers.
#[derive(Debug, Clone)]
pub(crate) struct RotaryBertEncoder {
    word_embeddings: Embedding,
    token_type_embeddings: Option<Embedding>,
    embeddings_norm: LayerNorm,
    layers: Vec<RotaryBertLayer>,
    rotary: RotaryEmbedding,
    max_positions: usize,
}

impl RotaryBertEncoder {
    /// Load from the encoder's keys under `vb`.
    pub fn load(
        vb: &ModelWeights,
        shape: &EncoderShape,
        names: &KeyNames,
        rotary: RotaryEmbedding,
    ) -> Result<Self> {
        let embeddings = vb.pp("embeddings");
        let layers = vb.pp(names.layers);
        Ok(Self {
            word_embeddings: Embedding::load(
                embeddings.pp("word_embeddings"),
                shape.vocab_rows,
                shape.hidden,
            )?,
            token_type_embeddings: (shape.type_vocab_size > 0)
                .then(|| {
                    Embedding::load(
                        embeddings.pp("token_type_embeddings"),
                        shape.type_vocab_size,
                        shape.hidden,
                    )
                })
                .transpose()?,
            embeddings_norm: LayerNorm::load(
                vb.pp(names.embeddings_norm),
                shape.hidden,
                shape.layer_norm_eps,
            )?,
            layers: (0..shape.layers)
                .map(|i| RotaryBertLayer::load(layers.pp(i), shape, names))
                .collect::<Result<_>>()?,
            rotary,
            max_positions: shape.max_positions,
        })
    }

    /// The word-embedding table, (vocab_rows, hidden): what a masked-LM decoder is tied to.
    pub fn word_embeddings(&self) -> Result<&Tensor> {
        self.word_embeddings.weight()
    }

    /// The last hidden state, (batch, seq, hidden), f32 on the CPU whatever the weights' dtype.
    /// Errors: [`Error::InputTooLong`] past the config's longest input, [`Error::InvalidInput`]
    /// for an id outside the vocabulary or the token types.
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        crate::kernels::on_worker(|| self.forward_on_worker(input))
    }

    fn forward_on_worker(&self, input: &ModelInput) -> Result<Tensor> {
        let (_, seq) = input.input_ids.dims2()?;
        if seq > self.max_positions {
            return Err(Error::InputTooLong {
                length: seq,
                max: self.max_positions,
            });
        }
        let mut hidden = self.word_embeddings.forward(&input.input_ids)?;
        // Missing token types are zeros, as the embeddings' forward makes them.
        if let Some(table) = &self.token_type_embeddings {
            let types = match &input.token_type_ids {
                Some(types) => types.clone(),
                None => input.input_ids.zeros_like()?,
            };
            hidden = hidden.add(&table.forward(&types)?)?;
        }
        hidden = self.embeddings_norm.forward(&hidden)?;
        let rotation = Rotation::new(&self.rotary, seq, &hidden)?;
        let mask = input
            .attention_mask
            .as_ref()
            .map(padding_mask)
            .transpose()?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, mask.as_ref(), &rotation)?;
        }
        Ok(hidden)
    }
}

/// Cosines and sines of positions 0..seq, (seq, head_dim / 2) each: the first half of
/// transformers' `cat(freqs, freqs)`, which is all `rope_thd` reads.
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    fn new(rotary: &RotaryEmbedding, seq: usize, like: &Tensor) -> Result<Self> {
        let positions: Vec<u32> = (0..seq as u32).collect();
        let (cos, sin) = rotary.cos_sin(&positions, 1, like.device())?;
        let half = |t: Tensor| -> Result<Tensor> {
            let dim = t.dim(D::Minus1)?;
            Ok(t.narrow(D::Minus1, 0, dim / 2)?
                .reshape((seq, dim / 2))?
                .to_dtype(like.dtype())?
                .contiguous()?)
        };
        Ok(Self {
            cos: half(cos)?,
            sin: half(sin)?,
        })
    }
}

/// One block: attention (q, k rotated), added and normed; the gated feed-forward, added and
/// normed.
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/jina_embeddings_v3/modular_jina_embeddings_v3.py#L180-L205>
#[derive(Debug, Clone)]
struct RotaryBertLayer {
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    /// `gate` and `up` side by side in one product.
    gate_up: Linear,
    activation: Activation,
    down: Linear,
    mlp_norm: LayerNorm,
    heads: usize,
    hidden: usize,
}

impl RotaryBertLayer {
    fn load(vb: ModelWeights, shape: &EncoderShape, names: &KeyNames) -> Result<Self> {
        let (hidden, intermediate) = (shape.hidden, shape.intermediate);
        let gate_up = match names.up_gate {
            // Its halves swapped at load, to the gate-first order `gated` takes.
            UpGate::Stacked(name) => {
                let up_gate = vb.pp(name).get((2 * intermediate, hidden), "weight")?;
                let gate_up = Tensor::cat(
                    &[
                        up_gate.narrow(0, intermediate, intermediate)?,
                        up_gate.narrow(0, 0, intermediate)?,
                    ],
                    0,
                )?;
                Linear::new(gate_up, None, vb.weight_type())?
            }
            UpGate::Apart { up, gate } => Linear::stacked(
                &vb,
                &[(gate, intermediate), (up, intermediate)],
                hidden,
                false,
            )?,
        };
        Ok(Self {
            qkv: Linear::load_with_bias(&vb.pp(names.qkv), hidden, 3 * hidden, shape.biases)?,
            attention_output: Linear::load_with_bias(
                &vb.pp(names.attention_output),
                hidden,
                hidden,
                shape.biases,
            )?,
            attention_norm: LayerNorm::load(
                vb.pp(names.attention_norm),
                hidden,
                shape.layer_norm_eps,
            )?,
            gate_up,
            activation: shape.activation,
            down: Linear::load_with_bias(&vb.pp(names.down), intermediate, hidden, shape.biases)?,
            mlp_norm: LayerNorm::load(vb.pp(names.mlp_norm), hidden, shape.layer_norm_eps)?,
            heads: shape.heads,
            hidden,
        })
    }

    fn forward(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        rotation: &Rotation,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(hidden)?;
        let (batch, seq, _) = qkv.dims3()?;
        let head_dim = self.hidden / self.heads;
        let rotated = |part: usize| -> Result<Tensor> {
            let heads = qkv
                .narrow(D::Minus1, part * self.hidden, self.hidden)?
                .contiguous()?
                .reshape((batch, seq, self.heads, head_dim))?;
            Ok(
                candle_nn::rotary_emb::rope_thd(&heads, &rotation.cos, &rotation.sin)?
                    .reshape((batch, seq, self.hidden))?,
            )
        };
        let value = qkv.narrow(D::Minus1, 2 * self.hidden, self.hidden)?;
        let qkv = Tensor::cat(&[rotated(0)?, rotated(1)?, value], D::Minus1)?;
        // bf16 weights get bf16 attention products, as PyTorch computes a bf16 model's.
        let products = match self.qkv.weight_format() {
            Some(WeightFormat::Bf16) => AttentionProducts::Bf16,
            _ => AttentionProducts::F32,
        };
        let attended = crate::kernels::multi_head_attention(
            &qkv,
            self.heads,
            mask,
            None,
            1.0 / (head_dim as f64).sqrt(),
            products,
        )?;
        let hidden = self
            .attention_norm
            .forward(
                &self
                    .attention_output
                    .forward_with(&attended, None, Some(hidden))?,
            )?;
        let gated = gated(self.activation, &self.gate_up.forward(&hidden)?)?;
        self.mlp_norm
            .forward(&self.down.forward_with(&gated, None, Some(&hidden))?)
    }
}
