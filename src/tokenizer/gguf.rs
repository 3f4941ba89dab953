//! A tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file, for a model that ships no
//! `tokenizer.json`: the pipeline that transformers' GGUF loading builds for the same
//! vocabulary, with the split of text that llama.cpp's `tokenizer.ggml.pre` names.
//!
//! Two forms, by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) from `tokens` and `merges`, split
//!   before BPE by the regular expression of the `pre` named;
//! - `llama`: SentencePiece BPE (Llama 2, TinyLlama, Mistral v0.1) from `tokens` and `scores`,
//!   spaces as `▁`, a dummy prefix, bytes that are no token as `<0x..>` tokens.
//!
//! Tokens typed CONTROL or UNKNOWN become special tokens, USER_DEFINED ones added tokens, so
//! both are matched whole in the text (`<|im_start|>` is one id).
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/integrations/ggml.py#L341>
//! <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/llama-vocab.cpp#L2154>

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::Tokenizer;
use crate::error::{Error, Result};
use crate::loading::gguf::{GgufHeader, GgufValue};

/// llama.cpp's token types (`llama_token_type` in llama.h) that the tokenizer treats apart.
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

/// SentencePiece's space.
const SPIECE_UNDERLINE: &str = "▁";

/// The `pre` values read, for the error that names an unknown one.
const SUPPORTED_PRE: &str =
    "gpt-2, llama-bpe (llama3, llama-v3), qwen2 (deepseek-r1-qwen), smollm, default";

/// Llama 3's split, as its tokenizer.json writes it (llama.cpp spells `(?i:'s|...)` out as
/// `'[sS]|...`, the same match).
/// <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/llama-vocab.cpp#L284>
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with one digit per piece.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/convert_slow_tokenizer.py#L430>
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `default` split: four expressions, each splitting the pieces the one before
/// left (runs of punctuation, GPT-2's words, runs of digits, then three digits at a time).
/// <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/llama-vocab.cpp#L561-L569>
const DEFAULT_SPLITS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

impl Tokenizer {
    /// The tokenizer that the `tokenizer.ggml.*` metadata of a GGUF file describes (see the
    /// module's documentation). Metadata that is missing, mistyped or inconsistent (a count
    /// that differs between tokens and scores, a merge of unknown tokens, an id out of range)
    /// is an [`Error::InvalidWeights`] naming the key.
    pub fn from_gguf(header: &GgufHeader) -> Result<Self> {
        let vocabulary = Vocabulary::read(header)?;
        let ids = SpecialIds::read(header, vocabulary.tokens.len())?;
        let model = string(header, "tokenizer.ggml.model")?;
        let (mut inner, add_bos_default) = match model {
            "gpt2" => byte_level_bpe(header, &vocabulary)?,
            "llama" => (sentencepiece_bpe(header, &vocabulary, ids.unk)?, true),
            other => {
                return Err(invalid(format!(
                    "tokenizer.ggml.model is `{other}`; the models read are `gpt2` (byte-level \
                     BPE) and `llama` (SentencePiece BPE): load this model's tokenizer.json \
                     instead"
                )))
            }
        };
        add_special_tokens(&mut inner, &vocabulary)?;
        let add_bos =
            optional_bool(header, "tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
        let add_eos = optional_bool(header, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let bos = add_bos
            .then(|| required(ids.bos, "add_bos_token", "bos_token_id"))
            .transpose()?;
        let eos = add_eos
            .then(|| required(ids.eos, "add_eos_token", "eos_token_id"))
            .transpose()?;
        if let Some(template) = bos_eos_template(&vocabulary, bos, eos)? {
            inner.with_post_processor(Some(template));
        }
        let named = |id: Option<u32>| id.map(|id| (id, vocabulary.tokens[id as usize].to_string()));
        Ok(Self::assemble(
            inner,
            named(ids.pad),
            named(ids.mask),
            None,
            ids.eos,
            None,
        ))
    }
}

/// The special tokens of a GGUF file by the names chat templates use (`bos_token`,
/// `eos_token`, ...), for [`crate::tokenizer::chat_template::ChatTemplate::from_gguf`].
pub(super) fn special_token_names(header: &GgufHeader) -> Result<Vec<(&'static str, String)>> {
    let tokens = strings(header, "tokenizer.ggml.tokens")?;
    let ids = SpecialIds::read(header, tokens.len())?;
    Ok([
        ("bos_token", ids.bos),
        ("eos_token", ids.eos),
        ("unk_token", ids.unk),
        ("pad_token", ids.pad),
        ("mask_token", ids.mask),
    ]
    .into_iter()
    .filter_map(|(name, id)| Some((name, tokens[id? as usize].to_string())))
    .collect())
}

/// The tokens, by id, with their types.
struct Vocabulary<'a> {
    tokens: Vec<&'a str>,
    /// `tokenizer.ggml.token_type`; absent in some files, where no token is special.
    types: Option<Vec<u64>>,
    ids: HashMap<String, u32>,
}

impl<'a> Vocabulary<'a> {
    fn read(header: &'a GgufHeader) -> Result<Self> {
        let tokens = strings(header, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(invalid(format!(
                "tokenizer.ggml.tokens holds {} tokens",
                tokens.len()
            )));
        }
        let types = match header.metadata.get("tokenizer.ggml.token_type") {
            None => None,
            Some(value) => {
                let values = per_token(value, "tokenizer.ggml.token_type", tokens.len())?;
                let types = values
                    .iter()
                    .map(GgufValue::to_u64)
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| {
                        invalid("tokenizer.ggml.token_type holds a value that is no token type")
                    })?;
                Some(types)
            }
        };
        let mut ids = HashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(token.to_string(), id as u32) {
                return Err(invalid(format!(
                    "the token {token:?} is in tokenizer.ggml.tokens twice (ids {first} and {id})"
                )));
            }
        }
        Ok(Self { tokens, types, ids })
    }

    /// The token-to-id map in the type the BPE model takes.
    fn bpe_vocab(&self) -> Vocab {
        self.ids
            .iter()
            .map(|(token, &id)| (token.clone(), id))
            .collect()
    }

    fn type_of(&self, id: usize) -> Option<u64> {
        self.types.as_ref().map(|types| types[id])
    }
}

