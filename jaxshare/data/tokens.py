"""Token ids of a corpus, tokenized once, and the windows every consumer cuts from them.

The protocol (docs/methods.md): documents joined with "\\n\\n" (`join_documents`), tokenized once
without special tokens, cut into non-overlapping windows of seq_len tokens, ragged tail dropped.
Perplexity, parity, attention maps, calibration and training all read their tokens this way.
`token_ids` caches the ids of a named corpus or file per tokenizer (as .npy), so a training run
or a sweep tokenizes a corpus once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jaxshare.data.corpora import join_documents, load_corpus
from jaxshare.errors import JaxshareError
from jaxshare.storage.fetch import cache_dir


class DataError(JaxshareError, ValueError):
    """Token data that cannot feed the requested windows."""


def tokenize_corpus(tokenizer, text) -> np.ndarray:
    """int32 ids of a text, or of a list of documents joined under the protocol; no special tokens."""
    if tokenizer is None:  # callers holding a LoadedModel say more through its need_tokenizer()
        raise DataError("the model has no tokenizer (no tokenizer.json or tokenizer_config.json), so text "
                        "cannot be tokenized; copy those files into the model's directory")
    if not isinstance(text, str):
        text = join_documents(list(text))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int32)


INT32_IDS = 2**31  # ids are int32 on the device; a larger one cannot be any model's token


def check_token_range(ids: np.ndarray, vocab_size: int | None, what: str) -> None:
    """Refuse ids outside [0, vocab_size) (outside int32 without a vocab_size), on the array as given:
    a cast to int32 first would wrap 2**32 + 5 to 5, and a gather on the device clamps an id >= vocab."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    limit = INT32_IDS if vocab_size is None else vocab_size
    if lo >= 0 and hi < limit:
        return
    bad = lo if lo < 0 else hi
    if vocab_size is None:
        raise DataError(f"{what} has token id {bad}, which is no token of any model (ids are 0 <= id < 2**31); "
                        "tokenize it with the model's tokenizer")
    raise DataError(f"{what} has token id {bad}, outside the model's vocabulary of {vocab_size} "
                    f"(0 <= id < {vocab_size}); tokenize it with the model's own tokenizer")


def token_windows(ids: np.ndarray, seq_len: int, max_windows: int | None = None, vocab_size: int | None = None,
            what: str = "the corpus") -> np.ndarray:
    """[N, seq_len] non-overlapping windows (ragged tail dropped), the first max_windows of them.
    With vocab_size, ids outside the vocabulary are refused; `what` names the data in errors."""
    if max_windows is not None and max_windows < 1:
        raise DataError(f"max_windows must be at least 1 (or None for all), got {max_windows}")
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"{what} has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    if vocab_size is not None:
        check_token_range(ids, vocab_size, what)
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seq_len].reshape(n, seq_len)


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


def token_ids(source: str, tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """int32 token ids of a corpus: a .npy of ids (used as is, refused outside [0, vocab_size)),
    or a corpus that `load_corpus` reads, tokenized once under the protocol and cached by tokenizer + corpus."""
    path = Path(source).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        ids = np.load(path)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"{source}: expected a 1-D array of integer token ids, got {ids.dtype} {ids.shape}")
        check_token_range(ids, vocab_size, source)  # before the cast, which would wrap ids >= 2**31
        return ids.astype(np.int32)
    if tokenizer is None:
        raise DataError(f"{source}: the model has no tokenizer; pass token ids as a .npy file")
    key = hashlib.sha256(f"{tokenizer_key(tokenizer)}|{_corpus_key(source)}".encode()).hexdigest()[:20]
    cached = cache_dir() / "tokens" / f"{key}.npy"
    if cached.is_file():
        return np.load(cached)

    ids = tokenize_corpus(tokenizer, load_corpus(source))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.partial.npy")
    np.save(tmp, ids)
    tmp.replace(cached)  # atomic: a killed run never leaves a truncated cache entry
    return ids
