"""Fine-tune all-MiniLM-L6-v2 and its 3-class head on the Hutto sentences, offline, on CPU.

The result is served exactly as the linear-probe model is: the encoder is rebuilt by
build_encoder.py into the same fused int8 graph, and the head is the same
`softmax(W . normalize(masked_mean(last_hidden_state)) + b)`. Only the numbers change,
so the fine-tuned model runs at the same speed as the one it replaces.

What is trained, and on what:
  - every encoder weight except the word-embedding table (frozen: 30,522 rows of which
    Hutto's 15,000 sentences touch a small part), and the head, which starts from the
    committed linear-probe head;
  - on Hutto's training split (`fnv1a(text) % 5 != 0`, as `inference-server train` and
    `eval` split it), less a validation part (`fnv1a(text) % 5 == 1`) that picks the
    temperature. Labels: NEGATIVE at valence <= -1.5, POSITIVE at >= +1.5, NEUTRAL
    between (NEUTRAL_BAND in inference-server/src/data.rs);
  - cross-entropy with class weights inversely proportional to frequency, AdamW
    (learning rate LR for the encoder, HEAD_LR for the head, linear warm-up then decay).
The UCI sentences are never read here: they are the held-out test of docs/MODELS.md.

Temperature: the logits are divided by the T that minimises the validation split's
negative log-likelihood, folded into the head (W / T, b / T), so the served scores are
calibrated without any change to the server. The report gives the expected calibration
error before and after.

The run is deterministic on one machine (fixed seed, fixed order, XLA on CPU).

usage: python finetune.py MODEL_DIR HUTTO_DIR HEAD OUT_DIR
  MODEL_DIR  config.json, model.safetensors and tokenizer.json of all-MiniLM-L6-v2
  HUTTO_DIR  the four *_GroundTruth.txt files
  HEAD       the linear-probe head.safetensors the head starts from
  OUT_DIR    receives model.safetensors (every tensor of the input, the trained ones
             updated), head.safetensors and report.json
"""

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

EPOCHS = 3
BATCH = 32
LR = 5e-5
HEAD_LR = 1e-3
WARMUP = 0.06
WEIGHT_DECAY = 0.01
MAX_TOKENS = 128  # training only; the server encodes up to the model's 256
SEED = 17
LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
NEUTRAL_BAND = (-1.5, 1.5)
FROZEN = "embeddings.word_embeddings.weight"


def fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def label(valence: float) -> int:
    return 0 if valence <= NEUTRAL_BAND[0] else 2 if valence >= NEUTRAL_BAND[1] else 1


