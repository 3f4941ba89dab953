//! The GGUF tokenizers against `tokenizers` on the same vocabularies (tests/fixtures/gguf/
//! tokenizers, written by llama.cpp's convert_hf_to_gguf.py from make_fixtures.py), and each
//! way the metadata can be wrong refused with an error that names it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::loading::gguf::GgufFile;
use crate::tokenizer::chat_template::{ChatTemplate, Message};
use crate::tokenizer::EncodeOptions;

/// `gpt2-default`'s reference is llama.cpp's own llama-tokenize (no `tokenizers` pipeline
/// splits as its `default` does); the others' is `tokenizers`.
const FIXTURES: [&str; 6] = [
    "gpt2",
    "qwen2",
    "llama-bpe",
    "smollm",
    "llama-spm",
    "gpt2-default",
];

fn fixture(name: &str) -> (GgufFile, serde_json::Value) {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tokenizers");
    let file = GgufFile::open(&folder.join(format!("{name}.gguf"))).unwrap();
    let reference = std::fs::read_to_string(folder.join(format!("{name}.json"))).unwrap();
    (file, serde_json::from_str(&reference).unwrap())
}

#[test]
fn ids_tokens_and_decodes_match_tokenizers_on_the_same_vocabulary() {
    for name in FIXTURES {
        let (file, reference) = fixture(name);
        let tokenizer = Tokenizer::from_gguf(file.header()).unwrap();
        for case in reference["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let encoding = tokenizer.encode(text, &EncodeOptions::default()).unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let tokens: Vec<String> = serde_json::from_value(case["tokens"].clone()).unwrap();
            assert_eq!(encoding.get_ids(), ids, "{name}: ids of {text:?}");
            assert_eq!(encoding.get_tokens(), tokens, "{name}: tokens of {text:?}");
            for (skip, key) in [(false, "decode"), (true, "decode_skip_special")] {
                assert_eq!(
                    tokenizer.decode(&ids, skip).unwrap(),
                    case[key].as_str().unwrap(),
                    "{name}: {key} of {text:?}"
                );
            }
        }
    }
}

#[test]
fn special_tokens_are_one_id_and_bos_is_added_where_llama_cpp_adds_it() {
    let (file, _) = fixture("qwen2");
    let qwen2 = Tokenizer::from_gguf(file.header()).unwrap();
    let ids = |tokenizer: &Tokenizer, text: &str| {
        let encoding = tokenizer.encode(text, &EncodeOptions::default()).unwrap();
        encoding.get_ids().to_vec()
    };
    let im_start = qwen2.token_to_id("<|im_start|>").unwrap();
    assert_eq!(ids(&qwen2, "<|im_start|>"), [im_start]);
    assert_eq!(qwen2.eos_id(), qwen2.token_to_id("<|im_end|>"));
    assert_eq!(qwen2.pad_id(), qwen2.token_to_id("<|endoftext|>"));
    // <think> is USER_DEFINED: matched whole, kept by a decode that skips special tokens.
    let think = qwen2.token_to_id("<think>").unwrap();
    assert_eq!(ids(&qwen2, "<think>"), [think]);
    assert_eq!(qwen2.decode(&[im_start, think], true).unwrap(), "<think>");

    let (file, _) = fixture("llama-bpe");
    let llama3 = Tokenizer::from_gguf(file.header()).unwrap();
    let bos = llama3.token_to_id("<|begin_of_text|>").unwrap();
    assert_eq!(ids(&llama3, "")[..], [bos]);
    let (file, _) = fixture("llama-spm");
    let spm = Tokenizer::from_gguf(file.header()).unwrap();
    assert_eq!(ids(&spm, "")[..], [1]);
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    for name in ["qwen2", "llama-bpe"] {
        let (file, reference) = fixture(name);
        let template = ChatTemplate::from_gguf(file.header()).unwrap().unwrap();
        let chat = &reference["chat"];
        let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let mut variables = serde_json::Map::new();
        variables.insert("date_string".into(), "26 Jul 2024".into());
        let rendered = template.render_with(&messages, true, &variables).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{name}");
    }
    let (file, _) = fixture("gpt2");
    assert!(ChatTemplate::from_gguf(file.header()).unwrap().is_none());
}

