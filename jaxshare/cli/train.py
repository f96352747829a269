"""Subcommands of post-training: `train postshare|direct+post|plain|resume` and `plot-run`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxshare.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED, UsageError
from jaxshare.cli.common import COUNT, emit, nonempty, plot_dir_arg
from jaxshare.cli.main import main as cli_main
from jaxshare.optional import check
from jaxshare.storage.paths import as_path, scheme
from jaxshare.training.config import MODES, TrainConfigError, check_resume_sets, load_config

SET_HELP = "override a config key (repeatable), e.g. --set steps=200 --set mesh=data=2,fsdp=4"


def _refuse_in_memory(run_dir) -> None:
    """An in-memory filesystem ends with the command: a run there would print paths to nothing."""
    if scheme(str(run_dir)) == "memory":
        raise TrainConfigError(f"run_dir {run_dir}: memory:// keeps nothing after the command exits; "
                               "choose a local directory or a gs:// / s3:// URL")


def _check_packages(tc) -> None:
    """The optional packages this run will need, refused by name before the model loads (the
    trainer would meet them only after loading it and preparing the run dir)."""
    check("grain", "train", "training (its data iterator)")
    if tc.tensorboard:
        check("tensorboardX", "train", "TensorBoard logging (tensorboard: true)")
    if tc.wandb:
        check("wandb", "wandb", "W&B logging (wandb: PROJECT)")


def _exit_code(res: dict) -> int:
    return EXIT_PREEMPTED if res.get("status") == "preempted" else EXIT_OK


def _interrupted(args, run_dir) -> int:
    """The second Ctrl-C (or one before the step loop): one line, the checkpoints as they were."""
    print(f"jaxshare {args.command}: interrupted; {run_dir} keeps its last complete checkpoint, if any "
          f"(continue with: jaxshare train resume {run_dir})", file=sys.stderr)
    return EXIT_INTERRUPTED


def _report(args, res: dict) -> None:
    if res.get("mode") == "inheritune" and res["status"] == "completed":
        # deferred: jax, optax, and the parser (`jaxshare --help`) imports this module
        from jaxshare.training.stages import stage_table

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


def cmd_train(args) -> int:
    """Exit code: 0 completed, EXIT_PREEMPTED after a SIGTERM / first Ctrl-C saved a checkpoint,
    EXIT_INTERRUPTED after a second Ctrl-C."""
    # deferred: jax, optax (training.program: numpy), and the parser (`jaxshare --help`)
    # imports this module
    from jaxshare.training.trainer import Trainer
    from jaxshare.training.program import initialize_distributed

    tc = load_config(args.config, args.set, mode=args.mode)
    if args.dry_run:
        return cmd_dry_run(args, tc)
    if args.devices or args.shape or args.accelerator:
        raise UsageError("--devices, --shape and --accelerator belong to --dry-run")
    _refuse_in_memory(tc.run_dir)
    _check_packages(tc)
    initialize_distributed(tc)  # the program's job, never the library's
    try:
        if tc.mode == "inheritune":  # one trainer run per growth stage
            from jaxshare.training.stages import run_inheritune

            res = run_inheritune(tc, overwrite=args.overwrite)
        else:
            res = Trainer(tc, overwrite=args.overwrite).run()
    except KeyboardInterrupt:
        return _interrupted(args, tc.run_dir)
    _report(args, res)
    return _exit_code(res)


def cmd_dry_run(args, tc) -> int:
    """Compile the step for the config's mesh on simulated CPU devices; nothing is trained,
    loaded or written (training.dryrun)."""
    from jaxshare.training.dryrun import dry_run, table

    res = dry_run(tc, shape=args.shape, devices=args.devices, accel=args.accelerator)
    res = {"config": str(args.config), **res}
    emit(args, res, table(res))
    return EXIT_OK


def cmd_resume(args) -> int:
    # deferred: jax, optax (training.program: numpy), and the parser (`jaxshare --help`)
    # imports this module
    from jaxshare.training.stages import STATE, run_inheritune
    from jaxshare.training.program import initialize_distributed
    from jaxshare.training.trainer import Trainer

    check_resume_sets(args.set, args.run_dir)  # refused by name before the run dir is read or written
    _refuse_in_memory(args.run_dir)
    path = as_path(args.run_dir) / "config.yaml"
    if path.exists():
        tc = load_config(str(path), list(args.set) + [f"run_dir={args.run_dir}"])
        _check_packages(tc)
        initialize_distributed(tc)
    try:
        if (Path(args.run_dir) / STATE).is_file():  # an inheritune run: resume its stages
            tc = load_config(Path(args.run_dir) / "config.yaml", list(args.set) + [f"run_dir={args.run_dir}"])
            res = run_inheritune(tc, resuming=True, sets=args.set)
        else:
            res = Trainer.resume(args.run_dir, args.set).run()
    except KeyboardInterrupt:
        return _interrupted(args, args.run_dir)
    _report(args, res)
    return _exit_code(res)


def plot_run(run_dir, out=None) -> list[Path]:
    """loss / CE / L_w against step, and held-out PPL against step, as PNGs in the run dir."""
    from jaxshare import plots  # deferred: numpy (matplotlib inside); the parser imports this module

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
        raise UsageError(f"{path} has no metrics rows to plot")
    return files


def cmd_plot_run(args) -> None:
    files = plot_run(args.run_dir, args.plot_dir)
    emit(args, {"plots": [str(f) for f in files]}, "wrote " + ", ".join(str(f) for f in files))


def _dry_run_args(p) -> None:
    from jaxshare.training.aot import SHAPES
    from jaxshare.training.dryrun import ACCELERATORS

    p.add_argument("--dry-run", action="store_true",
                   help="train nothing: compile the step for the config's mesh on simulated CPU devices and "
                        "report, from the compiled program, memory per device, FLOPs per step, collective bytes "
                        "and (with --accelerator) a roofline step time and MFU")
    p.add_argument("--devices", type=COUNT, metavar="N",
                   help="simulated devices for --dry-run (default: the product of the mesh's axis sizes)")
    p.add_argument("--shape", metavar="NAME",
                   help=f"model shape for --dry-run, no weights needed ({', '.join(SHAPES)}) "
                        "(default: the config.json of the config's model directory)")
    p.add_argument("--accelerator", metavar="NAME",
                   help=f"chip for --dry-run's roofline and HBM check ({', '.join(ACCELERATORS)}) (default: none)")


def register(sub, add, group) -> None:
    t_sub = group("train", "mode", "post-train with the PostShare penalty (or the plain / direct+post modes)")
    for mode in MODES:
        p = add(mode, cmd_train, f"train in {mode} mode (config: YAML file, then --set overrides)", parent=t_sub)
        p.add_argument("--config", help="YAML file of config keys, or the name of a shipped config "
                                         "(smollm2_postshare, smollm2_direct_post, smollm2_plain, smollm2_inheritune; "
                                         "see train/configs/) (default: none, the built-in defaults)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP + " (default: none)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier jaxshare run in run_dir (one marked by jaxshare_run.json and "
                            "holding nothing jaxshare did not write); without it run_dir must be absent or empty")
        _dry_run_args(p)
    r = add("resume", cmd_resume, "continue a run from its latest checkpoint", parent=t_sub)
    r.add_argument("run_dir", type=nonempty, help="the run directory (run_dir of the config) to continue")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key on resume: the length (steps, tokens, epochs), lr, end_lr_ratio, "
                        "the eval / checkpoint / log cadence, writers, mesh and speed settings; any other key "
                        "is refused (default: none)")
    r.set_defaults(mode=None)
    pr = add("plot-run", cmd_plot_run, "draw a run's loss / penalty / held-out PPL curves to PNG")
    pr.add_argument("run_dir", type=nonempty, help="a run directory holding metrics.jsonl")
    plot_dir_arg(pr, "directory for the PNGs (default: the run dir)", old=("--out",))


def main(argv=None) -> int:
    """`python -m train ...` = `jaxshare train ...`."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