/// The ids of `tokenizer.ggml.*_token_id`, each checked to be a token.
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    mask: Option<u32>,
}

impl SpecialIds {
    fn read(header: &GgufHeader, tokens: usize) -> Result<Self> {
        let id = |name: &str| {
            let key = format!("tokenizer.ggml.{name}");
            let Some(value) = header.metadata.get(&key) else {
                return Ok(None);
            };
            match value.to_u64() {
                Some(id) if id < tokens as u64 => Ok(Some(id as u32)),
                _ => Err(invalid(format!(
                    "{key} is {value:?}, not the id of one of its {tokens} tokens"
                ))),
            }
        };
        Ok(Self {
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            unk: id("unknown_token_id")?,
            pad: id("padding_token_id")?,
            mask: id("mask_token_id")?,
        })
    }
}

/// Byte-level BPE, as transformers' GGUFGPTConverter and GGUFQwen2Converter build it, split
/// as llama.cpp splits for `tokenizer.ggml.pre`; and whether llama.cpp adds BOS by default
/// for that `pre`.
fn byte_level_bpe(
    header: &GgufHeader,
    vocabulary: &Vocabulary,
) -> Result<(tokenizers::Tokenizer, bool)> {
    // llama.cpp reads a vocabulary whose file names no pre-tokenizer (converted before May
    // 2024) with its `default` split, and warns that generation may degrade.
    // <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/llama-vocab.cpp#L2159-L2169>
    let pre = match header.metadata.get("tokenizer.ggml.pre") {
        None => {
            tracing::warn!(
                "the GGUF names no tokenizer.ggml.pre: splitting text as llama.cpp's `default`"
            );
            "default"
        }
        Some(_) => string(header, "tokenizer.ggml.pre")?,
    };
    let ByteLevelSplit {
        pre_tokenizer,
        nfc,
        ignore_merges,
        add_bos,
    } = byte_level_split(pre)?;
    let merges = strings(header, "tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(index, merge)| split_merge(vocabulary, index, merge))
        .collect::<Result<Vec<_>>>()?;
    let model = BPE::builder()
        .vocab_and_merges(vocabulary.bpe_vocab(), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::tokenizer("cannot build the BPE model of the GGUF vocabulary", e))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    if nfc {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| Error::tokenizer("cannot set the NFC normaliser", e))?;
    }
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok((tokenizer, add_bos))
}

