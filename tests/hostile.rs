//! Untrusted model files and untrusted text: every case returns a typed error that names the
//! problem, and nothing panics or reads outside the model folder.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use common::{assert_same_len, fixture, fixture_model};
use ferroformers::pipelines::{
    AggregationStrategy, BatchOptions, EmbeddingsOptions, EmbeddingsPipeline, FillMaskOptions,
    FillMaskPipeline, Pipeline, QuestionAnsweringOptions, QuestionAnsweringPipeline,
    SparseEmbeddingsOptions, SparseEmbeddingsPipeline, TextClassificationOptions,
    TextClassificationPipeline, TextGenerationOptions, TextGenerationPipeline,
    TokenClassificationOptions, TokenClassificationPipeline, TruncationOptions,
};
use ferroformers::{
    BertModel, DType, Device, Error, FromPretrained, HubOptions, LoadOptions, ModelInput,
    Pretrained, Tensor, TextInput, Tokenizer,
};

fn options() -> LoadOptions {
    LoadOptions::default().with_hub(HubOptions::default().with_offline(true))
}

/// A copy of a fixture folder that a test may damage.
fn copy_of(name: &str) -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
        }
    }
    folder
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn load_error(folder: &Path) -> Error {
    BertModel::from_pretrained(&path_str(folder), &options()).expect_err("loading must fail")
}