/// The metadata of a four-token byte-level BPE: `a`, `b`, `ab` (merged from `a b`) and a
/// control token.
fn byte_level_metadata() -> BTreeMap<String, GgufValue> {
    let strings = |items: &[&str]| {
        GgufValue::Array(
            items
                .iter()
                .map(|s| GgufValue::String(s.to_string()))
                .collect(),
        )
    };
    BTreeMap::from([
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            GgufValue::String("gpt-2".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            strings(&["a", "b", "ab", "<|end|>"]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array([1, 1, 1, 3].map(GgufValue::I32).to_vec()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&["a b"])),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(3)),
    ])
}

/// A SentencePiece vocabulary whose scores merge `a b` before `▁ ab`.
fn sentencepiece_metadata() -> BTreeMap<String, GgufValue> {
    let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab"];
    BTreeMap::from([
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.map(|t| GgufValue::String(t.into())).to_vec()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(
                [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
                    .map(GgufValue::F32)
                    .to_vec(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array([2, 3, 3, 1, 1, 1, 1, 1].map(GgufValue::I32).to_vec()),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0)),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
    ])
}

fn header(metadata: BTreeMap<String, GgufValue>) -> GgufHeader {
    GgufHeader {
        version: 3,
        metadata,
        tensors: Vec::new(),
    }
}

#[test]
fn well_formed_metadata_of_either_model_builds_a_tokenizer() {
    let options = EncodeOptions::default();
    let bpe = Tokenizer::from_gguf(&header(byte_level_metadata())).unwrap();
    assert_eq!(bpe.encode("ab<|end|>", &options).unwrap().get_ids(), [2, 3]);
    // A file that names no pre-tokenizer splits as llama.cpp's `default`, as llama.cpp reads it.
    let mut unnamed = byte_level_metadata();
    unnamed.remove("tokenizer.ggml.pre");
    let mut named = byte_level_metadata();
    named.insert(
        "tokenizer.ggml.pre".into(),
        GgufValue::String("default".into()),
    );
    let text = "ab, ab;ab<|end|> ab";
    let ids = |metadata| {
        Tokenizer::from_gguf(&header(metadata))
            .unwrap()
            .encode(text, &options)
            .unwrap()
            .get_ids()
            .to_vec()
    };
    assert_eq!(ids(unnamed), ids(named));
    let spm = Tokenizer::from_gguf(&header(sentencepiece_metadata())).unwrap();
    // BOS by default, the dummy prefix, `a b` merged before `▁ ab`; `c`, without a byte token,
    // unknown.
    let ids = spm.encode("ab ab c", &options).unwrap().get_ids().to_vec();
    assert_eq!(ids, [1, 7, 7, 3, 0]);
    // <s> and <unk> are special; the prefix's space is stripped.
    assert_eq!(spm.decode(&ids, true).unwrap(), "ab ab ");
}

#[test]
fn malformed_metadata_is_an_error_that_names_the_key() {
    type Edit = fn(&mut BTreeMap<String, GgufValue>);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no model",
            |m| drop(m.remove("tokenizer.ggml.model")),
            "no `tokenizer.ggml.model`",
        ),
        (
            "unknown model",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.model".into(),
                    GgufValue::String("t5".into()),
                ))
            },
            "tokenizer.ggml.model is `t5`",
        ),
        (
            "unknown pre",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.pre".into(),
                    GgufValue::String("mystery".into()),
                ))
            },
            "tokenizer.ggml.pre is `mystery`",
        ),
        (
            "pre not a string",
            |m| drop(m.insert("tokenizer.ggml.pre".into(), GgufValue::U32(1))),
            "`tokenizer.ggml.pre` is an integer, not a string",
        ),
        (
            "model not a string",
            |m| drop(m.insert("tokenizer.ggml.model".into(), GgufValue::U8(1))),
            "`tokenizer.ggml.model` is an integer",
        ),
        (
            "tokens not an array",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.tokens".into(),
                    GgufValue::String("a".into()),
                ))
            },
            "`tokenizer.ggml.tokens` is a string, not an array",
        ),
        (
            "no tokens",
            |m| drop(m.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(Vec::new()))),
            "holds 0 tokens",
        ),
        (
            "a token not a string",
            |m| {
                if let Some(GgufValue::Array(tokens)) = m.get_mut("tokenizer.ggml.tokens") {
                    tokens[1] = GgufValue::I32(7);
                }
            },
            "`tokenizer.ggml.tokens[1]` is an integer",
        ),
        (
            "a token twice",
            |m| {
                if let Some(GgufValue::Array(tokens)) = m.get_mut("tokenizer.ggml.tokens") {
                    tokens[2] = GgufValue::String("a".into());
                }
            },
            "in tokenizer.ggml.tokens twice (ids 0 and 2)",
        ),
        (
            "types short",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.token_type".into(),
                    GgufValue::Array(vec![GgufValue::I32(1)]),
                ))
            },
            "`tokenizer.ggml.token_type` holds 1 values for 4 tokens",
        ),
        (
            "a negative type",
            |m| {
                if let Some(GgufValue::Array(types)) = m.get_mut("tokenizer.ggml.token_type") {
                    types[0] = GgufValue::I32(-1);
                }
            },
            "no token type",
        ),
        (
            "a merge of an unknown token",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.merges".into(),
                    GgufValue::Array(vec![GgufValue::String("a z".into())]),
                ))
            },
            "names \"z\", which is not in tokenizer.ggml.tokens",
        ),
        (
            "a merge of one token",
            |m| {
                drop(m.insert(
                    "tokenizer.ggml.merges".into(),
                    GgufValue::Array(vec![GgufValue::String("ab".into())]),
                ))
            },
            "not two tokens split by a space",
        ),
        (
            "no merges",
            |m| drop(m.remove("tokenizer.ggml.merges")),
            "no `tokenizer.ggml.merges`",
        ),
        (
            "an id out of range",
            |m| drop(m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(4))),
            "tokenizer.ggml.eos_token_id is U32(4), not the id of one of its 4 tokens",
        ),
        (
            "a negative id",
            |m| drop(m.insert("tokenizer.ggml.padding_token_id".into(), GgufValue::I32(-1))),
            "tokenizer.ggml.padding_token_id is I32(-1)",
        ),
        (
            "BOS added but unnamed",
            |m| drop(m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true))),
            "add_bos_token is set but tokenizer.ggml.bos_token_id is missing",
        ),
        (
            "a flag not a boolean",
            |m| drop(m.insert("tokenizer.ggml.add_eos_token".into(), GgufValue::U8(1))),
            "`tokenizer.ggml.add_eos_token` is an integer, not a boolean",
        ),
    ];
    for (case, edit, expected) in cases {
        let mut metadata = byte_level_metadata();
        edit(&mut metadata);
        let error = Tokenizer::from_gguf(&header(metadata)).unwrap_err();
        assert!(matches!(error, Error::InvalidWeights(_)), "{case}: {error}");
        assert!(error.to_string().contains(expected), "{case}: {error}");
    }
}

