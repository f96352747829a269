"""The lm-eval backend (jaxshare.eval.harness), its scoring (jaxshare.eval.scoring), the local
BIG-bench tasks and `jaxshare eval mc`. Scoring tests run without lm-eval; the rest skip without it."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.eval.conftest import assert_same_scores

from jaxshare.core.generate import generate
from jaxshare.core.model import forward
from jaxshare.eval.perplexity import perplexity_of_windows
from jaxshare.eval.scoring import bucket, fine_bucket, greedy_until, score_continuations

def direct_logprobs(loaded, ids):
    """log p [len(ids), V] from one plain forward; right-padded to 64 (one compile), which a causal
    model's earlier positions never see."""
    padded = np.zeros((1, 64), np.int32)
    padded[0, :len(ids)] = ids
    logp = jax.nn.log_softmax(forward(loaded.params, loaded.cfg, jnp.asarray(padded))[0], axis=-1)
    return np.asarray(logp, np.float64)[:len(ids)]


# ------------------------------------------------------------------ scoring, no lm-eval needed

def test_bucket_shapes():
    assert [bucket(n) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]
    assert bucket(100, cap=64) == 128 and bucket(50, cap=64) == 64
    assert [fine_bucket(n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 25, 33, 49, 97)] == \
        [1, 2, 3, 4, 6, 6, 8, 12, 16, 24, 32, 48, 64, 128]
    assert fine_bucket(50, cap=56) == 56 and fine_bucket(60, cap=56) == 64


def test_score_continuations_equals_direct_sum(tiny):
    loaded, _ = tiny
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(0, 256, rng.integers(1, 60))), list(rng.integers(0, 256, rng.integers(1, 9))))
             for _ in range(11)]
    pairs.append((list(rng.integers(0, 256, 70)), list(rng.integers(0, 256, 5))))  # left-truncated at 48
    got = score_continuations(loaded.params, loaded.cfg, pairs, batch_size=4, max_length=48, disable_tqdm=True)
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        whole = (ctx + cont)[-49:]
        logp = direct_logprobs(loaded, whole[:-1])
        rows = np.arange(len(whole) - 1 - len(cont), len(whole) - 1)
        want = logp[rows, cont].sum()
        assert lp == pytest.approx(want, rel=1e-5, abs=1e-5)
        assert greedy == bool(np.all(logp[rows].argmax(-1) == np.asarray(cont)))


def test_greedy_until_stops_at_the_stop_string(tiny):
    loaded, _ = tiny
    tok = loaded.tokenizer
    ids = tok.encode("The cat sat on")
    free = generate(loaded.params, loaded.cfg, np.asarray([ids]), 12)[0].tolist()  # the core's greedy
    assert greedy_until(loaded.params, loaded.cfg, ids, tok.decode, [], 12) == tok.decode(free)
    texts = []

    def decode(t):  # token numbers as text: the stop string is exact, whatever bytes come out
        texts.append(" ".join(map(str, t)))
        return texts[-1]

    full = " ".join(map(str, free))
    stop = f" {free[5]}"
    cut = greedy_until(loaded.params, loaded.cfg, ids, decode, ["never-there", stop], 12)
    assert cut == full[:full.index(stop)]
    assert stop in texts[-1] and not any(stop in t for t in texts[:-1]) and len(texts) < 12


# ------------------------------------------------------------------ local tasks