fn assert_mentions(error: &Error, needles: &[&str]) {
    let message = error.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Missing and unparsable files

#[test]
fn missing_config_is_named() {
    let folder = tempfile::tempdir().unwrap();
    let error = Pretrained::open(&path_str(folder.path()), &HubOptions::default()).unwrap_err();
    assert!(matches!(error, Error::MissingFile { .. }), "{error:?}");
    assert_mentions(&error, &["config.json"]);
}

#[test]
fn missing_tokenizer_lists_what_was_looked_for() {
    let folder = copy_of("bert/base");
    for name in ["tokenizer.json", "vocab.txt"] {
        std::fs::remove_file(folder.path().join(name)).unwrap();
    }
    let error =
        Tokenizer::from_pretrained(&path_str(folder.path()), &HubOptions::default()).unwrap_err();
    assert_mentions(&error, &["tokenizer.json", "vocab.txt", "merges.txt"]);
}

#[test]
fn config_that_does_not_parse_names_the_file() {
    let folder = copy_of("bert/base");
    std::fs::write(
        folder.path().join("config.json"),
        "{\"model_type\": \"bert\", ",
    )
    .unwrap();
    let error = load_error(folder.path());
    assert!(matches!(error, Error::Json { .. }), "{error:?}");
    assert_mentions(&error, &["config.json"]);
}

#[test]
fn tokenizer_file_that_does_not_parse_is_a_tokenizer_error() {
    let folder = copy_of("bert/base");
    std::fs::write(folder.path().join("tokenizer.json"), "{\"model\": 12}").unwrap();
    let error =
        Tokenizer::from_pretrained(&path_str(folder.path()), &HubOptions::default()).unwrap_err();
    assert!(matches!(error, Error::Tokenizer { .. }), "{error:?}");
    assert_mentions(&error, &["tokenizer.json"]);
}

#[test]
fn tokenizer_fields_that_make_the_tokenizers_crate_panic_are_errors() {
    // Found by tests/fuzz.rs: the tokenizers crate `expect`s on a malformed decoder.
    let source = std::fs::read_to_string(fixture("bert/base/tokenizer.json")).unwrap();
    let decoder_at = source.find("\"decoder\"").unwrap();
    let mut bad_decoder: serde_json::Value = serde_json::from_str(&source).unwrap();
    bad_decoder["decoder"] = serde_json::json!(5);
    for text in [
        source[..decoder_at + 20].to_string(),
        bad_decoder.to_string(),
    ] {
        let folder = copy_of("bert/base");
        std::fs::write(folder.path().join("tokenizer.json"), text).unwrap();
        let error = Tokenizer::from_pretrained(&path_str(folder.path()), &HubOptions::default())
            .unwrap_err();
        assert!(
            matches!(error, Error::Tokenizer { .. } | Error::Json { .. }),
            "{error:?}"
        );
        assert_mentions(&error, &["tokenizer.json"]);
    }
}

#[test]
fn a_template_that_names_an_undefined_special_token_is_an_error() {
    // Found by tests/fuzz.rs: the tokenizers crate reads such a template, then panics at every
    // encode when it looks the token up. Missing, with ids and tokens of different lengths, and
    // inside a Sequence post-processor.
    let source: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("bert/base/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let template = source["post_processor"].clone();
    let mut missing = template.clone();
    missing["special_tokens"]
        .as_object_mut()
        .unwrap()
        .remove("[SEP]");
    let mut uneven = template.clone();
    uneven["special_tokens"]["[CLS]"]["tokens"] = serde_json::json!(["[CLS]", "[CLS]"]);
    let nested = serde_json::json!({ "type": "Sequence", "processors": [missing.clone()] });
    for processor in [missing, uneven, nested] {
        let mut tokenizer = source.clone();
        tokenizer["post_processor"] = processor;
        let folder = copy_of("bert/base");
        std::fs::write(folder.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let error = Tokenizer::from_pretrained(&path_str(folder.path()), &HubOptions::default())
            .unwrap_err();
        assert!(matches!(error, Error::Tokenizer { .. }), "{error:?}");
        assert_mentions(&error, &["tokenizer.json", "special"]);
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// A safetensors file from a header and data.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The base BERT fixture with its weights replaced by `bytes`.
fn with_weights(bytes: &[u8]) -> tempfile::TempDir {
    let folder = copy_of("bert/base");
    std::fs::write(folder.path().join("model.safetensors"), bytes).unwrap();
    folder
}

#[test]
fn damaged_safetensors_are_refused_with_a_reason() {
    let real = std::fs::read(fixture("bert/base/model.safetensors")).unwrap();
    let eight_gib_claim = {
        let mut bytes = (8u64 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated file", real[..real.len() / 2].to_vec()),
        ("header length past the end", {
            let mut bytes = real.clone();
            bytes[..8].copy_from_slice(&(real.len() as u64 * 2).to_le_bytes());
            bytes
        }),
        (
            "offsets past the data",
            safetensors_bytes(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
                &[0; 8],
            ),
        ),
        (
            "overlapping tensors",
            safetensors_bytes(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        (
            "dtype that the data size does not match",
            safetensors_bytes(
                r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        ("8 GiB header length", eight_gib_claim),
        ("not JSON", safetensors_bytes("not json at all!", &[])),
    ];
    for (what, bytes) in cases {
        let folder = with_weights(&bytes);
        let error = load_error(folder.path());
        assert!(
            matches!(error, Error::InvalidWeights(_)),
            "{what}: {error:?}"
        );
        assert_mentions(&error, &["model.safetensors", "download it again"]);
    }
}

/// The base weights with `edit` applied, saved back.
fn edited_weights(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let folder = copy_of("bert/base");
    let path = folder.path().join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut weights);
    candle_core::safetensors::save(&weights, &path).unwrap();
    folder
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let folder = edited_weights(|w| {
        w.insert(
            "encoder.layer.1.output.dense.bias".into(),
            Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let error = load_error(folder.path());
    assert!(matches!(error, Error::InvalidWeights(_)), "{error:?}");
    assert_mentions(&error, &["encoder.layer.1.output.dense.bias", "32", "31"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let folder = edited_weights(|w| {
        w.remove("encoder.layer.0.attention.self.key.weight");
    });
    let error = load_error(folder.path());
    assert!(matches!(error, Error::InvalidWeights(_)), "{error:?}");
    assert_mentions(&error, &["encoder.layer.0.attention.self.key.weight"]);
}

// ---------------------------------------------------------------------------------------------
// Paths that lead outside the model folder

fn sharded_with_shard_name(shard: &str) -> tempfile::TempDir {
    let folder = copy_of("bert/base");
    std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"embeddings.word_embeddings.weight": shard}});
    std::fs::write(
        folder.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    folder
}

#[test]
fn shard_names_that_leave_the_folder_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("bert/base/model.safetensors"),
        outside.path().join("x.safetensors"),
    )
    .unwrap();
    let absolute = path_str(&outside.path().join("x.safetensors"));
    for shard in [
        "../x.safetensors",
        absolute.as_str(),
        "sub/../../x.safetensors",
        "..",
        "model.bin",
    ] {
        let folder = sharded_with_shard_name(shard);
        let error = load_error(folder.path());
        assert!(
            matches!(error, Error::InvalidWeights(_)),
            "{shard}: {error:?}"
        );
        assert_mentions(&error, &[shard]);
    }
}

#[test]
fn a_symlink_that_leads_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret.safetensors");
    std::fs::copy(fixture("bert/base/model.safetensors"), &target).unwrap();
    let folder = copy_of("bert/base");
    std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&target, folder.path().join("model.safetensors")).unwrap();
    let error = load_error(folder.path());
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
    assert_mentions(&error, &["model.safetensors", "outside"]);
}

// ---------------------------------------------------------------------------------------------
// pytorch_model.bin

/// A PyTorch-style zip holding `pickle` as data.pkl, as the only weights of the base fixture.
fn with_pickle(pickle: &[u8]) -> tempfile::TempDir {
    let folder = copy_of("bert/base");
    std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
    let file = std::fs::File::create(folder.path().join("pytorch_model.bin")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.finish().unwrap();
    folder
}

#[test]
fn pickles_that_call_anything_but_tensor_rebuilders_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // cos.system("echo pwned"), the classic.
        (
            "os.system",
            b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.".to_vec(),
        ),
        (
            "builtins.eval",
            b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.".to_vec(),
        ),
        // STACK_GLOBAL with names from the stack.
        (
            "subprocess.Popen",
            b"\x80\x04\x8c\x0asubprocess\x8c\x05Popen\x93).".to_vec(),
        ),
        ("0x69", b"\x80\x02(i__builtin__\nset\n.".to_vec()),
        ("truncated", b"\x80\x02X\xff\xff\x00\x00abc".to_vec()),
    ];
    for (what, pickle) in cases {
        let folder = with_pickle(&pickle);
        let error = load_error(folder.path());
        assert!(
            matches!(error, Error::InvalidWeights(_)),
            "{what}: {error:?}"
        );
        assert_mentions(&error, &["pytorch_model.bin", "refused", what]);
    }
    // Not a zip at all.
    let folder = copy_of("bert/base");
    std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
    std::fs::write(
        folder.path().join("pytorch_model.bin"),
        b"\x80\x02cos\nsystem\n.",
    )
    .unwrap();
    assert_mentions(&load_error(folder.path()), &["refused", "zip"]);
}

#[test]
fn a_plain_tensor_pickle_still_loads() {
    // The fixture saved by torch.save passes the same vetting.
    BertModel::from_pretrained(&fixture_model("bert/base-pytorch-bin"), &options()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Token ids beyond the vocabulary

#[test]
fn token_ids_beyond_the_vocabulary_are_an_error_not_a_read_out_of_bounds() {
    let model = BertModel::from_pretrained(&fixture_model("bert/base"), &options()).unwrap();
    let ids = Tensor::new(&[[2u32, 451, 3]], &Device::Cpu).unwrap();
    let error = model.forward(&ModelInput::from_ids(ids)).unwrap_err();
    assert_mentions(&error, &["451", "tokenizer"]);
    let types = ModelInput {
        input_ids: Tensor::new(&[[2u32, 5, 3]], &Device::Cpu).unwrap(),
        attention_mask: None,
        token_type_ids: Some(Tensor::new(&[[0u32, 7, 0]], &Device::Cpu).unwrap()),
    };
    assert!(model.forward(&types).is_err());

    // A tokenizer whose vocabulary is larger than the model's.
    let folder = copy_of("bert/base");
    let path = folder.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tokenizer["model"]["vocab"]["zzzz"] = serde_json::json!(9000);
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let tokenizer =
        Tokenizer::from_pretrained(&path_str(folder.path()), &HubOptions::default()).unwrap();
    let input = tokenizer
        .encode_batch(["zzzz"], &Default::default())
        .unwrap()
        .to_input(&Device::Cpu)
        .unwrap();
    assert_mentions(&model.forward(&input).unwrap_err(), &["9000"]);
}

// ---------------------------------------------------------------------------------------------
// Untrusted text

const ODD_TEXTS: &[&str] = &[
    "",
    "   \t \n ",
    "\u{0}\u{1}\u{7}\u{1b}[31m control \u{7f}",
    "e\u{301}\u{301}\u{301} a\u{30a}",
    "مرحبا بالعالم שלום",
    "👩‍👩‍👧‍👦🏳️‍🌈 🤗",
    "\u{feff}\u{200b}\u{202e}reversed",
];

/// Ok, or one of the library's errors: never a panic.
fn no_panic<T>(what: &str, result: ferroformers::Result<T>) {
    if let Err(error) = result {
        assert!(!error.to_string().is_empty(), "{what}");
    }
}

#[test]
fn odd_text_never_panics_any_pipeline() {
    let classify = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let fill =
        FillMaskPipeline::from_pretrained(&fixture_model("roberta/masked-lm"), &options()).unwrap();
    let ner = TokenClassificationPipeline::from_pretrained(
        &fixture_model("roberta/token-classification"),
        &options(),
    )
    .unwrap();
    let qa = QuestionAnsweringPipeline::from_pretrained(
        &fixture_model("bert/question-answering"),
        &options(),
    )
    .unwrap();
    let embed = EmbeddingsPipeline::from_pretrained(
        &path_str(&fixture("bert/sentence-transformers")),
        &options(),
    )
    .unwrap();
    let generate =
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap();
    let splade = SparseEmbeddingsPipeline::from_pretrained(
        &fixture_model("splade/sparse-encoder"),
        &options(),
    )
    .unwrap();
    let config = TextGenerationOptions::default().with_max_new_tokens(3);
    for &text in ODD_TEXTS {
        splade
            .run(&[text], &SparseEmbeddingsOptions::default())
            .unwrap();
        classify
            .run(
                &[TextInput::Single(text)],
                &TextClassificationOptions::default(),
            )
            .unwrap();
        embed.run(&[text], &EmbeddingsOptions::default()).unwrap();
        ner.run(
            &[text],
            &TokenClassificationOptions::default()
                .with_aggregation_strategy(AggregationStrategy::Simple),
        )
        .unwrap();
        no_panic(
            "fill-mask",
            fill.run(&[&format!("{text}<mask>")], &FillMaskOptions::default()),
        );
        no_panic(
            "qa",
            qa.run_one(
                (text, "The book was written in 1999."),
                &QuestionAnsweringOptions::default(),
            ),
        );
        no_panic(
            "qa context",
            qa.run_one(("Who?", text), &QuestionAnsweringOptions::default()),
        );
        no_panic("generate", generate.run([text], &config));
    }
}

#[test]
fn a_million_characters_truncate_when_asked_and_fail_clearly_when_not() {
    let text = "lorem ipsum dolor sit amet ".repeat(37_038); // 999,026 characters
    let classify = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let error = classify
        .run(
            &[TextInput::Single(&text)],
            &TextClassificationOptions::default(),
        )
        .unwrap_err();
    match error {
        Error::InputTooLong { length, max } => {
            assert!(length > 100_000 && max == 64, "{length} {max}")
        }
        other => panic!("expected InputTooLong, got {other:?}"),
    }
    let truncate = TextClassificationOptions::default().with_truncation(true);
    classify
        .run(&[TextInput::Single(&text)], &truncate)
        .unwrap();
    let embed = EmbeddingsPipeline::from_pretrained(
        &path_str(&fixture("bert/sentence-transformers")),
        &options(),
    )
    .unwrap();
    assert_eq!(
        embed.run(&[&text], &EmbeddingsOptions::default()).unwrap()[0].len(),
        32
    );
    let splade = SparseEmbeddingsPipeline::from_pretrained(
        &fixture_model("splade/sparse-encoder"),
        &options(),
    )
    .unwrap();
    assert!(!splade
        .run(&[&text], &SparseEmbeddingsOptions::default())
        .unwrap()[0]
        .is_empty());
    let error = splade
        .run(
            &[&text],
            &SparseEmbeddingsOptions::default().with_truncation(false),
        )
        .unwrap_err();
    assert!(matches!(error, Error::InputTooLong { .. }), "{error:?}");
}

#[test]
fn empty_batches_give_empty_results() {
    let classify = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    assert!(classify
        .run(Vec::<&str>::new(), &TextClassificationOptions::default())
        .unwrap()
        .is_empty());
    let embed = EmbeddingsPipeline::from_pretrained(
        &path_str(&fixture("bert/sentence-transformers")),
        &options(),
    )
    .unwrap();
    assert!(embed
        .run(Vec::<&str>::new(), &EmbeddingsOptions::default())
        .unwrap()
        .is_empty());
    let ner = TokenClassificationPipeline::from_pretrained(
        &fixture_model("bert/token-classification"),
        &options(),
    )
    .unwrap();
    assert!(ner
        .run(
            Vec::<&str>::new(),
            &TokenClassificationOptions::default()
                .with_aggregation_strategy(AggregationStrategy::Simple),
        )
        .unwrap()
        .is_empty());
    let fill =
        FillMaskPipeline::from_pretrained(&fixture_model("bert/masked-lm"), &options()).unwrap();
    assert!(fill
        .run(Vec::<&str>::new(), &FillMaskOptions::default())
        .unwrap()
        .is_empty());
    let generate =
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap();
    assert!(generate
        .run(Vec::<&str>::new(), &TextGenerationOptions::default())
        .unwrap()
        .is_empty());
    let splade = SparseEmbeddingsPipeline::from_pretrained(
        &fixture_model("splade/sparse-encoder"),
        &options(),
    )
    .unwrap();
    assert!(splade
        .run(Vec::<&str>::new(), &SparseEmbeddingsOptions::default())
        .unwrap()
        .is_empty());
    let error = splade
        .run(
            ["a"],
            &SparseEmbeddingsOptions::default().with_batch_size(0),
        )
        .unwrap_err();
    assert!(error.to_string().contains("batch_size"), "{error}");
}

#[test]
fn ten_thousand_short_inputs_run_batch_by_batch() {
    let classify = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let texts: Vec<String> = (0..10_000).map(|i| format!("input number {i}")).collect();
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let results = classify
        .run(&inputs, &TextClassificationOptions::default())
        .unwrap();
    assert_eq!(results.len(), 10_000);
    // Same answer as alone, for a sample.
    for i in [0, 4_321, 9_999] {
        let alone = classify
            .run(&inputs[i..=i], &TextClassificationOptions::default())
            .unwrap()
            .remove(0);
        assert_eq!(alone[0].label, results[i][0].label);
        assert!((alone[0].score - results[i][0].score).abs() < 1e-5);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// Owning pipelines can move into a thread or an `Arc` shared by a server's handlers.
fn assert_send_sync<T: Send + Sync + 'static>() {}

#[test]
fn models_pipelines_and_tokenizers_are_send_and_sync() {
    assert_send_sync::<BertModel>();
    assert_send_sync::<ferroformers::Gpt2LMHeadModel>();
    assert_send_sync::<ferroformers::AutoModelForSequenceClassification>();
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<TextClassificationPipeline>();
    assert_send_sync::<FillMaskPipeline>();
    assert_send_sync::<TokenClassificationPipeline>();
    assert_send_sync::<QuestionAnsweringPipeline>();
    assert_send_sync::<EmbeddingsPipeline>();
    assert_send_sync::<TextGenerationPipeline>();
    assert_send_sync::<ferroformers::pipelines::RerankPipeline>();
    assert_send_sync::<ferroformers::AnyPipeline>();
}

#[test]
fn eight_threads_share_one_model_and_agree_with_one_thread() {
    let pipeline = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let texts: Vec<String> = (0..16)
        .map(|i| format!("the quick brown fox number {i} jumps"))
        .collect();
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let all = TextClassificationOptions {
        top_k: None,
        ..TextClassificationOptions::default()
    };
    let expected = pipeline.run(&inputs, &all).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (pipeline, inputs, all) = (&pipeline, &inputs, &all);
                scope.spawn(move || {
                    // Each thread works through the inputs in its own order.
                    let mut order: Vec<usize> = (0..inputs.len()).collect();
                    order.rotate_left(t);
                    order
                        .into_iter()
                        .map(|i| (i, pipeline.run(&inputs[i..=i], all).unwrap().remove(0)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            let answers = handle.join().unwrap();
            assert_same_len(
                &answers,
                inputs.as_slice(),
                "one answer per input per thread",
            );
            for (i, answer) in answers {
                assert_same_len(&answer, &expected[i], &format!("labels of input {i}"));
                for (a, b) in answer.iter().zip(&expected[i]) {
                    assert_eq!(a.label, b.label);
                    assert!(
                        (a.score - b.score).abs() < 1e-5,
                        "input {i}: {} vs {}",
                        a.score,
                        b.score
                    );
                }
            }
        }
    });
}
