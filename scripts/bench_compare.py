#!/usr/bin/env python3
"""Compare ferroformers with PyTorch (f32, bf16), ONNX Runtime (f32, int8), CTranslate2
(int8; GPT-2 also float32) and llama.cpp (f32, bf16, q8_0; Llama-family decoders), one after
another in one run, on the same random-initialised models of real shapes.

    python3 -m pip install -r scripts/requirements-fixtures.txt onnxruntime onnx ctranslate2
    cargo build --release
    python3 scripts/bench_compare.py [--threads 2] [--runs 10] [--cases bert-base-1,minilm-32,gpt2-1,gpt2-8,modernbert-32]
    python3 scripts/bench_compare.py --cases qwen2.5-0.5b-1,smollm2-360m-1 --llama-cpp DIR

Encoder cases time one forward pass. GPT-2 cases (`gpt2-B`: GPT-2 small, B prompts of 32
tokens, 128 new tokens, greedy, KV cache) time prefill (the prompt's forward pass) and decode
tokens/s; ferroformers also reports the memory bandwidth its binary measured in the same run
(a STREAM-like triad) and its decode speed as a fraction of that ceiling.

Every engine gets the same token ids (the sequence `ferroformers bench` uses), the same number
of threads, two warm-up runs and the median of `--runs` timed runs. The engines take turns:
`--rounds` rounds each time every engine once, so a slow spell of a shared machine (memory
bandwidth and clock here vary by ±20% within minutes) falls on all of them rather than on
whichever ran during it. Each ratio is computed within a round, and the table gives the
median over rounds of each engine's time and of each ratio. Our bf16 and int8 decoders run in
one process, taking turns run by run (`ferroformers bench --against`); their ratio is the median
over every such pair of every round.

Llama-family cases (`qwen2.5-0.5b-1`, `smollm2-360m-1`: batch 1, a prompt of 128 tokens,
--new-tokens new tokens, greedy) are random models with the shapes of the public configs of
Qwen2.5-0.5B and SmolLM2-360M (tied heads), made with transformers and saved with the qwen2
test fixture's reduced tokenizer (the bench feeds token ids; the tokenizer is only loaded).
Each round times PyTorch f32 and bf16, llama.cpp f32, bf16 and q8_0, ours f32 and bf16+int8
(paired as above), the prefill of 512 tokens in bf16 by ours and by llama.cpp, and ours
`ferroformers generate` once per dtype for its peak RSS (the child's ru_maxrss), prompt and new
tokens as above: a plain generation, as a user runs it, without the benchmark's harness. The
table gives each goal of issue 26 beside its number.

llama.cpp is the source vendored in the llama-cpp-python sdist, built with its own CMake, and
given by --llama-cpp (the source tree, with build/bin/llama-bench); without it llama.cpp is n/a:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36
    cmake -S vendor/llama.cpp -B vendor/llama.cpp/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build vendor/llama.cpp/build --target llama-bench -j2
    # then: --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp

Its own convert_hf_to_gguf.py, run with its own gguf-py (which needs numpy, pyyaml, tqdm and
requests; its Llama path also imports sentencepiece), makes GGUF f32, bf16 and q8_0 files of
the same random model. Each is checked before it is timed: llama.cpp's logits over the prompt
(through the sdist's ctypes bindings to build/bin/libllama.so) against PyTorch f32's, and its
tensors' element count against the model's parameters. llama-bench times decoding as
`-p 0 -n N-1 -d 128`: the N-1 tokens after the first, one by one, after a context of the 128
prompt tokens (filled before its timer starts), the same steps as ours and PyTorch's tokens/s; and the
prefill as `-p 512 -n 0`. It feeds its own token ids, which for a dense model's speed is the
same. The two cases need about 10 GB of disk in the work folder (--work-dir) for the models and
GGUF files. Each round prints on stderr the seconds each engine took; PyTorch's bf16 decoding,
far the slowest, can be given fewer runs (--torch-runs).

ONNX Runtime int8 is the f32 export quantized by `quantize_dynamic` (QInt8 weights);
CTranslate2 int8 is the model converted with `quantization="int8"` and run with
`compute_type="int8"`. Every peer is checked against PyTorch f32 before it is timed (the
`check` lines: cosine of each output row) and left out when it fails. ONNX Runtime and
CTranslate2 are shown as n/a when they are not installed or left out by --no-onnxruntime or
--no-ctranslate2. Every engine runs on --threads threads: PyTorch by set_num_threads, ONNX
Runtime by intra_op_num_threads, CTranslate2 by intra_threads (one replica), llama.cpp by
llama-bench -t, ferroformers by RAYON_NUM_THREADS; and on the same CPUs (--cpus, by default the
first --threads of those the script may use): the script pins itself, as `taskset -c` would,
and every process it starts inherits that.
"""
import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import (
    BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel,
    LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertModel, MPNetConfig, MPNetModel,
    Qwen2Config, Qwen2ForCausalLM,
    RobertaConfig, RobertaModel,
)

import bench_peers as peers

ROOT = pathlib.Path(__file__).resolve().parent.parent

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SHAPES = {
    "bert-base": lambda: BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **BASE)),
    "minilm": lambda: BertModel(BertConfig(
        vocab_size=30522, max_position_embeddings=512, hidden_size=384, num_hidden_layers=6,
        num_attention_heads=12, intermediate_size=1536)),
    # roberta-base and distilbert-base-uncased shapes.
    "roberta-base": lambda: RobertaModel(RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, **BASE)),
    "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=30522)),
    # all-mpnet-base-v2's shape (BERT-base's, with a relative-position bias in attention).
    "mpnet-base": lambda: MPNetModel(MPNetConfig(
        vocab_size=30527, max_position_embeddings=514, layer_norm_eps=1e-5,
        relative_attention_num_buckets=32, pad_token_id=1, **BASE)),
    # answerdotai/ModernBERT-base's shape; PyTorch runs sdpa (no flash-attention on the CPU),
    # the sliding window as a mask. CTranslate2 has no ModernBERT: n/a.
    "modernbert-base": lambda: ModernBertModel(ModernBertConfig(
        vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
        intermediate_size=1152, global_attn_every_n_layers=3, local_attention=128,
        max_position_embeddings=8192)),
}
CASES = {
    "bert-base-1": ("bert-base", 1, 128),
    "bert-base-32": ("bert-base", 32, 128),
    "minilm-32": ("minilm", 32, 128),
    "roberta-base-1": ("roberta-base", 1, 128),
    "distilbert-32": ("distilbert", 32, 128),
    "mpnet-32": ("mpnet-base", 32, 128),
    "modernbert-32": ("modernbert-base", 32, 512),
}
DECODE_CASES = {"gpt2-1": 1, "gpt2-8": 8}
PROMPT_TOKENS, NEW_TOKENS = 32, 128
PEERS = ["onnxruntime", "ctranslate2"]

