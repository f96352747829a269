"""Calibration statistics for Basis Sharing: X^T X of every linear layer's input, in float32.

The grams come from our own jit-compiled forward: `gram_layer` runs `decoder_layer` with each
weight wrapped in a `Tap`, which model.linear asks to apply itself; the tap adds x^T x to this
layer's grams and returns the normal product. The grams leave the layer scan as its stacked
second output ([L, d_in, d_in] per input), so no hooks and no host round trips per layer.
Inputs: attn_in (q, k, v), o_in, mlp_in (up, gate), down_in.

At scale the grams do not fit at once (Qwen2-1.5B's down_in alone: 28 x 8960^2 x 4 B = 9 GB), so
`collect_grams_to_disk` runs the layers in chunks: the residual stream of every calibration window
is kept between chunks ([N, T, D], small), each chunk's grams are accumulated, written to the
on-disk cache one .npy per layer and input, and dropped. `GramStore` reads them back lazily, a
group of layers at a time, which is how `compress` consumes them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import weakref
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.core.bank import split_banks
from jaxshare.core.compressed import SelfApplying
from jaxshare.core.config import ModelConfig
from jaxshare.core.model import _per_layer_rope, decoder_layer, embed, hidden_states, linear, rope_tables
from jaxshare.data.corpora import join_documents, load_corpus
from jaxshare.data.tokens import DataError, check_token_range, tokenize_corpus
from jaxshare.eval.perplexity import rss_bytes
from jaxshare.storage.fetch import cache_dir

INPUTS = ("attn_in", "o_in", "mlp_in", "down_in")
_TAPPED = {"attn_in": ("attn", "wq"), "o_in": ("attn", "wo"), "mlp_in": ("mlp", "w_up"), "down_in": ("mlp", "w_down")}


class Tap(SelfApplying):
    """A weight that records its input's gram before multiplying (lives only inside one trace)."""

    def __init__(self, w, name: str, sink: dict):
        self.w, self.name, self.sink = w, name, sink

    def apply(self, x, dense_fn):
        x2 = x.reshape(-1, int(np.prod(x.shape[2:]))).astype(jnp.float32)
        self.sink[self.name] = jnp.einsum("ni,nj->ij", x2, x2, precision=jax.lax.Precision.HIGHEST)
        return linear(x, self.w, dense_fn)


def gram_layer(x, layer, cfg, rope, q_pos_BT, window, kv=None):
    """decoder_layer that also returns {input: x^T x} of this layer."""
    sink: dict = {}
    attn, mlp = layer.attn, layer.mlp
    for name, (mod, leaf) in _TAPPED.items():
        part = attn if mod == "attn" else mlp
        part = dataclasses.replace(part, **{leaf: Tap(getattr(part, leaf), name, sink)})
        attn, mlp = (part, mlp) if mod == "attn" else (attn, part)
    x, _ = decoder_layer(x, dataclasses.replace(layer, attn=attn, mlp=mlp), cfg, rope, q_pos_BT, window, kv)
    return x, {k: sink[k] for k in INPUTS}


@partial(jax.jit, static_argnames=("cfg",), donate_argnames=("acc",))
def _accumulate(acc, params, cfg: ModelConfig, tokens_BT):
    _, grams = hidden_states(params, cfg, tokens_BT, layer_fn=gram_layer)
    return {k: acc[k] + grams[k] for k in INPUTS}


def calibration_windows(tokenizer, docs: list[str], n_windows: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """n_windows non-overlapping windows [N, T] drawn with a fixed seed from the joined corpus.
    Only as much text is tokenized as the windows need (a prefix, grown if short)."""
    text = join_documents(docs)
    chars = max(n_windows * seq_len * 8, 1 << 16)
    while True:
        ids = tokenize_corpus(tokenizer, text[:chars])
        if len(ids) // seq_len >= n_windows or chars >= len(text):
            break
        chars *= 2
    avail = len(ids) // seq_len
    if avail < n_windows:
        raise DataError(f"calibration text has {len(ids)} tokens: {avail} windows of {seq_len}, "
                        f"fewer than the {n_windows} asked for")
    pick = np.sort(np.random.default_rng(seed).choice(avail, n_windows, replace=False))
    return ids[: avail * seq_len].reshape(avail, seq_len)[pick]


def unseen_windows(tokenizer, docs: list[str], n_windows: int, seq_len: int, seen: np.ndarray,
                   seed: int = 0) -> np.ndarray:
    """n_windows windows [N, T] of the same corpus that are none of `seen` (the calibration windows
    a fit was made on): scoring a calibrated candidate on its own fitting tokens is optimistic (a
    least-squares compensation of 1,536 channels fitted on 2,048 tokens predicted +0.02 nats and
    measured +0.78 on held-out text). Windows lie on one token grid, so a window is either one of
    `seen` or shares none of its tokens."""
    draw = calibration_windows(tokenizer, docs, len(seen) + n_windows, seq_len, seed + 1)
    known = {w.tobytes() for w in np.asarray(seen, draw.dtype)}
    return np.stack([w for w in draw if w.tobytes() not in known][:n_windows])


def collect_grams(params, cfg: ModelConfig, windows: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
    """{input: [L, d_in, d_in] float32} summed over all calibration tokens."""
    d_o = cfg.n_heads * cfg.head_dim
    sizes = {"attn_in": cfg.d_model, "o_in": d_o, "mlp_in": cfg.d_model, "down_in": cfg.d_ff}
    acc = {k: jnp.zeros((cfg.n_layers, d, d), jnp.float32) for k, d in sizes.items()}
    n = len(windows)
    for i in tqdm(range(0, n, batch_size), desc="calibration", unit="batch", leave=False):
        acc = _accumulate(acc, params, cfg, jnp.asarray(windows[i:i + batch_size]))
        jax.block_until_ready(acc)  # an honest progress bar (dispatch is asynchronous)
    return {k: np.asarray(v) for k, v in acc.items()}


@partial(jax.jit, static_argnames=("cfg",))
def _embed(params, cfg: ModelConfig, tokens_BT):
    B, T = tokens_BT.shape
    return embed(params, cfg, tokens_BT, jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)), jnp.float32)


