//! The `tokenizer.ggml.*` metadata of a tokenizer, as llama.cpp's converter writes it from
//! the same tokenizer files (`TextModel.get_vocab_base` and gguf-py's `SpecialVocab`, in the
//! llama-cpp-python 0.3.36 sdist on PyPI), so that a GGUF file written here tokenizes in
//! llama.cpp as the model's tokenizer.json does, and reads back here through
//! [`Tokenizer::from_gguf`]. The reader's two forms:
//! - `gpt2`: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): tokens and merges;
//! - `llama`: SentencePiece BPE as transformers writes it to tokenizer.json (Llama 2,
//!   TinyLlama, Mistral v0.1: byte fallback, spaces as `▁`): tokens and scores. llama.cpp
//!   merges the pair whose joined token scores highest. The converter takes the scores from
//!   `tokenizer.model` (without it, it stopped on this repository's SentencePiece fixture
//!   folder, and its tokenizer.json fallback, gguf-py's `LlamaHfVocab`, scores every token
//!   -1000, which leaves llama.cpp no order to merge in); here each token that a merge makes
//!   scores minus the rank of the first merge that makes it, so that llama.cpp's order is the
//!   merges' order.
//!
//! Where the converter guesses from the files (its parse of the post-processor for
//! `add_bos_token`), this asks the tokenizer: BOS is added when encoding with special tokens
//! puts it first. `pre`, which the converter finds by hashing the ids of a check text among
//! the released models it knows, is here the split of [`byte_level_split`] that the
//! tokenizer's pre-tokenizer is.

use std::collections::HashMap;

use serde_json::Value;

use super::{byte_level_split, BYTE_LEVEL_PRES};
use crate::error::{Error, Result};
use crate::loading::gguf::GgufValue;
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;
use crate::tokenizer::chat_template::ChatTemplate;
use crate::tokenizer::{Tokenizer, TokenizerConfig};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The score the converter gives control and added tokens, which llama.cpp never merges to.
const UNMERGED_SCORE: f32 = -1000.0;

