"""Parity against transformers (torch, fp32) on the same source and the same tokens."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import tempfile
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxshare.core.model import forward
from jaxshare.data.tokens import token_windows, tokenize_corpus
from jaxshare.errors import JaxshareError
from jaxshare.eval.perplexity import PROTOCOL, check_finite_ppl, check_seq_len
from jaxshare.io import registry
from jaxshare.io.convert import release_memory
from jaxshare.io.hf import export_hf
from jaxshare.io.load import LoadedModel


class ReferenceMissing(JaxshareError, ImportError):
    """The transformers reference needs torch (and accelerate for GGUF files); both are optional."""


def check_reference(loaded: LoadedModel) -> None:
    """Raise ReferenceMissing with the install line when the reference side cannot run here."""
    need = ["torch"] + (["accelerate"] if loaded.kind in ("gguf", "registered") else [])
    missing = [n for n in need if importlib.util.find_spec(n) is None]
    if missing:
        raise ReferenceMissing(f"the transformers reference needs {' and '.join(missing)}: "
                               f"pip install torch==2.13.0 'jaxshare[reference]'")


def reference_model(loaded: LoadedModel, hf_dir=None):
    """The transformers model for the same weights: its GGUF loader for GGUFs, from_pretrained otherwise
    (hf_dir: an HF export of a native checkpoint made beforehand)."""
    # deferred: torch is the optional extra [reference]; transformers' model classes cost seconds to import
    import torch
    from transformers import AutoModelForCausalLM

    if loaded.kind in ("gguf", "registered"):
        gguf = loaded.source
        if loaded.kind == "registered":
            gguf = registry.registered_gguf(loaded.meta["extra"]["registered"])
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    elif loaded.kind == "hf":
        model = AutoModelForCausalLM.from_pretrained(str(loaded.source), dtype=torch.float32)
    elif hf_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    else:  # native: the reference reads our HF export of it

        with tempfile.TemporaryDirectory() as tmp:
            out = export_hf(loaded.params, loaded.cfg, Path(tmp) / "hf")
            model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    return model.eval()


def _nll_sum(logits_TV: np.ndarray, targets_T: np.ndarray, rows: int = 64) -> float:
    total = 0.0
    for a in range(0, len(targets_T), rows):  # float64 a block of rows at a time (a 151k vocabulary is large)
        x = logits_TV[a:a + rows].astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        total += float(-logp[np.arange(len(x)), targets_T[a:a + rows]].sum())
    return total


def run_parity(loaded: LoadedModel, docs: list[str], seq_len: int, max_windows: int = 2,
               free_params: bool = False, reference=None) -> dict:
    """Max |logit diff| and both PPLs over the first max_windows windows, at highest matmul precision.

    The two sides run in sequence: our logits first, then (with free_params, which deletes the
    loaded params' buffers) the reference alone, so the two models are never in memory together.
    reference: `reference_model(loaded)` already built by the caller (it is built here otherwise)."""
    check_reference(loaded)
    import torch  # deferred: optional extra [reference] (check_reference above names it when missing)

    check_seq_len(loaded.cfg, seq_len)
    windows = token_windows(tokenize_corpus(loaded.need_tokenizer("parity"), docs), seq_len, max_windows)
    ours = []
    with jax.default_matmul_precision("highest"):
        for w in tqdm(windows, desc="parity (jaxshare)", unit="window", leave=False):
            ours.append(np.asarray(forward(loaded.params, loaded.cfg, w[None]))[0])
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = None
        if loaded.kind == "native" and reference is None:  # the reference reads our HF export, made first

            hf_dir = export_hf(loaded.params, loaded.cfg, Path(tmp) / "hf")
        if free_params:
            for leaf in jax.tree_util.tree_leaves(loaded.params):
                leaf.delete()
            loaded = dataclasses.replace(loaded, params=None)

            release_memory()
        ref = reference if reference is not None else reference_model(loaded, hf_dir)
    max_diff, nll_jax, nll_ref = 0.0, 0.0, 0.0
    for w, got in tqdm(list(zip(windows, ours)), desc="parity (transformers)", unit="window", leave=False):
        with torch.no_grad():
            want = ref(torch.as_tensor(w[None].astype(np.int64))).logits[0].float().numpy()
        max_diff = max(max_diff, float(np.max(np.abs(got - want))))
        nll_jax += _nll_sum(got[:-1], w[1:])
        nll_ref += _nll_sum(want[:-1], w[1:])
        del want
    tokens = len(windows) * (seq_len - 1)

    ppl_jax, ppl_ref = (math.exp(x / tokens) if x / tokens < 709 else math.inf if x == x else math.nan
                        for x in (nll_jax, nll_ref))
    check_finite_ppl(ppl_jax, nll_jax / tokens, "jaxshare perplexity")
    check_finite_ppl(ppl_ref, nll_ref / tokens, "reference (transformers) perplexity")
    return {"max_abs_logit_diff": max_diff, "ppl_jax": ppl_jax, "ppl_reference": ppl_ref,
            "ppl_rel_diff": abs(ppl_jax - ppl_ref) / ppl_ref, "tokens": tokens, "windows": len(windows),
            "seq_len": seq_len, "reference": f"transformers {__import__('transformers').__version__} torch fp32",
            "protocol": PROTOCOL}
