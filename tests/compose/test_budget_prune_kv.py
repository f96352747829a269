"""KV-group pruning as a candidate of the budgeted plan (`--methods prune-kv`, compose/candidates.py):
exact accounting against the models the plan builds, allocation one group in every layer at a time,
exclusivity with head sharing and Basis Sharing of q/k/v/o, the plan's step order, sensitivity and
refinement, and `compress --ratio --methods prune-kv,basis` end to end."""
import json

import numpy as np
import pytest

from tests.compose.models import model_with_grams
from tests.conftest import random_hf_model
from jaxshare.compose.apply import apply_plan
from jaxshare.compose.budget import Budget, allocate, budget_plan, check_reachable, parse_methods, to_plan
from jaxshare.compose.candidates import group_counts, variants
from jaxshare.compose.plan import PlanError
from jaxshare.core.params import count_params
from jaxshare.pruning.prune import prune

ATTN = {"q", "k", "v", "o"}


# four KV groups of two query heads each (head_dim 8): g = 1, 2, 3 are all valid
HEADS = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return model_with_grams(tmp_path_factory, "llama", **HEADS)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return model_with_grams(tmp_path_factory, "qwen2", **HEADS)  # q/k/v biases go with the groups


def _curves(kv=(0.25, 0.02), mlp_slope=1.0):
    """Convex stand-ins for measured curves; prune-kv's first point is `kv`."""
    rng = np.random.default_rng(0)
    curves = {t: [(x, s * x * x + 0.05 * x) for x in (0.1, 0.25, 0.45)]
              for t, s in zip(("q", "k", "v", "o", "up", "gate", "down"), rng.uniform(0.5, 3.0, 7))}
    curves["share"] = [(0.1, 0.05), (0.2, 0.2), (0.35, 0.7)]
    curves["inherit"] = [(0.25, 0.3), (0.5, 0.9)]
    curves["prune"] = [(x, mlp_slope * x * x) for x in (0.1, 0.25, 0.4)]
    curves["prune-kv"] = [kv, (0.5, 4 * kv[1])]
    return {"base": 3.0, "curves": curves}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_budget_counts_a_kv_pruned_model_exactly(family, llama, qwen2, tmp_path_factory):
    cfg, params, grams = {"llama": llama, "qwen2": qwen2}.get(family) or model_with_grams(tmp_path_factory, family)
    K, b = cfg.n_kv_heads, Budget.of(params, cfg)
    assert K > 2 and b.group > 0
    for g in range(1, K):
        out, new_cfg, _ = prune(params, cfg, grams, kv_groups=g / K, compensate=True)
        assert new_cfg.n_kv_heads == K - g
        assert b.params(cfg.n_layers, 0, {}, 0, g) == count_params(out), (family, g)
    f = cfg.d_ff // 4  # both prunings in one step
    out, _, _ = prune(params, cfg, grams, mlp=f / cfg.d_ff, kv_groups=1 / K, compensate=True)
    assert b.params(cfg.n_layers, 0, {}, f, 1) == count_params(out)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_plan_with_inherit_prune_kv_mlp_and_basis_counts_exactly(family, llama, qwen2):
    cfg, params, grams = {"llama": llama, "qwen2": qwen2}[family]
    b = Budget.of(params, cfg)
    alloc = {"layers": 3, "units": 0, "ranks": {"up": 9, "down": 7}, "channels": 0, "kv_groups": 2}
    plan = to_plan(alloc, cfg, 2, "qk", "mean", None)
    assert [s.method for s in plan.steps] == ["inherit", "prune", "basis"]
    assert plan.steps[1].options == {"mlp": 0.0, "kv_groups": 0.5, "compensate": True, "per_layer": False}
    assert set(plan.steps[1].claims()) == ATTN
    out, new_cfg, _, _ = apply_plan(params, cfg, plan, grams)
    assert (new_cfg.n_layers, new_cfg.n_kv_heads, new_cfg.n_heads) == (3, 2, 4)
    assert count_params(out) == b.params(3, 0, {"up": 9, "down": 7}, 0, 2)
    both = {**alloc, "ranks": {}, "channels": 11}
    plan = to_plan(both, cfg, 2, "qk", "mean", None)
    assert [s.method for s in plan.steps] == ["inherit", "prune"]  # MLP and KV pruning in one step
    out, new_cfg, _, _ = apply_plan(params, cfg, plan, grams)
    assert (new_cfg.d_ff, new_cfg.n_kv_heads) == (cfg.d_ff - 11, 2)
    assert count_params(out) == b.params(3, 0, {}, 11, 2)


