//! Writing GGUF files (`Pretrained::save_gguf`, `ferroformers convert`): the decoder fixtures
//! written here against the files llama.cpp's own tools wrote from the same checkpoints
//! (`tests/fixtures/gguf/`, by `convert_hf_to_gguf.py` and `llama-quantize` from the
//! llama-cpp-python 0.3.36 sdist), key by key and byte by byte; and the files read back.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use ferroformers::loading::gguf::{GgmlType, GgufFile, GgufValue};
use ferroformers::{AutoModelForCausalLM, FromPretrained, HubOptions, LoadOptions, Pretrained};
use ferroformers::{Tensor, WeightType};

const FAMILIES: [&str; 4] = ["llama", "qwen2", "qwen3", "gpt2"];

fn options() -> LoadOptions {
    LoadOptions::default().with_hub(HubOptions::default().with_offline(true))
}

/// The decoder fixture of `family` written as a GGUF file of `outtype` in `folder`.
fn written(family: &str, outtype: GgmlType, folder: &Path) -> PathBuf {
    let path = folder.join(format!("{family}-{}.gguf", outtype.name()));
    let pretrained =
        Pretrained::open(&fixture_model(&format!("{family}/lm-head")), &options().hub).unwrap();
    pretrained.save_gguf(outtype, &path).unwrap();
    path
}

/// The keys in which a file written here may differ from the converter's, and why:
/// - `general.name`: the converter names the model after the folder it converted, which
///   `make_fixtures.py` named after the family (`Llama`); here it is the fixture's folder;
/// - `tokenizer.ggml.add_eos_token`: written here always, from what the tokenizer does; the
///   converter leaves it out when its parse of the post-processor finds no trailing token
///   (llama.cpp then assumes false, the value written here);
/// - `tokenizer.ggml.add_sep_token`: the converter's guess from a pair template, which only
///   rerankers read; not written here.
const KEYS_THAT_MAY_DIFFER: [&str; 3] = [
    "general.name",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_sep_token",
];

/// Every metadata key of `ours` and `theirs` equal, but the few of [`KEYS_THAT_MAY_DIFFER`],
/// and those false where only one file has them.
fn assert_same_metadata(ours: &GgufFile, theirs: &GgufFile, what: &str) {
    let (ours, theirs) = (&ours.header().metadata, &theirs.header().metadata);
    let keys: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    let mut compared = 0;
    for key in keys {
        match (ours.get(key), theirs.get(key)) {
            (Some(a), Some(b)) if !KEYS_THAT_MAY_DIFFER.contains(&key.as_str()) => {
                assert_eq!(a, b, "{what}: `{key}`");
                compared += 1;
            }
            (Some(_), Some(_)) => {}
            (one, other) => {
                assert!(
                    KEYS_THAT_MAY_DIFFER.contains(&key.as_str()),
                    "{what}: `{key}` is only in {} file",
                    if one.is_some() {
                        "our"
                    } else {
                        "the converter's"
                    }
                );
                let value = one.or(other).unwrap();
                if key.starts_with("tokenizer.ggml.add_") {
                    assert_eq!(value, &GgufValue::Bool(false), "{what}: `{key}`");
                }
            }
        }
    }
    assert!(compared > 20, "{what}: only {compared} keys compared");
}

/// The tensors of `ours` and `theirs` by name: those of the same type and dims must hold the
/// same bytes; the names whose type differs are returned.
fn tensors_that_differ_in_type(ours: &GgufFile, theirs: &GgufFile, what: &str) -> Vec<String> {
    let names = |file: &GgufFile| -> BTreeSet<String> {
        file.header()
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(names(ours), names(theirs), "{what}: the tensors");
    let mut other_type = Vec::new();
    for tensor in &ours.header().tensors {
        let their = theirs.tensor(&tensor.name).unwrap();
        assert_eq!(tensor.dims, their.dims, "{what}: dims of {}", tensor.name);
        if tensor.ggml_type != their.ggml_type {
            other_type.push(tensor.name.clone());
            continue;
        }
        assert!(
            ours.data(tensor) == theirs.data(their),
            "{what}: the bytes of {} ({:?})",
            tensor.name,
            tensor.ggml_type
        );
    }
    other_type
}

#[test]
fn f32_files_are_the_converters() {
    let scratch = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let ours = GgufFile::open(&written(family, GgmlType::F32, scratch.path())).unwrap();
        let theirs = GgufFile::open(&fixture(&format!("gguf/{family}-f32.gguf"))).unwrap();
        assert_same_metadata(&ours, &theirs, family);
        let differ = tensors_that_differ_in_type(&ours, &theirs, family);
        assert!(differ.is_empty(), "{family}: {differ:?} of another type");
    }
}

