//! `save_pretrained`: a folder that transformers' `from_pretrained` and
//! sentence-transformers' `SentenceTransformer`/`CrossEncoder` load as they load their own.
//!
//! - `model.safetensors`: every parameter under transformers' name, f32 or bf16, with the
//!   `{"format": "pt"}` metadata transformers checks;
//! - `config.json`: the loaded config with the trained class in `architectures`, the labels
//!   (`id2label`, `label2id`), `problem_type` and `dtype`;
//! - the tokenizer's files, copied from the model it was loaded from;
//! - for an embedding model, sentence-transformers' modules (`modules.json`, `1_Pooling`,
//!   `2_Normalize`, `sentence_bert_config.json`); for a cross-encoder, its `activation_fn`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::DType;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::loading::hub::ModelSource;
use crate::loading::json::write_json;
use crate::models::pooling::Pooling;
use crate::training::model::{Problem, TrainableModel, TrainingTask};

/// The tokenizer files transformers' tokenizers save, copied when the source has them.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
];

/// The sentence-transformers version whose layout is written.
const SENTENCE_TRANSFORMERS_VERSION: &str = "5.1.2";

impl TrainableModel {
    /// Write the model to `folder` (created if missing), its weights as `dtype` (F32, or
    /// BF16 to halve the size), with the tokenizer files of the model it was loaded from.
    pub fn save_pretrained(&self, folder: &Path, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::InvalidInput(format!(
                "weights save as f32, bf16 or f16, not {dtype:?}"
            )));
        }
        std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        self.save_weights(&folder.join("model.safetensors"), dtype)?;
        write_json(&folder.join("config.json"), &self.saved_config(dtype))?;
        copy_tokenizer(self.source(), folder)?;
        if let TrainingTask::SentenceEmbeddings { pooling, .. } = self.task() {
            self.save_sentence_transformers_modules(folder, *pooling)?;
        }
        Ok(())
    }

    fn save_weights(&self, path: &Path, dtype: DType) -> Result<()> {
        let tensors = self
            .parameters()
            .tensors()
            .into_iter()
            .map(|(name, tensor)| Ok((name, tensor.to_dtype(dtype)?.contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| {
            Error::io(
                path,
                std::io::Error::other(format!("cannot write the weights: {e}")),
            )
        })
    }

    /// The loaded `config.json`, updated with what training decided.
    fn saved_config(&self, dtype: DType) -> Value {
        let mut config = self.config_json().clone();
        let Value::Object(fields) = &mut config else {
            return config;
        };
        let dtype_name = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        fields.insert("dtype".into(), json!(dtype_name));
        fields.remove("torch_dtype");
        let class = self.class_name();
        fields.insert("architectures".into(), json!([class]));
        let labels: Vec<String> = match self.task() {
            TrainingTask::SequenceClassification { labels, problem } => {
                fields.insert("problem_type".into(), json!(problem.name()));
                match problem {
                    Problem::Regression => vec!["LABEL_0".to_string()],
                    _ => labels.clone(),
                }
            }
            TrainingTask::TokenClassification { labels } => labels.clone(),
            TrainingTask::CrossEncoder => {
                fields.insert(
                    "sentence_transformers".into(),
                    json!({
                        "activation_fn": "torch.nn.modules.activation.Sigmoid",
                        "version": SENTENCE_TRANSFORMERS_VERSION,
                    }),
                );
                vec!["LABEL_0".to_string()]
            }
            TrainingTask::SentenceEmbeddings { .. } => return config,
        };
        let id2label: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(id, label)| (id.to_string(), json!(label)))
            .collect();
        let label2id: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(id, label)| (label.clone(), json!(id)))
            .collect();
        fields.insert("id2label".into(), Value::Object(id2label));
        fields.insert("label2id".into(), Value::Object(label2id));
        config
    }

    /// transformers' class for the model type and task (`BertForSequenceClassification`).
    fn class_name(&self) -> String {
        let model = match self.config_json().get("model_type").and_then(Value::as_str) {
            Some("roberta") => "Roberta",
            Some("xlm-roberta") => "XLMRoberta",
            Some("camembert") => "Camembert",
            Some("distilbert") => "DistilBert",
            _ => "Bert",
        };
        let head = match self.task() {
            TrainingTask::SequenceClassification { .. } | TrainingTask::CrossEncoder => {
                "ForSequenceClassification"
            }
            TrainingTask::TokenClassification { .. } => "ForTokenClassification",
            TrainingTask::SentenceEmbeddings { .. } => "Model",
        };
        format!("{model}{head}")
    }

    /// `modules.json` with the Transformer at the root, then Pooling and Normalize, as
    /// `SentenceTransformer.save` lays them out.
    fn save_sentence_transformers_modules(&self, folder: &Path, pooling: Pooling) -> Result<()> {
        let modules = json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]);
        write_json(&folder.join("modules.json"), &modules)?;
        let mode = |m: Pooling| pooling == m;
        let pooling_config = json!({
            "word_embedding_dimension": self.hidden_size(),
            "pooling_mode_cls_token": mode(Pooling::Cls),
            "pooling_mode_mean_tokens": mode(Pooling::Mean),
            "pooling_mode_max_tokens": mode(Pooling::Max),
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true,
        });
        let pooling_folder = folder.join("1_Pooling");
        std::fs::create_dir_all(&pooling_folder).map_err(|e| Error::io(&pooling_folder, e))?;
        write_json(&pooling_folder.join("config.json"), &pooling_config)?;
        let normalize = folder.join("2_Normalize");
        std::fs::create_dir_all(&normalize).map_err(|e| Error::io(&normalize, e))?;
        write_json(
            &folder.join("sentence_bert_config.json"),
            &json!({"max_seq_length": self.max_sequence_length(), "do_lower_case": false}),
        )?;
        write_json(
            &folder.join("config_sentence_transformers.json"),
            &json!({
                "__version__": {"sentence_transformers": SENTENCE_TRANSFORMERS_VERSION},
                "model_type": "SentenceTransformer",
                "prompts": {},
                "default_prompt_name": null,
                "similarity_fn_name": "cosine",
            }),
        )
    }
}

fn copy_tokenizer(source: &ModelSource, folder: &Path) -> Result<()> {
    for file in TOKENIZER_FILES {
        if let Some(path) = source.get(file)? {
            let target = folder.join(file);
            if path != target {
                std::fs::copy(&path, &target).map_err(|e| Error::io(&target, e))?;
            }
        }
    }
    Ok(())
}
