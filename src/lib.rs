//! # ferroformers
//!
//! Transformer inference in pure Rust, on [candle](https://github.com/huggingface/candle)
//! tensors: BERT and its task heads, loaded from the Hugging Face Hub or a local folder the way
//! transformers' `from_pretrained` loads them, with outputs that match PyTorch.
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
//! println!("{:?}", output.last_hidden_state.shape());
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod error;
pub mod hub;
pub mod layers;
pub mod models;
pub mod pooling;
pub mod pretrained;
pub mod tokenizer;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use config::{Labels, ModelConfig};
pub use error::{Error, Result};
pub use hub::{HubOptions, ModelSource};
pub use models::bert::{
    BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel, BertOutput,
};
pub use models::{ModelInput, QuestionAnsweringOutput};
pub use pooling::{l2_normalize, Pooling};
pub use pretrained::{FromPretrained, LoadOptions, Pretrained};
pub use tokenizer::{EncodeOptions, EncodedBatch, PaddingSide, TextInput, Tokenizer};
