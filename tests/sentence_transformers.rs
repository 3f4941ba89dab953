//! EmbeddingsPipeline on sentence-transformers models with Dense modules and prompts, against
//! `SentenceTransformer.encode` (sentence-transformers 5.1.2) on fixtures made by
//! scripts/make_fixtures.py. Embeddings within 1e-4 (f32). SPLADE (SparseEmbeddingsPipeline)
//! against `SparseEncoder.encode` at the end of the file.

mod common;

use common::{
    assert_close_slices, assert_embeddings, assert_same_len, fixture, fixture_model,
    fixture_reference,
};
use ferroformers::pipelines::{
    pipeline, EmbeddingsOptions, EmbeddingsPipeline, M3EmbeddingsPipeline, M3Options, Pipeline,
    PipelineBase, Prompt, SparseEmbeddingsOptions, SparseEmbeddingsPipeline, SparseValue, Task,
    TruncationOptions,
};
use ferroformers::{
    Error, LoadOptions, SpladeActivation, SpladePooling, SpladeStrategy, WeightType,
};
use serde_json::Value;

const F32_TOLERANCE: f32 = 1e-4;

fn load(folder: &std::path::Path) -> Result<EmbeddingsPipeline, Error> {
    EmbeddingsPipeline::from_pretrained(&folder.to_string_lossy(), &LoadOptions::default())
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
    let reference = fixture_reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline = load(&fixture(name)).unwrap();
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    assert_eq!(ours[0].len(), 8, "the last Dense gives 8 features");
    assert_embeddings(&ours, &reference["embeddings"], F32_TOLERANCE, name);
}

