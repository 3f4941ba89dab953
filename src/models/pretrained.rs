//! `from_pretrained`: a model id or folder in, a loaded model out.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::loading::gguf::{is_gguf_file, GgmlType, GgufCheckpoint, GgufFile};
use crate::loading::hub::{HubOptions, ModelSource};
use crate::loading::weights::WeightFiles;
use crate::models::config::ModelConfig;
use crate::models::gguf;
use crate::models::weight_type::WeightType;
use crate::models::weights::ModelWeights;
use crate::tokenizer::Tokenizer;

/// Where to find a model and how to place its weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Revision, token, cache folder, endpoint and offline mode of Hub downloads;
    /// [`HubOptions::from_env`] by default.
    pub hub: HubOptions,
    /// How the weights are stored: f32 (the default), f16, bf16, or int8 linear layers (CPU
    /// only). On the CPU the linear layers keep bf16 weights as bf16 (f16 ones as f32) and
    /// compute with f32 activations.
    pub weight_type: WeightType,
    /// Where the weights live and the model runs; the CPU by default. Inputs must be on
    /// this device too ([`EncodedBatch::to_input`](crate::EncodedBatch::to_input) takes it).
    pub device: Device,
    /// The GGUF file of the repository to load, as transformers' `gguf_file`: its metadata
    /// stands for `config.json` and its tensors for the weights. A path to a `.gguf` file
    /// given as the model needs none.
    pub gguf_file: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            hub: HubOptions::from_env(),
            weight_type: WeightType::F32,
            device: Device::Cpu,
            gguf_file: None,
        }
    }
}

impl LoadOptions {
    /// Set [`LoadOptions::hub`].
    pub fn with_hub(mut self, hub: HubOptions) -> Self {
        self.hub = hub;
        self
    }

    /// Set [`LoadOptions::weight_type`]; f32 by default. [`WeightType::Int8`] needs the CPU
    /// with the kernels on; elsewhere loading fails with [`Error::InvalidInput`].
    pub fn with_weight_type(mut self, weight_type: WeightType) -> Self {
        self.weight_type = weight_type;
        self
    }

    /// Set [`LoadOptions::device`]; the CPU by default.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Set [`LoadOptions::gguf_file`]: load this GGUF file of the repository.
    pub fn with_gguf_file(mut self, file: impl Into<String>) -> Self {
        self.gguf_file = Some(file.into());
        self
    }
}

/// A model repository (Hub id or folder) with its parsed `config.json`, or a GGUF file with
/// the config its metadata stands for. Weights and tokenizer files are only fetched when asked
/// for.
#[derive(Debug, Clone)]
pub struct Pretrained {
    source: ModelSource,
    config: ModelConfig,
    gguf: Option<Arc<GgufFile>>,
}

impl Pretrained {
    /// Resolve `model` and read its `config.json`; a path to a `.gguf` file opens that file
    /// (see [`Pretrained::open_gguf`]), with the folder it is in as the repository.
    pub fn open(model: &str, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(model);
        if is_gguf_file(path) {
            let folder = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let source = ModelSource::Folder(folder.to_path_buf());
            return Self::with_gguf(source, path);
        }
        let source = ModelSource::new(model, hub)?;
        let config = ModelConfig::from_file(&source.require("config.json")?)?;
        Ok(Self {
            source,
            config,
            gguf: None,
        })
    }

    /// Resolve `model` and open its GGUF file `file` (downloaded like any file of a Hub
    /// model): its metadata stands for `config.json`, its tensors for the weights, and its
    /// `tokenizer.ggml.*` entries for the tokenizer unless a `tokenizer.json` is beside it.
    pub fn open_gguf(model: &str, file: &str, hub: &HubOptions) -> Result<Self> {
        let source = ModelSource::new(model, hub)?;
        let path = source.require(file)?;
        Self::with_gguf(source, &path)
    }

    /// [`Pretrained::open_gguf`] when `options` name a GGUF file, else [`Pretrained::open`].
    pub fn open_with(model: &str, options: &LoadOptions) -> Result<Self> {
        match &options.gguf_file {
            Some(file) => Self::open_gguf(model, file, &options.hub),
            None => Self::open(model, &options.hub),
        }
    }