def test_the_allocator_picks_kv_pruning_when_its_curve_is_cheapest(llama):
    cfg, params, grams = llama
    methods = ["share", "basis", "prune", "prune-kv"]
    plan, d = budget_plan(params, cfg, 0.85, methods, _curves(kv=(0.25, 0.001), mlp_slope=30.0))
    assert d["chosen"]["kv_groups"] >= 1 and "prune kv" in d["chosen"]["variant"]
    step = plan.steps[0]
    assert step.method == "prune" and step.options["kv_groups"] == d["chosen"]["kv_groups"] / cfg.n_kv_heads
    assert any(r["what"] == "prune kv" for r in d["rows"])
    claimed = [t for s in plan.steps for t in s.claims()]
    assert len(claimed) == len(set(claimed))
    out, new_cfg, _, _ = apply_plan(params, cfg, plan, grams)
    n, goal = count_params(out), d["target_params"]
    assert n == d["chosen"]["params"] and goal - d["chosen"]["last_step"] < n <= goal
    assert new_cfg.n_kv_heads == cfg.n_kv_heads - d["chosen"]["kv_groups"]
    # and leaves it out when it is the dearest
    _, d = budget_plan(params, cfg, 0.85, methods, _curves(kv=(0.25, 5.0)))
    assert d["chosen"]["kv_groups"] == 0


def test_a_kv_move_is_one_group_in_every_layer(llama):
    cfg, params, _ = llama
    b = Budget.of(params, cfg)
    goal = b.params(cfg.n_layers, 0, {}, 0, 1) - 1  # one parameter below one group removed: takes two
    a = allocate(b, _curves()["curves"], goal, False, [], False, use_kv=True)
    assert a["kv_groups"] == 2 and a["last_step"] == cfg.n_layers * b.group
    assert a["params"] == b.params(cfg.n_layers, 0, {}, 0, 2)
    with pytest.raises(PlanError, match="cannot remove that many"):  # K - 1 groups at most
        allocate(b, _curves()["curves"], b.params(cfg.n_layers, 0, {}, 0, cfg.n_kv_heads - 1) - 1, False, [],
                 False, use_kv=True)


@pytest.mark.parametrize("target", [0.95, 0.85, 0.7])
def test_kv_pruning_never_combines_with_share_or_basis_of_attention(llama, target):
    cfg, params, _ = llama
    _, d = budget_plan(params, cfg, target, ["share", "basis", "prune", "prune-kv"], _curves(kv=(0.25, 0.01)))
    assert any(v["kv_groups"] for v in d["variants"])
    for v in d["variants"]:
        if v["kv_groups"]:
            assert v["units"] == 0 and not ATTN & set(v["ranks"]), v
    for v in variants(["share", "basis", "prune", "prune-kv"], Budget.of(params, cfg).types()):
        if v["kv"]:
            assert not v["share"] and not ATTN & set(v["basis"]), v
    names = {v["name"] for v in variants(["share", "basis", "prune-kv"], Budget.of(params, cfg).types())}
    assert {"prune kv + basis elsewhere", "share + basis elsewhere", "basis everywhere", "prune kv"} <= names


