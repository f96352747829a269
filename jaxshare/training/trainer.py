"""PostShare post-training (docs/methods.md §1) as a library: optax AdamW on a (data, fsdp, tensor)
mesh with the pairwise L2 weight penalty, orbax checkpoints with resume and preemption saves,
then tie and export.

    Trainer(tc, model=..., data=..., eval_windows=..., total_steps=..., writer=...).run()

`model` has cfg, params, tokenizer, source (io.load.LoadedModel); `data` is a [N, T] array of
windows (the trainer streams it with grain) or a callable `rows -> iterator` yielding this
process's rows [lo, hi) of each step's [A, B, T] batch (grain iterators are checkpointed);
`writer` has write(step, scalars) and close(). Left out, they are built from the config
(`program.prepare`, `writers.open_writers`). The library never initializes the distributed
runtime; the program does (`program.initialize_distributed`).

Modes: `postshare` (dense + penalty, tie the pairs at the end), `direct+post` (tie first, train
the shared bank rows; the int32 index is frozen by `bank.partition`), `plain` (no penalty, tie
at the end: the control). The run directory (any epath) holds config.yaml, plan.npz (the pairs
decided on the starting model), metrics.jsonl, tensorboard/, checkpoints/, final/ (native), hf/
and result.json; run-level files are written by process 0 only.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.errors import JaxshareError
from jaxshare.basis.calibrate import calibrate, collect_grams
from jaxshare.core.bank import combine
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.model import next_token_nll
from jaxshare.core.params import cast_params, param_bytes
from jaxshare.data.corpora import calibration_source
from jaxshare.data.tokens import token_ids, token_windows
from jaxshare.headshare.datashare import apply_share
from jaxshare.headshare.directshare import plan
from jaxshare.headshare.penalty import pairs_from_plan
from jaxshare.headshare.sharing import MATRICES, compact_params, share
from jaxshare.training import mesh as meshlib
from jaxshare.training import multihost as mh
from jaxshare.training import rundir
from jaxshare.training import step as step_module
from jaxshare.storage import paths
from jaxshare.training.checkpoints import Checkpoints, sweep_tmp
from jaxshare.training.config import TrainConfig, check_resume_sets, dump_config, load_config
from jaxshare.training.data import batch_iterator
from jaxshare.training.finish import finish
from jaxshare.training.memory import COLLECT_ABOVE_BYTES, collect_quietly, release_free_memory
from jaxshare.training.program import load_teacher, prepare
from jaxshare.training.recipes import recipe_for, trainable_count
from jaxshare.training.rundir import check_new_run_dir
from jaxshare.training import writers  # the module: tests wrap `writers.open_writers`
from jaxshare.training.writers import peak_flops, train_flops_per_token
# The pure pieces live in step.py; re-exported here, where tests and benchmarks have found them.
from jaxshare.training.step import (abstract_state, ce_loss, compile_step, init_state, make_optimizer,  # noqa: F401
                                    make_step, place_state)


class TrainingDiverged(JaxshareError, ValueError):
    """The loss became NaN/inf; the run stopped without saving the bad state."""


def _save_plan(path, decision: dict) -> None:
    arrays = {}
    for m in MATRICES:
        d = decision["by_matrix"][m]
        for k in ("roots", "selected", "partner", "score"):
            arrays[f"{m}_{k}"] = np.asarray(d[k])
    buf = io.BytesIO()
    np.savez(buf, n=decision["n"], **arrays)
    paths.write_bytes(path, buf.getvalue())


def _load_plan(path) -> dict:
    z = np.load(io.BytesIO(paths.as_path(path).read_bytes()))
    by = {m: {k: z[f"{m}_{k}"] for k in ("roots", "selected", "partner", "score")} for m in MATRICES}
    return {"n": int(z["n"]), "by_matrix": by}


class Trainer:
    """One run. `Trainer(tc, ...).run()` starts it; `Trainer.resume(run_dir).run()` continues it."""

    def __init__(self, tc: TrainConfig, model=None, data=None, eval_windows=None, total_steps: int | None = None,
                 writer=None, mesh=None, resuming: bool = False, overwrite: bool = False, inside_run: bool = False,
                 teacher=None, donate: bool = True):
        """overwrite: a new run may replace an earlier jaxshare run in run_dir (rundir.py says
        what is removed); inside_run: run_dir is a stage of a run its caller has checked (inheritune);
        teacher: the dense model a `heal` run distills from (a Model), loaded from tc.teacher if None;
        donate: the training state takes over the model's buffers (deleted then; a library caller
        that keeps using its Model, or whose teacher shares arrays with it, passes False)."""
        self.tc = tc
        self.run_dir = paths.as_path(tc.run_dir)
        # Refused before the model loads; an earlier run is cleared only once run() starts writing.
        self._clear = False if resuming or inside_run else check_new_run_dir(tc.run_dir, overwrite)
        self.mesh = mesh if mesh is not None else meshlib.make_mesh(tc.mesh, dcn=tc.dcn_mesh)
        meshlib.check_batch(self.mesh, tc.batch_size)
        if model is None:
            prep = prepare(tc)
            model, data, eval_windows, total_steps = prep.model, prep.windows, prep.eval_windows, prep.total_steps
            teacher = prep.teacher if teacher is None else teacher
        if data is None or eval_windows is None or total_steps is None:
            raise ValueError("Trainer: pass model, data, eval_windows and total_steps together (or none of them)")
        self.model, self.data, self.eval_windows, self.total_steps = model, data, np.asarray(eval_windows), total_steps
        self.recipe = recipe_for(tc)
        if self.recipe.teacher:
            self.teacher = teacher if teacher is not None else load_teacher(tc, model)
        else:
            self.teacher = None
        self.writer = writer
        self.resuming = resuming
        self.donate = donate
        self._preempted = False

    @classmethod
    def resume(cls, run_dir, sets: list[str] | None = None, **parts) -> "Trainer":
        check_resume_sets(sets, run_dir)  # before anything is read or written
        path = paths.as_path(str(run_dir)) / "config.yaml"
        if not path.exists():
            raise FileNotFoundError(f"{run_dir}: no config.yaml, not a jaxshare training run")
        tc = load_config(str(path), list(sets or []) + [f"run_dir={run_dir}"])
        return cls(tc, resuming=True, **parts)

    # -- setup -------------------------------------------------------------------------------
    def _plan_and_params(self):
        """(starting params, plan decision or None). The plan is decided once, on the starting
        model (every process computes the same one), and stored in the run dir by process 0 so
        that a resume uses the same pairs."""
        tc, m = self.tc, self.model
        path = self.run_dir / "plan.npz"
        decision = None
        if tc.ratio > 0:
            if self.resuming and path.exists():
                decision = _load_plan(path)
            else:
                decision = plan(m.params, m.cfg, tc.ratio, tc.match)
                if mh.is_primary():
                    _save_plan(path, decision)
        params = m.params
        if self.recipe.ties_first and decision is not None:
            roots = {mm: decision["by_matrix"][mm]["roots"] for mm in MATRICES}
            if tc.keep == "data" or tc.correct != "none":  # data-aware rows, corrections train with them
                params, _ = apply_share(params, m.cfg, roots, tc.keep, tc.correct, self._grams(), tc.share_o)
            else:
                params = compact_params(share(params, m.cfg, roots, keep=tc.keep, share_o=tc.share_o))
        return self.recipe.start(tc, params, m.cfg), decision

    def _grams(self) -> dict:
        """Attention-input grams of the calibration data (a corpus: cached, as `jaxshare basis`)."""
        tc, m = self.tc, self.model
        if tc.calib.endswith(".npy"):
            w = token_windows(token_ids(tc.calib, m.tokenizer), tc.calib_seq_len, tc.calib_windows,
                              vocab_size=m.cfg.vocab_size, what=f"calibration data {tc.calib}")
            return collect_grams(m.params, m.cfg, w)
        return calibrate(m, calibration_source(tc.calib), tc.calib_windows, tc.calib_seq_len)[0]

    def _open_writer(self):
        if self.writer is None and mh.is_primary():
            self.writer = writers.open_writers(self.run_dir, self.tc.tensorboard, self.tc.wandb, self.tc.to_dict())
        return self.writer

    def _truncate_metrics(self, step: int) -> None:
        """A resumed run rewrites history after its checkpoint: rows past `step` came from the
        interrupted process and are replaced by the replay."""
        path = self.run_dir / "metrics.jsonl"
        if not mh.is_primary() or not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        paths.write_text(path, "".join(ln + "\n" for ln in keep))

    def _evaluate(self, params, cfg=None) -> dict:
        """Held-out PPL (fp32, docs/methods.md protocol) with the params where they are: sharded, on
        every process, the windows replicated. cfg: another model's (the teacher's)."""
        cfg, mesh = cfg or self.model.cfg, self.mesh
        windows = self.eval_windows
        n, T = windows.shape
        bs = max(1, min(self.tc.eval_batch_size, n))
        padded = np.concatenate([windows, np.zeros(((-n) % bs, T), np.int32)])
        if not all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params)):  # host copy
            params = mh.put_global(params, meshlib.param_shardings(mesh, params))
        fns = self.__dict__.setdefault("_eval_fns", {})
        if cfg not in fns:
            fns[cfg] = jax.jit(lambda p, w: jnp.sum(next_token_nll(p, cfg, w, jnp.float32), axis=-1),
                               out_shardings=meshlib.replicated(mesh))
        fn = fns[cfg]
        rep = meshlib.replicated(mesh)
        sums = [np.asarray(fn(params, mh.put_global(padded[i:i + bs], rep))) for i in range(0, len(padded), bs)]
        nll = float(np.concatenate(sums)[:n].astype(np.float64).sum() / (n * (T - 1)))
        return {"ppl": math.exp(nll), "nll": nll}

    def _large(self) -> bool:
        """Whether the model is worth a garbage collection where the run lets a copy of it go."""
        return param_bytes(self.dense_shapes) >= COLLECT_ABOVE_BYTES

    def _unsound(self, state) -> str | None:
        """Why `state` must not become a checkpoint, or None. A blown-up update can leave finite but
        huge weights (lr 1e9: ~1e9) whose loss is still finite while their gradient overflows, so
        the next update from them is NaN whatever the lr: the state, and the loss and gradient norm
        of its weights on one held-out micro-batch (in the training dtype), must all be finite."""
        tc, cfg = self.tc, self.model.cfg
        if getattr(self, "_sound_fn", None) is None:
            dtype = as_dtype(tc.dtype)

            def sound(s, tokens):
                leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(s)
                          if jnp.issubdtype(x.dtype, jnp.inexact)]
                # chunked logits, as a KD step makes its own: with the whole [B, T, V] logits and their
                # gradient this probe peaked above the step it guards (SmolLM2 LoRA heal at 4 x 512)
                loss, g = jax.value_and_grad(lambda p: step_module.chunked_ce_loss(
                    combine(p, s["frozen"]), cfg, tokens, dtype, tc.remat))(s["params"])
                sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(g))
                return jnp.all(jnp.stack(leaves)), loss.astype(jnp.float32), jnp.sqrt(sq)

            self._sound_fn = jax.jit(sound, out_shardings=meshlib.replicated(self.mesh))
        # One training micro-batch of held-out windows, split like a training batch: the probe costs
        # what a step costs per device (a replicated batch would hold all its activations on each).
        w = self.eval_windows
        tokens = np.asarray(w[np.arange(tc.batch_size) % len(w)], np.int32)
        tokens = mh.put_global(tokens, meshlib.batch_sharding(self.mesh, 2))
        finite, loss, gnorm = (np.asarray(x) for x in self._sound_fn(
            {k: v for k, v in state.items() if k != "step"}, tokens))
        if not finite:
            return "the weights or optimizer state hold non-finite values"
        if not (math.isfinite(float(loss)) and math.isfinite(float(gnorm))):
            return f"the updated weights give a held-out loss of {float(loss):.4g} and gradient norm {float(gnorm):.4g}"
        return None

    def _diverged(self, what: str, step: int, ckpt, detail: str = "") -> TrainingDiverged:
        ckpt.wait()  # the last good checkpoint completes; the bad state is never saved
        good = ckpt.latest_step()
        run = self.tc.run_dir
        todo = (f"Last good checkpoint: step {good} in {ckpt.remote}; continue from it with a lower lr "
                f"(jaxshare train resume {run} --set lr=...)" if good is not None else
                "No good checkpoint was saved; start again with a lower lr or more warmup_steps "
                "(jaxshare train ... --overwrite)")
        return TrainingDiverged(f"{what} at step {step}{detail}; stopped without saving it. {todo}")

    def _on_sigint(self, *_):
        if self._preempted:  # the second Ctrl-C: stop now; the last complete checkpoint stays
            raise KeyboardInterrupt
        self._preempted = True
        print("jaxshare train: Ctrl-C: saving a checkpoint after this step, then stopping "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _prepare_run_dir(self) -> None:
        """Process 0, before anything else is written: a new run clears the earlier run it may
        replace, then writes the marker first (rundir.py) and its config."""
        if self._clear:
            rundir.clear_run_dir(self.run_dir)
            self._clear = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_marker(self.run_dir)
        dump_config(self.tc, self.run_dir / "config.yaml")
        if (self.run_dir / "metrics.jsonl").exists():  # a restarted inheritune stage's own rows
            (self.run_dir / "metrics.jsonl").unlink()
        sweep_tmp(self.run_dir / "checkpoints")

    def _on_sigterm(self, *_):
        self._preempted = True

    def _teacher_on_mesh(self):
        """(the teacher's params laid out on the mesh as its own params would be, their shardings),
        or (None, None) for a recipe without a teacher. teacher_dtype bf16 halves its memory."""
        if self.teacher is None:
            return None, None
        tp = self.teacher.params
        if as_dtype(self.tc.teacher_dtype or "fp32") != jnp.float32:
            tp = cast_params(tp, self.tc.teacher_dtype)
        sh = meshlib.param_shardings(self.mesh, tp)
        return mh.put_global(tp, sh), sh

    def _heal_baseline(self, params0, teacher_params) -> None:
        """Held-out PPL of the teacher and of the student before healing: every later evaluation
        reports the fraction of the gap (in nats) it has recovered. Stored in the run dir, so a
        resumed run reports against the same baseline."""
        t = self._evaluate(teacher_params, self.teacher.cfg)
        s = self._evaluate(params0)
        self.baseline = {"teacher_ppl": t["ppl"], "teacher_nll": t["nll"], "start_ppl": s["ppl"], "start_nll": s["nll"]}
        if mh.is_primary():
            paths.write_text(self.run_dir / "heal_baseline.json", json.dumps(self.baseline, indent=2))
            writer = self._open_writer()
            if writer is not None:
                writer.write(0, {"eval_ppl": s["ppl"], "eval_nll": s["nll"], **self._gap(s)})

    def _gap(self, ev) -> dict:
        """teacher_ppl and recovered = (ln PPL_start - ln PPL_now) / (ln PPL_start - ln PPL_teacher)."""
        base = getattr(self, "baseline", None)
        if base is None and self.teacher is not None and (self.run_dir / "heal_baseline.json").exists():
            base = self.baseline = json.loads((self.run_dir / "heal_baseline.json").read_text())
        if base is None:
            return {}
        gap = base["start_nll"] - base["teacher_nll"]
        return {"teacher_ppl": base["teacher_ppl"],
                "recovered": (base["start_nll"] - ev["nll"]) / gap if abs(gap) > 1e-9 else 0.0}

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train; the writers this trainer opened are closed (and their temporaries removed) on
        every way out."""
        owned = self.writer is None
        try:
            return self._run()
        finally:
            if owned and self.writer is not None:
                self.writer.close()

    def _run(self) -> dict:
        tc, mcfg, primary = self.tc, self.model.cfg, mh.is_primary()
        if primary and not self.resuming:
            self._prepare_run_dir()
        mh.barrier("jaxshare_run_dir_ready")
        params0, decision = self._plan_and_params()
        # The final accounting needs only the starting model's shapes: its buffers go to the state.
        self.dense_shapes = jax.eval_shape(lambda p: p, self.model.params)
        self.model = dataclasses.replace(self.model, params=None) if dataclasses.is_dataclass(self.model) else self.model
        pairs = None
        if decision is not None and not self.recipe.ties_first:
            pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
        mask = self.recipe.mask(tc, params0)
        self.trainable_params = trainable_count(mask, params0)
        aux, aux_sh = self._teacher_on_mesh()
        total = self.total_steps
        tx, schedule = make_optimizer(tc, total)
        A, B, T = tc.grad_accum, tc.batch_size, tc.seq_len
        batch_sh = meshlib.batch_sharding(self.mesh, 3, batch_axis=1)
        rows = mh.local_rows(batch_sh, (A, B, T), axis=1)
        it = self.data(rows) if callable(self.data) else batch_iterator(self.data, tc.seed, A, B, rows)
        ckpt = Checkpoints(self.run_dir, tc.keep_checkpoints, tc.async_checkpoints, self.resuming)
        try:  # a failed restore or compile closes orbax (its threads otherwise print at exit)
            if self.resuming:
                last = ckpt.latest_step()
                if last is None:
                    done = " (the run completed; keep_final_checkpoint: true keeps its last one)"
                    raise FileNotFoundError(f"{tc.run_dir}: no checkpoint to resume from"
                                            f"{done if (self.run_dir / 'result.json').exists() else ''}")
                # Restore straight into this run's shardings (the mesh may differ from the saving run's).
                abstract, sh = abstract_state(params0, tx, tc.seed, self.mesh, mask=mask)
                del params0
                state = ckpt.restore(last, abstract, it)
                if primary:  # only now: a refused or failed resume leaves the run's config as it was
                    dump_config(tc, self.run_dir / "config.yaml")
                self._truncate_metrics(int(state["step"]))
            else:
                if aux is not None:
                    self._heal_baseline(params0, aux)
                state, sh = place_state(params0, tx, tc.seed, self.mesh, donate=self.donate, mask=mask)
                del params0
                release_free_memory(collect=self._large())  # the loaded model's arrays, which the state replaced
            step_fn = self.recipe.step(tc, mcfg, tx, pairs, None if self.teacher is None else self.teacher.cfg)
            train_step, _ = compile_step(step_fn, self.mesh, sh, attention=tc.attention, aux_sh=aux_sh)
        except BaseException:
            ckpt.close()
            collect_quietly()  # a failed restore's abandoned reads, finalized here and not mid-way through other code
            raise
        step = int(state["step"])
        tokens_per_step = A * B * T
        flops_tok = train_flops_per_token(mcfg, T)
        peak = tc.peak_flops or peak_flops(jax.devices()[0].device_kind)
        writer = self._open_writer()

        def save(step):
            # The steps' freed temporaries first: the soundness probe compiles a forward and
            # backward of its own, which at 1.5B peaked 1.7 GiB above the step with them still held.
            release_free_memory()
            why = self._unsound(state)
            if why is not None:
                raise self._diverged(why, step, ckpt)
            release_free_memory()  # the probe's, before orbax's host copy
            ckpt.save(step, state, it)
            release_free_memory()

        # SIGTERM (a scheduler) and a first Ctrl-C: checkpoint at the step boundary, then stop.
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        old_int = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(total=total, initial=step, desc=f"{tc.mode}", unit="step", disable=not (tc.progress and primary),
                   dynamic_ncols=True)
        status = "completed"
        try:
            while step < total:
                batch = mh.global_batch(np.asarray(next(it), np.int32), batch_sh, (A, B, T))
                t0 = time.perf_counter()
                state, metrics = train_step(state, batch) if aux is None else train_step(state, batch, aux)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = time.perf_counter() - t0
                step += 1
                if not math.isfinite(metrics["loss"]):
                    raise self._diverged(f"loss is {metrics['loss']}", step, ckpt,
                                         f" (ce {metrics['ce']}, L_w {metrics['lw']})")
                row = {**metrics, "lr": float(schedule(step - 1)), "tokens": step * tokens_per_step,
                       "tok_per_s": tokens_per_step / dt, "step_s": dt}
                if peak:
                    row["mfu"] = flops_tok * row["tok_per_s"] / (peak * len(self.mesh.devices.flat))
                if writer is not None and (step % tc.log_every == 0 or step == total):
                    writer.write(step, row)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", ce=f"{metrics['ce']:.4f}", lw=f"{metrics['lw']:.4g}",
                                tok_s=f"{row['tok_per_s']:.0f}")
                bar.update(1)
                if tc.eval_every and step % tc.eval_every == 0 and step < total:
                    ev = self._evaluate(combine(state["params"], state["frozen"]))
                    if writer is not None:
                        writer.write(step, {"eval_ppl": ev["ppl"], "eval_nll": ev["nll"], **self._gap(ev)})
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total:
                    save(step)
                if self._preempted or ckpt.reached_preemption(step):
                    if ckpt.latest_step() != step:
                        save(step)
                    status = "preempted"
                    break
            ckpt.wait()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, old_handler)
            signal.signal(signal.SIGINT, old_int)
            ckpt.close()
            if writer is not None and writer is not self.writer:
                writer.close()
        if status == "preempted":
            if writer is not None:
                writer.close()
            return {"status": status, "step": step, "run_dir": str(tc.run_dir)}
        trained = combine(state["params"], state["frozen"])
        del state, aux  # AdamW's m and v (2x the params) and the teacher are not needed to tie, evaluate and export
        if self.teacher is not None and dataclasses.is_dataclass(self.teacher):  # its baseline is all that is left to use
            self.teacher = dataclasses.replace(self.teacher, params=None)
        release_free_memory(collect=self._large())
        result = finish(self, trained, decision, step)
        if writer is not None:
            writer.write(step, {"final_eval_ppl": result["eval_ppl"]})
            writer.close()
        if not tc.keep_final_checkpoint:
            ckpt.drop()
        mh.barrier("jaxshare_run_done")
        return result
