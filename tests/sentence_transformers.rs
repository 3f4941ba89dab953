//! EmbeddingsPipeline on sentence-transformers models with Dense modules and prompts, against
//! `SentenceTransformer.encode` (sentence-transformers 5.1.2) on fixtures made by
//! scripts/make_fixtures.py. Embeddings within 1e-4 (f32).

mod common;

use common::{assert_close_slices, assert_same_len, fixture};
use ferroformers::pipelines::{EmbeddingsOptions, EmbeddingsPipeline, Pipeline, Prompt};
use ferroformers::{Error, LoadOptions};
use serde_json::Value;

const F32_TOLERANCE: f32 = 1e-4;

fn reference(folder: &str) -> Value {
    let path = fixture(folder).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(folder: &std::path::Path) -> Result<EmbeddingsPipeline, Error> {
    EmbeddingsPipeline::from_pretrained(&folder.to_string_lossy(), &LoadOptions::default())
}

fn assert_embeddings(ours: &[Vec<f32>], theirs: &Value, what: &str) {
    let theirs: Vec<Vec<f32>> = serde_json::from_value(theirs.clone()).unwrap();
    assert_same_len(ours, &theirs, what);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_close_slices(a, b, F32_TOLERANCE, &format!("{what}: sentence {i}"));
    }
}

/// A copy of a fixture folder, to edit its files.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let folder = tempfile::tempdir().unwrap();
    copy(&fixture(name), folder.path());
    folder
}

fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

fn sentences(reference: &Value) -> Vec<String> {
    serde_json::from_value(reference["sentences"].clone()).unwrap()
}

#[test]
fn dense_modules_apply_in_order_after_the_pooling() {
    // Pooling(cls) -> Dense(16 -> 24, tanh; safetensors) -> Dense(24 -> 8, no bias, identity;
    // pytorch_model.bin) -> Normalize, LaBSE's layout with a second Dense.
    let name = "xlm-roberta/sentence-transformers-dense";
    let reference = reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline = load(&fixture(name)).unwrap();
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    assert_eq!(ours[0].len(), 8, "the last Dense gives 8 features");
    assert_embeddings(&ours, &reference["embeddings"], name);
}

/// A decoder as an embedder, in Qwen3-Embedding's layout: a Qwen3Model checkpoint with its
/// keys at the root, a tokenizer that appends <|endoftext|>, last-token pooling, Normalize and
/// an instruction prompt for queries; against `encode` with no prompt and with "query". Our
/// batches pad on the right where sentence-transformers padded this tokenizer on the left:
/// causal attention makes them equal, and each sentence alone gives its batch row.
#[test]
fn a_decoder_embeds_with_last_token_pooling_as_sentence_transformers_does() {
    let name = "qwen3/sentence-transformers";
    let reference = reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline = load(&fixture(name)).unwrap();
    assert_eq!(pipeline.pooling(), ferroformers::Pooling::LastToken);
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    assert_embeddings(&ours, &reference["embeddings"], name);
    let options = EmbeddingsOptions::default().with_prompt(Prompt::Named("query".to_string()));
    let queries = pipeline.run(&sentences, &options).unwrap();
    assert_embeddings(&queries, &reference["query"], "query prompt");
    for (i, sentence) in sentences.iter().enumerate() {
        let alone = pipeline
            .run(&[*sentence], &EmbeddingsOptions::default())
            .unwrap();
        assert_close_slices(&alone[0], &ours[i], 1e-5, &format!("sentence {i} alone"));
    }
}

/// `encode(truncate_dim=4)` on a model that ends with `Normalize`: its unit vectors cut to 4
/// values (no longer unit length), and with `normalize_embeddings` those 4 made unit length
/// again, as sentence-transformers truncates after the modules and normalises after that.
/// Against the fixture's full reference embeddings, cut and normalised here in f64.
#[test]
fn truncate_dim_cuts_after_the_modules_and_normalises_when_asked() {
    let name = "xlm-roberta/sentence-transformers-dense";
    let reference = reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let full: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let cut: Vec<Vec<f32>> = full.iter().map(|row| row[..4].to_vec()).collect();
    let unit: Vec<Vec<f32>> = cut
        .iter()
        .map(|row| {
            let norm = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            row.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
        })
        .collect();
    let pipeline = load(&fixture(name)).unwrap();
    let options = EmbeddingsOptions::default().with_truncate_dim(4);
    let ours = pipeline.run(&sentences, &options).unwrap();
    assert_embeddings(
        &ours,
        &serde_json::to_value(&cut).unwrap(),
        "truncate_dim 4",
    );
    let ours = pipeline
        .run(&sentences, &options.with_normalize_embeddings(true))
        .unwrap();
    assert_embeddings(
        &ours,
        &serde_json::to_value(&unit).unwrap(),
        "truncate_dim 4, normalised",
    );
    for dimensions in [0, 9] {
        let options = EmbeddingsOptions::default().with_truncate_dim(dimensions);
        let error = pipeline.run(&sentences, &options).unwrap_err();
        assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
        assert!(error.to_string().contains("truncate_dim"), "{error}");
    }
}

