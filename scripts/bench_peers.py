"""ONNX Runtime and CTranslate2 for scripts/bench_compare.py.

Each peer gets the random-initialised model that the other engines run, turned into its own
format once per model (exported, quantized or converted), and is checked against PyTorch f32
on the benchmark's own input before any timing: a conversion that went wrong would otherwise
be timed as if it were the same model. `check` prints the cosine of every output row (a
token's hidden state, or its logits) to PyTorch's and passes when the lowest is at least
MIN_COSINE.

The peers are optional: `installed` tells whether one can be imported, and the benchmark
prints n/a for one that is not.
"""
import importlib.util
import pathlib
import sys
import time

import numpy as np

# Measured on these random-initialised models: ONNX Runtime and CTranslate2 int8 at 0.9992 to
# 0.9999 (lowest row of BERT-base, RoBERTa, DistilBERT, MiniLM, GPT-2), their f32 at 1.00000;
# a model without its last layer at 0.95 (GPT-2) to 0.98 (MiniLM), one layer's FFN zeroed at
# 0.36 to 0.98, positions off by two at 0.47 to 0.59. Errors inside attention go unseen: with
# random weights its scores are near-uniform (Q replaced by K still gives 1.00000).
MIN_COSINE = 0.995


def installed(module):
    return importlib.util.find_spec(module) is not None


def check(name, reference, output):
    """Whether `output` matches `reference` row by row; prints the cosines either way."""
    width = reference.shape[-1]
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, width)
    output = np.asarray(output, dtype=np.float64).reshape(-1, width)
    if reference.shape != output.shape:
        print(f"check {name}: shape {output.shape} where PyTorch has {reference.shape}: not timed")
        return False
    cosine = (reference * output).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(output, axis=1))
    # NaN compares false: a NaN or infinite output fails.
    passed = bool(np.all(cosine >= MIN_COSINE))
    print(f"check {name}: cosine to PyTorch f32 over {len(cosine)} rows: min {cosine.min():.5f}, "
          f"mean {cosine.mean():.5f} ({'ok' if passed else f'below {MIN_COSINE}: not timed'})")
    return passed


# ONNX Runtime.

def onnx_file(model, ids, folder, int8):
    """The model exported to ONNX (f32), or that export with int8 weights by quantize_dynamic
    (weights quantized at export, activations per tensor at run time); made once per folder."""
    import torch

    path = pathlib.Path(folder) / "model.onnx"
    if not path.exists():
        mask = torch.ones_like(ids)
        torch.onnx.export(
            model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
            opset_version=17, dynamo=False,
        )
    if not int8:
        return path
    quantized = path.with_name("model.int8.onnx")
    if not quantized.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
    return quantized


def onnx_forward(path, ids, threads):
    """A function that runs one forward pass in a new session and returns the first output
    (the last hidden state)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    return lambda: session.run(None, feeds)[0]


# CTranslate2.

def token(index):
    """The vocabulary entry that stands for token id `index` (see `IdVocabulary`)."""
    return f"<{index}>"


class IdVocabulary:
    """Stands in for the tokenizer that CTranslate2's converter reads the vocabulary and the
    special tokens from: the random-initialised models have no tokenizer, and every engine is
    fed token ids, so entry i is the made-up token(i)."""

    def __init__(self, config):
        self.size = config.vocab_size
        self.unk_token = token(0)
        # GPT-2's end of text: CTranslate2 looks it up at load.
        end = getattr(config, "eos_token_id", None) or 0
        self.bos_token = self.eos_token = token(end)

    def get_vocab(self):
        return {token(i): i for i in range(self.size)}


def ct2_supports(model):
    """Whether CTranslate2's converter takes `model`'s architecture (it has no ModernBERT); says
    so when it does not, and the case shows CTranslate2 as n/a."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS

    config = type(model.config).__name__
    if config in _MODEL_LOADERS:
        return True
    print(f"ctranslate2 has no converter for {config}: n/a", file=sys.stderr)
    return False


