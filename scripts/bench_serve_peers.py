"""Serving against the servers a user would otherwise deploy (issue 27): `ferroformers serve`
against text-embeddings-inference (TEI) on all-MiniLM-L6-v2 under load from `wrk`, and against
llama.cpp's `llama-server` on a decoder with 8 concurrent streams.

    python3 scripts/bench_serve_peers.py embed --tei PATH/text-embeddings-router \
        --ort-dylib PATH/libonnxruntime.so.1.x --rounds 3 --seconds 15
    python3 scripts/bench_serve_peers.py generate --model DIR --gguf FILE.gguf \
        --llama-server PATH/llama-server --rounds 3

## embed

Workloads (each a fixed request body, sent by wrk's keep-alive connections as fast as answers
come back):
- short: 32 connections, one ~16-token sentence per request;
- large: 4 connections, 32 sentences of 8-100 words per request (seeded, so every run sends
  the same ones).

Servers: ours in each `--dtypes` (f32, bf16, int8) and TEI in f32, all started once, pinned to
`--cpus` with taskset, as is wrk (2 threads), and run one at a time in alternating rounds (the
order turns each round). Before timing, each of ours answers the large body, and the cosine of
every row to TEI's is reported (f32 must be >= 0.99999; the other dtypes' drift is stated). The
report is one row per server and workload: medians over rounds of req/s, p50 and p99,
errors (socket errors and non-2xx), the server's CPU milliseconds per request (its user +
system time over the run, from /proc), and the medians of the per-round ratios to TEI of
req/s and of p99 (the goals: more requests, a p99 no longer than TEI's).

Without `--tei` only ours run. TEI is not on any registry; README.md's performance section says
how it was built (its ORT backend, as in TEI's CPU image, with `ort`'s `load-dynamic` feature
and the libonnxruntime.so of the `onnxruntime` wheel). TEI's ORT backend reads
`onnx/model.onnx`: the script exports it from the model with PyTorch (torch, transformers and
onnx in this Python) into `--work-dir`, once.

## generate
`--model` (a safetensors folder, served by ours with `--dtype`, int8 by default) against
`--gguf` (the same weights converted by llama.cpp's convert_hf_to_gguf.py, q8_0 for int8),
served by `llama-server --parallel 8 --cont-batching` on the same CPUs with as many threads.
Each round sends `--streams` concurrent streamed `/v1/completions` of `--tokens` tokens at
temperature 0 (llama-server with `ignore_eos`, so that both run to the length) to one server,
then the other, the order turning each round. Reported per server: aggregate tokens/s (all
streams' tokens over the wall time from the first request to the last token), time to first
token p50/p99 and inter-token latency p50/p99 over all streams, and errors. Standard library
only, apart from wrk for `embed`.
"""
import argparse
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_generation_serve import completion_choices, run_concurrently  # noqa: E402
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHORT = "The quick brown fox jumps over the lazy dog beside the quiet river bank."
WORDS = (
    "the quick brown fox jumps over a lazy dog near river bank while children play music "
    "under bright summer sky and old men talk about weather market prices football games "
    "history books science news travel cooking gardens mountains ocean city train station"
).split()
# Lowest cosine of our f32 rows to TEI's: both are f32 forwards of the same weights.
F32_MIN_COSINE = 0.99999


def large_inputs():
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 100))) for _ in range(32)]


