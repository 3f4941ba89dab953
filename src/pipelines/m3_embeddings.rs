//! BGE-M3's three outputs from one forward pass, as FlagEmbedding's `BGEM3FlagModel.encode`
//! gives them: the dense embedding (the `[CLS]` vector), the lexical weights (a sparse vector:
//! each token id's largest weight, special tokens left out) and the ColBERT vectors (one per
//! token after `[CLS]`); dense and ColBERT vectors normalised unless asked not to be.
//! FlagEmbedding 1.4.2 (<https://pypi.org/project/FlagEmbedding/1.4.2/>),
//! `FlagEmbedding/inference/embedder/encoder_only/m3.py`: `encode_single_device`, with its
//! `_process_token_weights` and `_process_colbert_vecs`.

use std::collections::BTreeMap;

use candle_core::{DType, IndexOp};
use serde::Serialize;
use tokenizers::Encoding;

use crate::error::Result;
use crate::models::auto::AutoModel;
use crate::models::bge_m3::BgeM3Heads;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::embeddings::l2_normalize_row;
use crate::pipelines::sparse_embeddings::SparseValue;
use crate::pipelines::{
    encode_all, BatchOptions, Pipeline, PipelineBase, Text, Truncation, TruncationOptions,
    DEFAULT_BATCH_SIZE,
};

/// `BGEM3FlagModel.encode`'s default `max_length`: texts are cut there, or at the model's
/// limit when that is less.
const M3_MAX_LENGTH: usize = 8192;

