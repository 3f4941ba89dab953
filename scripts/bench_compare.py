#!/usr/bin/env python3
"""Compare ferroformers with PyTorch (f32, bf16), ONNX Runtime (f32, int8) and CTranslate2
(int8; GPT-2 also float32), one after another in one run, on the same random-initialised
models of real shapes.

    python3 -m pip install -r scripts/requirements-fixtures.txt onnxruntime onnx ctranslate2
    cargo build --release
    python3 scripts/bench_compare.py [--threads 2] [--runs 10] [--cases bert-base-1,minilm-32,gpt2-1,gpt2-8]

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

ONNX Runtime int8 is the f32 export quantized by `quantize_dynamic` (QInt8 weights);
CTranslate2 int8 is the model converted with `quantization="int8"` and run with
`compute_type="int8"`. Every peer is checked against PyTorch f32 before it is timed (the
`check` lines: cosine of each output row) and left out when it fails. ONNX Runtime and
CTranslate2 are shown as n/a when they are not installed or left out by --no-onnxruntime or
--no-ctranslate2. Every engine runs on --threads threads: PyTorch by set_num_threads, ONNX
Runtime by intra_op_num_threads, CTranslate2 by intra_threads (one replica), ferroformers by
RAYON_NUM_THREADS.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import (
    BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel,
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
}
CASES = {
    "bert-base-1": ("bert-base", 1, 128),
    "bert-base-32": ("bert-base", 32, 128),
    "minilm-32": ("minilm", 32, 128),
    "roberta-base-1": ("roberta-base", 1, 128),
    "distilbert-32": ("distilbert", 32, 128),
}
DECODE_CASES = {"gpt2-1": 1, "gpt2-8": 8}
PROMPT_TOKENS, NEW_TOKENS = 32, 128
PEERS = ["onnxruntime", "ctranslate2"]


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
    if use(args, "ctranslate2"):
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


def bench_torch_decode(model, ids, runs, dtype, new_tokens):
    """Median prefill ms and decode tokens/s of greedy generation with the KV cache."""
    model = model.to(dtype)
    mask = torch.ones_like(ids)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    pad_token_id=0, attention_mask=mask)
    with torch.inference_mode():
        prefill = median_ms(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True), runs)
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


def bench_ferroformers_decode(binary, folder, batch, runs, dtype, threads, new_tokens, against=None):
    """One report; with `against`, the model in both dtypes timed in turn, run by run, in one
    process: {"first", "second", "ratios" (second/first per run), "ratio"}."""
    out = subprocess.run(
        [str(binary), "bench", "-m", str(folder), "--generate", "--batch", str(batch),
         "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(new_tokens),
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each engine takes")
    parser.add_argument("--cases", default=",".join([*CASES, *DECODE_CASES]))
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                        help="tokens each GPT-2 case generates after its prompt (at least 2)")
    parser.add_argument("--torch-bf16-batched", action=argparse.BooleanOptionalAction, default=True,
                        help="time PyTorch bf16 on batched cases too (encoders and GPT-2)")
    for peer in PEERS:
        parser.add_argument(f"--{peer}", action=argparse.BooleanOptionalAction, default=True,
                            help=f"run {peer} where it is installed")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "ferroformers"))
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: decode speed is timed after the first")
    torch.set_num_threads(args.threads)

    rows = []
    names = args.cases.split(",")
    decode_names = [n for n in names if n in DECODE_CASES]
    names = [n for n in names if n not in DECODE_CASES]
    with tempfile.TemporaryDirectory() as work:
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
