//! The task heads that GTE and NomicBERT put over their encoders, transformers 5's for both:
//! a masked LM, BERT's pooler and classifier, and a classifier on every token. Only the types,
//! the base model's prefix and the masked LM's keys differ, so one macro writes each family's
//! three public types; a family gives its model and config, the function that finds the base
//! model's weights, and the one that loads its masked-LM head.

/// `ForMaskedLM`, `ForSequenceClassification` and `ForTokenClassification` types over a
/// family's model, named and documented by the caller. Expanded in the family's module, where
/// the model's `encoder` field is visible:
///
/// - `model`, `config`: the model type (with `load`, `config` and an `encoder` field) and its
///   config type (with `hidden_size` and `num_labels`);
/// - `base_weights`: `fn(&ModelWeights) -> Result<ModelWeights>`, where the base model's
///   weights (and BERT's pooler beside them) sit; `under` says where, for the docs;
/// - `masked_lm: Type = head_fn(keys)`: `head_fn(&ModelWeights, &Config, word_embeddings)`
///   loads the head from `keys`, the checkpoint's names of it, for the docs.
macro_rules! gated_bert_heads {
    (
        model: $model:ident,
        config: $config:ident,
        base_weights: $base_weights:path,
        under: $under:literal,
        $(#[$masked_lm_doc:meta])*
        masked_lm: $masked_lm:ident = $masked_lm_head:ident($masked_lm_keys:literal),
        $(#[$sequence_doc:meta])*
        sequence_classification: $sequence:ident,
        $(#[$token_doc:meta])*
        token_classification: $token:ident $(,)?
    ) => {
        $(#[$masked_lm_doc])*
        #[derive(Debug, Clone)]
        pub struct $masked_lm {
            model: $model,
            head: $crate::models::MaskedLmHead,
        }

        impl $masked_lm {
            #[doc = concat!("Load the encoder (under ", $under, ") and ", $masked_lm_keys, ".")]
            pub fn load(
                vb: $crate::models::weights::ModelWeights,
                config: &$config,
            ) -> $crate::error::Result<Self> {
                let model = $model::load(vb.clone(), config)?;
                let head = $masked_lm_head(&vb, config, model.encoder.word_embeddings()?)?;
                Ok(Self { model, head })
            }

            $crate::models::gated_bert::gated_bert_heads!(@config $config);

            /// Vocabulary logits, (batch, seq, vocab_size).
            pub fn forward(
                &self,
                input: &$crate::models::ModelInput,
            ) -> $crate::error::Result<candle_core::Tensor> {
                self.head.forward(&self.model.encoder.forward(input)?)
            }
        }

        $(#[$sequence_doc])*
        #[derive(Debug, Clone)]
        pub struct $sequence {
            model: $model,
            pooler: $crate::models::layers::Pooler,
            classifier: $crate::models::layers::Linear,
        }

        impl $sequence {
            #[doc = concat!(
                "Load the encoder and its `pooler.dense` (under ", $under, "), and `classifier` \
                 with [`", stringify!($config), "::num_labels`] outputs."
            )]
            pub fn load(
                vb: $crate::models::weights::ModelWeights,
                config: &$config,
            ) -> $crate::error::Result<Self> {
                let base = $base_weights(&vb)?;
                let hidden = config.hidden_size;
                Ok(Self {
                    model: $model::load(vb.clone(), config)?,
                    pooler: $crate::models::layers::Pooler::load(base.pp("pooler"), hidden)?,
                    classifier: $crate::models::layers::Linear::load(
                        vb.pp("classifier"),
                        hidden,
                        config.num_labels(),
                    )?,
                })
            }

            $crate::models::gated_bert::gated_bert_heads!(@config $config);

            /// Class logits, (batch, num_labels).
            pub fn forward(
                &self,
                input: &$crate::models::ModelInput,
            ) -> $crate::error::Result<candle_core::Tensor> {
                let pooled = self.pooler.forward(&self.model.encoder.forward(input)?)?;
                self.classifier.forward(&pooled)
            }
        }

        $(#[$token_doc])*
        #[derive(Debug, Clone)]
        pub struct $token {
            model: $model,
            classifier: $crate::models::layers::Linear,
        }

        impl $token {
            #[doc = concat!(
                "Load the encoder (under ", $under, ") and `classifier`, with [`",
                stringify!($config), "::num_labels`] outputs."
            )]
            pub fn load(
                vb: $crate::models::weights::ModelWeights,
                config: &$config,
            ) -> $crate::error::Result<Self> {
                Ok(Self {
                    model: $model::load(vb.clone(), config)?,
                    classifier: $crate::models::layers::Linear::load(
                        vb.pp("classifier"),
                        config.hidden_size,
                        config.num_labels(),
                    )?,
                })
            }

            $crate::models::gated_bert::gated_bert_heads!(@config $config);

            /// Per-token class logits, (batch, seq, num_labels).
            pub fn forward(
                &self,
                input: &$crate::models::ModelInput,
            ) -> $crate::error::Result<candle_core::Tensor> {
                self.classifier.forward(&self.model.encoder.forward(input)?)
            }
        }
    };
    (@config $config:ident) => {
        /// The parsed `config.json` the model was loaded with.
        pub fn config(&self) -> &$config {
            self.model.config()
        }
    };
}

pub(crate) use gated_bert_heads;
