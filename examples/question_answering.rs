//! Extractive question answering with transformers' default model for the task.
//!
//!     cargo run --release --example question_answering -- distilbert-base-cased-distilled-squad

use ferroformers::pipelines::{Pipeline, QuestionAnsweringOptions, QuestionAnsweringPipeline};
use ferroformers::LoadOptions;

fn main() -> ferroformers::Result<()> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "distilbert-base-cased-distilled-squad".to_string());
    let context = "ferroformers is a transformer inference library written in Rust. \
                   It runs BERT, RoBERTa, DistilBERT and GPT-2 on candle tensors.";
    let question = "Which language is ferroformers written in?";
    let pipeline = QuestionAnsweringPipeline::from_pretrained(&model, &LoadOptions::default())?;
    let options = QuestionAnsweringOptions::default().with_top_k(3);
    for answer in pipeline.run_one((question, context), &options)? {
        println!(
            "{:.4}  {:>3}..{:<3} {}",
            answer.score, answer.start, answer.end, answer.answer
        );
    }
    Ok(())
}
