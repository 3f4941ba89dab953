//! Property tests over untrusted inputs, run by `cargo test` with a bounded number of cases:
//! config parsing, safetensors headers, tokenizer files, pickles and generation settings.
//! Each property is "returns Ok or a library error, never panics"; and GGUF metadata of any
//! type written reads back as written. Failures proptest finds are
//! kept in tests/fuzz.proptest-regressions and replayed first on every run.

mod common;

use std::io::Write;
use std::path::Path;

use common::fixture;
use ferroformers::generation::{processors::processors_for, GenerationConfig};
use ferroformers::loading::weights::WeightFiles;
use ferroformers::{
    AutoModelForSequenceClassification, BertModel, FromPretrained, HubOptions, LoadOptions,
    ModelConfig, ModelWeights, Tokenizer, WeightType,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn copy_base() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("bert/base")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    folder
}

fn load(folder: &Path) -> ferroformers::Result<BertModel> {
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    BertModel::from_pretrained(&folder.to_string_lossy(), &options)
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "id2label",
    "n_embd",
    "n_head",
    "dim",
    "relative_attention_num_buckets",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics_on_any_text(text in ".{0,200}") {
        let _ = ModelConfig::from_json(&text, Path::new("config.json"));
    }

    #[test]
    fn config_parsing_never_panics_on_mutated_configs(
        key in prop::sample::select(CONFIG_KEYS),
        value in json_value(),
        model_type in prop::sample::select(&["bert", "roberta", "distilbert", "mpnet", "gpt2", "t5"][..]),
    ) {
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("bert/base/config.json")).unwrap(),
        ).unwrap();
        config["model_type"] = serde_json::Value::from(model_type);
        config[key] = value;
        let _ = ModelConfig::from_json(&config.to_string(), Path::new("config.json"));
    }

    #[test]
    fn generation_settings_are_validated_never_panic(
        value in json_value(),
        key in prop::sample::select(&[
            "max_new_tokens", "max_length", "temperature", "top_k", "top_p", "repetition_penalty",
            "no_repeat_ngram_size", "num_beams", "num_return_sequences", "length_penalty",
            "early_stopping", "eos_token_id", "stop_strings", "do_sample", "seed",
        ][..]),
        sample in any::<bool>(),
    ) {
        let settings = serde_json::json!({ key: value, "do_sample": sample });
        if let Ok(config) = serde_json::from_value::<GenerationConfig>(settings) {
            if config.validate().is_ok() {
                // Valid settings always build their processors.
                prop_assert!(processors_for(&config, 4).is_ok());
            }
        }
    }
}

proptest! {
    // These write files and load models: fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_with_damaged_headers_never_panic(
        // Anywhere in the ~4 KB header and the start of the data.
        flips in prop::collection::vec((0usize..6000, any::<u8>()), 1..6),
        cut in prop::option::of(0usize..4000),
    ) {
        let folder = copy_base();
        let path = folder.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.min(bytes.len()));
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(model) = load(folder.path()) {
            let ids = ferroformers::Tensor::new(&[[2u32, 10, 3]], &ferroformers::Device::Cpu).unwrap();
            let _ = model.forward(&ferroformers::ModelInput::from_ids(ids));
        }
    }

    #[test]
    fn arbitrary_safetensors_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let folder = copy_base();
        std::fs::write(folder.path().join("model.safetensors"), &bytes).unwrap();
        prop_assert!(load(folder.path()).is_err());
    }

    #[test]
    fn damaged_tokenizer_files_never_panic(
        cut in 0usize..12_000,
        flips in prop::collection::vec((0usize..12_000, prop::sample::select(&[b'"', b'{', b'}', b'0', b'x', b' ', b','][..])), 0..4),
    ) {
        let folder = copy_base();
        let path = folder.path().join("tokenizer.json");
        let mut text = std::fs::read(&path).unwrap();
        for (at, byte) in flips {
            let at = at % text.len();
            text[at] = byte;
        }
        text.truncate(cut.min(text.len()));
        std::fs::write(&path, &text).unwrap();
        if let Ok(tokenizer) = Tokenizer::from_pretrained(&folder.path().to_string_lossy(), &HubOptions::default()) {
            let _ = tokenizer.encode("The quick brown fox, café 中文", &Default::default());
        }
    }

    #[test]
    fn arbitrary_pickles_never_panic(pickle in prop::collection::vec(any::<u8>(), 0..200)) {
        let folder = copy_base();
        std::fs::remove_file(folder.path().join("model.safetensors")).unwrap();
        let file = std::fs::File::create(folder.path().join("pytorch_model.bin")).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(&pickle).unwrap();
        zip.finish().unwrap();
        prop_assert!(load(folder.path()).is_err());
    }
}

