//! # ferroformers
//!
//! Transformer inference in pure Rust, on [candle](https://github.com/huggingface/candle)
//! tensors: BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, MPNet and GPT-2 with their task
//! heads, loaded from the Hugging Face Hub or a local folder the way transformers'
//! `from_pretrained` loads them, with outputs that match PyTorch.
//!
//! Most programs use a [pipeline](pipelines): every one is loaded with `from_pretrained` and
//! called the same way, [`Pipeline::run`] on any list of inputs (or
//! [`run_one`](pipelines::Pipeline::run_one)) with an options struct whose `Default` is
//! transformers' defaults.
//!
//! ```no_run
//! use ferroformers::pipelines::{EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
//! use ferroformers::LoadOptions;
//!
//! # fn main() -> ferroformers::Result<()> {
//! let model = "sentence-transformers/all-MiniLM-L6-v2";
//! let pipeline = EmbeddingsPipeline::from_pretrained(model, &LoadOptions::default())?;
//! let embeddings = pipeline.run(["Hello world", "Rust is fast"], &EmbeddingsOptions::default())?;
//! println!("{} vectors of {} floats", embeddings.len(), embeddings[0].len());
//! # Ok(())
//! # }
//! ```
//!
//! [`pipeline()`] picks the task at run time (transformers' task names), [`generation`]
//! streams tokens from GPT-2 with finish reasons and log-probabilities, and the model classes
//! ([`BertModel`], [`Gpt2LMHeadModel`], the [`AutoModel`] enums, ...) give the raw tensors:
//!
//! ```no_run
//! use ferroformers::{BertModel, EncodeOptions, FromPretrained, LoadOptions, Pretrained};
//!
//! # fn main() -> ferroformers::Result<()> {
//! let options = LoadOptions::default();
//! let pretrained = Pretrained::open("sentence-transformers/all-MiniLM-L6-v2", &options.hub)?;
//! let tokenizer = pretrained.tokenizer()?;
//! let model = BertModel::from_pretrained("sentence-transformers/all-MiniLM-L6-v2", &options)?;
//! let batch = tokenizer.encode_batch(["Hello world", "Rust is fast"], &EncodeOptions::default())?;
//! let output = model.forward(&batch.to_input(&options.device)?)?;
//! println!("{:?}", output.last_hidden_state.shape()); // (batch, seq, hidden)
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod generation;
#[doc(hidden)]
pub mod kernels;
pub mod loading;
pub mod models;
pub mod pipelines;
pub mod runtime;
pub mod tokenizer;
pub mod training;

pub use candle_core::{DType, Device, Tensor};
pub use error::{Error, Result};
pub use loading::hub::{HubOptions, ModelSource};
pub use loading::upload::{push_folder, CommitInfo, RepoKind, UploadOptions};
pub use models::auto::{
    AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification, AutoModelForTextRanking, AutoModelForTokenClassification,
};
pub use models::bert::{
    BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel,
};
pub use models::cache::{DecoderCache, KvCache};
pub use models::config::{Labels, ModelConfig};
pub use models::distilbert::{
    DistilBertConfig, DistilBertForMaskedLM, DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification, DistilBertForTokenClassification, DistilBertModel,
};
pub use models::gemma3::{Gemma3TextConfig, Gemma3TextModel};
pub use models::gguf::{GgufWritten, GGUF_OUTTYPES};
pub use models::gpt2::{Gpt2Config, Gpt2ForSequenceClassification, Gpt2LMHeadModel, Gpt2Model};
pub use models::gte::{
    GteConfig, GteForMaskedLM, GteForSequenceClassification, GteForTokenClassification, GteModel,
};
pub use models::jina_bert::{JinaBertConfig, JinaBertModel};
pub use models::llama::{LlamaConfig, LlamaForCausalLM, LlamaModel};
pub use models::modernbert::{
    ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertModel,
};
pub use models::mpnet::{
    MpNetConfig, MpNetForMaskedLM, MpNetForQuestionAnswering, MpNetForSequenceClassification,
    MpNetForTokenClassification, MpNetModel,
};
pub use models::nomic_bert::{
    NomicBertConfig, NomicBertForMaskedLM, NomicBertForSequenceClassification,
    NomicBertForTokenClassification, NomicBertModel,
};
pub use models::pooling::{l2_normalize, Pooling, SpladeActivation, SpladePooling, SpladeStrategy};
pub use models::pretrained::{FromPretrained, LoadOptions, Pretrained};
pub use models::roberta::{
    CamembertForMaskedLM, CamembertForQuestionAnswering, CamembertForSequenceClassification,
    CamembertForTokenClassification, CamembertModel, XlmRobertaForMaskedLM,
    XlmRobertaForQuestionAnswering, XlmRobertaForSequenceClassification,
    XlmRobertaForTokenClassification, XlmRobertaModel,
};
pub use models::roberta::{
    RobertaConfig, RobertaForMaskedLM, RobertaForQuestionAnswering,
    RobertaForSequenceClassification, RobertaForTokenClassification, RobertaModel,
};
pub use models::weight_type::WeightType;
pub use models::weights::ModelWeights;
pub use models::{EncoderOutput, QuestionAnsweringOutput};
pub use pipelines::{pipeline, AnyPipeline, Pipeline, Task};
pub use runtime::threads::set_num_threads;
pub use tokenizer::{EncodeOptions, EncodedBatch, ModelInput, PaddingSide, TextInput, Tokenizer};

// The README's Rust blocks are compiled (and the ones without `no_run` run) by
// `cargo test --doc`, so the README cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
