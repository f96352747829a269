"""Peak memory and disk left behind by a short PostShare run (issue 9, "training memory").

Runs `python -m jaxshare train postshare` on the real model in a fresh process (1 CPU device,
XLA_FLAGS cleared) and reports the child's peak RSS (wait4's ru_maxrss: exact, not sampled),
the bytes of the training state that must exist (fp32 params + AdamW m and v), their ratio
(target <= 2.5) and the bytes of checkpoints/, final/ and hf/ the run left on disk.

`--phases` runs the same training in a child that records, per phase, the RSS at its end and
the peak reached during it (VmHWM, reset between phases through /proc/self/clear_refs), so the
peak can be pinned on load, optimizer init, compile, steps, checkpoint saves, eval or export.

  python -m benchmarks.train_memory [--steps 8] [--batch-size 2] [--seq-len 128] [--phases] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]

TARGET_RATIO = 2.5


def dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def state_bytes(model: str) -> dict:
    """Bytes of fp32 trainable params and of the optimizer state of the run's optimizer, from
    shapes only (jax.eval_shape: nothing is allocated for m and v)."""
    import jax

    from jaxshare.core.bank import partition
    from jaxshare.core.params import count_params, param_bytes
    from jaxshare.io.load import load_model
    from jaxshare.training.config import build_config
    from jaxshare.training.trainer import make_optimizer

    m = load_model(model, "fp32")
    tx, _ = make_optimizer(build_config({"model": model}), 8)
    trainable, _ = partition(m.params)
    opt = jax.eval_shape(tx.init, trainable)
    p, o = param_bytes(trainable), param_bytes(opt)
    return {"params_bytes": int(p), "opt_state_bytes": int(o), "state_bytes": int(p + o),
            "n_params": count_params(trainable)}


def child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    env.pop("XLA_FLAGS", None)  # a user's run: one CPU device, not the test suite's eight
    return env


# Linux keeps ru_maxrss across exec: a command forked straight from a large process (pytest after
# many tests, holding several GB) reports that parent's RSS as its own peak. A small launcher
# process forks the command instead, so wait4 there gives the command's own peak.
LAUNCHER = """
import json, os, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
with open(out + ".pid", "w") as f:
    f.write(str(pid))
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, f)
"""


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run cmd; exact peak RSS of the command from wait4 (in a small launcher), plus a sampled
    RSS timeline."""
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill up
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *cmd], env=env, cwd=ROOT,
                                stdout=out_f, stderr=err_f, text=True)
        samples: list[tuple[float, int]] = []
        t0 = time.perf_counter()

        def sample():
            pid_file = Path(f"{report}.pid")
            while proc.poll() is None and not pid_file.is_file():
                time.sleep(0.01)
            try:
                status = Path(f"/proc/{int(pid_file.read_text())}/status")
            except (OSError, ValueError):
                return
            while proc.poll() is None:
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            samples.append((time.perf_counter() - t0, int(line.split()[1]) * 1024))
                except (OSError, ValueError):
                    break
                time.sleep(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        proc.wait()
        th.join()
        res = json.loads(report.read_text()) if report.is_file() else {"rc": proc.returncode, "maxrss_kib": 0}
    out_f.seek(0), err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    return {"rc": res["rc"], "stdout": out, "stderr": err, "peak_rss_bytes": res["maxrss_kib"] * 1024,
            "wall_s": time.perf_counter() - t0, "rss_timeline": samples[:: max(1, len(samples) // 200)]}


def train_args(args, run_dir: Path) -> list[str]:
    sets = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "run_dir": run_dir,
            "eval_windows": args.eval_windows, "eval_every": args.eval_every,
            "checkpoint_every": args.checkpoint_every, "progress": "false", "mesh": "data=1,fsdp=1"}
    out = ["postshare", "--config", args.config, "--json"]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    for s in args.set:
        out += ["--set", s]
    return out


# -- phase profile (runs inside the child) -------------------------------------------------------

def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def phases_child(argv: list[str]) -> None:
    """Train with the trainer's phases wrapped; print one JSON line per phase to stdout."""
    import orbax.checkpoint as ocp

    import jaxshare.io.hf as hf
    import jaxshare.io.native as native
    from jaxshare.cli.main import main as cli_main
    from jaxshare.training import trainer

    rows = []

    def mark(name: str) -> None:
        rows.append({"phase": name, "rss_end_bytes": _vm("VmRSS"), "peak_bytes": _vm("VmHWM"),
                     "t_s": round(time.perf_counter(), 3)})
        Path("/proc/self/clear_refs").write_text("5")  # the next phase's peak starts from here

    def wrap(owner, attr, name, after_result=None):
        fn = getattr(owner, attr)

        def inner(*a, **kw):
            mark(f"before {name}")
            out = fn(*a, **kw)
            if after_result is not None:
                out = after_result(out)
            mark(name)
            return out

        setattr(owner, attr, inner)

    counter = {"step": 0}

    def wrap_step(pair):
        step, batch_sh = pair

        def stepped(*a):
            import jax

            counter["step"] += 1
            out = step(*a)
            jax.block_until_ready(out)
            mark("first step (compile)" if counter["step"] == 1 else f"step {counter['step']}")
            return out

        return stepped, batch_sh

    from jaxshare.training import program

    wrap(program, "prepare", "load model + data")
    wrap(trainer, "place_state", "params + optimizer init")
    wrap(trainer, "compile_step", "jit wrapper", after_result=wrap_step)
    wrap(trainer.Trainer, "_evaluate", "eval")
    wrap(ocp.CheckpointManager, "save", "checkpoint save (call)")
    wrap(ocp.CheckpointManager, "wait_until_finished", "checkpoint wait")
    wrap(native, "save_native", "save final/")
    wrap(hf, "export_hf", "export hf/")
    Path("/proc/self/clear_refs").write_text("5")
    rc = cli_main(["train", *argv])
    mark("end")
    print("PHASES " + json.dumps(rows))
    sys.exit(rc or 0)


def measure(args) -> dict:
    """Train in a fresh process (and, with args.phases, again under the phase profile); the
    figures of the result JSON. The run directory is temporary and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="train_memory-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "jaxshare", "train", *train_args(args, run_dir)]
        res = run_measured(cmd, child_env())
        if res["rc"] != 0:
            raise RuntimeError(f"training failed (exit {res['rc']}): {res['stderr'].strip().splitlines()[-3:]}")
        left = {"checkpoints_bytes": dir_bytes(run_dir / "checkpoints"), "final_bytes": dir_bytes(run_dir / "final"),
                "hf_bytes": dir_bytes(run_dir / "hf"), "run_dir_bytes": dir_bytes(run_dir)}
        ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").exists() else []
        phases = None
        if args.phases:
            import shutil

            shutil.rmtree(run_dir)
            pres = run_measured([sys.executable, __file__, "--phases-child", *train_args(args, run_dir)], child_env())
            line = [ln for ln in pres["stdout"].splitlines() if ln.startswith("PHASES ")]
            if pres["rc"] != 0 or not line:
                raise RuntimeError(f"phase profile failed (exit {pres['rc']}): {pres['stderr'].strip().splitlines()[-3:]}")
            phases = json.loads(line[0][len("PHASES "):])
    sb = state_bytes(args.model)
    ratio = res["peak_rss_bytes"] / sb["state_bytes"]
    out = {"label": args.label, "command": " ".join(["jaxshare", "train", *train_args(args, Path("RUN"))]),
           **sb, "peak_rss_bytes": res["peak_rss_bytes"], "ratio": ratio, "target_ratio": TARGET_RATIO,
           "meets_target": ratio <= TARGET_RATIO, **left, "checkpoints_left": ckpts, "wall_s": res["wall_s"],
           "result": json.loads(res["stdout"].strip().splitlines()[-1]), "rss_timeline": res["rss_timeline"]}
    if phases is not None:
        out["phases"] = phases
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="smollm2_postshare")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=4, help="one eval during the run as well as the final one")
    ap.add_argument("--checkpoint-every", type=int, default=4, help="one periodic checkpoint plus the final save")
    ap.add_argument("--set", action="append", default=[], help="extra config override key=value (repeatable)")
    ap.add_argument("--phases", action="store_true", help="also record the per-phase RSS profile")
    ap.add_argument("--label", default="", help="a note stored with the result (e.g. 'before')")
    ap.add_argument("--out", default="train_memory", help="result name under benchmarks/results/")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phases-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.phases_child is not None:
        phases_child(args.phases_child)
        return
    try:
        out = measure(args)
    except RuntimeError as e:
        sys.exit(str(e))
    ratio, ckpts, phases = out["ratio"], out["checkpoints_left"], out.get("phases")
    gb = 1e9
    print(f"peak RSS {out['peak_rss_bytes'] / gb:.2f} GB; params + AdamW state {out['state_bytes'] / gb:.2f} GB "
          f"({out['n_params'] / 1e6:.1f}M params); ratio {ratio:.2f} (target <= {TARGET_RATIO}); left on disk: "
          f"checkpoints {out['checkpoints_bytes'] / gb:.2f} GB {ckpts}, final/ {out['final_bytes'] / gb:.2f} GB, "
          f"hf/ {out['hf_bytes'] / gb:.2f} GB", file=sys.stderr)
    for row in phases or []:
        if not row["phase"].startswith("before "):
            print(f"  {row['phase']:<28} peak {row['peak_bytes'] / gb:6.2f} GB   end {row['rss_end_bytes'] / gb:6.2f} GB",
                  file=sys.stderr)
    write_result(args.out, out, args.json)


if __name__ == "__main__":
    main()