/// The special tokens the converter looks for, by its names, with the key each is written
/// under.
const SPECIALS: [(&str, &str); 7] = [
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

/// Which of llama.cpp's tokenizer models a tokenizer is.
enum Form {
    /// `gpt2`, split as the `pre` named.
    ByteLevel { pre: &'static str },
    /// `llama`, with a `▁` put before the text or not.
    SentencePiece { add_space_prefix: bool },
}

impl Tokenizer {
    /// The `tokenizer.ggml.*` entries (and `tokenizer.chat_template`) of this tokenizer, read
    /// from `source`, for a model of `vocab_size` rows: ids the tokenizer lacks are written as
    /// unused `[PAD<id>]` tokens, as the converter writes them. A tokenizer of neither form
    /// (see the module) is an [`Error::InvalidInput`].
    pub fn gguf_metadata(
        &self,
        source: &ModelSource,
        vocab_size: usize,
    ) -> Result<Vec<(String, GgufValue)>> {
        let form = self.llama_cpp_form()?;
        let model = to_json(self.inner().get_model(), "the BPE model")?;
        let merges = merges(&model)?;
        let (tokens, types) = self.typed_tokens(&form, &model, vocab_size)?;
        let mut metadata = match form {
            Form::ByteLevel { pre } => vec![
                entry("tokenizer.ggml.model", "gpt2".into()),
                entry("tokenizer.ggml.pre", pre.into()),
                entry("tokenizer.ggml.tokens", strings(&tokens)),
                entry("tokenizer.ggml.token_type", kinds(&types)),
                entry(
                    "tokenizer.ggml.merges",
                    GgufValue::Array(
                        merges
                            .iter()
                            .map(|(l, r)| format!("{l} {r}").into())
                            .collect(),
                    ),
                ),
            ],
            Form::SentencePiece { add_space_prefix } => {
                let scores = scores(&tokens, &types, &merges);
                vec![
                    entry(
                        "tokenizer.ggml.add_space_prefix",
                        GgufValue::Bool(add_space_prefix),
                    ),
                    entry("tokenizer.ggml.model", "llama".into()),
                    entry("tokenizer.ggml.pre", "default".into()),
                    entry("tokenizer.ggml.tokens", strings(&tokens)),
                    entry(
                        "tokenizer.ggml.scores",
                        GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
                    ),
                    entry("tokenizer.ggml.token_type", kinds(&types)),
                ]
            }
        };
        let added = self.inner().get_added_tokens_decoder();
        let mut added_by_id: Vec<(u32, &str)> = added
            .iter()
            .map(|(&id, token)| (id, token.content.as_str()))
            .collect();
        added_by_id.sort_unstable();
        for (key, id) in special_ids(source, &added_by_id)? {
            metadata.push(entry(&format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
        }
        let (add_bos, add_eos) = self.adds_bos_and_eos(&metadata)?;
        metadata.push(entry(
            "tokenizer.ggml.add_bos_token",
            GgufValue::Bool(add_bos),
        ));
        metadata.push(entry(
            "tokenizer.ggml.add_eos_token",
            GgufValue::Bool(add_eos),
        ));
        if let Some(template) = ChatTemplate::from_source(source, None)? {
            metadata.push(entry("tokenizer.chat_template", template.source().into()));
        }
        Ok(metadata)
    }

    /// Which form the tokenizer is: BPE with a byte-level decoder split as one of the `pre`s
    /// (offsets aside, which do not change ids), or BPE with byte fallback over text whose
    /// spaces are `▁` (transformers' Llama tokenizer.json: a normaliser that replaces them,
    /// after prepending one or not, and no pre-tokenizer).
    fn llama_cpp_form(&self) -> Result<Form> {
        let inner = self.inner();
        if let tokenizers::ModelWrapper::BPE(bpe) = inner.get_model() {
            if matches!(
                inner.get_decoder(),
                Some(tokenizers::DecoderWrapper::ByteLevel(_))
            ) {
                let ours = inner.get_pre_tokenizer().map(without_offsets).transpose()?;
                for pre in BYTE_LEVEL_PRES {
                    let theirs = without_offsets(&byte_level_split(pre)?.pre_tokenizer)?;
                    if ours.as_ref() == Some(&theirs) {
                        return Ok(Form::ByteLevel { pre });
                    }
                }
            }
            if bpe.byte_fallback && inner.get_pre_tokenizer().is_none() {
                if let Some(add_space_prefix) = inner
                    .get_normalizer()
                    .map(|n| to_json(n, "the normaliser"))
                    .transpose()?
                    .as_ref()
                    .and_then(sentencepiece_spaces)
                {
                    return Ok(Form::SentencePiece { add_space_prefix });
                }
            }
        }
        Err(Error::InvalidInput(format!(
            "the tokenizer is neither byte-level BPE split as one of llama.cpp's \
             pre-tokenizers that this library writes ({}) nor SentencePiece BPE as \
             transformers writes Llama's tokenizer.json; convert this model with llama.cpp's \
             convert_hf_to_gguf.py",
            BYTE_LEVEL_PRES.join(", ")
        )))
    }

    /// Every id below `vocab_size` with its token and llama.cpp's type of it, as
    /// `get_vocab_base` types them (and, for SentencePiece, the unknown and byte tokens as
    /// `tokenizer.model` types them).
    fn typed_tokens(
        &self,
        form: &Form,
        model: &Value,
        vocab_size: usize,
    ) -> Result<(Vec<String>, Vec<i32>)> {
        let inner = self.inner();
        let vocab = inner.get_vocab(true);
        let added = inner.get_added_tokens_decoder();
        let unknown = model.get("unk_token").and_then(Value::as_str);
        let sentencepiece = matches!(form, Form::SentencePiece { .. });
        let mut by_id: Vec<Option<&str>> = vec![None; vocab_size];
        for (token, &id) in &vocab {
            let slot = by_id.get_mut(id as usize).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "the tokenizer's token {token:?} has id {id}, past the model's \
                     vocab_size {vocab_size}"
                ))
            })?;
            *slot = Some(token);
        }
        Ok(by_id
            .iter()
            .enumerate()
            .map(|(id, token)| match (token, added.get(&(id as u32))) {
                (None, _) => (format!("[PAD{id}]"), UNUSED),
                (Some(token), Some(added)) if added.special || looks_special(token) => {
                    (token.to_string(), CONTROL)
                }
                // The converter writes SentencePiece's space as a space in added tokens.
                (Some(token), Some(_)) => (token.replace('▁', " "), USER_DEFINED),
                (Some(token), None) if sentencepiece && Some(*token) == unknown => {
                    (token.to_string(), UNKNOWN)
                }
                (Some(token), None) if sentencepiece && is_byte_token(token) => {
                    (token.to_string(), BYTE)
                }
                (Some(token), None) => (token.to_string(), NORMAL),
            })
            .unzip())
    }

    /// Whether encoding with special tokens adds the BOS and EOS that `metadata` names.
    fn adds_bos_and_eos(&self, metadata: &[(String, GgufValue)]) -> Result<(bool, bool)> {
        let id = |key: &str| {
            metadata
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.to_u64())
        };
        let encode = |special: bool| {
            self.inner()
                .encode("a", special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::tokenizer("cannot encode a check text", e))
        };
        let (plain, special) = (encode(false)?, encode(true)?);
        let added = special.len() > plain.len();
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let first = special.first().map(|&i| u64::from(i));
        let last = special.last().map(|&i| u64::from(i));
        Ok((
            added && bos.is_some() && first == bos,
            added && eos.is_some() && last == eos,
        ))
    }
}

