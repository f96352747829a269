"""End of a run: tie, compact, evaluate, save the native checkpoint (final/), export HF (hf/).

One process: as before, the trained params stay where they are and the tied model comes to
host memory once. Several processes: the trained params are gathered to every host with a
collective (no process reads another's shards directly), every process ties the same pairs, the
native checkpoint is written by orbax with each process saving its own shards of the tied model
into one shared directory, and process 0 alone writes the metadata, the HF export and result.json.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxshare.core.params import count_params, param_bytes
from jaxshare.headshare.directshare import accounting
from jaxshare.headshare.penalty import pairs_from_plan, weight_penalty
from jaxshare.io.hf import export_hf
from jaxshare.io.native import META, native_meta, save_native
from jaxshare.lora.leaf import adapter_params, merge
from jaxshare.headshare.sharing import MATRICES, compact_params, is_shared, manifest, share
from jaxshare.training import mesh as meshlib
from jaxshare.training import multihost as mh
from jaxshare.training.recipes import describe
from jaxshare.storage import paths
from jaxshare.storage.atomic import swap


def commit(dest, write) -> None:
    """write(path) writes a complete output directory at `path` through the storage layer (a rename
    on a local disk; elsewhere an upload, its completion marker last)."""
    write(Path(os.fspath(dest)) if paths.is_local(dest) else os.fspath(dest))


def _save_final_multiprocess(tr, shared, extra) -> None:
    # deferred on purpose: orbax.checkpoint is slow to import (tensorstore); only a multi-process run's final/ uses it
    import orbax.checkpoint as ocp

    dest = tr.run_dir / "final"
    local = paths.is_local(dest)
    if local:
        tmp = dest.parent / f".final.partial-{mh.shared_token()}"
    else:  # no directory rename on an object store: write in place, the marker comes last
        tmp = dest
        if mh.is_primary() and dest.exists():
            if (dest / paths.COMMIT_MARKER).exists():
                (dest / paths.COMMIT_MARKER).unlink()
            dest.rmtree()
    mh.barrier("jaxshare_final_clear")
    glob = mh.put_global(shared, meshlib.param_shardings(tr.mesh, shared))
    with ocp.StandardCheckpointer() as ck:
        ck.save(paths.local_str(tmp / "params") if local else tmp / "params", glob)
        ck.wait_until_finished()
    mh.barrier("jaxshare_final_saved")
    if mh.is_primary():
        tok = tr.model.tokenizer
        if tok is not None:
            with tempfile.TemporaryDirectory() as t:
                tok.save_pretrained(t)
                for name in os.listdir(t):
                    paths.write_bytes(tmp / name, Path(t, name).read_bytes())
        paths.write_text(tmp / META, json.dumps(native_meta(tr.model.cfg, shared, extra, version=1), indent=2))
        if local:
            swap(Path(os.fspath(tmp)), Path(os.fspath(dest)))
        else:
            (dest / paths.COMMIT_MARKER).write_text("")
    mh.barrier("jaxshare_final_done")


def finish(tr, trained, decision, step: int) -> dict:
    tc, m = tr.tc, tr.model
    multi = jax.process_count() > 1
    result = {"status": "completed", "mode": tc.mode, "steps": step, "tokens": step * tc.batch_size *
              tc.grad_accum * tc.seq_len, "run_dir": str(tc.run_dir), "eval_data": tc.eval_data,
              "eval_windows": int(len(tr.eval_windows)), "seq_len": tc.seq_len}
    if multi:
        trained = mh.to_host(trained)
    if decision is None:
        shared = trained
    elif is_shared(trained):
        shared = compact_params(trained)
    else:
        result["eval_before_tie"] = tr._evaluate(trained)["ppl"]
        pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
        result["lw_before_tie"] = float(weight_penalty(trained, pairs))
        roots = {mm: decision["by_matrix"][mm]["roots"] for mm in MATRICES}
        shared = compact_params(share(trained, m.cfg, roots, keep=tc.keep, share_o=tc.share_o))
    shared = mh.to_host(shared)  # one host copy for saving and export
    if tc.merge:
        shared, result["merge"] = merge(shared)
    tr.trained, tr.shared = trained, shared  # for library callers (experiments); no extra copy
    ev = tr._evaluate(shared)
    result["eval_ppl"] = ev["ppl"]
    result.update(tr._gap(ev))
    result.update(recipe=describe(tc), params=count_params(shared), bytes=param_bytes(shared),
                  adapter_params=adapter_params(shared), trainable_params=getattr(tr, "trainable_params", None))
    if getattr(tr, "baseline", None):
        result["start_ppl"] = tr.baseline["start_ppl"]
    extra = {"derived_from": str(m.source), "train": tc.to_dict()}
    if decision is not None:
        extra["sharing"] = manifest(shared, m.cfg, ratio=tc.ratio, match=tc.match, keep=tc.keep, share_o=tc.share_o,
                                    correct=tc.correct, method=tc.mode, source=str(m.source))
        result["accounting"] = accounting(tr.dense_shapes, shared, m.cfg)
    final, hf = tr.run_dir / "final", tr.run_dir / "hf"
    if multi:
        _save_final_multiprocess(tr, shared, extra)
    else:
        commit(final, lambda d: save_native(d, m.cfg, shared, m.tokenizer, extra=extra, overwrite=True))
    result["final"] = str(final)
    if tc.export_hf:
        if mh.is_primary():
            commit(hf, lambda d: export_hf(shared, m.cfg, d, m.tokenizer, overwrite=True, info=extra))
        result["hf"] = str(hf)
    if mh.is_primary():
        paths.write_text(tr.run_dir / "result.json", json.dumps(result, indent=2))
    mh.barrier("jaxshare_finish")
    return result
