//! Tokenizers from a model's files: `tokenizer.json` when present, else a BERT WordPiece built
//! from `vocab.txt`, else a byte-level BPE built from `vocab.json` + `merges.txt`, with options
//! from `tokenizer_config.json`; or from a GGUF file's metadata ([`Tokenizer::from_gguf`]).
//!
//! Padding and truncation are decided per call. Whatever `tokenizer.json` stores is cleared at
//! load: all-MiniLM-L6-v2's file, for one, pads every input to 128 tokens.

pub mod chat_template;
mod gguf;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    pad_encodings, truncate_encodings, AddedToken, Encoding, PaddingDirection, PaddingParams,
    PaddingStrategy, PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};
use crate::loading::hub::{HubOptions, ModelSource};
use crate::loading::json::read_json;

/// One input: a text, or a pair of texts (question and context, two sentences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextInput<'a> {
    /// One text.
    Single(&'a str),
    /// Two texts encoded as one sequence: for BERT, `[CLS] a [SEP] b [SEP]` with segment ids
    /// 0 then 1.
    Pair(&'a str, &'a str),
}

impl<'a> From<&'a str> for TextInput<'a> {
    fn from(text: &'a str) -> Self {
        TextInput::Single(text)
    }
}

impl<'a> From<&'a String> for TextInput<'a> {
    fn from(text: &'a String) -> Self {
        TextInput::Single(text)
    }
}

impl<'a> From<(&'a str, &'a str)> for TextInput<'a> {
    fn from((first, second): (&'a str, &'a str)) -> Self {
        TextInput::Pair(first, second)
    }
}

/// Which side padding goes on: right for encoders, left for batched generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    #[default]
    /// Pad after the tokens: the default, and what encoders expect.
    Right,
    /// Pad before the tokens, so each row's last position is real: what batched generation needs.
    Left,
}

/// Per-call encoding settings.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Add `[CLS]`/`[SEP]` (or the model's equivalents).
    pub add_special_tokens: bool,
    /// Cut inputs longer than `max_length` (longest text of a pair first).
    pub truncation: bool,
    /// The length to truncate to; defaults to the tokenizer's `model_max_length`.
    pub max_length: Option<usize>,
    /// Which side [`Tokenizer::encode_batch`] pads on; right by default.
    pub padding_side: PaddingSide,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
            truncation: false,
            max_length: None,
            padding_side: PaddingSide::Right,
        }
    }
}

/// A batch ready for a model, as [`EncodedBatch::to_input`] makes it (transformers'
/// `BatchEncoding` on a device): all tensors are (batch, seq) of u32, on the model's device.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// Token ids from the model's tokenizer. An id outside the vocabulary is an
    /// [`Error::InvalidInput`], which catches a tokenizer that does not match the model.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding. `None` means no padding.
    pub attention_mask: Option<Tensor>,
    /// Segment ids (0 for the first text, 1 for the second). `None` means all 0. Models without
    /// segments (RoBERTa's single type, DistilBERT, GPT-2) ignore them.
    pub token_type_ids: Option<Tensor>,
}

impl ModelInput {
    /// A batch of token ids without padding or segments.
    pub fn from_ids(input_ids: Tensor) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            token_type_ids: None,
        }
    }
}

/// A batch of encodings, padded to its longest member.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    /// The padded encodings, with ids, masks, type ids and character offsets.
    pub encodings: Vec<Encoding>,
}

impl EncodedBatch {
    /// Number of inputs in the batch.
    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    /// True for a batch of no inputs, which [`EncodedBatch::to_input`] refuses.
    pub fn is_empty(&self) -> bool {
        self.encodings.is_empty()
    }

    /// Padded length of every row.
    pub fn seq_len(&self) -> usize {
        self.encodings.first().map_or(0, Encoding::len)
    }

