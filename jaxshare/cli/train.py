"""Subcommands of post-training: `train postshare|direct+post|plain|resume` and `plot-run`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxshare.cli.common import emit, nonempty
from jaxshare.training.config import MODES

SET_HELP = "override a config key (repeatable), e.g. --set steps=200 --set mesh=data=2,fsdp=4"


def _report(args, res: dict) -> None:
    if res.get("mode") == "inheritune" and res["status"] == "completed":
        from jaxshare.inheritune.grow import stage_table

        ref = res["reference_loss"]
        verdict = "no reference" if ref is None else (f"reached the reference's loss {ref:.4f}" if res["reached_reference"]
                                                     else f"above the reference's loss {ref:.4f}")
        emit(args, res, f"{stage_table(res)}\ninheritune: {len(res['stages'])} stage(s), {res['tokens']} tokens; "
                         f"{verdict}; wrote {res['final']}" + (f" and {res['hf']}" if "hf" in res else ""))
        return
    if res["status"] == "preempted":
        emit(args, res, f"preempted at step {res['step']}; checkpoint saved. Continue with: "
                        f"jaxshare train resume {res['run_dir']}")
        return
    before = f", before tying {res['eval_before_tie']:.4f}" if "eval_before_tie" in res else ""
    emit(args, res, f"{res['mode']}: {res['steps']} steps, {res['tokens']} tokens; eval PPL {res['eval_ppl']:.4f}"
                    f"{before} ({res['eval_data']}, {res['eval_windows']} x {res['seq_len']}); "
                    f"wrote {res['final']}" + (f" and {res['hf']}" if "hf" in res else ""))


def cmd_train(args) -> None:
    from jaxshare.training.config import load_config
    from jaxshare.training.trainer import Trainer

    from jaxshare.training.program import initialize_distributed

    tc = load_config(args.config, args.set, mode=args.mode)
    initialize_distributed(tc)  # the program's job, never the library's
    if tc.mode == "inheritune":  # one trainer run per growth stage
        from jaxshare.inheritune.grow import run_inheritune

        _report(args, run_inheritune(tc))
        return
    _report(args, Trainer(tc).run())


def cmd_resume(args) -> None:
    from jaxshare.inheritune.grow import STATE, run_inheritune
    from jaxshare.training.config import load_config
    from jaxshare.training.paths import as_path
    from jaxshare.training.program import initialize_distributed
    from jaxshare.training.trainer import Trainer

    path = as_path(args.run_dir) / "config.yaml"
    if path.exists():
        initialize_distributed(load_config(str(path), list(args.set) + [f"run_dir={args.run_dir}"]))
    if (Path(args.run_dir) / STATE).is_file():  # an inheritune run: resume its stages
        tc = load_config(Path(args.run_dir) / "config.yaml", list(args.set) + [f"run_dir={args.run_dir}"])
        _report(args, run_inheritune(tc, resuming=True))
        return
    _report(args, Trainer.resume(args.run_dir, args.set).run())


def plot_run(run_dir, out=None) -> list[Path]:
    """loss / CE / L_w against step, and held-out PPL against step, as PNGs in the run dir."""
    from jaxshare import plots

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl")
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_ppl" in r]
    out = Path(out) if out else run_dir
    files = []
    if steps:
        xs = [r["step"] for r in steps]
        series = {"loss": [r["loss"] for r in steps], "CE": [r["ce"] for r in steps]}
        files.append(plots.lines(xs, series, out / "loss.png", f"training loss ({run_dir.name})", "step", "loss"))
        if any(r["lw"] for r in steps):
            files.append(plots.lines(xs, {"L_w": [r["lw"] for r in steps]}, out / "penalty.png",
                                     "pair distance L_w", "step", "L_w"))
    if evals:
        files.append(plots.lines([r["step"] for r in evals], {"eval PPL": [r["eval_ppl"] for r in evals]},
                                 out / "eval_ppl.png", f"held-out PPL ({run_dir.name})", "step", "PPL"))
    if not files:
        raise ValueError(f"{path} has no metrics rows to plot")
    return files


def cmd_plot_run(args) -> None:
    files = plot_run(args.run_dir, args.out)
    emit(args, {"plots": [str(f) for f in files]}, "wrote " + ", ".join(str(f) for f in files))


def register(sub, add, group) -> None:
    t_sub = group("train", "mode", "post-train with the PostShare penalty (or the plain / direct+post modes)")
    for mode in MODES:
        p = add(mode, cmd_train, f"train in {mode} mode (config: YAML file, then --set overrides)", parent=t_sub)
        p.add_argument("--config", help="YAML file of config keys, or the name of a shipped config "
                                         "(smollm2_postshare, smollm2_direct_post, smollm2_plain, smollm2_inheritune; "
                                         "see train/configs/) (default: none, the built-in defaults)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP + " (default: none)")
    r = add("resume", cmd_resume, "continue a run from its latest checkpoint", parent=t_sub)
    r.add_argument("run_dir", type=nonempty, help="the run directory (run_dir of the config) to continue")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key on resume (mesh, eval_every, checkpoint_every, progress are safe) "
                        "(default: none)")
    r.set_defaults(mode=None)
    pr = add("plot-run", cmd_plot_run, "draw a run's loss / penalty / held-out PPL curves to PNG")
    pr.add_argument("run_dir", type=nonempty, help="a run directory holding metrics.jsonl")
    pr.add_argument("--out", type=nonempty, help="directory for the PNGs (default: the run dir)")


def main(argv=None) -> int:
    """`python -m train ...` = `jaxshare train ...`."""
    from jaxshare.cli.main import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