def test_methods_accept_prune_kv_and_refuse_unknown_names_in_one_line(llama):
    assert parse_methods("prune-kv, basis,prune-kv") == ["prune-kv", "basis"]
    with pytest.raises(PlanError) as e:
        parse_methods("prune-kv,kv")
    assert "\n" not in str(e.value)
    assert "unknown method 'kv'" in str(e.value) and "prune-kv" in str(e.value)
    cfg, params, _ = llama
    with pytest.raises(PlanError, match="cannot remove that many parameters"):  # 3 of 4 groups at most
        check_reachable(params, cfg, 0.3, ["prune-kv"])


def test_sensitivity_and_refinement_measure_kv_pruning(llama):
    from jaxshare.compose.budget import mean_nll, refined_plan, sensitivity

    cfg, params, grams = llama
    windows = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 32)).astype(np.int32)
    sens = sensitivity(params, cfg, windows, grams, ["prune-kv"])
    assert [x for x, _ in sens["curves"]["prune-kv"]] == [g / cfg.n_kv_heads for g in group_counts(cfg)] == [0.25, 0.5]
    assert all(np.isfinite(y) for _, y in sens["curves"]["prune-kv"])
    sens = {"base": mean_nll(params, cfg, windows), "curves": {"prune-kv": [(0.25, 0.01)]}}
    b = Budget.of(params, cfg)
    target = (b.params(cfg.n_layers, 0, {}, 0, 1) - 1) / count_params(params)  # needs two groups
    plan, d = refined_plan(params, cfg, target, ["prune-kv"], sens, windows, grams, rounds=1)
    assert d.get("refinements") == 1 and [x for x, _ in sens["curves"]["prune-kv"]] == [0.25, 0.5]
    assert d["chosen"]["kv_groups"] == 2 and plan.steps[0].options["kv_groups"] == 0.5


def test_cli_ratio_with_prune_kv(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import run
    from tests.tiny_model import save_text, save_tiny_model
    from jaxshare.io.load import load_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    model = random_hf_model("llama", max_position_embeddings=128, **HEADS)
    src, text = save_tiny_model(tmp_path / "m", model=model), save_text(tmp_path / "text.txt", 6000)
    common = ["--calib", text, "--calib-windows", "4", "--calib-seq-len", "32", "--heldout", text,
              "--heldout-windows", "2", "--sens-windows", "2", "--json"]
    code, _, err = run(capsys, "compress", src, tmp_path / "bad", "--ratio", "0.2", "--methods", "prune-kv,kv", *common)
    assert code == 2 and not (tmp_path / "bad").exists()
    last = err.strip().splitlines()[-1]
    assert "jaxshare compress: error:" in last and "unknown method 'kv'" in last and "prune-kv" in last, err
    for methods, ratio in (("prune-kv", 0.05), ("prune-kv,basis", 0.1)):
        out_dir = tmp_path / methods.replace(",", "_")
        code, out, err = run(capsys, "compress", src, out_dir, "--ratio", ratio, "--methods", methods, *common)
        assert code == 0, err
        rep = json.loads(out)
        b = rep["budget"]
        assert [x for x, _ in b["sensitivity"]["curves"]["prune-kv"]] == [0.25, 0.5]  # measured, alone
        assert rep["model"]["params_after"] == b["chosen"]["params"]
        assert b["target_params"] - b["chosen"]["last_step"] < rep["model"]["params_after"] <= b["target_params"]
        m = load_model(str(out_dir))
        assert count_params(m.params) == rep["model"]["params_after"]
        for v in b["variants"]:
            if v["kv_groups"]:
                assert not ATTN & set(v["ranks"]), v
        steps = {next(iter(s)): s[next(iter(s))] for s in rep["plan"]["steps"]}
        g = b["chosen"]["kv_groups"]
        assert m.cfg.n_kv_heads == 4 - g and steps.get("prune", {}).get("kv_groups", 0.0) == g / 4
        if methods == "prune-kv":
            assert g == 1 and list(steps) == ["prune"]