# The public configs' shapes (Qwen/Qwen2.5-0.5B, HuggingFaceTB/SmolLM2-360M), each with the
# pre-tokenizer name that llama.cpp's converter is told (bench_peers.convert says why).
LLAMA_SHAPES = {
    "qwen2.5-0.5b": (lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, sliding_window=32768,
        use_sliding_window=False, max_window_layers=21, bos_token_id=151643,
        eos_token_id=151643)), "qwen2"),
    "smollm2-360m": (lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0)), "smollm"),
}
LLAMA_SHAPES["llama3.2-1b"] = (lambda: LlamaForCausalLM(LlamaConfig(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
    rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000,
    eos_token_id=128001, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "llama-bpe")
LLAMA_CASES = {"qwen2.5-0.5b-1": "qwen2.5-0.5b", "smollm2-360m-1": "smollm2-360m"}
# Issue 29: the same GGUF files, quantized by llama.cpp's llama-quantize, run by both.
GGUF_CASES = {"qwen2.5-0.5b-gguf": "qwen2.5-0.5b", "smollm2-360m-gguf": "smollm2-360m",
              "llama3.2-1b-gguf": "llama3.2-1b"}
GGUF_TYPES = ["Q4_0", "Q4_K_M", "Q8_0"]
GOAL_GGUF_DECODE, GOAL_GGUF_RSS = 1.2, 50e6
LLAMA_PROMPT_TOKENS, PREFILL_TOKENS = 128, 512
# Issue 26's goals for these cases: ours over llama.cpp's tokens/s per dtype, over PyTorch's,
# the fraction of the bandwidth ceiling, and the peak RSS over the weights.
GOALS = {"f32": 1.0, "bf16": 1.0, "int8": 1.2}
GOAL_TORCH, GOAL_CEILING, GOAL_PREFILL, RSS_MARGIN = 2.0, 0.85, 1.0, 200e6
LLAMA_TYPES = {"f32": "f32", "bf16": "bf16", "int8": "q8_0"}
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "qwen2" / "lm-head"


def token_ids(batch, seq, vocab):
    ids = [5 + (i * 2_654_435_761) % (vocab - 5) for i in range(batch * seq)]
    return torch.tensor(ids, dtype=torch.int64).view(batch, seq)


def median_ms(run, runs):
    for _ in range(2):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def take_turns(engines, rounds):
    """Run every engine once per round, in turn: a list of {engine: result} per round."""
    return [{name: run() for name, run in engines.items()} for _ in range(rounds)]


def median_of(rounds, value):
    """The median over rounds of value(round); None when an engine gave no result."""
    values = [value(r) for r in rounds]
    return None if None in values else statistics.median(values)


def build_model(shape, folder):
    torch.manual_seed(0)
    model = SHAPES[shape]().eval()
    model.save_pretrained(folder)
    return model


def bench_torch(model, ids, runs, dtype):
    model = model.to(dtype)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        result = median_ms(lambda: model(input_ids=ids, attention_mask=mask), runs)
    model.to(torch.float32)
    return result


def use(args, peer):
    """Whether to run `peer` (a module name in PEERS): asked for and installed."""
    if not getattr(args, peer):
        return False
    if not peers.installed(peer):
        print(f"{peer} is not installed: n/a", file=sys.stderr)
        return False
    return True


def encoder_peers(model, ids, folder, case, args):
    """For each peer: a function that loads it (a new session or encoder) and returns a
    function that runs one forward pass; None for a peer that is not run or fails its check."""
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.numpy()
    loaders = {"onnxruntime f32": None, "onnxruntime int8": None, "ctranslate2 int8": None}
    if use(args, "onnxruntime"):
        for name, int8 in [("onnxruntime f32", False), ("onnxruntime int8", True)]:
            path = peers.onnx_file(model, ids, folder, int8)
            load = lambda path=path: peers.onnx_forward(path, ids, args.threads)
            loaders[name] = load if peers.check(f"{name} {case}", reference, load()()) else None
    if use(args, "ctranslate2") and not peers.ct2_converts(model):
        print(f"ctranslate2 has no converter for {type(model.config).__name__}: n/a for {case}",
              file=sys.stderr)
    elif use(args, "ctranslate2"):
        path = peers.ct2_model(folder, "int8")
        load = lambda: peers.ct2_encoder_forward(path, ids, args.threads)
        name = "ctranslate2 int8"
        loaders[name] = load if peers.check(f"{name} {case}", reference, load()()) else None
    return loaders


def bench_peer(load, runs):
    """Median ms of one forward pass of a peer loaded anew (its threads end with it, and do not
    spin beside the next engine); None for a peer that is not run."""
    return median_ms(load(), runs) if load else None


def ferroformers_env(threads):
    return {**os.environ, "RAYON_NUM_THREADS": str(threads)}


def bench_ferroformers(binary, folder, batch, seq, runs, dtype, threads):
    out = subprocess.run(
        [str(binary), "bench", "-m", str(folder), "--batch", str(batch), "--seq", str(seq),
         "--runs", str(runs), "--dtype", dtype, "--json"],
        check=True, capture_output=True, text=True, env=ferroformers_env(threads),
    )
    return json.loads(out.stdout)["median_ms"]


def bench_torch_decode(model, ids, runs, dtype, new_tokens, last_logits=False):
    """Median prefill ms and decode tokens/s of greedy generation with the KV cache. With
    `last_logits`, the prefill timed alone computes the last position's logits only, as
    generate's own prefill does for the models that take logits_to_keep (the Llama family:
    all 128 positions through Qwen2.5's 151936-token head would add ~17 GFLOP)."""
    model = model.to(dtype)
    mask = torch.ones_like(ids)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    pad_token_id=0, attention_mask=mask)
    keep = dict(logits_to_keep=1) if last_logits else {}
    with torch.inference_mode():
        prefill = median_ms(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True, **keep), runs)
        total = median_ms(lambda: model.generate(ids, **settings), runs)
    model.to(torch.float32)
    tokens = ids.shape[0] * (new_tokens - 1)
    return prefill, tokens / ((total - prefill) / 1e3)


