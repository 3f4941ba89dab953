//! The public task-head types of the encoder families whose heads are transformers' BERT or
//! RoBERTa heads over their own model (RoBERTa, MPNet, GTE, NomicBERT): each type is the
//! family's model and one head, and only the types, the head's keys and the base model's prefix
//! differ from family to family, so one macro writes them all.

/// A family's `ForMaskedLM`, `ForSequenceClassification`, `ForTokenClassification` and
/// (optionally) `ForQuestionAnswering`, named and documented by the caller. Expanded in the
/// family's module, where the model's `load`, `config`, `word_embeddings` and
/// `last_hidden_state` are visible.
///
/// - `under`: where the model's `load` looks for the base model, for the docs; `num_labels`: a
///   link to the config's `num_labels`, for the docs.
/// - `masked_lm: Type = roberta`: RoBERTa's `lm_head` ([`MaskedLmHead::roberta`]); or
///   `= head_fn("keys")`: `head_fn(&ModelWeights, &Config, word_embeddings)` loads the head
///   from `keys`.
/// - `sequence_classification: Type = first_token`: RoBERTa's `classifier.{dense,out_proj}`
///   ([`FirstTokenClassifier`]); or `= pooler(base_weights)`: BERT's pooler, beside the base
///   model that `base_weights(&ModelWeights)` finds, and `classifier` ([`PoolerClassifier`]).
///
/// [`MaskedLmHead::roberta`]: crate::models::MaskedLmHead::roberta
/// [`FirstTokenClassifier`]: crate::models::FirstTokenClassifier
/// [`PoolerClassifier`]: crate::models::PoolerClassifier
macro_rules! task_heads {
    (
        model: $model:ident,
        config: $config:ident,
        under: $under:literal,
        num_labels: $num_labels:literal,
        $(#[$masked_lm_doc:meta])*
        masked_lm: $masked_lm:ident = $masked_lm_head:ident $(($masked_lm_keys:literal))?,
        $(#[$sequence_doc:meta])*
        sequence_classification: $sequence:ident = $sequence_head:ident
            $(($base_weights:path))?,
        $(#[$token_doc:meta])*
        token_classification: $token:ident,
        $(
            $(#[$qa_doc:meta])*
            question_answering: $qa:ident,
        )?
    ) => {
        $(#[$masked_lm_doc])*
        #[derive(Debug, Clone)]
        pub struct $masked_lm {
            model: $model,
            head: $crate::models::MaskedLmHead,
        }

        impl $masked_lm {
            #[doc = concat!(
                "Load the encoder (at the root or under ", $under, ") and ",
                $crate::models::task_heads::task_heads!(@keys $masked_lm_head $($masked_lm_keys)?),
                "."
            )]
            pub fn load(
                vb: $crate::models::weights::ModelWeights,
                config: &$config,
            ) -> $crate::error::Result<Self> {
                let model = $model::load(vb.clone(), config)?;
                let word_embeddings = model.word_embeddings()?;
                let head = $crate::models::task_heads::task_heads!(
                    @masked_lm_head $masked_lm_head, vb, config, word_embeddings
                );
                Ok(Self { model, head })
            }

            /// Vocabulary logits, (batch, seq, vocab).
            pub fn forward(
                &self,
                input: &$crate::models::ModelInput,
            ) -> $crate::error::Result<candle_core::Tensor> {
                self.head.forward(&self.model.last_hidden_state(input)?)
            }

            $crate::models::task_heads::task_heads!(@config $config);
        }

        $crate::models::task_heads::task_heads!(
            @classifier
            $(#[$sequence_doc])*
            $sequence($model, $config) = $sequence_head $(($base_weights))?,
            load: concat!(
                $crate::models::task_heads::task_heads!(@sequence_doc $sequence_head, $under),
                " with ", $num_labels, " outputs."
            ),
            forward: "Class logits, (batch, num_labels)."
        );

        $crate::models::task_heads::task_heads!(
            @classifier
            $(#[$token_doc])*
            $token($model, $config) = linear,
            load: concat!(
                "Load the encoder (at the root or under ", $under, ") and `classifier`, with ",
                $num_labels, " outputs."
            ),
            forward: "Per-token class logits, (batch, seq, num_labels)."
        );

        $(
            $(#[$qa_doc])*
            #[derive(Debug, Clone)]
            pub struct $qa {
                model: $model,
                qa_outputs: $crate::models::layers::Linear,
            }

            impl $qa {
                /// Load the encoder and `qa_outputs` (two outputs: start and end).
                pub fn load(
                    vb: $crate::models::weights::ModelWeights,
                    config: &$config,
                ) -> $crate::error::Result<Self> {
                    Ok(Self {
                        model: $model::load(vb.clone(), config)?,
                        qa_outputs: $crate::models::layers::Linear::load(
                            vb.pp("qa_outputs"),
                            config.hidden_size,
                            2,
                        )?,
                    })
                }

                /// Start and end logits, each (batch, seq). Token type ids are ignored.
                pub fn forward(
                    &self,
                    input: &$crate::models::ModelInput,
                ) -> $crate::error::Result<$crate::models::QuestionAnsweringOutput> {
                    let hidden = self.model.last_hidden_state(input)?;
                    $crate::models::QuestionAnsweringOutput::from_logits(
                        &self.qa_outputs.forward(&hidden)?,
                    )
                }

                $crate::models::task_heads::task_heads!(@config $config);
            }
        )?
    };
    (
        @classifier
        $(#[$doc:meta])*
        $name:ident($model:ident, $config:ident) = $head:ident $(($base_weights:path))?,
        load: $load_doc:expr,
        forward: $forward_doc:literal
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            model: $model,
            classifier: $crate::models::task_heads::task_heads!(@classifier_type $head),
        }

        impl $name {
            #[doc = $load_doc]
            pub fn load(
                vb: $crate::models::weights::ModelWeights,
                config: &$config,
            ) -> $crate::error::Result<Self> {
                let (hidden, labels) = (config.hidden_size, config.num_labels());
                Ok(Self {
                    model: $model::load(vb.clone(), config)?,
                    classifier: $crate::models::task_heads::task_heads!(
                        @classifier_head $head $(($base_weights))?, vb, hidden, labels
                    ),
                })
            }

            #[doc = $forward_doc]
            pub fn forward(
                &self,
                input: &$crate::models::ModelInput,
            ) -> $crate::error::Result<candle_core::Tensor> {
                self.classifier
                    .forward(&self.model.last_hidden_state(input)?)
            }

            $crate::models::task_heads::task_heads!(@config $config);
        }
    };
    (@config $config:ident) => {
        /// The parsed `config.json` the model was loaded with.
        pub fn config(&self) -> &$config {
            self.model.config()
        }
    };
    (@keys roberta) => {
        "`lm_head.*` (the decoder's weight tied to the word embeddings, and used from there \
         when the checkpoint omits it)"
    };
    (@keys $head_fn:ident $keys:literal) => {
        $keys
    };
    (@masked_lm_head roberta, $vb:ident, $config:ident, $word_embeddings:ident) => {
        $crate::models::MaskedLmHead::roberta(
            $vb.pp("lm_head"),
            $config.hidden_size,
            $config.layer_norm_eps,
            $word_embeddings,
        )?
    };
    (@masked_lm_head $head_fn:ident, $vb:ident, $config:ident, $word_embeddings:ident) => {
        $head_fn(&$vb, $config, $word_embeddings)?
    };
    (@classifier_type first_token) => {
        $crate::models::FirstTokenClassifier
    };
    (@classifier_type pooler) => {
        $crate::models::PoolerClassifier
    };
    (@classifier_type linear) => {
        $crate::models::layers::Linear
    };
    (@classifier_head linear, $vb:ident, $hidden:ident, $labels:ident) => {
        $crate::models::layers::Linear::load($vb.pp("classifier"), $hidden, $labels)?
    };
    (@sequence_doc first_token, $under:literal) => {
        "Load the encoder, `classifier.dense`, and `classifier.out_proj`"
    };
    (@sequence_doc pooler, $under:literal) => {
        concat!(
            "Load the encoder and its `pooler.dense` (at the root or under ", $under,
            "), and `classifier`"
        )
    };
    (@classifier_head first_token, $vb:ident, $hidden:ident, $labels:ident) => {
        $crate::models::FirstTokenClassifier::load($vb.pp("classifier"), $hidden, $labels)?
    };
    (@classifier_head pooler($base_weights:path), $vb:ident, $hidden:ident, $labels:ident) => {
        $crate::models::PoolerClassifier::load(
            $base_weights(&$vb)?.pp("pooler"),
            $vb.pp("classifier"),
            $hidden,
            $labels,
        )?
    };
}

pub(crate) use task_heads;
