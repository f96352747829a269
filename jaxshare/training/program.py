"""The training program around the library: builds what `Trainer` takes from a TrainConfig (the
model, the token windows, the held-out windows, the run length) and starts the distributed
runtime. `jaxshare train ...` and `python -m train ...` go through here; a library caller builds
its own pieces and passes them to `Trainer`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import numpy as np

from jaxshare.data.tokens import token_ids, token_windows
from jaxshare.headshare.directshare import n_units
from jaxshare.io.load import load_model, resolve
from jaxshare.storage import fetch
from jaxshare.training.config import TrainConfig, TrainConfigError
from jaxshare.training.data import steps_for
from jaxshare.training.recipes import recipe_for


@dataclass
class Prepared:
    model: object  # LoadedModel: cfg, params, tokenizer, source
    windows: np.ndarray  # [N, seq_len] training windows
    eval_windows: np.ndarray  # [n, seq_len] held-out windows
    total_steps: int
    teacher: object = None  # heal: the dense model the student distills from


def initialize_distributed(tc: TrainConfig) -> None:
    """jax.distributed.initialize() for a multi-host run (before anything touches a device); CPU
    processes exchange collectives through gloo."""
    if not tc.multihost:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if tc.coordinator:
        kw["coordinator_address"] = tc.coordinator
    if tc.num_processes:
        kw["num_processes"] = tc.num_processes
    if tc.process_id >= 0:
        kw["process_id"] = tc.process_id
    jax.distributed.initialize(**kw)


def prepare(tc: TrainConfig) -> Prepared:
    """Everything that can be wrong with a run, checked before any training compute: the
    model, seq_len against its positions, the ratio against its units, both corpora."""
    if tc.attention == "cudnn":
        if jax.default_backend() != "gpu":
            raise TrainConfigError(f"attention cudnn needs a GPU (the backend is {jax.default_backend()}); "
                                   "use xla or auto")
    model = fetch.localize(tc.model, "model")  # gs://, s3://, any fsspec URL: a cached local copy
    resolve(model)
    m = load_model(model, "fp32")
    if model != tc.model:
        m = dataclasses.replace(m, source=tc.model)  # provenance names the URL, not the cache copy
    if tc.seq_len > m.cfg.max_seq_len:
        raise TrainConfigError(f"seq_len {tc.seq_len} is above the model's maximum of {m.cfg.max_seq_len} positions")
    n_units(tc.ratio, m.cfg)  # refuses a ratio this model cannot take, before any data loads
    if not all(str(d).endswith(".npy") for d in (tc.data, tc.eval_data)):
        m.need_tokenizer("training on text (rather than .npy token ids)")
    train = token_windows(token_ids(fetch.localize(tc.data, "training data"), m.tokenizer), tc.seq_len, vocab_size=m.cfg.vocab_size,
                          what=f"training data {tc.data}")
    ev = token_windows(token_ids(fetch.localize(tc.eval_data, "eval data"), m.tokenizer), tc.seq_len, vocab_size=m.cfg.vocab_size,
                       what=f"eval data {tc.eval_data}")
    teacher = load_teacher(tc, m) if recipe_for(tc).teacher else None
    return Prepared(m, train, ev[: tc.eval_windows], steps_for(tc, len(train)), teacher)


def load_teacher(tc: TrainConfig, student):
    """The teacher of a heal run (fp32, dense or not), refused unless it reads the student's tokens."""
    path = fetch.localize(tc.teacher, "teacher")
    resolve(path)
    t = load_model(path, "fp32")
    check_same_tokens(student, t, tc.model, tc.teacher)
    if tc.seq_len > t.cfg.max_seq_len:
        raise TrainConfigError(f"seq_len {tc.seq_len} is above the teacher's maximum of {t.cfg.max_seq_len} positions")
    return t


def check_same_tokens(student, teacher, s_name, t_name) -> None:
    """KD compares the two models' distributions token by token: same vocabulary, same ids."""
    if student.cfg.vocab_size != teacher.cfg.vocab_size:
        raise TrainConfigError(f"teacher {t_name} has a vocabulary of {teacher.cfg.vocab_size} tokens, the student "
                               f"{s_name} {student.cfg.vocab_size}: distillation needs the same tokenizer")
    st, tt = student.tokenizer, teacher.tokenizer
    if st is not None and tt is not None and st.get_vocab() != tt.get_vocab():
        raise TrainConfigError(f"teacher {t_name} and student {s_name} have different tokenizers (the same "
                               "vocabulary size, different token ids): distillation needs the same tokenizer")
