//! The encoder pipelines' commands: `embed`, `fill-mask`, `classify`, `ner` and `qa`.

use std::io::Write;

use clap::{Args, ValueEnum};
use ferroformers::pipelines::{
    AggregationStrategy, EmbeddingsOptions, EmbeddingsPipeline, FillMaskOptions, FillMaskPipeline,
    Pipeline, QuestionAnsweringOptions, QuestionAnsweringPipeline, SparseEmbeddingsOptions,
    SparseEmbeddingsPipeline, TextClassificationOptions, TextClassificationPipeline,
    TokenClassificationOptions, TokenClassificationPipeline, Truncation as TruncationSettings,
};
use ferroformers::{Pooling, Task};

use super::json_line;
use crate::args::{inputs, Batching, Texts, Truncation};
use crate::cli::Common;
use crate::error::{CliError, Result};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliPooling {
    /// Mean of the token embeddings.
    Mean,
    /// The first token's embedding.
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
    /// The last token's embedding (decoder embedders).
    LastToken,
    /// SPLADE: a masked LM's sparse vocabulary vectors, printed as their non-zero
    /// (index, value) entries (a SparseEncoder model gets it without asking).
    Splade,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliAggregation {
    /// One entity per token.
    None,
    /// Adjacent tokens of the same type form a group.
    Simple,
    /// Words take their first token's label.
    First,
    /// Words take the label of their tokens' average scores.
    Average,
    /// Words take their most confident token's label.
    Max,
}

/// The options of `embed` besides the model's.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Override the model's pooling.
    #[arg(long, value_enum)]
    pooling: Option<CliPooling>,
    /// Scale embeddings to unit length.
    #[arg(long)]
    normalize: bool,
    /// Cut texts at this many tokens (default: the model's max_seq_length).
    #[arg(long)]
    max_length: Option<usize>,
    #[command(flatten)]
    batching: Batching,
    /// One JSON array per line instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    texts: Texts,
}

/// The options of `fill-mask` besides the model's.
#[derive(Debug, Args)]
pub struct FillMaskArgs {
    /// Candidates per text.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[command(flatten)]
    truncation: Truncation,
    #[command(flatten)]
    batching: Batching,
    /// One JSON array of candidates per line.
    #[arg(long)]
    json: bool,
    /// Texts with one mask token each; `-` or none reads stdin, one per line.
    texts: Vec<String>,
}

/// The options of `classify` besides the model's.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Classes per input (all when absent).
    #[arg(long)]
    top_k: Option<usize>,
    #[command(flatten)]
    truncation: Truncation,
    #[command(flatten)]
    batching: Batching,
    /// One JSON array of classes per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    texts: Texts,
}

/// The options of `ner` besides the model's.
#[derive(Debug, Args)]
pub struct NerArgs {
    /// How token predictions become entities.
    #[arg(long, value_enum, default_value_t = CliAggregation::Simple)]
    aggregation: CliAggregation,
    /// Tokens per text, or per window with --stride (default: the model's maximum).
    #[arg(long)]
    max_length: Option<usize>,
    /// Run long texts in overlapping windows sharing this many tokens, instead of cutting
    /// them at --max-length.
    #[arg(long)]
    stride: Option<usize>,
    #[command(flatten)]
    batching: Batching,
    /// One JSON array of entities per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    texts: Texts,
}

