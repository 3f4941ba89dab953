#!/usr/bin/env python3
"""The official `openai` Python client against running `ferroformers serve` servers, unchanged.

Needs `openai` from PyPI (checked with openai==3.51.0: `pip install openai==3.51.0`).

    scripts/openai_client_check.py --embed-url http://127.0.0.1:PORT --generate-url http://...

The embeddings server serves a sentence-transformers model; the generation servers a GPT-2 with
a chat template and a Llama-style model (each checked the same way). Each check compares values: embeddings with TEI's /embed of the same server
(within 1e-5), streamed text with the whole answer, usage with the token counts, the client's
greedy answer with the raw HTTP answer to the same request, and the error the client raises
with the server's status and OpenAI body. Prints one line per check; exits 1 on any mismatch.
"""

import argparse
import base64
import json
import struct
import sys
import urllib.request

import openai

TOLERANCE = 1e-5
TEXTS = ["The cat sat on the mat.", "naïve café", "hello"]
FAILURES = []


def check(name, holds, detail=""):
    print(f"{'ok  ' if holds else 'FAIL'} {name}" + (f": {detail}" if detail and not holds else ""))
    if not holds:
        FAILURES.append(name)


def post(url, body):
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def close(actual, expected):
    return len(actual) == len(expected) and all(
        abs(a - e) <= TOLERANCE for a, e in zip(actual, expected)
    )


