#!/usr/bin/env python3
"""Independent numpy reference forward passes for three Hugging Face
transformer families (GPT-2, GPT-NeoX/Pythia, Llama/Qwen2/Mistral).

Written from the Hugging Face transformers semantics (modeling_gpt2.py,
modeling_gpt_neox.py, modeling_llama.py), in eval mode: no dropout, causal
mask, no padding, no KV cache.  All math is done in float64 from the weights
as stored; outputs are written as float32.

Usage:
  python3 tests/lm_reference.py --model MODEL_DIR --tokens TOKENS.npy --out OUT_DIR
  python3 tests/lm_reference.py --self-test

Outputs (in OUT_DIR):
  logits.npy                         float32 [B, T, vocab]
  blocks.{l}.hook_resid_pre.npy      float32 [B, T, d_model]
  blocks.{l}.hook_resid_post.npy     float32 [B, T, d_model]
  blocks.{l}.hook_attn_out.npy       float32 [B, T, d_model]
  blocks.{l}.hook_mlp_out.npy        float32 [B, T, d_model]
  info.json  {"model_type", "num_layers", "d_model", "vocab_size"}

Only the Python standard library and numpy are used.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np


class RefError(Exception):
    """A user-facing error: reported as one line on stderr, exit code 1."""


# --------------------------------------------------------------------------
# safetensors reading / writing
# --------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}


def _bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (bits shifted left 16)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits by truncation (only used by the self-test
    writer; values chosen there are exactly representable)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


class SafetensorsFile:
    """Lazy reader for one .safetensors file (memory-mapped)."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise RefError("%s: truncated safetensors header" % path)
                (n,) = struct.unpack("<Q", raw)
                header = json.loads(f.read(n).decode("utf-8"))
        except OSError as e:
            raise RefError("cannot read %s: %s" % (path, e))
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.header = header
        self._mm = None

    def names(self):
        return list(self.header.keys())

    def get(self, name):
        info = self.header[name]
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise RefError("%s: tensor %s has unsupported dtype %s"
                           % (self.path, name, dt))
        np_dt, size = _ST_DTYPES[dt]
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(v) for v in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * size:
            raise RefError("%s: tensor %s has inconsistent data_offsets"
                           % (self.path, name))
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = self._mm[self.data_start + begin:self.data_start + end]
        arr = np.frombuffer(buf, dtype=np_dt, count=count).reshape(shape)
        if dt == "BF16":
            arr = _bf16_bits_to_f32(arr)
        return arr.astype(np.float64)


def write_safetensors(path, tensors, dtype="F32"):
    """Minimal safetensors writer (self-test only).  tensors: name -> array."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if dtype == "F32":
            b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        elif dtype == "F16":
            b = np.ascontiguousarray(a, dtype="<f2").tobytes()
        elif dtype == "BF16":
            b = np.ascontiguousarray(_f32_to_bf16_bits(a), dtype="<u2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


class WeightStore:
    """All tensors of a HF model dir (single file or sharded index)."""

    def __init__(self, model_dir):
        single = os.path.join(model_dir, "model.safetensors")
        index = os.path.join(model_dir, "model.safetensors.index.json")
        self.where = {}
        files = {}
        if os.path.exists(single):
            st = SafetensorsFile(single)
            for n in st.names():
                self.where[n] = st
        elif os.path.exists(index):
            with open(index) as f:
                wmap = json.load(f)["weight_map"]
            for n, shard in wmap.items():
                if shard not in files:
                    files[shard] = SafetensorsFile(os.path.join(model_dir, shard))
                if n not in files[shard].header:
                    raise RefError("missing tensor %s in shard %s" % (n, shard))
                self.where[n] = files[shard]
        else:
            raise RefError("no model.safetensors or model.safetensors.index.json in %s"
                           % model_dir)

    def has(self, name):
        return name in self.where

    def get(self, name):
        if name not in self.where:
            raise RefError("missing tensor %s" % name)
        return self.where[name].get(name)


class Prefixed:
    """Looks tensor names up with an optional prefix ("transformer." ...)."""

    def __init__(self, store, prefix):
        self.store = store
        self.prefix = prefix

    def _resolve(self, name):
        if self.store.has(self.prefix + name):
            return self.prefix + name
        if self.store.has(name):
            return name
        return None

    def has(self, name):
        return self._resolve(name) is not None

    def get(self, name):
        r = self._resolve(name)
        if r is None:
            raise RefError("missing tensor %s (also tried %s%s)"
                           % (name, self.prefix, name))
        return self.store.get(r)

    def get_opt(self, name):
        r = self._resolve(name)
        return None if r is None else self.store.get(r)


# --------------------------------------------------------------------------
# math helpers (float64)
# --------------------------------------------------------------------------

_erf_ufunc = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    return _erf_ufunc(x).astype(np.float64)


def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                    * (x + 0.044715 * x ** 3)))


def gelu_fast(x):
    return 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_fast,
    "quick_gelu": lambda x: x * sigmoid(1.702 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": silu,
    "swish": silu,
    "tanh": np.tanh,
}


def activation(name):
    if name not in ACTIVATIONS:
        raise RefError("unsupported activation function %r" % (name,))
    return ACTIVATIONS[name]


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance
    y = (x - mu) / np.sqrt(var + eps)
    y = y * w
    if b is not None:
        y = y + b
    return y


def rms_norm(x, w, eps):
    ms = (x * x).mean(axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def linear(x, w, b=None):
    """nn.Linear: w is [out, in]; y = x @ w^T + b."""
    y = x @ w.T
    if b is not None:
        y = y + b
    return y


def conv1d(x, w, b=None):
    """GPT-2 Conv1D: w is [in, out]; y = x @ w + b."""
    y = x @ w
    if b is not None:
        y = y + b
    return y


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def causal_attention(q, k, v, scale, window=None):
    """q: [B, H, T, hd]; k, v: [B, H, T, hd] (already expanded for GQA).
    Returns [B, H, T, hd].  Position i attends to j <= i (and, with a
    sliding window, i - j < window)."""
    T = q.shape[2]
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & ((i - j) < window)
    scores = np.where(allowed, scores, -np.inf)
    return softmax(scores, axis=-1) @ v


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_cos_sin(T, rot_dims, base):
    """cos/sin of shape [T, rot_dims] (HF: emb = cat(freqs, freqs))."""
    inv_freq = 1.0 / (base ** (np.arange(0, rot_dims, 2, dtype=np.float64)
                               / rot_dims))
    t = np.arange(T, dtype=np.float64)
    freqs = np.outer(t, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def apply_rope(x, cos, sin, rot_dims):
    """x: [B, H, T, hd]; rotates the first rot_dims dims, passes the rest."""
    xr = x[..., :rot_dims]
    xp = x[..., rot_dims:]
    xr = xr * cos + rotate_half(xr) * sin
    return np.concatenate([xr, xp], axis=-1)


def split_heads(x, n_heads, head_dim):
    """[B, T, n*hd] -> [B, n, T, hd]"""
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, head_dim).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, n, T, hd] -> [B, T, n*hd]"""
    B, n, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, n * hd)