    /// The batch as (batch, seq) u32 tensors on `device`.
    pub fn to_input(&self, device: &Device) -> Result<ModelInput> {
        if self.encodings.is_empty() {
            return Err(Error::InvalidInput("the batch is empty".to_string()));
        }
        let shape = (self.len(), self.seq_len());
        let stack = |field: fn(&Encoding) -> &[u32]| -> Result<Tensor> {
            let flat: Vec<u32> = self
                .encodings
                .iter()
                .flat_map(|e| field(e).iter().copied())
                .collect();
            Ok(Tensor::from_vec(flat, shape, device)?)
        };
        Ok(ModelInput {
            input_ids: stack(Encoding::get_ids)?,
            attention_mask: Some(stack(Encoding::get_attention_mask)?),
            token_type_ids: Some(stack(Encoding::get_type_ids)?),
        })
    }
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Plain(String),
    Added { content: String },
}

impl SpecialToken {
    fn content(&self) -> &str {
        match self {
            SpecialToken::Plain(s) | SpecialToken::Added { content: s } => s,
        }
    }
}

/// An entry of `added_tokens_decoder` in `tokenizer_config.json`: how transformers matches
/// the token in text (RoBERTa's `<mask>`, for one, takes the space before it: `lstrip`).
#[derive(Debug, Clone, Deserialize)]
struct AddedTokenConfig {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
    #[serde(default = "default_true")]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

fn default_true() -> bool {
    true
}

impl AddedTokenConfig {
    fn to_added_token(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .single_word(self.single_word)
            .normalized(self.normalized)
    }
}

/// The fields of `tokenizer_config.json` this library reads.
#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
    add_prefix_space: Option<bool>,
    /// Often a huge sentinel (1e30) meaning "no limit", hence f64.
    model_max_length: Option<f64>,
    tokenizer_class: Option<String>,
    unk_token: Option<SpecialToken>,
    sep_token: Option<SpecialToken>,
    pad_token: Option<SpecialToken>,
    cls_token: Option<SpecialToken>,
    mask_token: Option<SpecialToken>,
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
    /// Keyed by token id, as transformers writes it.
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, AddedTokenConfig>,
}

impl TokenizerConfig {
    fn read(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        read_json(path)
    }

    fn token(field: &Option<SpecialToken>, default: &str) -> String {
        field
            .as_ref()
            .map_or_else(|| default.to_string(), |t| t.content().to_string())
    }

    fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
            .filter(|n| (1.0..1e9).contains(n))
            .map(|n| n as usize)
    }
}

/// A tokenizer with padding and truncation under the caller's control.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` without its post-processor, to encode each text before truncation, where the
    /// post-processor changes an encoding even when it adds no special tokens (RoBERTa's and
    /// byte-level offset trimming): it then runs once (running it twice would trim the offsets
    /// twice). Other post-processors add nothing without special tokens, and `inner` encodes:
    /// a second copy of a 152K-token vocabulary held 70 MB.
    without_post_processor: Option<tokenizers::Tokenizer>,
    pad: Option<(u32, String)>,
    mask: Option<(u32, String)>,
    cls: Option<u32>,
    eos: Option<u32>,
    model_max_length: Option<usize>,
}

impl Tokenizer {
    /// The tokenizer of a Hub model or local folder.
    pub fn from_pretrained(model: &str, hub: &HubOptions) -> Result<Self> {
        Self::from_source(&ModelSource::new(model, hub)?)
    }

    /// Build from the files of `source`, fetching only those it uses.
    pub fn from_source(source: &ModelSource) -> Result<Self> {
        let config = TokenizerConfig::read(source.get("tokenizer_config.json")?.as_deref())?;
        if let Some(path) = source.get("tokenizer.json")? {
            return Self::new(read_tokenizer_json(&path)?, &config);
        }
        if let Some(vocab) = source.get("vocab.txt")? {
            return Self::new(wordpiece(&vocab, &config)?, &config);
        }
        if let Some(vocab) = source.get("vocab.json")? {
            let merges = source.get("merges.txt")?.ok_or_else(|| {
                source.missing(
                    "merges.txt",
                    "a byte-level BPE tokenizer needs it beside vocab.json",
                )
            })?;
            return Self::new(byte_level_bpe(&vocab, &merges, &config)?, &config);
        }
        Err(source.missing(
            "tokenizer.json",
            "no tokenizer found: looked for tokenizer.json, vocab.txt and vocab.json + merges.txt. \
             SentencePiece models (XLM-RoBERTa's sentencepiece.bpe.model, CamemBERT's) are read \
             from tokenizer.json only: write it with transformers' \
             `AutoTokenizer.from_pretrained(folder).save_pretrained(folder)`",
        ))
    }

