#!/usr/bin/env python3
"""One training step (forward, backward, AdamW) of ours beside PyTorch's, same shapes, same
CPUs: MiniLM-L6 at batch 32 x 128 and BERT-base at 16 x 128 (issue 28's speed goal).

Random-weight models of the real shapes are written once to --work. Each round runs PyTorch
then ours (then the other order next round), each in its own process pinned to the same CPUs
with `taskset`, PyTorch on as many threads as CPUs given. Reports the median ms per step,
steps/s ours over PyTorch's, and each side's peak resident memory.

    cargo build --release --example train_step
    python3 scripts/bench_training.py --cpus 0,1 --rounds 3
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

SHAPES = {
    # name: (hidden, layers, heads, intermediate, batch, seq)
    "minilm-l6": (384, 6, 12, 1536, 32, 128),
    "bert-base": (768, 12, 12, 3072, 16, 128),
}

TORCH_STEP = r"""
import json, resource, sys, time, torch
from transformers import BertForSequenceClassification
folder, batch, seq, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
vocab = model.config.vocab_size
ids = (1000 + (torch.arange(batch * seq) * 7919) % (vocab - 1000)).view(batch, seq)
labels = torch.arange(batch) % 2
times = []
for step in range(steps):
    started = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step > 0:
        times.append((time.perf_counter() - started) * 1e3)
times.sort()
print(json.dumps({"ms_per_step": times[len(times) // 2], "steps": len(times),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}))
"""


def make_model(work: pathlib.Path, name: str) -> pathlib.Path:
    from transformers import BertConfig, BertForSequenceClassification

    folder = work / name
    if (folder / "model.safetensors").exists():
        return folder
    hidden, layers, heads, intermediate, _, _ = SHAPES[name]
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, vocab_size=30522, max_position_embeddings=512)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", default="0,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", default=str(ROOT / "target" / "bench-training"))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "examples" / "train_step"))
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    threads = len(args.cpus.split(","))
    ours_binary = pathlib.Path(args.binary)
    pin = ["taskset", "-c", args.cpus]
    print(f"| model | batch x seq | PyTorch ms/step | ours ms/step | ours / PyTorch (steps/s) | peak RSS PyTorch / ours (MB) |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        folder = make_model(work, name)
        batch, seq = SHAPES[name][4:]
        torch_runs, ours_runs = [], []
        for round_index in range(args.rounds):
            torch_cmd = pin + [sys.executable, "-c", TORCH_STEP, str(folder), str(batch), str(seq), str(args.steps), str(threads)]
            ours_cmd = pin + [str(ours_binary), str(folder), str(batch), str(seq), str(args.steps)]
            order = [(torch_cmd, torch_runs), (ours_cmd, ours_runs)]
            for command, runs in (order if round_index % 2 == 0 else order[::-1]):
                runs.append(run(command))
        torch_ms = statistics.median(r["ms_per_step"] for r in torch_runs)
        ours_ms = statistics.median(r["ms_per_step"] for r in ours_runs)
        torch_rss = max(r["peak_rss_mb"] for r in torch_runs)
        ours_rss = max(r["peak_rss_mb"] or 0 for r in ours_runs)
        print(f"| {name} | {batch} x {seq} | {torch_ms:.0f} | {ours_ms:.0f} | {torch_ms / ours_ms:.2f}x | {torch_rss:.0f} / {ours_rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
