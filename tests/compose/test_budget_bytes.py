"""A byte budget (`compress --byte-ratio`) and quantization as a candidate of the budgeted plan:
exact byte accounting of every structure the plan builds with some types quantized, the target met,
quantization of chosen types only (`quantize: {types: [...]}`), and the CLI end to end."""
import json

import numpy as np
import pytest

from tests.compose.models import model_with_grams
from jaxshare.compose.apply import apply_plan
from jaxshare.compose.budget import Budget, allocate, budget_plan, to_plan
from jaxshare.compose.plan import PlanError, parse_plan
from jaxshare.compose.sensitivity import QUANT_GROUP
from jaxshare.core.params import param_bytes
from jaxshare.quant.model import QuantSpec, quantize_params
from jaxshare.quant.tree import quantized_paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # d_model 64 and d_ff 128: int4 groups of 64 divide every type's rows
    return model_with_grams(tmp_path_factory, "llama", num_hidden_layers=4, hidden_size=64, intermediate_size=128)


def _sens(cfg):
    rng = np.random.default_rng(0)
    curves = {t: [(x, s * x * x + 0.01 * x) for x in (0.1, 0.25, 0.45)]
              for t, s in zip(("q", "k", "v", "o", "up", "gate", "down"), rng.uniform(0.2, 3.0, 7))}
    curves["share"] = [(0.1, 0.05), (0.2, 0.2), (0.35, 0.7)]
    curves["prune"] = [(0.1, 0.02), (0.25, 0.1), (0.4, 0.35)]
    curves["prune-kv"] = [(0.5, 0.3)]
    types = ("q", "k", "v", "o", "up", "gate", "down")
    quant = {8: {t: 0.001 * (i + 1) for i, t in enumerate(types)}, 4: {t: 0.05 * (i + 1) for i, t in enumerate(types)}}
    return {"base": 3.0, "curves": curves, "quant": quant, "quant_method": "rtn"}


ALLOCS = [
    {"layers": 4, "units": 0, "ranks": {}, "channels": 0, "quant": ["q", "up"], "bits": 8},
    {"layers": 3, "units": 2, "ranks": {"o": 9, "down": 5}, "channels": 0, "quant": ["q", "k", "o", "down"], "bits": 4},
    {"layers": 4, "units": 0, "ranks": {"q": 7}, "channels": 64, "quant": ["q", "gate", "up", "down"], "bits": 4},
    {"layers": 4, "units": 0, "ranks": {}, "channels": 13, "kv_groups": 1, "quant": ["q", "v", "o", "up"], "bits": 8},
]


@pytest.mark.parametrize("i", range(len(ALLOCS)))
def test_the_budget_counts_the_built_models_bytes_exactly(tiny, i):
    cfg, params, grams = tiny
    a = dict(ALLOCS[i])
    a["group"] = QUANT_GROUP[a["bits"]]
    b = Budget.of(params, cfg)
    assert b.bytes(cfg.n_layers, 0, {}) == param_bytes(params)
    plan = to_plan(a, cfg, 2, "qk", "mean", None, "rtn")
    assert plan.steps[-1].method == "quantize" and sorted(plan.steps[-1].options["types"]) == sorted(a["quant"])
    out, _, _, _ = apply_plan(params, cfg, plan, grams)
    assert {p.split(".")[-1] for p in quantized_paths(out)} <= {"wq", "wk", "wv", "wo", "w_up", "w_gate", "w_down",
                                                               "rows", "coef"}
    expect = b.bytes(a["layers"], a["units"], a["ranks"], a["channels"], a.get("kv_groups", 0), a["quant"],
                     a["bits"], a["group"])
    assert param_bytes(out) == expect


def test_int4_rows_that_do_not_divide_are_refused_by_the_count(tiny):
    cfg, params, _ = tiny
    b = Budget.of(params, cfg)
    assert b.bytes(cfg.n_layers, 0, {}, 3, 0, ["down"], 4, 64) is None  # 125 rows: not whole groups of 64
    assert b.bytes(cfg.n_layers, 0, {}, 3, 0, ["up"], 4, 64) is not None  # up's rows are d_model