#[test]
fn quantized_files_hold_llama_quantizes_blocks() {
    // llama-quantize (no --pure) keeps the Q4_0 file's output matrix in Q8_0; every other
    // matrix, and every tensor of the Q8_0 file, is bit for bit what it wrote.
    let scratch = tempfile::tempdir().unwrap();
    for (outtype, file, kept_apart) in [
        (GgmlType::Q8_0, "llama-q8_0.gguf", vec![]),
        (
            GgmlType::Q4_0,
            "llama-q4_0.gguf",
            vec!["output.weight".to_string()],
        ),
    ] {
        let what = format!("llama {}", outtype.name());
        let ours = GgufFile::open(&written("llama", outtype, scratch.path())).unwrap();
        let theirs = GgufFile::open(&fixture(&format!("gguf/{file}"))).unwrap();
        assert_same_metadata(&ours, &theirs, &what);
        assert_eq!(
            tensors_that_differ_in_type(&ours, &theirs, &what),
            kept_apart,
            "{what}"
        );
        let blocks = ours
            .header()
            .tensors
            .iter()
            .filter(|t| t.ggml_type == outtype)
            .count();
        assert_eq!(
            blocks, 16,
            "{what}: 2 layers' 7 matrices, the embeddings and the output"
        );
    }
}

#[test]
fn f32_gguf_files_requantize_as_llama_quantize_does() {
    // From the converter's F32 file of the Llama fixture, as llama-quantize made the Q8_0 and
    // Q4_0 files from it: the same metadata, and its blocks (its Q4_0 file keeps the output
    // matrix in Q8_0).
    let scratch = tempfile::tempdir().unwrap();
    let f32_file = fixture("gguf/llama-f32.gguf");
    let source = Pretrained::open(f32_file.to_str().unwrap(), &options().hub).unwrap();
    for (outtype, file, kept_apart) in [
        (GgmlType::Q8_0, "llama-q8_0.gguf", vec![]),
        (
            GgmlType::Q4_0,
            "llama-q4_0.gguf",
            vec!["output.weight".to_string()],
        ),
    ] {
        let what = format!("llama f32 GGUF to {}", outtype.name());
        let path = scratch.path().join(format!("{}.gguf", outtype.name()));
        source.save_gguf(outtype, &path).unwrap();
        let ours = GgufFile::open(&path).unwrap();
        let theirs = GgufFile::open(&fixture(&format!("gguf/{file}"))).unwrap();
        assert_eq!(ours.header().metadata, theirs.header().metadata, "{what}");
        assert_eq!(
            tensors_that_differ_in_type(&ours, &theirs, &what),
            kept_apart,
            "{what}"
        );
    }
}

#[test]
fn each_matrix_takes_the_outtype_and_the_rest_stays_f32() {
    let scratch = tempfile::tempdir().unwrap();
    for outtype in ferroformers::GGUF_OUTTYPES {
        let path = written("gpt2", outtype, scratch.path());
        let file = GgufFile::open(&path).unwrap();
        for tensor in &file.header().tensors {
            let matrix = tensor.dims.len() == 2 && tensor.name != "position_embd.weight";
            let expected = if matrix { outtype } else { GgmlType::F32 };
            assert_eq!(
                tensor.ggml_type,
                expected,
                "{} {}",
                outtype.name(),
                tensor.name
            );
        }
        let file_type = file.header().metadata["general.file_type"]
            .to_u64()
            .unwrap();
        let expected = match outtype {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
            _ => 32,
        };
        assert_eq!(file_type, expected, "{}: llama_ftype", outtype.name());
    }
}