# --------------------------------------------------------------------------
# config helpers
# --------------------------------------------------------------------------

def cfg_get(cfg, key, default=None, required=False):
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if required:
        raise RefError("config.json lacks required key %r" % key)
    return default


def check_rope_scaling(cfg):
    rs = cfg.get("rope_scaling")
    if rs is not None:
        raise RefError("rope_scaling %s is unsupported" % json.dumps(rs))
    rp = cfg.get("rope_parameters")  # transformers v5 style
    if rp is not None:
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype != "default":
            raise RefError("rope_parameters with rope_type %r is unsupported"
                           % rtype)


def rope_base(cfg, legacy_key=None):
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        return float(rp["rope_theta"])
    if cfg.get("rope_theta") is not None:
        return float(cfg["rope_theta"])
    if legacy_key and cfg.get(legacy_key) is not None:
        return float(cfg[legacy_key])
    return 10000.0


def check_tokens(tokens, vocab, max_pos=None):
    if tokens.ndim != 2:
        raise RefError("tokens must be a 2-D [B, T] array, got shape %s"
                       % (tokens.shape,))
    if tokens.size == 0:
        raise RefError("tokens array is empty")
    if tokens.min() < 0 or tokens.max() >= vocab:
        raise RefError("token id out of range [0, %d)" % vocab)
    if max_pos is not None and tokens.shape[1] > max_pos:
        raise RefError("sequence length %d exceeds n_positions %d"
                       % (tokens.shape[1], max_pos))


# --------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------

def forward_gpt2(cfg, store, tokens):
    w = Prefixed(store, "transformer.")
    n_layer = int(cfg_get(cfg, "n_layer", required=True))
    d = int(cfg_get(cfg, "n_embd", required=True))
    n_head = int(cfg_get(cfg, "n_head", required=True))
    eps = float(cfg_get(cfg, "layer_norm_epsilon", 1e-5))
    act = activation(cfg_get(cfg, "activation_function", "gelu_new"))
    scale_attn = bool(cfg_get(cfg, "scale_attn_weights", True))
    inv_layer = bool(cfg_get(cfg, "scale_attn_by_inverse_layer_idx", False))
    if d % n_head:
        raise RefError("n_embd %d not divisible by n_head %d" % (d, n_head))
    hd = d // n_head

    wte = w.get("wte.weight")
    wpe = w.get("wpe.weight")
    check_tokens(tokens, wte.shape[0], wpe.shape[0])
    B, T = tokens.shape
    x = wte[tokens] + wpe[np.arange(T)][None, :, :]

    hooks = []
    for l in range(n_layer):
        p = "h.%d." % l
        resid_pre = x
        h = layer_norm(x, w.get(p + "ln_1.weight"), w.get_opt(p + "ln_1.bias"), eps)
        qkv = conv1d(h, w.get(p + "attn.c_attn.weight"),
                     w.get_opt(p + "attn.c_attn.bias"))
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:3 * d]
        q, k, v = (split_heads(t, n_head, hd) for t in (q, k, v))
        scale = 1.0
        if scale_attn:
            scale /= math.sqrt(hd)
        if inv_layer:
            scale /= float(l + 1)
        a = merge_heads(causal_attention(q, k, v, scale))
        attn_out = conv1d(a, w.get(p + "attn.c_proj.weight"),
                          w.get_opt(p + "attn.c_proj.bias"))
        x = x + attn_out
        h = layer_norm(x, w.get(p + "ln_2.weight"), w.get_opt(p + "ln_2.bias"), eps)
        m = act(conv1d(h, w.get(p + "mlp.c_fc.weight"), w.get_opt(p + "mlp.c_fc.bias")))
        mlp_out = conv1d(m, w.get(p + "mlp.c_proj.weight"),
                         w.get_opt(p + "mlp.c_proj.bias"))
        x = x + mlp_out
        hooks.append((resid_pre, attn_out, mlp_out, x))

    x = layer_norm(x, w.get("ln_f.weight"), w.get_opt("ln_f.bias"), eps)
    # GPT-2 ties the LM head to wte unless an explicit lm_head.weight exists.
    head = store.get("lm_head.weight") if store.has("lm_head.weight") else wte
    logits = x @ head.T
    return logits, hooks, n_layer, d


