//! The encoder that GTE, NomicBERT and JinaBERT v2 share: BERT's post-norm blocks with a gated
//! feed-forward (`down(act(gate) · up)`) in place of BERT's two products, and no position
//! table: rotary positions or ALiBi's bias in attention instead ([`Positions`]).
//! transformers 5 writes GTE and NomicBERT over one layer, JinaEmbeddingsV3's (each sub-block
//! added to its input, then layer-normed), and JinaBERT's remote code (`JinaBertLayer` with
//! `JinaBertGLUMLP`) is the same block; only the checkpoints' key names, the biases, the
//! activation and the positions differ, and [`gte`](super::gte),
//! [`nomic_bert`](super::nomic_bert) and [`jina_bert`](super::jina_bert) say which.
//! <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/jina_embeddings_v3/modular_jina_embeddings_v3.py>

mod positions;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::kernels::gemm::WeightFormat;
use crate::kernels::AttentionProducts;
use crate::models::layers::{gated, padding_mask, Activation, Embedding, LayerNorm, Linear};
use crate::models::weights::ModelWeights;
use crate::models::ModelInput;

use positions::LengthPositions;
pub(crate) use positions::Positions;

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
    /// Whether the q/k/v, output and down projections have biases (GTE's and JinaBERT's do).
    pub biases: bool,
    /// The longest input (no table bounds the positions; the config does).
    pub max_positions: usize,
}

/// How the q, k and v projections are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Qkv {
    /// One matrix: q's rows, then k's, then v's (GTE's `qkv_proj`, Nomic's `Wqkv`).
    Stacked(&'static str),
    /// Three matrices under `module`, stacked at load (BERT's `attention.self.{query,key,value}`,
    /// which JinaBERT keeps).
    Apart {
        module: &'static str,
        names: [&'static str; 3],
    },
}

/// How the feed-forward's two input products are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UpGate {
    /// One matrix whose first half of rows is `up` and second `gate` (GTE's `up_gate_proj`).
    UpThenGate(&'static str),
    /// One matrix whose first half of rows is `gate`, the order `gated` takes.
    GateThenUp(&'static str),
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
    pub qkv: Qkv,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub up_gate: UpGate,
    pub down: &'static str,
    pub mlp_norm: &'static str,
}

/// Embeddings, then the layers.
#[derive(Debug, Clone)]
pub(crate) struct GatedBertEncoder {
    word_embeddings: Embedding,
    token_type_embeddings: Option<Embedding>,
    embeddings_norm: LayerNorm,
    layers: Vec<GatedBertLayer>,
    positions: Positions,
    max_positions: usize,
}

impl GatedBertEncoder {
    /// Load from the encoder's keys under `vb`.
    pub fn load(
        vb: &ModelWeights,
        shape: &EncoderShape,
        names: &KeyNames,
        positions: Positions,
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
                .map(|i| GatedBertLayer::load(layers.pp(i), shape, names))
                .collect::<Result<_>>()?,
            positions,
            max_positions: shape.max_positions,
        })
    }

    /// The word-embedding table, (vocab_rows, hidden): what a masked-LM decoder is tied to.
    pub fn word_embeddings(&self) -> Result<&Tensor> {
        self.word_embeddings.weight()
    }

    /// ALiBi's slope of each head; `None` for rotary positions.
    pub fn alibi_slopes(&self) -> Option<&[f64]> {
        match &self.positions {
            Positions::Alibi(slopes) => Some(slopes),
            Positions::Rotary(_) => None,
        }
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
        let positions = self.positions.for_length(seq, &hidden)?;
        let mask = padding_mask(input.attention_mask.as_ref())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, mask.as_ref(), &positions)?;
        }
        Ok(hidden)
    }
}

/// One block: attention (with the positions), added and normed; the gated feed-forward, added
/// and normed.
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/jina_embeddings_v3/modular_jina_embeddings_v3.py#L180-L205>
#[derive(Debug, Clone)]
struct GatedBertLayer {
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

impl GatedBertLayer {
    fn load(vb: ModelWeights, shape: &EncoderShape, names: &KeyNames) -> Result<Self> {
        let (hidden, intermediate) = (shape.hidden, shape.intermediate);
        let gate_up = match names.up_gate {
            // Its halves swapped at load, to the gate-first order `gated` takes.
            UpGate::UpThenGate(name) => {
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
            UpGate::GateThenUp(name) => {
                Linear::load_with_bias(&vb.pp(name), hidden, 2 * intermediate, false)?
            }
            UpGate::Apart { up, gate } => Linear::stacked(
                &vb,
                &[(gate, intermediate), (up, intermediate)],
                hidden,
                false,
            )?,
        };
        let qkv = match names.qkv {
            Qkv::Stacked(name) => {
                Linear::load_with_bias(&vb.pp(name), hidden, 3 * hidden, shape.biases)?
            }
            Qkv::Apart { module, names } => Linear::stacked(
                &vb.pp(module),
                &names.map(|name| (name, hidden)),
                hidden,
                shape.biases,
            )?,
        };
        Ok(Self {
            qkv,
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
        positions: &LengthPositions,
    ) -> Result<Tensor> {
        let (qkv, position_bias) = positions.apply(self.qkv.forward(hidden)?, self.heads)?;
        // bf16 weights get bf16 attention products, as PyTorch computes a bf16 model's.
        let products = match self.qkv.weight_format() {
            Some(WeightFormat::Bf16) => AttentionProducts::Bf16,
            _ => AttentionProducts::F32,
        };
        let head_dim = self.hidden / self.heads;
        let attended = crate::kernels::multi_head_attention(
            &qkv,
            self.heads,
            mask,
            position_bias,
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
