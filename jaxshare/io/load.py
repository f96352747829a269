"""Resolve a MODEL argument: a registered name, an HF directory, a .gguf file, or a native checkpoint."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.params import Params
from jaxshare.io import families, registry
from jaxshare.io import gguf as gguf_io
from jaxshare.io.convert import (
    convert_gguf_to_native,
    convert_hf_to_native,
    release_memory,
)
from jaxshare.io.hf import CheckpointError, load_hf_dir, params_from_tensors
from jaxshare.io.kinds import keys, restore_hf
from jaxshare.io.native import is_native, load_native, save_native
from jaxshare.io.tokenizers import missing_tokenizer, tokenizer_from_dir
from jaxshare.storage.fetch import cache_dir, localize


@dataclass(frozen=True)
class Model:
    """A model as the library passes it around: frozen, so a method returns a new Model rather than
    editing the one it was given (`dataclasses.replace(m, params=...)`)."""
    cfg: ModelConfig
    params: Params
    tokenizer: Any = None  # a transformers tokenizer, or None when the source has none
    meta: dict = field(default_factory=dict)  # a native checkpoint's jaxshare.json (its "extra": method manifests)
    source: Path | None = None  # the file or directory the weights came from (None: built in memory)
    kind: str = "memory"  # registered | native | hf | gguf | memory
    no_tokenizer: str | None = None  # why `tokenizer` is None, for the error of a command that needs one

    def need_tokenizer(self, purpose: str):
        """The tokenizer, or one line naming the model, what is missing and what to do."""
        if self.tokenizer is None:
            why = self.no_tokenizer or "no tokenizer files"
            raise CheckpointError(f"{self.source}: {why}, and {purpose} needs a tokenizer; copy tokenizer.json and "
                                  f"tokenizer_config.json from the model's original repository into {self.source}")
        return self.tokenizer

    @property
    def extra(self) -> dict:
        """The checkpoint metadata's extra (method manifests and provenance); {} when none."""
        return dict(self.meta.get("extra") or {})


LoadedModel = Model  # the name before Model was frozen; kept for one release


def convert_gguf(path: Path, dtype="fp32") -> tuple[ModelConfig, Params, Any]:
    cfg = families.config_from_gguf_dict(gguf_io.gguf_hf_config(path))  # the header only: refuses early
    tokenizer = gguf_io.gguf_tokenizer(path)  # before the params: its transient peak does not stack on them
    release_memory()
    params = params_from_tensors(cfg, gguf_io.iter_gguf_tensors(path), dtype, str(path))
    return cfg, params, tokenizer


def registered_native(name: str) -> Path:
    """The cached native checkpoint of a registered model, converting its GGUF once."""
    out = cache_dir() / "models" / name / "native"
    if not is_native(out):
        gguf = registry.registered_gguf(name)
        convert_gguf_to_native(gguf, out, "fp32", extra={"converted_from": gguf.name, "registered": name},
                               overwrite=True)
    return out


def resolve(spec: str) -> tuple[str, Path]:
    """(kind, path) for a MODEL argument, without loading weights."""
    spec = os.fspath(spec)
    if "://" in spec:  # gs://, s3://, memory://, ...: a cached local copy, as training reads it
        spec = localize(spec, "model")
    try:
        spec.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"model path {os.fsencode(spec)!r} is not UTF-8 encodable (its name holds bytes that "
                              "are not UTF-8 text): rename it") from None
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return "gguf", path
        if path.is_dir() and is_native(path):
            return "native", path
        if path.is_dir() and (path / "config.json").exists():
            return "hf", path
        raise CheckpointError(f"{spec}: not a .gguf file, a jaxshare checkpoint, or an HF model directory")
    if registry.is_registered(spec):
        return "registered", Path(spec)
    raise CheckpointError(f"cannot load {spec!r}: no such file or directory, and not a registered model "
                          f"(registered: {', '.join(sorted(registry.REGISTERED))})")


def load_model(spec, dtype="fp32", allow_bin: bool = False) -> Model:
    """Load any supported MODEL argument (a registered name, an HF directory, a .gguf file, a native
    checkpoint) into (config, params, tokenizer). dtype: anything `as_dtype` takes. An HF export of
    a compressed model comes back compressed (its manifests, e.g. sharing.json, are applied)."""
    spec, dtype = str(spec), as_dtype(dtype)
    kind, path = resolve(spec)  # a URL comes back as its cached local copy
    if kind == "registered":
        path = registered_native(spec)
    if kind in ("registered", "native"):
        cfg, params, meta = load_native(path, dtype=dtype)
        why = (meta.get("extra") or {}).get("no_tokenizer") or missing_tokenizer(path)
        return Model(cfg, params, tokenizer_from_dir(path), meta, path, kind, why)
    if kind == "gguf":
        cfg, params, tok = convert_gguf(path, dtype)
        return Model(cfg, params, tok, {}, path, kind)
    cfg, params = load_hf_dir(path, dtype, allow_bin=allow_bin)
    params, extra = restore_hf(cfg, params, path)
    return Model(cfg, params, tokenizer_from_dir(path), {"extra": extra} if extra else {}, path, kind,
                 missing_tokenizer(path))


def convert(src, out, dtype="fp32", allow_bin: bool = False, overwrite: bool = False):
    """(out, cfg, source path) for `jaxshare convert`: streamed from HF/GGUF; a native checkpoint
    (or registered name) is loaded leaf by leaf and written the same way."""
    kind, path = resolve(src)
    extra = {"converted_from": str(path)}
    if kind in ("hf", "native") and missing_tokenizer(path):
        # a usable model without a tokenizer is legal, but eval, generate and train will refuse it:
        # say so now and record it, rather than let the checkpoint look complete
        extra["no_tokenizer"] = f"converted without a tokenizer ({path} has no tokenizer.json or tokenizer_config.json)"
        print(f"warning: {path} has neither tokenizer.json nor tokenizer_config.json; {out} gets no tokenizer, "
              "so eval, generate, calibration and training on text will refuse it until you copy those files "
              "into it", file=sys.stderr)
    if kind == "gguf":
        return (*convert_gguf_to_native(path, out, dtype, extra, overwrite), path)
    if kind == "hf":
        # an HF export of a compressed model carries manifests (sharing.json, ...): load it whole
        if not any((Path(path) / f"{k}.json").is_file() for k in keys()):
            return (*convert_hf_to_native(path, out, dtype, extra, overwrite, allow_bin), path)
    m = load_model(src, dtype, allow_bin=allow_bin)
    extra["converted_from"] = str(m.source)
    return save_native(out, m.cfg, m.params, m.tokenizer, extra=extra, overwrite=overwrite), m.cfg, m.source