# --------------------------------------------------------------------------
# GPT-NeoX (Pythia)
# --------------------------------------------------------------------------

def forward_gpt_neox(cfg, store, tokens):
    w = Prefixed(store, "gpt_neox.")
    check_rope_scaling(cfg)
    n_layer = int(cfg_get(cfg, "num_hidden_layers", required=True))
    d = int(cfg_get(cfg, "hidden_size", required=True))
    n_head = int(cfg_get(cfg, "num_attention_heads", required=True))
    eps = float(cfg_get(cfg, "layer_norm_eps", 1e-5))
    act = activation(cfg_get(cfg, "hidden_act", "gelu"))
    parallel = bool(cfg_get(cfg, "use_parallel_residual", True))
    rp = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    rot_pct = float(rp.get("partial_rotary_factor",
                           cfg_get(cfg, "rotary_pct",
                                   cfg_get(cfg, "partial_rotary_factor", 0.25))))
    base = rope_base(cfg, "rotary_emb_base")
    tie = bool(cfg_get(cfg, "tie_word_embeddings", False))
    if d % n_head:
        raise RefError("hidden_size %d not divisible by num_attention_heads %d"
                       % (d, n_head))
    hd = d // n_head
    rot = int(hd * rot_pct)
    if rot % 2:
        raise RefError("rotary_ndims %d is odd" % rot)

    emb = w.get("embed_in.weight")
    if tie:
        head = emb
    else:
        head = store.get("embed_out.weight") if store.has("embed_out.weight") \
            else w.get("embed_out.weight")
    check_tokens(tokens, emb.shape[0])
    B, T = tokens.shape
    x = emb[tokens]
    cos, sin = rope_cos_sin(T, rot, base)

    def attention(h, p):
        qkv = linear(h, w.get(p + "attention.query_key_value.weight"),
                     w.get_opt(p + "attention.query_key_value.bias"))
        # per-head fused layout: [B, T, H, 3*hd] -> q | k | v per head
        qkv = qkv.reshape(B, T, n_head, 3 * hd).transpose(0, 2, 1, 3)
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        q = apply_rope(q, cos, sin, rot)
        k = apply_rope(k, cos, sin, rot)
        a = merge_heads(causal_attention(q, k, v, 1.0 / math.sqrt(hd)))
        return linear(a, w.get(p + "attention.dense.weight"),
                      w.get_opt(p + "attention.dense.bias"))

    def mlp(h, p):
        m = act(linear(h, w.get(p + "mlp.dense_h_to_4h.weight"),
                       w.get_opt(p + "mlp.dense_h_to_4h.bias")))
        return linear(m, w.get(p + "mlp.dense_4h_to_h.weight"),
                      w.get_opt(p + "mlp.dense_4h_to_h.bias"))

    hooks = []
    for l in range(n_layer):
        p = "layers.%d." % l
        resid_pre = x
        ln1 = layer_norm(x, w.get(p + "input_layernorm.weight"),
                         w.get_opt(p + "input_layernorm.bias"), eps)
        attn_out = attention(ln1, p)
        if parallel:
            ln2 = layer_norm(x, w.get(p + "post_attention_layernorm.weight"),
                             w.get_opt(p + "post_attention_layernorm.bias"), eps)
            mlp_out = mlp(ln2, p)
            x = x + attn_out + mlp_out
        else:
            x = x + attn_out
            ln2 = layer_norm(x, w.get(p + "post_attention_layernorm.weight"),
                             w.get_opt(p + "post_attention_layernorm.bias"), eps)
            mlp_out = mlp(ln2, p)
            x = x + mlp_out
        hooks.append((resid_pre, attn_out, mlp_out, x))

    x = layer_norm(x, w.get("final_layer_norm.weight"),
                   w.get_opt("final_layer_norm.bias"), eps)
    logits = x @ head.T
    return logits, hooks, n_layer, d


# --------------------------------------------------------------------------
# Llama / Qwen2 / Mistral
# --------------------------------------------------------------------------