WORKLOADS = {
    "short": {"connections": 32, "inputs": SHORT},
    "large": {"connections": 4, "inputs": large_inputs()},
}


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def wait_healthy(url, process, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server behind {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} was not healthy within {seconds} s")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, command, env, cpus, log):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [c.replace("{port}", str(self.port)) for c in command]
        self.process = subprocess.Popen(
            ["taskset", "-c", cpus, *command], env={**os.environ, **env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(self.url, self.process)

    def cpu_seconds(self):
        """User + system time of the server so far (its threads included)."""
        fields = pathlib.Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def tei_model_dir(model_dir, work_dir):
    """A copy of the model folder with `onnx/model.onnx` (input_ids, attention_mask,
    token_type_ids -> last_hidden_state, dynamic batch and length), made once."""
    folder = work_dir / "tei-model"
    onnx = folder / "onnx" / "model.onnx"
    if onnx.exists():
        return folder
    import torch
    import transformers

    shutil.copytree(model_dir, folder, dirs_exist_ok=True, symlinks=False)
    (folder / "onnx").mkdir(exist_ok=True)
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names + ["last_hidden_state"]}
    torch.onnx.export(
        model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(onnx),
        input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
        opset_version=17, dynamo=False)
    return folder


def wrk_script(work_dir, name, inputs):
    path = work_dir / f"{name}.lua"
    body = json.dumps({"inputs": inputs})
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n")
    return path


def milliseconds(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url, script, connections, seconds, cpus):
    out = subprocess.run(
        # wrk's default 2 s timeout would count a slow server's large requests (TEI's p99 was
        # 1.93 s on 2 AVX2 cores) as socket errors instead of latencies.
        ["taskset", "-c", cpus, "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
         "--latency",
         "-s", str(script), url + "/embed"], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = milliseconds(re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1))
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = (sum(map(int, errors.groups())) if errors else 0) + (
        int(non_2xx.group(1)) if non_2xx else 0)
    return result


def cosines(a, b):
    return [sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))
            for u, v in zip(a, b)]


def our_binary(args):
    if args.binary:
        return args.binary
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferroformers-cli", "--bin",
                    "ferroformers"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "release" / "ferroformers")


def embed(args, work_dir):
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    model_dir = pathlib.Path(subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_minilm.py")], capture_output=True,
        text=True, check=True).stdout.strip().splitlines()[-1])
    binary = our_binary(args)
    log = open(work_dir / "servers.log", "w")
    servers = []
    try:
        for dtype in args.dtypes.split(","):
            servers.append(Server(
                f"ferroformers {dtype}",
                [binary, "serve", "-m", MODEL, "--dtype", dtype, "--port", "{port}"],
                {"HF_HUB_OFFLINE": "1"}, args.cpus, log))
        tei = None
        if args.tei:
            env = {"HF_HUB_OFFLINE": "1"}
            if args.ort_dylib:
                env["ORT_DYLIB_PATH"] = args.ort_dylib
            tei = Server("TEI f32", [args.tei, "--model-id", str(tei_model_dir(model_dir, work_dir)),
                                     "--port", "{port}", "--dtype", "float32"], env, args.cpus, log)
            servers.append(tei)
        reference = post((tei or servers[0]).url + "/embed", {"inputs": WORKLOADS["large"]["inputs"]})
        for server in servers:
            if server is tei:
                continue
            rows = post(server.url + "/embed", {"inputs": WORKLOADS["large"]["inputs"]})
            low = min(cosines(rows, reference))
            print(f"check {server.name}: cosine to {'TEI' if tei else servers[0].name} over "
                  f"{len(rows)} rows: min {low:.7f}")
            if server.name.endswith("f32") and not low >= F32_MIN_COSINE:
                sys.exit(f"{server.name} differs from the reference: not timed")
        scripts = {name: wrk_script(work_dir, name, w["inputs"]) for name, w in WORKLOADS.items()}
        workloads = args.workloads.split(",")
        results = {(s.name, w): [] for s in servers for w in workloads}
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for workload in workloads:
                for server in order:
                    connections = WORKLOADS[workload]["connections"]
                    run_wrk(server.url, scripts[workload], connections, 2, args.cpus)
                    before = server.cpu_seconds()
                    result = run_wrk(server.url, scripts[workload], connections, args.seconds, args.cpus)
                    result["cpu_ms"] = 1000 * (server.cpu_seconds() - before) / max(result["requests"], 1)
                    results[(server.name, workload)].append(result)
                    print(f"round {round_index + 1} {workload} {server.name}: {json.dumps(result)}",
                          flush=True)
    finally:
        for server in servers:
            server.stop()
    print()
    print(f"{args.rounds} rounds of {args.seconds} s, server and wrk pinned to CPUs {args.cpus}")
    print()
    print("| workload | server | req/s | p50 ms | p99 ms | errors | server CPU ms/request "
          "| req/s vs TEI f32 | p99 vs TEI f32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workload in workloads:
        for server in servers:
            runs = results[(server.name, workload)]
            rps_ratio = p99_ratio = "n/a"
            if tei is not None and server is not tei:
                # Per round, against TEI's run of the same round; the goals are a
                # req/s ratio (higher is better) and a p99 no longer than TEI's (lower).
                rps_ratio = median_of_ratios(runs, results[(tei.name, workload)], "rps")
                p99_ratio = median_of_ratios(runs, results[(tei.name, workload)], "p99_ms")
            median = lambda key: statistics.median(r[key] for r in runs)
            print(f"| {workload} ({WORKLOADS[workload]['connections']} connections) | {server.name} "
                  f"| {median('rps'):.1f} | {median('p50_ms'):.1f} | {median('p99_ms'):.1f} "
                  f"| {sum(r['errors'] for r in runs)} "
                  f"| {median('cpu_ms'):.2f} | {rps_ratio} | {p99_ratio} |")


def median_of_ratios(runs, peer_runs, key):
    """The median of the per-round ratios `runs[i][key] / peer_runs[i][key]`, and the rounds'.
    A round in which the peer answered nothing (a run shorter than one large request) has no
    ratio."""
    ratios = [r[key] / p[key] for r, p in zip(runs, peer_runs) if p[key] > 0] or [math.nan]
    return f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})"