    fn new(mut inner: tokenizers::Tokenizer, config: &TokenizerConfig) -> Result<Self> {
        let stored_pad = inner.get_padding().map(|p| (p.pad_id, p.pad_token.clone()));
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::tokenizer("cannot clear the stored truncation", e))?;
        // The configured token, else the usual names, when the vocabulary has it.
        let find = |configured: &Option<SpecialToken>, usual: [&str; 2]| {
            configured
                .iter()
                .map(|t| t.content().to_string())
                .chain(usual.map(String::from))
                .find_map(|token| inner.token_to_id(&token).map(|id| (id, token)))
        };
        let pad = stored_pad.or_else(|| find(&config.pad_token, ["[PAD]", "<pad>"]));
        let mask = find(&config.mask_token, ["[MASK]", "<mask>"]);
        let cls = find(&config.cls_token, ["[CLS]", "<s>"]).map(|(id, _)| id);
        let eos = find(&config.eos_token, ["</s>", "<|endoftext|>"]).map(|(id, _)| id);
        Ok(Self::assemble(
            inner,
            pad,
            mask,
            cls,
            eos,
            config.model_max_length(),
        ))
    }

    /// A tokenizer of `inner`, whose padding and truncation are cleared, and its special ids.
    fn assemble(
        inner: tokenizers::Tokenizer,
        pad: Option<(u32, String)>,
        mask: Option<(u32, String)>,
        cls: Option<u32>,
        eos: Option<u32>,
        model_max_length: Option<usize>,
    ) -> Self {
        use tokenizers::PostProcessorWrapper as Processor;
        let changes_plain_encodings = match inner.get_post_processor() {
            None | Some(Processor::Bert(_) | Processor::Template(_)) => false,
            Some(Processor::ByteLevel(byte_level)) => byte_level.trim_offsets,
            Some(Processor::Roberta(_) | Processor::Sequence(_)) => true,
        };
        let without_post_processor = changes_plain_encodings.then(|| {
            let mut plain = inner.clone();
            plain.with_post_processor(None::<Processor>);
            plain
        });
        Self {
            without_post_processor,
            pad,
            mask,
            cls,
            eos,
            model_max_length,
            inner,
        }
    }

    /// The underlying `tokenizers` tokenizer, with no stored padding or truncation.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// `model_max_length` from `tokenizer_config.json`, when it is a real limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The mask token of masked-LM tokenizers, with its id.
    pub fn mask_token(&self) -> Option<(u32, &str)> {
        self.mask.as_ref().map(|(id, token)| (*id, token.as_str()))
    }

    /// The classifier token's id (`cls_token`: BERT's `[CLS]`, RoBERTa's `<s>`), when the
    /// tokenizer has one.
    pub fn cls_id(&self) -> Option<u32> {
        self.cls
    }

    /// The end-of-sequence token's id (`eos_token`), when the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The padding token id, when the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|(id, _)| *id)
    }

    /// The prefix that marks a word's continuation pieces (`##` for WordPiece); `None` for
    /// tokenizers that do not mark them (byte-level BPE).
    pub fn continuing_subword_prefix(&self) -> Option<&str> {
        match self.inner.get_model() {
            tokenizers::ModelWrapper::WordPiece(model) => {
                Some(model.continuing_subword_prefix.as_str())
            }
            tokenizers::ModelWrapper::BPE(model) => model.continuing_subword_prefix.as_deref(),
            _ => None,
        }
        .filter(|prefix| !prefix.is_empty())
    }

    /// The unknown token's id.
    pub fn unk_id(&self) -> Option<u32> {
        match self.inner.get_model() {
            tokenizers::ModelWrapper::WordPiece(model) => self.inner.token_to_id(&model.unk_token),
            tokenizers::ModelWrapper::BPE(model) => model
                .unk_token
                .as_deref()
                .and_then(|t| self.inner.token_to_id(t)),
            tokenizers::ModelWrapper::WordLevel(model) => self.inner.token_to_id(&model.unk_token),
            // Unigram keeps its unknown id private; the conventional token names find it.
            tokenizers::ModelWrapper::Unigram(_) => ["<unk>", "[UNK]"]
                .iter()
                .find_map(|t| self.inner.token_to_id(t)),
        }
    }

    /// Join tokens into text the way the tokenizer's decoder does (transformers'
    /// `convert_tokens_to_string`): `##` pieces glued for WordPiece, bytes for byte-level BPE.
    pub fn convert_tokens_to_string(&self, tokens: &[String]) -> Result<String> {
        match self.inner.get_decoder() {
            Some(decoder) => tokenizers::Decoder::decode(decoder, tokens.to_vec())
                .map_err(|e| Error::tokenizer("cannot join the tokens", e)),
            None => Ok(tokens.join(" ")),
        }
    }

    /// The id of `token` in the vocabulary or the added tokens; `None` when it has none.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token `id` stands for, as the vocabulary spells it (`##ing`, `Ġthe`): not decoded
    /// text (see [`Tokenizer::decode`]). `None` for an id outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Decode ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer("cannot decode the ids", e))
    }

    /// Encode one input, unpadded. Offsets are in characters, as Python's are.
    pub fn encode<'a>(
        &self,
        input: impl Into<TextInput<'a>>,
        options: &EncodeOptions,
    ) -> Result<Encoding> {
        let truncation = if options.truncation {
            let max_length = options
                .max_length
                .or(self.model_max_length)
                .ok_or_else(|| {
                    Error::InvalidInput(
                    "truncation needs a max_length: the tokenizer config sets no model_max_length"
                        .to_string(),
                )
                })?;
            Some((max_length, TruncationStrategy::LongestFirst, 0))
        } else {
            None
        };
        self.encode_with(input.into(), options.add_special_tokens, truncation)
    }

    /// A long input as overlapping windows of up to `max_length` tokens in all, consecutive
    /// windows sharing `stride` tokens, the way transformers' tokenizer call with
    /// `return_overflowing_tokens` cuts them. A text is cut as token classification cuts it;
    /// a pair (question, context) as question answering does: each window holds the whole
    /// question and a part of the context.
    pub fn encode_windows<'a>(
        &self,
        input: impl Into<TextInput<'a>>,
        max_length: usize,
        stride: usize,
    ) -> Result<Vec<Encoding>> {
        let input = input.into();
        let strategy = match input {
            TextInput::Single(_) => TruncationStrategy::LongestFirst,
            TextInput::Pair(..) => TruncationStrategy::OnlySecond,
        };
        let truncation = Some((max_length, strategy, stride));
        let mut first = self.encode_with(input, true, truncation)?;
        let overflowing = first.take_overflowing();
        Ok(std::iter::once(first).chain(overflowing).collect())
    }

    /// Encode the texts without special tokens, truncate them to (max_length, strategy,
    /// stride) counting the special tokens to come, then add the special tokens.
    fn encode_with(
        &self,
        input: TextInput,
        add_special_tokens: bool,
        truncation: Option<(usize, TruncationStrategy, usize)>,
    ) -> Result<Encoding> {
        let (first, second) = match input {
            TextInput::Single(text) => (text, None),
            TextInput::Pair(first, second) => (first, Some(second)),
        };
        let encoder = self.without_post_processor.as_ref().unwrap_or(&self.inner);
        let encode = |text: &str| {
            encoder
                .encode_char_offsets(text, false)
                .map_err(|e| Error::tokenizer("cannot encode the input", e))
        };
        let first = encode(first)?;
        let second = second
            .map(|text| {
                let mut encoding = encode(text)?;
                encoding.set_type_ids(vec![1; encoding.len()]);
                Ok::<_, Error>(encoding)
            })
            .transpose()?;
        let (first, second) = match truncation {
            Some((max_length, strategy, stride)) => {
                let special = match (add_special_tokens, self.inner.get_post_processor()) {
                    (true, Some(processor)) => processor.added_tokens(second.is_some()),
                    _ => 0,
                };
                let params = TruncationParams {
                    max_length: max_length.saturating_sub(special),
                    strategy,
                    stride,
                    direction: TruncationDirection::Right,
                };
                truncate_encodings(first, second, &params)
                    .map_err(|e| Error::tokenizer("cannot truncate the input", e))?
            }
            None => (first, second),
        };
        self.inner
            .post_process(first, second, add_special_tokens)
            .map_err(|e| Error::tokenizer("cannot add the special tokens", e))
    }

    /// Encode several inputs and pad them to the longest.
    pub fn encode_batch<'a, I, T>(&self, inputs: I, options: &EncodeOptions) -> Result<EncodedBatch>
    where
        I: IntoIterator<Item = T>,
        T: Into<TextInput<'a>>,
    {
        let encodings = inputs
            .into_iter()
            .map(|input| self.encode(input, options))
            .collect::<Result<Vec<_>>>()?;
        self.pad(encodings, options.padding_side)
    }

    /// Pad encodings to the longest of them.
    pub fn pad(&self, mut encodings: Vec<Encoding>, side: PaddingSide) -> Result<EncodedBatch> {
        let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        if encodings.iter().any(|e| e.len() != longest) {
            let (pad_id, pad_token) = self.pad.clone().ok_or_else(|| {
                Error::InvalidInput(
                    "inputs of different lengths need padding, but the tokenizer has no pad token"
                        .to_string(),
                )
            })?;
            let params = PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: match side {
                    PaddingSide::Right => PaddingDirection::Right,
                    PaddingSide::Left => PaddingDirection::Left,
                },
                pad_to_multiple_of: None,
                pad_id,
                pad_type_id: 0,
                pad_token,
            };
            pad_encodings(&mut encodings, &params)
                .map_err(|e| Error::tokenizer("cannot pad the batch", e))?;
        }
        Ok(EncodedBatch { encodings })
    }
}