@partial(jax.jit, static_argnames=("cfg", "n"), donate_argnames=("acc",))
def _chunk(acc, params, cfg: ModelConfig, x_BTD, start, n: int):
    """Layers [start, start + n) of the decoder on the residual stream x (the scan of `hidden_states`,
    restricted to a range; start is traced, so every chunk of n layers shares one compilation):
    (x after the last of them, acc + these layers' grams [n, d, d])."""
    B, T = x_BTD.shape[:2]
    q_pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    rope = rope_tables(cfg, q_pos_BT) if cfg.positions == "rope" else None
    windows_L = jnp.asarray(cfg.layer_windows, jnp.int32)
    layer_rope = _per_layer_rope(cfg, rope, q_pos_BT)  # local/global RoPE bases (Gemma3), as hidden_states
    layers_xs, rebuild = split_banks(params.layers)

    def body(x, i):  # one layer's weights sliced per step: the chunk is never copied whole
        layer = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers_xs)
        return gram_layer(x, rebuild(layer), cfg, layer_rope(windows_L[i]), q_pos_BT, windows_L[i])

    x, grams = jax.lax.scan(body, x_BTD, start + jnp.arange(n, dtype=jnp.int32))
    return x, {k: acc[k] + grams[k] for k in INPUTS}


def gram_sizes(cfg: ModelConfig) -> dict[str, int]:
    return {"attn_in": cfg.d_model, "o_in": cfg.n_heads * cfg.head_dim, "mlp_in": cfg.d_model, "down_in": cfg.d_ff}


def layer_gram_bytes(cfg: ModelConfig) -> int:
    return 4 * sum(d * d for d in gram_sizes(cfg).values())