def forward_llama(cfg, store, tokens):
    w = Prefixed(store, "model.")
    check_rope_scaling(cfg)
    mt = cfg.get("model_type")
    n_layer = int(cfg_get(cfg, "num_hidden_layers", required=True))
    d = int(cfg_get(cfg, "hidden_size", required=True))
    n_head = int(cfg_get(cfg, "num_attention_heads", required=True))
    n_kv = int(cfg_get(cfg, "num_key_value_heads", n_head))
    hd = int(cfg_get(cfg, "head_dim", d // n_head))
    eps = float(cfg_get(cfg, "rms_norm_eps", 1e-6))
    base = rope_base(cfg)
    tie = bool(cfg_get(cfg, "tie_word_embeddings", False))
    act = activation(cfg_get(cfg, "hidden_act", "silu"))
    if n_head % n_kv:
        raise RefError("num_attention_heads %d not divisible by "
                       "num_key_value_heads %d" % (n_head, n_kv))
    if hd % 2:
        raise RefError("head_dim %d is odd" % hd)
    rep = n_head // n_kv

    window = None
    if mt == "mistral":
        window = cfg.get("sliding_window")
    elif mt == "qwen2" and cfg.get("use_sliding_window"):
        window = cfg.get("sliding_window")

    emb = w.get("embed_tokens.weight")
    if tie:
        head = emb
    elif store.has("lm_head.weight"):
        head = store.get("lm_head.weight")
    else:
        raise RefError("missing tensor lm_head.weight (tie_word_embeddings is false)")
    check_tokens(tokens, emb.shape[0])
    B, T = tokens.shape
    if window is not None and T > int(window):
        raise RefError("sequence length %d exceeds sliding_window %d: "
                       "sliding-window attention is unsupported" % (T, int(window)))
    x = emb[tokens]
    cos, sin = rope_cos_sin(T, hd, base)

    hooks = []
    for l in range(n_layer):
        p = "layers.%d." % l
        resid_pre = x
        h = rms_norm(x, w.get(p + "input_layernorm.weight"), eps)
        sa = p + "self_attn."
        q = linear(h, w.get(sa + "q_proj.weight"), w.get_opt(sa + "q_proj.bias"))
        k = linear(h, w.get(sa + "k_proj.weight"), w.get_opt(sa + "k_proj.bias"))
        v = linear(h, w.get(sa + "v_proj.weight"), w.get_opt(sa + "v_proj.bias"))
        q = split_heads(q, n_head, hd)
        k = split_heads(k, n_kv, hd)
        v = split_heads(v, n_kv, hd)
        q = apply_rope(q, cos, sin, hd)
        k = apply_rope(k, cos, sin, hd)
        # repeat_kv: query head h uses kv head h // rep
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        a = merge_heads(causal_attention(q, k, v, 1.0 / math.sqrt(hd), window))
        attn_out = linear(a, w.get(sa + "o_proj.weight"), w.get_opt(sa + "o_proj.bias"))
        x = x + attn_out
        h = rms_norm(x, w.get(p + "post_attention_layernorm.weight"), eps)
        mp = p + "mlp."
        g = linear(h, w.get(mp + "gate_proj.weight"), w.get_opt(mp + "gate_proj.bias"))
        u = linear(h, w.get(mp + "up_proj.weight"), w.get_opt(mp + "up_proj.bias"))
        mlp_out = linear(act(g) * u, w.get(mp + "down_proj.weight"),
                         w.get_opt(mp + "down_proj.bias"))
        x = x + mlp_out
        hooks.append((resid_pre, attn_out, mlp_out, x))

    x = rms_norm(x, w.get("norm.weight"), eps)
    logits = x @ head.T
    return logits, hooks, n_layer, d


FORWARDS = {
    "gpt2": forward_gpt2,
    "gpt_neox": forward_gpt_neox,
    "llama": forward_llama,
    "qwen2": forward_llama,
    "mistral": forward_llama,
}


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise RefError("cannot read %s: %s" % (path, e))


def run_model(model_dir, tokens):
    """Returns (cfg, logits [B,T,V] f64, hooks list of (pre, attn, mlp, post),
    n_layer, d_model)."""
    cfg = load_config(model_dir)
    mt = cfg.get("model_type")
    if mt not in FORWARDS:
        raise RefError("unsupported model_type %r" % (mt,))
    store = WeightStore(model_dir)
    tokens = np.asarray(tokens)
    if not np.issubdtype(tokens.dtype, np.integer):
        raise RefError("tokens must be an integer array, got %s" % tokens.dtype)
    tokens = tokens.astype(np.int64)
    logits, hooks, n_layer, d = FORWARDS[mt](cfg, store, tokens)
    return cfg, logits, hooks, n_layer, d


def write_outputs(out_dir, cfg, logits, hooks, n_layer, d):
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "logits.npy"), logits.astype(np.float32))
    for l, (pre, attn, mlp, post) in enumerate(hooks):
        for name, arr in (("hook_resid_pre", pre), ("hook_resid_post", post),
                          ("hook_attn_out", attn), ("hook_mlp_out", mlp)):
            np.save(os.path.join(out_dir, "blocks.%d.%s.npy" % (l, name)),
                    arr.astype(np.float32))
    info = {"model_type": cfg.get("model_type"), "num_layers": n_layer,
            "d_model": d, "vocab_size": int(logits.shape[-1])}
    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f, indent=1)


def main_cli(model_dir, tokens_path, out_dir):
    try:
        tokens = np.load(tokens_path)
    except (OSError, ValueError) as e:
        raise RefError("cannot load tokens %s: %s" % (tokens_path, e))
    cfg, logits, hooks, n_layer, d = run_model(model_dir, tokens)
    write_outputs(out_dir, cfg, logits, hooks, n_layer, d)


# --------------------------------------------------------------------------
# self-test
# --------------------------------------------------------------------------