/// Parse `tokenizer.json`. The JSON is checked first, so a damaged file gets a JSON error with
/// its position; and since the `tokenizers` crate panics on some malformed fields (its decoder
/// deserializer `expect`s), its parsing runs under `catch_unwind` and a panic becomes an error.
/// A post-processor that would panic at every encode is refused here (see
/// [`check_templates`]).
fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
    check_templates(&json["post_processor"]).map_err(|problem| Error::Tokenizer {
        message: format!(
            "{} has a post-processor that {problem}; re-download it",
            path.display()
        ),
        source: None,
    })?;
    let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>());
    match parsed {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(Error::tokenizer(
            format!("cannot load {}", path.display()),
            e,
        )),
        Err(_) => Err(Error::Tokenizer {
            message: format!(
                "{} has a malformed field that the tokenizers crate cannot read; re-download it",
                path.display()
            ),
            source: None,
        }),
    }
}

/// The `TemplateProcessing` post-processors in `processor` (nested in a `Sequence` too) name
/// only special tokens they define, each with as many ids as tokens: the tokenizers crate
/// checks this when it builds a template, not when it reads one, and then indexes its map with
/// the name at every encode, panicking on a missing one.
fn check_templates(processor: &serde_json::Value) -> std::result::Result<(), String> {
    match processor["type"].as_str() {
        Some("Sequence") => processor["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .try_for_each(check_templates),
        Some("TemplateProcessing") => {
            let defined = &processor["special_tokens"];
            for piece in ["single", "pair"]
                .iter()
                .filter_map(|template| processor[template].as_array())
                .flatten()
            {
                let Some(name) = piece["SpecialToken"]["id"].as_str() else {
                    continue;
                };
                let token = &defined[name];
                let ids = token["ids"].as_array().map(Vec::len);
                if ids.is_none() || ids != token["tokens"].as_array().map(Vec::len) {
                    return Err(format!(
                        "puts the special token {name:?} in its template without defining it \
                         (with as many ids as tokens) in its special_tokens"
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn require_id(vocab: &tokenizers::Tokenizer, token: &str, file: &Path) -> Result<u32> {
    vocab.token_to_id(token).ok_or_else(|| Error::Tokenizer {
        message: format!("special token `{token}` is not in {}", file.display()),
        source: None,
    })
}

/// BERT's WordPiece tokenizer from `vocab.txt`, as transformers' `BertConverter` builds it.
fn wordpiece(vocab: &Path, config: &TokenizerConfig) -> Result<tokenizers::Tokenizer> {
    let path = vocab.to_string_lossy();
    let unk = TokenizerConfig::token(&config.unk_token, "[UNK]");
    let model = WordPiece::from_file(&path)
        .unk_token(unk.clone())
        .continuing_subword_prefix("##".to_string())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| Error::tokenizer(format!("cannot read {}", vocab.display()), e))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let lowercase = config.do_lower_case.unwrap_or(true);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            config.tokenize_chinese_chars.unwrap_or(true),
            config.strip_accents,
            lowercase,
        )))
        .map_err(|e| Error::tokenizer("cannot set the BERT normaliser", e))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let sep = TokenizerConfig::token(&config.sep_token, "[SEP]");
    let cls = TokenizerConfig::token(&config.cls_token, "[CLS]");
    let (sep_id, cls_id) = (
        require_id(&tokenizer, &sep, vocab)?,
        require_id(&tokenizer, &cls, vocab)?,
    );
    tokenizer.with_post_processor(Some(BertProcessing::new(
        (sep.clone(), sep_id),
        (cls.clone(), cls_id),
    )));
    let specials = [
        unk,
        sep,
        cls,
        TokenizerConfig::token(&config.pad_token, "[PAD]"),
        TokenizerConfig::token(&config.mask_token, "[MASK]"),
    ];
    add_specials(&mut tokenizer, config, &specials)?;
    Ok(tokenizer)
}

/// Byte-level BPE from `vocab.json` + `merges.txt`, as transformers' `GPT2Converter` (or, for
/// RoBERTa tokenizers, `RobertaConverter`) builds it.
fn byte_level_bpe(
    vocab: &Path,
    merges: &Path,
    config: &TokenizerConfig,
) -> Result<tokenizers::Tokenizer> {
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| {
            Error::tokenizer(
                format!("cannot read {} and {}", vocab.display(), merges.display()),
                e,
            )
        })?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let add_prefix_space = config.add_prefix_space.unwrap_or(false);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let is_roberta = config
        .tokenizer_class
        .as_deref()
        .is_some_and(|class| class.starts_with("Roberta"));
    let mut specials = vec!["<|endoftext|>".to_string()];
    if is_roberta {
        let sep = TokenizerConfig::token(&config.sep_token, "</s>");
        let cls = TokenizerConfig::token(&config.cls_token, "<s>");
        let (sep_id, cls_id) = (
            require_id(&tokenizer, &sep, vocab)?,
            require_id(&tokenizer, &cls, vocab)?,
        );
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((sep.clone(), sep_id), (cls.clone(), cls_id))
                .trim_offsets(true)
                .add_prefix_space(add_prefix_space),
        ));
        specials.extend([sep, cls]);
    } else {
        tokenizer.with_post_processor(Some(ByteLevel::new(add_prefix_space, false, true)));
    }
    for token in [
        &config.bos_token,
        &config.eos_token,
        &config.unk_token,
        &config.pad_token,
        &config.mask_token,
    ]
    .into_iter()
    .flatten()
    {
        specials.push(token.content().to_string());
    }
    add_specials(&mut tokenizer, config, &specials)?;
    Ok(tokenizer)
}

/// Register the added tokens, so they are matched whole in the text: those listed in
/// `added_tokens_decoder` with their matching rules, else the `defaults` the vocabulary holds,
/// as special tokens.
fn add_specials(
    tokenizer: &mut tokenizers::Tokenizer,
    config: &TokenizerConfig,
    defaults: &[String],
) -> Result<()> {
    let added: Vec<AddedToken> = if config.added_tokens_decoder.is_empty() {
        defaults
            .iter()
            .filter(|token| tokenizer.token_to_id(token).is_some())
            .map(|token| AddedToken::from(token.clone(), true))
            .collect()
    } else {
        config
            .added_tokens_decoder
            .values()
            .map(AddedTokenConfig::to_added_token)
            .collect()
    };
    let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|token| token.special);
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| Error::tokenizer("cannot add the special tokens", e))?;
    tokenizer
        .add_tokens(normal)
        .map_err(|e| Error::tokenizer("cannot add the added tokens", e))?;
    Ok(())
}