def stream_completion(url, prompt, tokens, extra):
    """Stream one completion: (arrival time of each token's chunk, finish reason)."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, **extra}
    arrivals, finish = [], None
    for choice in completion_choices(url, body):
        # A chunk per token; llama-server's last one carries only the finish reason, and its
        # tokens that are control tokens in the GGUF have no text.
        if choice.get("text") or choice.get("finish_reason") is None:
            arrivals.append(time.perf_counter())
        finish = choice.get("finish_reason") or finish
    return arrivals, finish


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def concurrent_streams(server, prompts, tokens, extra):
    """All prompts streamed at once; tokens/s, TTFT and ITL in ms, errors."""
    results, errors, start = run_concurrently(
        [lambda prompt=prompt: stream_completion(server.url, prompt, tokens, extra)
         for prompt in prompts])
    done = [r for r in results if r is not None and r[0]]
    last = max((r[0][-1] for r in done), default=start)
    count = sum(len(r[0]) for r in done)
    ttft = [1000 * (r[0][0] - start) for r in done]
    itl = [1000 * (b - a) for r in done for a, b in zip(r[0], r[0][1:])]
    errors += [f"stream finished by {r[1]} after {len(r[0])} tokens" for r in done
               if r[1] != "length" or len(r[0]) != tokens]
    return {"tokens_per_s": count / (last - start), "tokens": count,
            "ttft_p50_ms": percentile(ttft, 0.5), "ttft_p99_ms": percentile(ttft, 0.99),
            "itl_p50_ms": percentile(itl, 0.5), "itl_p99_ms": percentile(itl, 0.99),
            "errors": len(errors) + len(prompts) - len(done), "error_detail": errors[:3]}


PROMPTS = [
    "The quick brown fox jumps over the lazy dog and then",
    "Once upon a time in a small village by the sea there",
    "In the beginning the committee decided that the budget",
    "It was a dark and stormy night when the train finally",
    "Far away beyond the mountains lived an old clockmaker who",
    "Under the sea the divers found a ship that had been",
    "On a hill above the town stood a tower where the",
    "The end of the road was marked by a sign that said",
]


def generate(args, work_dir):
    binary = our_binary(args)
    log = open(work_dir / "generation-servers.log", "w")
    threads = str(len(args.cpus.split(",")))
    servers = []
    try:
        ours = Server(f"ferroformers {args.dtype}",
                      [binary, "serve", "-m", args.model, "--task", "generate", "--dtype",
                       args.dtype, "--port", "{port}"], {"HF_HUB_OFFLINE": "1"}, args.cpus, log)
        servers.append(ours)
        llama = Server(f"llama-server {pathlib.Path(args.gguf).stem}",
                       [args.llama_server, "-m", args.gguf, "--port", "{port}", "--host",
                        "127.0.0.1", "-t", threads, "-tb", threads, "--parallel",
                        str(args.streams), "--cont-batching", "-c",
                        str(args.streams * (args.tokens + 256))], {}, args.cpus, log)
        servers.append(llama)
        # llama-server would otherwise reuse a slot's cache for a prompt it saw before.
        extras = {ours.name: {}, llama.name: {"ignore_eos": True, "cache_prompt": False}}
        prompts = (PROMPTS * (args.streams // len(PROMPTS) + 1))[: args.streams]
        for server in servers:
            concurrent_streams(server, ["Warm up " + p for p in prompts], 8, extras[server.name])
        results = {server.name: [] for server in servers}
        for round_index in range(args.rounds):
            # New prompts each round, the same for both servers.
            numbered = [f"Round {round_index + 1}. {prompt}" for prompt in prompts]
            for server in (servers if round_index % 2 == 0 else servers[::-1]):
                result = concurrent_streams(server, numbered, args.tokens, extras[server.name])
                results[server.name].append(result)
                print(f"round {round_index + 1} {server.name}: {json.dumps(result)}", flush=True)
    finally:
        for server in servers:
            server.stop()
    print()
    print(f"{args.rounds} rounds, {args.streams} concurrent streams of {args.tokens} tokens, "
          f"servers pinned to CPUs {args.cpus} ({threads} threads each)")
    print()
    print("| server | tokens/s (median) | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors | tokens/s vs llama-server |")
    print("|---|---|---|---|---|---|---|---|")
    for server in servers:
        runs = results[server.name]
        ratios = [r["tokens_per_s"] / l["tokens_per_s"] for r, l in zip(runs, results[llama.name])]
        ratio = "n/a" if server is llama else (
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
        median = lambda key: statistics.median(r[key] for r in runs)
        print(f"| {server.name} | {median('tokens_per_s'):.1f} | {median('ttft_p50_ms'):.0f} "
              f"| {median('ttft_p99_ms'):.0f} | {median('itl_p50_ms'):.1f} | {median('itl_p99_ms'):.1f} "
              f"| {sum(r['errors'] for r in runs)} | {ratio} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    embed_parser = commands.add_parser("embed", help="all-MiniLM-L6-v2 against TEI, under wrk")
    embed_parser.add_argument("--tei", help="text-embeddings-router built with the ort feature")
    embed_parser.add_argument("--ort-dylib", help="ORT_DYLIB_PATH for a TEI built with load-dynamic")
    embed_parser.add_argument("--dtypes", default="f32,bf16,int8")
    embed_parser.add_argument("--workloads", default="short,large")
    embed_parser.add_argument("--seconds", type=int, default=15)
    generate_parser = commands.add_parser("generate", help="a decoder against llama-server")
    generate_parser.add_argument("--model", required=True, help="the safetensors folder ours serves")
    generate_parser.add_argument("--gguf", required=True, help="the same weights as GGUF")
    generate_parser.add_argument("--llama-server", required=True)
    generate_parser.add_argument("--dtype", default="int8")
    generate_parser.add_argument("--streams", type=int, default=8)
    generate_parser.add_argument("--tokens", type=int, default=128)
    for sub in (embed_parser, generate_parser):
        sub.add_argument("--binary", help="our ferroformers binary (default: cargo build --release)")
        sub.add_argument("--rounds", type=int, default=3)
        sub.add_argument("--cpus", default="0,1")
        sub.add_argument("--work-dir", default=str(ROOT / "target" / "bench-serve-peers"))
    args = parser.parse_args()
    work_dir = pathlib.Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    {"embed": embed, "generate": generate}[args.command](args, work_dir)


if __name__ == "__main__":
    main()
