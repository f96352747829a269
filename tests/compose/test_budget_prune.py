"""Width pruning of MLP channels as a candidate of the budgeted plan (compose/candidates.py):
exact accounting, the target met within one step, exclusivity with Basis Sharing of gate/up/down,
the plan's step order, refinement, and `compress --ratio --methods prune,basis` end to end."""
import json

import numpy as np
import pytest
import yaml

from tests.compose.models import model_with_grams
from jaxshare.compose.apply import apply_plan
from jaxshare.compose.budget import Budget, allocate, budget_plan, parse_methods, to_plan
from jaxshare.compose.plan import PlanError, parse_plan
from jaxshare.core.params import count_params
from jaxshare.pruning.prune import prune


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return model_with_grams(tmp_path_factory, "llama", num_hidden_layers=4)


def _curves():
    """Convex stand-ins for measured curves, one per candidate."""
    rng = np.random.default_rng(0)
    curves = {t: [(x, s * x * x + 0.01 * x) for x in (0.1, 0.25, 0.45)]
              for t, s in zip(("q", "k", "v", "o", "up", "gate", "down"), rng.uniform(0.2, 3.0, 7))}
    curves["share"] = [(0.1, 0.05), (0.2, 0.2), (0.35, 0.7)]
    curves["inherit"] = [(0.25, 0.3), (0.5, 0.9)]
    curves["prune"] = [(0.1, 0.02), (0.25, 0.1), (0.4, 0.35)]
    return {"base": 3.0, "curves": curves}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_budget_counts_a_pruned_model_exactly(family, tiny, tmp_path_factory):
    cfg, params, grams = tiny if family == "llama" else model_with_grams(tmp_path_factory, family)
    b = Budget.of(params, cfg)
    for f in (1, cfg.d_ff // 3, cfg.d_ff - 1):
        out, _, _ = prune(params, cfg, grams, mlp=f / cfg.d_ff, compensate=True)
        assert b.params(cfg.n_layers, 0, {}, f) == count_params(out), (family, f)


def test_a_plan_with_prune_share_basis_and_inherit_counts_exactly(tiny):
    cfg, params, grams = tiny
    b = Budget.of(params, cfg)
    alloc = {"layers": 3, "units": 2, "ranks": {"o": 9}, "channels": 17}
    plan = to_plan(alloc, cfg, 2, "qk", "mean", None)
    assert [s.method for s in plan.steps] == ["inherit", "prune", "share", "basis"]
    assert plan.steps[1].options == {"mlp": 17 / cfg.d_ff, "kv_groups": 0.0, "compensate": True, "per_layer": False}
    out, new_cfg, _, _ = apply_plan(params, cfg, plan, grams)
    assert new_cfg.d_ff == cfg.d_ff - 17 and new_cfg.n_layers == 3
    assert count_params(out) == b.params(3, 2, {"o": 9}, 17)


@pytest.mark.parametrize("target", [0.95, 0.8])
def test_prune_alone_meets_its_target_within_one_step(tiny, target):
    cfg, params, grams = tiny
    plan, d = budget_plan(params, cfg, target, ["prune"], _curves())
    assert [s.method for s in plan.steps] == ["prune"]
    out, _, _, _ = apply_plan(params, cfg, plan, grams)
    n, goal, last = count_params(out), d["target_params"], d["chosen"]["last_step"]
    assert n == d["chosen"]["params"] and goal - last < n <= goal
    assert last == cfg.n_layers * Budget.of(params, cfg).channel  # one channel in every layer
    assert parse_plan(yaml.safe_load(plan.to_yaml())).to_dict() == plan.to_dict()


@pytest.mark.parametrize("target", [0.9, 0.75])
def test_share_basis_prune_is_valid_and_no_worse_than_any_single_method(tiny, target):
    cfg, params, grams = tiny
    methods = ["share", "basis", "prune"]
    plan, d = budget_plan(params, cfg, target, methods, _curves())
    steps = [s.method for s in plan.steps]
    assert steps == sorted(steps, key=["inherit", "prune", "share", "basis"].index)
    claimed = [t for s in plan.steps for t in s.claims()]
    assert len(claimed) == len(set(claimed))  # prune and basis of gate/up/down exclude each other
    out, _, _, _ = apply_plan(params, cfg, plan, grams)
    n, goal = count_params(out), d["target_params"]
    assert n == d["chosen"]["params"] and goal - d["chosen"]["last_step"] < n <= goal
    b = Budget.of(params, cfg)
    singles = {"share": (True, [], False), "basis": (False, b.types(), False), "prune": (False, [], True)}
    for m, (s, bt, p) in singles.items():
        try:
            a = allocate(b, _curves()["curves"], goal, s, bt, False, use_prune=p)
        except PlanError:
            continue  # this method alone cannot reach the target
        assert d["chosen"]["predicted"] <= a["predicted"] + 1e-12, m
    names = {v["variant"] for v in d["variants"]}
    assert any("prune" in x for x in names) and "basis everywhere" in names


def test_prune_excludes_basis_of_the_mlp_within_one_allocation(tiny):
    cfg, params, _ = tiny
    _, d = budget_plan(params, cfg, 0.8, ["basis", "prune"], _curves())
    for v in d["variants"]:
        if v["channels"]:
            assert not {"gate", "up", "down"} & set(v["ranks"]), v


def test_unknown_methods_are_still_refused():
    assert parse_methods("prune, basis,prune") == ["prune", "basis"]
    with pytest.raises(PlanError, match="unknown method 'distill'"):
        parse_methods("share,distill")


def test_refinement_measures_prune_where_the_plan_goes(tiny):
    from jaxshare.compose.budget import mean_nll, refined_plan

    cfg, params, grams = tiny
    windows = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 32)).astype(np.int32)
    sens = {"base": mean_nll(params, cfg, windows), "curves": {"prune": [(0.05, 0.01)]}}
    plan, d = refined_plan(params, cfg, 0.8, ["prune"], sens, windows, grams, rounds=1)
    assert d.get("refinements") == 1 and len(sens["curves"]["prune"]) == 2
    assert sens["curves"]["prune"][1][0] > 0.05
    n = count_params(apply_plan(params, cfg, plan, grams)[0])
    assert d["target_params"] - d["chosen"]["last_step"] < n <= d["target_params"]


