//! A safetensors header: the input is the header's JSON, written with a correct length prefix
//! in front of the data of the BERT classification fixture, so that mutations of the JSON reach
//! the header's checks instead of the length prefix. The file is opened through the crate's
//! loading path and, when it opens, a classifier is built from it and run. Every step returns
//! a result or a library error, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ferroformers::loading::weights::WeightFiles;
use ferroformers::{
    AutoModelForSequenceClassification, Device, FromPretrained, ModelConfig, ModelInput,
    ModelWeights, Tensor, WeightType,
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    config: ModelConfig,
    /// The tensor bytes that follow the header.
    data: Vec<u8>,
    /// Where each input is written: a folder of this process's own.
    folder: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let folder: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "../tests/fixtures/bert/sequence-classification",
        ]
        .iter()
        .collect();
        let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Fixture {
            config: ModelConfig::from_file(&folder.join("config.json")).unwrap(),
            data: bytes[8 + header_len..].to_vec(),
            folder: tempfile::tempdir().unwrap(),
        }
    })
}

fuzz_target!(|header: &[u8]| {
    let fixture = fixture();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&fixture.data);
    // The model of the previous input, which mapped this file, was dropped with that input.
    let path = fixture.folder.path().join("model.safetensors");
    std::fs::write(&path, &file).unwrap();
    let files = WeightFiles::Safetensors(vec![path]);
    let Ok(vb) = ModelWeights::open(&files, WeightType::F32, &Device::Cpu) else {
        return;
    };
    if let Ok(model) = AutoModelForSequenceClassification::from_config(vb, &fixture.config) {
        let ids = Tensor::new(&[[2u32, 10, 3]], &Device::Cpu).unwrap();
        if let Ok(logits) = model.forward(&ModelInput::from_ids(ids)) {
            assert_eq!(logits.dims(), &[1, fixture.config.num_labels()]);
        }
    }
});