/// Counts of how far the cases of a structured fuzzer got, to assert that it reaches deep states
/// (random bytes and text almost never get past the first parse).
#[derive(Debug, Default)]
struct Depth {
    /// Refused by the first check (config validation, safetensors header).
    refused: std::cell::Cell<usize>,
    /// Parsed, then refused when the model was built from it.
    refused_by_model: std::cell::Cell<usize>,
    /// A model was built and run.
    ran: std::cell::Cell<usize>,
}

impl Depth {
    fn count(counter: &std::cell::Cell<usize>) {
        counter.set(counter.get() + 1);
    }

    /// Each stage must be reached by at least `share` of the `cases`.
    fn assert_each_reached(&self, cases: u32, share: f64) {
        let least = (f64::from(cases) * share) as usize;
        eprintln!("how far {cases} cases got: {self:?}");
        for (stage, count) in [
            ("refused at the first check", self.refused.get()),
            (
                "refused when building the model",
                self.refused_by_model.get(),
            ),
            ("built and run", self.ran.get()),
        ] {
            assert!(
                count >= least,
                "only {count} of {cases} cases were {stage} (want {least}): {self:?}"
            );
        }
    }
}

/// A proptest runner with this file's settings: `cases` cases, failures saved beside this file.
fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    })
}

fn tiny_input() -> ferroformers::ModelInput {
    let ids = ferroformers::Tensor::new(&[[2u32, 10, 3]], &ferroformers::Device::Cpu).unwrap();
    ferroformers::ModelInput::from_ids(ids)
}

/// Build a classifier from `weights` and `config`, and run it on three tokens: the logits have
/// the configured number of classes, or some step returns a library error.
fn build_and_run(
    weights: &WeightFiles,
    config: &ModelConfig,
    depth: &Depth,
) -> Result<(), TestCaseError> {
    let vb = match ModelWeights::open(weights, WeightType::F32, &ferroformers::Device::Cpu) {
        Ok(vb) => vb,
        Err(_) => {
            Depth::count(&depth.refused);
            return Ok(());
        }
    };
    match AutoModelForSequenceClassification::from_config(vb, config) {
        Err(_) => Depth::count(&depth.refused_by_model),
        Ok(model) => {
            Depth::count(&depth.ran);
            if let Ok(logits) = model.forward(&tiny_input()) {
                prop_assert_eq!(logits.dims(), &[1, config.num_labels()]);
            }
        }
    }
    Ok(())
}

/// JSON-valued config fields: the fixtures' real `config.json`s with fields set to values of
/// the right and the wrong type, boundary numbers, or removed, so that most cases parse as
/// JSON and reach validation, weight loading and a forward pass.
mod config_fields {
    use super::*;
    use serde_json::{json, Value};

    /// The four architectures' classification fixtures: every one of them loads through
    /// `AutoModelForSequenceClassification`.
    pub const FIXTURES: &[&str] = &[
        "bert/sequence-classification",
        "roberta/sequence-classification",
        "distilbert/sequence-classification",
        "gpt2/sequence-classification",
    ];

    /// Fields that the fixtures do not all have but some architecture reads.
    const OTHER_KEYS: &[&str] = &[
        "model_type",
        "id2label",
        "n_inner",
        "n_embd",
        "n_head",
        "n_layer",
        "n_positions",
        "dim",
        "n_heads",
        "hidden_dim",
        "activation",
        "activation_function",
        "hidden_act",
        "sinusoidal_pos_embds",
        "add_cross_attention",
        "position_embedding_type",
        "layer_norm_epsilon",
        "problem_type",
        "pad_token_id",
        "tie_word_embeddings",
    ];