def hutto(directory: str) -> dict[str, list[tuple[str, int]]]:
    """Hutto sentences by split: train, validation and (never used here) held-out."""
    out = {"train": [], "validation": [], "heldout": []}
    for name in sorted(os.listdir(directory)):
        if not name.endswith("_GroundTruth.txt"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\r\n").split("\t", 2)
                if len(parts) < 3:
                    continue
                text, h = parts[2], fnv1a(parts[2])
                split = "heldout" if h % 5 == 0 else "validation" if h % 5 == 1 else "train"
                out[split].append((text, label(float(parts[1]))))
    return out


def encoder(p: dict, config: dict, ids, mask):
    """BERT's last_hidden_state, as build_encoder.py's numpy reference computes it."""
    heads, d = config["num_attention_heads"], config["hidden_size"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    b, s = ids.shape

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x, name):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    x = p[FROZEN][ids] + p["embeddings.position_embeddings.weight"][:s][None]
    x = norm(x + p["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for i in range(config["num_hidden_layers"]):
        q_ = f"encoder.layer.{i}."
        q, k, v = (linear(x, q_ + f"attention.self.{n}").reshape(b, s, heads, -1).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        probs = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads) + bias, axis=-1)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        h1 = norm(linear(attn, q_ + "attention.output.dense") + x, q_ + "attention.output.LayerNorm")
        up = jax.nn.gelu(linear(h1, q_ + "intermediate.dense"), approximate=False)
        x = norm(linear(up, q_ + "output.dense") + h1, q_ + "output.LayerNorm")
    return x


def logits(params: dict, frozen: dict, config: dict, ids, mask):
    """The served head: W . normalize(masked_mean(last_hidden_state)) + b."""
    hidden = encoder({**params["encoder"], **frozen}, config, ids, mask)
    pooled = (hidden * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled @ params["head"]["weight"].T + params["head"]["bias"]


def batches(rows, tokenizer, order):
    """Batches of BATCH rows in `order`, padded to a multiple of 8 tokens (few shapes to compile)."""
    for start in range(0, len(order), BATCH):
        chunk = [rows[i] for i in order[start : start + BATCH]]
        encoded = [e.ids[:MAX_TOKENS] for e in tokenizer.encode_batch([t for t, _ in chunk])]
        width = -(-max(len(e) for e in encoded) // 8) * 8
        ids = np.zeros((len(chunk), width), np.int32)
        mask = np.zeros((len(chunk), width), np.float32)
        for r, e in enumerate(encoded):
            ids[r, : len(e)], mask[r, : len(e)] = e, 1.0
        yield ids, mask, np.array([y for _, y in chunk], np.int32)


def predict(params, frozen, config, rows, tokenizer, forward):
    """Logits for rows, in length order (so padding stays short), returned in row order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = np.zeros((len(rows), len(LABELS)), np.float32)
    at = 0
    for ids, mask, _ in batches(rows, tokenizer, order):
        out[order[at : at + len(ids)]] = np.asarray(forward(params, ids, mask))
        at += len(ids)
    return out


def ece(probs: np.ndarray, gold: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top score, in `bins` equal-width bins."""
    top, right = probs.max(1), probs.argmax(1) == gold
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (top > lo) & (top <= hi)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - top[inside].mean())
    return float(total)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def temperature(z: np.ndarray, gold: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of softmax(z / T)."""
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    nll = [-np.log(softmax(z / t)[np.arange(len(gold)), gold] + 1e-12).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def load(model_dir: str) -> tuple[dict, Tokenizer, dict[str, np.ndarray], str]:
    """config.json, the tokenizer (no padding, no truncation), every tensor, and their names' prefix."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    return config, tokenizer, weights, "bert." if "bert." + FROZEN in weights else ""


def main(model_dir: str, hutto_dir: str, head_path: str, out_dir: str) -> None:
    started = time.time()
    config, tokenizer, weights, prefix = load(model_dir)
    tensors = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix) and not k.startswith(prefix + "pooler.") and v.dtype == np.float32}
    head = load_file(head_path)
    frozen = {FROZEN: jnp.asarray(tensors[FROZEN])}
    params = {
        "encoder": {k: jnp.asarray(v) for k, v in tensors.items() if k != FROZEN},
        "head": {"weight": jnp.asarray(head["weight"]), "bias": jnp.asarray(head["bias"])},
    }

    data = hutto(hutto_dir)
    train, validation = data["train"], data["validation"]
    counts = np.bincount([y for _, y in train], minlength=len(LABELS))
    class_weight = jnp.asarray(len(train) / (len(LABELS) * counts), jnp.float32)
    steps = EPOCHS * -(-len(train) // BATCH)
    warmup = int(steps * WARMUP)

    def schedule(peak: float) -> optax.Schedule:
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, steps - warmup)], [warmup])

    optimiser = optax.multi_transform(
        {"encoder": optax.adamw(schedule(LR), weight_decay=WEIGHT_DECAY), "head": optax.adamw(schedule(HEAD_LR), weight_decay=0.0)},
        {"encoder": jax.tree_util.tree_map(lambda _: "encoder", params["encoder"]), "head": jax.tree_util.tree_map(lambda _: "head", params["head"])},
    )
    state = optimiser.init(params)

    def loss(p, ids, mask, gold):
        z = logits(p, frozen, config, ids, mask)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(z), gold[:, None], 1)[:, 0]
        w = class_weight[gold]
        return (nll * w).sum() / w.sum()

    @jax.jit
    def step(p, s, ids, mask, gold):
        value, grads = jax.value_and_grad(loss)(p, ids, mask, gold)
        updates, s = optimiser.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    forward = jax.jit(lambda p, ids, mask: logits(p, frozen, config, ids, mask))
    gold_validation = np.array([y for _, y in validation])
    report = {"train_sentences": len(train), "validation_sentences": len(validation), "epochs": []}
    rng = np.random.default_rng(SEED)
    for epoch in range(EPOCHS):
        # Shuffle, then sort within windows of 50 batches by length: short padding, mixed batches.
        order = rng.permutation(len(train))
        window = BATCH * 50
        order = np.concatenate([sorted(order[i : i + window], key=lambda j: len(train[j][0])) for i in range(0, len(order), window)])
        batch_order = rng.permutation(-(-len(order) // BATCH))
        order = np.concatenate([order[b * BATCH : (b + 1) * BATCH] for b in batch_order])
        losses = []
        for ids, mask, gold in batches(train, tokenizer, order):
            params, state, value = step(params, state, ids, mask, gold)
            losses.append(float(value))
            if len(losses) % 100 == 0:
                print(f"finetune: epoch {epoch + 1}, step {len(losses)}: loss {np.mean(losses[-100:]):.4f}, {time.time() - started:.0f} s", file=sys.stderr)
        z = predict(params, frozen, config, validation, tokenizer, forward)
        accuracy = float((z.argmax(1) == gold_validation).mean())
        report["epochs"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "validation_accuracy": accuracy, "seconds": round(time.time() - started)})
        print(f"finetune: epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation accuracy {accuracy:.4f}, {time.time() - started:.0f} s", file=sys.stderr)

    t = temperature(z, gold_validation)
    report["temperature"] = t
    report["validation_ece"] = {"before": ece(softmax(z), gold_validation), "after": ece(softmax(z / t), gold_validation)}
    report["seconds"] = round(time.time() - started)

    os.makedirs(out_dir, exist_ok=True)
    trained = {prefix + k: np.asarray(v, np.float32) for k, v in params["encoder"].items()}
    save_file({**weights, **trained}, os.path.join(out_dir, "model.safetensors"))
    save_file(
        {"weight": np.asarray(params["head"]["weight"] / t, np.float32), "bias": np.asarray(params["head"]["bias"] / t, np.float32)},
        os.path.join(out_dir, "head.safetensors"),
        metadata={"id2label": json.dumps({str(i): n for i, n in enumerate(LABELS)}, separators=(",", ":"))},
    )
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