def decode_peers(model, ids, folder, case, args):
    """For CTranslate2 float32 and int8: a function that loads the generator, or None when it
    is not run or its logits over the prompt fail the check against PyTorch f32."""
    loaders = {"ctranslate2 float32": None, "ctranslate2 int8": None}
    if not use(args, "ctranslate2"):
        return loaders
    with torch.inference_mode():
        reference = model(input_ids=ids).logits.numpy()
    for compute_type in ["float32", "int8"]:
        path = peers.ct2_model(folder, compute_type)
        load = lambda path=path, c=compute_type: peers.ct2_generator(path, args.threads, c)
        name = f"ctranslate2 {compute_type}"
        loaders[name] = load if peers.check(f"{name} {case}", reference, peers.ct2_logits(load(), ids)) else None
    return loaders


def bench_ct2_decode(load, ids, runs, new_tokens):
    """As bench_torch_decode, for a CTranslate2 generator loaded anew: prefill is the time to
    the first new token and tokens/s the rest, per run as ours; None when it is not run."""
    if not load:
        return None
    generator = load()
    for _ in range(2):
        peers.ct2_generate(generator, ids, new_tokens)
    timings = [peers.ct2_generate(generator, ids, new_tokens) for _ in range(runs)]
    tokens = ids.shape[0] * (new_tokens - 1)
    return (statistics.median(first for first, _ in timings),
            statistics.median(tokens / ((total - first) / 1e3) for first, total in timings))


def bench_ferroformers_decode(binary, folder, batch, runs, dtype, threads, new_tokens, against=None,
                              prompt_tokens=PROMPT_TOKENS):
    """One report; with `against`, the model in both dtypes timed in turn, run by run, in one
    process: {"first", "second", "ratios" (second/first per run), "ratio"}."""
    out = subprocess.run(
        [str(binary), "bench", "-m", str(folder), "--generate", "--batch", str(batch),
         "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
         "--runs", str(runs), "--dtype", dtype, "--json",
         *(["--against", against] if against else [])],
        check=True, capture_output=True, text=True, env=ferroformers_env(threads),
    )
    return json.loads(out.stdout)


