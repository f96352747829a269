"""Record lm-eval's own `hf` backend on SmolLM2-135M (our HF export of the embedded GGUF, fp32): the
token ids of every request of a few items of the local BIG-bench tasks, its log-likelihoods and
greedy flags, and the tasks' acc / acc_norm. CI has no lm-eval (the `eval` extra is not in `test`),
so tests/slow/test_lm_eval_reference.py holds jaxshare's scorer to this recording instead; rerun
this (it needs `pip install -e '.[eval]'`) when lm-eval or the tasks change.

    python -m benchmarks.lm_eval_reference [--tasks winowhy,social_iqa] [--limit 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, stamp

OUT = ROOT / "tests" / "data" / "lm_eval_hf_smollm2.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="winowhy,social_iqa")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    from lm_eval.models.huggingface import HFLM

    from jaxshare.eval.mc import evaluate, parse_tasks
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    tasks = parse_tasks(args.tasks)
    m = load_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as d:
        hf_dir = export_hf(m.params, m.cfg, Path(d) / "hf", tokenizer=m.tokenizer)
        hf = HFLM(pretrained=str(hf_dir), dtype="float32", batch_size=8, device="cpu")
        res = evaluate(hf, tasks, limit=args.limit, log_samples=True)
        requests = []
        for t in tasks:
            for sample in res["samples"][t]:
                for (ctx, cont), (ll, greedy) in zip(sample["arguments"], sample["filtered_resps"], strict=True):
                    # the token split lm-eval's TemplateLM makes (an empty context scores after the prefix token)
                    c_ids, k_ids = (([hf.prefix_token_id], hf.tok_encode(cont)) if ctx == ""
                                    else hf._encode_pair(ctx, cont))
                    requests.append({"task": t, "doc_id": sample["doc_id"], "gold": int(sample["target"]),
                                     "continuation_chars": len(cont), "context_ids": list(map(int, c_ids)),
                                     "continuation_ids": list(map(int, k_ids)), "loglikelihood": float(ll),
                                     "is_greedy": bool(greedy)})
    out = {"model": "smollm2-135m", "backend": "lm-eval hf (our HF export, float32, cpu)",
           "lm_eval": metadata.version("lm-eval"), "tasks": tasks, "limit": args.limit,
           "max_length": int(hf.max_length),
           "metrics": {t: {k: float(v) for k, v in res["tasks"][t].items()} for t in tasks},
           "requests": requests, "provenance": stamp("benchmarks.lm_eval_reference")}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(requests)} requests of {len(tasks)} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