/// A decoder as an embedder, in Qwen3-Embedding's layout: a Qwen3Model checkpoint with its
/// keys at the root, a tokenizer that appends <|endoftext|>, last-token pooling, Normalize and
/// an instruction prompt for queries; against `encode` with no prompt and with "query". Our
/// batches pad on the right where sentence-transformers padded this tokenizer on the left:
/// causal attention makes them equal, and each sentence alone gives its batch row.
#[test]
fn a_decoder_embeds_with_last_token_pooling_as_sentence_transformers_does() {
    let name = "qwen3/sentence-transformers";
    let reference = fixture_reference(name);
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline = load(&fixture(name)).unwrap();
    assert_eq!(pipeline.pooling(), ferroformers::Pooling::LastToken);
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    assert_embeddings(&ours, &reference["embeddings"], F32_TOLERANCE, name);
    let options = EmbeddingsOptions::default().with_prompt(Prompt::Named("query".to_string()));
    let queries = pipeline.run(&sentences, &options).unwrap();
    assert_embeddings(&queries, &reference["query"], F32_TOLERANCE, "query prompt");
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
    let reference = fixture_reference(name);
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
        F32_TOLERANCE,
        "truncate_dim 4",
    );
    let ours = pipeline
        .run(&sentences, &options.with_normalize_embeddings(true))
        .unwrap();
    assert_embeddings(
        &ours,
        &serde_json::to_value(&unit).unwrap(),
        F32_TOLERANCE,
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
    let reference = fixture_reference(name);
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
            assert_embeddings(
                &ours,
                &reference[key][call],
                F32_TOLERANCE,
                &format!("{key} {call}"),
            );
        }
    }
    // The default options use the model's default prompt.
    assert_embeddings(
        &included
            .run(&sentences, &EmbeddingsOptions::default())
            .unwrap(),
        &reference["include_prompt"]["default"],
        F32_TOLERANCE,
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

/// Each text alone against the same text in a padded batch: only summation order differs.
const BATCH_TOLERANCE: f32 = 1e-5;

fn floats(value: &Value) -> Vec<f32> {
    serde_json::from_value(value.clone()).unwrap()
}

/// BGE-M3 (tests/fixtures/xlm-roberta/bge-m3: the tiny XLM-RoBERTa with FlagEmbedding's sparse
/// and ColBERT heads): the three outputs of one forward pass against FlagEmbedding's formulas
/// run in PyTorch (scripts/make_fixtures.py), with texts cut at max_length too. Token ids
/// exact, the same ids in every sparse vector, every value within 1e-4 (f32); each text alone
/// within 1e-5 of the batch.
#[test]
fn bge_m3_outputs_match_flag_embedding() {
    let refs = fixture_reference("xlm-roberta/bge-m3");
    let pipeline = M3EmbeddingsPipeline::from_pretrained(
        &fixture_model("xlm-roberta/bge-m3"),
        &LoadOptions::default(),
    )
    .unwrap();
    let texts: Vec<String> = serde_json::from_value(refs["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = M3Options::default().with_sparse(true).with_colbert(true);
    for (key, options) in [
        ("batch", all.clone()),
        ("max_length_6", all.clone().with_max_length(6)),
    ] {
        let theirs = refs[key].as_array().unwrap();
        let encodings = pipeline.encode(&texts, &options).unwrap();
        let ours = pipeline.run(&texts, &options).unwrap();
        assert_same_len(&ours, theirs, key);
        for (i, ((ours, theirs), encoding)) in ours.iter().zip(theirs).zip(&encodings).enumerate() {
            let what = format!("{key}: text {i}");
            let ids: Vec<u32> = serde_json::from_value(theirs["ids"].clone()).unwrap();
            assert_eq!(encoding.get_ids(), ids.as_slice(), "{what}: ids");
            let dense = ours.dense.as_ref().unwrap();
            assert_close_slices(dense, &floats(&theirs["dense"]), F32_TOLERANCE, &what);

            let sparse = ours.sparse.as_ref().unwrap();
            let expected = theirs["sparse"].as_array().unwrap();
            let indices: Vec<u64> = expected
                .iter()
                .map(|e| e["index"].as_u64().unwrap())
                .collect();
            let ours_indices: Vec<u64> = sparse.iter().map(|e| e.index as u64).collect();
            assert_eq!(ours_indices, indices, "{what}: sparse ids");
            let values: Vec<f32> = expected
                .iter()
                .map(|e| e["value"].as_f64().unwrap() as f32)
                .collect();
            let ours_values: Vec<f32> = sparse.iter().map(|e| e.value).collect();
            // A text whose every weight is 0 ("a" here) has none: the ids said so above.
            if !values.is_empty() {
                let what = format!("{what}: sparse");
                assert_close_slices(&ours_values, &values, F32_TOLERANCE, &what);
            }

            let colbert = ours.colbert.as_ref().unwrap();
            let expected: Vec<Vec<f32>> =
                serde_json::from_value(theirs["colbert"].clone()).unwrap();
            assert_same_len(colbert, &expected, &format!("{what}: colbert vectors"));
            for (a, b) in colbert.iter().zip(&expected) {
                assert_close_slices(a, b, F32_TOLERANCE, &format!("{what}: colbert"));
            }

            let alone = pipeline.run_one(texts[i], &options).unwrap();
            assert_close_slices(alone.dense.as_ref().unwrap(), dense, BATCH_TOLERANCE, &what);
            let alone_colbert: Vec<f32> = alone.colbert.unwrap().concat();
            assert_close_slices(&alone_colbert, &colbert.concat(), BATCH_TOLERANCE, &what);
        }
    }
    // The heads are files beside the checkpoint: a plain XLM-RoBERTa has none to load.
    match M3EmbeddingsPipeline::from_pretrained(
        &fixture_model("xlm-roberta/base"),
        &LoadOptions::default(),
    ) {
        Err(Error::MissingFile { file, .. }) => assert_eq!(file, "sparse_linear.pt"),
        other => panic!("expected MissingFile, got {:?}", other.map(|_| ())),
    }
    // BGEM3FlagModel.encode's defaults: the dense embedding alone.
    let dense_only = pipeline.run(&texts, &M3Options::default()).unwrap();
    assert!(dense_only
        .iter()
        .all(|e| e.dense.is_some() && e.sparse.is_none() && e.colbert.is_none()));
}

// SPLADE: SparseEmbeddingsPipeline against `SparseEncoder.encode` (sentence-transformers 5.1.2)
// on tests/fixtures/splade (made by `make_fixtures.py --only splade`). f32 values within
// SPLADE_TOLERANCE, the same non-zero indices.

/// f32 SPLADE values against sentence-transformers' (measured: 6.9e-7 at most): the logits match
/// PyTorch's to ~1e-6, and log1p(relu(·)) only shrinks differences. The reference keeps 8
/// significant digits.
const SPLADE_TOLERANCE: f32 = 1e-5;

/// How far bf16 and int8 weights move a SPLADE vector from sentence-transformers' f32 one, over
/// every vocabulary entry (entries near zero may turn zero or not, so the vectors are compared
/// whole). Measured on the fixture (Zen 4): bf16 1.66e-2 with the AVX-512 kernel, 1.67e-2 on
/// the AVX2 and portable paths; int8 3.93e-2 with AVX-512's u8 activations (`vpdpbusd`),
/// 2.36e-2 with the 16-bit ones of AVX2 and portable. The bars leave ~1.5x.
const SPLADE_BF16_TOLERANCE: f32 = 2.5e-2;
const SPLADE_INT8_TOLERANCE: f32 = 6e-2;

fn sparse_pipeline(folder: &std::path::Path) -> Result<SparseEmbeddingsPipeline, Error> {
    SparseEmbeddingsPipeline::from_pretrained(&folder.to_string_lossy(), &LoadOptions::default())
}

/// The reference's rows as our sparse entries.
fn sparse_reference(rows: &Value) -> Vec<Vec<SparseValue>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let indices: Vec<usize> = serde_json::from_value(row["indices"].clone()).unwrap();
            let values: Vec<f32> = serde_json::from_value(row["values"].clone()).unwrap();
            indices
                .into_iter()
                .zip(values)
                .map(|(index, value)| SparseValue { index, value })
                .collect()
        })
        .collect()
}

