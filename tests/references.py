"""transformers' own load of a registered GGUF, made once per machine and reused by every test.

transformers' GGUF loader takes about 20 s for SmolLM2 on 2 cores (most of it parsing the
49k-string vocabulary twice and building gguf's tensor-name maps); four test files compared
against it, each loading it again. The first load is saved as fp32 safetensors (a lossless copy
of transformers' dequantization) under the cache, keyed by the GGUF's size and mtime and the
transformers version; later tests read that copy in about a second. That first load runs on every
fresh machine (CI's), so it parses once what transformers parses twice or more: a `gguf.GGUFReader` for
the config and another for the weights (each parses the whole vocabulary, 262k strings for
Gemma3), and gguf's tensor-name map once per module of the model (397 times for SmolLM2). That
took Gemma3's first load from 44.0 to 24.6 s and SmolLM2's from 18.1 to 11.8 s on 2 cores, with
byte-identical saved weights. `jaxshare parity`, the
user's command, still runs the GGUF loader itself (tests/slow/test_real_model.py runs it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("JAXSHARE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxshare")
    return Path(base) / "test-references"


@contextlib.contextmanager
def parsed_once():
    """transformers' loader takes `gguf.GGUFReader` and `gguf.get_tensor_name_map` from the package
    at each call and only reads what they return, so within this block each file's reader and each
    (architecture, depth)'s name map is built once and shared: the same fields, tensors and names."""
    import gguf

    real = {"GGUFReader": gguf.GGUFReader, "get_tensor_name_map": gguf.get_tensor_name_map}

    def once(make):
        made = {}

        def shared(*args, **kw):
            key = (tuple(os.fspath(a) if isinstance(a, os.PathLike) else a for a in args), tuple(sorted(kw.items())))
            if key not in made:
                made[key] = make(*args, **kw)
            return made[key]
        return shared

    for name, make in real.items():
        setattr(gguf, name, once(make))
    try:
        yield
    finally:
        for name, make in real.items():
            setattr(gguf, name, make)


def gguf_reference(name: str):
    """A fresh (mutable) transformers model of registered model `name`, fp32, in eval mode."""
    import torch
    import transformers

    from jaxshare.io import registry

    gguf = registry.registered_gguf(name)
    st = gguf.stat()
    out = cache_root() / f"{name}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}"
    if not (out / "config.json").is_file():
        with parsed_once():
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                      dtype=torch.float32)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        # save_pretrained refuses a GGUF-loaded model ("quantized with gguf"): its weights are
        # plain fp32 after the loader's dequantization, so write them and the config directly
        from safetensors.torch import save_model

        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        type(model.config).from_dict(cfg).save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
        try:
            os.replace(tmp, out)  # atomic; the other xdist worker may have written it first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return model.eval()
    return transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
