//! The training loop of transformers' `Trainer`: seeded shuffling each epoch, micro-batches
//! with gradient accumulation, clipping, AdamW under the linear schedule, an evaluation and a
//! checkpoint each epoch, the best model kept, early stopping, and `resume` that continues
//! from a checkpoint exactly as if the run had not stopped.
//!
//! A checkpoint (`checkpoint-<step>/`) is a `save_pretrained` folder in f32 with
//! `optimizer.safetensors` (AdamW's moments) and `trainer_state.json` (settings, step,
//! history, best epoch). Dropout masks are drawn from a generator seeded by the run's seed
//! and the step, so a resumed run draws the same masks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loading::json::{read_json, write_json};
use crate::tokenizer::Tokenizer;
use crate::training::collate::{Collator, Dataset};
use crate::training::data::{epoch_order, seeded_stream, Stream};
use crate::training::encoder::Dropout;
use crate::training::evaluation::{evaluate, Evaluation};
use crate::training::model::TrainableModel;
use crate::training::optimizer::{AdamW, AdamWSettings, Gradients, LinearSchedule};

/// How to train; [`Default`] is transformers' `TrainingArguments` defaults, but for
/// `max_length` (run_glue.py's 128).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingSettings {
    /// Passes over the training set (default 3).
    pub epochs: u32,
    /// Examples per micro-batch (default 8).
    pub batch_size: usize,
    /// Micro-batches whose gradients sum into one optimiser step (default 1).
    pub gradient_accumulation_steps: usize,
    /// AdamW's rate, betas, epsilon and weight decay.
    pub optimizer: AdamWSettings,
    /// The share of the steps that warm the rate up (default 0).
    pub warmup_ratio: f64,
    /// The gradient norm clipped to (default 1).
    pub max_grad_norm: f32,
    /// Fixes the shuffling and the dropout masks (default 42).
    pub seed: u64,
    /// Inputs are truncated to this many tokens (default 128).
    pub max_length: usize,
    /// Stop after this many evaluations without a better main metric (default: never).
    pub early_stopping_patience: Option<u32>,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            optimizer: AdamWSettings::default(),
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            max_length: 128,
            early_stopping_patience: None,
        }
    }
}

/// Where a run stands, sent to the progress callback after each optimiser step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The epoch under way (1-based).
    pub epoch: u32,
    /// Optimiser steps taken in the run.
    pub step: u64,
    /// Optimiser steps the run will take.
    pub total_steps: u64,
    /// The mean loss of the epoch so far.
    pub loss: f64,
    /// The learning rate of the step just taken.
    pub learning_rate: f64,
    /// Training examples per second in this epoch.
    pub examples_per_second: f64,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch (1-based).
    pub epoch: u32,
    /// Optimiser steps taken by its end.
    pub step: u64,
    /// Its mean training loss.
    pub train_loss: f64,
    /// The evaluation after it, when there is an evaluation set.
    pub evaluation: Option<Evaluation>,
    /// Training examples per second.
    pub examples_per_second: f64,
}

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The run's settings.
    pub settings: TrainingSettings,
    /// Epochs finished.
    pub epochs_done: u32,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch with the best main metric so far.
    pub best_epoch: Option<u32>,
    /// Evaluations since the best one.
    pub epochs_without_improvement: u32,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Trains a [`TrainableModel`] on a [`Dataset`].
pub struct Trainer {
    model: TrainableModel,
    tokenizer: Tokenizer,
    optimizer: AdamW,
    state: TrainerState,
    /// The type of the final model's weights (checkpoints stay f32, to resume exactly).
    save_dtype: DType,
}

impl Trainer {
    /// A fresh run.
    pub fn new(
        model: TrainableModel,
        tokenizer: Tokenizer,
        settings: TrainingSettings,
    ) -> Result<Self> {
        if settings.batch_size == 0
            || settings.gradient_accumulation_steps == 0
            || settings.epochs == 0
        {
            return Err(Error::InvalidInput(
                "epochs, batch size and gradient accumulation steps must be at least 1".into(),
            ));
        }
        let optimizer = AdamW::new(model.parameters(), settings.optimizer);
        Ok(Self {
            model,
            tokenizer,
            optimizer,
            save_dtype: DType::F32,
            state: TrainerState {
                settings,
                epochs_done: 0,
                history: Vec::new(),
                best_epoch: None,
                epochs_without_improvement: 0,
            },
        })
    }