def decode_cases(names, args, work):
    folder = pathlib.Path(work) / "gpt2"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(folder)
    new_tokens = args.new_tokens
    rows = []
    for name in names:
        batch = DECODE_CASES[name]
        case = f"gpt2 {batch}x({PROMPT_TOKENS}+{new_tokens})"
        ids = token_ids(batch, PROMPT_TOKENS, model.config.vocab_size)
        ct2 = decode_peers(model, ids, folder, case, args)
        engines = {"torch f32": lambda: bench_torch_decode(model, ids, args.runs, torch.float32, new_tokens)}
        # PyTorch's bf16 decode is very slow on CPUs without AVX512-BF16 (about 4 tokens/s
        # on an AVX2-only one); --no-torch-bf16-batched leaves the batched case out.
        if batch == 1 or args.torch_bf16_batched:
            engines["torch bf16"] = lambda: bench_torch_decode(model, ids, args.runs, torch.bfloat16, new_tokens)
        for peer, load in ct2.items():
            engines[peer] = lambda load=load: bench_ct2_decode(load, ids, args.runs, new_tokens)
        engines["ours f32"] = lambda: bench_ferroformers_decode(
            args.binary, folder, batch, args.runs, "f32", args.threads, new_tokens)
        # bf16 and int8 in one process, run by run: their ratio is the target, and seconds
        # apart the machine's noise is smaller than between processes a minute apart.
        engines["ours bf16+int8"] = lambda: bench_ferroformers_decode(
            args.binary, folder, batch, args.runs, "bf16", args.threads, new_tokens, against="int8")
        rounds = take_turns(engines, args.rounds)
        for r in rounds:
            paired = r.pop("ours bf16+int8")
            r["ours bf16"], r["ours int8"], r["int8 paired"] = paired["first"], paired["second"], paired["ratios"]
        names = [name for name in engines if name != "ours bf16+int8"] + ["ours bf16", "ours int8"]

        def tokens(result):
            if result is None:
                return None
            return result[1] if isinstance(result, tuple) else result["decode_tokens_per_second"]

        def faster(r, ours, other):
            """Our tokens/s over the other engine's in round r; None where it did not run."""
            return tokens(r[ours]) / tokens(r[other]) if r.get(other) else None

        row = {
            "case": case,
            "rounds": rounds,
            # Medians over rounds: tokens/s and prefill ms of each engine, ratios of tokens/s
            # within each round, our fraction of the bandwidth ceiling measured in each run.
            "tokens": {name: median_of(rounds, lambda r, n=name: tokens(r[n])) for name in names},
            "prefill": {name: median_of(rounds, lambda r, n=name: None if r[n] is None else r[n][0]
                                        if isinstance(r[n], tuple) else r[n]["prefill_ms"]) for name in names},
            "f32 vs torch": median_of(rounds, lambda r: faster(r, "ours f32", "torch f32")),
            "bf16 vs torch": median_of(rounds, lambda r: faster(r, "ours bf16", "torch bf16")),
            "int8 vs CT2 int8": median_of(rounds, lambda r: faster(r, "ours int8", "ctranslate2 int8")),
            "f32 vs CT2 float32": median_of(rounds, lambda r: faster(r, "ours f32", "ctranslate2 float32")),
            # Every paired run of every round.
            "int8 vs bf16": statistics.median(ratio for r in rounds for ratio in r["int8 paired"]),
            "ceiling": {d: median_of(rounds, lambda r, d=d: r[f"ours {d}"]["bandwidth_fraction"])
                        for d in ["f32", "bf16", "int8"]},
            "triad": median_of(rounds, lambda r: r["ours f32"]["triad_gb_per_second"]),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print("\n| case | torch f32 tok/s | torch bf16 tok/s | CT2 float32 tok/s | CT2 int8 tok/s | ours f32 tok/s "
          "| ours bf16 tok/s | ours int8 tok/s | f32 vs torch | bf16 vs torch | f32 vs CT2 float32 "
          "| int8 vs CT2 int8 | int8 vs ours bf16 | ours f32 / bf16 / int8 of bandwidth ceiling "
          "| prefill ms torch f32 / ours f32 / torch bf16 / ours bf16 | prefill ms CT2 float32 / CT2 int8 / ours int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    number = lambda value, unit="": f"{value:.1f}{unit}" if value else "n/a"
    ratio = lambda value: f"{value:.2f}x" if value else "n/a"
    for r in rows:
        tok, pre, ceiling = r["tokens"], r["prefill"], r["ceiling"]
        print(
            f"| {r['case']} | {number(tok['torch f32'])} | {number(tok.get('torch bf16'))} | "
            f"{number(tok['ctranslate2 float32'])} | {number(tok['ctranslate2 int8'])} | "
            f"{number(tok['ours f32'])} | {number(tok['ours bf16'])} | {number(tok['ours int8'])} | "
            f"{ratio(r['f32 vs torch'])} | {ratio(r['bf16 vs torch'])} | {ratio(r['f32 vs CT2 float32'])} | "
            f"{ratio(r['int8 vs CT2 int8'])} | {ratio(r['int8 vs bf16'])} | "
            f"{ceiling['f32']:.0%} / {ceiling['bf16']:.0%} / {ceiling['int8']:.0%} (triad {r['triad']:.1f} GB/s) | "
            f"{number(pre['torch f32'])} / {number(pre['ours f32'])} / {number(pre.get('torch bf16'))} / "
            f"{number(pre['ours bf16'])} | {number(pre['ctranslate2 float32'])} / {number(pre['ctranslate2 int8'])} / "
            f"{number(pre['ours int8'])} |"
        )
    print("\nTokens/s count every row of the batch; prefill is the prompt's forward pass (ours and CTranslate2's: "
          "to the first new token). The bandwidth ceiling is steps/s x weight bytes per step / triad bandwidth. "
          "int8 vs ours bf16: the median of the per-run ratios of the two, timed in turn in one process.")


def build_llama_model(shape, folder):
    """A random model of `shape` (in LLAMA_SHAPES) saved in `folder` with what `ferroformers
    bench --generate` loads beside the weights: the qwen2 fixture's tokenizer files (its
    model_max_length raised to the model's) and a greedy generation_config.json."""
    torch.manual_seed(0)
    model = LLAMA_SHAPES[shape][0]().eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ["tokenizer.json", "special_tokens_map.json"]:
        shutil.copy(FIXTURE_TOKENIZER / name, folder / name)
    tokenizer_config = json.loads((FIXTURE_TOKENIZER / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = model.config.max_position_embeddings
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "generation_config.json").write_text('{"do_sample": false}')
    return model


def ferroformers_peak_rss(binary, folder, dtype, threads, prompt_tokens, new_tokens):
    """Our peak RSS in bytes (the child's ru_maxrss) over loading the model in `dtype` and one
    greedy generation of `new_tokens` after a prompt of `prompt_tokens` tokens: `generate`,
    which unlike `bench` runs no bandwidth probe (three 128 MiB arrays)."""
    # " the" is one token of the fixture's tokenizer: a prompt of exactly prompt_tokens.
    out, peak = peers.run_measured(
        [str(binary), "generate", "-m", str(folder), "--dtype", dtype, "--greedy", "--json", "-q",
         "--max-new-tokens", str(new_tokens), " the" * prompt_tokens],
        env=ferroformers_env(threads),
    )
    made = json.loads(out.splitlines()[-1])
    if (made["prompt_tokens"], made["completion_tokens"]) != (prompt_tokens, new_tokens):
        print(f"ferroformers generate {dtype}: {made['prompt_tokens']} prompt and "
              f"{made['completion_tokens']} new tokens, not {prompt_tokens} and {new_tokens}", file=sys.stderr)
    return peak


def llama_cpp_files(model, ids, folder, pre, case, args):
    """For each of our dtypes: llama.cpp's GGUF file of the model in the matching type, or None
    when --llama-cpp is not given or the file fails its check against PyTorch f32."""
    files = {dtype: None for dtype in LLAMA_TYPES}
    if not args.llama_cpp:
        return files
    with torch.inference_mode():
        reference = model(input_ids=ids).logits.numpy()
    parameters = sum(p.numel() for p in model.parameters())
    for dtype, outtype in LLAMA_TYPES.items():
        path = peers.gguf_file(args.llama_cpp, folder, outtype, pre)
        output, tensors = peers.llama_cpp_logits(args.llama_cpp, path, ids, args.threads)
        name = f"llama.cpp {outtype} {case}"
        same = tensors["elements"] == parameters
        print(f"check {name}: {tensors['count']} tensors, {tensors['elements']} elements "
              f"({'ok' if same else f'PyTorch has {parameters}: not timed'})")
        files[dtype] = path if peers.check(name, reference, output) and same else None
    return files


def take_turns_timed(engines, rounds):
    """take_turns, with each engine's seconds in the round under "seconds" (also printed)."""
    results = []
    for index in range(rounds):
        result, seconds = {}, {}
        for name, run in engines.items():
            start = time.perf_counter()
            result[name] = run()
            seconds[name] = round(time.perf_counter() - start, 1)
        result["seconds"] = seconds
        print(f"round {index + 1}: {sum(seconds.values()):.0f} s ({json.dumps(seconds)})", file=sys.stderr)
        results.append(result)
    return results


def llama_decode_cases(names, args, work):
    new_tokens, prompt = args.new_tokens, LLAMA_PROMPT_TOKENS
    torch_runs = args.torch_runs or args.runs
    rows = []
    for name in names:
        shape = LLAMA_CASES[name]
        folder = pathlib.Path(work) / shape
        start = time.perf_counter()
        model = build_llama_model(shape, folder)
        case = f"{shape} 1x({prompt}+{new_tokens})"
        ids = token_ids(1, prompt, model.config.vocab_size)
        gguf = llama_cpp_files(model, ids, folder, LLAMA_SHAPES[shape][1], case, args)
        setup = time.perf_counter() - start
        print(f"{case}: the model, GGUF files and checks took {setup:.0f} s", file=sys.stderr)

        def llama_cpp(dtype, **test):
            path = gguf[dtype]
            return peers.llama_bench(args.llama_cpp, path, args.threads, args.runs, **test) if path else None

        ours = lambda dtype, **more: bench_ferroformers_decode(
            args.binary, folder, 1, args.runs, dtype, args.threads, new_tokens, prompt_tokens=prompt, **more)
        decode = dict(prompt=0, gen=new_tokens - 1, depth=prompt)
        # Each of ours beside the llama.cpp type it is held against, PyTorch last (slowest).
        engines = {
            "ours f32": lambda: ours("f32"),
            "llama.cpp f32": lambda: llama_cpp("f32", **decode),
            "ours bf16+int8": lambda: ours("bf16", against="int8"),
            "llama.cpp bf16": lambda: llama_cpp("bf16", **decode),
            "llama.cpp q8_0": lambda: llama_cpp("int8", **decode),
            "ours prefill": lambda: bench_ferroformers_decode(
                args.binary, folder, 1, args.runs, "bf16", args.threads, 2, prompt_tokens=PREFILL_TOKENS),
            "llama.cpp prefill": lambda: llama_cpp("bf16", prompt=PREFILL_TOKENS, gen=0),
            "torch f32": lambda: bench_torch_decode(model, ids, torch_runs, torch.float32, new_tokens, True),
            "torch bf16": lambda: bench_torch_decode(model, ids, torch_runs, torch.bfloat16, new_tokens, True),
            # Measured every round like the rest; the goal is a ceiling, so the table gives the
            # highest.
            "ours peak rss": lambda: {d: ferroformers_peak_rss(args.binary, folder, d, args.threads, prompt, new_tokens)
                                      for d in LLAMA_TYPES},
        }
        rounds = take_turns_timed(engines, args.rounds)
        for r in rounds:
            paired = r.pop("ours bf16+int8")
            r["ours bf16"], r["ours int8"], r["int8 paired"] = paired["first"], paired["second"], paired["ratios"]

        def tokens(result):
            if result is None:
                return None
            if isinstance(result, tuple):
                return result[1]
            return result.get("decode_tokens_per_second", result.get("tokens_per_second"))

        def faster(r, ours, other):
            """Our tokens/s over the other engine's in round r; None where it did not run."""
            return tokens(r[ours]) / tokens(r[other]) if r.get(other) else None

        def theirs_ms(r):
            """llama.cpp's prefill of PREFILL_TOKENS in round r, ms; None where it did not run."""
            return r["llama.cpp prefill"]["ms"] if r["llama.cpp prefill"] else None

        peer = {"f32": "llama.cpp f32", "bf16": "llama.cpp bf16", "int8": "llama.cpp q8_0"}
        weights = {"f32": 4 * sum(p.numel() for p in model.parameters()),
                   "bf16": 2 * sum(p.numel() for p in model.parameters()),
                   "int8": median_of(rounds, lambda r: r["ours int8"]["weight_bytes_per_token"])}
        engine_names = [n for n in engines if n not in ["ours bf16+int8", "ours peak rss"]] + ["ours bf16", "ours int8"]
        row = {
            "case": case,
            "setup_seconds": round(setup),
            "rounds": rounds,
            "tokens": {n: median_of(rounds, lambda r, n=n: tokens(r[n])) for n in engine_names
                       if "prefill" not in n},
            # Prefill ms of the prompt of 128 (PyTorch's forward alone, ours to the first token).
            "prefill": {n: median_of(rounds, lambda r, n=n: r[n][0] if isinstance(r[n], tuple) else r[n]["prefill_ms"])
                        for n in ["torch f32", "torch bf16", "ours f32", "ours bf16", "ours int8"]},
            "prefill 512 bf16": {
                "ours": median_of(rounds, lambda r: r["ours prefill"]["prefill_ms"]),
                "llama.cpp": median_of(rounds, lambda r: theirs_ms(r)),
                "ours vs llama.cpp": median_of(
                    rounds, lambda r: theirs_ms(r) / r["ours prefill"]["prefill_ms"] if theirs_ms(r) else None),
            },
            "vs llama.cpp": {d: median_of(rounds, lambda r, d=d: faster(r, f"ours {d}", peer[d])) for d in peer},
            "vs torch": {d: median_of(rounds, lambda r, d=d: faster(r, f"ours {d}", f"torch {d}"))
                         for d in ["f32", "bf16"]},
            "int8 vs bf16": statistics.median(ratio for r in rounds for ratio in r["int8 paired"]),
            "ceiling": {d: median_of(rounds, lambda r, d=d: r[f"ours {d}"]["bandwidth_fraction"]) for d in peer},
            "triad": median_of(rounds, lambda r: r["ours f32"]["triad_gb_per_second"]),
            "weight bytes": weights,
            # The highest over rounds. Ours: `generate` (no bandwidth probe); llama.cpp:
            # llama-bench's decoding test.
            "peak rss": {
                "ours": {d: max(r["ours peak rss"][d] for r in rounds) for d in peer},
                "llama.cpp": {d: max((r[peer[d]]["peak_rss_bytes"] for r in rounds if r[peer[d]]), default=None)
                              for d in peer},
            },
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        print_llama_table(row, args)


def gguf_files(shape, args, work):
    """The random model of `shape` as GGUF_TYPES files, by llama.cpp's converter (bf16) and
    llama-quantize: in --gguf-dir when given (made once, kept), else in `work`."""
    quantize = pathlib.Path(args.llama_cpp) / "build" / "bin" / "llama-quantize"
    folder = pathlib.Path(args.gguf_dir or work) / shape
    folder.parent.mkdir(parents=True, exist_ok=True)
    files = {kind: folder.with_name(f"{shape}-{kind.lower()}.gguf") for kind in GGUF_TYPES}
    if not all(path.exists() for path in files.values()):
        build_llama_model(shape, folder)
        bf16 = peers.gguf_file(args.llama_cpp, folder, "bf16", LLAMA_SHAPES[shape][1])
        shutil.rmtree(folder)
        for kind, path in files.items():
            subprocess.run([str(quantize), str(bf16), str(path), kind, str(args.threads)],
                           check=True, capture_output=True)
        bf16.unlink()
    return files


def gguf_cases(names, args, work):
    """Issue 29: each shape's random model as llama.cpp's bf16 GGUF, quantized by its
    llama-quantize to GGUF_TYPES; ours and llama.cpp run the same files. Each round times, per
    type, both decoders (after a context of the prompt) and both prefills of PREFILL_TOKENS
    tokens, and our peak RSS over a plain `generate`."""
    new_tokens, prompt = args.new_tokens, LLAMA_PROMPT_TOKENS
    for name in names:
        shape = GGUF_CASES[name]
        start = time.perf_counter()
        files = gguf_files(shape, args, work)
        case = f"{shape} 1x({prompt}+{new_tokens})"
        print(f"{case}: the GGUF files took {time.perf_counter() - start:.0f} s", file=sys.stderr)
        decode = dict(prompt=0, gen=new_tokens - 1, depth=prompt)
        engines = {}
        for kind, path in files.items():
            engines[f"ours {kind}"] = lambda path=path: bench_ferroformers_decode(
                args.binary, path, 1, args.runs, "f32", args.threads, new_tokens, prompt_tokens=prompt)
            engines[f"llama.cpp {kind}"] = lambda path=path: peers.llama_bench(
                args.llama_cpp, path, args.threads, args.runs, **decode)
            engines[f"ours prefill {kind}"] = lambda path=path: bench_ferroformers_decode(
                args.binary, path, 1, args.runs, "f32", args.threads, 2, prompt_tokens=PREFILL_TOKENS)
            engines[f"llama.cpp prefill {kind}"] = lambda path=path: peers.llama_bench(
                args.llama_cpp, path, args.threads, args.runs, prompt=PREFILL_TOKENS, gen=0)
            engines[f"ours peak rss {kind}"] = lambda path=path: ferroformers_peak_rss(
                args.binary, path, "f32", args.threads, prompt, new_tokens)
        rounds = take_turns_timed(engines, args.rounds)
        ours_tps = lambda result: result["decode_tokens_per_second"]
        row = {"case": case, "rounds": rounds, "types": {}}
        for kind, path in files.items():
            row["types"][kind] = {
                "file bytes": path.stat().st_size,
                "ours tok/s": median_of(rounds, lambda r: ours_tps(r[f"ours {kind}"])),
                "llama.cpp tok/s": median_of(rounds, lambda r: r[f"llama.cpp {kind}"]["tokens_per_second"]),
                "decode vs llama.cpp": median_of(
                    rounds, lambda r: ours_tps(r[f"ours {kind}"]) / r[f"llama.cpp {kind}"]["tokens_per_second"]),
                "ours prefill ms": median_of(rounds, lambda r: r[f"ours prefill {kind}"]["prefill_ms"]),
                "llama.cpp prefill ms": median_of(rounds, lambda r: r[f"llama.cpp prefill {kind}"]["ms"]),
                "prefill vs llama.cpp": median_of(
                    rounds, lambda r: r[f"llama.cpp prefill {kind}"]["ms"] / r[f"ours prefill {kind}"]["prefill_ms"]),
                "ceiling": median_of(rounds, lambda r: r[f"ours {kind}"]["bandwidth_fraction"]),
                "ours peak rss": max(r[f"ours peak rss {kind}"] for r in rounds),
                "llama.cpp peak rss": max(r[f"llama.cpp {kind}"]["peak_rss_bytes"] for r in rounds),
            }
        row["triad"] = median_of(rounds, lambda r: r[f"ours {GGUF_TYPES[0]}"]["triad_gb_per_second"])
        print(json.dumps(row), file=sys.stderr)
        print_gguf_table(row, args)
        if args.gguf_dir is None:
            for path in files.values():
                path.unlink()


def print_gguf_table(r, args):
    mb = lambda value: f"{value / 1e6:.0f}"
    print(f"\n{r['case']}, GGUF files by llama-quantize: {args.threads} threads (CPUs {args.cpus}), "
          f"{args.rounds} rounds of the median of {args.runs} runs, triad {r['triad']:.1f} GB/s, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| type | file MB | llama.cpp tok/s | ours tok/s | decode ours / llama.cpp | ours of bandwidth ceiling "
          f"| prefill {PREFILL_TOKENS}: llama.cpp ms | ours ms | prefill ours / llama.cpp | llama.cpp peak RSS MB "
          "| ours peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, t in r["types"].items():
        rss_ok = t["ours peak rss"] <= t["llama.cpp peak rss"] + GOAL_GGUF_RSS
        print(f"| {kind} | {mb(t['file bytes'])} | {t['llama.cpp tok/s']:.1f} | {t['ours tok/s']:.1f} | "
              f"{t['decode vs llama.cpp']:.2f}x (goal {GOAL_GGUF_DECODE:g}x) | {t['ceiling']:.0%} | "
              f"{t['llama.cpp prefill ms']:.0f} | {t['ours prefill ms']:.0f} | "
              f"{t['prefill vs llama.cpp']:.2f}x (goal {GOAL_PREFILL:g}x) | {mb(t['llama.cpp peak rss'])} | "
              f"{mb(t['ours peak rss'])} ({'within' if rss_ok else 'over'} +50) |")
    print("\nTokens/s are the decoding steps after the first new token (llama.cpp: `-p 0 -n N-1 -d 128`). "
          "Ratios are medians of the per-round ratios. Peak RSS: ours `ferroformers generate`'s, llama.cpp's "
          "its decoding run's, the highest over rounds.")


def print_llama_table(r, args):
    number = lambda value: f"{value:.1f}" if value else "n/a"
    ratio = lambda value, goal: f"{value:.2f}x (goal {goal:g}x)" if value else "n/a"
    mb = lambda value: f"{value / 1e6:.0f}" if value else "n/a"
    tok, rss, weights = r["tokens"], r["peak rss"], r["weight bytes"]
    print(f"\n{r['case']}: {args.threads} threads (CPUs {args.cpus}), {args.rounds} rounds of the median of "
          f"{args.runs} runs ({args.torch_runs or args.runs} of PyTorch), "
          f"triad {r['triad']:.1f} GB/s, {time.strftime('%Y-%m-%d')}\n")
    print("| ours (llama.cpp) | PyTorch tok/s | llama.cpp tok/s | ours tok/s | ours / llama.cpp | ours / PyTorch "
          "| ours of bandwidth ceiling | ours peak RSS MB | weights + 200 MB | llama.cpp peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype, theirs in LLAMA_TYPES.items():
        torch_name = f"torch {dtype}"
        peak = rss["ours"][dtype]
        budget = weights[dtype] + RSS_MARGIN
        print(
            f"| {dtype} ({theirs}) | {number(tok.get(torch_name))} | {number(tok[f'llama.cpp {theirs}'])} | "
            f"{number(tok[f'ours {dtype}'])} | {ratio(r['vs llama.cpp'][dtype], GOALS[dtype])} | "
            f"{ratio(r['vs torch'].get(dtype), GOAL_TORCH)} | "
            f"{r['ceiling'][dtype]:.0%} (goal {GOAL_CEILING:.0%}) | "
            f"{mb(peak)} ({'within' if peak <= budget else 'over'}) | "
            f"{mb(weights[dtype])} + 200 | {mb(rss['llama.cpp'][dtype])} |"
        )
    pre, pre512 = r["prefill"], r["prefill 512 bf16"]
    ms = lambda value: f"{value:.1f} ms" if value else "n/a"
    print(f"\nPrefill of {PREFILL_TOKENS} tokens, bf16: ours {ms(pre512['ours'])}, llama.cpp "
          f"{ms(pre512['llama.cpp'])}: {ratio(pre512['ours vs llama.cpp'], GOAL_PREFILL)}. "
          f"Prefill of {LLAMA_PROMPT_TOKENS}, ms: PyTorch f32 {number(pre['torch f32'])}, bf16 "
          f"{number(pre['torch bf16'])}; ours f32 {number(pre['ours f32'])}, bf16 {number(pre['ours bf16'])}, "
          f"int8 {number(pre['ours int8'])}. Ours int8 / bf16, paired in one process: {r['int8 vs bf16']:.2f}x.")
    print("\nTokens/s are the decoding steps after the first new token (llama.cpp: `-p 0 -n N-1 -d 128`). Ratios "
          "are medians of the per-round ratios. The bandwidth ceiling is steps/s x weight bytes per step / triad "
          "bandwidth. Peak RSS is the highest over rounds: ours `ferroformers generate`'s (the child's ru_maxrss; "
          "`bench`'s own also counts its bandwidth probe), llama.cpp's its decoding run's; weights are parameters "
          "x 4 (f32) or x 2 (bf16) bytes and our own int8 weight bytes. "
          "PyTorch has no int8 here and its RSS is not measured (it runs inside this script).")


def pin(args):
    """Pin this process's every thread to --cpus (by default the first --threads CPUs it may
    use), as `taskset -c` would: PyTorch runs here, and every engine started later inherits it."""
    if args.cpus:
        cpus = set()
        for part in args.cpus.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    else:
        cpus = set(sorted(os.sched_getaffinity(0))[:args.threads])
    # sched_setaffinity sets one thread's CPUs; threads already started keep theirs.
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), cpus)
    args.cpus = ",".join(map(str, sorted(cpus)))
    print(f"pinned to CPUs {args.cpus}, {args.threads} threads", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each engine takes")
    parser.add_argument("--torch-runs", type=int,
                        help="timed runs of PyTorch per round in the Llama-family cases (default: --runs): "
                        "with two warm-ups each, its bf16 decoding (about 1.3 tokens/s on Qwen2.5-0.5B "
                        "on a Zen 5 core pair) takes most of a round")
    parser.add_argument("--cases", default=",".join([*CASES, *DECODE_CASES]),
                        help=f"comma-separated, of {', '.join([*CASES, *DECODE_CASES, *LLAMA_CASES, *GGUF_CASES])} "
                        "(default: all but the Llama-family and GGUF ones)")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                        help="tokens each GPT-2 or Llama-family case generates after its prompt (at least 2)")
    parser.add_argument("--llama-cpp", type=pathlib.Path, metavar="DIR",
                        help="llama.cpp source tree with build/bin/llama-bench, as vendored in the "
                        "llama-cpp-python sdist (see the docstring); without it llama.cpp is n/a")
    parser.add_argument("--cpus", help="CPUs every engine is pinned to, as taskset -c takes them "
                        "(default: the first --threads CPUs this script may use)")
    parser.add_argument("--work-dir", type=pathlib.Path,
                        help="where the temporary work folder is made (default: the system's); "
                        "the Llama-family cases write about 10 GB there")
    parser.add_argument("--gguf-dir", type=pathlib.Path,
                        help="where the GGUF cases keep their files (made once, reused by later runs); "
                        "by default they are made in the work folder and deleted")
    parser.add_argument("--torch-bf16-batched", action=argparse.BooleanOptionalAction, default=True,
                        help="time PyTorch bf16 on batched cases too (encoders and GPT-2)")
    for peer in PEERS:
        parser.add_argument(f"--{peer}", action=argparse.BooleanOptionalAction, default=True,
                            help=f"run {peer} where it is installed")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "ferroformers"))
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: decode speed is timed after the first")
    names = args.cases.split(",")
    unknown = [n for n in names if n not in {**CASES, **DECODE_CASES, **LLAMA_CASES, **GGUF_CASES}]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    if args.llama_cpp and not peers.llama_bench_binary(args.llama_cpp).exists():
        parser.error(f"no {peers.llama_bench_binary(args.llama_cpp)}: build llama-bench first (see above)")
    pin(args)
    torch.set_num_threads(args.threads)

    rows = []
    decode_names = [n for n in names if n in DECODE_CASES]
    llama_names = [n for n in names if n in LLAMA_CASES]
    gguf_names = [n for n in names if n in GGUF_CASES]
    if gguf_names and not args.llama_cpp:
        parser.error("the GGUF cases need --llama-cpp (its llama-quantize makes the files)")
    names = [n for n in names if n in CASES]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        if gguf_names:
            gguf_cases(gguf_names, args, work)
        if llama_names:
            llama_decode_cases(llama_names, args, work)
        if decode_names:
            decode_cases(decode_names, args, work)
        models = {}
        for name in names:
            shape, batch, seq = CASES[name]
            folder = pathlib.Path(work) / shape
            if shape not in models:
                models[shape] = build_model(shape, folder)
            model = models[shape]
            ids = token_ids(batch, seq, model.config.vocab_size)
            case = f"{shape} {batch}x{seq}"
            loaders = encoder_peers(model, ids, folder, case, args)
            run_ours = lambda dtype: bench_ferroformers(
                args.binary, folder, batch, seq, args.runs, dtype, args.threads)
            engines = {
                "torch f32": lambda: bench_torch(model, ids, args.runs, torch.float32),
                # Left out of batched cases by --no-torch-bf16-batched (about 37 s per run of
                # BERT-base 32 x 128 on an AVX2-only CPU).
                "torch bf16": lambda: bench_torch(model, ids, args.runs, torch.bfloat16)
                if batch == 1 or args.torch_bf16_batched else None,
                **{peer: lambda load=load: bench_peer(load, args.runs) for peer, load in loaders.items()},
                "ferroformers f32": lambda: run_ours("f32"),
                "ferroformers bf16": lambda: run_ours("bf16"),
                "ferroformers int8": lambda: run_ours("int8"),
            }
            rounds = take_turns(engines, args.rounds)
            ratio = lambda base, ours: median_of(rounds, lambda r: r[base] / r[ours] if r[base] else None)

            def best_int8_peer(r):
                """The faster of ONNX Runtime int8 and CTranslate2 int8 in round r."""
                return min((r[p] for p in ["onnxruntime int8", "ctranslate2 int8"] if r[p]), default=None)

            result = {
                "case": case,
                "batch": batch,
                "rounds": rounds,
                **{name: median_of(rounds, lambda r, n=name: r[n]) for name in engines},
                "f32 vs ORT": ratio("onnxruntime f32", "ferroformers f32"),
                "f32 vs torch f32": ratio("torch f32", "ferroformers f32"),
                "bf16 vs torch bf16": ratio("torch bf16", "ferroformers bf16"),
                "int8 vs ORT int8": ratio("onnxruntime int8", "ferroformers int8"),
                "int8 vs CT2 int8": ratio("ctranslate2 int8", "ferroformers int8"),
                "int8 vs best int8 peer": median_of(
                    rounds, lambda r: best_int8_peer(r) / r["ferroformers int8"] if best_int8_peer(r) else None),
            }
            rows.append(result)
            print(json.dumps(result), file=sys.stderr)

    if not rows:
        return
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{args.rounds} rounds of the median of {args.runs} runs, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| case | torch f32 ms | torch bf16 ms | ORT f32 ms | ORT int8 ms | CT2 int8 ms | ours f32 ms "
          "| ours bf16 ms | ours int8 ms | ours f32 vs ORT | ours f32 vs torch f32 | ours bf16 vs torch bf16 "
          "| ours int8 vs best of ORT int8 / CT2 int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratio = lambda value: f"{value:.2f}x" if value else "n/a"
    ms = lambda value: f"{value:.1f}" if value else "n/a"
    for r in rows:
        print(
            f"| {r['case']} | {r['torch f32']:.1f} | {ms(r['torch bf16'])} | {ms(r['onnxruntime f32'])} | "
            f"{ms(r['onnxruntime int8'])} | {ms(r['ctranslate2 int8'])} | "
            f"{r['ferroformers f32']:.1f} | {r['ferroformers bf16']:.1f} | {r['ferroformers int8']:.1f} | "
            f"{ratio(r['f32 vs ORT'])} | {ratio(r['f32 vs torch f32'])} | {ratio(r['bf16 vs torch bf16'])} | "
            f"{ratio(r['int8 vs best int8 peer'])} |"
        )
    print("\nRatios above 1 mean ferroformers is faster (time of the other engine / ours). The int8 ratio "
          "takes, in each round, the faster of ONNX Runtime int8 and CTranslate2 int8 (their own ratios are in "
          "the JSON lines on stderr).")


if __name__ == "__main__":
    main()