#[test]
fn malformed_sentencepiece_scores_are_an_error_that_names_them() {
    let cases: [(&str, Option<GgufValue>, &str); 3] = [
        ("no scores", None, "no `tokenizer.ggml.scores`"),
        (
            "scores short",
            Some(GgufValue::Array(vec![GgufValue::F32(0.0)])),
            "`tokenizer.ggml.scores` holds 1 values for 8 tokens",
        ),
        (
            "scores not floats",
            Some(GgufValue::Array([0; 8].map(GgufValue::I32).to_vec())),
            "not a float",
        ),
    ];
    for (case, scores, expected) in cases {
        let mut metadata = sentencepiece_metadata();
        metadata.remove("tokenizer.ggml.scores");
        if let Some(scores) = scores {
            metadata.insert("tokenizer.ggml.scores".into(), scores);
        }
        let error = Tokenizer::from_gguf(&header(metadata)).unwrap_err();
        assert!(matches!(error, Error::InvalidWeights(_)), "{case}: {error}");
        assert!(error.to_string().contains(expected), "{case}: {error}");
    }
}

#[test]
fn a_chat_template_that_is_no_string_is_an_error() {
    let mut metadata = byte_level_metadata();
    metadata.insert("tokenizer.chat_template".into(), GgufValue::U8(0));
    let error = ChatTemplate::from_gguf(&header(metadata)).unwrap_err();
    assert!(matches!(error, Error::InvalidWeights(_)), "{error}");
}
