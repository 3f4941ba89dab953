//! The BERT-family encoder as a differentiable graph: the same computation as
//! `models::bert` and `models::distilbert`, written in candle operations that all have a
//! backward pass, over the [`Parameters`](super::Parameters)' variables.
//!
//! The inference models run fused kernels (packed GEMM, fused attention and layer norm) that
//! have no backward pass; candle's own fused `layer_norm` and `softmax_last_dim` have none
//! either, and a parameter upstream of them silently gets no gradient (candle issues 3011,
//! 2168). Here every step is a candle primitive or one of [`ops`]' fused steps, each with a
//! backward pass, and `tests/training.rs` checks that every trainable parameter receives a
//! gradient.
//!
//! References: transformers v4.57.6 `modeling_bert.py`, `modeling_roberta.py` and
//! `modeling_distilbert.py`
//! (<https://github.com/huggingface/transformers/tree/v4.57.6/src/transformers/models>).
//! Fields nest as the checkpoint keys nest.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::layers::Activation;
use crate::tokenizer::ModelInput;
use crate::training::ops;
use crate::training::parameters::ParameterReader;

/// Which of the family's layouts: BERT's names, RoBERTa's positions, DistilBERT's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Bert,
    /// Positions numbered from `pad_token_id + 1` over the non-padding tokens.
    Roberta,
    DistilBert,
}

/// The dropout probabilities of `config.json`, which our inference configs do not keep.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DropoutRates {
    /// After embeddings and each sub-layer (`hidden_dropout_prob`, DistilBERT's `dropout`).
    pub hidden: f32,
    /// On attention probabilities (`attention_probs_dropout_prob`, `attention_dropout`).
    pub attention: f32,
    /// Before the classifier (`classifier_dropout`, else `hidden`; DistilBERT's
    /// `seq_classif_dropout`).
    pub classifier: f32,
}

impl DropoutRates {
    /// The rates of `config` (the parsed `config.json`); transformers' defaults where absent.
    pub fn from_config(family: Family, config: &serde_json::Value) -> Self {
        let rate = |key: &str, default: f64| -> f32 {
            config.get(key).and_then(|v| v.as_f64()).unwrap_or(default) as f32
        };
        match family {
            Family::DistilBert => Self {
                hidden: rate("dropout", 0.1),
                attention: rate("attention_dropout", 0.1),
                classifier: rate("seq_classif_dropout", 0.2),
            },
            Family::Bert | Family::Roberta => {
                let hidden = rate("hidden_dropout_prob", 0.1);
                Self {
                    hidden,
                    attention: rate("attention_probs_dropout_prob", 0.1),
                    classifier: rate("classifier_dropout", hidden as f64),
                }
            }
        }
    }
}

/// Dropout for one forward pass: off in evaluation, else masks drawn from a seeded
/// generator, so that a seed fixes every mask of a run.
pub struct Dropout {
    rng: Option<RefCell<StdRng>>,
}

/// Factors of a dropout mask drawn by one generator.
const MASK_PIECE: usize = 1 << 16;

impl Dropout {
    /// No dropout (evaluation, or a reference run).
    pub fn off() -> Self {
        Self { rng: None }
    }

    /// Dropout with masks from `rng`.
    pub fn seeded(rng: StdRng) -> Self {
        Self {
            rng: Some(RefCell::new(rng)),
        }
    }

    /// Zero each value with probability `p` and scale the rest by `1 / (1 - p)`, as
    /// `torch.nn.Dropout` does in training.
    pub(crate) fn apply(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        match self.factors(x.elem_count(), p) {
            Some(mask) => Ok(x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?),
            None => Ok(x.clone()),
        }
    }

