"""A random GPT-2 small (124M: 12 layers, 768 wide, 1024 positions, 50257 tokens) for the
generation load benchmark: `python3 scripts/random_gpt2.py DIR` (needs torch and transformers).

The Hub is not needed: the tokenizer is the tiny GPT-2 fixture's (tests/fixtures/gpt2/lm-head),
widened to 50257 ids by added tokens `<|tN|>` (N from 857), so that every id the model can
choose decodes to text and the output of two runs can be compared. No end token: every
sequence runs to its max_tokens. Random weights (transformers' init, std 0.02): enough for
timing, not for text.
"""
import json
import pathlib
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None)).eval()
model.save_pretrained(out, safe_serialization=True)
(out / "generation_config.json").write_text(json.dumps({"do_sample": False}))

fixture = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/gpt2/lm-head"
tokenizer = json.loads((fixture / "tokenizer.json").read_text())
first = max(token["id"] for token in tokenizer["added_tokens"]) + 1
for id in range(first, model.config.vocab_size):
    tokenizer["added_tokens"].append({
        "id": id, "content": f"<|t{id}|>", "single_word": False, "lstrip": False,
        "rstrip": False, "normalized": False, "special": False,
    })
(out / "tokenizer.json").write_text(json.dumps(tokenizer))
config = json.loads((fixture / "tokenizer_config.json").read_text())
config["model_max_length"] = model.config.n_positions
(out / "tokenizer_config.json").write_text(json.dumps(config))
print(f"random GPT-2 small in {out}")
