#!/usr/bin/env python3
"""Round trip: models that `ferroformers train` saved, loaded by transformers and
sentence-transformers, give our outputs within 1e-5 (issue 28). Run once and reported; CI
does not run it (it needs PyTorch).

1. `ferroformers train` fine-tunes all-MiniLM-L6-v2 for one epoch as a classifier
   (examples/data/chase-train.jsonl) and as a sentence embedder (chase-pairs.jsonl, MNRL),
   saving each in f32;
2. transformers' AutoModelForSequenceClassification gives the classifier's class
   probabilities, sentence-transformers' SentenceTransformer the embeddings;
3. `ferroformers classify --json` and `ferroformers embed --json` give ours on the same texts.

    cargo build -p ferroformers-cli
    python3 scripts/fetch_minilm.py --cache target/tmp/hub-cache
    python3 scripts/check_saved_model.py [--binary target/debug/ferroformers]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import fetch_minilm

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
TOLERANCE = 1e-5


def ferroformers(binary, *args, stdin=None):
    result = subprocess.run([str(binary), *map(str, args)], input=stdin, capture_output=True, text=True, check=True)
    return result.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(ROOT / "target" / "debug" / "ferroformers"))
    args = parser.parse_args()
    snapshot = fetch_minilm.install(ROOT / "target" / "tmp" / "hub-cache")
    texts = [json.loads(line)["text"] for line in (DATA / "chase-test.jsonl").open()][:32]
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        common = ["-m", snapshot, "--quiet", "--epochs", "1", "--batch-size", "16", "--eval-fraction", "0"]
        ferroformers(args.binary, "train", *common, "--task", "classification",
                     "--train", DATA / "chase-train.jsonl", "-o", work / "classifier")
        ferroformers(args.binary, "train", *common, "--task", "embeddings",
                     "--train", DATA / "chase-pairs.jsonl", "-o", work / "embedder")

        model = AutoModelForSequenceClassification.from_pretrained(work / "classifier").eval()
        tokenizer = AutoTokenizer.from_pretrained(work / "classifier")
        with torch.no_grad():
            probabilities = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
        ours = [json.loads(line) for line in ferroformers(args.binary, "classify", "-m", work / "classifier",
                                                          "--quiet", "--json", "-", stdin="\n".join(texts)).splitlines()]
        gap = 0.0
        for row, classes in zip(probabilities, ours):
            for entry in classes:
                gap = max(gap, abs(entry["score"] - row[model.config.label2id[entry["label"]]].item()))
        print(f"classifier: {len(texts)} texts, largest probability gap to transformers {gap:.2e}")
        assert gap <= TOLERANCE, gap

        embedder = SentenceTransformer(str(work / "embedder"), device="cpu")
        theirs = embedder.encode(texts, convert_to_tensor=True)
        ours = torch.tensor([json.loads(line) for line in ferroformers(
            args.binary, "embed", "-m", work / "embedder", "--quiet", "--json", "-", stdin="\n".join(texts)).splitlines()])
        gap = (ours - theirs).abs().max().item()
        print(f"embedder: {len(texts)} texts, largest component gap to sentence-transformers {gap:.2e}")
        assert gap <= TOLERANCE, gap


if __name__ == "__main__":
    main()