@pytest.mark.parametrize("target", [0.8, 0.45, 0.3])
def test_a_byte_target_is_met_and_the_plan_builds_to_its_count(tiny, target):
    cfg, params, grams = tiny
    plan, d = budget_plan(params, cfg, target, ["share", "basis", "prune", "quantize"], _sens(cfg), unit="bytes")
    c = d["chosen"]
    assert c["bytes"] <= d["target_bytes"] == int(target * param_bytes(params))
    out, _, _, _ = apply_plan(params, cfg, plan, grams)
    assert param_bytes(out) == c["bytes"]
    assert parse_plan(plan.to_dict()).to_dict() == plan.to_dict()
    if c["quant"]:
        assert plan.steps[-1].method == "quantize" and plan.steps[-1].options["bits"] == c["bits"]
    # never predicted worse than quantization alone, at either width
    b = Budget.of(params, cfg)
    for bits in (8, 4):
        try:
            a = allocate(b, {}, d["target_bytes"], False, [], False, unit="bytes",
                         quant={"bits": bits, "group": QUANT_GROUP[bits], "costs": _sens(cfg)["quant"][bits]})
        except PlanError:
            continue
        assert c["predicted"] <= a["predicted"] + 1e-12


def test_cheap_int8_goes_first_and_the_overshoot_is_given_back(tiny):
    cfg, params, _ = tiny
    _, d = budget_plan(params, cfg, 0.8, ["prune", "quantize"], _sens(cfg), unit="bytes")
    c = d["chosen"]
    assert c["bits"] == 8 and c["quant"]  # int8 is nearly free here: it frees bytes before any channel
    b = Budget.of(params, cfg)
    if c["channels"]:  # one channel fewer would break the target: the give-back went as far as it could
        assert b.bytes(4, 0, {}, c["channels"] - 1, 0, c["quant"], 8, None) > d["target_bytes"]


def test_quantize_needs_a_byte_target(tiny):
    cfg, params, _ = tiny
    with pytest.raises(PlanError, match="quantize removes no parameters"):
        budget_plan(params, cfg, 0.8, ["basis", "quantize"], _sens(cfg))


def test_quantizing_chosen_types_leaves_the_others(tiny):
    cfg, params, _ = tiny
    q, rep = quantize_params(params, cfg, QuantSpec(8, None, True, "rtn", types=("down", "q")), progress=False)
    assert sorted(quantized_paths(q)) == ["layers.attn.wq", "layers.mlp.w_down"]
    assert rep["types"] == ["q", "down"]
    np.testing.assert_array_equal(np.asarray(q.layers.mlp.w_up), np.asarray(params.layers.mlp.w_up))
    with pytest.raises(ValueError, match="unknown ffn"):
        QuantSpec(8, None, True, "rtn", types=("ffn",))
    with pytest.raises(PlanError, match=r"step 1 \(quantize\): types: expected a non-empty list"):
        parse_plan({"steps": [{"quantize": {"bits": 8, "types": "up"}}]})


def test_cli_byte_ratio_with_quantization(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import run
    from tests.tiny_model import save_text, save_tiny_model
    from jaxshare.io.load import load_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    src, text = save_tiny_model(tmp_path / "m", layers=4), save_text(tmp_path / "text.txt", 6000)
    common = ["--calib", text, "--calib-windows", "4", "--calib-seq-len", "32", "--heldout", text,
              "--heldout-windows", "2", "--sens-windows", "2"]
    code, _, err = run(capsys, "compress", src, tmp_path / "bad", "--ratio", "0.2", "--methods", "basis,quantize",
                       *common)
    assert code == 2 and "quantize removes no parameters" in err.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()
    code, out, err = run(capsys, "compress", src, tmp_path / "out", "--byte-ratio", "0.5", "--methods",
                         "prune,basis,quantize", "--quant-method", "rtn", *common, "--json")
    assert code == 0, err
    rep = json.loads(out)
    b = rep["budget"]
    assert set(b["sensitivity"]["quant"]) == {"8", "4"}  # each type measured alone at each width
    assert [next(iter(s)) for s in rep["plan"]["steps"]][-1] == "quantize"
    assert rep["model"]["bytes_after"] == b["chosen"]["bytes"] <= b["target_bytes"]
    m = load_model(str(tmp_path / "out"))
    assert param_bytes(m.params) == rep["model"]["bytes_after"]
    assert np.isfinite(b["heldout"]["loss_after"])