/// The last position's logits of each fixture prompt.
fn last_logits(model: &AutoModelForCausalLM, family: &str) -> Tensor {
    let reference = reference(&format!("{family}/lm-head"));
    let (ids, mask) = ids_and_mask(&reference);
    model.forward_last(&ids, Some(&mask), None).unwrap()
}

#[test]
fn written_files_load_as_the_quantized_checkpoint() {
    // A tied Llama-style head is quantized at load from the embeddings, and the embeddings
    // read back from its blocks: a file whose embeddings are those blocks is then the same
    // model, bit for bit. (Llama's fixture has a head of its own, and GPT-2 keeps `wte` in
    // f32 beside its quantized head: their f32 embeddings differ from the file's.)
    let scratch = tempfile::tempdir().unwrap();
    for family in ["qwen2", "qwen3"] {
        for (outtype, weight_type) in [
            (GgmlType::Q8_0, WeightType::Q8_0),
            (GgmlType::Q4_0, WeightType::Q4_0),
        ] {
            let what = format!("{family} {}", outtype.name());
            let path = written(family, outtype, scratch.path());
            let from_file =
                AutoModelForCausalLM::from_pretrained(path.to_str().unwrap(), &options()).unwrap();
            let at_load = AutoModelForCausalLM::from_pretrained(
                &fixture_model(&format!("{family}/lm-head")),
                &options().with_weight_type(weight_type),
            )
            .unwrap();
            let ours = last_logits(&from_file, family);
            let values = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{what}: finite logits"
            );
            let theirs = last_logits(&at_load, family).flatten_all().unwrap();
            eprintln!(
                "{what}: block kernels on {:?}",
                ferroformers::kernels::isa::Isa::best()
            );
            assert!(
                values == theirs.to_vec1::<f32>().unwrap(),
                "{what}: the file's logits are --dtype {weight_type}'s"
            );
        }
    }
}

#[test]
fn written_tokenizers_read_back_as_tokenizer_json() {
    // The file's tokenizer (no tokenizer.json beside it) against the fixture's tokenizer.json.
    let scratch = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let path = written(family, GgmlType::F32, scratch.path());
        let from_metadata = Pretrained::open(path.to_str().unwrap(), &options().hub)
            .unwrap()
            .tokenizer()
            .unwrap();
        let from_json = ferroformers::Tokenizer::from_pretrained(
            &fixture_model(&format!("{family}/lm-head")),
            &options().hub,
        )
        .unwrap();
        for text in [
            "Hello world, 12345 tokens!",
            "  spaces\tand\nlines  ",
            "naïve café: ünïcode",
        ] {
            let ids = |t: &ferroformers::Tokenizer| {
                t.inner().encode(text, true).unwrap().get_ids().to_vec()
            };
            let expected = ids(&from_json);
            assert!(expected.len() > 4, "{family}: {text:?} is several tokens");
            assert_eq!(ids(&from_metadata), expected, "{family}: {text:?}");
        }
    }
}