    /// Continue the run saved in `checkpoint` (a `checkpoint-<step>` folder), whose model is
    /// `model` (loaded from that folder for the same task) and tokenizer `tokenizer`.
    pub fn resume(model: TrainableModel, tokenizer: Tokenizer, checkpoint: &Path) -> Result<Self> {
        let state: TrainerState = read_json(&checkpoint.join(STATE_FILE))?;
        let mut trainer = Self::new(model, tokenizer, state.settings)?;
        trainer.optimizer = AdamW::load(
            trainer.model.parameters(),
            state.settings.optimizer,
            &checkpoint.join(OPTIMIZER_FILE),
        )?;
        trainer.state = state;
        Ok(trainer)
    }

    /// Save the final model's weights as `dtype` (f32 by default; bf16 halves them).
    pub fn set_save_dtype(&mut self, dtype: DType) {
        self.save_dtype = dtype;
    }

    /// The model, trained so far.
    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    /// The run's state.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Train the epochs left. With `output`, a checkpoint is written after each epoch (the
    /// last and the best are kept) and the best model (the last one without an evaluation
    /// set) is saved in `output` itself at the end.
    pub fn train(
        &mut self,
        train: &Dataset,
        eval: Option<&Dataset>,
        output: Option<&Path>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<&TrainerState> {
        self.train_epochs(train, eval, output, u32::MAX, progress)
    }

    /// [`Trainer::train`], but at most `epochs` more epochs: a run cut into parts (the
    /// schedule still spans the settings' epochs), which [`Trainer::resume`] continues.
    pub fn train_epochs(
        &mut self,
        train: &Dataset,
        eval: Option<&Dataset>,
        output: Option<&Path>,
        epochs: u32,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<&TrainerState> {
        let settings = self.state.settings;
        let stop_after = self
            .state
            .epochs_done
            .saturating_add(epochs)
            .min(settings.epochs);
        if train.is_empty() {
            return Err(Error::InvalidInput("the training set is empty".into()));
        }
        let tokenizer = self.tokenizer.clone();
        let collator = Collator::new(&tokenizer, settings.max_length)?;
        let batches_per_epoch = train.len().div_ceil(settings.batch_size);
        let steps_per_epoch =
            batches_per_epoch.div_ceil(settings.gradient_accumulation_steps) as u64;
        let total_steps = steps_per_epoch * settings.epochs as u64;
        let schedule = LinearSchedule {
            peak: settings.optimizer.learning_rate,
            warmup_steps: (total_steps as f64 * settings.warmup_ratio).ceil() as u64,
            total_steps,
        };
        while self.state.epochs_done < stop_after {
            if self.should_stop() {
                break;
            }
            let epoch = self.state.epochs_done + 1;
            let started = Instant::now();
            let order = epoch_order(train.len(), settings.seed, epoch as u64);
            let batches: Vec<&[usize]> = order.chunks(settings.batch_size).collect();
            let (mut loss_sum, mut seen) = (0.0, 0usize);
            for group in batches.chunks(settings.gradient_accumulation_steps) {
                let dropout = Dropout::seeded(step_rng(settings.seed, self.optimizer.steps()));
                let mut gradients = Gradients::new(self.model.parameters());
                for indices in group {
                    let batch = collator.batch(train, indices, self.model.task())?;
                    let loss = self.model.loss(&batch, &dropout)?;
                    let value = loss.to_scalar::<f32>()? as f64;
                    if !value.is_finite() {
                        return Err(Error::InvalidInput(format!(
                            "the loss is {value} at step {}: training diverged; lower the learning rate",
                            self.optimizer.steps() + 1
                        )));
                    }
                    loss_sum += value * indices.len() as f64;
                    seen += indices.len();
                    let store = self.model.backward(&(loss / group.len() as f64)?)?;
                    gradients.add(self.model.parameters(), &store)?;
                }
                gradients.clip(settings.max_grad_norm)?;
                let rate = schedule.rate(self.optimizer.steps());
                self.optimizer
                    .step(self.model.parameters(), &gradients, rate)?;
                progress(&Progress {
                    epoch,
                    step: self.optimizer.steps(),
                    total_steps,
                    loss: loss_sum / seen as f64,
                    learning_rate: rate,
                    examples_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                });
            }
            let examples_per_second = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let evaluation = eval
                .map(|data| evaluate(&self.model, &collator, data, settings.batch_size))
                .transpose()?;
            self.finish_epoch(EpochRecord {
                epoch,
                step: self.optimizer.steps(),
                train_loss: loss_sum / seen.max(1) as f64,
                evaluation,
                examples_per_second,
            });
            if let Some(output) = output {
                self.save_checkpoint(output)?;
            }
        }
        if let Some(output) = output {
            self.save_final(output)?;
        }
        Ok(&self.state)
    }

    fn should_stop(&self) -> bool {
        match self.state.settings.early_stopping_patience {
            Some(patience) => self.state.epochs_without_improvement >= patience,
            None => false,
        }
    }

    fn finish_epoch(&mut self, record: EpochRecord) {
        let main = |r: &EpochRecord| r.evaluation.as_ref().map(|e| e.main_value);
        let best = self.state.best_epoch.and_then(|epoch| {
            self.state
                .history
                .iter()
                .find(|r| r.epoch == epoch)
                .and_then(main)
        });
        match (main(&record), best) {
            (Some(value), Some(best)) if value <= best => {
                self.state.epochs_without_improvement += 1
            }
            (Some(_), _) => {
                self.state.best_epoch = Some(record.epoch);
                self.state.epochs_without_improvement = 0;
            }
            (None, _) => {}
        }
        self.state.epochs_done = record.epoch;
        self.state.history.push(record);
    }

    /// `checkpoint-<step>/` in `output`, keeping only this one and the best.
    fn save_checkpoint(&self, output: &Path) -> Result<()> {
        let folder = checkpoint_folder(output, self.optimizer.steps());
        self.model.save_pretrained(&folder, DType::F32)?;
        self.optimizer
            .save(self.model.parameters(), &folder.join(OPTIMIZER_FILE))?;
        write_json(&folder.join(STATE_FILE), &self.state)?;
        let keep: Vec<PathBuf> = [Some(self.optimizer.steps()), self.best_step()]
            .into_iter()
            .flatten()
            .map(|step| checkpoint_folder(output, step))
            .collect();
        for entry in std::fs::read_dir(output)
            .map_err(|e| Error::io(output, e))?
            .flatten()
        {
            let path = entry.path();
            let is_checkpoint = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint-"));
            if is_checkpoint && !keep.contains(&path) {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    fn best_step(&self) -> Option<u64> {
        let best = self.state.best_epoch?;
        self.state
            .history
            .iter()
            .find(|r| r.epoch == best)
            .map(|r| r.step)
    }

    /// The best checkpoint's model (else the last) and the run's state, in `output`.
    fn save_final(&self, output: &Path) -> Result<()> {
        match self.best_step() {
            Some(step) if step != self.optimizer.steps() => {
                let best = checkpoint_folder(output, step);
                let model = TrainableModel::reload(&self.model, &best)?;
                model.save_pretrained(output, self.save_dtype)?;
            }
            _ => self.model.save_pretrained(output, self.save_dtype)?,
        }
        write_json(&output.join(STATE_FILE), &self.state)
    }

    /// Evaluate the model as it is now.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        let collator = Collator::new(&self.tokenizer, self.state.settings.max_length)?;
        evaluate(&self.model, &collator, data, self.state.settings.batch_size)
    }
}

/// The dropout generator of optimiser step `step`, so a resumed run draws what the
/// uninterrupted one drew.
fn step_rng(seed: u64, step: u64) -> StdRng {
    seeded_stream(seed, Stream::Dropout, step)
}

/// `output/checkpoint-<step>`, as the Trainer names its checkpoints.
pub fn checkpoint_folder(output: &Path, step: u64) -> PathBuf {
    output.join(format!("checkpoint-{step}"))
}