def test_sensitivity_windows_are_none_of_the_calibration_windows():
    """The budget scores candidates on windows the calibration (and so every fit) never saw."""
    from jaxshare.basis.calibrate import calibration_windows, unseen_windows

    def chars(text, add_special_tokens=False):  # a character tokenizer: every window is distinct text
        return {"input_ids": [ord(c) for c in text]}

    rng = np.random.default_rng(0)
    docs = ["".join(chr(97 + int(i)) for i in rng.integers(0, 26, 4000)) for _ in range(3)]
    seen = calibration_windows(chars, docs, 40, 64, seed=3)
    fresh = unseen_windows(chars, docs, 40, 64, seen, seed=3)
    assert fresh.shape == (40, 64)
    assert not {w.tobytes() for w in seen} & {w.tobytes() for w in fresh}
    np.testing.assert_array_equal(fresh, unseen_windows(chars, docs, 40, 64, seen, seed=3))  # reproducible


def test_cli_ratio_with_prune_and_basis(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import run
    from tests.tiny_model import save_text, save_tiny_model
    from jaxshare.io.load import load_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    src, text = save_tiny_model(tmp_path / "m", layers=4), save_text(tmp_path / "text.txt", 6000)
    code, out, err = run(capsys, "compress", src, tmp_path / "out", "--ratio", "0.2", "--methods", "prune,basis",
                         "--calib", text, "--calib-windows", "4", "--calib-seq-len", "32", "--heldout", text,
                         "--heldout-windows", "2", "--sens-windows", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    b = rep["budget"]
    assert [x for x, _ in b["sensitivity"]["curves"]["prune"]]  # measured, alone
    assert b["target_params"] - b["chosen"]["last_step"] < rep["model"]["params_after"] <= b["target_params"]
    assert rep["model"]["params_after"] == b["chosen"]["params"]
    assert np.isfinite(b["heldout"]["loss_after"])
    m = load_model(str(tmp_path / "out"))
    assert count_params(m.params) == rep["model"]["params_after"]
    steps = [next(iter(s)) for s in rep["plan"]["steps"]]
    assert set(steps) <= {"prune", "basis"}
    assert m.cfg.d_ff == (96 - round(rep["plan"]["steps"][0]["prune"]["mlp"] * 96) if steps[0] == "prune" else 96)
    assert any(v["channels"] for v in b["variants"])  # prune was allocated in some variant


def test_cli_ratio_with_data_aware_sharing_alone_calibrates(tmp_path, capsys, monkeypatch):
    """--methods share --keep data reads calibration grams although no basis or prune step asks
    for them (before: 'keep=data ... give calibration grams (--calib)' with --calib given)."""
    from tests.cli_helpers import run
    from tests.tiny_model import save_text, save_tiny_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    src, text = save_tiny_model(tmp_path / "m", layers=4), save_text(tmp_path / "text.txt", 6000)
    code, out, err = run(capsys, "compress", src, tmp_path / "out", "--ratio", "0.03", "--methods", "share",
                         "--keep", "data", "--calib", text, "--calib-windows", "4", "--calib-seq-len", "32",
                         "--heldout", text, "--heldout-windows", "2", "--sens-windows", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert [next(iter(s)) for s in rep["plan"]["steps"]] == ["share"]
    assert rep["plan"]["steps"][0]["share"]["keep"] == "data"
