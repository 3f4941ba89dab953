//! Chat with DialoGPT (or any GPT-2 model with a chat template): type a line, get a reply; an
//! empty line or end of input quits.
//!
//!     cargo run --release --example chat -- microsoft/DialoGPT-small

use std::io::{BufRead, Write};
use std::sync::Arc;

use ferroformers::pipelines::{Conversation, TextGenerationPipeline};
use ferroformers::LoadOptions;

fn main() -> ferroformers::Result<()> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "microsoft/DialoGPT-small".to_string());
    let pipeline = TextGenerationPipeline::from_pretrained(&model, &LoadOptions::default())?;
    let config = pipeline.generation_config().clone().with_max_new_tokens(60);
    let mut conversation = Conversation::new(Arc::new(pipeline));
    let stdin = std::io::stdin();
    loop {
        print!("you> ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| ferroformers::Error::InvalidInput(e.to_string()))?;
        if read == 0 || line.trim().is_empty() {
            break;
        }
        println!(
            "bot> {}",
            conversation.respond(line.trim(), &config)?.trim()
        );
    }
    Ok(())
}
