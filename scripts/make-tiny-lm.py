#!/usr/bin/python3
"""Writes a small GPT-2-style model in the Hugging Face layout and a token file to train on.

    scripts/make-tiny-lm.py OUT_DIR [--layers 4] [--d-model 128] [--heads 4] [--vocab 4096]
                            [--positions 256] [--sequences 4096] [--context 64] [--seed 0]

OUT_DIR/model/config.json and model.safetensors hold a GPT-2 (Conv1D weights stored [in, out])
with Hugging Face's GPT-2 initialisation: N(0, 0.02^2) weights, residual projections scaled by
1/sqrt(2 n_layer), zero biases, unit LayerNorms. Its weights are random: the examples train an
SAE on the activations of this stand-in so that they run anywhere in a minute; point
data.language_model.model_path at a real checkpoint (for example a download of
huggingface.co/gpt2: config.json + model.safetensors) for real features.

OUT_DIR/tokens.bin is a flat file of uint16 ids (the nanoGPT / sparsify convention), `sequences`
rows of `context` tokens, each opening with the BOS id 0. The ids follow a random bigram process
with Zipf-distributed unigrams, so that the text has structure for the latents to find.

Numpy only; the same arguments write the same files. Existing files with the same description are
kept (the script is idempotent).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def write_safetensors(path, tensors):
    header = {}
    offset = 0
    blobs = []
    for name, array in tensors:
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def gpt2_tensors(rng, layers, d, vocab, positions):
    std = 0.02
    proj_std = std / np.sqrt(2 * layers)
    out = [("wte.weight", rng.normal(0, std, (vocab, d))), ("wpe.weight", rng.normal(0, 0.01, (positions, d)))]
    for layer in range(layers):
        p = f"h.{layer}."
        out += [
            (p + "ln_1.weight", np.ones(d)), (p + "ln_1.bias", np.zeros(d)),
            (p + "attn.c_attn.weight", rng.normal(0, std, (d, 3 * d))), (p + "attn.c_attn.bias", np.zeros(3 * d)),
            (p + "attn.c_proj.weight", rng.normal(0, proj_std, (d, d))), (p + "attn.c_proj.bias", np.zeros(d)),
            (p + "ln_2.weight", np.ones(d)), (p + "ln_2.bias", np.zeros(d)),
            (p + "mlp.c_fc.weight", rng.normal(0, std, (d, 4 * d))), (p + "mlp.c_fc.bias", np.zeros(4 * d)),
            (p + "mlp.c_proj.weight", rng.normal(0, proj_std, (4 * d, d))), (p + "mlp.c_proj.bias", np.zeros(d)),
        ]
    out += [("ln_f.weight", np.ones(d)), ("ln_f.bias", np.zeros(d))]
    return out


def bigram_tokens(rng, vocab, sequences, context):
    # Zipf unigrams over ids 1..vocab-1 (0 is the BOS); each id has 8 likely successors.
    ranks = np.arange(1, vocab)
    unigram = 1.0 / ranks
    unigram /= unigram.sum()
    successors = rng.choice(ranks, size=(vocab, 8), p=unigram)
    out = np.empty((sequences, context), dtype=np.uint16)
    out[:, 0] = 0
    current = rng.choice(ranks, size=sequences, p=unigram)
    for t in range(1, context):
        out[:, t] = current
        follow = rng.random(sequences) < 0.7
        pick = successors[current, rng.integers(0, 8, size=sequences)]
        fresh = rng.choice(ranks, size=sequences, p=unigram)
        current = np.where(follow, pick, fresh)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--sequences", type=int, default=4096)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    if a.d_model % a.heads != 0:
        sys.exit(f"make-tiny-lm: --d-model {a.d_model} is not divisible by --heads {a.heads}")
    if not 2 <= a.vocab <= 65536:
        sys.exit("make-tiny-lm: --vocab must be in [2, 65536] (uint16 ids)")
    if a.context > a.positions:
        sys.exit(f"make-tiny-lm: --context {a.context} is longer than --positions {a.positions}")
    description = vars(a).copy()
    description.pop("out_dir")
    model_dir = os.path.join(a.out_dir, "model")
    stamp = os.path.join(a.out_dir, "made-by.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == description:
                print(f"make-tiny-lm: {a.out_dir} is up to date")
                return
    os.makedirs(model_dir, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": a.layers, "n_embd": a.d_model,
              "n_head": a.heads, "vocab_size": a.vocab, "n_positions": a.positions, "n_ctx": a.positions,
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "initializer_range": 0.02,
              "bos_token_id": 0, "eos_token_id": 0}
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(model_dir, "model.safetensors"),
                      gpt2_tensors(rng, a.layers, a.d_model, a.vocab, a.positions))
    tokens = bigram_tokens(rng, a.vocab, a.sequences, a.context)
    tmp = os.path.join(a.out_dir, "tokens.bin.tmp")
    tokens.tofile(tmp)
    os.replace(tmp, os.path.join(a.out_dir, "tokens.bin"))
    with open(stamp, "w") as f:
        json.dump(description, f)
    print(f"make-tiny-lm: wrote {model_dir} ({a.layers} layers, d {a.d_model}, vocab {a.vocab}) and "
          f"{a.sequences} x {a.context} tokens in {os.path.join(a.out_dir, 'tokens.bin')}")


if __name__ == "__main__":
    main()
