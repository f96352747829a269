"""Composition (issue 13, part 2) and the budgeted plan (part 3) on tiny random models.

Head sharing, Basis Sharing and fewer layers in one params tree: the composed forward equals its
materialized dense forward; zero ratios are the dense model bit for bit; native and HF round trips
restore every structure and transformers reads the dense export; the budgeted plan meets its
parameter target within one unit/rank/layer step; bad plans and targets are one line, exit 2,
nothing written."""
import json

import jax
import numpy as np
import pytest

from tests.conftest import random_hf_model, torch_logits
from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.factor import Factored
from jaxshare.compose.apply import apply_plan
from jaxshare.compose.budget import Budget, budget_plan, envelope, cost
from jaxshare.compose.plan import PlanError, parse_plan
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import materialize
from jaxshare.core.model import forward
from jaxshare.core.params import count_params
from jaxshare.io.hf import load_hf_dir

PLAN = {"steps": [{"inherit": {"layers": 3}}, {"share": {"ratio": 0.34, "keep": "mean"}},
                  {"basis": {"ratio": 0.3, "group_size": 2}}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compose")
    random_hf_model("llama", num_hidden_layers=4).save_pretrained(d / "src")
    cfg, params = load_hf_dir(d / "src")
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    return d / "src", cfg, params, collect_grams(params, cfg, calib, batch_size=2)


def test_composed_forward_equals_its_materialized_dense_forward(tiny, tokens):
    _, cfg, params, grams = tiny
    out, new_cfg, rep, extra = apply_plan(params, cfg, parse_plan(PLAN), grams)
    attn, mlp = out.layers.attn, out.layers.mlp
    assert new_cfg.n_layers == 3
    assert isinstance(attn.wq, Bank) and isinstance(attn.wk, Bank) and isinstance(attn.wv, Bank)
    assert all(isinstance(x, Factored) for x in (attn.wo, mlp.w_up, mlp.w_gate, mlp.w_down))
    assert int(np.asarray(attn.wq.index).max()) + 1 == 3 * cfg.n_kv_heads - 2  # round(0.34 * 6) = 2 units tied
    got = np.asarray(forward(out, new_cfg, tokens))
    np.testing.assert_allclose(got, np.asarray(forward(materialize(out), new_cfg, tokens)), atol=2e-5)
    assert rep["model"]["params_after"] == count_params(out) < count_params(params)
    assert [s["method"] for s in rep["steps"]] == ["inherit", "share", "basis"]
    assert rep["steps"][-1]["model"]["params_after"] == rep["model"]["params_after"]
    assert rep["model"]["per_type"]["q"]["form"] == "shared" and rep["model"]["per_type"]["up"]["form"] == "factored"
    json.dumps(rep)  # the report is JSON as it stands


def test_basis_before_share_keeps_the_factors(tiny, tokens):
    _, cfg, params, grams = tiny
    plan = parse_plan({"steps": [{"basis": {"ratios": {"up": 0.3, "down": 0.2}}}, {"share": {"ratio": 0.25}}]})
    out, _, _, _ = apply_plan(params, cfg, plan, grams)
    assert isinstance(out.layers.mlp.w_up, Factored) and isinstance(out.layers.attn.wq, Bank)
    np.testing.assert_allclose(np.asarray(forward(out, cfg, tokens)),
                               np.asarray(forward(materialize(out), cfg, tokens)), atol=2e-5)


def test_data_aware_share_step_with_corrections_composes(tiny, tokens):
    from jaxshare.headshare.corrected import CorrectedBank

    _, cfg, params, grams = tiny
    plan = parse_plan({"steps": [{"inherit": {"layers": 3}}, {"share": {"ratio": 0.34, "keep": "data", "correct": "qkv"}},
                                 {"basis": {"ratios": {"up": 0.3}}}]})
    out, new_cfg, rep, _ = apply_plan(params, cfg, plan, grams)
    assert isinstance(out.layers.attn.wq, CorrectedBank) and isinstance(out.layers.mlp.w_up, Factored)
    assert rep["steps"][1]["correction_params"] > 0
    np.testing.assert_allclose(np.asarray(forward(out, new_cfg, tokens)),
                               np.asarray(forward(materialize(out), new_cfg, tokens)), atol=2e-5)


def test_zero_ratios_are_the_dense_model_bit_for_bit(tiny, tokens):
    _, cfg, params, grams = tiny
    plan = parse_plan({"steps": [{"inherit": {"layers": cfg.n_layers}}, {"share": {"ratio": 0.0}},
                                 {"basis": {"ratios": {"o": 0.0, "up": 0.0, "down": 0.0}}}]})
    out, new_cfg, rep, _ = apply_plan(params, cfg, plan, grams)
    assert new_cfg == cfg and rep["model"]["params_after"] == count_params(params)
    np.testing.assert_array_equal(np.asarray(forward(out, cfg, tokens)), np.asarray(forward(params, cfg, tokens)))


def test_save_export_reimport_and_transformers(tiny, tokens, tmp_path):
    import torch
    import transformers

    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native

    _, cfg, params, grams = tiny
    out, new_cfg, _, extra = apply_plan(params, cfg, parse_plan(PLAN), grams)
    ours = np.asarray(forward(out, new_cfg, tokens))
    save_native(tmp_path / "native", new_cfg, out, extra=extra)
    m = load_model(str(tmp_path / "native"))
    assert jax.tree_util.tree_structure(m.params) == jax.tree_util.tree_structure(out)
    np.testing.assert_array_equal(np.asarray(forward(m.params, m.cfg, tokens)), ours)
    export_hf(m.params, m.cfg, tmp_path / "hf", info=m.meta["extra"])
    assert (tmp_path / "hf" / "sharing.json").is_file() and (tmp_path / "hf" / "basis.json").is_file()
    back = load_model(str(tmp_path / "hf"))
    assert jax.tree_util.tree_structure(back.params) == jax.tree_util.tree_structure(out)  # bank + basis restored
    for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(out)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(tm, tokens) - ours)) <= 1e-4


