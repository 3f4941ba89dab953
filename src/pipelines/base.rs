//! What every pipeline holds, and the settings most of them share.
//!
//! [`PipelineBase`] is the model, its tokenizer, its `config.json` and the device it runs on:
//! each pipeline embeds one and adds only what its task needs (labels, the mask token, the
//! pooling, ...). [`Truncation`] and the two option traits give every options struct the same
//! `with_truncation`, `with_max_length` and `with_batch_size`, written once here.

use candle_core::Device;
use tokenizers::Encoding;

use crate::error::Result;
use crate::models::config::ModelConfig;
use crate::models::pretrained::{FromPretrained, LoadOptions, Pretrained};
use crate::models::ModelInput;
use crate::pipelines::in_buckets;
use crate::tokenizer::{EncodeOptions, PaddingSide, Tokenizer};

/// The parts of a pipeline: a model `M` (an [`AutoModel`](crate::AutoModel) enum or a model
/// class), its tokenizer, its `config.json` and the device its inputs go to.
///
/// Load one with [`PipelineBase::from_pretrained`], or put together a model you already hold
/// with [`PipelineBase::new`] and hand it to a pipeline's `from_parts`, as transformers'
/// `pipeline(task, model=model, tokenizer=tokenizer)` takes loaded objects:
///
/// ```no_run
/// use ferroformers::pipelines::{PipelineBase, TextClassificationPipeline};
/// use ferroformers::{AutoModelForSequenceClassification, FromPretrained, LoadOptions, Pretrained};
/// # fn main() -> ferroformers::Result<()> {
/// let name = "distilbert-base-uncased-finetuned-sst-2-english";
/// let options = LoadOptions::default();
/// let pretrained = Pretrained::open(name, &options.hub)?;
/// let model = AutoModelForSequenceClassification::from_pretrained(name, &options)?;
/// let base = PipelineBase::new(
///     model,
///     pretrained.tokenizer()?,
///     pretrained.config().clone(),
///     options.device.clone(),
/// );
/// let classifier = TextClassificationPipeline::from_parts(base)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PipelineBase<M> {
    model: M,
    tokenizer: Tokenizer,
    config: ModelConfig,
    device: Device,
}

impl<M> PipelineBase<M> {
    /// Put together a model already loaded, its tokenizer and config, and the device the
    /// model's weights are on (inputs are placed there).
    pub fn new(model: M, tokenizer: Tokenizer, config: ModelConfig, device: Device) -> Self {
        Self {
            model,
            tokenizer,
            config,
            device,
        }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The tokenizer inputs are encoded with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The longest input the model takes: the tokenizer's `model_max_length`, at most
    /// `max_position_embeddings` (sentence-transformers' `CrossEncoder` caps it so).
    pub(crate) fn max_input_length(&self) -> usize {
        let positions = self.config.max_position_embeddings();
        self.tokenizer
            .model_max_length()
            .map_or(positions, |length| length.min(positions))
    }

    /// Pad the chosen encodings, on `side`, into one model input on the model's device.
    fn batch_input(
        &self,
        encodings: &[Encoding],
        indices: &[usize],
        side: PaddingSide,
    ) -> Result<ModelInput> {
        let chosen = indices.iter().map(|&i| encodings[i].clone()).collect();
        self.tokenizer.pad(chosen, side)?.to_input(&self.device)
    }

    /// Forward the encodings in batches of at most `batch_size`, cut into buckets of similar
    /// length (see `batches::in_buckets`): `forward` gets each bucket's indices and their
    /// input, padded on the right, and returns one result per index; the results come back in
    /// input order.
    pub(crate) fn forward_in_buckets<T>(
        &self,
        encodings: &[Encoding],
        batch_size: usize,
        forward: impl FnMut(&[usize], ModelInput) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        self.forward_in_buckets_padded(encodings, batch_size, PaddingSide::Right, forward)
    }

    /// [`forward_in_buckets`](Self::forward_in_buckets), padded on `side`: on the left, a
    /// decoder's last position is every row's last token.
    pub(crate) fn forward_in_buckets_padded<T>(
        &self,
        encodings: &[Encoding],
        batch_size: usize,
        side: PaddingSide,
        mut forward: impl FnMut(&[usize], ModelInput) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let lengths: Vec<usize> = encodings.iter().map(Encoding::len).collect();
        in_buckets(&lengths, batch_size, |indices| {
            forward(indices, self.batch_input(encodings, indices, side)?)
        })
    }
}

impl<M: FromPretrained> PipelineBase<M> {
    /// Load `model` (a Hub id or a local folder): weights, tokenizer and `config.json`.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::load(&Pretrained::open_with(model, options)?, options)
    }

    /// Load from a repository already opened, for pipelines that also read other files of
    /// it (sentence-transformers modules, a chat template, ...).
    pub fn load(pretrained: &Pretrained, options: &LoadOptions) -> Result<Self> {
        // The tokenizer first: what its build frees is handed back before the weights are
        // resident (`Pretrained::tokenizer`), rather than adding to the load's peak.
        let tokenizer = pretrained.tokenizer()?;
        Ok(Self::new(
            pretrained.load::<M>(options)?,
            tokenizer,
            pretrained.config().clone(),
            options.device.clone(),
        ))
    }
}

/// Whether inputs longer than a maximum length are cut, and at what length: transformers'
/// `truncation` and `max_length` call arguments. What `Default` gives and what length
/// `max_length: None` stands for is each pipeline's, as in Python (see its options struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Cut inputs longer than the maximum length (else a too-long input is an error).
    pub enabled: bool,
    /// The length to cut at; `None` is the pipeline's default length.
    pub max_length: Option<usize>,
}

impl Truncation {
    /// Cut at the pipeline's default length.
    pub const ON: Self = Self {
        enabled: true,
        max_length: None,
    };

    /// Do not cut: a too-long input is an error.
    pub const OFF: Self = Self {
        enabled: false,
        max_length: None,
    };

    /// These settings with `max_length` set: the given one, else `length`.
    pub(crate) fn or_length(self, length: usize) -> Self {
        Self {
            max_length: Some(self.max_length.unwrap_or(length)),
            ..self
        }
    }

    /// Tokenizer options for these settings; `max_length: None` leaves the tokenizer's
    /// `model_max_length`.
    pub(crate) fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            truncation: self.enabled,
            max_length: self.max_length,
            ..EncodeOptions::default()
        }
    }
}

/// Options of a pipeline that sends its inputs through the model `batch_size` at a time
/// (every pipeline's): gives them `with_batch_size`.
pub trait BatchOptions: Sized {
    /// The `batch_size` field.
    fn batch_size_mut(&mut self) -> &mut usize;

    /// Inputs (or windows, or prompts) per forward pass.
    fn with_batch_size(mut self, batch_size: usize) -> Self {
        *self.batch_size_mut() = batch_size;
        self
    }
}

/// Options of a pipeline that can cut long inputs: gives them `with_truncation` and
/// `with_max_length`.
pub trait TruncationOptions: Sized {
    /// The `truncation` field.
    fn truncation_mut(&mut self) -> &mut Truncation;

    /// Cut long inputs (or fail on inputs the model cannot take, when false).
    fn with_truncation(mut self, truncation: bool) -> Self {
        self.truncation_mut().enabled = truncation;
        self
    }

    /// The length, in tokens, to cut inputs at.
    fn with_max_length(mut self, max_length: usize) -> Self {
        self.truncation_mut().max_length = Some(max_length);
        self
    }
}
