//! The BERT-family encoder as a differentiable graph: the same computation as
//! `models::bert` and `models::distilbert`, written in candle operations that all have a
//! backward pass, over the [`Parameters`](super::Parameters)' variables.
//!
//! The inference models run fused kernels (packed GEMM, fused attention and layer norm) that
//! have no backward pass; candle's own fused `layer_norm` and `softmax_last_dim` have none
//! either, and a parameter upstream of them silently gets no gradient (candle issues 3011,
//! 2168). Here the embeddings are candle primitives and [`ops`]' steps, and each layer is one
//! op with its own backward pass ([`Layer`]); `tests/training.rs` checks that every trainable
//! parameter receives a gradient.
//!
//! References: transformers v4.57.6 `modeling_bert.py`, `modeling_roberta.py` and
//! `modeling_distilbert.py`
//! (<https://github.com/huggingface/transformers/tree/v4.57.6/src/transformers/models>).
//! Fields nest as the checkpoint keys nest.

use std::cell::RefCell;

use candle_core::{DType, Tensor};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::layers::Activation;
use crate::tokenizer::ModelInput;
use crate::training::layer::Layer;
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
    pub weight: Tensor,
    pub bias: Tensor,
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
pub(crate) struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl Norm {
    pub fn read(params: &mut ParameterReader, name: &str, width: usize, eps: f64) -> Result<Self> {
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
            .map(|i| {
                let name = scoped(&format!("{stack}.{i}"));
                Layer::read(params, &name, &shape)
            })
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
            None => vec![0.0; batch * seq],
        };
        let mut x = self
            .embeddings
            .forward(input, &self.shape, dropout, self.rates.hidden)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, &self.shape, self.rates, dropout)?;
        }
        Ok(x)
    }
}

/// 0 where a token is attended, the lowest f32 where it is padding, as transformers'
/// extended attention mask (`torch.finfo(dtype).min`), (batch, seq).
fn additive_mask(mask: &Tensor) -> Result<Vec<f32>> {
    let blocked = (1.0 - mask.to_dtype(DType::F32)?)?;
    Ok((blocked * f32::MIN as f64)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
