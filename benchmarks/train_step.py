"""Cost of the PostShare penalty: the penalized train step (CE + gamma * L_w, ratio 0.3 pairs)
against the plain LM step, same model, same batch, same optimizer, timed interleaved (A B A B ...)
so machine load hits both alike. Reports median step time, the ratio and tokens/s.

In the same run, the same model exported to Hugging Face format trains in transformers + torch
AdamW (fp32, same batch and sequence, same clip and AdamW settings), interleaved with the others;
`ratio_vs_torch` = jaxshare plain tokens/s / torch tokens/s (--no-torch skips it).

  python -m benchmarks.train_step [--model smollm2-135m] [--seq-len 128] [--batch-size 4] [--reps 5] [--json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--remat", default="dots", choices=["none", "dots", "full"])
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers + torch AdamW reference")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxshare.training import mesh as meshlib

    from jaxshare.training import trainer
    from jaxshare.headshare.directshare import plan
    from jaxshare.io.load import load_model
    from jaxshare.headshare.penalty import pairs_from_plan
    from jaxshare.training.config import build_config

    m = load_model(args.model, "fp32")
    decision = plan(m.params, m.cfg, args.ratio, "qk")
    pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
    tc = build_config({"steps": 1000, "lr": 5e-5})
    tx, _ = trainer.make_optimizer(tc, tc.steps)
    mesh = meshlib.make_mesh("")
    batch = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (1, args.batch_size, args.seq_len)).astype(np.int32)
    steps, states = {}, {}
    for name, kw in (("plain", dict(pairs=None, penalize=False, monitor=False)),
                     ("penalized", dict(pairs=pairs, penalize=True))):
        state, sh = trainer.place_state(m.params, tx, 0, mesh)
        fn, batch_sh = trainer.compile_step(trainer.make_step(m.cfg, tx, 0.5, args.dtype, remat=args.remat, **kw),
                                            mesh, sh)
        b = jax.device_put(batch, batch_sh)
        state, out = fn(state, b)  # compile + warm-up
        jax.block_until_ready(out)
        steps[name], states[name] = (fn, b), state
    names = ["plain", "penalized"]
    if not args.no_torch:
        torch_step = _torch_step(m, tc, batch[0])
        torch_step()  # warm-up
        names.append("torch")
    times = {n: [] for n in names}
    for rep in range(args.reps):
        # interleaved, and rotated each repetition: a side that always follows torch's step pays for
        # its OpenMP threads still spinning (the plain step did, and measured slower than the penalized one)
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            if name == "torch":
                torch_step()
            else:
                fn, b = steps[name]
                states[name], out = fn(states[name], b)
                jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch_size * args.seq_len
    res = {"model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size, "dtype": args.dtype,
           "ratio": args.ratio, "pairs": int(decision["n"]), "devices": len(jax.devices()), "reps": args.reps,
           "remat": args.remat}
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {"median_s": med, "min_s": min(ts), "times_s": ts, "tokens_per_s": tokens / med}
    res["penalized_over_plain"] = res["penalized"]["median_s"] / res["plain"]["median_s"]
    res["penalized_over_plain_min"] = res["penalized"]["min_s"] / res["plain"]["min_s"]
    if "torch" in times:
        import torch

        res["torch_version"], res["torch_threads"] = torch.__version__, torch.get_num_threads()
        res["ratio_vs_torch"] = res["plain"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
    write_result("train_step", res, args.json)
    print(f"plain {res['plain']['median_s']:.3f}s ({res['plain']['tokens_per_s']:.0f} tok/s), penalized "
          f"{res['penalized']['median_s']:.3f}s ({res['penalized']['tokens_per_s']:.0f} tok/s): "
          f"{res['penalized_over_plain']:.3f}x (min-based {res['penalized_over_plain_min']:.3f}x)"
          + (f"; torch {res['torch']['tokens_per_s']:.1f} tok/s, jaxshare/torch {res['ratio_vs_torch']:.2f}x"
             if "ratio_vs_torch" in res else ""), file=sys.stderr)


def _torch_step(m, tc, batch_BT):
    """One transformers + torch AdamW step (fp32) on the same weights and batch: the model is
    exported with jaxshare's own HF export and loaded by transformers."""
    import tempfile

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from jaxshare.io.hf import export_hf

    with tempfile.TemporaryDirectory() as d:
        export_hf(m.params, m.cfg, f"{d}/hf")
        model = AutoModelForCausalLM.from_pretrained(f"{d}/hf", dtype=torch.float32).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(tc.b1, tc.b2), eps=tc.eps)
    ids = torch.as_tensor(np.asarray(batch_BT, np.int64))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())  # the loss still holds its graph: a bare float() warns

    return step


if __name__ == "__main__":
    main()
