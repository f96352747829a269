"""A checkpoint directory's tokenizer: what counts as having one, and loading it with a one-line error."""
from __future__ import annotations

from pathlib import Path

from jaxshare.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def missing_tokenizer(path: Path) -> str | None:
    """Why the directory gives no tokenizer (None when it holds tokenizer files)."""
    if any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        return None
    return "neither tokenizer.json nor tokenizer_config.json (nor tokenizer.model) is there"


def tokenizer_from_dir(path: Path):
    """The directory's tokenizer, or None when it has no tokenizer files at all (see missing_tokenizer)."""
    from transformers import AutoTokenizer  # deferred: transformers costs ~0.4 s to import

    path = Path(path)
    if missing_tokenizer(path):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (ValueError, OSError, ImportError, KeyError, TypeError) as e:
        present = ", ".join(f for f in TOKENIZER_FILES if (path / f).exists())
        # transformers then says "install sentencepiece or tiktoken": it fell back to converting a
        # slow tokenizer, but what is missing is the fast tokenizer's own file
        why = ("no tokenizer.json" if not (path / "tokenizer.json").exists()
               else f"its tokenizer does not load ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
        raise CheckpointError(f"{path}: {why} (found {present}); copy tokenizer.json and tokenizer_config.json "
                              f"from the model's original repository into {path}") from None
