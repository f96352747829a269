"""jaxshare's scorer against a recording of lm-eval's own `hf` backend on SmolLM2-135M
(benchmarks/lm_eval_reference.py writes tests/data/lm_eval_hf_smollm2.json). CI installs no lm-eval
(the `eval` extra is not in `test`), so this is where the backend meets lm-eval's log-likelihoods
and accuracies there; tests/eval/test_harness.py compares the two live where lm-eval is installed."""
import json
from pathlib import Path

import numpy as np
import pytest

from jaxshare.eval.scoring import score_continuations
from jaxshare.io.load import load_model

pytestmark = pytest.mark.slow
REF = Path(__file__).resolve().parents[1] / "data" / "lm_eval_hf_smollm2.json"


def test_loglikelihoods_and_accuracy_match_the_lm_eval_hf_recording():
    ref = json.loads(REF.read_text())
    reqs = ref["requests"]
    m = load_model(ref["model"])
    got = score_continuations(m.params, m.cfg, [(r["context_ids"], r["continuation_ids"]) for r in reqs],
                              batch_size=8, max_length=ref["max_length"], disable_tqdm=True)
    ll = np.asarray([g[0] for g in got])
    np.testing.assert_allclose(ll, [r["loglikelihood"] for r in reqs], rtol=1e-4)  # fp32 on both sides
    assert [g[1] for g in got] == [r["is_greedy"] for r in reqs]
    for task, want in ref["metrics"].items():  # acc / acc_norm scored as lm-eval does, from our numbers
        docs: dict = {}
        for r, lp in zip(reqs, ll):
            if r["task"] == task:
                docs.setdefault(r["doc_id"], []).append((lp, r["continuation_chars"], r["gold"]))
        acc = np.mean([np.argmax([lp for lp, _, _ in d]) == d[0][2] for d in docs.values()])
        acc_norm = np.mean([np.argmax([lp / n for lp, n, _ in d]) == d[0][2] for d in docs.values()])
        assert len(docs) == want["n"] and (acc, acc_norm) == pytest.approx((want["acc"], want["acc_norm"]))