def test_task_conversion_keeps_every_item_and_gold(bigbench):
    from jaxshare.data.corpora import _read_members
    from jaxshare.eval.tasks import TASKS, load_rows, task_dir

    root = task_dir()
    raw = _read_members(bigbench, TASKS, "bigbench")
    for name in TASKS:
        examples = json.loads(raw[name])["examples"]
        rows = load_rows(name)
        assert len(rows) == len(examples), name
        assert f"task: bb_{name}" in (root / f"{name}.yaml").read_text()
        for i in (0, len(rows) // 2, len(rows) - 1):
            ex, row = examples[i], rows[i]
            assert ex["input"].strip() in row["inputs"]
            assert row["choices"] == [k.strip() for k in ex["target_scores"]]
            assert ex["target_scores"][list(ex["target_scores"])[row["gold"]]] == max(ex["target_scores"].values())
    siqa = load_rows("social_iqa")[0]
    assert siqa["choices"][siqa["gold"]] == "Find somewhere to go" and siqa["inputs"].endswith("\nA:")


# ------------------------------------------------------------------ through lm-eval

def _ours(loaded, **kw):
    pytest.importorskip("lm_eval")
    from jaxshare.eval.harness import JaxshareLM

    return JaxshareLM.from_loaded(loaded, **kw)


def test_backend_loglikelihood_and_registration(tiny):
    lm = _ours(tiny[0], batch_size=4)
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from jaxshare.eval.harness import JaxshareLM

    assert get_model("jaxshare") is JaxshareLM
    reqs = [("Question: is it? Answer:", " yes"), ("Question: is it? Answer:", " no"), ("", "hello")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    tok = tiny[0].tokenizer
    for (ctx, cont), (lp, _) in zip(reqs, got):
        ctx_ids = tok.encode(ctx) if ctx else [tok.eos_token_id]  # no BOS: the prefix is EOS
        ids = ctx_ids + tok.encode(cont)
        logp = direct_logprobs(tiny[0], ids[:-1])
        n = len(tok.encode(cont))
        assert lp == pytest.approx(logp[np.arange(len(ids) - 1 - n, len(ids) - 1), ids[-n:]].sum(), rel=1e-5)
    # the two " yes"/" no" requests share their context (run once); share_context=false (a model
    # arg, so a string) scores each as its own sequence, with the same results
    per_pair = _ours(tiny[0], batch_size=4, share_context="false")
    assert lm.share_context and not per_pair.share_context
    again = per_pair.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    np.testing.assert_allclose([g[0] for g in got], [a[0] for a in again], rtol=1e-5)
    assert [g[1] for g in got] == [a[1] for a in again]


def test_loglikelihood_rolling_equals_perplexity_nll(tiny):
    L = 16
    lm = _ours(tiny[0], batch_size=4, max_length=L)
    from lm_eval.api.instance import Instance

    text = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"  # 48 bytes = 3 windows of L
    ids = tiny[0].tokenizer.encode(text)
    assert len(ids) == 3 * L
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    # lm-eval's rolling windows = our protocol's windows of L+1 tokens, each starting at the last
    # token of the one before (the first at the prefix token), scoring L predictions each
    seq = [tiny[0].tokenizer.eos_token_id] + ids
    windows = np.asarray([seq[i * L:i * L + L + 1] for i in range(3)], np.int32)
    ppl = perplexity_of_windows(tiny[0].params, tiny[0].cfg, windows, batch_size=4)
    assert ppl["tokens"] == 3 * L
    assert -rolling == pytest.approx(ppl["nll"] * ppl["tokens"], rel=1e-5)
    assert math.exp(-rolling / (3 * L)) == pytest.approx(ppl["ppl"], rel=1e-5)


def test_generate_until_through_lm_eval(tiny):
    lm = _ours(tiny[0])
    from lm_eval.api.instance import Instance

    free, = lm.generate_until([Instance("generate_until", {}, ("Once upon", {"until": [], "max_gen_toks": 10}), 0)],
                              disable_tqdm=True)
    stop = free[4:6]
    cut, = lm.generate_until([Instance("generate_until", {}, ("Once upon", {"until": [stop], "max_gen_toks": 10}), 0)],
                             disable_tqdm=True)
    assert cut == free[:free.index(stop)] and len(cut) < len(free)


def test_parity_with_lm_eval_hf_backend(tiny, bigbench):
    """Same tasks through lm-eval's own `hf` backend on our HF export: same per-item log-likelihoods
    (fp32, <= 1e-4 relative) and the same acc / acc_norm."""
    ours = _ours(tiny[0], batch_size=8)
    from lm_eval.models.huggingface import HFLM

    from jaxshare.eval.mc import evaluate

    hf = HFLM(pretrained=str(tiny[1]), dtype="float32", batch_size=8, device="cpu")
    tasks = ["winowhy", "social_iqa"]
    a = evaluate(ours, tasks, limit=6, log_samples=True)
    b = evaluate(hf, tasks, limit=6, log_samples=True)
    assert_same_scores(a, b, tasks)


# ------------------------------------------------------------------ CLI

@pytest.mark.parametrize("argv, msg", [
    (["smollm2-135m", "--tasks", "nope"], "unknown task 'nope'"),
    (["smollm2-135m", "--limit", "0"], "argument --limit: must be an integer at least 1, got 0"),
    (["/no/such/model", "--tasks", "ROWS", "--limit", "2"], "cannot load '/no/such/model'"),
])
def test_eval_mc_bad_input(capsys, tmp_path, monkeypatch, argv, msg):
    from jaxshare.cli.main import main

    if argv[0].startswith("/"):
        pytest.importorskip("lm_eval")  # the model is loaded only once lm-eval is there
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    rows = tmp_path / "rows.jsonl"  # a task that can be had without the bigbench sdist
    rows.write_text(json.dumps({"inputs": "q", "choices": ["a", "b"], "gold": 0}) + "\n")
    argv = [str(rows) if a == "ROWS" else a for a in argv]
    try:
        code = main(["eval", "mc", *argv])
    except SystemExit as e:  # refused while parsing: usage lines, then the error line
        code = e.code
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and "Traceback" not in err
    assert last.startswith("jaxshare eval mc: error:") and msg in last
