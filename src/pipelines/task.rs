//! transformers' `pipeline(task, model)`: the task named at run time, one enum over the
//! pipelines.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/__init__.py>

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::loading::hub::{HubOptions, ModelSource};
use crate::models::config::ModelConfig;
use crate::models::pretrained::LoadOptions;
use crate::pipelines::sentence_transformers::pools_with_splade;
use crate::pipelines::{
    EmbeddingsPipeline, FillMaskPipeline, Pipeline, QuestionAnsweringPipeline, RerankPipeline,
    SparseEmbeddingsPipeline, TextClassificationPipeline, TextGenerationPipeline,
    TokenClassificationPipeline,
};
use crate::tokenizer::Tokenizer;

/// A pipeline task, named as transformers names it.
///
/// Exhaustive, so that a program that serves every task (the server) is told by the compiler
/// when a task is added: adding one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// `feature-extraction`, also `sentence-similarity` and `embeddings`: sentence embeddings.
    Embeddings,
    /// `fill-mask`.
    FillMask,
    /// `text-classification`, also `sentiment-analysis`.
    TextClassification,
    /// `token-classification`, also `ner`.
    TokenClassification,
    /// `question-answering`.
    QuestionAnswering,
    /// `text-generation`.
    TextGeneration,
    /// `text-ranking`, also `rerank`: a cross-encoder scores (query, document) pairs.
    Rerank,
    /// `sparse-embeddings`, also `splade`: SPLADE vectors of a masked LM (sentence-transformers'
    /// `SparseEncoder`; transformers has no such task, so the name is this library's).
    SparseEmbeddings,
}

impl Task {
    /// Every task, in the order errors list them.
    pub const ALL: [Task; 8] = [
        Task::Embeddings,
        Task::FillMask,
        Task::TextClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
        Task::TextGeneration,
        Task::Rerank,
        Task::SparseEmbeddings,
    ];

    /// transformers' name of the task.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Embeddings => "feature-extraction",
            Task::FillMask => "fill-mask",
            Task::TextClassification => "text-classification",
            Task::TokenClassification => "token-classification",
            Task::QuestionAnswering => "question-answering",
            Task::TextGeneration => "text-generation",
            Task::Rerank => "text-ranking",
            Task::SparseEmbeddings => "sparse-embeddings",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;

    /// transformers' task names and aliases (`sentiment-analysis`, `ner`,
    /// `sentence-similarity`).
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "feature-extraction" | "sentence-similarity" | "embeddings" => Task::Embeddings,
            "fill-mask" => Task::FillMask,
            "text-classification" | "sentiment-analysis" => Task::TextClassification,
            "token-classification" | "ner" => Task::TokenClassification,
            "question-answering" => Task::QuestionAnswering,
            "text-generation" => Task::TextGeneration,
            "text-ranking" | "rerank" => Task::Rerank,
            "sparse-embeddings" | "splade" => Task::SparseEmbeddings,
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown task `{other}`: use one of feature-extraction (or \
                     sentence-similarity), fill-mask, text-classification (or \
                     sentiment-analysis), token-classification (or ner), question-answering, \
                     text-generation, text-ranking (or rerank), sparse-embeddings (or splade)"
                )))
            }
        })
    }
}

