//! One post-norm encoder layer of the training graph as a single candle op, with its own
//! backward pass.
//!
//! Built from one op per step (projections, attention, dropout, residual, layer norm,
//! activation), candle's backward pass summed every gradient into a fresh zeroed tensor
//! (`GradStore::or_insert` then `add`), on one thread: for BERT-base at 16 × 128 that was
//! about 140 MB zeroed and 420 MB read or written per layer and step outside the matrix
//! products, a tenth of the step with the second core idle. As one op, the layer keeps the
//! activations its backward pass reads, runs every element-wise step in parallel and fused
//! with its neighbour (dropout with the residual, the residual's gradient with the GEMM that
//! adds to it), and projects queries, keys and values with one product of the three weights
//! side by side.
//!
//! The parameters' gradients are not inputs' gradients, which are all that candle's store
//! receives from an op: the layer hands them to [`LayerGradients`], and
//! [`TrainableModel::backward`](super::TrainableModel::backward) moves them into the store.
//!
//! References: transformers v4.57.6 `BertLayer` and DistilBERT's `TransformerBlock`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L510>,
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L390>).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, TensorId};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::f32_slice;
use crate::kernels::isa::Isa;
use crate::models::layers::Activation;
use crate::training::encoder::{Dense, Dropout, DropoutRates, EncoderShape, Family, Norm};
use crate::training::ops::{self, values, Attention, AttentionShape};
use crate::training::parameters::ParameterReader;

/// The gradients that fused layers computed for their parameters in a backward pass, until
/// they are moved into candle's store: keyed by the parameter's tensor, summed over the
/// passes that used it (two forward passes of one encoder in a pair loss).
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerGradients(Arc<Mutex<HashMap<TensorId, Tensor>>>);

impl LayerGradients {
    /// Record `gradient` for `parameter`, unless the parameter is frozen (not a variable).
    fn add(&self, parameter: &Tensor, gradient: Vec<f32>) -> candle_core::Result<()> {
        if !parameter.is_variable() {
            return Ok(());
        }
        let gradient = Tensor::from_vec(gradient, parameter.shape(), parameter.device())?;
        let mut sums = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match sums.remove(&parameter.id()) {
            Some(sum) => sums.insert(parameter.id(), (sum + gradient)?),
            None => sums.insert(parameter.id(), gradient),
        };
        Ok(())
    }

    /// Move every recorded gradient into `store`, summed with one it already holds.
    pub fn move_into(&self, store: &mut GradStore) -> Result<()> {
        let sums = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, gradient) in sums {
            let gradient = match store.get_id(id) {
                Some(held) => (held + gradient)?,
                None => gradient,
            };
            store.insert_id(id, gradient);
        }
        Ok(())
    }

    /// Drop any gradients that a backward pass left here and no store received; returns
    /// whether there were any.
    pub fn discard(&self) -> bool {
        let mut sums = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let left = !sums.is_empty();
        sums.clear();
        left
    }
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
pub(crate) struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_output: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
    gradients: LayerGradients,
}

impl Layer {
    pub fn read(params: &mut ParameterReader, name: &str, shape: &EncoderShape) -> Result<Self> {
        let names = match shape.family {
            Family::DistilBert => &DISTILBERT_LAYER,
            Family::Bert | Family::Roberta => &BERT_LAYER,
        };
        let (h, i, eps) = (shape.hidden, shape.intermediate, shape.eps);
        let mut dense = |part: &str, inputs, outputs| {
            Dense::read(params, &format!("{name}.{part}"), inputs, outputs)
        };
        let query = dense(names.query, h, h)?;
        let key = dense(names.key, h, h)?;
        let value = dense(names.value, h, h)?;
        let attention_output = dense(names.attention_output, h, h)?;
        let attention_norm =
            Norm::read(params, &format!("{name}.{}", names.attention_norm), h, eps)?;
        let intermediate = Dense::read(params, &format!("{name}.{}", names.intermediate), h, i)?;
        let output = Dense::read(params, &format!("{name}.{}", names.output), i, h)?;
        let output_norm = Norm::read(params, &format!("{name}.{}", names.output_norm), h, eps)?;
        Ok(Self {
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
            gradients: params.layer_gradients(),
        })
    }

