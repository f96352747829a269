"""Healing as a method: distill the model from the plan's starting (dense) model, the `heal` recipe.

A plan may end with `heal: {tokens: 50000, trains: lora}`; `js.heal(student, teacher, ...)` is the
same call. It compresses nothing (claims no types) and comes after every compressing step,
quantization included: it trains what those steps left (bank rows, bases, scales, or adapters over
all of them). The run's directory (metrics, checkpoints, held-out evaluations) is `run_dir`, or a
temporary directory removed when the step returns.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from jaxshare.data.tokens import token_ids, token_windows
from jaxshare.errors import MethodError
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, plain, updated
from jaxshare.training.config import TRAINS, TrainConfig, TrainConfigError, build_config
from jaxshare.training.data import steps_for
from jaxshare.training.program import check_same_tokens
from jaxshare.training.trainer import Trainer


@dataclass(frozen=True)
class HealOptions:
    tokens: int = 50000
    data: str = "books:train"
    eval_data: str = "books:test"
    # the trainer's own defaults, so a plan's heal step and `jaxshare heal` cannot drift apart
    trains: str = TrainConfig.trains
    lora_rank: int = TrainConfig.lora_rank
    lora_alpha: float = TrainConfig.lora_alpha
    merge: bool = TrainConfig.merge
    temperature: float = TrainConfig.kd_temperature
    ce_weight: float = TrainConfig.kd_alpha
    lr: float = 1e-4
    seq_len: int = 256
    batch_size: int = 4
    eval_windows: int = 8
    run_dir: str | None = None

    def __post_init__(self):
        C.integer("tokens", self.tokens, 1)
        C.choice("trains", self.trains, TRAINS)
        C.integer("lora_rank", self.lora_rank, 1)
        C.number("temperature", self.temperature, 0, float("inf"), lo_open=True)
        C.number("ce_weight", self.ce_weight, 0, 1, hi_open=False)
        C.number("lr", self.lr, 0, float("inf"), lo_open=True)
        C.integer("seq_len", self.seq_len, 2)
        C.integer("batch_size", self.batch_size, 1)
        C.integer("eval_windows", self.eval_windows, 1)
        C.flag("merge", self.merge)

    @classmethod
    def from_dict(cls, o: dict) -> "HealOptions":
        C.known_keys(o, tuple(f.name for f in dataclasses.fields(cls)))
        return cls(**o)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))

    def config(self, run_dir: str, teacher: str = "(in memory)"):
        """The TrainConfig of this heal (every other key at its default)."""
        try:
            return build_config(dict(mode="heal", model="(in memory)", teacher=teacher, data=self.data,
                                     eval_data=self.eval_data, run_dir=run_dir, tokens=self.tokens, steps=0,
                                     trains=self.trains, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                                     merge=self.merge, kd_temperature=self.temperature, kd_alpha=self.ce_weight,
                                     lr=self.lr, seq_len=self.seq_len, batch_size=self.batch_size,
                                     eval_windows=self.eval_windows, eval_every=0, checkpoint_every=0,
                                     export_hf=False, tensorboard=False, progress=False, dtype="fp32",
                                     mesh="data=1,fsdp=1"))
        except TrainConfigError as e:
            raise MethodError(str(e)) from None


class Heal(MethodBase):
    name: ClassVar[str] = "heal"
    Options: ClassVar[type] = HealOptions
    last: ClassVar[bool] = True  # nothing after it: it trains the model the plan built
    after_all: ClassVar[bool] = True  # it may follow another `last` step (quantization)
    needs_teacher: ClassVar[bool] = True  # run_plan passes the plan's starting model

    def claims(self, opts, cfg=None, taken=frozenset()) -> frozenset[str]:
        return frozenset()

    def needs_grams(self, opts) -> bool:
        return False

    def check(self, opts: HealOptions, cfg):
        if opts.seq_len > cfg.max_seq_len:
            raise MethodError(f"seq_len {opts.seq_len} is above the model's maximum of {cfg.max_seq_len} positions")
        return cfg

    def apply(self, model: Model, opts: HealOptions, grams=None, teacher: Model | None = None) -> tuple[Model, dict]:
        if teacher is None:
            raise MethodError("heal needs a teacher: the dense model the student was compressed from")
        self.check(opts, model.cfg)
        check_same_tokens(model, teacher, "the student", "the teacher")
        owned = opts.run_dir is None
        run_dir = tempfile.mkdtemp(prefix="jaxshare-heal-") if owned else opts.run_dir
        try:
            tc = opts.config(run_dir, str(teacher.source or "(in memory)"))
            tok = model.tokenizer if model.tokenizer is not None else teacher.tokenizer
            windows = {}
            for key, what in (("data", "healing data"), ("eval_data", "held-out data")):
                src = getattr(tc, key)
                if not str(src).endswith(".npy") and tok is None:
                    model.need_tokenizer(f"heal ({what} {src})")
                windows[key] = token_windows(token_ids(src, tok), tc.seq_len, vocab_size=model.cfg.vocab_size,
                                             what=f"{what} {src}")
            tr = Trainer(tc, model=model, data=windows["data"], eval_windows=windows["eval_data"][:tc.eval_windows],
                         total_steps=steps_for(tc, len(windows["data"])), teacher=teacher,
                         donate=False)  # the caller's Model (and a teacher sharing its arrays) stay valid
            res = tr.run()
            params = tr.shared
        finally:
            if owned:
                shutil.rmtree(run_dir, ignore_errors=True)
        report = {k: v for k, v in res.items() if k not in ("final", "hf", "run_dir", "status")}
        if not owned:
            report["run_dir"] = run_dir
        return updated(model, params, heal={**opts.to_dict(), **{k: report.get(k) for k in
                                                                 ("eval_ppl", "teacher_ppl", "start_ppl", "recovered")}}), \
            _jsonable(report)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