    fn with_gguf(source: ModelSource, path: &Path) -> Result<Self> {
        let file = Arc::new(GgufFile::open(path)?);
        let config = gguf::config(&file, &path.display().to_string())?;
        Ok(Self {
            source,
            config,
            gguf: Some(file),
        })
    }

    /// The GGUF file the model is read from, if it is.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_deref()
    }

    /// The parsed `config.json`: check the architecture or the labels before fetching weights.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the files come from (a local folder or the Hub), to fetch other files the
    /// repository ships.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// Fetch the weights and open them as `weight_type` on `device`.
    pub fn weights(&self, weight_type: WeightType, device: &Device) -> Result<ModelWeights> {
        match &self.gguf {
            Some(file) => {
                let names = gguf::tensor_names(&self.config)?;
                let checkpoint = GgufCheckpoint::new(file.clone(), names);
                Ok(ModelWeights::from_gguf(checkpoint, weight_type, device))
            }
            None => ModelWeights::open(&WeightFiles::resolve(&self.source)?, weight_type, device),
        }
    }

    /// Write this model (a safetensors or PyTorch checkpoint, with its tokenizer) as a GGUF
    /// file at `path`, its matrices in `outtype` (f32, f16, bf16, Q8_0, Q4_0 or Q4_1), as
    /// llama.cpp's `convert_hf_to_gguf.py` writes it: llama.cpp reads the file, and so does
    /// this library. Llama, Mistral, Qwen2, Qwen3 and GPT-2 models. A model opened from an
    /// f32, f16 or bf16 GGUF file is written again in `outtype`, as `llama-quantize --pure`
    /// would; a quantized one is refused.
    ///
    /// ```no_run
    /// use ferroformers::{loading::gguf::GgmlType, HubOptions, Pretrained};
    ///
    /// let model = Pretrained::open("Qwen/Qwen2.5-0.5B-Instruct", &HubOptions::from_env())?;
    /// model.save_gguf(GgmlType::Q4_0, "qwen2.5-0.5b-instruct-q4_0.gguf".as_ref())?;
    /// # Ok::<(), ferroformers::Error>(())
    /// ```
    pub fn save_gguf(&self, outtype: GgmlType, path: &Path) -> Result<gguf::GgufWritten> {
        gguf::save_gguf(self, outtype, path)
    }

    /// Fetch the weights and build `M` from them, as `options` place and store them.
    pub fn load<M: FromPretrained>(&self, options: &LoadOptions) -> Result<M> {
        let vb = self.weights(options.weight_type, &options.device)?;
        let model = M::from_config(vb, &self.config);
        // The checkpoint's tensors, read and packed one by one, were freed into the heap.
        crate::runtime::allocator::release_freed_memory();
        model
    }

    /// Fetch the tokenizer files and build the tokenizer; for a GGUF file, from its
    /// `tokenizer.ggml.*` metadata unless a `tokenizer.json` is beside it.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let tokenizer = match &self.gguf {
            Some(file) if self.source.get("tokenizer.json")?.is_none() => {
                Tokenizer::from_gguf(file.header())
            }
            _ => Tokenizer::from_source(&self.source),
        };
        // What a large vocabulary's build frees (the GGUF metadata's strings read, maps
        // grown) the heap would otherwise keep resident for good
        // (`allocator::keep_freed_memory`): with it, `generate` on a Qwen2.5-0.5B GGUF
        // file (151,646 tokens) peaked 12 MB higher.
        crate::runtime::allocator::release_freed_memory();
        tokenizer
    }
}

/// Models that load from a checkpoint, like transformers' `from_pretrained`.
pub trait FromPretrained: Sized {
    /// Build the model from weights and the config that `config.json` dispatched to.
    fn from_config(vb: ModelWeights, config: &ModelConfig) -> Result<Self>;

    /// Load `model` (a Hub id or a local folder).
    fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Pretrained::open_with(model, options)?.load(options)
    }
}

/// A tensor missing from the checkpoint, or of another shape than the config implies, comes
/// back from candle naming the tensor (and both shapes); say what it means.
pub(crate) fn checkpoint_mismatch(error: Error) -> Error {
    match error {
        Error::Candle(e) => Error::InvalidWeights(format!(
            "{e}. The weights do not fit config.json: check that both come from the same checkpoint"
        )),
        other => other,
    }
}