#[test]
fn what_cannot_be_written_is_an_error() {
    let scratch = tempfile::tempdir().unwrap();
    let error_of = |model: &str, outtype: GgmlType| {
        let pretrained = Pretrained::open(model, &options().hub).unwrap();
        let path = scratch.path().join(format!("{}.gguf", outtype.name()));
        pretrained
            .save_gguf(outtype, &path)
            .unwrap_err()
            .to_string()
    };
    let quantized = fixture("gguf/llama-q8_0.gguf");
    for (model, outtype, expected) in [
        (
            quantized.to_str().unwrap().to_string(),
            GgmlType::Q4_0,
            "quantized already",
        ),
        (
            fixture_model("llama/lm-head"),
            GgmlType::Q4_K,
            "llama-quantize",
        ),
        (
            fixture_model("bert/base"),
            GgmlType::F32,
            "not written as GGUF",
        ),
    ] {
        let error = error_of(&model, outtype);
        assert!(error.contains(expected), "{model}: {error}");
    }
    // Nothing is left behind by a failed write.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// The tokenizers whose folders `make_fixtures.py --only gguf-tokenizers` converted with
/// llama.cpp's converter (`gguf/tokenizers/<name>/` beside the `<name>.gguf` it wrote).
const TOKENIZERS: [&str; 5] = ["gpt2", "qwen2", "llama-bpe", "smollm", "llama-spm"];

#[test]
fn tokenizer_metadata_is_the_converters() {
    use ferroformers::loading::gguf::GgufHeader;
    use ferroformers::{ModelSource, Tokenizer};
    for name in TOKENIZERS {
        let folder = fixture(&format!("gguf/tokenizers/{name}"));
        let source = ModelSource::Folder(folder.clone());
        let config = fixture_json(&format!("gguf/tokenizers/{name}/config.json"));
        let vocab_size = config["vocab_size"].as_u64().unwrap() as usize;
        let tokenizer = Tokenizer::from_source(&source).unwrap();
        let ours: std::collections::BTreeMap<String, GgufValue> = tokenizer
            .gguf_metadata(&source, vocab_size)
            .unwrap()
            .into_iter()
            .collect();
        let converted = GgufFile::open(&fixture(&format!("gguf/tokenizers/{name}.gguf"))).unwrap();
        let theirs = &converted.header().metadata;
        let mut compared = Vec::new();
        for (key, value) in theirs.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
            match key.as_str() {
                "tokenizer.ggml.add_sep_token" => continue,
                "tokenizer.ggml.scores" => {
                    assert_same_merge_order(
                        &ours[key],
                        value,
                        &theirs["tokenizer.ggml.token_type"],
                        name,
                    );
                }
                _ => assert_eq!(ours.get(key), Some(value), "{name}: `{key}`"),
            }
            compared.push(key.as_str());
        }
        assert!(
            compared.contains(&"tokenizer.ggml.tokens"),
            "{name}: {compared:?}"
        );
        for key in ours.keys().filter(|k| !theirs.contains_key(*k)) {
            assert_eq!(
                key, "tokenizer.ggml.add_eos_token",
                "{name}: only ours has `{key}`"
            );
            assert_eq!(ours[key], GgufValue::Bool(false), "{name}: `{key}`");
        }

        // Read back, the metadata tokenizes as `tokenizers` did with the folder's tokenizer.
        let header = GgufHeader {
            version: 3,
            metadata: ours,
            tensors: Vec::new(),
        };
        let from_metadata = Tokenizer::from_gguf(&header).unwrap();
        let reference = fixture_json(&format!("gguf/tokenizers/{name}.json"));
        for case in reference["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u64> = from_metadata
                .inner()
                .encode(text, true)
                .unwrap()
                .get_ids()
                .iter()
                .map(|&id| id.into())
                .collect();
            let expected: Vec<u64> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap())
                .collect();
            assert_eq!(ids, expected, "{name}: {text:?}");
        }
    }
}

/// SentencePiece scores: ours, from the merges' ranks, order the tokens that merges make
/// (NORMAL tokens of more than one character) as `tokenizer.model`'s scores do.
fn assert_same_merge_order(ours: &GgufValue, theirs: &GgufValue, types: &GgufValue, name: &str) {
    let floats = |value: &GgufValue| -> Vec<f64> {
        let GgufValue::Array(values) = value else {
            panic!("{name}: scores are an array")
        };
        values.iter().map(|v| v.to_f64().unwrap()).collect()
    };
    let GgufValue::Array(types) = types else {
        panic!("{name}: token types are an array")
    };
    let (ours, theirs) = (floats(ours), floats(theirs));
    assert_eq!(ours.len(), theirs.len(), "{name}: scores");
    let mut merged: Vec<usize> = (0..ours.len())
        .filter(|&id| types[id].to_u64() == Some(1) && ours[id] > -(ours.len() as f64))
        .collect();
    assert!(merged.len() > 100, "{name}: {} merged tokens", merged.len());
    merged.sort_by(|&a, &b| ours[b].total_cmp(&ours[a]));
    let out_of_order = merged
        .windows(2)
        .filter(|pair| theirs[pair[0]] <= theirs[pair[1]])
        .count();
    assert_eq!(
        out_of_order, 0,
        "{name}: merged tokens ordered otherwise than by their scores"
    );
}