    /// The layer over `x` (batch, seq, hidden); `mask` additive, (batch, seq). Dropout masks
    /// are drawn in the order of transformers' forward pass: attention probabilities, then
    /// the attention's output, then the feed-forward output.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &[f32],
        shape: &EncoderShape,
        rates: DropoutRates,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let heads = shape.heads;
        if hidden % heads != 0 || mask.len() != batch * seq {
            return Err(Error::InvalidInput(format!(
                "a layer of {heads} heads cannot take hidden states {:?} under a mask of {} values",
                x.dims(),
                mask.len()
            )));
        }
        let op = FusedLayer {
            layer: self.clone(),
            shape: AttentionShape {
                batch,
                seq,
                heads,
                head: hidden / heads,
            },
            activation: shape.activation,
            eps: shape.eps as f32,
            // DistilBERT scales the queries before the product, BERT the scores after it;
            // the order is kept so that the rounding is the reference's.
            scales_queries: shape.family == Family::DistilBert,
            mask: mask.to_vec(),
            attention_dropout: dropout.factors(batch * heads * seq * seq, rates.attention),
            attention_output_dropout: dropout.factors(batch * seq * hidden, rates.hidden),
            output_dropout: dropout.factors(batch * seq * hidden, rates.hidden),
            keeps_activations: x.track_op(),
            saved: Mutex::new(None),
        };
        Ok(x.contiguous()?.apply_op1(op)?)
    }
}

/// The layer as one op over its input.
struct FusedLayer {
    layer: Layer,
    shape: AttentionShape,
    activation: Activation,
    eps: f32,
    scales_queries: bool,
    mask: Vec<f32>,
    attention_dropout: Option<Vec<f32>>,
    attention_output_dropout: Option<Vec<f32>>,
    output_dropout: Option<Vec<f32>>,
    /// Whether a backward pass will run (the input tracks gradients): only then are the
    /// activations kept.
    keeps_activations: bool,
    saved: Mutex<Option<Activations>>,
}

/// What the forward pass keeps for the backward one, (rows, ·) each.
struct Activations {
    /// The query, key and value weights side by side, (3 · hidden, hidden).
    qkv_weight: Vec<f32>,
    /// The projections, queries scaled where the family scales them, (rows, 3 · hidden).
    qkv: Vec<f32>,
    attended: Vec<f32>,
    /// The attention's output, dropped out, plus the input: the first norm's input.
    attention_sum: Vec<f32>,
    /// The first norm's output.
    attention_normed: Vec<f32>,
    /// The intermediate projection, before and after the activation, (rows, intermediate).
    intermediate: Vec<f32>,
    activated: Vec<f32>,
    /// The output projection, dropped out, plus the first norm's output: the second norm's
    /// input.
    output_sum: Vec<f32>,
}

/// `sum = sum ⊙ dropout + residual`, in parallel.
fn add_residual(sum: &mut [f32], dropout: Option<&[f32]>, residual: &[f32]) {
    const CHUNK: usize = 1 << 14;
    match dropout {
        Some(factors) => sum
            .par_chunks_mut(CHUNK)
            .zip(factors.par_chunks(CHUNK))
            .zip(residual.par_chunks(CHUNK))
            .for_each(|((s, d), r)| {
                for ((s, d), r) in s.iter_mut().zip(d).zip(r) {
                    *s = *s * d + r;
                }
            }),
        None => sum
            .par_chunks_mut(CHUNK)
            .zip(residual.par_chunks(CHUNK))
            .for_each(|(s, r)| s.iter_mut().zip(r).for_each(|(s, r)| *s += r)),
    }
}

/// `grad ⊙ dropout`, or `grad` itself without dropout.
fn dropped<'a>(grad: &'a [f32], dropout: Option<&[f32]>) -> Cow<'a, [f32]> {
    match dropout {
        Some(factors) => Cow::Owned(
            grad.par_iter()
                .zip(factors.par_iter())
                .map(|(g, d)| g * d)
                .collect(),
        ),
        None => Cow::Borrowed(grad),
    }
}