impl Task {
    /// The task `model` (a Hub id, a local folder or a GGUF file, which generates) is for, and
    /// why, from its files: a
    /// sentence-transformers model (`modules.json`) embeds, sparsely when it pools with SPLADE
    /// (a `SparseEncoder`); otherwise the first of
    /// `config.json`'s `architectures` decides (`…ForSequenceClassification` classifies, or
    /// reranks with one label; `…ForMaskedLM` fills masks; `…ForTokenClassification` and
    /// `…ForQuestionAnswering` are theirs; `…LMHeadModel` and `…ForCausalLM` generate), and a
    /// base model (`…Model`, or no architecture) embeds. Other architectures are an error that
    /// asks for the task by name.
    ///
    /// Only `modules.json` and `config.json` are fetched; loading the pipeline reads
    /// `config.json` again (a local file by then), as every `from_pretrained` opens its model.
    pub fn detect(model: &str, hub: &HubOptions) -> Result<(Task, String)> {
        if crate::loading::gguf::is_gguf_file(std::path::Path::new(model)) {
            // llama.cpp's files are decoders; its server generates with them too.
            return Ok((Task::TextGeneration, "a GGUF file".to_string()));
        }
        let source = ModelSource::new(model, hub)?;
        if let Some(modules) = source.get("modules.json")? {
            if pools_with_splade(&modules)? {
                return Ok((
                    Task::SparseEmbeddings,
                    "a SparseEncoder with SpladePooling (modules.json)".to_string(),
                ));
            }
            return Ok((
                Task::Embeddings,
                "a sentence-transformers model (modules.json)".to_string(),
            ));
        }
        let path = source.require("config.json")?;
        // `architectures` is not part of the typed config: the models do not need it.
        #[derive(Deserialize)]
        struct Architectures {
            #[serde(default)]
            architectures: Vec<String>,
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let found: Architectures =
            serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
        let Some(architecture) = found.architectures.first() else {
            return Ok((
                Task::Embeddings,
                "config.json names no architecture: a base model".to_string(),
            ));
        };
        let because = format!("config.json's architecture {architecture}");
        let task = if architecture.ends_with("ForSequenceClassification") {
            // One output is a relevance score: a cross-encoder (sentence-transformers'
            // CrossEncoder makes one-label heads).
            match ModelConfig::from_json(&text, &path)?.num_labels() {
                1 => Task::Rerank,
                _ => Task::TextClassification,
            }
        } else if architecture.ends_with("ForMaskedLM") {
            Task::FillMask
        } else if architecture.ends_with("ForTokenClassification") {
            Task::TokenClassification
        } else if architecture.ends_with("ForQuestionAnswering") {
            Task::QuestionAnswering
        } else if architecture.ends_with("LMHeadModel") || architecture.ends_with("ForCausalLM") {
            Task::TextGeneration
        } else if architecture.ends_with("Model") {
            Task::Embeddings
        } else {
            return Err(Error::InvalidInput(format!(
                "cannot tell the task of {architecture} models: name it ({}) if the checkpoint \
                 is for one of those",
                Task::ALL.map(|task| task.name()).join(", ")
            )));
        };
        Ok((task, because))
    }
}

/// Any pipeline, for programs that pick the task at run time. Match on it, or take the one
/// you expect with `as_xxx` / `into_xxx`. Exhaustive, as [`Task`] is.
#[derive(Debug, Clone)]
pub enum AnyPipeline {
    /// `feature-extraction`.
    Embeddings(EmbeddingsPipeline),
    /// `fill-mask`.
    FillMask(FillMaskPipeline),
    /// `text-classification`.
    TextClassification(TextClassificationPipeline),
    /// `token-classification`.
    TokenClassification(TokenClassificationPipeline),
    /// `question-answering`.
    QuestionAnswering(QuestionAnsweringPipeline),
    /// `text-generation`.
    TextGeneration(TextGenerationPipeline),
    /// `text-ranking`.
    Rerank(RerankPipeline),
    /// `sparse-embeddings`.
    SparseEmbeddings(SparseEmbeddingsPipeline),
}

/// Load the pipeline of `task` for `model` (a Hub id or a local folder), as transformers'
/// `pipeline(task, model=...)` does. `task` is a [`Task`], or a name: transformers' names and
/// aliases (`"ner"`, `"sentiment-analysis"`, ...).
///
/// ```no_run
/// use ferroformers::pipelines::{pipeline, AnyPipeline, Pipeline, Task};
/// # fn main() -> ferroformers::Result<()> {
/// let task = std::env::args().nth(1).unwrap_or_else(|| "sentiment-analysis".into());
/// match pipeline(&task, "distilbert-base-uncased-finetuned-sst-2-english", &Default::default())? {
///     AnyPipeline::TextClassification(p) => println!("{:?}", p.run_one("Great!", &Default::default())?),
///     other => println!("{} has {} tokens in its vocabulary", other.task(), other.tokenizer().inner().get_vocab_size(true)),
/// }
/// let ner = pipeline(Task::TokenClassification, "dslim/bert-base-NER", &Default::default())?;
/// # Ok(()) }
/// ```
pub fn pipeline(task: impl IntoTask, model: &str, options: &LoadOptions) -> Result<AnyPipeline> {
    Ok(match task.into_task()? {
        Task::Embeddings => {
            AnyPipeline::Embeddings(EmbeddingsPipeline::from_pretrained(model, options)?)
        }
        Task::FillMask => AnyPipeline::FillMask(FillMaskPipeline::from_pretrained(model, options)?),
        Task::TextClassification => AnyPipeline::TextClassification(
            TextClassificationPipeline::from_pretrained(model, options)?,
        ),
        Task::TokenClassification => AnyPipeline::TokenClassification(
            TokenClassificationPipeline::from_pretrained(model, options)?,
        ),
        Task::QuestionAnswering => AnyPipeline::QuestionAnswering(
            QuestionAnsweringPipeline::from_pretrained(model, options)?,
        ),
        Task::TextGeneration => {
            AnyPipeline::TextGeneration(TextGenerationPipeline::from_pretrained(model, options)?)
        }
        Task::Rerank => AnyPipeline::Rerank(RerankPipeline::from_pretrained(model, options)?),
        Task::SparseEmbeddings => AnyPipeline::SparseEmbeddings(
            SparseEmbeddingsPipeline::from_pretrained(model, options)?,
        ),
    })
}

/// What [`pipeline`] takes as its task: a [`Task`], or its name as a string (parsed as
/// [`Task::from_str`] parses it), so that a task known at compile time cannot be misspelt and
/// one read at run time needs no parsing first.
pub trait IntoTask {
    /// The task, or an error listing the task names.
    fn into_task(self) -> Result<Task>;
}

impl IntoTask for Task {
    fn into_task(self) -> Result<Task> {
        Ok(self)
    }
}

impl IntoTask for &str {
    fn into_task(self) -> Result<Task> {
        self.parse()
    }
}

impl IntoTask for &String {
    fn into_task(self) -> Result<Task> {
        self.parse()
    }
}

impl IntoTask for String {
    fn into_task(self) -> Result<Task> {
        self.parse()
    }
}

macro_rules! accessors {
    ($($variant:ident: $type:ty, $as:ident, $into:ident;)*) => {
        $(
            #[doc = concat!("The pipeline if it is a `", stringify!($type), "`.")]
            pub fn $as(&self) -> Option<&$type> {
                match self {
                    AnyPipeline::$variant(pipeline) => Some(pipeline),
                    _ => None,
                }
            }

            #[doc = concat!("The `", stringify!($type), "`, or an error naming the task it is.")]
            pub fn $into(self) -> Result<$type> {
                match self {
                    AnyPipeline::$variant(pipeline) => Ok(pipeline),
                    other => Err(other.wrong_task(Task::$variant)),
                }
            }
        )*
    };
}

impl AnyPipeline {
    /// The task this pipeline runs.
    pub fn task(&self) -> Task {
        match self {
            AnyPipeline::Embeddings(_) => Task::Embeddings,
            AnyPipeline::FillMask(_) => Task::FillMask,
            AnyPipeline::TextClassification(_) => Task::TextClassification,
            AnyPipeline::TokenClassification(_) => Task::TokenClassification,
            AnyPipeline::QuestionAnswering(_) => Task::QuestionAnswering,
            AnyPipeline::TextGeneration(_) => Task::TextGeneration,
            AnyPipeline::Rerank(_) => Task::Rerank,
            AnyPipeline::SparseEmbeddings(_) => Task::SparseEmbeddings,
        }
    }