    /// `len` factors, each 0 with probability `p` and `1 / (1 - p)` otherwise; `None` when
    /// nothing drops (evaluation, or `p` 0).
    pub(crate) fn factors(&self, len: usize, p: f32) -> Option<Vec<f32>> {
        let rng = self.rng.as_ref().filter(|_| p > 0.0)?;
        let keep = 1.0 - p;
        let threshold = (keep as f64 * u32::MAX as f64) as u32;
        // A fast generator for each piece of the mask, seeded from the run's in order, so that
        // the pieces are drawn in parallel and the mask depends on the seed alone, not on the
        // threads: the attention's masks are tens of millions of draws a step, which ChaCha
        // spent seconds on, and one thread a tenth of a step.
        let seeds: Vec<u64> = {
            let mut rng = rng.borrow_mut();
            (0..len.div_ceil(MASK_PIECE))
                .map(|_| rng.random())
                .collect()
        };
        let mut factors = vec![0f32; len];
        factors
            .par_chunks_mut(MASK_PIECE)
            .zip(seeds)
            .for_each(|(piece, seed)| {
                let mut draws = SmallRng::seed_from_u64(seed);
                for factor in piece {
                    if draws.random::<u32>() < threshold {
                        *factor = 1.0 / keep;
                    }
                }
            });
        Some(factors)
    }
}

/// `x @ weight.T + bias`, `weight` (out, in) as `torch.nn.Linear` holds it.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn read(
        params: &mut ParameterReader,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: params.read(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: params.read(&format!("{name}.bias"), &[outputs])?,
        })
    }

    /// A head's layer: read when the checkpoint has it, else initialised as transformers'
    /// `_init_weights` does (normal weight with std `initializer_range`, zero bias).
    pub fn read_or_init(
        params: &mut ParameterReader,
        name: &str,
        inputs: usize,
        outputs: usize,
        initializer_range: f64,
    ) -> Result<Self> {
        use crate::training::parameters::Init;
        Ok(Self {
            weight: params.read_or_init(
                &format!("{name}.weight"),
                &[outputs, inputs],
                Init::Normal(initializer_range),
            )?,
            bias: params.read_or_init(&format!("{name}.bias"), &[outputs], Init::Zeros)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, &self.bias)
    }
}

/// Layer normalisation over the last dimension ([`ops::layer_norm`]).
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn read(params: &mut ParameterReader, name: &str, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: params.read(&format!("{name}.weight"), &[width])?,
            bias: params.read(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// The encoder's shape, read from a BERT, RoBERTa, XLM-R, CamemBERT or DistilBERT config.
#[derive(Debug, Clone)]
pub(crate) struct EncoderShape {
    pub family: Family,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub positions: usize,
    /// Segment ids; `None` for DistilBERT, which has none.
    pub token_types: Option<usize>,
    pub activation: Activation,
    pub eps: f64,
    pub pad_token_id: usize,
    /// The std of a fresh head's weights (`initializer_range`, DistilBERT's 0.02).
    pub initializer_range: f64,
    /// The base model's prefix in task checkpoints.
    pub prefix: &'static str,
}

impl EncoderShape {
    pub fn of(config: &ModelConfig, json: &serde_json::Value) -> Result<Self> {
        let initializer_range = json
            .get("initializer_range")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.02);
        let bert = |c: &crate::models::bert::BertConfig, family, prefix| Self {
            family,
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            positions: c.max_position_embeddings,
            token_types: Some(c.type_vocab_size),
            activation: c.hidden_act,
            eps: c.layer_norm_eps,
            pad_token_id: c.pad_token_id,
            initializer_range,
            prefix,
        };
        Ok(match config {
            ModelConfig::Bert(c) => bert(c, Family::Bert, "bert"),
            ModelConfig::Roberta(c) | ModelConfig::XlmRoberta(c) | ModelConfig::Camembert(c) => {
                bert(c, Family::Roberta, "roberta")
            }
            ModelConfig::Distilbert(c) => {
                if c.sinusoidal_pos_embds {
                    return Err(Error::InvalidConfig(
                        "training a DistilBERT with sinusoidal_pos_embds is not supported; its \
                         fixed position table is not a parameter"
                            .into(),
                    ));
                }
                Self {
                    family: Family::DistilBert,
                    vocab: c.vocab_size,
                    hidden: c.dim,
                    layers: c.n_layers,
                    heads: c.n_heads,
                    intermediate: c.hidden_dim,
                    positions: c.max_position_embeddings,
                    token_types: None,
                    activation: c.activation,
                    eps: 1e-12,
                    pad_token_id: c.pad_token_id,
                    initializer_range,
                    prefix: "distilbert",
                }
            }
            other => {
                return Err(Error::UnsupportedTask {
                    model_type: other.model_type(),
                    task: "training (the BERT family trains: bert, roberta, xlm-roberta, \
                           camembert, distilbert)",
                })
            }
        })
    }
}

/// Word, position (and segment) embeddings, summed and normalised.
#[derive(Debug, Clone)]
struct Embeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Option<Tensor>,
    layer_norm: Norm,
}