def _curves(cfg):
    """Sensitivity curves of a plausible shape (convex, per type), standing in for measured ones."""
    rng = np.random.default_rng(0)
    curves = {t: [(x, s * x * x + 0.01 * x) for x in (0.1, 0.25, 0.45)]
              for t, s in zip(("q", "k", "v", "o", "up", "gate", "down"), rng.uniform(0.2, 3.0, 7))}
    curves["share"] = [(0.1, 0.05), (0.2, 0.2), (0.35, 0.7)]
    curves["inherit"] = [(1 / cfg.n_layers, 0.3), (2 / cfg.n_layers, 0.9)]
    return {"base": 3.0, "curves": curves}


@pytest.mark.parametrize("methods,target", [(["share", "basis"], 0.85), (["share", "basis"], 0.7), (["basis"], 0.9),
                                            (["share"], 0.97), (["share", "basis", "inherit"], 0.6)])
def test_the_plan_meets_its_target_within_one_step(tiny, methods, target):
    _, cfg, params, grams = tiny
    plan, d = budget_plan(params, cfg, target, methods, _curves(cfg))
    out, new_cfg, rep, _ = apply_plan(params, cfg, plan, grams)
    n, goal, last = count_params(out), d["target_params"], d["chosen"]["last_step"]
    assert n == d["chosen"]["params"]  # the allocation's exact count is the built model's
    assert goal - last < n <= goal, (n, goal, last)
    assert last > 0 and {s.method for s in plan.steps} <= set(methods)
    again = parse_plan(__import__("yaml").safe_load(plan.to_yaml()))  # the written plan reads back the same
    assert again.to_dict() == plan.to_dict()


def test_envelope_and_extrapolation():
    hull = envelope([(0.1, 0.5), (0.2, 0.3), (0.4, 1.0), (0.3, -0.2)])
    assert hull[0] == (0.0, 0.0) and all(y >= 0 for _, y in hull)
    assert cost(hull, 0.3) == 0.0 and cost(hull, 0.4) == pytest.approx(1.0)
    assert cost(hull, 0.5) > 1.0 + (1.0 / 0.1) * 0.1  # steeper than the last segment beyond the data
    assert cost([(0.0, 0.0)], 0.1) == float("inf")


