#!/usr/bin/env python3
"""Write examples/data/chase-{train,test,pairs}.jsonl: who chased whom, which word order decides.

"The dog chased the mouse" is `expected` (the bigger animal acts on the smaller one); "the
mouse chased the dog" and "the dog was chased by the mouse" are `surprising`. The same words
make both labels, and the passive voice reverses the order, so a sentence embedding, close to
the mean of what its words mean, leaves a linear model on frozen embeddings little to go on;
fine-tuning the encoder can learn who acts. The test set holds a quarter of the (pair of
animals, verb) combinations, which the training set never shows, in both directions and
voices. `tests/training_learns.rs` fine-tunes all-MiniLM-L6-v2 on it and compares it with
logistic regression on its frozen embeddings. chase-pairs.jsonl pairs each active
sentence of the training set with its passive form (`anchor`/`positive`), to train sentence
embeddings.

    python3 scripts/make_chase_data.py
"""
import itertools
import json
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "data"

# From smallest to biggest.
ANIMALS = ["ant", "mouse", "cat", "dog", "wolf", "horse", "bear", "elephant"]
ACTIVE = ["chased", "bit", "scared", "followed"]
PASSIVE = ["was chased by", "was bitten by", "was scared by", "was followed by"]


def sentence(actor, target, verb, passive):
    """The sentence where `actor` acts on `target`."""
    if passive:
        text = f"The {ANIMALS[target]} {PASSIVE[verb]} the {ANIMALS[actor]}."
    else:
        text = f"The {ANIMALS[actor]} {ACTIVE[verb]} the {ANIMALS[target]}."
    return {"text": text, "label": "expected" if actor > target else "surprising"}


def main():
    rng = random.Random(2028)
    # Every (pair of animals, verb); a quarter of them are held out for the test set, in
    # both directions and both voices.
    combos = [(pair, verb) for pair in itertools.combinations(range(len(ANIMALS)), 2)
              for verb in range(len(ACTIVE))]
    rng.shuffle(combos)
    held_out = len(combos) // 4
    splits = {"test": combos[:held_out], "train": combos[held_out:]}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, chosen in splits.items():
        rows = [sentence(actor, target, verb, passive)
                for (a, b), verb in chosen
                for actor, target in ((a, b), (b, a))
                for passive in (False, True)]
        rng.shuffle(rows)
        (OUT / f"chase-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Paraphrase pairs for sentence embeddings (MultipleNegativesRankingLoss): each active
    # sentence of the training combinations with its passive form.
    pairs = [{"anchor": sentence(actor, target, verb, False)["text"],
              "positive": sentence(actor, target, verb, True)["text"]}
             for (a, b), verb in splits["train"] for actor, target in ((a, b), (b, a))]
    rng.shuffle(pairs)
    (OUT / "chase-pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))


if __name__ == "__main__":
    main()