def _rand(rng, *shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _tiny_gpt2(rng, d=16, H=4, L=3, V=37, P=12, inner=None):
    inner = inner or 4 * d
    t = {"wte.weight": _rand(rng, V, d, scale=0.5),
         "wpe.weight": _rand(rng, P, d, scale=0.5),
         "ln_f.weight": 1 + _rand(rng, d), "ln_f.bias": _rand(rng, d)}
    for l in range(L):
        p = "h.%d." % l
        t.update({
            p + "ln_1.weight": 1 + _rand(rng, d), p + "ln_1.bias": _rand(rng, d),
            p + "attn.c_attn.weight": _rand(rng, d, 3 * d),
            p + "attn.c_attn.bias": _rand(rng, 3 * d),
            p + "attn.c_proj.weight": _rand(rng, d, d),
            p + "attn.c_proj.bias": _rand(rng, d),
            p + "ln_2.weight": 1 + _rand(rng, d), p + "ln_2.bias": _rand(rng, d),
            p + "mlp.c_fc.weight": _rand(rng, d, inner),
            p + "mlp.c_fc.bias": _rand(rng, inner),
            p + "mlp.c_proj.weight": _rand(rng, inner, d),
            p + "mlp.c_proj.bias": _rand(rng, d)})
    cfg = {"model_type": "gpt2", "n_layer": L, "n_embd": d, "n_head": H,
           "vocab_size": V, "n_positions": P, "layer_norm_epsilon": 1e-5,
           "activation_function": "gelu_new"}
    return cfg, t


def _tiny_neox(rng, d=16, H=2, L=3, V=41, parallel=True):
    ff = 4 * d
    t = {"gpt_neox.embed_in.weight": _rand(rng, V, d, scale=0.5),
         "gpt_neox.final_layer_norm.weight": 1 + _rand(rng, d),
         "gpt_neox.final_layer_norm.bias": _rand(rng, d),
         "embed_out.weight": _rand(rng, V, d)}
    for l in range(L):
        p = "gpt_neox.layers.%d." % l
        t.update({
            p + "input_layernorm.weight": 1 + _rand(rng, d),
            p + "input_layernorm.bias": _rand(rng, d),
            p + "post_attention_layernorm.weight": 1 + _rand(rng, d),
            p + "post_attention_layernorm.bias": _rand(rng, d),
            p + "attention.query_key_value.weight": _rand(rng, 3 * d, d),
            p + "attention.query_key_value.bias": _rand(rng, 3 * d),
            p + "attention.dense.weight": _rand(rng, d, d),
            p + "attention.dense.bias": _rand(rng, d),
            p + "mlp.dense_h_to_4h.weight": _rand(rng, ff, d),
            p + "mlp.dense_h_to_4h.bias": _rand(rng, ff),
            p + "mlp.dense_4h_to_h.weight": _rand(rng, d, ff),
            p + "mlp.dense_4h_to_h.bias": _rand(rng, d)})
    cfg = {"model_type": "gpt_neox", "num_hidden_layers": L, "hidden_size": d,
           "num_attention_heads": H, "intermediate_size": ff, "vocab_size": V,
           "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
           "use_parallel_residual": parallel, "hidden_act": "gelu",
           "max_position_embeddings": 64, "tie_word_embeddings": False}
    return cfg, t


def _tiny_llama(rng, model_type="llama", d=16, H=4, KV=2, L=3, V=29, ff=24,
                qkv_bias=False, tie=False, prefix="model."):
    hd = d // H
    t = {prefix + "embed_tokens.weight": _rand(rng, V, d, scale=0.5),
         prefix + "norm.weight": 1 + _rand(rng, d)}
    if not tie:
        t["lm_head.weight"] = _rand(rng, V, d)
    for l in range(L):
        p = prefix + "layers.%d." % l
        t.update({
            p + "input_layernorm.weight": 1 + _rand(rng, d),
            p + "post_attention_layernorm.weight": 1 + _rand(rng, d),
            p + "self_attn.q_proj.weight": _rand(rng, H * hd, d),
            p + "self_attn.k_proj.weight": _rand(rng, KV * hd, d),
            p + "self_attn.v_proj.weight": _rand(rng, KV * hd, d),
            p + "self_attn.o_proj.weight": _rand(rng, d, H * hd),
            p + "mlp.gate_proj.weight": _rand(rng, ff, d),
            p + "mlp.up_proj.weight": _rand(rng, ff, d),
            p + "mlp.down_proj.weight": _rand(rng, d, ff)})
        if qkv_bias:
            t.update({p + "self_attn.q_proj.bias": _rand(rng, H * hd),
                      p + "self_attn.k_proj.bias": _rand(rng, KV * hd),
                      p + "self_attn.v_proj.bias": _rand(rng, KV * hd)})
    cfg = {"model_type": model_type, "num_hidden_layers": L, "hidden_size": d,
           "num_attention_heads": H, "num_key_value_heads": KV,
           "intermediate_size": ff, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "vocab_size": V, "tie_word_embeddings": tie, "hidden_act": "silu",
           "rope_scaling": None, "max_position_embeddings": 64}
    return cfg, t


def _write_model(dirpath, cfg, tensors, shards=1):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cfg, f)
    if shards == 1:
        write_safetensors(os.path.join(dirpath, "model.safetensors"), tensors)
        return
    names = sorted(tensors)
    wmap = {}
    for s in range(shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {n: tensors[n] for n in names[s::shards]}
        write_safetensors(os.path.join(dirpath, fn), part)
        for n in part:
            wmap[n] = fn
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wmap}, f)


def _check(cond, msg, failures):
    status = "ok  " if cond else "FAIL"
    print("  [%s] %s" % (status, msg))
    if not cond:
        failures.append(msg)


def _naive_gpt2_layer0_attn(cfg, t, tokens):
    """Loop-based (per batch, head, query, key) GPT-2 block-0 attention, as an
    independent check of the vectorized head split / mask / merge."""
    d, H = cfg["n_embd"], cfg["n_head"]
    hd = d // H
    B, T = tokens.shape
    g = lambda n: t[n].astype(np.float64)
    out = np.zeros((B, T, d))
    for b in range(B):
        x = np.array([g("wte.weight")[tokens[b, i]] + g("wpe.weight")[i]
                      for i in range(T)])
        mu = x.mean(1, keepdims=True)
        sd = np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + 1e-5)
        h = (x - mu) / sd * g("h.0.ln_1.weight") + g("h.0.ln_1.bias")
        qkv = h @ g("h.0.attn.c_attn.weight") + g("h.0.attn.c_attn.bias")
        merged = np.zeros((T, d))
        for hh in range(H):
            sl = slice(hh * hd, (hh + 1) * hd)
            q = qkv[:, 0 * d:1 * d][:, sl]
            k = qkv[:, 1 * d:2 * d][:, sl]
            v = qkv[:, 2 * d:3 * d][:, sl]
            for i in range(T):
                s = [float(q[i] @ k[j]) / math.sqrt(hd) for j in range(i + 1)]
                m = max(s)
                e = [math.exp(z - m) for z in s]
                z = sum(e)
                merged[i, sl] = sum((e[j] / z) * v[j] for j in range(i + 1))
        out[b] = merged @ g("h.0.attn.c_proj.weight") + g("h.0.attn.c_proj.bias")
    return out