def ct2_model(folder, quantization):
    """The Transformers model in `folder` converted to CTranslate2 with weights in
    `quantization` ("int8" or "float32"); made once per folder."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            # The BERT and RoBERTa loaders assert that it is "absolute". Transformers 5
            # dropped the field from those configs (absolute was the only kind left); the
            # pinned 4.57 still sets it.
            if getattr(model.config, "position_embedding_type", None) is None:
                model.config.position_embedding_type = "absolute"
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            import transformers

            return IdVocabulary(transformers.AutoConfig.from_pretrained(model_name_or_path))

    out = pathlib.Path(folder) / f"ctranslate2-{quantization}"
    if not out.exists():
        Converter(str(folder)).convert(str(out), quantization=quantization)
    return out


def ct2_encoder_forward(path, ids, threads):
    """A function that runs one forward pass of a newly loaded int8 CTranslate2 encoder and
    returns the last hidden state."""
    import ctranslate2

    encoder = ctranslate2.Encoder(str(path), device="cpu", compute_type="int8",
                                  inter_threads=1, intra_threads=threads)
    rows = ids.tolist()
    return lambda: np.asarray(encoder.forward_batch(rows).last_hidden_state)


def ct2_generator(path, threads, compute_type):
    """A newly loaded CTranslate2 generator: one replica on `threads` threads."""
    import ctranslate2

    return ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type,
                                 inter_threads=1, intra_threads=threads)


def ct2_logits(generator, ids):
    """The logits at every prompt position: [batch, prompt, vocab]."""
    return np.asarray(generator.forward_batch(ids.tolist()))


def ct2_generate(generator, ids, new_tokens):
    """Greedy generation of exactly `new_tokens` after each prompt row, with the KV cache:
    (ms to the first new token, ms in all)."""
    prompts = [[token(i) for i in row] for row in ids.tolist()]
    first = []

    def on_token(step):
        # Called at each new token of each row: the first call ends the prefill. Returning
        # True would stop the row.
        if not first:
            first.append(time.perf_counter())
        return False

    start = time.perf_counter()
    results = generator.generate_batch(
        prompts, max_length=new_tokens, min_length=new_tokens, beam_size=1,
        include_prompt_in_result=False, callback=on_token,
    )
    total = time.perf_counter() - start
    made = {len(r.sequences_ids[0]) for r in results}
    # min_length holds the end token back, max_length stops: the same work as the others.
    if made != {new_tokens}:
        sys.exit(f"CTranslate2 made {made} new tokens per row, not {new_tokens}")
    return (first[0] - start) * 1e3, total * 1e3


# llama.cpp.
#
# Nothing of llama.cpp is copied here: every piece comes from the llama.cpp source tree given
# to bench_compare.py by --llama-cpp (the one vendored in the llama-cpp-python sdist, built as
# its docstring says): build/bin/llama-bench times it, its convert_hf_to_gguf.py (with its
# gguf-py) converts the random model, and for the check the sdist's own ctypes bindings
# (llama_cpp/llama_cpp.py, two folders above the tree) load its build/bin/libllama.so. The
# conversion and the check run in subprocesses of this file (see `main`), so that their
# imports, threads and memory end with them.

def llama_bench_binary(llama_cpp):
    return pathlib.Path(llama_cpp) / "build" / "bin" / "llama-bench"


# Starts the command given in its arguments, waits for it, and prints its ru_maxrss (KiB) as
# the last line of stderr. Linux carries the hiwater RSS of the process that execs a program
# into that program's ru_maxrss, so a child forked straight from this script (which holds
# PyTorch's model) would report at least this script's own peak; the few MB of this small
# interpreter (run with -S) are the most it adds.
MAXRSS = """import os, resource, sys
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
status = os.waitpid(pid, 0)[1]
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command, env=None):
    """The stdout of `command` (which must succeed) and its peak resident memory in bytes."""
    import subprocess

    done = subprocess.run([sys.executable, "-S", "-c", MAXRSS, *map(str, command)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    return done.stdout, int(done.stderr.splitlines()[-1]) * 1024


def gguf_file(llama_cpp, folder, outtype, pre):
    """The Transformers model in `folder` converted by llama.cpp's convert_hf_to_gguf.py to a
    GGUF file with weights in `outtype` ("f32", "bf16" or "q8_0"); made once per folder.
    `pre` is the pre-tokenizer name to write (see `convert`)."""
    import subprocess

    folder = pathlib.Path(folder)
    out = folder.with_name(f"{folder.name}-{outtype}.gguf")
    if not out.exists():
        partial = out.with_suffix(".partial")
        done = subprocess.run(
            [sys.executable, __file__, "convert", str(llama_cpp), pre, str(folder),
             "--outtype", outtype, "--outfile", str(partial)],
            capture_output=True, text=True,
        )
        if done.returncode:
            sys.exit(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{done.stderr[-4000:]}")
        partial.rename(out)
    return out


def llama_cpp_logits(llama_cpp, path, ids, threads):
    """llama.cpp's logits at every position of the one prompt row `ids` ([1, seq]) by the GGUF
    file at `path`: [1, seq, vocab]; and the GGUF's tensor count and elements, from gguf-py."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        out = pathlib.Path(work) / "logits.npy"
        done = subprocess.run(
            [sys.executable, __file__, "logits", str(llama_cpp), str(path), str(threads), str(out)],
            input=json.dumps(ids.view(-1).tolist()), capture_output=True, text=True,
        )
        if done.returncode:
            sys.exit(f"llama.cpp logits of {path} failed:\n{done.stderr[-4000:]}")
        tensors = json.loads(done.stdout.splitlines()[-1])
        return np.load(out)[None], tensors


def llama_bench(llama_cpp, path, threads, runs, prompt, gen, depth=0):
    """llama-bench on the GGUF file at `path`, one test: `prompt` tokens of prefill from an
    empty context (gen 0), or `gen` tokens decoded one by one after a context of `depth`
    tokens (prompt 0; llama-bench fills that context before its timer starts). Returns the
    median over its `runs` repetitions of tokens/s and of ms, and the process's peak RSS."""
    import json

    out, peak = run_measured([
        str(llama_bench_binary(llama_cpp)), "-m", str(path), "-t", str(threads), "-r", str(runs),
        "-p", str(prompt), "-n", str(gen), "-d", str(depth), "-o", "json",
    ])
    (test,) = json.loads(out)
    if (test["n_prompt"], test["n_gen"], test["n_threads"]) != (prompt, gen, threads):
        sys.exit(f"llama-bench ran {test['n_prompt']}/{test['n_gen']}/{test['n_threads']} "
                 f"(prompt/gen/threads), not {prompt}/{gen}/{threads}")
    return {
        "tokens_per_second": float(np.median(test["samples_ts"])),
        "ms": float(np.median(test["samples_ns"])) / 1e6,
        "model_type": test["model_type"],
        "peak_rss_bytes": peak,
    }


def convert(llama_cpp, pre, arguments):
    """Run llama.cpp's convert_hf_to_gguf.py with `arguments`, in this process.

    Measurement only: the random models carry a reduced BPE tokenizer (the qwen2 test
    fixture's, which the benchmark needs only to load: every engine is fed token ids), whose
    hash is none of the pre-tokenizers that the converter knows, so it refuses the model.
    Every converter class's get_vocab_base_pre is made to answer the model family's own
    pre-tokenizer name instead (`pre`: "qwen2" for Qwen2.5, "smollm" for SmolLM2, both known
    to this llama.cpp). The name sets only how llama.cpp would split text, which no timing
    here uses."""
    import runpy

    sys.path.insert(0, str(pathlib.Path(llama_cpp) / "gguf-py"))
    sys.path.insert(0, str(llama_cpp))
    import conversion.base as base

    for name in dir(base):
        cls = getattr(base, name)
        if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
            cls.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = ["convert_hf_to_gguf.py", *arguments]
    runpy.run_path(str(pathlib.Path(llama_cpp) / "convert_hf_to_gguf.py"), run_name="__main__")


def logits(llama_cpp, path, threads, out):
    """Save llama.cpp's logits at every position of the prompt read from stdin (JSON token
    ids) to `out` (.npy, [seq, vocab]); print the GGUF's tensor count and elements (JSON)."""
    import ctypes
    import json
    import os
    import types

    llama_cpp = pathlib.Path(llama_cpp).resolve()
    ids = json.load(sys.stdin)
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    from gguf import GGUFReader

    tensors = GGUFReader(path).tensors
    # The sdist's low-level bindings only: its package __init__ would import the high-level
    # API and its dependencies (diskcache and others) too.
    os.environ["LLAMA_CPP_LIB_PATH"] = str(llama_cpp / "build" / "bin")
    package = types.ModuleType("llama_cpp")
    package.__path__ = [str(llama_cpp.parent.parent / "llama_cpp")]
    sys.modules["llama_cpp"] = package
    import llama_cpp.llama_cpp as ll

    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(path).encode(), ll.llama_model_default_params())
    params = ll.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = len(ids)
    params.n_threads = params.n_threads_batch = int(threads)
    context = ll.llama_init_from_model(model, params)
    vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    batch = ll.llama_batch_init(len(ids), 0, 1)
    batch.n_tokens = len(ids)
    for i, token in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    if ll.llama_decode(context, batch) != 0:
        sys.exit("llama_decode failed")
    values = ll.llama_get_logits(context)
    array = np.ctypeslib.as_array(ctypes.cast(values, ctypes.POINTER(ctypes.c_float)), shape=(len(ids), vocab))
    np.save(out, array.copy())
    ll.llama_batch_free(batch)
    ll.llama_free(context)
    ll.llama_model_free(model)
    print(json.dumps({"count": len(tensors), "elements": int(sum(int(t.n_elements) for t in tensors))}))


def main():
    """The subprocesses of the llama.cpp helpers: `convert LLAMA_CPP PRE ARGUMENTS...` and
    `logits LLAMA_CPP GGUF THREADS OUT.npy` (token ids on stdin)."""
    command, *arguments = sys.argv[1:]
    if command == "convert":
        convert(arguments[0], arguments[1], arguments[2:])
    elif command == "logits":
        logits(*arguments)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