def collect_grams_to_disk(params, cfg: ModelConfig, windows: np.ndarray, out_dir, batch_size: int = 4,
                          budget_bytes: int = 1 << 30) -> None:
    """Write <input>.<layer>.npy (float32 [d, d]) for every layer into out_dir, holding the grams of
    at most a chunk of layers (about budget_bytes, counted twice for the scan's output) at once."""
    out_dir = Path(out_dir)
    sizes, L, n = gram_sizes(cfg), cfg.n_layers, len(windows)
    per_chunk = max(1, min(L, budget_bytes // (2 * layer_gram_bytes(cfg))))
    x_NTD = np.concatenate([np.asarray(_embed(params, cfg, jnp.asarray(windows[i:i + batch_size])))
                            for i in range(0, n, batch_size)])
    bar = tqdm(total=L * (-(-n // batch_size)), desc="calibration", unit="layer-batch", leave=False)
    for start in range(0, L, per_chunk):
        stop = min(L, start + per_chunk)
        acc = {k: jnp.zeros((stop - start, d, d), jnp.float32) for k, d in sizes.items()}
        for i in range(0, n, batch_size):
            x, acc = _chunk(acc, params, cfg, jnp.asarray(x_NTD[i:i + batch_size]), jnp.int32(start), stop - start)
            x_NTD[i:i + batch_size] = np.asarray(x)
            jax.block_until_ready(acc)  # an honest progress bar (dispatch is asynchronous)
            bar.update(stop - start)
        for k in INPUTS:
            g = np.asarray(acc[k])
            for j in range(stop - start):
                np.save(out_dir / f"{k}.{start + j}.npy", g[j])
            del g
        del acc
    bar.close()


class LayerGrams:
    """The grams of one input over the layers, read from disk on indexing: g[i] ([d, d]), g[[i, j]]
    or g[a:b] ([n, d, d]); np.asarray(g) reads them all."""

    def __init__(self, directory, name: str, n_layers: int):
        self.directory, self.name, self.n_layers = directory, name, n_layers

    def __len__(self) -> int:
        return self.n_layers

    def _one(self, i: int) -> np.ndarray:
        return np.load(self.directory / f"{self.name}.{int(i)}.npy", allow_pickle=False)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._one(idx)
        layers = range(self.n_layers)[idx] if isinstance(idx, slice) else list(idx)
        return np.stack([self._one(i) for i in layers])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class GramStore(dict):
    """{input: LayerGrams} over a calibration cache directory (what `calibrate` returns)."""

    def __init__(self, directory, n_layers: int):
        super().__init__({k: LayerGrams(directory, k, n_layers) for k in INPUTS})
        self.directory = directory


def cache_key(model_id: str, data: str, n_windows: int, seq_len: int, seed: int) -> str:
    blob = json.dumps([model_id, data, n_windows, seq_len, seed, 2])  # 2: a directory of per-layer grams
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def model_identity(loaded) -> str:
    """The model's source plus a fingerprint of a few weights (a changed file gives a new key)."""
    p = loaded.params
    probe = np.asarray(jax.tree_util.tree_leaves(p)[0][:8]).ravel()[:4096].astype(np.float64)
    return f"{loaded.source}|{loaded.cfg.family}|{loaded.cfg.n_layers}|{probe.sum():.10e}|{np.abs(probe).sum():.10e}"


def cache_path(loaded, data: str, n_windows: int, seq_len: int, seed: int):
    """Where calibrate() keeps (or finds) these statistics: a directory, complete when it exists."""
    return cache_dir() / "calib" / cache_key(model_identity(loaded), data, n_windows, seq_len, seed)


def calibrate(loaded, data: str = "books:train", n_windows: int = 256, seq_len: int = 2048, seed: int = 0,
              batch_size: int = 4, use_cache: bool = True, budget_bytes: int = 1 << 30) -> tuple[dict, dict]:
    """Grams for a LoadedModel as a GramStore ({input: per-layer grams read from disk on demand}),
    cached under cache_dir()/calib/ by model and data identity. Without the cache they are written
    to a temporary directory that lives as long as the returned store."""
    info = {"data": data, "windows": n_windows, "seq_len": seq_len, "seed": seed}
    path = cache_path(loaded, data, n_windows, seq_len, seed)
    L = loaded.cfg.n_layers
    if use_cache and path.is_dir():
        return GramStore(path, L), {**info, "cached": True}
    windows = calibration_windows(loaded.need_tokenizer("calibration"), load_corpus(data), n_windows, seq_len, seed)
    check_token_range(windows, loaded.cfg.vocab_size, f"calibration data {data}")  # a tokenizer with added tokens
    parent = path.parent if use_cache else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".partial-calib-"))
    try:
        collect_grams_to_disk(loaded.params, loaded.cfg, windows, tmp, batch_size, budget_bytes)
        if use_cache:
            tmp.rename(path)  # whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store = GramStore(path if use_cache else tmp, L)
    if not use_cache:
        weakref.finalize(store, shutil.rmtree, tmp, True)
    return store, {**info, "cached": False}


def _matmul_rate() -> float:
    """FLOP/s of this backend on a calibration-shaped fp32 matmul (a ~0.1 s probe)."""
    a = jnp.ones((2048, 576), jnp.float32)
    b = jnp.ones((576, 1536), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(5):  # the median: one slow or fast moment of a shared machine does not decide
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / max(float(np.median(times)), 1e-9)


# Measured on SmolLM2-135M, 2 CPU cores shared with other jobs (load ~13): 16, 32 and 64 x 512 ran at
# 0.46x, 1.07x and 0.98x the probe's rate taken just before (158 s, 430 s, 741 s). 0.7 errs long; expect
# up to ~2x either way on a busy machine. Peak RSS was 2.0 GiB for all three (estimate: 2.3 GiB).
EFFICIENCY, COMPILE_S = 0.7, 8.0


def estimate(cfg: ModelConfig, n_windows: int, seq_len: int, batch_size: int = 4, budget_bytes: int = 1 << 30) -> dict:
    """Rough time and peak memory of calibrate() before it runs: FLOPs of the forward and the grams
    at this backend's measured matmul rate; memory = what the process holds now + one chunk of
    layers' grams (twice: the scan's output) + the residual stream of every window + one batch's
    layer activations (the scan keeps one layer's at a time, attention scores included)."""
    L, d, f, h = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim
    kv = cfg.n_kv_heads * cfg.head_dim
    tokens = n_windows * seq_len
    linear = d * (h + 2 * kv) + h * d + 3 * d * f                 # weights a token meets per layer
    grams = 2 * d * d + h * h + f * f                                # the four x^T x per layer
    attn = 2 * seq_len * h                                           # scores and weighted sum, per token
    flops = 2 * L * tokens * (linear + grams + attn)
    per_layer = layer_gram_bytes(cfg)
    gram_bytes = 2 * per_layer * max(1, min(L, budget_bytes // (2 * per_layer))) + 4 * tokens * d
    b = min(batch_size, n_windows)
    act_bytes = 4 * b * seq_len * (8 * d + 3 * f + 2 * cfg.n_heads * seq_len)
    return {"tokens": tokens, "flops": flops, "backend": jax.default_backend(),
            "seconds": COMPILE_S + flops / (EFFICIENCY * _matmul_rate()),
            "peak_bytes": rss_bytes() + gram_bytes + act_bytes}