impl Embeddings {
    fn read(params: &mut ParameterReader, name: &str, shape: &EncoderShape) -> Result<Self> {
        let h = shape.hidden;
        let word_embeddings =
            params.read(&format!("{name}.word_embeddings.weight"), &[shape.vocab, h])?;
        let position_embeddings = params.read(
            &format!("{name}.position_embeddings.weight"),
            &[shape.positions, h],
        )?;
        let token_type_embeddings = shape
            .token_types
            .map(|types| params.read(&format!("{name}.token_type_embeddings.weight"), &[types, h]))
            .transpose()?;
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            layer_norm: Norm::read(params, &format!("{name}.LayerNorm"), h, shape.eps)?,
        })
    }

    fn forward(
        &self,
        input: &ModelInput,
        shape: &EncoderShape,
        dropout: &Dropout,
        p: f32,
    ) -> Result<Tensor> {
        let (batch, seq) = input.input_ids.dims2()?;
        let ids = input.input_ids.to_dtype(DType::U32)?;
        let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((batch, seq, shape.hidden))?)
        };
        let positions = position_ids(input, shape, batch, seq)?;
        let mut x = lookup(&self.word_embeddings, &ids)?
            .add(&lookup(&self.position_embeddings, &positions)?)?;
        if let Some(table) = &self.token_type_embeddings {
            let types = match &input.token_type_ids {
                Some(types) => types.to_dtype(DType::U32)?,
                None => Tensor::zeros((batch, seq), DType::U32, ids.device())?,
            };
            x = x.add(&lookup(table, &types)?)?;
        }
        dropout.apply(&self.layer_norm.forward(&x)?, p)
    }
}

/// Position ids: 0.. for BERT and DistilBERT; RoBERTa counts non-padding tokens from
/// `pad_token_id + 1` and gives padding `pad_token_id`
/// (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1574>).
fn position_ids(
    input: &ModelInput,
    shape: &EncoderShape,
    batch: usize,
    seq: usize,
) -> Result<Tensor> {
    let device = input.input_ids.device();
    if shape.family != Family::Roberta {
        let row: Vec<u32> = (0..seq as u32).collect();
        return Ok(Tensor::from_vec(row, seq, device)?
            .broadcast_as((batch, seq))?
            .contiguous()?);
    }
    let ids = input.input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let pad = shape.pad_token_id as u32;
    let mut positions = Vec::with_capacity(batch * seq);
    for row in ids {
        let mut count = 0;
        for id in row {
            if id == pad {
                positions.push(pad);
            } else {
                count += 1;
                positions.push(pad + count);
            }
        }
    }
    let tensor = Tensor::from_vec(positions, (batch, seq), device)?;
    let highest = tensor.max_all()?.to_scalar::<u32>()? as usize;
    if highest >= shape.positions {
        return Err(Error::InvalidInput(format!(
            "position {highest} is past the model's {} positions; truncate the inputs",
            shape.positions
        )));
    }
    Ok(tensor)
}

/// The names of one layer's sub-modules in the family's checkpoints.
struct LayerNames {
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_output: &'static str,
    attention_norm: &'static str,
    intermediate: &'static str,
    output: &'static str,
    output_norm: &'static str,
}

const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

const DISTILBERT_LAYER: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// One post-norm transformer block: self-attention, then the feed-forward layer, each added
/// to its input and normalised.
#[derive(Debug, Clone)]
struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_output: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