def check_embeddings(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    expected = post(f"{url}/embed", {"inputs": TEXTS})
    tokens = sum(len(t) for t in post(f"{url}/tokenize", {"inputs": TEXTS}))
    # The client's default asks for base64 and decodes it itself; then floats; then base64
    # decoded here.
    for name, kwargs in [("default", {}), ("float", {"encoding_format": "float"})]:
        answer = client.embeddings.create(model="any", input=TEXTS, **kwargs)
        vectors = [list(item.embedding) for item in answer.data]
        check(
            f"embeddings ({name}) equal /embed within {TOLERANCE}",
            all(close(v, e) for v, e in zip(vectors, expected)) and len(vectors) == len(TEXTS),
        )
        check(
            f"embeddings ({name}) usage counts the tokens",
            answer.usage.prompt_tokens == answer.usage.total_tokens == tokens,
            f"{answer.usage} against {tokens}",
        )
    answer = client.embeddings.create(model="any", input=TEXTS, encoding_format="base64")
    vectors = []
    for item in answer.data:
        raw = base64.b64decode(item.embedding)
        vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    check(
        f"embeddings (base64) equal /embed within {TOLERANCE}",
        all(close(v, e) for v, e in zip(vectors, expected)) and len(vectors) == len(TEXTS),
    )


def streamed_texts(chunks, chat):
    """Each choice's concatenated text, finish reason and the usage chunk of a stream."""
    texts, reasons, usage, roles = {}, {}, None, {}
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if chat:
                if choice.delta.role == "assistant":
                    roles[choice.index] = roles.get(choice.index, 0) + 1
                piece = choice.delta.content or ""
            else:
                piece = choice.text
            texts[choice.index] = texts.get(choice.index, "") + piece
            if choice.finish_reason is not None:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, usage, roles


def counts(usage):
    """The three counts, from the client's usage object or the raw JSON."""
    if isinstance(usage, dict):
        return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def usage_consistent(usage):
    return (
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        and usage.prompt_tokens > 0
        and usage.completion_tokens > 0
    )


def check_generation(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

    # Completions: the client's greedy answer is the raw HTTP one; streamed, the same text.
    request = {"model": "any", "prompt": ["Hello world", "The sky"], "max_tokens": 20,
               "temperature": 0, "logprobs": 2}
    raw = post(f"{url}/v1/completions", request)
    answer = client.completions.create(**request)
    check(
        "completions: the client's answer is the raw HTTP answer",
        [(c.index, c.text, c.finish_reason) for c in answer.choices]
        == [(c["index"], c["text"], c["finish_reason"]) for c in raw["choices"]]
        and counts(answer.usage) == counts(raw["usage"]),
        f"{answer.choices} against {raw['choices']}",
    )
    check(
        "completions: logprobs parse and equal the raw ones",
        [c.logprobs.token_logprobs for c in answer.choices]
        == [c["logprobs"]["token_logprobs"] for c in raw["choices"]],
    )
    check("completions: usage is consistent", usage_consistent(answer.usage), str(answer.usage))
    chunks = list(client.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    texts, reasons, usage, _ = streamed_texts(chunks, chat=False)
    check(
        "completions: streamed pieces concatenate to the whole answer",
        texts == {c.index: c.text for c in answer.choices}
        and reasons == {c.index: c.finish_reason for c in answer.choices},
        f"{texts} against {answer.choices}",
    )
    check(
        "completions: the usage chunk equals the whole answer's usage",
        usage is not None and counts(usage) == counts(answer.usage),
    )

    # Chat, greedy, with logprobs.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    request = {"model": "any", "messages": messages, "max_tokens": 30, "temperature": 0,
               "logprobs": True, "top_logprobs": 2}
    raw = post(f"{url}/v1/chat/completions", request)
    answer = client.chat.completions.create(**request)
    choice = answer.choices[0]
    check(
        "chat: the client's answer is the raw HTTP answer",
        choice.message.role == "assistant"
        and choice.message.content == raw["choices"][0]["message"]["content"]
        and choice.finish_reason == raw["choices"][0]["finish_reason"]
        and counts(answer.usage) == counts(raw["usage"]),
        f"{choice.message} against {raw['choices'][0]['message']}",
    )
    check(
        "chat: logprobs parse and equal the raw ones",
        [(t.token, t.logprob, t.bytes, [(a.token, a.logprob) for a in t.top_logprobs])
         for t in choice.logprobs.content]
        == [(t["token"], t["logprob"], t["bytes"],
             [(a["token"], a["logprob"]) for a in t["top_logprobs"]])
            for t in raw["choices"][0]["logprobs"]["content"]],
    )
    check("chat: usage is consistent", usage_consistent(answer.usage), str(answer.usage))
    chunks = list(client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    texts, reasons, usage, roles = streamed_texts(chunks, chat=True)
    check(
        "chat: streamed deltas concatenate to the whole message",
        texts == {0: choice.message.content} and reasons == {0: choice.finish_reason}
        and roles == {0: 1},
        f"{texts} against {choice.message.content!r}",
    )
    check(
        "chat: the usage chunk equals the whole answer's usage",
        usage is not None and counts(usage) == counts(answer.usage),
    )

    # Two seeded choices, streamed and not; a stop string.
    request = {"model": "any", "messages": messages, "max_tokens": 15, "temperature": 0.9,
               "n": 2, "seed": 5}
    answer = client.chat.completions.create(**request)
    again = client.chat.completions.create(**request)
    texts, reasons, _, _ = streamed_texts(
        list(client.chat.completions.create(**request, stream=True)), chat=True)
    check(
        "chat: n=2 with a seed repeats, streamed or not",
        [c.message.content for c in answer.choices] == [c.message.content for c in again.choices]
        and texts == {c.index: c.message.content for c in answer.choices},
    )
    reply = client.chat.completions.create(
        model="any", messages=messages, max_tokens=30, temperature=0).choices[0].message.content
    stop = reply[len(reply) // 2:][:2]
    stopped = client.chat.completions.create(
        model="any", messages=messages, max_tokens=30, temperature=0, stop=[stop])
    check(
        "chat: the text ends before the stop string",
        stopped.choices[0].message.content == reply[:reply.find(stop)]
        and stopped.choices[0].finish_reason == "stop",
        f"{stopped.choices[0].message.content!r}, stop {stop!r}, reply {reply!r}",
    )

    # A refused field: the client raises with the server's status and OpenAI's body.
    try:
        client.chat.completions.create(model="any", messages=messages, n=0)
        check("chat: n=0 is refused", False, "no error raised")
    except openai.UnprocessableEntityError as error:
        check(
            "chat: n=0 is refused with 422 naming the field",
            error.status_code == 422 and error.body.get("param") == "n",
            str(error.body),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-url", required=True, help="an embeddings server")
    parser.add_argument("--generate-url", required=True, action="append",
                        help="a generation model with a chat template (repeat for more)")
    args = parser.parse_args()
    print(f"openai {openai.__version__}")
    check_embeddings(args.embed_url.rstrip("/"))
    for url in args.generate_url:
        check_generation(url.rstrip("/"))
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
