//! `config.json` dispatch on `model_type` and validation of its fields.

use std::path::Path;

use ferroformers::{Error, ModelConfig};

fn parse(json: &str) -> Result<ModelConfig, Error> {
    ModelConfig::from_json(json, Path::new("config.json"))
}

/// A valid BERT config.json with the fields of `overrides` replaced or added.
fn bert_json(overrides: &str) -> String {
    let mut config: serde_json::Value = serde_json::json!({
        "model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu",
        "max_position_embeddings": 16
    });
    let overrides: serde_json::Value = serde_json::from_str(&format!("{{{overrides}}}")).unwrap();
    for (key, value) in overrides.as_object().unwrap() {
        config[key] = value.clone();
    }
    config.to_string()
}

#[test]
fn bert_config_dispatches_and_applies_transformers_defaults() {
    let config = parse(&bert_json("")).unwrap();
    assert_eq!(config.model_type(), "bert");
    let bert = config.bert().unwrap();
    assert_eq!(bert.type_vocab_size, 2);
    assert_eq!(bert.layer_norm_eps, 1e-12);
    assert_eq!(bert.num_labels(), 2);
    assert_eq!(bert.id2label.name(1), "LABEL_1");
}

#[test]
fn unknown_model_type_names_it_and_lists_the_supported_ones() {
    let error = parse(r#"{"model_type": "mamba", "hidden_size": 8}"#).unwrap_err();
    match &error {
        Error::UnknownModelType {
            model_type,
            supported,
            ..
        } => {
            assert_eq!(model_type, "mamba");
            assert!(supported.contains("bert"));
        }
        other => panic!("expected UnknownModelType, got {other:?}"),
    }
    assert!(error.to_string().contains("mamba") && error.to_string().contains("llama"));
}

#[test]
fn impossible_values_are_rejected_with_the_field_named() {
    let cases = [
        (r#""num_attention_heads": 3"#, "not divisible"),
        (r#""num_hidden_layers": 0"#, "num_hidden_layers"),
        (r#""vocab_size": 0"#, "vocab_size"),
        (
            r#""position_embedding_type": "relative_key""#,
            "relative_key",
        ),
    ];
    for (overrides, expected) in cases {
        let error = parse(&bert_json(overrides)).unwrap_err();
        assert!(
            matches!(error, Error::InvalidConfig(_)),
            "{overrides}: {error:?}"
        );
        assert!(error.to_string().contains(expected), "{overrides}: {error}");
    }
}

#[test]
fn wrong_types_and_bad_json_are_json_errors_naming_the_file() {
    for text in [
        bert_json(r#""hidden_size": -8"#),
        bert_json(r#""hidden_act": "mystery""#),
        "{".to_string(),
    ] {
        let error = parse(&text).unwrap_err();
        assert!(matches!(error, Error::Json { .. }), "{text}: {error:?}");
        assert!(error.to_string().contains("config.json"), "{error}");
    }
}

#[test]
fn id2label_is_read_in_index_order() {
    let config = parse(&bert_json(
        r#""id2label": {"1": "POSITIVE", "0": "NEGATIVE"}"#,
    ))
    .unwrap();
    let bert = config.bert().unwrap();
    assert_eq!(bert.num_labels(), 2);
    assert_eq!(
        (bert.id2label.name(0), bert.id2label.name(1)),
        ("NEGATIVE".into(), "POSITIVE".into())
    );
    let error = parse(&bert_json(r#""id2label": {"0": "A", "2": "C"}"#)).unwrap_err();
    assert!(error.to_string().contains("id2label"), "{error}");
}