    /// Numbers at the edges: zero, negatives, the fixtures' own sizes and their neighbours,
    /// sizes that overflow when multiplied, and floats where integers belong.
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                json!(0),
                json!(1),
                json!(2),
                json!(3),
                json!(4),
                json!(8),
                json!(16),
                json!(31),
                json!(32),
                json!(33),
                json!(37),
                json!(64),
                json!(128),
                json!(451),
                json!(857),
                json!(-1),
                json!(-32),
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u64::MAX),
                json!(1u64 << 31),
                json!(1u64 << 32),
                json!(1u64 << 62),
                json!(0.0),
                json!(-0.0),
                json!(1e-12),
                json!(0.5),
                json!(32.0),
                json!(-1.5),
                json!(1e300),
                json!(f64::MIN_POSITIVE),
            ]),
            (0u64..200).prop_map(Value::from),
        ]
    }

    fn text() -> impl Strategy<Value = Value> {
        prop::sample::select(
            &[
                "bert",
                "roberta",
                "distilbert",
                "gpt2",
                "gelu",
                "gelu_new",
                "relu",
                "silu",
                "tanh",
                "absolute",
                "relative_key",
                "regression",
                "multi_label_classification",
                "",
                "32",
                "NaN",
            ][..],
        )
        .prop_map(Value::from)
    }

    /// `id2label`-shaped objects whose keys are indices, gaps, negatives or not numbers.
    fn labels() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            prop_oneof!["[0-9]{1,2}", Just("-1".to_string()), Just("x".to_string())],
            prop_oneof![
                "[A-Z]{0,4}".prop_map(Value::from),
                number(),
                Just(Value::Null)
            ],
            0..5,
        )
        .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    pub fn value() -> impl Strategy<Value = Value> {
        prop_oneof![4 => number(), 2 => text(), 1 => labels(), 1 => json_value()]
    }

    #[derive(Debug, Clone)]
    pub enum Key {
        /// One of the fixture's own fields.
        Existing(prop::sample::Index),
        Other(&'static str),
    }

    #[derive(Debug, Clone)]
    pub enum Edit {
        Set(Key, Value),
        Remove(Key),
    }

    pub fn edit() -> impl Strategy<Value = Edit> {
        let key = prop_oneof![
            3 => any::<prop::sample::Index>().prop_map(Key::Existing),
            2 => prop::sample::select(OTHER_KEYS).prop_map(Key::Other),
        ];
        prop_oneof![
            5 => (key.clone(), value()).prop_map(|(key, value)| Edit::Set(key, value)),
            1 => key.prop_map(Edit::Remove),
        ]
    }

    pub fn apply(config: &mut serde_json::Map<String, Value>, edit: Edit) {
        let name = |key: &Key, config: &serde_json::Map<String, Value>| match key {
            Key::Existing(index) => config.keys().nth(index.index(config.len().max(1))).cloned(),
            Key::Other(name) => Some(name.to_string()),
        };
        match edit {
            Edit::Set(key, value) => {
                if let Some(name) = name(&key, config) {
                    config.insert(name, value);
                }
            }
            Edit::Remove(key) => {
                if let Some(name) = name(&key, config) {
                    config.remove(&name);
                }
            }
        }
    }
}

#[test]
fn config_fields_with_hostile_values_are_refused_or_build_a_working_model() {
    const CASES: u32 = 768;
    let fixtures: Vec<(serde_json::Map<String, serde_json::Value>, WeightFiles)> =
        config_fields::FIXTURES
            .iter()
            .map(|name| {
                let config = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
                let weights =
                    WeightFiles::Safetensors(vec![fixture(name).join("model.safetensors")]);
                (serde_json::from_str(&config).unwrap(), weights)
            })
            .collect();
    let depth = Depth::default();
    let strategy = (
        prop::sample::select((0..fixtures.len()).collect::<Vec<_>>()),
        prop::collection::vec(config_fields::edit(), 1..4),
    );
    runner(CASES)
        .run(&strategy, |(which, edits)| {
            let (config, weights) = &fixtures[which];
            let mut config = config.clone();
            for edit in edits {
                config_fields::apply(&mut config, edit);
            }
            let text = serde_json::Value::Object(config).to_string();
            match ModelConfig::from_json(&text, Path::new("config.json")) {
                Err(_) => Depth::count(&depth.refused),
                Ok(config) => build_and_run(weights, &config, &depth)?,
            }
            Ok(())
        })
        .unwrap();
    // Measured over 8 runs: ~55% refused by validation, ~6% by the weights, ~38% run. A stage
    // reached by under 1% of the cases means the strategy no longer gets there; 1% (7 cases) is
    // far enough below 6% (46 cases, standard deviation ~7) never to fail by chance.
    depth.assert_each_reached(CASES, 0.01);
}

