//! The library's log events, captured by a global subscriber. A test binary of its own with a
//! single test: tracing caches each event's interest when it is first reached, so a
//! subscriber set for one thread while other tests run can miss events; a global one set
//! before anything runs sees them all, kernel threads' included.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use ferroformers::kernels::isa::Isa;
use ferroformers::pipelines::{EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
use ferroformers::{HubOptions, LoadOptions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn cache_hits_the_mean_pooling_fallback_and_the_instruction_set_are_logged() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish(),
    )
    .unwrap();

    // A Hub cache as huggingface_hub lays it out, holding a BERT with no sentence-transformers
    // files, read offline.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--bert");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(fixture("bert/base")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true)
        .with_progress(false);
    let pipeline =
        EmbeddingsPipeline::from_pretrained("tiny/bert", &LoadOptions::default().with_hub(hub))
            .unwrap();
    let embedding = pipeline
        .run_one(
            "Paris is the capital of France.",
            &EmbeddingsOptions::default(),
        )
        .unwrap();
    assert!(embedding.iter().all(|x| x.is_finite()));

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines =
        |needle: &str| -> Vec<&str> { log.lines().filter(|l| l.contains(needle)).collect() };

    let hits = lines("cache hit");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let quoted = format!("file=\"{file}\"");
        assert!(
            hits.iter()
                .any(|l| l.contains(&quoted) && l.contains("tiny/bert") && l.contains(COMMIT)),
            "no cache hit logged for {file}:\n{log}"
        );
    }
    assert!(
        lines("download").is_empty(),
        "offline, nothing downloads:\n{log}"
    );

    let fallback = lines("mean pooling");
    assert_eq!(fallback.len(), 1, "{log}");
    assert!(
        fallback[0].contains("WARN") && fallback[0].contains("tiny/bert"),
        "{log}"
    );

    let isa = lines("instruction set for the kernels");
    assert_eq!(
        isa.len(),
        1,
        "logged once, when the kernels first ask:\n{log}"
    );
    let expected = format!("isa=\"{}\"", Isa::best().name());
    assert!(isa[0].contains(&expected), "{expected} in {}", isa[0]);
}
