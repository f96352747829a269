"""Metric writers: JSONL (always), TensorBoard event files (tensorboardX), W&B (when installed and
asked for), and the model-FLOPs utilization they report.

A writer takes `write(step, scalars)` and `close()`. The trainer writes from process 0 only; a
library caller may pass any object with those two methods.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from etils import epath

from jaxshare.optional import require
from jaxshare.storage import paths

# Dense bf16 peak FLOP/s per device, by the start of `device.device_kind` (lower case).
PEAK_FLOPS = (
    ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v6", 918e12), ("tpu v4", 275e12), ("tpu7x", 2307e12),
    ("nvidia h200", 989e12), ("nvidia h100", 989e12), ("nvidia gh200", 989e12),
    ("nvidia a100", 312e12), ("nvidia l4", 121e12), ("nvidia b200", 2250e12),
)


def peak_flops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((v for k, v in PEAK_FLOPS if kind.startswith(k)), None)


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Model FLOPs of one trained token (forward + backward, no remat): 6 x the matmul params
    seen per token, plus causal attention's scores and mixing (6 x L x T x H x d)."""
    D, L, H, K, d, F = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    per_layer = D * H * d * 2 + D * K * d * 2 + D * F * (3 if cfg.gated_mlp else 2)
    matmul = L * per_layer + D * cfg.vocab_size
    return 6.0 * matmul + 6.0 * L * seq_len * H * d


class JsonlWriter:
    """metrics.jsonl: one JSON object per write (any epath; appended)."""

    def __init__(self, path):
        self.path = paths.as_path(path)
        self.local = paths.is_local(self.path)

    def write(self, step: int, scalars: dict) -> None:
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self.local:
            with open(os.fspath(self.path), "a") as f:
                f.write(line)
        else:  # object stores have no append: rewrite the (small) object
            old = self.path.read_text() if self.path.exists() else ""
            self.path.write_text(old + line)

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """TensorBoard event files in RUN_DIR/tensorboard (written locally and copied up at close
    when the run dir is not on a local disk)."""

    def __init__(self, logdir):
        # deferred on purpose: tensorboardX is optional (the `train` extra; `tensorboard: false` runs without it)
        SummaryWriter = require("tensorboardX", "train", "TensorBoard logging (tensorboard: true)").SummaryWriter

        self.dest = paths.as_path(logdir)
        self.local = paths.is_local(self.dest)
        self.dir = os.fspath(self.dest) if self.local else tempfile.mkdtemp(prefix="jaxshare-tb-")
        self.sw = SummaryWriter(self.dir, flush_secs=30)

    def write(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)):
                self.sw.add_scalar(k, v, step)

    def close(self) -> None:
        if self.sw is None:  # closed already (the trainer closes on every exit path)
            return
        self.sw.close()
        self.sw = None
        if self.local:
            return
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            for name in os.listdir(self.dir):
                with open(os.path.join(self.dir, name), "rb") as f:
                    (self.dest / name).write_bytes(f.read())
        finally:  # the local staging folder is ours alone: never left in the temp directory
            shutil.rmtree(self.dir, ignore_errors=True)


class WandbWriter:
    def __init__(self, project: str, run_dir, config: dict):
        wandb = require("wandb", "wandb", "W&B logging (wandb: PROJECT)")  # deferred on purpose: optional, heavy
        self.run = wandb.init(project=project, dir=os.fspath(run_dir) if "://" not in str(run_dir) else None,
                              config=config, resume="allow")

    def write(self, step: int, scalars: dict) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MultiWriter:
    def __init__(self, writers):
        self.writers = list(writers)

    def write(self, step: int, scalars: dict) -> None:
        for w in self.writers:
            w.write(step, scalars)

    def close(self) -> None:
        errors = []
        for w in self.writers:  # each one closes (and cleans up) even when another fails
            try:
                w.close()
            except Exception as e:  # noqa: BLE001 (re-raised below)
                errors.append(e)
        if errors:
            raise errors[0]


def open_writers(run_dir, tensorboard: bool = True, wandb_project: str = "", config: dict | None = None):
    """JSONL + TensorBoard (+ W&B with a project name). A missing tensorboardX or wandb package is
    a MissingDependency naming its extra."""
    run_dir = epath.Path(run_dir)
    out = [JsonlWriter(run_dir / "metrics.jsonl")]
    if tensorboard:
        out.append(TensorBoardWriter(run_dir / "tensorboard"))
    if wandb_project:
        out.append(WandbWriter(wandb_project, run_dir, config or {}))
    return MultiWriter(out)