/// Structural damage to a safetensors header: the fixture's header parsed, its tensors' offsets,
/// dtypes and shapes changed, entries dropped, duplicated or replaced, `__metadata__` changed,
/// then written back with a correct length prefix, so that the damage reaches the header's
/// checks (and past them, to the model) instead of breaking the JSON.
mod safetensors_headers {
    use super::*;
    use serde_json::{json, Value};

    /// The file: header entries in their order (names may repeat), then the data.
    #[derive(Debug, Clone)]
    pub struct Checkpoint {
        pub entries: Vec<(String, Value)>,
        pub data: Vec<u8>,
    }

    impl Checkpoint {
        pub fn read(path: &Path) -> Self {
            let bytes = std::fs::read(path).unwrap();
            let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Map<String, Value> =
                serde_json::from_slice(&bytes[8..8 + length]).unwrap();
            Self {
                entries: header.into_iter().collect(),
                data: bytes[8 + length..].to_vec(),
            }
        }

        /// The file's bytes; written by hand because a JSON map cannot hold a name twice.
        pub fn to_bytes(&self, pad_to_8: bool) -> Vec<u8> {
            let fields: Vec<String> = self
                .entries
                .iter()
                .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
                .collect();
            let mut header = format!("{{{}}}", fields.join(",")).into_bytes();
            if pad_to_8 {
                // As the safetensors writer does, so that the data starts aligned.
                header.resize(header.len().next_multiple_of(8), b' ');
            }
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header);
            bytes.extend(&self.data);
            bytes
        }

        /// Positions of the tensor entries (not `__metadata__`).
        fn tensors(&self) -> Vec<usize> {
            (0..self.entries.len())
                .filter(|&at| self.entries[at].0 != "__metadata__")
                .collect()
        }

        fn tensor(&mut self, index: &prop::sample::Index) -> Option<&mut (String, Value)> {
            let tensors = self.tensors();
            let at = *tensors.get(index.index(tensors.len().max(1)))?;
            self.entries.get_mut(at)
        }

