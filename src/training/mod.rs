//! Fine-tuning: the floor that trains the BERT-family models (BERT, RoBERTa, DistilBERT, MPNet,
//! ModernBERT) on a task's dataset, as transformers' `Trainer` and sentence-transformers'
//! `fit` do.
//!
//! [`data`] reads the datasets (JSON Lines or CSV, in the column names of the Hub's datasets)
//! and orders them per epoch; [`metrics`] scores the predictions as `evaluate`, scikit-learn,
//! SciPy and seqeval score them.

pub mod data;
pub mod metrics;
