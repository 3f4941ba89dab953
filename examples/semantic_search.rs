//! Semantic search with all-MiniLM-L6-v2: embed a few sentences and a query, rank by cosine.
//!
//!     cargo run --example semantic_search -- "How do I cook pasta?"
//!
//! The model is fetched from the Hugging Face Hub, or read from its cache (see README.md for
//! a machine without Hub access).

use ferroformers::{
    l2_normalize, BertModel, EncodeOptions, FromPretrained, LoadOptions, Pooling, Pretrained,
};

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
    let options = LoadOptions::default();
    let pretrained = Pretrained::open(MODEL_ID, &options.hub)?;
    let tokenizer = pretrained.tokenizer()?;
    let model = BertModel::from_pretrained(MODEL_ID, &options)?;

    // The query first, then the documents: one padded batch.
    let texts: Vec<&str> = std::iter::once(query.as_str())
        .chain(DOCUMENTS.iter().copied())
        .collect();
    let encode = EncodeOptions {
        truncation: true,
        max_length: Some(256), // all-MiniLM-L6-v2's max_seq_length in sentence-transformers
        ..EncodeOptions::default()
    };
    let input = tokenizer
        .encode_batch(texts, &encode)?
        .to_input(&options.device)?;
    let hidden = model.forward(&input)?.last_hidden_state;
    let mask = input
        .attention_mask
        .as_ref()
        .expect("a tokenized batch has a mask");
    let embeddings: Vec<Vec<f32>> = l2_normalize(&Pooling::Mean.pool(&hidden, mask)?)?.to_vec2()?;

    // Unit vectors: the dot product is the cosine similarity.
    let (query_embedding, documents) = embeddings.split_first().expect("the query is embedded");
    let mut ranked: Vec<(f32, &str)> = documents
        .iter()
        .zip(DOCUMENTS)
        .map(|(doc, text)| {
            (
                query_embedding.iter().zip(doc).map(|(a, b)| a * b).sum(),
                *text,
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));

    println!("Query: {query}\n");
    for (rank, (score, text)) in ranked.iter().enumerate() {
        println!("{}. {score:.4}  {text}", rank + 1);
    }
    Ok(())
}