/// The same non-zero indices, in ascending order, and values within `tolerance`; returns the
/// largest difference.
fn assert_sparse(
    ours: &[Vec<SparseValue>],
    theirs: &[Vec<SparseValue>],
    tolerance: f32,
    what: &str,
) -> f32 {
    assert_same_len(ours, theirs, what);
    let mut worst = 0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let indices = |row: &[SparseValue]| row.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(
            indices(a),
            indices(b),
            "{what}: sentence {i}'s non-zero indices"
        );
        let values = |row: &[SparseValue]| row.iter().map(|e| e.value).collect::<Vec<_>>();
        let diff = assert_close_slices(
            &values(a),
            &values(b),
            tolerance,
            &format!("{what}: sentence {i}"),
        );
        worst = worst.max(diff);
    }
    worst
}

/// Sparse entries as a dense vector of `width`.
fn densify(row: &[SparseValue], width: usize) -> Vec<f32> {
    let mut dense = vec![0f32; width];
    for entry in row {
        dense[entry.index] = entry.value;
    }
    dense
}

#[test]
fn a_sparse_encoder_gives_sentence_transformers_splade_vectors() {
    let reference = fixture_reference("splade");
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let folder = fixture("splade/sparse-encoder");
    let (task, _) = Task::detect(&folder.to_string_lossy(), &Default::default()).unwrap();
    assert_eq!(task, Task::SparseEmbeddings);
    let pipeline = pipeline(task, &folder.to_string_lossy(), &LoadOptions::default())
        .unwrap()
        .into_sparse_embeddings()
        .unwrap();
    assert_eq!(pipeline.splade(), SpladePooling::default());
    let theirs = sparse_reference(&reference["sparse_encoder"]);
    // Batched (the sentences pad to the longest) and one at a time.
    let batch = pipeline
        .run(&sentences, &SparseEmbeddingsOptions::default())
        .unwrap();
    let worst = assert_sparse(&batch, &theirs, SPLADE_TOLERANCE, "splade batch");
    println!("splade f32: max |difference| {worst:.2e}");
    for (i, sentence) in sentences.iter().enumerate() {
        let alone = pipeline
            .run_one(*sentence, &SparseEmbeddingsOptions::default())
            .unwrap();
        // Padding reaches a row only through the attention's sums over masked keys.
        assert_sparse(&[alone], &batch[i..=i], 1e-6, "splade alone == batch");
    }
    let query = pipeline
        .run(
            &sentences,
            &SparseEmbeddingsOptions::default().with_prompt(Prompt::Named("query".into())),
        )
        .unwrap();
    assert_sparse(
        &query,
        &sparse_reference(&reference["query"]),
        SPLADE_TOLERANCE,
        "splade query prompt",
    );
}