impl FusedLayer {
    fn attention(&self) -> Attention<'_> {
        let scale = 1.0 / (self.shape.head as f32).sqrt();
        Attention {
            shape: self.shape,
            mask: &self.mask,
            scale: if self.scales_queries { 1.0 } else { scale },
            dropout: self.attention_dropout.as_deref(),
            isa: Isa::current(),
        }
    }

    /// `norm(dense(input) ⊙ dropout + residual)`: the sum (the norm's input, which the
    /// backward pass reads) and the normalised rows.
    fn project_add_norm(
        &self,
        dense: &Dense,
        input: &[f32],
        dropout: Option<&[f32]>,
        residual: &[f32],
        norm: &Norm,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let mut sum = ops::linear_rows(input, &values(&dense.weight)?, &values(&dense.bias)?);
        add_residual(&mut sum, dropout, residual);
        let mut normed = sum.clone();
        let (weight, bias) = (values(&norm.weight)?, values(&norm.bias)?);
        ops::layer_norm_in_place(&mut normed, &weight, &bias, self.eps);
        Ok((sum, normed))
    }

    /// Back through `norm` of `sum`, given its output's gradient: its parameters' gradients
    /// to the layer's sink, the sum's returned.
    fn norm_backward(
        &self,
        norm: &Norm,
        sum: &[f32],
        grad: &[f32],
    ) -> candle_core::Result<Vec<f32>> {
        let gradients = ops::layer_norm_backward(sum, &values(&norm.weight)?, grad, self.eps);
        self.layer.gradients.add(&norm.weight, gradients.weight)?;
        self.layer.gradients.add(&norm.bias, gradients.bias)?;
        Ok(gradients.input)
    }

    /// Back through `dense` over `input`, dropped out by `dropout` before the sum whose
    /// gradient is `sum_grad`: its parameters' gradients to the layer's sink, its input's
    /// returned.
    fn dense_backward(
        &self,
        dense: &Dense,
        input: &[f32],
        sum_grad: &[f32],
        dropout: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let grad = dropped(sum_grad, dropout);
        let (outputs, inputs) = dense.weight.dims2()?;
        let input_grad = ops::linear_input_gradient(&grad, &values(&dense.weight)?, outputs);
        let parameters = ops::linear_parameter_gradients(input, &grad, inputs, outputs);
        self.add_dense_gradients(dense, parameters)?;
        Ok(input_grad)
    }

    /// Hand `dense`'s weight and bias gradients to the layer's sink.
    fn add_dense_gradients(
        &self,
        dense: &Dense,
        (weight, bias): (Vec<f32>, Vec<f32>),
    ) -> candle_core::Result<()> {
        self.layer.gradients.add(&dense.weight, weight)?;
        self.layer.gradients.add(&dense.bias, bias)
    }

    /// Scale each row's queries (the first `hidden` of each packed row) by 1/√head.
    fn scale_queries(&self, qkv: &mut [f32]) {
        let width = self.shape.width();
        let scale = 1.0 / (self.shape.head as f32).sqrt();
        qkv.par_chunks_mut(3 * width)
            .for_each(|row| row[..width].iter_mut().for_each(|v| *v *= scale));
    }
}

impl CustomOp1 for FusedLayer {
    fn name(&self) -> &'static str {
        "training-encoder-layer"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let l = &self.layer;
        let (query, key, value) = (
            values(&l.query.weight)?,
            values(&l.key.weight)?,
            values(&l.value.weight)?,
        );
        let qkv_weight = [&*query, &*key, &*value].concat();
        let qkv_bias = [
            &*values(&l.query.bias)?,
            &*values(&l.key.bias)?,
            &*values(&l.value.bias)?,
        ]
        .concat();
        let mut qkv = ops::linear_rows(x, &qkv_weight, &qkv_bias);
        if self.scales_queries {
            self.scale_queries(&mut qkv);
        }
        let attended = self.attention().forward(&qkv);
        let (attention_sum, attention_normed) = self.project_add_norm(
            &l.attention_output,
            &attended,
            self.attention_output_dropout.as_deref(),
            x,
            &l.attention_norm,
        )?;
        let intermediate = ops::linear_rows(
            &attention_normed,
            &values(&l.intermediate.weight)?,
            &values(&l.intermediate.bias)?,
        );
        let activated = ops::activated(self.activation, &intermediate);
        let (output_sum, out) = self.project_add_norm(
            &l.output,
            &activated,
            self.output_dropout.as_deref(),
            &attention_normed,
            &l.output_norm,
        )?;
        if self.keeps_activations {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Activations {
                qkv_weight,
                qkv,
                attended,
                attention_sum,
                attention_normed,
                intermediate,
                activated,
                output_sum,
            });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(a) = saved else {
            candle_core::bail!(
                "an encoder layer's backward pass ran twice, or without its forward pass"
            );
        };
        let l = &self.layer;
        let width = self.shape.width();
        let inner = l.intermediate.bias.elem_count();
        let (x, grad) = (values(arg)?, values(grad)?);

        // The second norm, the output projection (through its dropout) and the activation.
        let mut normed_grad = self.norm_backward(&l.output_norm, &a.output_sum, &grad)?;
        let mut intermediate_grad = self.dense_backward(
            &l.output,
            &a.activated,
            &normed_grad,
            self.output_dropout.as_deref(),
        )?;
        ops::activation_backward_in_place(self.activation, &a.intermediate, &mut intermediate_grad);