#[test]
fn prompts_are_chosen_as_sentence_transformers_chooses_them() {
    // prompts {query: "query: ", passage: "passage: "}, default_prompt_name "query"; mean
    // pooling over the prompt tokens too (include_prompt true), then without them.
    let name = "xlm-roberta/sentence-transformers-prompts";
    let reference = reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let calls = [
        ("default", Prompt::ModelDefault),
        ("prompt_name_passage", Prompt::Named("passage".to_string())),
        (
            "prompt_text",
            Prompt::Text("Represent this sentence: ".to_string()),
        ),
        ("empty_prompt", Prompt::Text(String::new())),
    ];
    let included = load(&fixture(name)).unwrap();
    let excluding = copy_fixture(name);
    edit_json(&excluding.path().join("1_Pooling/config.json"), |config| {
        config["include_prompt"] = Value::Bool(false);
    });
    let excluded = load(excluding.path()).unwrap();
    for (key, pipeline) in [("include_prompt", &included), ("exclude_prompt", &excluded)] {
        for (call, prompt) in &calls {
            let ours = pipeline
                .run(
                    &sentences,
                    &EmbeddingsOptions::default().with_prompt(prompt.clone()),
                )
                .unwrap();
            assert_embeddings(&ours, &reference[key][call], &format!("{key} {call}"));
        }
    }
    // The default options use the model's default prompt.
    assert_embeddings(
        &included
            .run(&sentences, &EmbeddingsOptions::default())
            .unwrap(),
        &reference["include_prompt"]["default"],
        "embed",
    );
    // The prompt changes the vectors, so the comparisons above could fail without it.
    let plain: Vec<Vec<f32>> =
        serde_json::from_value(reference["include_prompt"]["empty_prompt"].clone()).unwrap();
    let prompted: Vec<Vec<f32>> =
        serde_json::from_value(reference["include_prompt"]["default"].clone()).unwrap();
    assert!(
        common::checked_max_abs_diff(&plain[0], &prompted[0]).unwrap() > 1e-2,
        "fixture: the prompt must change the embedding"
    );
}

#[test]
fn an_unknown_prompt_name_is_an_error_listing_the_prompts() {
    let pipeline = load(&fixture("xlm-roberta/sentence-transformers-prompts")).unwrap();
    let error = pipeline
        .run_one(
            "a",
            &EmbeddingsOptions::default().with_prompt(Prompt::Named("search".to_string())),
        )
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("search") && message.contains("passage") && message.contains("query"),
        "{message}"
    );
}

#[test]
fn an_unsupported_module_is_an_error_naming_it() {
    let folder = copy_fixture("xlm-roberta/sentence-transformers-dense");
    edit_json(&folder.path().join("modules.json"), |modules| {
        modules.as_array_mut().unwrap().insert(
            3,
            serde_json::json!({"idx": 3, "name": "3", "path": "3_LayerNorm",
                               "type": "sentence_transformers.models.LayerNorm"}),
        );
    });
    let error = load(folder.path()).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("sentence_transformers.models.LayerNorm"),
        "{error}"
    );
}

#[test]
fn unsupported_pooling_modes_and_dense_activations_are_errors_naming_them() {
    let folder = copy_fixture("xlm-roberta/sentence-transformers-prompts");
    edit_json(&folder.path().join("1_Pooling/config.json"), |config| {
        config["pooling_mode_mean_tokens"] = Value::Bool(false);
        config["pooling_mode_weightedmean_tokens"] = Value::Bool(true);
    });
    let error = load(folder.path()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("pooling_mode_weightedmean_tokens"),
        "{error}"
    );

    let folder = copy_fixture("xlm-roberta/sentence-transformers-dense");
    edit_json(&folder.path().join("2_Dense/config.json"), |config| {
        config["activation_function"] = Value::from("torch.nn.modules.activation.Softplus");
    });
    let error = load(folder.path()).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(error.to_string().contains("Softplus"), "{error}");
}

/// `encode` against sentence-transformers, within 1e-5: the bar for each architecture,
/// tighter than the file's 1e-4 (measured 1e-7 or so on unit vectors of 32 values).
const ENCODE_TOLERANCE: f32 = 1e-5;

/// all-mpnet-base-v2's layout on a tiny random MPNet: Transformer (max_seq_length 32, which
/// the last sentence passes) -> Pooling(mean) -> Normalize. Against `encode` of the batch,
/// and each sentence alone against its row: the relative-position bias does not see padding.
#[test]
fn mpnet_embeds_as_sentence_transformers_does() {
    let name = "mpnet/sentence-transformers";
    let reference = reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline = load(&fixture(name)).unwrap();
    assert_eq!(pipeline.pooling(), ferroformers::Pooling::Mean);
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    let theirs: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let alone: Vec<Vec<f32>> = serde_json::from_value(reference["alone"].clone()).unwrap();
    assert_same_len(&ours, &theirs, name);
    for (i, sentence) in sentences.iter().enumerate() {
        let what = format!("{name}: sentence {i}");
        let error = assert_close_slices(&ours[i], &theirs[i], ENCODE_TOLERANCE, &what);
        eprintln!("{what}: max abs error {error:.1e}");
        assert_close_slices(
            &ours[i],
            &alone[i],
            ENCODE_TOLERANCE,
            &format!("{what}, theirs alone"),
        );
        let ours_alone = pipeline
            .run(&[*sentence], &EmbeddingsOptions::default())
            .unwrap();
        assert_close_slices(
            &ours_alone[0],
            &ours[i],
            ENCODE_TOLERANCE,
            &format!("{what} alone"),
        );
    }
}