/// The converter's special token ids: each `<kind>_token` of `tokenizer_config.json` (BOS
/// falling back to CLS, EOS to SEP) that is an added token, else `config.json`'s
/// `<kind>_token_id`. `added` is the added tokens by id.
fn special_ids(source: &ModelSource, added: &[(u32, &str)]) -> Result<Vec<(&'static str, u32)>> {
    let config = TokenizerConfig::read(source.get("tokenizer_config.json")?.as_deref())?;
    let model_config: Value = match source.get("config.json")? {
        Some(path) => read_json(&path)?,
        None => Value::Null,
    };
    let content = |kind: &str| {
        let token = match kind {
            "bos" => config.bos_token.as_ref().or(config.cls_token.as_ref()),
            "eos" => config.eos_token.as_ref().or(config.sep_token.as_ref()),
            "unk" => config.unk_token.as_ref(),
            "sep" => config.sep_token.as_ref(),
            "pad" => config.pad_token.as_ref(),
            "cls" => config.cls_token.as_ref(),
            _ => config.mask_token.as_ref(),
        };
        token.map(|t| t.content().to_string())
    };
    let mut ids = Vec::new();
    for (kind, key) in SPECIALS {
        let from_added = content(kind).and_then(|content| {
            added
                .iter()
                .find(|(_, token)| *token == content)
                .map(|&(id, _)| id)
        });
        let from_config = || {
            model_config
                .get(format!("{kind}_token_id"))
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
        };
        if let Some(id) = from_added.or_else(from_config) {
            ids.push((key, id));
        }
    }
    Ok(ids)
}

/// Added tokens that the converter types CONTROL though they are not marked special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// A pre-tokenizer as JSON without `trim_offsets`, which changes offsets but not ids.
fn without_offsets(pre: &tokenizers::PreTokenizerWrapper) -> Result<Value> {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("trim_offsets");
                map.values_mut().for_each(strip);
            }
            Value::Array(values) => values.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = to_json(pre, "the pre-tokenizer")?;
    strip(&mut value);
    Ok(value)
}

fn entry(key: &str, value: GgufValue) -> (String, GgufValue) {
    (key.to_string(), value)
}

/// The BPE merges in rank order as pairs, spaces inside a token written as U+0120 (the
/// converter's encoding of tokenizers' pair form, where a token may hold a space).
fn merges(model: &Value) -> Result<Vec<(String, String)>> {
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::InvalidInput("the tokenizer's BPE model has no merges".into()))?;
    let side = |part: &Value| part.as_str().map(|text| text.replace(' ', "\u{120}"));
    merges
        .iter()
        .map(|merge| {
            let pair = match merge {
                Value::String(merge) => merge
                    .split_once(' ')
                    .map(|(l, r)| (l.to_string(), r.to_string())),
                Value::Array(pair) if pair.len() == 2 => side(&pair[0]).zip(side(&pair[1])),
                _ => None,
            };
            pair.ok_or_else(|| {
                Error::InvalidInput(format!(
                    "the tokenizer's BPE merge {merge} is neither `a b` nor a pair"
                ))
            })
        })
        .collect()
}

/// SentencePiece scores: a token that a merge makes scores minus the rank of the first merge
/// that makes it; the others (single characters, bytes: never a merge's result) score below
/// every merge's, and control and added tokens as the converter scores them.
fn scores(tokens: &[String], types: &[i32], merges: &[(String, String)]) -> Vec<f32> {
    let mut first_rank: HashMap<String, usize> = HashMap::with_capacity(merges.len());
    for (rank, (left, right)) in merges.iter().enumerate() {
        first_rank.entry(format!("{left}{right}")).or_insert(rank);
    }
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(id, (token, &kind))| match kind {
            CONTROL | USER_DEFINED | UNKNOWN | UNUSED => UNMERGED_SCORE,
            BYTE => 0.0,
            _ => match first_rank.get(token) {
                Some(&rank) => -(rank as f32),
                None => -((merges.len() + id) as f32),
            },
        })
        .collect()
}

/// Whether a normaliser (as JSON) makes SentencePiece's spaces, transformers' Llama form:
/// `Replace(" ", "▁")`, after `Prepend("▁")` or not; `Some(prepends)` when it does.
fn sentencepiece_spaces(normalizer: &Value) -> Option<bool> {
    let steps: Vec<&Value> = match normalizer.get("normalizers").and_then(Value::as_array) {
        Some(steps) => steps.iter().collect(),
        None => vec![normalizer],
    };
    let is = |step: &Value, kind: &str| step.get("type").and_then(Value::as_str) == Some(kind);
    let replaces_spaces = |step: &Value| {
        is(step, "Replace")
            && step.pointer("/pattern/String").and_then(Value::as_str) == Some(" ")
            && step.get("content").and_then(Value::as_str) == Some("▁")
    };
    let prepends = |step: &Value| {
        is(step, "Prepend") && step.get("prepend").and_then(Value::as_str) == Some("▁")
    };
    match steps.as_slice() {
        [replace] if replaces_spaces(replace) => Some(false),
        [prepend, replace] if prepends(prepend) && replaces_spaces(replace) => Some(true),
        _ => None,
    }
}

/// SentencePiece's byte tokens, `<0x00>` to `<0xFF>`.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && token[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

fn strings(values: &[String]) -> GgufValue {
    GgufValue::Array(values.iter().map(|v| v.as_str().into()).collect())
}

fn kinds(values: &[i32]) -> GgufValue {
    GgufValue::Array(values.iter().map(|&v| GgufValue::I32(v)).collect())
}

fn to_json(value: &impl serde::Serialize, what: &str) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|e| Error::tokenizer(format!("cannot serialise {what}"), Box::new(e)))
}
