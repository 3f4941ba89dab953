//! The `tokenizer.ggml.*` metadata of a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2,
//! SmolLM), as llama.cpp's converter writes it from the same tokenizer files
//! (`TextModel.get_vocab_base` and gguf-py's `SpecialVocab`, in the llama-cpp-python 0.3.36
//! sdist on PyPI), so that a GGUF file written here tokenizes in llama.cpp as the model's
//! tokenizer.json does, and reads back here through [`Tokenizer::from_gguf`].
//!
//! Where the converter guesses from the files (its parse of the post-processor for
//! `add_bos_token`), this asks the tokenizer: BOS is added when encoding with special tokens
//! puts it first. `pre`, which the converter finds by hashing the ids of a check text among
//! the released models it knows, is here the split of [`byte_level_split`] that the
//! tokenizer's pre-tokenizer is.

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
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

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

impl Tokenizer {
    /// The `tokenizer.ggml.*` entries (and `tokenizer.chat_template`) of this tokenizer, read
    /// from `source`, for a model of `vocab_size` rows: ids the tokenizer lacks are written as
    /// unused `[PAD<id>]` tokens, as the converter writes them. A tokenizer that is not
    /// byte-level BPE split as one of llama.cpp's `pre`s is an [`Error::InvalidInput`].
    pub fn gguf_metadata(
        &self,
        source: &ModelSource,
        vocab_size: usize,
    ) -> Result<Vec<(String, GgufValue)>> {
        let pre = self.llama_cpp_pre()?;
        let inner = self.inner();
        let vocab = inner.get_vocab(true);
        let added = inner.get_added_tokens_decoder();
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
        let (tokens, types): (Vec<GgufValue>, Vec<GgufValue>) = by_id
            .iter()
            .enumerate()
            .map(|(id, token)| {
                let (text, kind) = match (token, added.get(&(id as u32))) {
                    (None, _) => (format!("[PAD{id}]"), UNUSED),
                    (Some(token), Some(added)) if added.special || looks_special(token) => {
                        (token.to_string(), CONTROL)
                    }
                    // The converter writes SentencePiece's space as a space in added tokens.
                    (Some(token), Some(_)) => (token.replace('▁', " "), USER_DEFINED),
                    (Some(token), None) => (token.to_string(), NORMAL),
                };
                (GgufValue::String(text), GgufValue::I32(kind))
            })
            .unzip();
        let mut metadata = vec![
            entry("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
            entry("tokenizer.ggml.pre", GgufValue::String(pre.into())),
            entry("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
            entry("tokenizer.ggml.token_type", GgufValue::Array(types)),
            entry("tokenizer.ggml.merges", GgufValue::Array(self.merges()?)),
        ];
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
            metadata.push(entry(
                "tokenizer.chat_template",
                GgufValue::String(template.source().to_string()),
            ));
        }
        Ok(metadata)
    }

    /// The `pre` whose split this tokenizer's pre-tokenizer is (offsets aside, which do not
    /// change ids).
    fn llama_cpp_pre(&self) -> Result<&'static str> {
        let inner = self.inner();
        let byte_level_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_))
            && matches!(
                inner.get_decoder(),
                Some(tokenizers::DecoderWrapper::ByteLevel(_))
            );
        let ours = inner.get_pre_tokenizer().map(without_offsets).transpose()?;
        for pre in BYTE_LEVEL_PRES {
            let theirs = without_offsets(&byte_level_split(pre)?.pre_tokenizer)?;
            if byte_level_bpe && ours.as_ref() == Some(&theirs) {
                return Ok(pre);
            }
        }
        Err(Error::InvalidInput(format!(
            "the tokenizer is not byte-level BPE split as one of llama.cpp's pre-tokenizers \
             that this library writes ({}); convert this model with llama.cpp's \
             convert_hf_to_gguf.py",
            BYTE_LEVEL_PRES.join(", ")
        )))
    }

    /// The BPE merges in rank order, `left right`, spaces inside a token written as U+0120
    /// (the converter's encoding of tokenizers' pair form).
    fn merges(&self) -> Result<Vec<GgufValue>> {
        let model = serde_json::to_value(self.inner().get_model())
            .map_err(|e| Error::tokenizer("cannot serialise the BPE model", Box::new(e)))?;
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::InvalidInput("the tokenizer's BPE model has no merges".into()))?;
        let side = |part: &Value| {
            let text = part.as_str().unwrap_or_default();
            text.replace(' ', "\u{120}")
        };
        merges
            .iter()
            .map(|merge| match merge {
                Value::String(merge) => Ok(GgufValue::String(merge.clone())),
                Value::Array(pair) if pair.len() == 2 => Ok(GgufValue::String(format!(
                    "{} {}",
                    side(&pair[0]),
                    side(&pair[1])
                ))),
                other => Err(Error::InvalidInput(format!(
                    "the tokenizer's BPE merge {other} is neither `a b` nor a pair"
                ))),
            })
            .collect()
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
    let mut value = serde_json::to_value(pre)
        .map_err(|e| Error::tokenizer("cannot serialise the pre-tokenizer", Box::new(e)))?;
    strip(&mut value);
    Ok(value)
}

fn entry(key: &str, value: GgufValue) -> (String, GgufValue) {
    (key.to_string(), value)
}