    /// The pipeline's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            AnyPipeline::Embeddings(p) => p.tokenizer(),
            AnyPipeline::FillMask(p) => p.tokenizer(),
            AnyPipeline::TextClassification(p) => p.tokenizer(),
            AnyPipeline::TokenClassification(p) => p.tokenizer(),
            AnyPipeline::QuestionAnswering(p) => p.tokenizer(),
            AnyPipeline::TextGeneration(p) => p.tokenizer(),
            AnyPipeline::Rerank(p) => p.tokenizer(),
            AnyPipeline::SparseEmbeddings(p) => p.tokenizer(),
        }
    }

    /// The model's `config.json`.
    pub fn config(&self) -> &ModelConfig {
        match self {
            AnyPipeline::Embeddings(p) => p.config(),
            AnyPipeline::FillMask(p) => p.config(),
            AnyPipeline::TextClassification(p) => p.config(),
            AnyPipeline::TokenClassification(p) => p.config(),
            AnyPipeline::QuestionAnswering(p) => p.config(),
            AnyPipeline::TextGeneration(p) => p.config(),
            AnyPipeline::Rerank(p) => p.config(),
            AnyPipeline::SparseEmbeddings(p) => p.config(),
        }
    }

    accessors! {
        Embeddings: EmbeddingsPipeline, as_embeddings, into_embeddings;
        FillMask: FillMaskPipeline, as_fill_mask, into_fill_mask;
        TextClassification: TextClassificationPipeline, as_text_classification, into_text_classification;
        TokenClassification: TokenClassificationPipeline, as_token_classification, into_token_classification;
        QuestionAnswering: QuestionAnsweringPipeline, as_question_answering, into_question_answering;
        TextGeneration: TextGenerationPipeline, as_text_generation, into_text_generation;
        Rerank: RerankPipeline, as_rerank, into_rerank;
        SparseEmbeddings: SparseEmbeddingsPipeline, as_sparse_embeddings, into_sparse_embeddings;
    }

    fn wrong_task(&self, wanted: Task) -> Error {
        Error::InvalidInput(format!(
            "this is a {} pipeline, not {wanted}: load it with the task `{wanted}`",
            self.task()
        ))
    }
}