        fn offsets(&self, index: &prop::sample::Index) -> Option<Value> {
            let tensors = self.tensors();
            let at = *tensors.get(index.index(tensors.len().max(1)))?;
            self.entries[at].1.get("data_offsets").cloned()
        }
    }

    #[derive(Debug, Clone)]
    pub enum Offsets {
        Reverse,
        /// Both ends moved by the same amount: the tensor overlaps a neighbour or leaves the data.
        Shift(i64),
        Begin(Value),
        End(Value),
        /// Another tensor's offsets: two tensors on the same bytes.
        CopyOf(prop::sample::Index),
        /// Not a pair of integers.
        Literal(Value),
    }

    #[derive(Debug, Clone)]
    pub enum Shape {
        Literal(Value),
        /// One dimension doubled: the byte length no longer matches.
        Double(prop::sample::Index),
        /// A dimension of 1 added: the bytes match, the model's expected shape does not.
        AppendOne,
        Reverse,
        DropLast,
    }

    #[derive(Debug, Clone)]
    pub enum Edit {
        Offsets(prop::sample::Index, Offsets),
        Dtype(prop::sample::Index, Value),
        Shape(prop::sample::Index, Shape),
        Drop(prop::sample::Index),
        /// The entry again under the same name (a repeated JSON key) or another tensor's name.
        Duplicate(prop::sample::Index, Option<prop::sample::Index>),
        RemoveField(prop::sample::Index, &'static str),
        Replace(prop::sample::Index, Value),
        /// Two tensors' names exchanged: a valid header whose shapes do not fit the model.
        Swap(prop::sample::Index, prop::sample::Index),
        /// A name the model does not look for.
        Rename(prop::sample::Index, String),
        /// `__metadata__` set to a value, or removed.
        Metadata(Option<Value>),
    }

    fn number(data_len: u64) -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                json!(0),
                json!(1),
                json!(data_len - 1),
                json!(data_len),
                json!(data_len + 1),
                json!(u64::MAX),
                json!(u64::MAX - 3),
                json!(1u64 << 32),
                json!(-1),
                json!(0.5),
                json!("0"),
                Value::Null,
            ]),
            (0..data_len + 16).prop_map(Value::from),
        ]
    }

    fn offsets(data_len: u64) -> impl Strategy<Value = Offsets> {
        let data_len_i64 = data_len as i64;
        prop_oneof![
            Just(Offsets::Reverse),
            prop_oneof![
                -8i64..=8,
                prop::sample::select(vec![-data_len_i64, data_len_i64, -4096, 4096])
            ]
            .prop_map(Offsets::Shift),
            number(data_len).prop_map(Offsets::Begin),
            number(data_len).prop_map(Offsets::End),
            any::<prop::sample::Index>().prop_map(Offsets::CopyOf),
            prop_oneof![
                prop::collection::vec(number(data_len), 0..4).prop_map(Value::from),
                json_value(),
            ]
            .prop_map(Offsets::Literal),
        ]
    }

    fn dtype() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(
                &[
                    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                    "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
                    "C64", "f32", "", "X",
                ][..]
            )
            .prop_map(Value::from),
            json_value(),
        ]
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            prop::sample::select(vec![
                json!([]),
                json!([0]),
                json!([0, 32]),
                json!([1]),
                json!([u64::MAX]),
                json!([u64::MAX, u64::MAX]),
                json!([1u64 << 32, 1u64 << 32]),
                json!([1u64 << 62, 4]),
                json!([-1, 32]),
                json!([32.5]),
                json!("32"),
                Value::Null,
            ])
            .prop_map(Shape::Literal),
            prop::collection::vec(0u64..70, 0..5)
                .prop_map(|dims| Shape::Literal(Value::from(dims))),
            any::<prop::sample::Index>().prop_map(Shape::Double),
            Just(Shape::AppendOne),
            Just(Shape::Reverse),
            Just(Shape::DropLast),
        ]
    }

    pub fn edit(data_len: u64) -> impl Strategy<Value = Edit> {
        let tensor = any::<prop::sample::Index>;
        prop_oneof![
            4 => (tensor(), offsets(data_len)).prop_map(|(t, o)| Edit::Offsets(t, o)),
            3 => (tensor(), dtype()).prop_map(|(t, d)| Edit::Dtype(t, d)),
            3 => (tensor(), shape()).prop_map(|(t, s)| Edit::Shape(t, s)),
            1 => tensor().prop_map(Edit::Drop),
            1 => (tensor(), prop::option::of(tensor())).prop_map(|(t, n)| Edit::Duplicate(t, n)),
            1 => (tensor(), prop::sample::select(&["dtype", "shape", "data_offsets"][..]))
                .prop_map(|(t, f)| Edit::RemoveField(t, f)),
            1 => (tensor(), json_value()).prop_map(|(t, v)| Edit::Replace(t, v)),
            2 => (tensor(), tensor()).prop_map(|(a, b)| Edit::Swap(a, b)),
            1 => (tensor(), "[a-z._]{0,12}").prop_map(|(t, name)| Edit::Rename(t, name)),
            1 => prop::option::of(prop_oneof![
                prop::collection::btree_map("[a-z_]{0,8}", "[a-z]{0,8}", 0..3)
                    .prop_map(|map| serde_json::to_value(map).unwrap()),
                json_value(),
            ])
            .prop_map(Edit::Metadata),
        ]
    }

    /// Set `field` of a tensor entry, when the entry is still an object.
    fn set(entry: &mut (String, Value), field: &str, value: Value) {
        if let Some(fields) = entry.1.as_object_mut() {
            fields.insert(field.to_string(), value);
        }
    }

    pub fn apply(file: &mut Checkpoint, edit: Edit) {
        match edit {
            Edit::Offsets(index, change) => {
                let copied = match &change {
                    Offsets::CopyOf(other) => file.offsets(other),
                    _ => None,
                };
                let Some(entry) = file.tensor(&index) else {
                    return;
                };
                let old = entry.1.get("data_offsets").cloned().unwrap_or(Value::Null);
                let end = |at: usize| old.get(at).cloned().unwrap_or(Value::Null);
                let shifted = |at: usize, by: i64| {
                    end(at)
                        .as_i64()
                        .map_or(Value::Null, |n| Value::from(n.saturating_add(by)))
                };
                let new = match change {
                    Offsets::Reverse => json!([end(1), end(0)]),
                    Offsets::Shift(by) => json!([shifted(0, by), shifted(1, by)]),
                    Offsets::Begin(begin) => json!([begin, end(1)]),
                    Offsets::End(stop) => json!([end(0), stop]),
                    Offsets::CopyOf(_) => copied.unwrap_or(Value::Null),
                    Offsets::Literal(value) => value,
                };
                set(entry, "data_offsets", new);
            }
            Edit::Dtype(index, dtype) => {
                if let Some(entry) = file.tensor(&index) {
                    set(entry, "dtype", dtype);
                }
            }
            Edit::Shape(index, change) => {
                let Some(entry) = file.tensor(&index) else {
                    return;
                };
                let mut dims: Vec<Value> = entry
                    .1
                    .get("shape")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let new = match change {
                    Shape::Literal(value) => value,
                    Shape::Double(which) => {
                        let at = which.index(dims.len().max(1));
                        if let Some(dim) = dims.get_mut(at) {
                            *dim = dim
                                .as_u64()
                                .map_or(Value::Null, |d| Value::from(d.saturating_mul(2)));
                        }
                        Value::from(dims)
                    }
                    Shape::AppendOne => {
                        dims.push(Value::from(1));
                        Value::from(dims)
                    }
                    Shape::Reverse => {
                        dims.reverse();
                        Value::from(dims)
                    }
                    Shape::DropLast => {
                        dims.pop();
                        Value::from(dims)
                    }
                };
                set(entry, "shape", new);
            }
            Edit::Drop(index) => {
                let tensors = file.tensors();
                if let Some(&at) = tensors.get(index.index(tensors.len().max(1))) {
                    file.entries.remove(at);
                }
            }
            Edit::Duplicate(index, renamed_as) => {
                let name = renamed_as.and_then(|other| file.tensor(&other).map(|e| e.0.clone()));
                if let Some(entry) = file.tensor(&index).cloned() {
                    let name = name.unwrap_or_else(|| entry.0.clone());
                    file.entries.push((name, entry.1));
                }
            }
            Edit::RemoveField(index, field) => {
                if let Some(fields) = file.tensor(&index).and_then(|e| e.1.as_object_mut()) {
                    fields.remove(field);
                }
            }
            Edit::Replace(index, value) => {
                if let Some(entry) = file.tensor(&index) {
                    entry.1 = value;
                }
            }
            Edit::Swap(first, second) => {
                let tensors = file.tensors();
                let at =
                    |index: prop::sample::Index| tensors.get(index.index(tensors.len().max(1)));
                if let (Some(&a), Some(&b)) = (at(first), at(second)) {
                    let name = file.entries[a].0.clone();
                    file.entries[a].0 = std::mem::replace(&mut file.entries[b].0, name);
                }
            }
            Edit::Rename(index, name) => {
                if let Some(entry) = file.tensor(&index) {
                    entry.0 = name;
                }
            }
            Edit::Metadata(value) => {
                file.entries.retain(|(name, _)| name != "__metadata__");
                if let Some(value) = value {
                    file.entries.insert(0, ("__metadata__".to_string(), value));
                }
            }
        }
    }
}