impl Layer {
    fn read(params: &mut ParameterReader, name: &str, shape: &EncoderShape) -> Result<Self> {
        let names = match shape.family {
            Family::DistilBert => &DISTILBERT_LAYER,
            Family::Bert | Family::Roberta => &BERT_LAYER,
        };
        let (h, i) = (shape.hidden, shape.intermediate);
        let mut dense = |part: &str, inputs, outputs| {
            Dense::read(params, &format!("{name}.{part}"), inputs, outputs)
        };
        let query = dense(names.query, h, h)?;
        let key = dense(names.key, h, h)?;
        let value = dense(names.value, h, h)?;
        let attention_output = dense(names.attention_output, h, h)?;
        let attention_norm = Norm::read(
            params,
            &format!("{name}.{}", names.attention_norm),
            h,
            shape.eps,
        )?;
        let intermediate = Dense::read(params, &format!("{name}.{}", names.intermediate), h, i)?;
        let output = Dense::read(params, &format!("{name}.{}", names.output), i, h)?;
        let output_norm = Norm::read(
            params,
            &format!("{name}.{}", names.output_norm),
            h,
            shape.eps,
        )?;
        Ok(Self {
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        encoder: &Encoder,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let rates = encoder.rates;
        let attended = self.attention(x, mask, encoder, dropout)?;
        let attended = dropout.apply(&self.attention_output.forward(&attended)?, rates.hidden)?;
        let x = self.attention_norm.forward(&attended.add(x)?)?;
        let inner = activation(encoder.shape.activation, &self.intermediate.forward(&x)?)?;
        let out = dropout.apply(&self.output.forward(&inner)?, rates.hidden)?;
        self.output_norm.forward(&out.add(&x)?)
    }

    /// Multi-head attention over `x` (batch, seq, hidden); `mask` is additive, (batch, 1, 1, seq).
    fn attention(
        &self,
        x: &Tensor,
        mask: &Tensor,
        encoder: &Encoder,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let heads = encoder.shape.heads;
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let query = self.query.forward(x)?;
        let (key, value) = (self.key.forward(x)?, self.value.forward(x)?);
        let factors = dropout.factors(batch * heads * seq * seq, encoder.rates.attention);
        // DistilBERT scales the queries before the product, BERT the scores after it; the
        // order is kept so that the rounding is the reference's.
        match encoder.shape.family {
            Family::DistilBert => {
                ops::attention(&(query * scale)?, &key, &value, heads, mask, 1.0, factors)
            }
            Family::Bert | Family::Roberta => {
                ops::attention(&query, &key, &value, heads, mask, scale as f32, factors)
            }
        }
    }
}

/// The activations, each with a backward pass.
pub(crate) fn activation(kind: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match kind {
        Activation::Gelu => ops::gelu_erf(x)?,
        Activation::GeluNew => x.gelu()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
        Activation::Tanh => x.tanh()?,
    })
}

/// The encoder: embeddings and the stack of layers.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    pub shape: EncoderShape,
    pub rates: DropoutRates,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Encoder {
    /// Read under `name` (the base model's prefix, as the task model nests it).
    pub fn read(
        params: &mut ParameterReader,
        name: &str,
        shape: EncoderShape,
        rates: DropoutRates,
    ) -> Result<Self> {
        let scoped = |part: &str| match name.is_empty() {
            true => part.to_string(),
            false => format!("{name}.{part}"),
        };
        let embeddings = Embeddings::read(params, &scoped("embeddings"), &shape)?;
        let stack = match shape.family {
            Family::DistilBert => "transformer.layer",
            Family::Bert | Family::Roberta => "encoder.layer",
        };
        let layers = (0..shape.layers)
            .map(|i| Layer::read(params, &scoped(&format!("{stack}.{i}")), &shape))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shape,
            rates,
            embeddings,
            layers,
        })
    }

    /// The last hidden state, (batch, seq, hidden).
    pub fn forward(&self, input: &ModelInput, dropout: &Dropout) -> Result<Tensor> {
        let (batch, seq) = input.input_ids.dims2()?;
        if seq > self.shape.positions {
            return Err(Error::InvalidInput(format!(
                "an input of {seq} tokens is longer than the model's {} positions; truncate it",
                self.shape.positions
            )));
        }
        let mask = match &input.attention_mask {
            Some(mask) => additive_mask(mask)?,
            None => Tensor::zeros((batch, 1, 1, seq), DType::F32, &Device::Cpu)?,
        };
        let mut x = self
            .embeddings
            .forward(input, &self.shape, dropout, self.rates.hidden)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, self, dropout)?;
        }
        Ok(x)
    }
}

/// 0 where a token is attended, the lowest f32 where it is padding, as transformers'
/// extended attention mask (`torch.finfo(dtype).min`).
fn additive_mask(mask: &Tensor) -> Result<Tensor> {
    let (batch, seq) = mask.dims2()?;
    let blocked = (1.0 - mask.to_dtype(DType::F32)?)?;
    Ok((blocked * f32::MIN as f64)?.reshape((batch, 1, 1, seq))?)
}