def test_an_unreachable_target_is_refused_before_measuring(tiny):
    from jaxshare.compose.budget import check_reachable

    _, cfg, params, _ = tiny
    with pytest.raises(PlanError, match="cannot remove that many"):
        check_reachable(params, cfg, 0.5, ["share"])
    assert check_reachable(params, cfg, 0.5, ["share", "basis"]) == int(0.5 * count_params(params))


def test_budget_accounting_is_exact(tiny):
    from jaxshare.basis.compress import compress
    from jaxshare.headshare.directshare import direct_share

    _, cfg, params, grams = tiny
    b = Budget.of(params, cfg)
    assert b.params(cfg.n_layers, 0, {}) == count_params(params)
    shared, _ = direct_share(params, cfg, 0.25)
    assert b.params(cfg.n_layers, 2, {}) == count_params(shared)
    cp, _, _ = compress(params, cfg, grams, 0.5, 2, "basis", ["q", "up"], ["down"], ranks={"q": 5, "up": 7, "down": 3},
                        progress=False)
    assert b.params(cfg.n_layers, 0, {"q": 5, "up": 7, "down": 3}) == count_params(cp)


# ---------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("compose_cli") / "m", layers=4)


@pytest.fixture
def cli(tiny_dir, tmp_path, monkeypatch):
    from tests.tiny_model import save_text

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))  # calibration caches stay here
    return tiny_dir, save_text(tmp_path / "text.txt", 6000)


def _run(capsys, *argv):
    from jaxshare.cli.main import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