#[test]
fn safetensors_with_structurally_damaged_headers_are_refused_or_load() {
    const CASES: u32 = 512;
    let name = "bert/sequence-classification";
    let config = ModelConfig::from_file(&fixture(name).join("config.json")).unwrap();
    let original = safetensors_headers::Checkpoint::read(&fixture(name).join("model.safetensors"));
    let folder = tempfile::tempdir().unwrap();
    let depth = Depth::default();
    let written = std::cell::Cell::new(0usize);
    let strategy = (
        prop::collection::vec(safetensors_headers::edit(original.data.len() as u64), 1..3),
        any::<bool>(),
        // The data cut short, or followed by bytes no tensor claims.
        prop::option::weighted(
            0.15,
            prop_oneof![
                (0..original.data.len()).prop_map(|keep| -((original.data.len() - keep) as i64)),
                (1i64..64),
            ],
        ),
    );
    runner(CASES)
        .run(&strategy, |(edits, pad_to_8, resize)| {
            let mut file = original.clone();
            for edit in edits {
                safetensors_headers::apply(&mut file, edit);
            }
            if let Some(by) = resize {
                let len = (file.data.len() as i64 + by) as usize;
                file.data.resize(len, 0xA5);
            }
            // A new file per case: the previous case's model may still map its file.
            written.set(written.get() + 1);
            let path = folder.path().join(format!("{}.safetensors", written.get()));
            std::fs::write(&path, file.to_bytes(pad_to_8)).unwrap();
            build_and_run(&WeightFiles::Safetensors(vec![path]), &config, &depth)
        })
        .unwrap();
    // Measured over 8 runs: ~84% refused by the header checks (most single edits break
    // safetensors' strict offsets), ~10% by the model's shapes, ~7% run. A stage reached by
    // under 1% of the cases (5) means the strategy no longer gets there; 7% (35 cases, standard
    // deviation ~6) is far enough above never to fail by chance.
    depth.assert_each_reached(CASES, 0.01);
}

