//! Semantic search with all-MiniLM-L6-v2: embed a few sentences and a query, rank by cosine.
//!
//!     cargo run --example semantic_search -- "How do I cook pasta?"
//!
//! The model is fetched from the Hugging Face Hub, or read from its cache (see README.md for
//! a machine without Hub access). Pooling (mean) and normalisation come from the model's
//! sentence-transformers files.

use ferroformers::pipelines::{cosine_similarity, EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
use ferroformers::LoadOptions;

const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

const DOCUMENTS: &[&str] = &[
    "Boil the spaghetti in salted water for nine minutes.",
    "The stock market fell sharply after the announcement.",
    "A rust-coloured fox jumped over the sleeping dog.",
    "Rust's borrow checker prevents data races at compile time.",
    "Preheat the oven and bake the bread for forty minutes.",
    "The football match ended in a two-all draw.",
];

fn main() -> ferroformers::Result<()> {
    let query = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "How do I cook pasta?".to_string());
    let pipeline = EmbeddingsPipeline::from_pretrained(MODEL_ID, &LoadOptions::default())?;
    let options = EmbeddingsOptions::default();
    let query_embedding = pipeline.run_one(&query, &options)?;
    let documents = pipeline.run(DOCUMENTS, &options)?;

    let mut ranked: Vec<(f32, &str)> = documents
        .iter()
        .zip(DOCUMENTS)
        .map(|(doc, text)| (cosine_similarity(&query_embedding, doc), *text))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));

    println!("Query: {query}\n");
    for (rank, (score, text)) in ranked.iter().enumerate() {
        println!("{}. {score:.4}  {text}", rank + 1);
    }
    Ok(())
}