#[test]
fn splade_pooling_settings_are_read_from_the_module_config() {
    let reference = fixture_reference("splade");
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    for (strategy, activation, key) in [
        ("sum", "relu", "bert_sum"),
        ("max", "log1p_relu", "bert_log1p_relu"),
    ] {
        let folder = copy_fixture("splade/sparse-encoder");
        edit_json(
            &folder.path().join("1_SpladePooling/config.json"),
            |config| {
                config["pooling_strategy"] = Value::from(strategy);
                config["activation_function"] = Value::from(activation);
            },
        );
        let ours = sparse_pipeline(folder.path())
            .unwrap()
            .run(&sentences, &SparseEmbeddingsOptions::default())
            .unwrap();
        assert_sparse(
            &ours,
            &sparse_reference(&reference[key]),
            SPLADE_TOLERANCE,
            key,
        );
    }
    let folder = copy_fixture("splade/sparse-encoder");
    edit_json(
        &folder.path().join("1_SpladePooling/config.json"),
        |config| {
            config["pooling_strategy"] = Value::from("mean");
        },
    );
    let error = sparse_pipeline(folder.path()).unwrap_err();
    assert!(
        error.to_string().contains("1_SpladePooling/config.json"),
        "{error}"
    );
}

#[test]
fn a_plain_masked_lm_gets_the_default_splade_pooling_as_sparse_encoder_builds_it() {
    let reference = fixture_reference("splade");
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    for (family, key) in [
        ("bert", "sparse_encoder"),
        ("roberta", "roberta"),
        ("distilbert", "distilbert"),
    ] {
        let folder = fixture(&format!("{family}/masked-lm"));
        let ours = sparse_pipeline(&folder)
            .unwrap()
            .run(&sentences, &SparseEmbeddingsOptions::default())
            .unwrap();
        assert_sparse(
            &ours,
            &sparse_reference(&reference[key]),
            SPLADE_TOLERANCE,
            family,
        );
    }
    // A model already loaded, with the pooling chosen by hand.
    let folder = fixture("bert/masked-lm");
    let base =
        PipelineBase::from_pretrained(&folder.to_string_lossy(), &LoadOptions::default()).unwrap();
    let sum = SpladePooling {
        strategy: SpladeStrategy::Sum,
        activation: SpladeActivation::Relu,
    };
    let ours = SparseEmbeddingsPipeline::from_parts(base, sum)
        .unwrap()
        .run(&sentences, &SparseEmbeddingsOptions::default())
        .unwrap();
    assert_sparse(
        &ours,
        &sparse_reference(&reference["bert_sum"]),
        SPLADE_TOLERANCE,
        "from_parts sum",
    );
}

#[test]
fn splade_in_bf16_and_int8_stays_near_f32() {
    let reference = fixture_reference("splade");
    let sentences = sentences(&reference);
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let folder = fixture("splade/sparse-encoder");
    let theirs = sparse_reference(&reference["sparse_encoder"]);
    for (weight_type, tolerance) in [
        (WeightType::Bf16, SPLADE_BF16_TOLERANCE),
        (WeightType::Int8, SPLADE_INT8_TOLERANCE),
    ] {
        let load = LoadOptions::default().with_weight_type(weight_type);
        let pipeline =
            SparseEmbeddingsPipeline::from_pretrained(&folder.to_string_lossy(), &load).unwrap();
        let width = pipeline.vocab_size();
        let ours = pipeline
            .run(&sentences, &SparseEmbeddingsOptions::default())
            .unwrap();
        assert_same_len(&ours, &theirs, "rows");
        let mut worst = 0f32;
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                a.windows(2).all(|w| w[0].index < w[1].index),
                "ascending indices"
            );
            let what = format!("{weight_type}: sentence {i}");
            let diff =
                assert_close_slices(&densify(a, width), &densify(b, width), tolerance, &what);
            worst = worst.max(diff);
        }
        println!("splade {weight_type}: max |difference| {worst:.2e} (bar {tolerance:.1e})");
    }
}

#[test]
fn splade_and_dense_models_refuse_the_other_pipeline() {
    let error = load(&fixture("splade/sparse-encoder")).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(
        error.to_string().contains("SparseEmbeddingsPipeline"),
        "{error}"
    );
    let error = sparse_pipeline(&fixture("bert/sentence-transformers")).unwrap_err();
    assert!(
        error.to_string().contains("without SpladePooling"),
        "{error}"
    );
    // SpladePooling pools a masked LM's logits, not a Transformer's hidden states.
    let folder = copy_fixture("splade/sparse-encoder");
    edit_json(&folder.path().join("modules.json"), |modules| {
        modules[0]["type"] = Value::from("sentence_transformers.models.Transformer");
    });
    let error = sparse_pipeline(folder.path()).unwrap_err();
    assert!(error.to_string().contains("SpladePooling"), "{error}");
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
    let reference = fixture_reference(name);
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
