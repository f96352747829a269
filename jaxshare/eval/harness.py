"""jaxshare as an lm-evaluation-harness (0.4.x) model: `--model jaxshare`.

Registering happens on import of this module. lm-eval 0.4 finds models only through its own
registry (a fixed name->class table, no entry points), so the shell entry is this module:

    python -m jaxshare.eval.harness --model jaxshare --model_args model=smollm2-135m,dtype=fp32 \\
        --include_path "$(python -m jaxshare.eval.tasks)" --tasks bb_social_iqa --limit 100

(or the `jaxshare-lm-eval` console script), which imports jaxshare (registering the model) and
hands every argument to lm-eval's own CLI; a bb_* task without --include_path gets ours added.
From Python: `import jaxshare.eval.harness` then `lm_eval.simple_evaluate(model="jaxshare", ...)`,
or pass a `JaxshareLM.from_loaded(loaded_model)` instance (any compressed params pytree works).

Scoring follows lm-eval's `hf` backend token for token (same context/continuation split from
TemplateLM, same left truncation, same rolling windows), so the per-item log-likelihoods are
comparable. The choices of a multiple-choice item share their context, which runs through the
model once (jaxshare.eval.scoring.score_groups). Requests are sorted by length and padded to a power
of two (rows and tokens), so jit compiles a handful of shapes; only the continuation positions are
unembedded.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxshare.core.dtypes import as_dtype
from jaxshare.errors import UsageError
from jaxshare.eval.perplexity import EvalError
from jaxshare.eval.scoring import greedy_until, score_continuations
from jaxshare.eval.tasks import task_dir
from jaxshare.io.load import load_model
from jaxshare.optional import require

# lm-eval is optional (the `eval` extra); this module is its adapter, so importing it needs it
# (a MissingDependency naming the extra, which `jaxshare eval mc` prints as one line)
TemplateLM = require("lm_eval.api.model", "eval", "the lm-eval backend", package="lm-eval").TemplateLM
register_model = require("lm_eval.api.registry", "eval", "the lm-eval backend", package="lm-eval").register_model
utils = require("lm_eval.utils", "eval", "the lm-eval backend", package="lm-eval")

class JaxshareLM(TemplateLM):
    """model_args: model (any jaxshare MODEL argument; `pretrained` is accepted too), dtype
    (fp32|bf16 compute), batch_size, max_length (default: the model's positions), add_bos_token,
    max_gen_toks (256), share_context (default true: the choices of an item run their shared
    context through the model once; false scores every choice as its own sequence)."""

    def __init__(self, model: str | None = None, pretrained: str | None = None, dtype: str = "fp32",
                 batch_size: int | str = 16, max_length: int | None = None, add_bos_token: bool | None = None,
                 max_gen_toks: int = 256, share_context: bool | str = True, loaded=None, **_ignored):
        super().__init__()
        if str(dtype) not in ("fp32", "bf16"):
            raise UsageError(f"dtype must be fp32 or bf16, got {dtype!r}")
        if loaded is None:
            spec = model or pretrained
            if not spec:
                raise UsageError("--model_args needs model=<registered name, HF directory, .gguf or checkpoint>")
            loaded = load_model(str(spec), "fp32")
        loaded.need_tokenizer("lm-eval")

        self.loaded, self.params, self.cfg, self.tokenizer = loaded, loaded.params, loaded.cfg, loaded.tokenizer
        self.dtype_name, self.dtype = str(dtype), as_dtype(str(dtype))
        bs = str(batch_size).split(":")[0]
        self._batch_size = 16 if bs.startswith("auto") else int(bs)
        if self._batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self._max_length = int(max_length) if max_length else int(self.cfg.max_seq_len)
        self.add_bos_token = None if add_bos_token is None else str(add_bos_token).lower() in ("1", "true", "yes")
        self._max_gen_toks = int(max_gen_toks)
        self.share_context = str(share_context).lower() in ("1", "true", "yes")

    @classmethod
    def from_loaded(cls, loaded, **kw) -> "JaxshareLM":
        return cls(loaded=loaded, **kw)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        # lm-eval adds its --batch_size/--device here; a batch_size in --model_args wins over it
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kw):
        # deferred: lm_eval.models.utils imports torch and transformers (seconds); only tokenizing needs it
        from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

        # as lm-eval's hf backend does, so that both backends score the same tokens
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        enc = self.tokenizer.encode(string, **special)
        return enc[-left_truncate_len:] if left_truncate_len else enc

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def get_model_info(self) -> dict:
        n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.params))
        return {"model_num_parameters": n, "model_dtype": self.dtype_name, "model_source": str(self.loaded.source)}

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_kw):
        """requests: (cache key, context tokens, continuation tokens) -> (log p, is greedy), in order."""
        def cache(i, result):
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], result)

        out = score_continuations(self.params, self.cfg, [(r[1], r[2]) for r in requests],
                                  batch_size=self.batch_size, max_length=self.max_length, dtype=self.dtype,
                                  disable_tqdm=disable_tqdm, on_result=cache, share_context=self.share_context)
        # a NaN log-likelihood still picks some answer: an accuracy from it would look like a result
        if not all(np.isfinite(ll) for ll, _ in out):
            raise EvalError(f"{self.loaded.source}: the model gives NaN or infinite log-likelihoods; check the "
                            "model file (a corrupt download?), and with --compute-dtype bf16 try fp32")
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for r, (string,) in enumerate([req.args for req in requests]):
            for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(r)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, scores):
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy, one request at a time (cached decoding; generation is not this backend's hot path)."""
        # deferred: lm_eval.models.utils imports torch and transformers (seconds)
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        out = []
        for req in tqdm(requests, desc="jaxshare generate_until", disable=disable_tqdm, file=sys.stderr):
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kw.get("do_sample") and float(kw.get("temperature") or 0.0) > 0.0:
                raise UsageError("the jaxshare backend generates greedily; do_sample with temperature > 0 is not supported")
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = int(kw.pop("max_gen_toks"))
            if max_gen >= self.max_length:
                raise UsageError(f"max_gen_toks {max_gen} leaves no room for a context in {self.max_length} positions")
            ids = self.tok_encode(context, left_truncate_len=self.max_length - max_gen) or [self.prefix_token_id]
            text = greedy_until(self.params, self.cfg, ids, self.tok_decode, until, max_gen,
                                stop_ids=(self.eot_token_id,), dtype=self.dtype)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


if __name__ != "__main__":  # run as a script, the package module registers (see below)
    from lm_eval.api.registry import model_registry

    if model_registry.get("jaxshare", None) is not JaxshareLM:
        register_model("jaxshare")(JaxshareLM)


def cli(argv=None) -> int:
    """`python -m jaxshare.eval.harness ...`: lm-eval's own CLI with the jaxshare model registered."""
    from lm_eval.__main__ import cli_evaluate  # deferred: lm-eval's whole CLI; only this entry point runs it

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no dataset hub here; our tasks are local JSONL
    args = sys.argv[1:] if argv is None else list(argv)
    if "--include_path" not in args and any("bb_" in a for a in args):
        args += ["--include_path", str(task_dir())]  # our local BIG-bench tasks, written on first use
    sys.argv = [sys.argv[0], *args]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    # Running as __main__ must not register a second copy of the class: use the package module.
    import jaxshare.eval.harness as _registered  # noqa: F401

    sys.exit(_registered.cli())
