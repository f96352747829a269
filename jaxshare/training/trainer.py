"""PostShare post-training (METHODS.md §1): optax AdamW on a (data, fsdp) mesh with the pairwise
L2 weight penalty, orbax checkpoints with resume and preemption saves, then tie and export.

Modes: `postshare` (dense + penalty, tie the pairs at the end), `direct+post` (tie first, train
the shared bank rows; the int32 index is frozen by `bank.partition`), `plain` (no penalty, tie
at the end: the control). The run directory holds config.yaml, plan.npz (the pairs decided on
the starting model), metrics.jsonl, checkpoints/, final/ (native), hf/ and result.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxshare.training import mesh as meshlib
from jaxshare.core.bank import combine, partition
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.model import decoder_layer, next_token_nll
from jaxshare.headshare.penalty import pairs_from_plan, weight_penalty
from jaxshare.headshare.sharing import MATRICES
from jaxshare.training.config import TrainConfig, TrainConfigError, dump_config
from jaxshare.training.memory import clip_by_global_norm, drop_checkpoints, release_free_memory, remat_layer


class TrainingDiverged(ValueError):
    """The loss became NaN/inf; the run stopped without saving the bad state."""


# ---------------------------------------------------------------------------------------------
# Pure pieces: loss, optimizer, step. Module-level so tests and benchmarks use exactly these.

def ce_loss(params, cfg, tokens_BT, dtype=jnp.float32, remat: bool = False):
    """Mean next-token cross-entropy over the T-1 predictions of each window (fp32 logits);
    remat: layers recomputed in the backward pass, not stored (jaxshare.training.memory)."""
    layer_fn = remat_layer(decoder_layer) if remat else decoder_layer
    return jnp.mean(next_token_nll(params, cfg, tokens_BT, dtype, layer_fn=layer_fn))


def _decay_mask(params):
    """Weight decay on matrices only: norms and biases are exempt (the usual AdamW practice)."""
    def decays(path, _x):
        names = [k.name for k in path if hasattr(k, "name")]
        leaf = names[-2] if names and names[-1] == "rows" else (names[-1] if names else "")
        return not (leaf == "scale" or leaf.startswith("b"))

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(tc: TrainConfig, total_steps: int):
    warmup = min(tc.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=tc.lr * tc.end_lr_ratio)
    parts = [clip_by_global_norm(tc.clip_norm)] if tc.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts), schedule


def make_step(cfg, tx, gamma: float, dtype, pairs: dict | None, penalize: bool, monitor: bool = True,
              remat: bool = True):
    """step(state, batch [A, B, T]) -> (state, metrics). Gradients of the CE are averaged over
    the A micro-batches by a scan (gradient accumulation without extra optimizer steps); the
    penalty depends on the weights only, so it is added once per step, not per micro-batch."""
    use_lw = pairs is not None and (penalize or monitor)

    def step(state, batch_ABT):
        params, frozen = state["params"], state["frozen"]

        def ce_of(p, toks):
            return ce_loss(combine(p, frozen), cfg, toks, dtype, remat)

        def micro(acc, toks):
            loss, g = jax.value_and_grad(ce_of)(params, toks)
            return (acc[0] + loss, jax.tree_util.tree_map(jnp.add, acc[1], g)), None

        A = batch_ABT.shape[0]
        if A == 1:  # no accumulator: a zeroed copy of the params would only be added to once
            ce, grads = jax.value_and_grad(ce_of)(params, batch_ABT[0])
        else:
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            (ce_sum, g_sum), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), batch_ABT)
            ce = ce_sum / A
            grads = jax.tree_util.tree_map(lambda g: g / A, g_sum)
        lw = jnp.zeros((), jnp.float32)
        if use_lw and penalize:
            lw, g_pen = jax.value_and_grad(lambda p: weight_penalty(combine(p, frozen), pairs))(params)
            grads = jax.tree_util.tree_map(lambda a, b: a + gamma * b, grads, g_pen)
        elif use_lw:  # the control run logs how far its pairs drift without being pulled together
            lw = weight_penalty(combine(params, frozen), pairs)
        loss = ce + (gamma * lw if penalize else 0.0)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state,
                   step=state["step"] + 1, data_pos=state["data_pos"] + A * batch_ABT.shape[1],
                   rng=jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])))
        return new, {"loss": loss, "ce": ce, "lw": lw, "grad_norm": optax.tree.norm(grads)}

    return step


def init_state(params, tx, seed: int) -> dict:
    """The training state: trainable params, frozen leaves (bank indices), optimizer state,
    step, data position and RNG (all checkpointed together)."""
    trainable, frozen = partition(params)
    return {"params": trainable, "frozen": frozen, "opt_state": tx.init(trainable),
            "step": jnp.zeros((), jnp.int32), "data_pos": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}


def state_shardings(mesh, state_shapes):
    return meshlib.tree_shardings(mesh, state_shapes)


def place_state(params, tx, seed: int, mesh, donate: bool = False):
    """init_state laid out on the mesh: params put on their shardings, optimizer state created
    directly in its sharded layout (no replicated copy of m and v ever exists). donate: the
    state takes over the buffers of `params` (deleted then) instead of copying them."""
    shapes = jax.eval_shape(lambda p: init_state(p, tx, seed), params)
    sh = state_shardings(mesh, shapes)
    trainable, frozen = partition(params)
    del params
    trainable = jax.device_put(trainable, sh["params"])
    frozen = jax.device_put(frozen, sh["frozen"])
    init = jax.jit(lambda t, f: {**init_state(combine(t, f), tx, seed)}, out_shardings=sh,
                   donate_argnums=(0, 1) if donate else ())
    return init(trainable, frozen), sh


def compile_step(step, mesh, sh):
    batch_sh = meshlib.batch_sharding(mesh, 3, batch_axis=1)
    return jax.jit(step, in_shardings=(sh, batch_sh), out_shardings=(sh, meshlib.replicated(mesh)),
                   donate_argnums=0), batch_sh


# ---------------------------------------------------------------------------------------------
# The run.

@dataclass
class Prepared:
    tc: TrainConfig
    model: object  # LoadedModel
    batches: object  # train_data.Batches
    eval_windows: np.ndarray
    total_steps: int


def prepare(tc: TrainConfig) -> Prepared:
    """Everything that can be wrong with a run, checked before any training compute: the
    model, seq_len against its positions, the ratio against its units, both corpora."""
    from jaxshare.headshare.directshare import n_units
    from jaxshare.io.load import load_model, resolve
    from jaxshare.data.tokens import token_ids, token_windows
    from jaxshare.training.data import Batches, steps_for

    resolve(tc.model)
    m = load_model(tc.model, "fp32")
    if tc.seq_len > m.cfg.max_seq_len:
        raise TrainConfigError(f"seq_len {tc.seq_len} is above the model's maximum of {m.cfg.max_seq_len} positions")
    if tc.mode != "plain" or tc.ratio > 0:
        n_units(tc.ratio, m.cfg)
    train = token_windows(token_ids(tc.data, m.tokenizer), tc.seq_len, vocab_size=m.cfg.vocab_size,
                          what=f"training data {tc.data}")
    ev = token_windows(token_ids(tc.eval_data, m.tokenizer), tc.seq_len, vocab_size=m.cfg.vocab_size,
                       what=f"eval data {tc.eval_data}")
    batches = Batches(train, tc.seed)
    return Prepared(tc, m, batches, ev[: tc.eval_windows], steps_for(tc, len(train)))


def _save_plan(path: Path, decision: dict) -> None:
    arrays = {}
    for m in MATRICES:
        d = decision["by_matrix"][m]
        for k in ("roots", "selected", "partner", "score"):
            arrays[f"{m}_{k}"] = np.asarray(d[k])
    np.savez(path, n=decision["n"], **arrays)


def _load_plan(path: Path) -> dict:
    z = np.load(path)
    by = {m: {k: z[f"{m}_{k}"] for k in ("roots", "selected", "partner", "score")} for m in MATRICES}
    return {"n": int(z["n"]), "by_matrix": by}


class Trainer:
    """One run. `Trainer(tc).run()` starts it; `Trainer.resume(run_dir).run()` continues it."""

    def __init__(self, tc: TrainConfig, resuming: bool = False):
        self.tc = tc
        self.run_dir = Path(tc.run_dir)
        self.ckpt_dir = (self.run_dir / "checkpoints").absolute()
        if not resuming and self.ckpt_dir.exists() and any(self.ckpt_dir.iterdir()):
            raise FileExistsError(f"{self.run_dir} already holds checkpoints; continue it with "
                                  f"`jaxshare train resume {self.run_dir}` or choose another run_dir")
        if tc.multihost:
            jax.distributed.initialize()
        self.mesh = meshlib.make_mesh(tc.mesh)
        meshlib.check_batch(self.mesh, tc.batch_size)
        self.prep = prepare(tc)
        self.resuming = resuming
        self._preempted = False

    @classmethod
    def resume(cls, run_dir, sets: list[str] | None = None) -> "Trainer":
        from jaxshare.training.config import load_config

        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no config.yaml, not a jaxshare training run")
        tc = load_config(path, list(sets or []) + [f"run_dir={run_dir}"])
        return cls(tc, resuming=True)

    # -- setup -------------------------------------------------------------------------------
    def _plan_and_params(self):
        """(starting params, plan decision or None). The plan is decided once, on the starting
        model, and stored in the run dir so a resume uses the same pairs."""
        from jaxshare.headshare.directshare import plan
        from jaxshare.headshare.sharing import compact_params, share

        tc, m = self.tc, self.prep.model
        path = self.run_dir / "plan.npz"
        decision = None
        if tc.ratio > 0:
            if path.is_file():
                decision = _load_plan(path)
            else:
                decision = plan(m.params, m.cfg, tc.ratio, tc.match)
                _save_plan(path, decision)
        params = m.params
        if tc.mode == "direct+post" and decision is not None:
            roots = {mm: decision["by_matrix"][mm]["roots"] for mm in MATRICES}
            if tc.keep == "data" or tc.correct != "none":  # data-aware rows, corrections train with them
                from jaxshare.headshare.datashare import apply_share

                params, _ = apply_share(params, m.cfg, roots, tc.keep, tc.correct, self._grams(), tc.share_o)
            else:
                params = compact_params(share(params, m.cfg, roots, keep=tc.keep, share_o=tc.share_o))
        return params, decision

    def _grams(self) -> dict:
        """Attention-input grams of the calibration data (a corpus: cached, as `jaxshare basis`)."""
        from jaxshare.basis.calibrate import calibrate, collect_grams

        tc, m = self.tc, self.prep.model
        if tc.calib.endswith(".npy"):
            from jaxshare.data.tokens import token_ids, token_windows

            w = token_windows(token_ids(tc.calib, m.tokenizer), tc.calib_seq_len, tc.calib_windows,
                              vocab_size=m.cfg.vocab_size, what=f"calibration data {tc.calib}")
            return collect_grams(m.params, m.cfg, w)
        return calibrate(m, "wiki:train" if tc.calib == "wiki" else tc.calib, tc.calib_windows, tc.calib_seq_len)[0]

    def _log(self, row: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """A resumed run rewrites history after its checkpoint: rows past `step` came from the
        interrupted process and are replaced by the replay."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))

    def _evaluate(self, params) -> dict:
        from jaxshare.eval.perplexity import perplexity_of_windows

        return perplexity_of_windows(params, self.prep.model.cfg, self.prep.eval_windows, self.tc.eval_batch_size,
                                     desc="eval")

    def _on_sigterm(self, *_):
        self._preempted = True

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        import orbax.checkpoint as ocp
        from tqdm.auto import tqdm

        tc, prep, mcfg = self.tc, self.prep, self.prep.model.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(tc, self.run_dir / "config.yaml")  # on resume: the overrides stick for the next resume
        if not self.resuming:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        params0, decision = self._plan_and_params()
        # The final accounting needs only the starting model's shapes: its buffers go to the state.
        self.dense_shapes = jax.eval_shape(lambda p: p, prep.model.params)
        prep.model = dataclasses.replace(prep.model, params=None)
        pairs = None
        if decision is not None and tc.mode != "direct+post":
            pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
        total = prep.total_steps
        tx, schedule = make_optimizer(tc, total)
        mngr = ocp.CheckpointManager(self.ckpt_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=tc.keep_checkpoints, create=True, enable_async_checkpointing=tc.async_checkpoints))
        if self.resuming:
            last = mngr.latest_step()
            if last is None:
                done = " (the run completed; keep_final_checkpoint: true keeps its last one)"
                raise FileNotFoundError(f"{self.run_dir}: no checkpoint to resume from"
                                        f"{done if (self.run_dir / 'result.json').is_file() else ''}")
            # Restore straight into this run's shardings (the mesh may differ from the saving run's).
            shapes = jax.eval_shape(lambda p: init_state(p, tx, tc.seed), params0)
            del params0
            sh = state_shardings(self.mesh, shapes)
            abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)
            state = mngr.restore(last, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
            self._truncate_metrics(int(state["step"]))
        else:
            state, sh = place_state(params0, tx, tc.seed, self.mesh, donate=True)
            del params0
        step_fn = make_step(mcfg, tx, tc.gamma, as_dtype(tc.dtype), pairs, penalize=(tc.mode == "postshare"),
                            remat=tc.remat)
        train_step, batch_sh = compile_step(step_fn, self.mesh, sh)
        step, pos = int(state["step"]), int(state["data_pos"])
        per_step = tc.batch_size * tc.grad_accum
        tokens_per_step = per_step * tc.seq_len

        def save(s, state):
            release_free_memory()  # the steps' freed temporaries, before orbax's host copy of the state
            mngr.save(s, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
            if not tc.async_checkpoints:  # the writer's buffers are gone before the next step allocates
                mngr.wait_until_finished()
                release_free_memory()  # tensorstore's threads free into their own malloc arenas

        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        bar = tqdm(total=total, initial=step, desc=f"{tc.mode}", unit="step", disable=not tc.progress, dynamic_ncols=True)
        status = "completed"
        try:
            while step < total:
                batch = prep.batches.batch_at(pos, per_step).reshape(tc.grad_accum, tc.batch_size, tc.seq_len)
                t0 = time.perf_counter()
                state, metrics = train_step(state, jax.device_put(batch, batch_sh))
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = time.perf_counter() - t0
                step, pos = step + 1, pos + per_step
                if not math.isfinite(metrics["loss"]):
                    mngr.wait_until_finished()  # the last good checkpoint completes; the bad state is never saved
                    good = mngr.latest_step()
                    raise TrainingDiverged(f"loss is {metrics['loss']} at step {step} (ce {metrics['ce']}, "
                                           f"L_w {metrics['lw']}); stopped without saving. Last good checkpoint: "
                                           f"{'step ' + str(good) if good is not None else 'none'} in {self.ckpt_dir}")
                row = {"step": step, **metrics, "lr": float(schedule(step - 1)), "tokens": step * tokens_per_step,
                       "tok_per_s": tokens_per_step / dt, "step_s": dt}
                if step % tc.log_every == 0 or step == total:
                    self._log(row)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", ce=f"{metrics['ce']:.4f}", lw=f"{metrics['lw']:.4g}",
                                tok_s=f"{row['tok_per_s']:.0f}")
                bar.update(1)
                if tc.eval_every and step % tc.eval_every == 0 and step < total:
                    ev = self._evaluate(combine(state["params"], state["frozen"]))
                    self._log({"step": step, "eval_ppl": ev["ppl"], "eval_nll": ev["nll"]})
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total:
                    save(step, state)
                if self._preempted or mngr.reached_preemption(step):
                    if mngr.latest_step() != step:
                        save(step, state)
                    status = "preempted"
                    break
            mngr.wait_until_finished()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, old_handler)
            mngr.close()
        if status == "preempted":
            return {"status": status, "step": step, "run_dir": str(self.run_dir)}
        trained = combine(state["params"], state["frozen"])
        del state  # AdamW's m and v (2x the params) are not needed to tie, evaluate and export
        release_free_memory()
        result = self._finish(trained, decision, step)
        if not tc.keep_final_checkpoint:
            drop_checkpoints(self.ckpt_dir)
        return result

    # -- end of run: tie, compact, evaluate, save, export ---------------------------------------
    def _finish(self, trained, decision, step: int) -> dict:
        from jaxshare.io.native import save_native
        from jaxshare.headshare.directshare import accounting
        from jaxshare.io.hf import export_hf
        from jaxshare.headshare.sharing import compact_params, is_shared, manifest, share

        tc, m = self.tc, self.prep.model
        result = {"status": "completed", "mode": tc.mode, "steps": step, "tokens": step * tc.batch_size *
                  tc.grad_accum * tc.seq_len, "run_dir": str(self.run_dir), "eval_data": tc.eval_data,
                  "eval_windows": int(len(self.prep.eval_windows)), "seq_len": tc.seq_len}
        if decision is None:
            shared = trained
        elif is_shared(trained):
            shared = compact_params(trained)
        else:
            result["eval_before_tie"] = self._evaluate(trained)["ppl"]
            pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
            result["lw_before_tie"] = float(weight_penalty(trained, pairs))
            roots = {mm: decision["by_matrix"][mm]["roots"] for mm in MATRICES}
            shared = compact_params(share(trained, m.cfg, roots, keep=tc.keep, share_o=tc.share_o))
        shared = jax.device_get(shared)  # one host copy for saving and export
        self.trained, self.shared = trained, shared  # for library callers (experiments); no extra copy
        result["eval_ppl"] = self._evaluate(shared)["ppl"]
        extra = {"derived_from": str(m.source), "train": tc.to_dict()}
        if decision is not None:
            man = manifest(shared, m.cfg, ratio=tc.ratio, match=tc.match, keep=tc.keep, share_o=tc.share_o,
                           correct=tc.correct, method=tc.mode, source=str(m.source))
            extra["sharing"] = man
            result["accounting"] = accounting(self.dense_shapes, shared, m.cfg)
        save_native(self.run_dir / "final", m.cfg, shared, m.tokenizer, extra=extra, overwrite=True)
        result["final"] = str(self.run_dir / "final")
        if tc.export_hf:
            export_hf(shared, m.cfg, self.run_dir / "hf", m.tokenizer, overwrite=True, info=extra)
            result["hf"] = str(self.run_dir / "hf")
        self._log({"step": step, "final_eval_ppl": result["eval_ppl"]})
        (self.run_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result
