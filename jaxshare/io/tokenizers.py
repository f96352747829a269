"""A checkpoint directory's tokenizer: what counts as having one, and loading it with a one-line error."""
from __future__ import annotations

import json
from pathlib import Path

from jaxshare.errors import CheckpointError
from jaxshare.io.families import ADAPTERS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def missing_tokenizer(path: Path) -> str | None:
    """Why the directory gives no tokenizer (None when it holds tokenizer files)."""
    if any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        return None
    return "neither tokenizer.json nor tokenizer_config.json (nor tokenizer.model) is there"


def _backend_class(path: Path):
    """The tokenizer class AutoTokenizer would pick, where that is certain without asking it; else None.

    AutoTokenizer imports transformers' configuration machinery, which imports torch where it is
    installed: 2 s of `jaxshare generate`'s 3.6 s tokenizer load (2.7 s of gemma3-270m's 6.6 s).
    With no auto_map (remote code) it ends at:
    - TokenizersBackend, for a tokenizer_config.json that names it (what transformers 5 writes for
      most models) and a model type of ours or none;
    - the named class itself, for a native checkpoint (no config.json, so no model type for
      AutoTokenizer to weigh against the name) naming a tokenizers-backed class that transformers
      exports (GemmaTokenizer, Qwen2Tokenizer, ...). LlamaTokenizer is left to AutoTokenizer: it
      swaps in TokenizersBackend when the tokenizer.json is byte-level."""
    try:
        tc = json.loads((path / "tokenizer_config.json").read_text())
        model_type = json.loads((path / "config.json").read_text()).get("model_type") \
            if (path / "config.json").is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(tc, dict) or "auto_map" in tc or not (path / "tokenizer.json").is_file():
        return None
    name = tc.get("tokenizer_class")
    import transformers  # deferred: transformers costs ~0.4 s to import; its classes load lazily

    if name == "TokenizersBackend" and (model_type is None or model_type in ADAPTERS):
        return transformers.TokenizersBackend
    if model_type is not None or (path / "config.json").is_file() or not isinstance(name, str) \
            or not name.isidentifier() or name.removesuffix("Fast") == "LlamaTokenizer":
        return None
    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, transformers.TokenizersBackend) else None


def tokenizer_from_dir(path: Path):
    """The directory's tokenizer, or None when it has no tokenizer files at all (see missing_tokenizer)."""
    path = Path(path)
    if missing_tokenizer(path):
        return None
    try:
        backend = _backend_class(path)
        if backend is not None:
            return backend.from_pretrained(str(path))
        from transformers import AutoTokenizer  # deferred: transformers costs ~0.4 s to import

        return AutoTokenizer.from_pretrained(str(path))
    except (ValueError, OSError, ImportError, KeyError, TypeError) as e:
        present = ", ".join(f for f in TOKENIZER_FILES if (path / f).exists())
        # transformers then says "install sentencepiece or tiktoken": it fell back to converting a
        # slow tokenizer, but what is missing is the fast tokenizer's own file
        why = ("no tokenizer.json" if not (path / "tokenizer.json").exists()
               else f"its tokenizer does not load ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
        raise CheckpointError(f"{path}: {why} (found {present}); copy tokenizer.json and tokenizer_config.json "
                              f"from the model's original repository into {path}") from None