BAD_PLANS = {
    "unknown method": ({"steps": [{"distill": {"ratio": 0.2}}]}, "unknown method 'distill'"),
    "twice": ({"steps": [{"share": {"ratio": 0.2}}, {"basis": {"ratio": 0.2, "types": ["q", "up"]}}]},
              "compresses q again"),
    "bad ratio": ({"steps": [{"basis": {"ratios": {"up": 1.5}}}]}, "ratios.up must be in [0, 1)"),
    "negative share": ({"steps": [{"share": {"ratio": -0.1}}]}, "ratio must be in [0, 1)"),
    "unknown type": ({"steps": [{"basis": {"ratio": 0.2, "types": ["ffn"]}}]}, "unknown matrix type 'ffn'"),
    "too many layers": ({"steps": [{"inherit": {"layers": 9}}]}, "more than the model's 4"),
    "no steps": ({"steps": []}, "non-empty list"),
    "after quantize": ({"steps": [{"quantize": {"bits": 8, "method": "rtn"}}, {"share": {"ratio": 0.2}}]},
                       "step 2 (share): comes after step 1 (quantize), which must be the last step"),
    "bad quantize": ({"steps": [{"quantize": {"bits": 8, "group": 64, "method": "rtn"}}]},
                     "step 1 (quantize): group 64 does not divide the 96 input rows of down"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_a_bad_plan_is_one_line_exit_2_and_nothing_written(case, cli, tmp_path, capsys):
    raw, msg = BAD_PLANS[case]
    (tmp_path / "plan.yaml").write_text(json.dumps(raw))  # JSON is YAML
    out = tmp_path / "out"
    code, _, err = _run(capsys, "compress", cli[0], out, "--plan", tmp_path / "plan.yaml")
    assert code == 2, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("jaxshare compress: error:") and msg in last, last
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("argv,msg", [
    (["--ratio", "1"], "argument --ratio: must be the fraction of the model's parameters to remove"),
    (["--ratio", "0"], "argument --ratio: must be the fraction"),
    (["--ratio", "1.5"], "argument --ratio: must be the fraction"),
    (["--ratio", "-0.2"], "argument --ratio: must be the fraction"),
    (["--ratio", "nan"], "argument --ratio: must be the fraction"),
    (["--target-params", "1"], "argument --target-params: must be a fraction"),  # the old spelling, still checked
    (["--ratio", "0.2", "--methods", "share,distill"], "unknown method 'distill'"),
    (["--ratio", "0.5", "--methods", "share"], "cannot remove that many parameters"),
    (["--plan", "WORK/missing.yaml"], "cannot read plan"),
    (["--ratio", "0.1", "--heldout", "WORK/missing.txt"], "missing.txt"),
    ([], "one of the arguments --plan --ratio --byte-ratio is required"),
])
def test_a_bad_target_is_one_line_exit_2_and_nothing_written(argv, msg, cli, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.replace("WORK", str(tmp_path)) for a in argv]
    if "--heldout" not in argv:
        argv += ["--heldout", cli[1]]
    code, _, err = _run(capsys, "compress", cli[0], out, *argv, "--calib", cli[1], "--calib-windows", "2",
                        "--calib-seq-len", "32", "--heldout-windows", "1", "--sens-windows", "1")
    assert code == 2, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert "jaxshare compress: error:" in last and msg in last, last
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_cli_target_then_reuse_the_written_plan(cli, tmp_path, capsys, tokens):
    from jaxshare.io.load import load_model

    src, text = cli
    common = ["--calib", text, "--calib-windows", "4", "--calib-seq-len", "32"]
    code, out, err = _run(capsys, "compress", src, tmp_path / "a", "--ratio", "0.05", "--methods",
                          "share", *common, "--heldout", text, "--heldout-windows", "2", "--sens-windows", "2",
                          "--plan-out", tmp_path / "plan.yaml", "--json")
    assert code == 0, err
    rep = json.loads(out)
    b = rep["budget"]
    assert b["target_params"] - b["chosen"]["last_step"] < rep["model"]["params_after"] <= b["target_params"]
    assert "loss_increase" in b["heldout"] and rep["plan_file"].endswith("plan.yaml")
    assert (tmp_path / "a" / "plan.yaml").read_text() == (tmp_path / "plan.yaml").read_text()
    code, out2, err = _run(capsys, "compress", src, tmp_path / "b", "--plan", tmp_path / "plan.yaml", "--json")
    assert code == 0, err
    a, b2 = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert a.cfg == b2.cfg and count_params(a.params) == count_params(b2.params)
    np.testing.assert_array_equal(np.asarray(forward(a.params, a.cfg, tokens[:, :64])),
                                  np.asarray(forward(b2.params, b2.cfg, tokens[:, :64])))
    assert json.loads(out2)["model"]["params_after"] == rep["model"]["params_after"]


def test_refinement_measures_where_the_plan_goes(tiny):
    from jaxshare.compose.budget import mean_nll, refined_plan

    _, cfg, params, grams = tiny
    windows = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 32)).astype(np.int32)
    sens = {"base": mean_nll(params, cfg, windows), "curves": {t: [(0.05, 0.01)] for t in ("o", "up", "down")}}
    plan, d = refined_plan(params, cfg, 0.85, ["basis"], sens, windows, grams, rounds=1)
    assert d.get("refinements") == 1
    measured = [t for t, pts in sens["curves"].items() if len(pts) == 2]
    assert measured and all(sens["curves"][t][1][0] > 0.05 for t in measured)
    n = count_params(apply_plan(params, cfg, plan, grams)[0])
    assert d["target_params"] - d["chosen"]["last_step"] < n <= d["target_params"]


def test_a_budgeted_plan_may_spend_a_healing_budget(cli, tmp_path, capsys):
    src, text = cli
    code, out, err = _run(capsys, "compress", src, tmp_path / "a", "--ratio", "0.05", "--methods", "share",
                          "--calib", text, "--calib-windows", "4", "--calib-seq-len", "32", "--heldout", text,
                          "--heldout-windows", "2", "--sens-windows", "2", "--heal-tokens", "256", "--heal-data", text,
                          "--json")
    assert code == 0, err
    rep = json.loads(out)
    heal = rep["steps"][-1]
    assert heal["method"] == "heal" and heal["tokens"] >= 256 and "recovered" in heal
    assert rep["plan"]["steps"][-1]["heal"]["tokens"] == 256
    code, _, err = _run(capsys, "compress", src, tmp_path / "b", "--plan", tmp_path / "a" / "plan.yaml",
                        "--heal-tokens", "5")
    assert code == 2 and "--heal-tokens" in err
