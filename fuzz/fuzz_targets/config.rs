//! `config.json` text: parsed and validated, and when it is valid, a classifier built from the
//! weights of the fixture of its `model_type` and run on three tokens. Every step returns a
//! result or a library error, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use ferroformers::loading::weights::WeightFiles;
use ferroformers::{
    AutoModelForSequenceClassification, Device, FromPretrained, ModelConfig, ModelInput,
    ModelWeights, Tensor, WeightType,
};
use libfuzzer_sys::fuzz_target;

fn weights(model_type: &str) -> WeightFiles {
    let folder: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../tests/fixtures", model_type]
        .iter()
        .collect();
    WeightFiles::Safetensors(vec![
        folder.join("sequence-classification/model.safetensors")
    ])
}

fuzz_target!(|text: &[u8]| {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(config) = ModelConfig::from_json(text, Path::new("config.json")) else {
        return;
    };
    let files = weights(config.model_type());
    let Ok(vb) = ModelWeights::open(&files, WeightType::F32, &Device::Cpu) else {
        return;
    };
    if let Ok(model) = AutoModelForSequenceClassification::from_config(vb, &config) {
        let ids = Tensor::new(&[[2u32, 10, 3]], &Device::Cpu).unwrap();
        if let Ok(logits) = model.forward(&ModelInput::from_ids(ids)) {
            assert_eq!(logits.dims(), &[1, config.num_labels()]);
        }
    }
});