/// The entry point the cargo-fuzz pickle target calls (fuzz/fuzz_targets/pickle.rs) is the
/// vetting that loading does: it accepts the fixture's real pickle and refuses one that calls
/// `os.system`, with the same error loading gives.
#[test]
fn the_fuzzing_entry_point_vets_pickles_as_loading_does() {
    let archive = std::fs::File::open(fixture("bert/base-pytorch-bin/pytorch_model.bin")).unwrap();
    let mut archive = zip::ZipArchive::new(archive).unwrap();
    let name = archive
        .file_names()
        .filter_map(|name| name.ok().map(|name| name.into_owned()))
        .find(|name| name.ends_with("/data.pkl"))
        .unwrap();
    let mut pickle = Vec::new();
    std::io::Read::read_to_end(&mut archive.by_name(&name).unwrap(), &mut pickle).unwrap();
    assert!(ferroformers::loading::fuzzing::check_pickle(&pickle).is_ok());

    let malicious = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
    let error = ferroformers::loading::fuzzing::check_pickle(malicious).unwrap_err();
    assert!(
        matches!(&error, ferroformers::Error::InvalidWeights(why) if why.contains("os.system")),
        "{error}"
    );
}

/// GGUF metadata values of every type, arrays of one type each (as the format holds them).
fn gguf_value() -> impl Strategy<Value = ferroformers::loading::gguf::GgufValue> {
    use ferroformers::loading::gguf::GgufValue as V;
    let scalar = prop_oneof![
        any::<u8>().prop_map(V::U8),
        any::<i8>().prop_map(V::I8),
        any::<u16>().prop_map(V::U16),
        any::<i16>().prop_map(V::I16),
        any::<u32>().prop_map(V::U32),
        any::<i32>().prop_map(V::I32),
        // NaN is not equal to itself: the round trip is checked on the bits below.
        any::<f32>().prop_map(V::F32),
        any::<bool>().prop_map(V::Bool),
        ".{0,20}".prop_map(V::String),
        any::<u64>().prop_map(V::U64),
        any::<i64>().prop_map(V::I64),
        any::<f64>().prop_map(V::F64),
    ];
    prop_oneof![
        4 => scalar,
        1 => prop::collection::vec(any::<i32>(), 0..8)
            .prop_map(|v| V::Array(v.into_iter().map(V::I32).collect())),
        1 => prop::collection::vec(".{0,8}", 0..8)
            .prop_map(|v| V::Array(v.into_iter().map(V::String).collect())),
    ]
}

/// A value's bits, so that NaNs compare.
fn gguf_bits(value: &ferroformers::loading::gguf::GgufValue) -> String {
    use ferroformers::loading::gguf::GgufValue as V;
    match value {
        V::F32(v) => format!("f32:{:08x}", v.to_bits()),
        V::F64(v) => format!("f64:{:016x}", v.to_bits()),
        V::Array(values) => values.iter().map(gguf_bits).collect::<Vec<_>>().join(","),
        other => format!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn written_gguf_metadata_reads_back_as_written(
        entries in prop::collection::btree_map("[a-z.]{1,12}", gguf_value(), 0..12),
    ) {
        use ferroformers::loading::gguf::{write_gguf, GgufHeader};
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("metadata.gguf");
        let metadata: Vec<_> = entries.into_iter().collect();
        write_gguf(&path, &metadata, &[], |_| Ok(Vec::new())).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = GgufHeader::parse(&bytes).unwrap();
        let read: Vec<(String, String)> =
            header.metadata.iter().map(|(k, v)| (k.clone(), gguf_bits(v))).collect();
        let written: Vec<(String, String)> =
            metadata.iter().map(|(k, v)| (k.clone(), gguf_bits(v))).collect();
        prop_assert_eq!(read, written);
    }
}
