//! Fine-tuning: the BERT family (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT) trained
//! for sequence and token classification, sentence embeddings and cross-encoder reranking,
//! as transformers' `Trainer` and sentence-transformers train them.
//!
//! The floor above the models: it reads their checkpoints and config, and builds its own
//! differentiable graph (the inference models' fused kernels have no backward pass).
//! - [`TrainableModel`]: the encoder and a task head over [`Parameters`] that train;
//! - [`losses`]: the heads' and sentence-transformers' losses;
//! - [`optimizer`]: gradient accumulation and clipping, AdamW and the linear schedule;
//! - [`data`]: datasets in the Hub's column names, from JSON Lines or CSV;
//! - [`Trainer`]: epochs, evaluation ([`metrics`]), checkpoints, early stopping, resume.

mod collate;
pub mod data;
mod encoder;
mod evaluation;
mod layer;
pub mod losses;
pub mod metrics;
mod model;
mod ops;
pub mod optimizer;
mod parameters;
mod save;
mod trainer;

pub use collate::Dataset;
pub use encoder::Dropout;
pub use evaluation::Evaluation;
pub use losses::EmbeddingLoss;
pub use model::{Problem, TrainableModel, TrainedPart, TrainingBatch, TrainingTask};
pub use optimizer::{AdamW, AdamWSettings, Gradients, LinearSchedule};
pub use parameters::{Parameter, Parameters};
pub use trainer::{
    checkpoint_folder, EpochRecord, Progress, Trainer, TrainerState, TrainingSettings,
};
