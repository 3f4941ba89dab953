"""Generation load benchmark (issue 18): concurrent greedy streams over `/v1/completions`
against one stream at a time, on a running `ferroformers serve --task generate`.

    python3 scripts/bench_generation_serve.py --url http://127.0.0.1:8391 --streams 8 --tokens 128

Each of the `--streams` prompts is first streamed alone (one after the other: the single-stream
rate), then all at once; the script reports both rates, their ratio, the errors, and whether
each concurrent stream's text equals its solo run's (greedy: it must). Standard library only.
"""
import argparse
import json
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "The quick brown fox", "Once upon a time", "A fox jumps over", "Hello there",
    "The lazy dog", "Zebras run", "In the beginning", "It was a dark night",
    "Far away", "Under the sea", "On a hill", "The end of the road",
    "Rain again", "Quietly", "Seven seas", "A long story",
]


def completion_choices(url, body):
    """POST a streamed completion `body` to `url`/v1/completions; yield each event's choices
    as they arrive, until `[DONE]`. An error event raises."""
    request = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"])
            yield from event.get("choices", [])


def run_concurrently(calls):
    """Run every call on a thread of its own, all at once. Returns each call's result (None
    where it raised), the failures (`stream i: error`; the benchmarks count every one), and
    the time they were started at (`time.perf_counter`)."""
    results, errors = [None] * len(calls), []

    def run(i):
        try:
            results[i] = calls[i]()
        except Exception as error:  # reported by the caller
            errors.append(f"stream {i}: {error!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors, start


def stream(url, prompt, tokens):
    """Stream one completion; returns (text, chunks, finish_reason, seconds)."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    text, chunks, finish = [], 0, None
    for choice in completion_choices(url, body):
        chunks += 1
        text.append(choice.get("text", ""))
        finish = choice.get("finish_reason") or finish
    return "".join(text), chunks, finish, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8391")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    prompts = PROMPTS[: args.streams]
    stream(args.url, "warm up", 4)

    solo = []
    for prompt in prompts:
        solo.append(stream(args.url, prompt, args.tokens))
    solo_seconds = sum(s[3] for s in solo)
    solo_rate = args.tokens * len(prompts) / solo_seconds

    results, errors, start = run_concurrently(
        [lambda prompt=prompt: stream(args.url, prompt, args.tokens) for prompt in prompts])
    wall = time.perf_counter() - start
    rate = args.tokens * len(prompts) / wall
    same = [r is not None and r[0] == s[0] for r, s in zip(results, solo)]
    finishes = [r[2] if r else None for r in results]
    print(json.dumps({
        "streams": len(prompts), "tokens_per_stream": args.tokens,
        "solo_tokens_per_second": round(solo_rate, 2),
        "concurrent_tokens_per_second": round(rate, 2),
        "speedup": round(rate / solo_rate, 2),
        "concurrent_wall_seconds": round(wall, 2),
        "errors": errors, "finish_reasons": finishes,
        "identical_to_solo": same,
    }, indent=1))
    ok = not errors and all(same) and all(f == "length" for f in finishes)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
