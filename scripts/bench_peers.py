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