        // The intermediate projection, its input's gradient summed onto the residual's.
        ops::linear_input_gradient_onto(
            &mut normed_grad,
            &intermediate_grad,
            &values(&l.intermediate.weight)?,
            inner,
        );
        self.add_dense_gradients(
            &l.intermediate,
            ops::linear_parameter_gradients(&a.attention_normed, &intermediate_grad, width, inner),
        )?;
        drop(intermediate_grad);

        // The first norm and the attention's output projection (through its dropout).
        let mut input_grad =
            self.norm_backward(&l.attention_norm, &a.attention_sum, &normed_grad)?;
        let attended_grad = self.dense_backward(
            &l.attention_output,
            &a.attended,
            &input_grad,
            self.attention_output_dropout.as_deref(),
        )?;

        // The attention and the packed projections, the input's gradient summed onto the
        // residual's.
        let mut qkv_grad = self.attention().backward(&a.qkv, &attended_grad);
        if self.scales_queries {
            self.scale_queries(&mut qkv_grad);
        }
        ops::linear_input_gradient_onto(&mut input_grad, &qkv_grad, &a.qkv_weight, 3 * width);
        let (weight, bias) = ops::linear_parameter_gradients(&x, &qkv_grad, width, 3 * width);
        for (part, dense) in [&l.query, &l.key, &l.value].into_iter().enumerate() {
            let weight = weight[part * width * width..(part + 1) * width * width].to_vec();
            let bias = bias[part * width..(part + 1) * width].to_vec();
            self.add_dense_gradients(dense, (weight, bias))?;
        }
        Ok(Some(Tensor::from_vec(
            input_grad,
            arg.shape(),
            arg.device(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    //! The fused layer against the same layer built from one op per step ([`ops`]' fused
    //! steps and candle's primitives, each with its own backward pass): dropout on, padding
    //! in the mask, every activation, and DistilBERT's queries scaled before the product.

    use candle_core::{Device, Tensor};
    use rand::SeedableRng;

    use super::*;
    use crate::training::ops::tests::{primitive_attention, random};

    const HIDDEN: usize = 8;
    const INTERMEDIATE: usize = 12;
    const HEADS: usize = 2;

    fn layer(seed: u64) -> Layer {
        let dense = |inputs: usize, outputs: usize, seed: u64| Dense {
            weight: random(&[outputs, inputs], seed).as_tensor().clone(),
            bias: random(&[outputs], seed + 1).as_tensor().clone(),
        };
        let norm = |seed: u64| Norm {
            weight: candle_core::Var::from_tensor(
                &(random(&[HIDDEN], seed).as_tensor() + 1.5).unwrap(),
            )
            .unwrap()
            .as_tensor()
            .clone(),
            bias: random(&[HIDDEN], seed + 1).as_tensor().clone(),
            eps: 1e-12,
        };
        Layer {
            query: dense(HIDDEN, HIDDEN, seed),
            key: dense(HIDDEN, HIDDEN, seed + 2),
            value: dense(HIDDEN, HIDDEN, seed + 4),
            attention_output: dense(HIDDEN, HIDDEN, seed + 6),
            attention_norm: norm(seed + 8),
            intermediate: dense(HIDDEN, INTERMEDIATE, seed + 10),
            output: dense(INTERMEDIATE, HIDDEN, seed + 12),
            output_norm: norm(seed + 14),
            gradients: LayerGradients::default(),
        }
    }

    /// The layer from one op per step, with `dropout`'s masks drawn in the fused layer's order.
    fn stepwise(
        layer: &Layer,
        x: &Tensor,
        mask: &[f32],
        shape: &EncoderShape,
        rates: DropoutRates,
        dropout: &Dropout,
    ) -> Tensor {
        let (batch, seq, hidden) = x.dims3().unwrap();
        let drop = |t: Tensor, factors: Option<Vec<f32>>| match factors {
            Some(f) => t
                .mul(&Tensor::from_vec(f, t.shape(), t.device()).unwrap())
                .unwrap(),
            None => t,
        };
        let attention_factors = dropout.factors(batch * HEADS * seq * seq, rates.attention);
        let scale = 1.0 / ((hidden / HEADS) as f64).sqrt();
        let mut query = ops::linear(x, &layer.query.weight, &layer.query.bias).unwrap();
        let key = ops::linear(x, &layer.key.weight, &layer.key.bias).unwrap();
        let value = ops::linear(x, &layer.value.weight, &layer.value.bias).unwrap();
        let mut score_scale = scale;
        if shape.family == Family::DistilBert {
            query = (query * scale).unwrap();
            score_scale = 1.0;
        }
        let mask = Tensor::from_slice(mask, (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let attended = primitive_attention(
            (&query, &key, &value),
            HEADS,
            &mask,
            score_scale,
            attention_factors.as_deref(),
        );
        let projected = ops::linear(
            &attended,
            &layer.attention_output.weight,
            &layer.attention_output.bias,
        )
        .unwrap();
        let projected = drop(projected, dropout.factors(x.elem_count(), rates.hidden));
        let norm = &layer.attention_norm;
        let h = ops::layer_norm(&(projected + x).unwrap(), &norm.weight, &norm.bias, 1e-12);
        let h = h.unwrap();
        let inner = ops::linear(&h, &layer.intermediate.weight, &layer.intermediate.bias);
        let inner = ops::activation(shape.activation, &inner.unwrap()).unwrap();
        let out = ops::linear(&inner, &layer.output.weight, &layer.output.bias).unwrap();
        let out = drop(out, dropout.factors(x.elem_count(), rates.hidden));
        let norm = &layer.output_norm;
        ops::layer_norm(&(out + h).unwrap(), &norm.weight, &norm.bias, 1e-12).unwrap()
    }

    fn parameters(layer: &Layer) -> Vec<&Tensor> {
        let mut all = Vec::new();
        for dense in [
            &layer.query,
            &layer.key,
            &layer.value,
            &layer.attention_output,
            &layer.intermediate,
            &layer.output,
        ] {
            all.extend([&dense.weight, &dense.bias]);
        }
        for norm in [&layer.attention_norm, &layer.output_norm] {
            all.extend([&norm.weight, &norm.bias]);
        }
        all
    }

    /// max |a − b| over max(1, max |b|), failing on a value that is not finite.
    fn relative_gap(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let gap = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let gap = gap.to_scalar::<f32>().unwrap() / scale.max(1.0);
        assert!(gap.is_finite() && scale.is_finite());
        gap
    }

    #[test]
    fn the_fused_layer_has_the_stepwise_layers_outputs_and_gradients() {
        let (batch, seq) = (2, 5);
        // The second sequence has two padding positions.
        let mask: Vec<f32> = (0..batch * seq)
            .map(|i| if i >= seq + 3 { f32::MIN } else { 0.0 })
            .collect();
        let rates = DropoutRates {
            hidden: 0.2,
            attention: 0.3,
            classifier: 0.0,
        };
        let cases = [
            (Family::Bert, Activation::Gelu),
            (Family::Bert, Activation::GeluNew),
            (Family::Bert, Activation::Relu),
            (Family::Bert, Activation::Silu),
            (Family::Bert, Activation::Tanh),
            (Family::DistilBert, Activation::Gelu),
        ];
        for (case, (family, activation)) in cases.into_iter().enumerate() {
            let shape = EncoderShape {
                family,
                vocab: 1,
                hidden: HIDDEN,
                layers: 1,
                heads: HEADS,
                intermediate: INTERMEDIATE,
                positions: seq,
                token_types: None,
                activation,
                eps: 1e-12,
                pad_token_id: 0,
                initializer_range: 0.02,
                prefix: "bert",
            };
            let layer = layer(10 * case as u64);
            let x = random(&[batch, seq, HIDDEN], 7);
            let weights = random(&[batch, seq, HIDDEN], 8);
            let dropout = || Dropout::seeded(rand::rngs::StdRng::seed_from_u64(case as u64));
            let fused = layer.forward(&x, &mask, &shape, rates, &dropout()).unwrap();
            let reference = stepwise(&layer, &x, &mask, &shape, rates, &dropout());
            let what = format!("{family:?} with {activation:?}");
            assert!(
                relative_gap(&fused, &reference) < 1e-5,
                "{what}: outputs differ"
            );

            let objective = |out: &Tensor| out.mul(weights.as_tensor()).unwrap().sum_all().unwrap();
            let mut fused_store = objective(&fused).backward().unwrap();
            layer.gradients.move_into(&mut fused_store).unwrap();
            assert!(!layer.gradients.discard(), "{what}: gradients left behind");
            let reference_store = objective(&reference).backward().unwrap();
            let mut compared = vec![x.as_tensor()];
            compared.extend(parameters(&layer));
            for (i, tensor) in compared.into_iter().enumerate() {
                let (a, b) = (fused_store.get(tensor), reference_store.get(tensor));
                let (Some(a), Some(b)) = (a, b) else {
                    panic!("{what}: tensor {i} got no gradient");
                };
                let gap = relative_gap(a, b);
                assert!(gap < 1e-5, "{what}: gradient {i} differs by {gap:e}");
            }
        }
    }
}