def _naive_llama_layer0_attn(cfg, t, tokens, prefix="model."):
    """Loop-based Llama block-0 attention with explicit RoPE pair rotation
    (dim i paired with i + hd/2) and explicit GQA head mapping."""
    d, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    B, T = tokens.shape
    g = lambda n: t[prefix + n].astype(np.float64)
    base = cfg["rope_theta"]
    out = np.zeros((B, T, d))

    def rope(vec, pos):
        r = vec.copy()
        half = hd // 2
        for i in range(half):
            theta = pos * base ** (-2.0 * i / hd)
            c, s = math.cos(theta), math.sin(theta)
            r[i] = vec[i] * c - vec[i + half] * s
            r[i + half] = vec[i + half] * c + vec[i] * s
        return r

    for b in range(B):
        x = g("embed_tokens.weight")[tokens[b]]
        h = x / np.sqrt((x * x).mean(1, keepdims=True) + cfg["rms_norm_eps"]) \
            * g("layers.0.input_layernorm.weight")
        Q = h @ g("layers.0.self_attn.q_proj.weight").T
        K = h @ g("layers.0.self_attn.k_proj.weight").T
        V = h @ g("layers.0.self_attn.v_proj.weight").T
        if (prefix + "layers.0.self_attn.q_proj.bias") in t:
            Q = Q + g("layers.0.self_attn.q_proj.bias")
            K = K + g("layers.0.self_attn.k_proj.bias")
            V = V + g("layers.0.self_attn.v_proj.bias")
        merged = np.zeros((T, H * hd))
        for hh in range(H):
            kh = hh // (H // KV)
            for i in range(T):
                qi = rope(Q[i, hh * hd:(hh + 1) * hd], i)
                s = [float(qi @ rope(K[j, kh * hd:(kh + 1) * hd], j)) / math.sqrt(hd)
                     for j in range(i + 1)]
                m = max(s)
                e = [math.exp(z - m) for z in s]
                z = sum(e)
                merged[i, hh * hd:(hh + 1) * hd] = sum(
                    (e[j] / z) * V[j, kh * hd:(kh + 1) * hd] for j in range(i + 1))
        out[b] = merged @ g("layers.0.self_attn.o_proj.weight").T
    return out


def _naive_neox_layer0_attn(cfg, t, tokens):
    """Loop-based NeoX block-0 attention: per-head fused QKV rows
    [q_h | k_h | v_h], partial rotary on the first rotary_ndims dims."""
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = d // H
    rot = int(hd * cfg["rotary_pct"])
    base = cfg["rotary_emb_base"]
    B, T = tokens.shape
    g = lambda n: t["gpt_neox." + n].astype(np.float64)

    def rope(vec, pos):
        r = vec.copy()
        half = rot // 2
        for i in range(half):
            theta = pos * base ** (-2.0 * i / rot)
            c, s = math.cos(theta), math.sin(theta)
            r[i] = vec[i] * c - vec[i + half] * s
            r[i + half] = vec[i + half] * c + vec[i] * s
        return r

    out = np.zeros((B, T, d))
    for b in range(B):
        x = g("embed_in.weight")[tokens[b]]
        mu = x.mean(1, keepdims=True)
        sd = np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + cfg["layer_norm_eps"])
        h = (x - mu) / sd * g("layers.0.input_layernorm.weight") \
            + g("layers.0.input_layernorm.bias")
        W = g("layers.0.attention.query_key_value.weight")
        bias = g("layers.0.attention.query_key_value.bias")
        merged = np.zeros((T, d))
        for hh in range(H):
            base_row = hh * 3 * hd
            Wq, bq = W[base_row:base_row + hd], bias[base_row:base_row + hd]
            Wk, bk = W[base_row + hd:base_row + 2 * hd], bias[base_row + hd:base_row + 2 * hd]
            Wv, bv = W[base_row + 2 * hd:base_row + 3 * hd], bias[base_row + 2 * hd:base_row + 3 * hd]
            q = h @ Wq.T + bq
            k = h @ Wk.T + bk
            v = h @ Wv.T + bv
            for i in range(T):
                qi = rope(q[i], i)
                s = [float(qi @ rope(k[j], j)) / math.sqrt(hd) for j in range(i + 1)]
                m = max(s)
                e = [math.exp(z - m) for z in s]
                z = sum(e)
                merged[i, hh * hd:(hh + 1) * hd] = sum((e[j] / z) * v[j] for j in range(i + 1))
        out[b] = merged @ g("layers.0.attention.dense.weight").T \
            + g("layers.0.attention.dense.bias")
    return out


