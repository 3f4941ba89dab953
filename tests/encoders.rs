//! RoBERTa (and XLM-RoBERTa, CamemBERT), DistilBERT and MPNet against PyTorch, head by head, on
//! tiny random checkpoints made by scripts/make_fixtures.py with transformers 4.57.6.

mod common;

use common::*;
use ferroformers::{
    AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification, AutoModelForTokenClassification, DType,
    DistilBertForMaskedLM, DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel, EncodeOptions, Error, FromPretrained,
    HubOptions, LoadOptions, ModelInput, MpNetForSequenceClassification, MpNetModel,
    RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaModel, Tensor, TextInput, Tokenizer,
};

/// f32 against PyTorch f32.
const F32_TOLERANCE: f32 = 1e-4;
/// Padding changes matrix shapes and so summation order: float noise, nothing more.
const BATCH_TOLERANCE: f32 = 1e-5;

fn load<M: FromPretrained>(name: &str) -> M {
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    M::from_pretrained(&fixture_model(name), &options).expect("fixture model loads")
}

/// Check `forward`'s named outputs on the reference batch against PyTorch, then check that each
/// input run alone, unpadded, gives its row of the batch.
fn check<F>(name: &str, forward: F)
where
    F: Fn(&ModelInput) -> Vec<(&'static str, Tensor)>,
{
    let reference = reference(name);
    let batch = forward(&reference_input(&reference));
    for (key, actual) in &batch {
        assert_close(
            actual,
            &reference[*key],
            F32_TOLERANCE,
            &format!("{name} {key}"),
        );
    }
    let lengths = lengths(&reference);
    assert!(
        lengths.iter().any(|&l| l < lengths[0]),
        "{name}: the batch must contain padding"
    );
    for (i, &len) in lengths.iter().enumerate() {
        let outputs = forward(&single_input(&reference, i, len));
        assert_same_len(
            &outputs,
            &batch,
            &format!("{name} input {i} alone: outputs"),
        );
        for ((key, alone), (batched_key, batched)) in outputs.iter().zip(&batch) {
            assert_eq!(key, batched_key, "{name}: outputs in the same order");
            // Per-token outputs keep the real positions of the row; per-input outputs the row.
            let row_len = (batched.rank() == 3 || *key == "start_logits" || *key == "end_logits")
                .then_some(len);
            assert_close(
                alone,
                &row(batched, i, row_len),
                BATCH_TOLERANCE,
                &format!("{name} input {i} alone: {key}"),
            );
        }
    }
}

#[test]
fn roberta_base_matches_pytorch() {
    let model: RobertaModel = load("roberta/base");
    check("roberta/base", |input| {
        let out = model.forward(input).unwrap();
        vec![
            ("last_hidden_state", out.last_hidden_state),
            ("pooler_output", out.pooler_output.unwrap()),
        ]
    });
}

#[test]
fn roberta_masked_lm_with_tied_decoder_matches_pytorch() {
    let model: RobertaForMaskedLM = load("roberta/masked-lm");
    check("roberta/masked-lm", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn roberta_sequence_classification_matches_pytorch() {
    let model: RobertaForSequenceClassification = load("roberta/sequence-classification");
    check("roberta/sequence-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
    assert_eq!(model.config().id2label.name(2), "positive");
}

#[test]
fn roberta_token_classification_matches_pytorch() {
    let model: RobertaForTokenClassification = load("roberta/token-classification");
    check("roberta/token-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn roberta_question_answering_matches_pytorch() {
    let model: RobertaForQuestionAnswering = load("roberta/question-answering");
    check("roberta/question-answering", |input| {
        let out = model.forward(input).unwrap();
        vec![
            ("start_logits", out.start_logits),
            ("end_logits", out.end_logits),
        ]
    });
}

#[test]
fn roberta_positions_start_after_the_padding_index() {
    // max_position_embeddings 66 with pad_token_id 1: positions 2..=65, so 64 tokens fit and
    // 65 do not.
    let model: RobertaModel = load("roberta/base");
    let device = ferroformers::Device::Cpu;
    let fits = Tensor::full(5u32, (1, 64), &device).unwrap();
    assert!(model.forward(&ModelInput::from_ids(fits)).is_ok());
    let too_long = Tensor::full(5u32, (1, 65), &device).unwrap();
    match model.forward(&ModelInput::from_ids(too_long)) {
        Err(Error::InputTooLong {
            length: 65,
            max: 64,
        }) => {}
        other => panic!("expected InputTooLong, got {other:?}"),
    }
}

/// Tokenize the fixture's inputs with our tokenizer and compare with Python's ids and mask.
fn check_tokenizer(name: &str) {
    let reference = reference(name);
    let items: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{name}/inputs.json"))).unwrap(),
    )
    .unwrap();
    let inputs: Vec<TextInput> = items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(text) => TextInput::Single(text),
            serde_json::Value::Array(pair) => {
                TextInput::Pair(pair[0].as_str().unwrap(), pair[1].as_str().unwrap())
            }
            other => panic!("unexpected input {other}"),
        })
        .collect();
    let tokenizer =
        Tokenizer::from_pretrained(&fixture_model(name), &HubOptions::default()).unwrap();
    let batch = tokenizer
        .encode_batch(inputs, &EncodeOptions::default())
        .unwrap();
    let input = batch.to_input(&ferroformers::Device::Cpu).unwrap();
    let ids = |t: &Tensor| t.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(
        ids(&input.input_ids),
        ids(&reference["input_ids"]),
        "{name}: input_ids"
    );
    assert_eq!(
        ids(input.attention_mask.as_ref().unwrap()),
        ids(&reference["attention_mask"]),
        "{name}: attention_mask"
    );
}

#[test]
fn roberta_tokenizer_json_matches_python() {
    check_tokenizer("roberta/base");
}

#[test]
fn roberta_bpe_from_vocab_json_and_merges_matches_python() {
    // This folder has no tokenizer.json: <s> ... </s></s> ... </s> from RobertaProcessing, and
    // <mask> matched whole, built from vocab.json, merges.txt and tokenizer_config.json.
    assert!(!fixture("roberta/sequence-classification/tokenizer.json").exists());
    check_tokenizer("roberta/sequence-classification");
}

#[test]
fn distilbert_tokenizer_matches_python() {
    check_tokenizer("distilbert/base");
}

#[test]
fn distilbert_base_matches_pytorch() {
    let model: DistilBertModel = load("distilbert/base");
    check("distilbert/base", |input| {
        let out = model.forward(input).unwrap();
        assert!(out.pooler_output.is_none());
        vec![("last_hidden_state", out.last_hidden_state)]
    });
}

#[test]
fn distilbert_masked_lm_with_tied_projector_matches_pytorch() {
    let model: DistilBertForMaskedLM = load("distilbert/masked-lm");
    check("distilbert/masked-lm", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn distilbert_sequence_classification_matches_pytorch() {
    let model: DistilBertForSequenceClassification = load("distilbert/sequence-classification");
    check("distilbert/sequence-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
    assert_eq!(model.config().id2label.name(1), "POSITIVE");
}

#[test]
fn distilbert_token_classification_matches_pytorch() {
    let model: DistilBertForTokenClassification = load("distilbert/token-classification");
    check("distilbert/token-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn distilbert_question_answering_matches_pytorch() {
    let model: DistilBertForQuestionAnswering = load("distilbert/question-answering");
    check("distilbert/question-answering", |input| {
        let out = model.forward(input).unwrap();
        vec![
            ("start_logits", out.start_logits),
            ("end_logits", out.end_logits),
        ]
    });
}

#[test]
fn loading_one_architecture_as_another_names_both() {
    let options = LoadOptions::default();
    let error =
        RobertaModel::from_pretrained(&fixture_model("distilbert/base"), &options).unwrap_err();
    match &error {
        Error::WrongArchitecture { model_type, wanted } => {
            assert_eq!(model_type, "distilbert");
            assert_eq!(*wanted, "RoBERTa");
        }
        other => panic!("expected WrongArchitecture, got {other:?}"),
    }
}

/// Every head of a RoBERTa-architecture family (`xlm-roberta`, `camembert`), loaded through the
/// Auto classes as `config.json`'s `model_type` dispatches it, against PyTorch's
/// `XLMRoberta*` / `Camembert*` classes on a SentencePiece vocabulary; and the tokenizer's
/// padded batch against transformers' fast tokenizer.
macro_rules! roberta_family_tests {
    ($family:ident, $dir:literal, $model_type:literal) => {
        mod $family {
            use super::*;

            #[test]
            fn config_reports_its_own_model_type() {
                let options =
                    LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
                let pretrained = ferroformers::Pretrained::open(
                    &fixture_model(concat!($dir, "/base")),
                    &options.hub,
                )
                .unwrap();
                assert_eq!(pretrained.config().model_type(), $model_type);
                // The RoBERTa classes load it too: same weights, same config.
                assert!(pretrained.config().roberta().is_ok());
            }

            #[test]
            fn base_matches_pytorch() {
                let model: AutoModel = load(concat!($dir, "/base"));
                check(concat!($dir, "/base"), |input| {
                    let out = model.forward(input).unwrap();
                    vec![
                        ("last_hidden_state", out.last_hidden_state),
                        ("pooler_output", out.pooler_output.unwrap()),
                    ]
                });
            }

            #[test]
            fn masked_lm_matches_pytorch() {
                let model: AutoModelForMaskedLM = load(concat!($dir, "/masked-lm"));
                check(concat!($dir, "/masked-lm"), |input| {
                    vec![("logits", model.forward(input).unwrap())]
                });
            }

            #[test]
            fn sequence_classification_matches_pytorch() {
                let model: AutoModelForSequenceClassification =
                    load(concat!($dir, "/sequence-classification"));
                check(concat!($dir, "/sequence-classification"), |input| {
                    vec![("logits", model.forward(input).unwrap())]
                });
            }

            #[test]
            fn token_classification_matches_pytorch() {
                let model: AutoModelForTokenClassification =
                    load(concat!($dir, "/token-classification"));
                check(concat!($dir, "/token-classification"), |input| {
                    vec![("logits", model.forward(input).unwrap())]
                });
            }

            #[test]
            fn question_answering_matches_pytorch() {
                let model: AutoModelForQuestionAnswering =
                    load(concat!($dir, "/question-answering"));
                check(concat!($dir, "/question-answering"), |input| {
                    let out = model.forward(input).unwrap();
                    vec![
                        ("start_logits", out.start_logits),
                        ("end_logits", out.end_logits),
                    ]
                });
            }

            #[test]
            fn sentencepiece_tokenizer_matches_python() {
                check_tokenizer(concat!($dir, "/base"));
            }
        }
    };
}

roberta_family_tests!(xlm_roberta, "xlm-roberta", "xlm-roberta");
roberta_family_tests!(camembert, "camembert", "camembert");

#[test]
fn xlm_roberta_loads_with_the_roberta_named_classes() {
    // The type aliases are the RoBERTa classes; this is the path users of
    // `XlmRobertaForSequenceClassification::from_pretrained` take.
    let model: ferroformers::XlmRobertaForSequenceClassification =
        load("xlm-roberta/sequence-classification");
    check("xlm-roberta/sequence-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn mpnet_base_matches_pytorch() {
    // Through AutoModel: `model_type: "mpnet"` dispatches to MpNetModel.
    let model: AutoModel = load("mpnet/base");
    assert!(matches!(model, AutoModel::MpNet(_)));
    check("mpnet/base", |input| {
        let out = model.forward(input).unwrap();
        vec![
            ("last_hidden_state", out.last_hidden_state),
            ("pooler_output", out.pooler_output.unwrap()),
        ]
    });
}

#[test]
fn mpnet_masked_lm_with_tied_decoder_matches_pytorch() {
    // The checkpoint has `lm_head.bias` and no `lm_head.decoder.weight` (tied, dropped by
    // safetensors).
    let model: AutoModelForMaskedLM = load("mpnet/masked-lm");
    check("mpnet/masked-lm", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn mpnet_sequence_classification_matches_pytorch() {
    let model: MpNetForSequenceClassification = load("mpnet/sequence-classification");
    check("mpnet/sequence-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
    assert_eq!(model.config().id2label.name(2), "positive");
    let auto: AutoModelForSequenceClassification = load("mpnet/sequence-classification");
    assert!(matches!(auto, AutoModelForSequenceClassification::MpNet(_)));
}

#[test]
fn mpnet_token_classification_matches_pytorch() {
    let model: AutoModelForTokenClassification = load("mpnet/token-classification");
    check("mpnet/token-classification", |input| {
        vec![("logits", model.forward(input).unwrap())]
    });
}

#[test]
fn mpnet_question_answering_matches_pytorch() {
    let model: AutoModelForQuestionAnswering = load("mpnet/question-answering");
    check("mpnet/question-answering", |input| {
        let out = model.forward(input).unwrap();
        vec![
            ("start_logits", out.start_logits),
            ("end_logits", out.end_logits),
        ]
    });
}

#[test]
fn mpnet_tokenizer_json_matches_python() {
    // WordPiece with MPNet's specials: `<s> A </s>`, a pair as `<s> A </s></s> B </s>`.
    check_tokenizer("mpnet/base");
}

#[test]
fn mpnet_relative_position_buckets_match_transformers() {
    // transformers' `relative_position_bucket` for every distance in -1100..=1100: the exact
    // buckets, the logarithmic ones (whose float form lands on whole numbers at 16, 32, 64)
    // and the last one past 128, on both sides.
    let reference = fixture_json("mpnet/relative-position-buckets.json");
    let relative: Vec<i64> =
        serde_json::from_value(reference["relative_positions"].clone()).unwrap();
    let buckets: Vec<u32> = serde_json::from_value(reference["buckets"].clone()).unwrap();
    assert_eq!(relative.len(), 2201);
    assert_same_len(&relative, &buckets, "relative positions and buckets");
    for (&relative, &bucket) in relative.iter().zip(&buckets) {
        assert_eq!(
            ferroformers::models::mpnet::relative_position_bucket(relative),
            bucket,
            "relative position {relative}"
        );
    }
    for extreme in [i64::MIN, i64::MAX] {
        assert!(ferroformers::models::mpnet::relative_position_bucket(extreme) < 32);
    }
}

#[test]
fn mpnet_positions_start_after_padding_index_one() {
    // max_position_embeddings 66: positions 2..=65, so 64 tokens fit and 65 do not.
    let model: MpNetModel = load("mpnet/base");
    let device = ferroformers::Device::Cpu;
    let fits = Tensor::full(5u32, (1, 64), &device).unwrap();
    assert!(model.forward(&ModelInput::from_ids(fits)).is_ok());
    let too_long = Tensor::full(5u32, (1, 65), &device).unwrap();
    match model.forward(&ModelInput::from_ids(too_long)) {
        Err(Error::InputTooLong {
            length: 65,
            max: 64,
        }) => {}
        other => panic!("expected InputTooLong, got {other:?}"),
    }
}

#[test]
fn mpnet_config_with_fewer_than_32_buckets_is_an_error() {
    // transformers sorts distances into 32 buckets whatever the config says: a smaller table
    // could not hold them.
    let path = fixture("mpnet/base/config.json");
    let mut config = fixture_json("mpnet/base/config.json");
    config["relative_attention_num_buckets"] = 16.into();
    let error = ferroformers::ModelConfig::from_json(&config.to_string(), &path).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    assert!(
        error.to_string().contains("relative_attention_num_buckets"),
        "{error}"
    );
}