/// Settings of one call, with `BGEM3FlagModel`'s defaults: the dense embedding only,
/// normalised.
#[derive(Debug, Clone)]
pub struct M3Options {
    /// `return_dense`.
    pub dense: bool,
    /// `return_sparse`: the lexical weights.
    pub sparse: bool,
    /// `return_colbert_vecs`.
    pub colbert: bool,
    /// Scale dense and ColBERT vectors to unit length (`normalize_embeddings`).
    pub normalize_embeddings: bool,
    /// Cut texts at `max_length` tokens (`None`: 8192, or the model's limit when less).
    pub truncation: Truncation,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl Default for M3Options {
    fn default() -> Self {
        Self {
            dense: true,
            sparse: false,
            colbert: false,
            normalize_embeddings: true,
            truncation: Truncation::ON,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

impl M3Options {
    /// Return the dense embedding or not.
    pub fn with_dense(mut self, dense: bool) -> Self {
        self.dense = dense;
        self
    }

    /// Return the lexical weights or not.
    pub fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// Return the ColBERT vectors or not.
    pub fn with_colbert(mut self, colbert: bool) -> Self {
        self.colbert = colbert;
        self
    }

    /// Normalise dense and ColBERT vectors or not.
    pub fn with_normalize_embeddings(mut self, normalize: bool) -> Self {
        self.normalize_embeddings = normalize;
        self
    }
}

impl TruncationOptions for M3Options {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for M3Options {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// What BGE-M3 gives for one text: each output the options asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct M3Embedding {
    /// `dense_vecs`: the `[CLS]` vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<Vec<f32>>,
    /// `lexical_weights`: each token id's largest weight where it is above 0, without the
    /// `cls`, `eos`, `pad` and `unk` tokens; sorted by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<Vec<SparseValue>>,
    /// `colbert_vecs`: a vector for each token after `[CLS]`, the closing `</s>` included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert: Option<Vec<Vec<f32>>>,
}

/// BGE-M3: an XLM-RoBERTa encoder with FlagEmbedding's sparse and ColBERT heads.
#[derive(Debug, Clone)]
pub struct M3EmbeddingsPipeline {
    base: PipelineBase<AutoModel>,
    heads: BgeM3Heads,
    /// The tokens the lexical weights leave out.
    unused_tokens: Vec<u32>,
    max_length: usize,
}

impl M3EmbeddingsPipeline {
    /// Load the encoder and its heads (`sparse_linear.pt`, `colbert_linear.pt`) from a Hub id
    /// or folder.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        let base = PipelineBase::load(&pretrained, options)?;
        let hidden = base.config().hidden_size();
        let heads = BgeM3Heads::load(pretrained.source(), hidden, &options.device)?;
        Ok(Self::from_parts(base, heads))
    }

    /// Wrap an encoder and heads already loaded.
    pub fn from_parts(base: PipelineBase<AutoModel>, heads: BgeM3Heads) -> Self {
        let tokenizer = base.tokenizer();
        // `_process_token_weights`: the ids of the special tokens the tokenizer names.
        let unused_tokens = [
            tokenizer.cls_id(),
            tokenizer.eos_id(),
            tokenizer.pad_id(),
            tokenizer.unk_id(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let max_length = base.max_input_length().min(M3_MAX_LENGTH);
        Self {
            base,
            heads,
            unused_tokens,
            max_length,
        }
    }

    /// Preprocess: each text tokenized, cut at the maximum length.
    pub fn encode(&self, texts: &[&str], options: &M3Options) -> Result<Vec<Encoding>> {
        let truncation = options.truncation.or_length(self.max_length);
        encode_all(
            self.base.tokenizer(),
            texts.iter().copied(),
            &truncation.encode_options(),
        )
    }

    /// Forward `batch_size` encodings at a time, and postprocess each row into the outputs
    /// the options ask for.
    pub fn embeddings(
        &self,
        encodings: &[Encoding],
        options: &M3Options,
    ) -> Result<Vec<M3Embedding>> {
        self.base
            .forward_in_buckets(encodings, options.batch_size, |indices, input| {
                let hidden = self.base.model().forward(&input)?.last_hidden_state;
                let hidden = hidden.to_dtype(DType::F32)?;
                let dense = match options.dense {
                    true => Some(hidden.i((.., 0))?.to_vec2::<f32>()?),
                    false => None,
                };
                let weights = match options.sparse {
                    true => Some(self.heads.token_weights(&hidden)?.to_vec2::<f32>()?),
                    false => None,
                };
                let colbert = match options.colbert {
                    true => Some(self.heads.colbert_vectors(&hidden)?.to_vec3::<f32>()?),
                    false => None,
                };
                Ok(indices
                    .iter()
                    .enumerate()
                    .map(|(row, &index)| {
                        let encoding = &encodings[index];
                        M3Embedding {
                            dense: dense
                                .as_ref()
                                .map(|d| self.normalized(d[row].clone(), options)),
                            sparse: weights
                                .as_ref()
                                .map(|w| self.lexical_weights(&w[row], encoding.get_ids())),
                            colbert: colbert.as_ref().map(|c| {
                                // `_process_colbert_vecs`: the first `len − 1` vectors after
                                // `[CLS]` are the real tokens' (`</s>` included), then padding.
                                c[row][..encoding.len().saturating_sub(1)]
                                    .iter()
                                    .map(|v| self.normalized(v.clone(), options))
                                    .collect()
                            }),
                        }
                    })
                    .collect())
            })
    }

    fn normalized(&self, mut vector: Vec<f32>, options: &M3Options) -> Vec<f32> {
        if options.normalize_embeddings {
            l2_normalize_row(&mut vector);
        }
        vector
    }

    /// Each id's largest weight above 0 over the text's tokens, the unused ones left out.
    fn lexical_weights(&self, weights: &[f32], ids: &[u32]) -> Vec<SparseValue> {
        let mut largest: BTreeMap<u32, f32> = BTreeMap::new();
        for (&weight, &id) in weights.iter().zip(ids) {
            if weight > 0.0 && !self.unused_tokens.contains(&id) {
                let entry = largest.entry(id).or_insert(0.0);
                *entry = entry.max(weight);
            }
        }
        largest
            .into_iter()
            .map(|(id, value)| SparseValue {
                index: id as usize,
                value,
            })
            .collect()
    }
}

impl Pipeline for M3EmbeddingsPipeline {
    type Kind = Text;
    type Options = M3Options;
    /// The outputs asked for, for one text.
    type Output = M3Embedding;
    type Model = AutoModel;

    fn run_inputs(&self, texts: &[&str], options: &M3Options) -> Result<Vec<M3Embedding>> {
        let encodings = self.encode(texts, options)?;
        self.embeddings(&encodings, options)
    }

    fn base(&self) -> &PipelineBase<AutoModel> {
        &self.base
    }
}