def self_test():
    failures = []
    rng = np.random.default_rng(1234)
    tmp = tempfile.mkdtemp(prefix="lm_reference_selftest_")
    print("self-test in", tmp)

    # ---- dtype readers -------------------------------------------------
    print("dtype readers:")
    vals = np.array([0.0, 1.0, -2.5, 0.15625, 65504.0, -3.0e-5, 1024.0, -0.099609375],
                    dtype=np.float32)
    bf_vals = np.array([0.0, 1.0, -2.5, 0.15625, 3.3895313892515355e38,
                        -1.1754943508222875e-38, 1024.0, -0.099609375],
                       dtype=np.float32)
    assert np.array_equal(_bf16_bits_to_f32(_f32_to_bf16_bits(bf_vals)), bf_vals)
    p = os.path.join(tmp, "dtypes.safetensors")
    write_safetensors(p, {"h": vals.reshape(2, 4)}, dtype="F16")
    st = SafetensorsFile(p)
    got = st.get("h")
    _check(got.shape == (2, 4) and np.array_equal(
        got.ravel(), vals.astype(np.float16).astype(np.float64)),
        "F16 round-trip %s" % got.ravel().tolist(), failures)
    write_safetensors(p, {"b": bf_vals.reshape(4, 2)}, dtype="BF16")
    got = SafetensorsFile(p).get("b")
    _check(got.shape == (4, 2) and np.array_equal(got.ravel(), bf_vals.astype(np.float64)),
           "BF16 round-trip %s" % got.ravel().tolist(), failures)
    # explicit bit patterns: 0x3F80 = 1.0, 0xC020 = -2.5, 0x7F80 = +inf
    bits = np.array([0x3F80, 0xC020, 0x0000, 0x7F80], dtype=np.uint16)
    _check(_bf16_bits_to_f32(bits).tolist() == [1.0, -2.5, 0.0, float("inf")],
           "BF16 bit patterns 3F80/C020/0000/7F80 -> 1, -2.5, 0, inf", failures)
    write_safetensors(p, {"s": np.float32(3.25).reshape(())}, dtype="F32")
    got = SafetensorsFile(p).get("s")
    _check(got.shape == () and float(got) == 3.25, "F32 scalar (shape [])", failures)

    # ---- activations / rope helpers --------------------------------------
    print("helpers:")
    _check(abs(gelu_tanh(np.array([1.0]))[0] - 0.8411919906082768) < 1e-12,
           "gelu_new(1.0)", failures)
    _check(abs(gelu_erf(np.array([1.0]))[0] - 0.8413447460685429) < 1e-12,
           "gelu(1.0) exact erf", failures)
    _check(np.array_equal(rotate_half(np.array([1.0, 2.0, 3.0, 4.0])),
                          np.array([-3.0, -4.0, 1.0, 2.0])),
           "rotate_half([1,2,3,4]) == [-3,-4,1,2]", failures)

    # ---- model consistency checks ----------------------------------------
    models = []
    cfg, t = _tiny_gpt2(rng)
    models.append(("gpt2 (no prefix, gelu_new)", cfg, t, 1, _naive_gpt2_layer0_attn))
    cfg2, t2 = _tiny_gpt2(rng, inner=24)
    cfg2.update(activation_function="gelu", scale_attn_by_inverse_layer_idx=True)
    models.append(("gpt2 (gelu, n_inner=24, inverse layer idx, 2 shards)",
                   cfg2, t2, 2, _naive_gpt2_layer0_attn))
    cfg, t = _tiny_neox(rng, parallel=True)
    models.append(("gpt_neox (prefix, parallel residual)", cfg, t, 1,
                   _naive_neox_layer0_attn))
    cfg, t = _tiny_neox(rng, parallel=False)
    models.append(("gpt_neox (prefix, sequential residual)", cfg, t, 1,
                   _naive_neox_layer0_attn))
    cfg, t = _tiny_llama(rng)
    models.append(("llama (GQA 4q/2kv, untied)", cfg, t, 1, _naive_llama_layer0_attn))
    cfg, t = _tiny_llama(rng, model_type="qwen2", qkv_bias=True, tie=True, KV=1)
    models.append(("qwen2 (q/k/v bias, tied, MQA, 3 shards)", cfg, t, 3,
                   _naive_llama_layer0_attn))
    cfg, t = _tiny_llama(rng, model_type="mistral", KV=4, prefix="")
    cfg["sliding_window"] = 4096
    models.append(("mistral (no prefix, MHA)", cfg, t, 1,
                   lambda c, tt, tok: _naive_llama_layer0_attn(c, tt, tok, prefix="")))

    for i, (label, cfg, tensors, shards, naive) in enumerate(models):
        print(label + ":")
        mdir = os.path.join(tmp, "model%d" % i)
        _write_model(mdir, cfg, tensors, shards)
        V = cfg["vocab_size"]
        B, T = 2, 7
        tokens = rng.integers(0, V, size=(B, T)).astype(np.int64)
        tpath = os.path.join(tmp, "tokens%d.npy" % i)
        np.save(tpath, tokens)
        odir = os.path.join(tmp, "out%d" % i)
        main_cli(mdir, tpath, odir)
        with open(os.path.join(odir, "info.json")) as f:
            info = json.load(f)
        L = info["num_layers"]
        d = info["d_model"]
        _check(info["model_type"] == cfg["model_type"] and info["vocab_size"] == V,
               "info.json %s" % json.dumps(info), failures)
        logits = np.load(os.path.join(odir, "logits.npy"))
        _check(logits.dtype == np.float32 and logits.shape == (B, T, V),
               "logits float32 %s" % (logits.shape,), failures)
        _check(bool(np.isfinite(logits).all()), "logits finite", failures)
        ld = lambda l, n: np.load(os.path.join(odir, "blocks.%d.hook_%s.npy" % (l, n)))
        ok_shape = all(ld(l, n).shape == (B, T, d) and ld(l, n).dtype == np.float32
                       for l in range(L)
                       for n in ("resid_pre", "resid_post", "attn_out", "mlp_out"))
        _check(ok_shape, "hook files exist, float32 [B, T, d_model]", failures)

        # full-precision values for the algebraic checks
        cfg_r, lg, hooks, _, _ = run_model(mdir, tokens)
        err_chain = max(float(np.abs(hooks[l][3] - hooks[l + 1][0]).max())
                        for l in range(L - 1))
        _check(err_chain == 0.0, "resid_post[l] == resid_pre[l+1] (max err %g)"
               % err_chain, failures)
        err_sum = max(float(np.abs(post - (pre + a + m)).max())
                      for pre, a, m, post in hooks)
        _check(err_sum < 1e-12, "resid_post == resid_pre + attn_out + mlp_out "
               "(max err %.2g)" % err_sum, failures)
        # embeddings check for block 0
        if cfg["model_type"] == "gpt2":
            emb = tensors["wte.weight"].astype(np.float64)[tokens] + \
                tensors["wpe.weight"].astype(np.float64)[np.arange(T)][None]
        elif cfg["model_type"] == "gpt_neox":
            emb = tensors["gpt_neox.embed_in.weight"].astype(np.float64)[tokens]
        else:
            key = [k for k in tensors if k.endswith("embed_tokens.weight")][0]
            emb = tensors[key].astype(np.float64)[tokens]
        _check(np.array_equal(hooks[0][0], emb), "resid_pre[0] == embeddings", failures)
        # independent loop-based attention for block 0
        ref = naive(cfg, tensors, tokens)
        err_attn = float(np.abs(ref - hooks[0][1]).max())
        _check(err_attn < 1e-10, "block-0 attn_out matches loop reference "
               "(max err %.2g)" % err_attn, failures)
        # causality: change the last token only
        tok2 = tokens.copy()
        tok2[:, -1] = (tok2[:, -1] + 1) % V
        _, lg2, hooks2, _, _ = run_model(mdir, tok2)
        err_c = float(np.abs(lg2[:, :-1] - lg[:, :-1]).max())
        for h1, h2 in zip(hooks, hooks2):
            for a1, a2 in zip(h1, h2):
                err_c = max(err_c, float(np.abs(a1[:, :-1] - a2[:, :-1]).max()))
        changed = float(np.abs(lg2[:, -1] - lg[:, -1]).max())
        _check(err_c == 0.0 and changed > 0.0,
               "causal: earlier positions unchanged (max diff %g), last changed (%.3g)"
               % (err_c, changed), failures)
        # batch independence: each row equals a batch-of-1 run
        _, lg1, _, _, _ = run_model(mdir, tokens[1:2])
        err_b = float(np.abs(lg1[0] - lg[1]).max())
        _check(err_b < 1e-12, "batch rows independent (max err %.2g)" % err_b, failures)

    # parallel vs sequential NeoX must differ (same weights)
    print("gpt_neox parallel vs sequential:")
    cfg, t = _tiny_neox(np.random.default_rng(7), parallel=True)
    _write_model(os.path.join(tmp, "np"), cfg, t)
    cfg_s = dict(cfg, use_parallel_residual=False)
    _write_model(os.path.join(tmp, "ns"), cfg_s, t)
    tok = np.array([[1, 2, 3, 4]], dtype=np.int64)
    _, lp, hp, _, _ = run_model(os.path.join(tmp, "np"), tok)
    _, ls, hs, _, _ = run_model(os.path.join(tmp, "ns"), tok)
    _check(np.array_equal(hp[0][1], hs[0][1]) and not np.allclose(hp[0][2], hs[0][2]),
           "same block-0 attn_out, different mlp_out", failures)

    # ---- error paths -----------------------------------------------------
    print("error paths:")
    import subprocess
    bad = os.path.join(tmp, "bad")
    _write_model(bad, {"model_type": "bert"}, {"x": np.zeros(2, np.float32)})
    tpath = os.path.join(tmp, "tok_err.npy")
    np.save(tpath, np.zeros((1, 3), dtype=np.int64))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--model", bad,
                        "--tokens", tpath, "--out", os.path.join(tmp, "o_bad")],
                       capture_output=True, text=True)
    _check(r.returncode != 0 and "unsupported model_type" in r.stderr
           and len(r.stderr.strip().splitlines()) == 1,
           "unsupported model_type -> rc=%d, stderr=%r" % (r.returncode, r.stderr.strip()),
           failures)
    cfg, t = _tiny_gpt2(np.random.default_rng(3), L=2)
    del t["h.1.mlp.c_fc.bias"], t["h.1.mlp.c_fc.weight"]
    miss = os.path.join(tmp, "missing")
    _write_model(miss, cfg, t)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--model", miss,
                        "--tokens", tpath, "--out", os.path.join(tmp, "o_miss")],
                       capture_output=True, text=True)
    _check(r.returncode != 0 and "missing tensor" in r.stderr
           and len(r.stderr.strip().splitlines()) == 1,
           "missing tensor -> rc=%d, stderr=%r" % (r.returncode, r.stderr.strip()),
           failures)
    cfg, t = _tiny_llama(np.random.default_rng(4), L=1)
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    rs = os.path.join(tmp, "ropescale")
    _write_model(rs, cfg, t)
    try:
        run_model(rs, np.zeros((1, 2), dtype=np.int64))
        ok = False
    except RefError as e:
        ok = "unsupported" in str(e)
    _check(ok, "rope_scaling set -> unsupported error", failures)

    print()
    if failures:
        print("SELF-TEST FAILED (%d): %s" % (len(failures), "; ".join(failures)))
        return 1
    print("SELF-TEST PASSED")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Hugging Face model directory")
    ap.add_argument("--tokens", help="int64 [B, T] .npy of token ids")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--self-test", action="store_true",
                    help="build tiny random models and check consistency")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not (args.model and args.tokens and args.out):
        ap.error("--model, --tokens and --out are required (or --self-test)")
    try:
        main_cli(args.model, args.tokens, args.out)
    except RefError as e:
        sys.stderr.write("lm_reference: error: %s\n" % str(e).replace("\n", " "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
