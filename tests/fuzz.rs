//! Property tests over untrusted inputs, run by `cargo test` with a bounded number of cases:
//! config parsing, safetensors headers, tokenizer files, pickles and generation settings.
//! Each property is "returns Ok or a library error, never panics". Failures proptest finds are
//! kept in tests/fuzz.proptest-regressions and replayed first on every run.

mod common;

use std::io::Write;
use std::path::Path;

use common::fixture;
use ferroformers::generation::{processors::processors_for, GenerationConfig};
use ferroformers::{BertModel, FromPretrained, HubOptions, LoadOptions, ModelConfig, Tokenizer};
use proptest::prelude::*;

fn copy_base() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("bert/base")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    folder
}

fn load(folder: &Path) -> ferroformers::Result<BertModel> {
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    BertModel::from_pretrained(&folder.to_string_lossy(), &options)
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "id2label",
    "n_embd",
    "n_head",
    "dim",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics_on_any_text(text in ".{0,200}") {
        let _ = ModelConfig::from_json(&text, Path::new("config.json"));
    }

    #[test]
    fn config_parsing_never_panics_on_mutated_configs(
        key in prop::sample::select(CONFIG_KEYS),
        value in json_value(),
        model_type in prop::sample::select(&["bert", "roberta", "distilbert", "gpt2", "t5"][..]),
    ) {
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("bert/base/config.json")).unwrap(),
        ).unwrap();
        config["model_type"] = serde_json::Value::from(model_type);
        config[key] = value;
        let _ = ModelConfig::from_json(&config.to_string(), Path::new("config.json"));
    }

    #[test]
    fn generation_settings_are_validated_never_panic(
        value in json_value(),
        key in prop::sample::select(&[
            "max_new_tokens", "max_length", "temperature", "top_k", "top_p", "repetition_penalty",
            "no_repeat_ngram_size", "num_beams", "num_return_sequences", "length_penalty",
            "early_stopping", "eos_token_id", "stop_strings", "do_sample", "seed",
        ][..]),
        sample in any::<bool>(),
    ) {
        let settings = serde_json::json!({ key: value, "do_sample": sample });
        if let Ok(config) = serde_json::from_value::<GenerationConfig>(settings) {
            if config.validate().is_ok() {
                // Valid settings always build their processors.
                prop_assert!(processors_for(&config, 4).is_ok());
            }
        }
    }
}

proptest! {
    // These write files and load models: fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_with_damaged_headers_never_panic(
        flips in prop::collection::vec((0usize..400, any::<u8>()), 1..6),
        cut in prop::option::of(0usize..4000),
    ) {
        let folder = copy_base();
        let path = folder.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.min(bytes.len()));
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(model) = load(folder.path()) {
            let ids = ferroformers::Tensor::new(&[[2u32, 10, 3]], &ferroformers::Device::Cpu).unwrap();
            let _ = model.forward(&ferroformers::ModelInput::from_ids(ids));
        }
    }

    #[test]
    fn arbitrary_safetensors_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let folder = copy_base();
        std::fs::write(folder.path().join("model.safetensors"), &bytes).unwrap();
        prop_assert!(load(folder.path()).is_err());
    }

    #[test]
    fn damaged_tokenizer_files_never_panic(
        cut in 0usize..12_000,
        flips in prop::collection::vec((0usize..12_000, prop::sample::select(&[b'"', b'{', b'}', b'0', b'x', b' ', b','][..])), 0..4),
    ) {
        let folder = copy_base();
        let path = folder.path().join("tokenizer.json");
        let mut text = std::fs::read(&path).unwrap();
        for (at, byte) in flips {
            let at = at % text.len();
            text[at] = byte;
        }
        text.truncate(cut.min(text.len()));
        std::fs::write(&path, &text).unwrap();
        if let Ok(tokenizer) = Tokenizer::from_pretrained(&folder.path().to_string_lossy(), &HubOptions::default()) {
            let _ = tokenizer.encode("The quick brown fox, café 中文", &Default::default());
        }
    }

    #[test]
    fn arbitrary_pickles_never_panic(pickle in prop::collection::vec(any::<u8>(), 0..200)) {
        let folder = copy_base();
        std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
        let file = std::fs::File::create(folder.path().join("pytorch_model.bin")).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(&pickle).unwrap();
        zip.finish().unwrap();
        prop_assert!(load(folder.path()).is_err());
    }
}
