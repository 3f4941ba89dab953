//! Text generation with GPT-2, streamed as it decodes.
//!
//!     cargo run --release --example generate -- gpt2 "Rust is a language that"
//!     cargo run --release --example generate -- gpt2 "Once upon a time" --sample 42
//!     cargo run --release --example generate -- gpt2 "The best way to learn" --beams 4
//!
//! The first argument is a Hub id or a local folder. Defaults come from the model's
//! generation_config.json; the flags override them.

use std::io::Write;

use ferroformers::generation::{GenerationConfig, Generator};
use ferroformers::{FromPretrained, Gpt2LMHeadModel, LoadOptions, Pretrained};

fn main() -> ferroformers::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model_id), Some(prompt)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: generate MODEL PROMPT [--sample SEED] [--beams N] [--max-new-tokens N] [--repetition-penalty R]"
        );
        std::process::exit(2);
    };
    let flag = |name: &str| -> Option<f64> {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1)?.parse().ok()
    };

    let options = LoadOptions::default();
    let pretrained = Pretrained::open(model_id, &options.hub)?;
    let tokenizer = pretrained.tokenizer()?;
    let model = Gpt2LMHeadModel::from_pretrained(model_id, &options)?;
    let mut config = GenerationConfig::from_source(pretrained.source())?
        .with_max_new_tokens(flag("--max-new-tokens").unwrap_or(50.0) as usize);
    if let Some(penalty) = flag("--repetition-penalty") {
        config.repetition_penalty = penalty as f32;
    }
    if let Some(seed) = flag("--sample") {
        config = GenerationConfig {
            top_p: 0.9,
            ..config.sampling(seed as u64)
        };
    }
    let generator = Generator::new(&model, &tokenizer);

    if let Some(beams) = flag("--beams") {
        // Beam search knows its best sequence only at the end: no streaming.
        config.num_beams = beams as usize;
        let best = generator.generate(&[prompt], &config)?.remove(0);
        println!("{}", best.text);
    } else {
        print!("{prompt}");
        let mut stream = generator.stream(prompt, &config)?;
        for token in stream.by_ref() {
            print!("{}", token?.text);
            let _ = std::io::stdout().flush();
        }
        let result = stream.generated()?;
        println!(
            "\n[{:?}: {} prompt tokens, {} new]",
            result.finish_reason, result.prompt_tokens, result.completion_tokens
        );
    }
    Ok(())
}
