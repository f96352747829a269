"""Post-training configuration: a frozen dataclass read from YAML plus `--set key=value`
overrides, validated up front so a bad run fails before any compute (docs/methods.md §1, PostShare).

Defaults are the paper's: gamma 0.5, AdamW lr 5e-5, betas (0.9, 0.95), eps 1e-8, weight decay
0.1, cosine schedule with warm-up, gradient clip 1.0.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from jaxshare.errors import JaxshareError
from jaxshare.storage.paths import as_path, write_text
from jaxshare.yamlio import safe_load

MODES = ("postshare", "direct+post", "plain", "inheritune", "heal")
# What a heal run trains (training/recipes.py): every leaf its kind allows, only the compressed
# leaves and norms, or LoRA adapters over frozen weights.
TRAINS = ("all", "compressed", "lora")
# Exactly one training length is in force; setting one with --set clears the others.
LENGTH_KEYS = ("steps", "tokens", "epochs")


class TrainConfigError(JaxshareError, ValueError):
    """A training configuration that cannot run as written."""


# What `train resume --set` may change: the run's length and where its lr schedule ends, how often
# it evaluates, checkpoints and logs, its writers, devices and speed settings. Everything else is
# fixed by the checkpoint, the plan or the batches already drawn (model, data, shapes, sharing,
# the optimizer's hyperparameters, the seed) and is refused by name.
RESUMABLE = LENGTH_KEYS + ("lr", "end_lr_ratio", "eval_every", "eval_batch_size", "checkpoint_every",
                           "keep_checkpoints", "keep_final_checkpoint", "async_checkpoints", "log_every",
                           "progress", "tensorboard", "wandb", "peak_flops", "export_hf", "merge", "remat", "attention",
                           "mesh", "dcn_mesh", "multihost", "coordinator", "num_processes", "process_id")


def check_resume_sets(sets, run_dir) -> None:
    """Refuse (by name, in one line) any `--set` a resumed run could not honour."""
    bad = []
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise TrainConfigError(f"--set expects key=value, got {item!r}")
        if key not in TrainConfig.keys():
            raise TrainConfigError(f"unknown config key {key!r}; known keys: {', '.join(TrainConfig.keys())}")
        if key not in RESUMABLE and key not in bad:
            bad.append(key)
    if bad:
        raise TrainConfigError(f"train resume {run_dir}: --set {', '.join(bad)} cannot change in a run under way "
                               f"(resume may change {', '.join(RESUMABLE)}); start a new run to change "
                               f"{'it' if len(bad) == 1 else 'them'}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (every recipe). Each field's comment is its reference entry (docs/config.md)."""
    # run
    mode: str = "postshare"  # the recipe: postshare, direct+post, plain, inheritune or heal (training/recipes.py)
    model: str = "smollm2-135m"  # the starting model: a registered name, HF dir, .gguf, native checkpoint or URL
    run_dir: str = "runs/postshare"  # (heal: runs/heal) config, metrics, checkpoints, final/ and hf/ (any local path or gs:// URL)
    seed: int = 0  # data order and any random initialization (LoRA adapters)
    # data and length
    data: str = "books:train"  # training text: a named corpus, .txt/.jsonl file, or a .npy of int token ids
    eval_data: str = "books:validation"  # held-out text, same forms (heal: books:test)
    steps: int = 100  # run length in optimizer steps (exactly one of steps / tokens / epochs is > 0)
    tokens: int = 0  # run length in training tokens (rounded up to whole steps)
    epochs: float = 0.0  # run length in passes over the training windows (the PostShare paper: 0.5)
    seq_len: int = 256  # tokens per window
    batch_size: int = 4  # windows per micro-batch (global, over all devices)
    grad_accum: int = 1  # micro-batches per optimizer step
    # head sharing (DirectShare selection on the starting model decides the pairs)
    ratio: float = 0.3  # fraction of attention units tied (0: no sharing; inheritune and heal need 0)
    match: str = "qk"  # which weights the similarity search compares: q, k, v, qk, qkv or separate
    keep: str = "root"  # what a tied group keeps: root, mean, or data (direct+post: calibration merge)
    share_o: bool = False  # tie the output projection's rows with their units
    correct: str = "none"  # direct+post, data-aware: per-unit q/k corrections (qk), plus the value fold (qkv)
    calib: str = "books:train"  # calibration text for keep=data / correct (a corpus or a .npy of token ids)
    calib_windows: int = 32  # calibration windows
    calib_seq_len: int = 512  # calibration window length
    gamma: float = 0.5  # weight of PostShare's pairwise L2 penalty
    # Inheritune (docs/methods.md §3)
    stages: str = ""  # growth stages as layer counts ("15,17,19"); empty: one stage at the model's depth
    grow: str = "copy"  # new layers copy the student's last layers (copy) or take the reference's next (reference)
    reference: str = ""  # the deeper model to grow toward; empty: the model itself when it is deeper
    stop_at_reference: bool = True  # stop once held-out loss reaches the reference's
    # healing (mode heal, training/recipes.py)
    teacher: str = ""  # the dense model the student was compressed from (same tokenizer)
    trains: str = "all"  # all (every leaf the kind allows), compressed (compressed leaves + norms) or lora
    kd_temperature: float = 1.0  # KD temperature tau (the loss is scaled by tau^2)
    # Half, not 0: on every student measured (docs/healing.md) KD + CE stayed within 0.015 nats per
    # token of the better of KD and CE, where pure KD was up to 0.137 behind
    kd_alpha: float = 0.5  # weight of the label cross-entropy mixed into the KD loss (0: pure KD)
    kd_beta: float = 0.0  # weight of the hidden-state term on kd_layers
    kd_layers: str = ""  # "3,7,11": student layers matched to the teacher's same-numbered layers
    kd_chunk: int = 128  # sequence positions per logits chunk: neither model's logits exist whole
    teacher_dtype: str = ""  # the teacher's compute dtype (bf16 halves its memory); empty: the training dtype
    lora_rank: int = 8  # trains=lora: adapters of this rank on every linear weight
    lora_alpha: float = 16.0  # adapter scale alpha / rank
    merge: bool = False  # fold adapters into dense leaves at the end (shared, basis, quantized keep theirs)
    # optimizer (AdamW, the PostShare paper's settings)
    lr: float = 5e-5  # peak learning rate (heal: 1e-4)
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # on matrices only (two matrix axes), never norms, biases or integer leaves
    warmup_steps: int = 10  # linear warm-up from 0
    end_lr_ratio: float = 0.0  # cosine decays to lr * end_lr_ratio
    clip_norm: float = 1.0  # global gradient-norm clip (0: none)
    # compute
    dtype: str = "bf16"  # compute dtype; master weights and optimizer state stay fp32
    remat: str = "dots"  # jax.checkpoint policy on the scanned layer: dots (keep weight matmuls), full, none
    attention: str = "xla"  # xla, cudnn or auto (jax picks cuDNN on a GPU where it supports the call)
    # observability, checkpoints, evaluation
    eval_every: int = 50  # steps between held-out evaluations (0: only the final one)
    eval_windows: int = 8  # held-out windows evaluated
    eval_batch_size: int = 8  # windows per evaluation batch
    checkpoint_every: int = 50  # steps between checkpoints (0: only the preemption and final saves)
    keep_checkpoints: int = 1  # newest checkpoints kept while the run goes on (each is 3x the model: params, m, v)
    keep_final_checkpoint: bool = False  # keep the last checkpoint of a completed run (to resume or extend it)
    async_checkpoints: bool = False  # overlap checkpoint writes with training, at a host copy of the state
    log_every: int = 1  # steps between metric rows
    progress: bool = True  # a progress bar on stderr
    tensorboard: bool = True  # event files in RUN_DIR/tensorboard
    wandb: str = ""  # a W&B project name: also log there (needs the wandb package)
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0: from the device kind (TPU/GPU table)
    export_hf: bool = True  # also write an HF export of the final model to RUN_DIR/hf
    # devices
    mesh: str = ""  # "data=2,fsdp=4,tensor=1"; empty: every device on fsdp. With dcn_mesh: one slice's layout
    dcn_mesh: str = ""  # layout across slices (or processes), e.g. "data=2"; empty: one slice
    multihost: bool = False  # call jax.distributed.initialize() first (the program does; auto-detected on TPU/SLURM)
    coordinator: str = ""  # multihost: the coordinator's host:port
    num_processes: int = 0  # multihost: number of processes (0: auto)
    process_id: int = -1  # multihost: this process's id (-1: auto)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def validate(self) -> "TrainConfig":
        """Checks that need no model or data; raises TrainConfigError."""
        def bad(msg):
            raise TrainConfigError(msg)

        if self.mode not in MODES:
            bad(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        # deferred: keeps jax out of the CLI parser
        from jaxshare.core.dtypes import NAMES

        if self.dtype not in NAMES:  # the names every entry point takes (core.dtypes.as_dtype)
            bad(f"dtype must be one of {', '.join(NAMES)}, got {self.dtype!r}")
        # deferred: keeps jax out of the CLI parser
        from jaxshare.headshare.datashare import CORRECT, KEEP
        from jaxshare.headshare.similarity import MATCHES

        if self.match not in MATCHES:
            bad(f"match must be one of {', '.join(MATCHES)}, got {self.match!r}")
        if self.keep not in KEEP:
            bad(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.correct not in CORRECT:
            bad(f"correct must be one of {', '.join(CORRECT)}, got {self.correct!r}")
        if (self.keep == "data" or self.correct != "none") and self.mode != "direct+post":
            bad(f"keep={self.keep}, correct={self.correct} tie with calibration data before training: "
                f"mode direct+post only, got {self.mode}")
        if self.correct == "qkv" and self.share_o:
            bad("correct=qkv folds values into each unit's own W_o, which share_o ties")
        if self.calib_windows < 1 or self.calib_seq_len < 2:
            bad(f"calib_windows must be >= 1 and calib_seq_len >= 2, got {self.calib_windows}, {self.calib_seq_len}")
        if not (0 <= self.ratio < 1):
            bad(f"ratio must be in [0, 1), got {self.ratio}")
        lengths = [k for k in LENGTH_KEYS if getattr(self, k) > 0]
        if len(lengths) != 1:
            bad(f"set exactly one of steps, tokens, epochs (> 0); got {lengths or 'none'}")
        for k in LENGTH_KEYS:
            if getattr(self, k) < 0:
                bad(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("seq_len",):
            if getattr(self, k) < 2:
                bad(f"{k} must be at least 2, got {getattr(self, k)}")
        for k in ("batch_size", "grad_accum", "eval_windows", "eval_batch_size", "keep_checkpoints", "log_every"):
            if getattr(self, k) < 1:
                bad(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("eval_every", "checkpoint_every", "warmup_steps", "seed"):
            if getattr(self, k) < 0:
                bad(f"{k} must be >= 0, got {getattr(self, k)}")
        for k in ("lr", "eps"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                bad(f"{k} must be a positive number, got {v}")
        for k in ("gamma", "weight_decay", "clip_norm", "end_lr_ratio"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                bad(f"{k} must be a finite number >= 0, got {v}")
        for k in ("b1", "b2"):
            if not (0 <= getattr(self, k) < 1):
                bad(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if not self.run_dir:
            bad("run_dir must be set")
        if self.mode == "heal":
            self._validate_heal(bad)
        elif self.teacher:
            bad(f"teacher is a healing setting (mode heal), got mode {self.mode}")
        if self.mode == "inheritune":
            # deferred: keeps jax out of the CLI parser
            from jaxshare.inheritune.grow import check_stages

            if self.ratio != 0:
                bad(f"ratio is a head-sharing setting; inheritune trains without it (set ratio=0), got {self.ratio}")
            try:
                check_stages(self.stages, self.grow)
            except ValueError as e:
                bad(str(e))
        # deferred: keeps jax out of the CLI parser
        from jaxshare.training.memory import REMAT
        from jaxshare.training.mesh import parse_mesh
        from jaxshare.training.step import ATTENTION

        if self.remat not in REMAT:
            bad(f"remat must be one of {', '.join(REMAT)} (or true/false), got {self.remat!r}")
        if self.attention not in ATTENTION:
            bad(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if not (math.isfinite(self.peak_flops) and self.peak_flops >= 0):
            bad(f"peak_flops must be a number >= 0, got {self.peak_flops}")
        parse_mesh(self.mesh)  # syntax only; device counts are checked when the mesh is built
        parse_mesh(self.dcn_mesh, "dcn_mesh")
        return self

    def _validate_heal(self, bad) -> None:
        # deferred: keeps jax out of the CLI parser
        from jaxshare.core.dtypes import NAMES

        if not self.teacher:
            bad("mode heal needs a teacher (the dense model the student was compressed from): --teacher MODEL")
        if self.ratio != 0:
            bad(f"ratio is a head-sharing setting; heal trains the model as it is (set ratio=0), got {self.ratio}")
        if self.trains not in TRAINS:
            bad(f"trains must be one of {', '.join(TRAINS)}, got {self.trains!r}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            bad(f"kd_temperature must be a positive number, got {self.kd_temperature}")
        if not (0 <= self.kd_alpha <= 1):
            bad(f"kd_alpha (the weight of cross-entropy) must be in [0, 1], got {self.kd_alpha}")
        if not (math.isfinite(self.kd_beta) and self.kd_beta >= 0):
            bad(f"kd_beta must be a finite number >= 0, got {self.kd_beta}")
        try:
            layers = [int(x) for x in self.kd_layers.split(",") if x.strip()]
        except ValueError:
            bad(f"kd_layers must be comma-separated layer numbers, got {self.kd_layers!r}")
        if any(i < 0 for i in layers):
            bad(f"kd_layers must be >= 0, got {self.kd_layers!r}")
        if self.kd_beta and not layers:
            bad("kd_beta > 0 needs kd_layers (the layers whose hidden states are matched)")
        if self.kd_chunk < 1:
            bad(f"kd_chunk must be >= 1, got {self.kd_chunk}")
        if self.teacher_dtype and self.teacher_dtype not in NAMES:
            bad(f"teacher_dtype must be one of {', '.join(NAMES)} or empty, got {self.teacher_dtype!r}")
        if self.lora_rank < 1:
            bad(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            bad(f"lora_alpha must be a positive number, got {self.lora_alpha}")
        if self.merge and self.trains != "lora":
            bad("merge folds LoRA adapters: it needs trains=lora")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, raw, typ: type):
    """A YAML value or --set string as the field's type (bool/int/float/str)."""
    if isinstance(raw, str) and typ is not str:
        try:
            raw = safe_load(raw, f"--set {key}")
        except yaml.YAMLError:
            raise TrainConfigError(f"{key}: cannot parse {raw!r}") from None
    if key == "remat" and isinstance(raw, bool):  # the boolean form of earlier configs
        return "dots" if raw else "none"
    if typ is bool:
        if not isinstance(raw, bool):
            raise TrainConfigError(f"{key} must be true or false, got {raw!r}")
        return raw
    if typ is int:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TrainConfigError(f"{key} must be an integer, got {raw!r}")
        return raw
    if typ is float:
        if isinstance(raw, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                raw = float(raw)
            except ValueError:
                pass
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise TrainConfigError(f"{key} must be a number, got {raw!r}")
        return float(raw)
    if raw is None:
        return ""
    return str(raw)


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}

# The config's sections. A YAML file may group keys under these names or list them flat (the two
# forms mix); `--set` takes the flat key. Every key is in exactly one section; the reference of the
# keys (`python -m jaxshare.training.config`, docs/config.md) is generated from this table and the
# comments beside the fields of TrainConfig.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("mode", "model", "run_dir", "seed"),
    "data": ("data", "eval_data", "steps", "tokens", "epochs", "seq_len", "batch_size", "grad_accum"),
    "sharing": ("ratio", "match", "keep", "share_o", "correct", "calib", "calib_windows", "calib_seq_len", "gamma"),
    "inheritune": ("stages", "grow", "reference", "stop_at_reference"),
    "heal": ("teacher", "trains", "kd_temperature", "kd_alpha", "kd_beta", "kd_layers", "kd_chunk", "teacher_dtype",
             "lora_rank", "lora_alpha", "merge"),
    "optimizer": ("lr", "b1", "b2", "eps", "weight_decay", "warmup_steps", "end_lr_ratio", "clip_norm"),
    "compute": ("dtype", "remat", "attention"),
    "observe": ("eval_every", "eval_windows", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                "keep_final_checkpoint", "async_checkpoints", "log_every", "progress", "tensorboard", "wandb",
                "peak_flops", "export_hf"),
    "devices": ("mesh", "dcn_mesh", "multihost", "coordinator", "num_processes", "process_id"),
}
SECTION_OF = {key: name for name, keys in SECTIONS.items() for key in keys}


def flatten(raw: dict, where: str = "the config") -> dict:
    """A config mapping with sections (`optimizer: {lr: 1e-4}`) as flat keys; a key outside its
    section, or given twice, is refused by name."""
    flat: dict = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            items = value.items()
            for k, _ in items:
                if k not in SECTIONS[key]:
                    home = f" (it belongs to section {SECTION_OF[k]})" if k in SECTION_OF else ""
                    raise TrainConfigError(f"{where}: section {key} has no key {k!r}{home}; its keys: "
                                           f"{', '.join(SECTIONS[key])}")
        elif key in SECTIONS and key not in SECTION_OF:  # `data: books:train` is the key, not the section
            raise TrainConfigError(f"{where}: section {key} must be a mapping of its keys ({', '.join(SECTIONS[key])})")
        else:
            items = [(key, value)]
        for k, v in items:
            if k in flat:
                raise TrainConfigError(f"{where}: key {k} is given twice")
            flat[k] = v
    return flat


def reference() -> list[dict]:
    """Every key: section, name, type, default and the comment beside (or above) its field."""
    notes, above = {}, []
    for line in inspect.getsource(TrainConfig).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        m = re.match(r"(\w+): [\w\s|]+ = [^#]*?(?:#\s*(.*))?$", text)
        if m and m.group(1) in SECTION_OF:
            notes[m.group(1)] = " ".join(filter(None, [m.group(2), " ".join(above) if not m.group(2) else ""]))
        above = [] if text and not text.startswith("#") else above
    defaults = TrainConfig()
    return [{"section": SECTION_OF[f.name], "key": f.name, "type": f.type if isinstance(f.type, str) else f.type.__name__,
             "default": getattr(defaults, f.name), "doc": notes.get(f.name, "")} for f in fields(TrainConfig)]


def reference_markdown() -> str:
    rows = reference()
    out = ["# Training config keys", "",
           "Generated from `jaxshare.training.config.TrainConfig` (`python -m jaxshare.training.config`). A YAML "
           "config lists keys flat or grouped by section (`optimizer: {lr: 1.0e-4}`); `--set key=value` takes the "
           "flat key. `jaxshare train MODE` and `jaxshare heal` read the same keys.", ""]
    for name in SECTIONS:
        out += [f"## {name}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{r['key']}` | {r['type']} | `{r['default']!r}` | {r['doc'].replace('|', '/')} |"
                for r in rows if r["section"] == name]
        out.append("")
    return "\n".join(out)


def _field_types() -> dict[str, type]:
    return {f.name: _TYPES[f.type] if isinstance(f.type, str) else f.type for f in fields(TrainConfig)}


def build_config(base: dict | None = None, sets: list[str] | None = None, mode: str | None = None) -> TrainConfig:
    """TrainConfig from a YAML mapping, `key=value` overrides (applied last) and a mode."""
    types = _field_types()
    values: dict = {}
    for key, raw in flatten(base or {}).items():
        if key not in types:
            raise TrainConfigError(f"unknown config key {key!r}; known keys: {', '.join(types)}")
        values[key] = _coerce(key, raw, types[key])
    if any(k in values for k in LENGTH_KEYS):  # a file naming one length means that one (steps' default is off)
        for k in LENGTH_KEYS:
            values.setdefault(k, types[k](0))
    for item in sets or []:
        if "=" not in item:
            raise TrainConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in types:
            raise TrainConfigError(f"unknown config key {key!r}; known keys: {', '.join(types)}")
        if key in LENGTH_KEYS:  # one length at a time: the override wins over the file's
            for other in LENGTH_KEYS:
                values[other] = types[other](0)
        values[key] = _coerce(key, raw, types[key])
    if mode is not None:  # the subcommand names the mode; a config file or --set naming another is refused
        named = values.get("mode", mode)
        if named != mode:
            where = "--set mode" if any(s.split("=", 1)[0].strip() == "mode" for s in sets or []) else "the config file"
            raise TrainConfigError(f"{where} says mode {named!r} but the subcommand is `train {mode}`; "
                                   f"run `jaxshare train {named}` or drop the mode key")
        values["mode"] = mode
    if values.get("mode") in ("inheritune", "heal"):  # no head sharing unless a ratio was asked for
        values.setdefault("ratio", 0.0)
    if values.get("mode") == "heal":  # held-out text the healing data never saw, and the run dir
        values.setdefault("eval_data", "books:test")
        values.setdefault("run_dir", "runs/heal")
        values.setdefault("lr", 1e-4)  # the PostShare paper's 5e-5 is for a model not yet damaged
    return TrainConfig(**values).validate()


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name) -> Path:
    """A YAML path, or the bare name of a shipped config (`smollm2_postshare`), so that a wheel
    install finds the configs without a checkout. A URL (gs://, memory://, ...) is read through epath."""
    if "://" in str(name):
        remote = as_path(str(name))
        if remote.exists():
            return remote
        raise TrainConfigError(f"config file {name} does not exist")
    p = Path(name)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")))
    raise TrainConfigError(f"config file {name} does not exist (shipped configs: {known})")


def load_config(path=None, sets: list[str] | None = None, mode: str | None = None) -> TrainConfig:
    base = {}
    if path is not None:
        p = config_path(path)
        try:
            base = safe_load(p.read_text(), p) or {}
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(base, dict):
            raise TrainConfigError(f"{path}: expected a mapping of config keys")
    return build_config(base, sets, mode)


def _check_sections() -> None:
    keys = [f.name for f in fields(TrainConfig)]
    missing, extra = set(keys) - set(SECTION_OF), set(SECTION_OF) - set(keys)
    if missing or extra or sum(map(len, SECTIONS.values())) != len(keys):
        raise AssertionError(f"SECTIONS out of step with TrainConfig: missing {missing}, unknown {extra}")


_check_sections()


def dump_config(cfg: TrainConfig, path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


if __name__ == "__main__":
    print(reference_markdown())
