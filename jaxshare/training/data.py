"""Training data: tokenize a corpus once (cached as .npy), pack it into seq_len windows, and
serve batches in a deterministic per-epoch shuffle. The position (windows consumed so far) is
the whole data state: a checkpoint stores it and `batch_at(position)` replays from there.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Training data that cannot feed the requested run."""


def tokenizer_key(tokenizer) -> str:
    """A stable identity of a tokenizer (its full serialized form when it has one)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def _corpus_key(source: str) -> str:
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl") and path.is_file():
        st = path.stat()  # a local file re-tokenizes when it changes
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return source


def token_ids(source: str, tokenizer) -> np.ndarray:
    """int32 token ids of a corpus: a .npy of ids (used as is), or a corpus that `load_corpus`
    reads, tokenized once under the evaluation protocol and cached by tokenizer + corpus."""
    from jaxshare.io.fetch import cache_dir

    path = Path(source).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        ids = np.load(path)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"{source}: expected a 1-D array of integer token ids, got {ids.dtype} {ids.shape}")
        return ids.astype(np.int32)
    if tokenizer is None:
        raise DataError(f"{source}: the model has no tokenizer; pass token ids as a .npy file")
    key = hashlib.sha256(f"{tokenizer_key(tokenizer)}|{_corpus_key(source)}".encode()).hexdigest()[:20]
    cached = cache_dir() / "tokens" / f"{key}.npy"
    if cached.is_file():
        return np.load(cached)
    from jaxshare.data.corpora import join_documents, load_corpus
    from jaxshare.eval.perplexity import tokenize_corpus

    ids = tokenize_corpus(tokenizer, join_documents(load_corpus(source)))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.partial.npy")
    np.save(tmp, ids)
    tmp.replace(cached)  # atomic: a killed run never leaves a truncated cache entry
    return ids


def pack(ids: np.ndarray, seq_len: int, vocab_size: int | None = None, what: str = "corpus") -> np.ndarray:
    """[N, seq_len] non-overlapping windows (ragged tail dropped)."""
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"{what} has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    if vocab_size is not None and len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise DataError(f"{what} has token ids outside the model's vocabulary of {vocab_size}")
    return ids[: n * seq_len].reshape(n, seq_len)


class Batches:
    """Deterministic batches over packed windows: epoch e visits the windows in the order of
    permutation(seed, e); a batch is the next `per_step` windows, crossing epochs as needed."""

    def __init__(self, windows: np.ndarray, seed: int):
        self.windows = windows
        self.seed = seed
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))}
        return self._perm_cache[epoch]

    def batch_at(self, position: int, count: int) -> np.ndarray:
        """[count, seq_len] windows number position .. position+count-1 of the stream."""
        n = len(self.windows)
        idx = []
        for p in range(position, position + count):
            idx.append(self._perm(p // n)[p % n])
        return self.windows[np.asarray(idx)]


def steps_for(cfg, n_windows: int) -> int:
    """Optimizer steps of a run: steps, or tokens / tokens-per-step, or epochs * windows / per-step."""
    import math

    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.steps:
        return cfg.steps
    if cfg.tokens:
        return max(1, math.ceil(cfg.tokens / (per_step * cfg.seq_len)))
    return max(1, math.ceil(cfg.epochs * n_windows / per_step))
