"""Multiple-choice scoring that runs each shared context once (jaxshare.eval.scoring.score_groups)
gives what scoring every (context, continuation) pair as its own sequence gives, family by family."""
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.core.model import forward
from jaxshare.eval import scoring
from jaxshare.eval.scoring import score_continuations

MAX_LENGTH = 48
_groups = scoring.score_groups  # the real one, under the test's counting wrapper

FAMILIES = {
    "llama": lambda: random_hf_model("llama", seed=1),
    "qwen2": lambda: random_hf_model("qwen2", seed=2),  # q/k/v biases
    "gpt2": lambda: random_hf_model("gpt2", seed=3),  # learned positions
    "mistral-window": lambda: random_hf_model("mistral", seed=4, sliding_window=12),
    # local/global layers with their own RoPE bases and windows shorter than the contexts
    "gemma3-window": lambda: _gemma3(),
}


def _gemma3():
    import torch

    model = random_hf_model("gemma3_text", seed=5, num_key_value_heads=2, sliding_window=10, head_dim=16,
                            sliding_window_pattern=2, query_pre_attn_scalar=20, final_logit_softcapping=3.0)
    with torch.no_grad():  # norm weights around 0 = effective (1 + w) around 1, as tests/io/families
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def greedy_tokens(params, cfg, ids, k):
    """The model's own greedy k tokens after ids (one padded shape: one compile)."""
    ids = list(ids)
    for _ in range(k):
        padded = np.zeros((1, 64), np.int32)
        padded[0, :len(ids)] = ids
        ids.append(int(np.argmax(np.asarray(forward(params, cfg, jnp.asarray(padded)))[0, len(ids) - 1])))
    return ids[-k:]


def mc_pairs(params, cfg, rng):
    """Groups with shared contexts of varied lengths (1 to 40 tokens, past every window), 1-token
    and multi-token continuations (some the model's greedy ones), a group whose longest choice is
    truncated at MAX_LENGTH, a context of its own, and a duplicated pair."""
    pairs = []
    for n in (1, 5, 13, 21, 40, 33, 9):
        ctx = list(rng.integers(0, 256, n))
        greedy = greedy_tokens(params, cfg, ctx, 3)
        conts = [greedy[:1], greedy, list(rng.integers(0, 256, 1)), list(rng.integers(0, 256, rng.integers(2, 8)))]
        pairs += [(ctx, c) for c in conts[:2 + n % 3]]  # 2, 3 or 4 choices
    ctx = list(rng.integers(0, 256, 45))  # 45 + 5 > 48 + 1: that choice is truncated, the others are not
    pairs += [(ctx, list(rng.integers(0, 256, 5))), (ctx, list(rng.integers(0, 256, 2))), (ctx, [7])]
    pairs.append((list(rng.integers(0, 256, 17)), list(rng.integers(0, 256, 3))))  # a context of its own
    pairs.append(pairs[3])
    rng.shuffle(pairs)
    return pairs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shared_context_scoring_equals_per_pair_scoring(family, tmp_path, monkeypatch):
    from jaxshare.io.hf import load_hf_dir

    FAMILIES[family]().save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    pairs = mc_pairs(params, cfg, np.random.default_rng(0))
    calls = []
    monkeypatch.setattr(scoring, "score_groups", lambda *a, **k: calls.append(a[2].shape) or _groups(*a, **k))
    kw = dict(batch_size=4, max_length=MAX_LENGTH, disable_tqdm=True)
    got = score_continuations(params, cfg, pairs, **kw)
    want = score_continuations(params, cfg, pairs, share_context=False, **kw)
    assert calls and sum(s[0] for s in calls) >= 8  # the grouped path ran (8 shared contexts, padded)
    lp_got, lp_want = np.array([g[0] for g in got]), np.array([w[0] for w in want])
    np.testing.assert_allclose(lp_got, lp_want, rtol=1e-5, atol=1e-6)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert any(w[1] for w in want) and not all(w[1] for w in want)  # both greedy flags occur



def test_one_token_continuations_need_no_second_pass(tmp_path):
    """Only one-token choices: scored from the context's last position alone (K = 0)."""
    from jaxshare.io.hf import load_hf_dir

    random_hf_model("llama", seed=6).save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    rng = np.random.default_rng(1)
    pairs = [(ctx, [int(t)]) for ctx in (list(rng.integers(0, 256, 9)), list(rng.integers(0, 256, 30)))
             for t in rng.integers(0, 256, 3)]
    kw = dict(batch_size=16, max_length=MAX_LENGTH, disable_tqdm=True)
    got = score_continuations(params, cfg, pairs, **kw)
    want = score_continuations(params, cfg, pairs, share_context=False, **kw)
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5, atol=1e-6)
    assert [g[1] for g in got] == [w[1] for w in want]