/// The options of `qa` besides the model's.
#[derive(Debug, Args)]
pub struct QaArgs {
    /// The question.
    #[arg(long)]
    question: String,
    /// The text the answer is taken from.
    #[arg(long)]
    context: String,
    #[command(flatten)]
    batching: Batching,
    /// The answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `ferroformers embed`: one embedding per text, or its first values as a summary; SPLADE
/// vectors (`--pooling splade`, or a SparseEncoder model) as their non-zero entries.
pub fn embed(common: &Common, args: EmbedArgs, out: &mut impl Write) -> Result<()> {
    let load = common.load_options()?;
    // A model whose task cannot be told (an unknown architecture) still embeds densely, as
    // before: only a SparseEncoder's modules.json turns SPLADE on unasked.
    let sparse_encoder = matches!(
        Task::detect(common.model(), &load.hub),
        Ok((Task::SparseEmbeddings, _))
    );
    let pooling = match args.pooling {
        None if sparse_encoder => return embed_sparse(common, args, out),
        None => None,
        Some(CliPooling::Splade) => return embed_sparse(common, args, out),
        Some(CliPooling::Mean) => Some(Pooling::Mean),
        Some(CliPooling::Cls) => Some(Pooling::Cls),
        Some(CliPooling::Max) => Some(Pooling::Max),
        Some(CliPooling::LastToken) => Some(Pooling::LastToken),
    };
    let texts = args.texts.read()?;
    let pipeline = EmbeddingsPipeline::from_pretrained(common.model(), &load)?;
    let options = EmbeddingsOptions {
        pooling,
        normalize_embeddings: args.normalize,
        truncation: TruncationSettings {
            max_length: args.max_length,
            ..TruncationSettings::ON
        },
        batch_size: args.batching.batch_size,
        ..EmbeddingsOptions::default()
    };
    for (text, embedding) in texts.iter().zip(pipeline.run(&texts, &options)?) {
        if args.json {
            json_line(out, &embedding)?;
            continue;
        }
        let head: Vec<String> = embedding
            .iter()
            .take(6)
            .map(|x| format!("{x:.4}"))
            .collect();
        writeln!(
            out,
            "{text}\n  [{}, ...] ({} dimensions)",
            head.join(", "),
            embedding.len()
        )?;
    }
    Ok(())
}

/// `embed` of a SPLADE model: each text's non-zero entries, as JSON (`[{"index", "value"}, ...]`,
/// `/embed_sparse`'s shape) or as a summary of the largest.
fn embed_sparse(common: &Common, args: EmbedArgs, out: &mut impl Write) -> Result<()> {
    if args.normalize {
        return Err(CliError::Usage(
            "--normalize does not apply to SPLADE vectors".to_string(),
        ));
    }
    let texts = args.texts.read()?;
    let pipeline =
        SparseEmbeddingsPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = SparseEmbeddingsOptions {
        truncation: TruncationSettings {
            max_length: args.max_length,
            ..TruncationSettings::ON
        },
        batch_size: args.batching.batch_size,
        ..SparseEmbeddingsOptions::default()
    };
    for (text, entries) in texts.iter().zip(pipeline.run(&texts, &options)?) {
        if args.json {
            json_line(out, &entries)?;
            continue;
        }
        let mut largest = entries.clone();
        largest.sort_by(|a, b| b.value.total_cmp(&a.value));
        let head: Vec<String> = largest
            .iter()
            .take(6)
            .map(|entry| format!("{}: {:.4}", entry.index, entry.value))
            .collect();
        writeln!(
            out,
            "{text}\n  {{{}, ...}} ({} non-zero of {})",
            head.join(", "),
            entries.len(),
            pipeline.vocab_size()
        )?;
    }
    Ok(())
}

/// `ferroformers fill-mask`: the candidates for each text's mask.
pub fn fill_mask(common: &Common, args: FillMaskArgs, out: &mut impl Write) -> Result<()> {
    let texts = inputs(args.texts)?;
    let pipeline = FillMaskPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = FillMaskOptions {
        top_k: args.top_k,
        truncation: TruncationSettings {
            enabled: args.truncation.truncation,
            max_length: args.truncation.max_length,
        },
        batch_size: args.batching.batch_size,
        ..FillMaskOptions::default()
    };
    for predictions in pipeline.run(&texts, &options)? {
        if args.json {
            json_line(out, &predictions)?;
            continue;
        }
        for p in predictions {
            writeln!(
                out,
                "{:.4}  {:<16} {}",
                p.score,
                format!("{:?}", p.token_str),
                p.sequence
            )?;
        }
    }
    Ok(())
}

/// `ferroformers classify`: each text's classes with their scores.
pub fn classify(common: &Common, args: ClassifyArgs, out: &mut impl Write) -> Result<()> {
    let texts = args.texts.read()?;
    let pipeline =
        TextClassificationPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = TextClassificationOptions {
        top_k: args.top_k,
        truncation: TruncationSettings {
            enabled: args.truncation.truncation,
            max_length: args.truncation.max_length,
        },
        batch_size: args.batching.batch_size,
        ..TextClassificationOptions::default()
    };
    for (text, labels) in texts.iter().zip(pipeline.run(&texts, &options)?) {
        if args.json {
            json_line(out, &labels)?;
            continue;
        }
        let shown: Vec<String> = labels
            .iter()
            .map(|l| format!("{} {:.4}", l.label, l.score))
            .collect();
        writeln!(out, "{}\t{text}", shown.join(", "))?;
    }
    Ok(())
}

/// `ferroformers ner`: each text's entities.
pub fn ner(common: &Common, args: NerArgs, out: &mut impl Write) -> Result<()> {
    let texts = args.texts.read()?;
    let pipeline =
        TokenClassificationPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = TokenClassificationOptions {
        aggregation_strategy: match args.aggregation {
            CliAggregation::None => AggregationStrategy::None,
            CliAggregation::Simple => AggregationStrategy::Simple,
            CliAggregation::First => AggregationStrategy::First,
            CliAggregation::Average => AggregationStrategy::Average,
            CliAggregation::Max => AggregationStrategy::Max,
        },
        truncation: TruncationSettings {
            max_length: args.max_length,
            ..TruncationSettings::ON
        },
        stride: args.stride,
        batch_size: args.batching.batch_size,
        ..TokenClassificationOptions::default()
    };
    for entities in pipeline.run(&texts, &options)? {
        if args.json {
            json_line(out, &entities)?;
            continue;
        }
        for e in entities {
            let label = e.entity_group.or(e.entity).unwrap_or_default();
            writeln!(
                out,
                "{label:<8} {:.4}  {:>4}..{:<4} {}",
                e.score, e.start, e.end, e.word
            )?;
        }
    }
    Ok(())
}

/// `ferroformers qa`: the best answer to the question.
pub fn qa(common: &Common, args: QaArgs, out: &mut impl Write) -> Result<()> {
    let pipeline =
        QuestionAnsweringPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = QuestionAnsweringOptions {
        batch_size: args.batching.batch_size,
        ..QuestionAnsweringOptions::default()
    };
    let answers = pipeline.run_one((&args.question, &args.context), &options)?;
    let best = answers
        .first()
        .ok_or_else(|| CliError::Failed("the model found no answer".to_string()))?;
    if args.json {
        json_line(out, best)?;
    } else {
        writeln!(
            out,
            "{} (score {:.4}, characters {}..{})",
            best.answer, best.score, best.start, best.end
        )?;
    }
    Ok(())
}
