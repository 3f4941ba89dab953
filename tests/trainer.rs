//! The training loop: a resumed run ends bit for bit where the uninterrupted one does
//! (optimiser state, schedule, shuffling and dropout masks restored), checkpoints keep the
//! last and the best, early stopping stops, and `ferroformers train` runs it on a file.

mod common;

use std::path::Path;

use common::fixture;
use ferroformers::training::data::{
    read_text_classification, read_token_classification, LabelKind,
};
use ferroformers::training::{
    Dataset, Problem, TrainableModel, TrainedPart, Trainer, TrainingSettings, TrainingTask,
};
use ferroformers::{HubOptions, Pretrained};

const WORDS: [&str; 8] = [
    "quick", "brown", "fox", "lazy", "dog", "world", "book", "city",
];

/// A tiny labelled set for the fixture BERT (its vocabulary): the label is whether "fox"
/// appears.
fn write_classification_set(
    folder: &Path,
    name: &str,
    rows: usize,
    offset: usize,
) -> std::path::PathBuf {
    let lines: Vec<String> = (0..rows)
        .map(|i| {
            let k = i + offset;
            let words: Vec<&str> = (0..3 + k % 4)
                .map(|j| WORDS[(k * 7 + j * 3) % WORDS.len()])
                .collect();
            let label = if words.contains(&"fox") {
                "positive"
            } else {
                "negative"
            };
            serde_json::json!({"text": words.join(" "), "label": label}).to_string()
        })
        .collect();
    let path = folder.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn classification_data(path: &Path) -> Dataset {
    Dataset::TextClassification(
        read_text_classification(path, LabelKind::SingleLabel, None).unwrap(),
    )
}

fn settings(epochs: u32) -> TrainingSettings {
    TrainingSettings {
        epochs,
        batch_size: 4,
        gradient_accumulation_steps: 2,
        warmup_ratio: 0.2,
        max_length: 16,
        ..TrainingSettings::default()
    }
}

fn trainer_for(model: &str, labels: &[String], settings: TrainingSettings) -> Trainer {
    let pretrained = Pretrained::open(model, &HubOptions::default()).unwrap();
    let task = TrainingTask::SequenceClassification {
        labels: labels.to_vec(),
        problem: Problem::SingleLabel,
    };
    let model = TrainableModel::load(&pretrained, task, TrainedPart::Everything, 7).unwrap();
    Trainer::new(model, pretrained.tokenizer().unwrap(), settings).unwrap()
}

fn tensors(trainer: &Trainer) -> Vec<(String, Vec<f32>)> {
    trainer
        .model()
        .parameters()
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Dropout on (the fixture's 0.1), accumulation over two micro-batches, warmup: two epochs
/// in one run, and one epoch then a resume from its checkpoint, end with the same bits.
#[test]
fn a_resumed_run_ends_exactly_where_the_uninterrupted_one_does() {
    let folder = tempfile::tempdir().unwrap();
    let data = classification_data(&write_classification_set(
        folder.path(),
        "train.jsonl",
        22,
        0,
    ));
    let Dataset::TextClassification(read) = &data else {
        unreachable!()
    };
    let labels = read.labels.names().to_vec();
    let base = fixture("bert/base");
    let base = base.to_str().unwrap();

    let mut straight = trainer_for(base, &labels, settings(2));
    straight.train(&data, None, None, &mut |_| {}).unwrap();

    let output = folder.path().join("run");
    let mut first = trainer_for(base, &labels, settings(2));
    // Stop after one epoch: a run of the same settings asked for one epoch alone would
    // schedule its learning rate over one epoch instead.
    first
        .train_epochs(&data, None, Some(&output), 1, &mut |_| {})
        .unwrap();
    let checkpoint =
        ferroformers::training::checkpoint_folder(&output, first.state().history[0].step);
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    let pretrained =
        Pretrained::open(checkpoint.to_str().unwrap(), &HubOptions::default()).unwrap();
    let task = first.model().task().clone();
    let model = TrainableModel::load(&pretrained, task, TrainedPart::Everything, 7).unwrap();
    let mut resumed = Trainer::resume(model, pretrained.tokenizer().unwrap(), &checkpoint).unwrap();
    resumed
        .train(&data, None, Some(&output), &mut |_| {})
        .unwrap();

    assert_eq!(resumed.state().history.len(), 2);
    let losses = |t: &Trainer| -> Vec<(u32, u64, f64)> {
        t.state()
            .history
            .iter()
            .map(|r| (r.epoch, r.step, r.train_loss))
            .collect()
    };
    assert_eq!(losses(&resumed), losses(&straight));
    for ((name, ours), (_, theirs)) in tensors(&resumed).iter().zip(tensors(&straight)) {
        assert!(
            ours == &theirs,
            "{name} differs between the resumed and the straight run"
        );
    }
    let moved = tensors(&straight)
        .iter()
        .zip(tensors(&trainer_for(base, &labels, settings(2))))
        .any(|((_, a), (_, b))| a != &b);
    assert!(moved, "training changed nothing");
}

/// Evaluation each epoch picks the best; the output folder holds the last checkpoint, the
/// best one and the best model; patience 1 stops at the first epoch without improvement.
#[test]
fn checkpoints_keep_the_last_and_the_best_and_patience_stops_the_run() {
    let folder = tempfile::tempdir().unwrap();
    let train = classification_data(&write_classification_set(
        folder.path(),
        "train.jsonl",
        24,
        0,
    ));
    let eval = classification_data(&write_classification_set(
        folder.path(),
        "eval.jsonl",
        12,
        100,
    ));
    let Dataset::TextClassification(read) = &train else {
        unreachable!()
    };
    let labels = read.labels.names().to_vec();
    let base = fixture("bert/base");
    let output = folder.path().join("run");
    let mut trainer = trainer_for(
        base.to_str().unwrap(),
        &labels,
        TrainingSettings {
            epochs: 6,
            early_stopping_patience: Some(1),
            ..settings(6)
        },
    );
    let state = trainer
        .train(&train, Some(&eval), Some(&output), &mut |_| {})
        .unwrap()
        .clone();
    let evaluations: Vec<f64> = state
        .history
        .iter()
        .map(|r| r.evaluation.as_ref().unwrap().main_value)
        .collect();
    let best = state.best_epoch.unwrap();
    let best_value = evaluations[best as usize - 1];
    assert!(
        evaluations.iter().all(|&v| v <= best_value),
        "{evaluations:?}: epoch {best} is not the best"
    );
    if state.history.len() < 6 {
        let last = *evaluations.last().unwrap();
        assert!(
            last <= best_value && state.epochs_without_improvement >= 1,
            "stopped without cause: {evaluations:?}"
        );
    }
    let mut checkpoints: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    checkpoints.sort();
    let step_of = |epoch: u32| state.history[epoch as usize - 1].step;
    let mut expected: Vec<String> = [step_of(best), state.history.last().unwrap().step]
        .iter()
        .map(|s| format!("checkpoint-{s}"))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(checkpoints, expected);
    // The model in the output folder is the best checkpoint's.
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(
        weights(&output),
        weights(&output.join(format!("checkpoint-{}", step_of(best))))
    );
    assert!(output.join("trainer_state.json").is_file() && output.join("tokenizer.json").is_file());
}

/// Token classification reads words and tags, trains, and evaluates with entity F1.
#[test]
fn token_classification_trains_and_reports_entity_f1() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("ner.jsonl");
    let rows: Vec<String> = (0..12)
        .map(|i| {
            let tokens = ["the", "fox", "saw", "the", "dog", "in", "the", "city"];
            let tags = [
                "O",
                "B-ANIMAL",
                "O",
                "O",
                "B-ANIMAL",
                "O",
                "O",
                if i % 2 == 0 { "B-PLACE" } else { "O" },
            ];
            serde_json::json!({"tokens": tokens, "ner_tags": tags}).to_string()
        })
        .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    let data = read_token_classification(&path, None).unwrap();
    let labels = data.tags.names().to_vec();
    let data = Dataset::TokenClassification(data);
    let pretrained = Pretrained::open(
        fixture("bert/base").to_str().unwrap(),
        &HubOptions::default(),
    )
    .unwrap();
    let model = TrainableModel::load(
        &pretrained,
        TrainingTask::TokenClassification { labels },
        TrainedPart::Everything,
        1,
    )
    .unwrap();
    let mut trainer = Trainer::new(model, pretrained.tokenizer().unwrap(), settings(2)).unwrap();
    let state = trainer
        .train(&data, Some(&data), None, &mut |_| {})
        .unwrap();
    let evaluation = state.history.last().unwrap().evaluation.as_ref().unwrap();
    assert_eq!(evaluation.main_metric, "f1");
    for name in ["f1", "precision", "recall", "accuracy"] {
        let value = evaluation.metrics[name];
        assert!((0.0..=1.0).contains(&value), "{name} = {value}");
    }
    assert!(evaluation.loss.is_finite());
}
