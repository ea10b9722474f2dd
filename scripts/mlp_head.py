"""A candidate of docs/MODELS.md that lost: a one-hidden-layer head on the frozen encoder.

Embeds the Hutto sentences and the UCI sentences once with all-MiniLM-L6-v2 (pooled and
L2-normalised, as the server pools), trains a 384 -> HIDDEN -> 3 ReLU head on Hutto's
training split (the same split, labels, class weights and validation part as
finetune.py), calibrates its temperature on the validation part, and prints one JSON
line: Hutto held-out 3-class accuracy and ECE, and UCI accuracy per set (read once, at
the end; never used to choose anything).

usage: python mlp_head.py MODEL_DIR HUTTO_DIR UCI_DIR   (in setup.sh's venv-train)
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from finetune import BATCH, LABELS, batches, ece, encoder, hutto, load, softmax, temperature

HIDDEN = 256
STEPS = 3000
LR = 1e-3
DROPOUT = 0.1


def embed(params, config, rows, tokenizer):
    forward = jax.jit(lambda ids, mask: encoder(params, config, ids, mask))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = np.zeros((len(rows), config["hidden_size"]), np.float32)
    at = 0
    for ids, mask, _ in batches(rows, tokenizer, order):
        h = np.asarray(forward(ids, mask))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        out[order[at : at + len(ids)]] = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
        at += len(ids)
    return out


def main(model_dir: str, hutto_dir: str, uci_dir: str) -> None:
    config, tokenizer, weights, prefix = load(model_dir)
    params = {k[len(prefix) :]: jnp.asarray(v) for k, v in weights.items() if k.startswith(prefix) and v.dtype == np.float32}
    data = hutto(hutto_dir)
    x = {split: embed(params, config, rows, tokenizer) for split, rows in data.items()}
    y = {split: np.array([g for _, g in rows]) for split, rows in data.items()}

    rng = jax.random.PRNGKey(17)
    k1, k2, rng = jax.random.split(rng, 3)
    head = {
        "w1": jax.random.normal(k1, (config["hidden_size"], HIDDEN)) * (2 / config["hidden_size"]) ** 0.5,
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, len(LABELS))) * (1 / HIDDEN) ** 0.5,
        "b2": jnp.zeros(len(LABELS)),
    }
    counts = np.bincount(y["train"], minlength=len(LABELS))
    class_weight = jnp.asarray(len(y["train"]) / (len(LABELS) * counts), jnp.float32)

    def logits(p, inputs, key=None):
        h = jax.nn.relu(inputs @ p["w1"] + p["b1"])
        if key is not None:
            h = h * jax.random.bernoulli(key, 1 - DROPOUT, h.shape) / (1 - DROPOUT)
        return h @ p["w2"] + p["b2"]

    def loss(p, inputs, gold, key):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits(p, inputs, key)), gold[:, None], 1)[:, 0]
        w = class_weight[gold]
        return (nll * w).sum() / w.sum()

    optimiser = optax.adamw(optax.cosine_decay_schedule(LR, STEPS), weight_decay=1e-4)
    state = optimiser.init(head)

    @jax.jit
    def step(p, s, inputs, gold, key):
        grads = jax.grad(loss)(p, inputs, gold, key)
        updates, s = optimiser.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    order = np.random.default_rng(17)
    for _ in range(STEPS):
        pick = order.integers(0, len(y["train"]), BATCH * 4)
        rng, key = jax.random.split(rng)
        head, state = step(head, state, x["train"][pick], y["train"][pick], key)

    t = temperature(np.asarray(logits(head, x["validation"])), y["validation"])
    probs = softmax(np.asarray(logits(head, x["heldout"])) / t)
    report = {
        "candidate": f"mlp head {HIDDEN}",
        "temperature": t,
        "hutto_heldout_accuracy": float((probs.argmax(1) == y["heldout"]).mean()),
        "hutto_heldout_ece": ece(probs, y["heldout"]),
    }
    for name in ("amazon", "imdb", "yelp"):
        with open(os.path.join(uci_dir, f"{name}.json")) as f:
            rows = [(r["text"], 2 if r["class"] == 1 else 0) for r in json.load(f) if r.get("class") is not None]
        p = softmax(np.asarray(logits(head, embed(params, config, rows, tokenizer))))
        decided = np.where(p[:, 2] >= p[:, 0], 2, 0)
        report[f"uci_{name}"] = float((decided == np.array([g for _, g in rows])).mean())
    report["uci_mean"] = float(np.mean([report[f"uci_{n}"] for n in ("amazon", "imdb", "yelp")]))
    print(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
