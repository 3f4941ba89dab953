"""A random BERT-base-shape checkpoint (BertModel keys: config.json + model.safetensors, f32,
438 MB) for measuring memory: `python3 scripts/random_bert_base.py DIR`, then
`/usr/bin/time -v ferroformers bench -m DIR --batch 8 --seq 128 --runs 2 --dtype int8`.

The standard library only (no torch or numpy), so it runs anywhere; the values are one block of
Gaussian noise (std 0.02, as BERT initialises) repeated, and layer-norm scales are 1: enough for
timing and memory, not for accuracy.
"""
import array
import json
import os
import random
import struct
import sys

out = sys.argv[1]  # the model folder to write
os.makedirs(out, exist_ok=True)
H, L, I, V, P, T = 768, 12, 3072, 30522, 512, 2
shapes = {
    "embeddings.word_embeddings.weight": (V, H),
    "embeddings.position_embeddings.weight": (P, H),
    "embeddings.token_type_embeddings.weight": (T, H),
    "embeddings.LayerNorm.weight": (H,),
    "embeddings.LayerNorm.bias": (H,),
}
for l in range(L):
    p = f"encoder.layer.{l}."
    for n in ("query", "key", "value"):
        shapes[p + f"attention.self.{n}.weight"] = (H, H)
        shapes[p + f"attention.self.{n}.bias"] = (H,)
    shapes[p + "attention.output.dense.weight"] = (H, H)
    shapes[p + "attention.output.dense.bias"] = (H,)
    shapes[p + "attention.output.LayerNorm.weight"] = (H,)
    shapes[p + "attention.output.LayerNorm.bias"] = (H,)
    shapes[p + "intermediate.dense.weight"] = (I, H)
    shapes[p + "intermediate.dense.bias"] = (I,)
    shapes[p + "output.dense.weight"] = (H, I)
    shapes[p + "output.dense.bias"] = (H,)
    shapes[p + "output.LayerNorm.weight"] = (H,)
    shapes[p + "output.LayerNorm.bias"] = (H,)
shapes["pooler.dense.weight"] = (H, H)
shapes["pooler.dense.bias"] = (H,)

random.seed(0)
block = array.array("f", (random.gauss(0.0, 0.02) for _ in range(1 << 20))).tobytes()
header, offset = {}, 0
for name, shape in shapes.items():
    n = 1
    for d in shape:
        n *= d
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * n]}
    offset += 4 * n
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        while n > 0:
            k = min(n, len(block))
            if name.endswith("LayerNorm.weight"):
                f.write(array.array("f", [1.0] * (k // 4)).tobytes())
            else:
                f.write(block[:k])
            n -= k
config = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
    "hidden_size": H, "intermediate_size": I, "num_attention_heads": 12, "num_hidden_layers": L,
    "layer_norm_eps": 1e-12, "max_position_embeddings": P, "type_vocab_size": T, "vocab_size": V,
    "pad_token_id": 0, "position_embedding_type": "absolute", "initializer_range": 0.02,
}
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