/// How llama.cpp splits text before byte-level BPE for one `tokenizer.ggml.pre`, as a
/// tokenizer.json would say it.
pub(super) struct ByteLevelSplit {
    pub(super) pre_tokenizer: PreTokenizerWrapper,
    /// transformers normalises to NFC first.
    nfc: bool,
    /// A word that is a token is that token, whatever the merges would make of it.
    ignore_merges: bool,
    /// llama.cpp adds BOS by default for this `pre`.
    add_bos: bool,
}

/// The `pre` names of [`byte_level_split`] that a tokenizer.json can have (llama.cpp's
/// `default` is its own), each under the name llama.cpp's converter writes.
pub(super) const BYTE_LEVEL_PRES: [&str; 4] = ["gpt-2", "llama-bpe", "qwen2", "smollm"];

/// The split that `tokenizer.ggml.pre` names.
pub(super) fn byte_level_split(pre: &str) -> Result<ByteLevelSplit> {
    // Each expression splits the pieces of the one before (llama.cpp's `unicode_regex_split`
    // keeps both the matches and the text between them), then bytes become symbols.
    let split = |patterns: &[&str]| -> Result<PreTokenizerWrapper> {
        let mut steps = patterns
            .iter()
            .map(|pattern| {
                Split::new(
                    SplitPattern::Regex(pattern.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map(PreTokenizerWrapper::from)
                .map_err(|e| Error::tokenizer("cannot compile the pre-tokenizer's regex", e))
            })
            .collect::<Result<Vec<_>>>()?;
        steps.push(ByteLevel::new(false, false, false).into());
        Ok(PreTokenizerSequence::new(steps).into())
    };
    // (pre-tokenizer, NFC first, ignore_merges, BOS added by default)
    let (pre_tokenizer, nfc, ignore_merges, add_bos): (PreTokenizerWrapper, _, _, _) = match pre {
        // GPT-2's regex, inside ByteLevel.
        "gpt-2" => (
            ByteLevel::new(false, true, true).into(),
            false,
            false,
            false,
        ),
        // llama.cpp sets ignore_merges and add_bos for these: a word that is a token is that
        // token, whatever the merges would make of it (tokenizers' `ignore_merges`, which
        // Llama 3's tokenizer.json sets too).
        "llama-bpe" | "llama3" | "llama-v3" => (split(&[LLAMA3_SPLIT])?, false, true, true),
        // transformers' Qwen2Converter normalises to NFC first (llama.cpp does not).
        "qwen2" | "deepseek-r1-qwen" => (split(&[QWEN2_SPLIT])?, true, false, false),
        // llama.cpp's own split, which no tokenizer.json has; BOS only where the file says.
        "default" => (split(&DEFAULT_SPLITS)?, false, false, false),
        // SmolLM's tokenizer.json: single digits, then GPT-2's regex.
        "smollm" => (
            PreTokenizerSequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            false,
            false,
            false,
        ),
        other => {
            return Err(invalid(format!(
                "tokenizer.ggml.pre is `{other}`, a pre-tokenizer this library does not \
                 implement (it reads {SUPPORTED_PRE}); load the model's tokenizer.json instead"
            )))
        }
    };
    Ok(ByteLevelSplit {
        pre_tokenizer,
        nfc,
        ignore_merges,
        add_bos,
    })
}

/// A merge `left right` of tokens, split at the first space after its first character (a
/// token may start with a space), as llama.cpp splits it.
/// <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/llama-vocab.cpp#L2020>
fn split_merge(vocabulary: &Vocabulary, index: usize, merge: &str) -> Result<(String, String)> {
    let first = merge.chars().next().map_or(0, char::len_utf8);
    let (left, right) = merge[first..]
        .find(' ')
        .map(|at| (&merge[..first + at], &merge[first + at + 1..]))
        .ok_or_else(|| {
            invalid(format!(
                "tokenizer.ggml.merges[{index}] is {merge:?}, not two tokens split by a space"
            ))
        })?;
    for piece in [left, right] {
        if !vocabulary.ids.contains_key(piece) {
            return Err(invalid(format!(
                "tokenizer.ggml.merges[{index}] ({merge:?}) names {piece:?}, which is not in \
                 tokenizer.ggml.tokens"
            )));
        }
    }
    Ok((left.to_string(), right.to_string()))
}

/// SentencePiece BPE as transformers' GGUFLlamaConverter builds it: BPE over the tokens with
/// merges made from the scores, `<0x..>` tokens for the bytes of what no token covers, spaces
/// as `▁` and a `▁` before the text when `tokenizer.ggml.add_space_prefix` (llama.cpp's
/// default) is set; decoded back, the prefix stripped.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/integrations/ggml.py#L384>
fn sentencepiece_bpe(
    header: &GgufHeader,
    vocabulary: &Vocabulary,
    unk: Option<u32>,
) -> Result<tokenizers::Tokenizer> {
    let scores = per_token(
        value(header, "tokenizer.ggml.scores")?,
        "tokenizer.ggml.scores",
        vocabulary.tokens.len(),
    )?
    .iter()
    .map(GgufValue::to_f64)
    .collect::<Option<Vec<f64>>>()
    .ok_or_else(|| invalid("tokenizer.ggml.scores holds a value that is not a float"))?;
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocabulary.bpe_vocab(),
            merges_from_scores(vocabulary, &scores),
        )
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(vocabulary.tokens[unk as usize].to_string());
    }
    let model = builder
        .build()
        .map_err(|e| Error::tokenizer("cannot build the BPE model of the GGUF vocabulary", e))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let add_space_prefix =
        optional_bool(header, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let space = || {
        Replace::new(" ", SPIECE_UNDERLINE)
            .map_err(|e| Error::tokenizer("cannot build the space replacement", e))
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(SPIECE_UNDERLINE.to_string()).into());
    }
    normalizers.push(space()?.into());
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| Error::tokenizer("cannot set the SentencePiece normaliser", e))?;
    // transformers' LlamaConverter order (Llama 2's tokenizer.json): `▁` to space before the
    // bytes are fused, so a `▁` spelled in bytes stays a `▁`.
    let underline = Replace::new(SPIECE_UNDERLINE, " ")
        .map_err(|e| Error::tokenizer("cannot build the space replacement", e))?;
    let mut decoders = vec![
        underline.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// BPE merges from SentencePiece scores, as transformers' GGUFTokenizerSkeleton makes them:
/// every split of every token into two tokens, those of one token by their pieces' scores,
/// all by the score of the token they make, highest first (stable, so ties keep that order).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/integrations/ggml.py#L346>
fn merges_from_scores(vocabulary: &Vocabulary, scores: &[f64]) -> Vec<(String, String)> {
    let score = |token: &str| scores[vocabulary.ids[token] as usize];
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for (id, token) in vocabulary.tokens.iter().enumerate() {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(left, right)| {
                vocabulary.ids.contains_key(*left) && vocabulary.ids.contains_key(*right)
            })
            .map(|(left, right)| (left, right, scores[id]))
            .collect();
        local.sort_by(|a, b| {
            (score(b.0), score(b.1))
                .partial_cmp(&(score(a.0), score(a.1)))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges
        .into_iter()
        .map(|(left, right, _)| (left.to_string(), right.to_string()))
        .collect()
}

/// CONTROL and UNKNOWN tokens as special tokens (skipped by `decode(.., true)`), USER_DEFINED
/// ones as added tokens, all matched in the text as it is (not normalised), as llama.cpp
/// matches them before it tokenizes the rest.
fn add_special_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    vocabulary: &Vocabulary,
) -> Result<()> {
    let mut special = Vec::new();
    let mut added = Vec::new();
    for (id, token) in vocabulary.tokens.iter().enumerate() {
        match vocabulary.type_of(id) {
            Some(TYPE_CONTROL | TYPE_UNKNOWN) => special.push(AddedToken::from(*token, true)),
            Some(TYPE_USER_DEFINED) => {
                added.push(AddedToken::from(*token, false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| Error::tokenizer("cannot add the special tokens", e))?;
    tokenizer
        .add_tokens(added)
        .map_err(|e| Error::tokenizer("cannot add the added tokens", e))?;
    Ok(())
}

/// `[BOS] $A [EOS]` with each optional, as LlamaTokenizerFast's post-processor (a pair gets
/// both around each text); `None` when neither is added.
fn bos_eos_template(
    vocabulary: &Vocabulary,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let token = |id: Option<u32>| id.map(|id| vocabulary.tokens[id as usize].to_string());
    let (bos, eos) = (token(bos).zip(bos), token(eos).zip(eos));
    let around = |sequence: &str, type_id: u8| -> Vec<String> {
        bos.iter()
            .map(|(t, _)| format!("{t}:{type_id}"))
            .chain(std::iter::once(format!("${sequence}:{type_id}")))
            .chain(eos.iter().map(|(t, _)| format!("{t}:{type_id}")))
            .collect()
    };
    let single = around("A", 0);
    let pair: Vec<String> = single.iter().cloned().chain(around("B", 1)).collect();
    let special: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    let template_error = |e: String| {
        invalid(format!(
            "its BOS/EOS tokens do not make a template ({e}): check tokenizer.ggml.bos_token_id \
             and eos_token_id"
        ))
    };
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(template_error)?
        .try_pair(pair)
        .map_err(template_error)?
        .special_tokens(special)
        .build()
        .map_err(|e| template_error(e.to_string()))?;
    Ok(Some(template))
}

fn required(id: Option<u32>, flag: &str, key: &str) -> Result<u32> {
    id.ok_or_else(|| {
        invalid(format!(
            "tokenizer.ggml.{flag} is set but tokenizer.ggml.{key} is missing"
        ))
    })
}

fn invalid(why: impl std::fmt::Display) -> Error {
    Error::InvalidWeights(format!(
        "GGUF tokenizer: {why}. Convert the model again with llama.cpp's convert_hf_to_gguf.py, \
         or load the tokenizer.json it was converted from"
    ))
}

fn value<'a>(header: &'a GgufHeader, key: &str) -> Result<&'a GgufValue> {
    header
        .metadata
        .get(key)
        .ok_or_else(|| invalid(format!("its metadata has no `{key}`")))
}

fn string<'a>(header: &'a GgufHeader, key: &str) -> Result<&'a str> {
    let value = value(header, key)?;
    value
        .as_str()
        .ok_or_else(|| invalid(format!("`{key}` is {}, not a string", kind(value))))
}

fn optional_bool(header: &GgufHeader, key: &str) -> Result<Option<bool>> {
    match header.metadata.get(key) {
        None => Ok(None),
        Some(GgufValue::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(invalid(format!(
            "`{key}` is {}, not a boolean",
            kind(other)
        ))),
    }
}

fn array<'a>(value: &'a GgufValue, key: &str) -> Result<&'a [GgufValue]> {
    match value {
        GgufValue::Array(values) => Ok(values),
        other => Err(invalid(format!("`{key}` is {}, not an array", kind(other)))),
    }
}

/// The array at `key`, which must hold one value per token.
fn per_token<'a>(value: &'a GgufValue, key: &str, tokens: usize) -> Result<&'a [GgufValue]> {
    let values = array(value, key)?;
    if values.len() != tokens {
        return Err(invalid(format!(
            "`{key}` holds {} values for {tokens} tokens",
            values.len()
        )));
    }
    Ok(values)
}

fn strings<'a>(header: &'a GgufHeader, key: &str) -> Result<Vec<&'a str>> {
    array(value(header, key)?, key)?
        .iter()
        .enumerate()
        .map(|(index, value)| {
            value.as_str().ok_or_else(|| {
                invalid(format!("`{key}[{index}]` is {}, not a string", kind(value)))
            })
        })
        .collect()
}

/// A value's type, for errors.
fn kind(value: &GgufValue) -> &'static str {
    match value {
        GgufValue::String(_) => "a string",
        GgufValue::Array(_) => "an array",
        GgufValue::Bool(_) => "a boolean",
        GgufValue::F32(_) | GgufValue::F64(_) => "a float",
        _ => "an integer",
    }
}

mod export;
#[cfg(test)]
mod tests;
