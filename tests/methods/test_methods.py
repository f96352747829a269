"""One Method protocol (jaxshare.methods): quantization as the last plan step, head sharing that
leaves other kinds alone, and the refusals of plans that order them wrongly.

A plan share -> basis -> quantize(int8) runs through the library and `jaxshare compress --plan`;
the result holds banks, bases and quantized leaves (quantized inside banks and bases too), computes
what its materialized weights compute, and saves natively and exports to HF with the same structure.
"""
import json

import jax
import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.factor import Factored
from jaxshare.compose.apply import apply_plan, run_plan
from jaxshare.compose.plan import PlanError, parse_plan
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import materialize
from jaxshare.core.model import forward
from jaxshare.errors import MethodError
from jaxshare.io.hf import load_hf_dir
from jaxshare.methods import METHODS
from jaxshare.quant.leaf import Quantized

PLAN = {"steps": [{"share": {"ratio": 0.34, "keep": "mean"}},
                  {"basis": {"ratios": {"up": 0.3, "down": 0.3}, "group_size": 2}},
                  {"quantize": {"bits": 8, "method": "gptq"}}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    random_hf_model("llama", num_hidden_layers=4).save_pretrained(d / "src")
    cfg, params = load_hf_dir(d / "src")
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    return cfg, params, collect_grams(params, cfg, calib, batch_size=2)


def _kinds(params):
    attn, mlp = params.layers.attn, params.layers.mlp
    assert all(isinstance(x, Bank) and isinstance(x.rows, Quantized) for x in (attn.wq, attn.wk, attn.wv))
    assert all(isinstance(x, Factored) and isinstance(x.coef, Quantized) and isinstance(x.basis.rows, Quantized)
               for x in (mlp.w_up, mlp.w_down))
    assert isinstance(attn.wo, Quantized) and isinstance(mlp.w_gate, Quantized)  # left dense, then quantized


def _same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_share_basis_quantize_plan_in_the_library(tiny, tokens, tmp_path):
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native

    cfg, params, grams = tiny
    plan = parse_plan(PLAN)
    assert plan.needs_grams() and plan.steps[2].to_dict() == {"quantize": {
        "bits": 8, "group": "channel", "sym": True, "method": "gptq", "damp": 0.01, "act_order": False}}
    out, new_cfg, rep, extra = apply_plan(params, cfg, plan, grams)
    _kinds(out)
    ours = np.asarray(forward(out, new_cfg, tokens))
    np.testing.assert_allclose(ours, np.asarray(forward(materialize(out), new_cfg, tokens)), atol=2e-5)
    assert [s["method"] for s in rep["steps"]] == ["share", "basis", "quantize"]
    assert rep["steps"][2]["model"]["bytes_after"] < rep["steps"][2]["model"]["bytes_before"] / 2
    assert rep["model"]["per_type"]["o"]["form"] == "quantized" and extra["quant"]["bits"] == 8
    json.dumps(rep)
    save_native(tmp_path / "native", new_cfg, out, extra=extra)
    m = load_model(tmp_path / "native")
    _same_tree(m.params, out)
    assert m.meta["extra"]["plan"]["steps"][2]["quantize"]["bits"] == 8
    export_hf(m.params, m.cfg, tmp_path / "hf", info=m.meta["extra"])
    back = load_model(tmp_path / "hf")
    _same_tree(back.params, out)
    np.testing.assert_array_equal(np.asarray(forward(back.params, back.cfg, tokens)), ours)


def test_share_basis_quantize_plan_on_the_command_line(tmp_path, capsys, monkeypatch, tokens):
    from tests.tiny_model import save_text, save_tiny_model

    from jaxshare.cli.main import main
    from jaxshare.io.load import load_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    src = save_tiny_model(tmp_path / "m", layers=4)
    text = save_text(tmp_path / "text.txt", 6000)
    (tmp_path / "plan.yaml").write_text(json.dumps(PLAN))
    code = main(["compress", str(src), str(tmp_path / "out"), "--plan", str(tmp_path / "plan.yaml"), "--calib",
                 str(text), "--calib-windows", "2", "--calib-seq-len", "32", "--json"])
    assert code == 0, capsys.readouterr().err
    rep = json.loads(capsys.readouterr().out)
    assert [s["method"] for s in rep["steps"]] == ["share", "basis", "quantize"]
    m = load_model(tmp_path / "out")
    _kinds(m.params)
    assert "quantize" in (tmp_path / "out" / "plan.yaml").read_text()
    np.testing.assert_allclose(np.asarray(forward(m.params, m.cfg, tokens[:, :64])),
                               np.asarray(forward(materialize(m.params), m.cfg, tokens[:, :64])), atol=2e-5)


@pytest.mark.parametrize("later", [{"share": {"ratio": 0.2}}, {"basis": {"ratios": {"up": 0.2}}},
                                   {"inherit": {"layers": 2}}, {"quantize": {"bits": 4, "method": "rtn"}}])
def test_a_step_after_quantize_is_refused_by_name(later):
    raw = {"steps": [{"quantize": {"bits": 8, "method": "rtn"}}, later]}
    name = next(iter(later))
    with pytest.raises(PlanError, match=rf"^step 2 \({name}\): comes after step 1 \(quantize\), which must be "
                                        "the last step"):
        parse_plan(raw)


def test_quantize_step_options_are_quantspec_checked(tiny):
    cfg, _, _ = tiny
    for opts, msg in (({"bits": 3}, "step 1 (quantize): bits must be one of 4, 8, got 3"),
                      ({"bits": 8, "group": 48}, "group must be one of 32, 64, 128"),
                      ({"bits": 8, "damp": 0}, "damp must be in (0, 1)"),
                      ({"bits": 8, "speed": 1}, "unknown option 'speed'")):
        with pytest.raises(PlanError, match=None) as e:
            parse_plan({"steps": [{"quantize": opts}]})
        assert msg in str(e.value), str(e.value)
    rtn = parse_plan({"steps": [{"quantize": {"bits": 4, "method": "rtn"}}]})
    assert not rtn.needs_grams() and rtn.steps[0].opts.group == 64  # the CLI's default for int4
    from jaxshare.compose.plan import check_against

    with pytest.raises(PlanError, match=r"step 1 \(quantize\): group 64 does not divide the 96 input rows of down"):
        check_against(parse_plan({"steps": [{"quantize": {"bits": 8, "group": 64, "method": "rtn"}}]}), cfg)


def test_head_sharing_leaves_other_kinds_alone(tiny):
    """Sharing used to materialize every compressed leaf (compose put them back); now it touches only
    the q/k/v leaves it ties, so a basis or quantized leaf elsewhere survives a share step."""
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.quant.model import QuantSpec, quantize_params

    cfg, params, grams = tiny
    basis, _ = METHODS["basis"].apply(_model(cfg, params), METHODS["basis"].Options(ratios={"up": 0.3}), grams)
    shared, _ = direct_share(basis.params, cfg, 0.25)
    assert shared.layers.mlp.w_up is basis.params.layers.mlp.w_up and isinstance(shared.layers.attn.wq, Bank)
    quant, _ = quantize_params(params, cfg, QuantSpec(8, None, True, "rtn"), progress=False)
    shared, _ = direct_share(quant, cfg, 0.25, keep="mean")
    assert isinstance(shared.layers.mlp.w_down, Quantized) and isinstance(shared.layers.attn.wo, Quantized)
    assert not isinstance(shared.layers.attn.wq.rows, Quantized)  # the tied leaves are re-tied from dense


def _model(cfg, params):
    from jaxshare.io.load import Model

    return Model(cfg, params)


def test_every_method_returns_a_new_model_and_a_report(tiny):
    cfg, params, grams = tiny
    m = _model(cfg, params)
    for name, opts in (("inherit", {"layers": 2}), ("share", {"ratio": 0.25}), ("basis", {"ratio": 0.3}),
                       ("quantize", {"bits": 8, "method": "rtn"})):
        method = METHODS[name]
        o = method.from_dict(opts)
        assert method.from_dict(method.to_dict(o)) == o  # the plan form reads back the same
        out, rep = method.apply(m, o, grams)
        assert out is not m and out.params is not m.params and isinstance(rep, dict)
        with pytest.raises(Exception):
            out.params = None  # frozen
    with pytest.raises(MethodError, match="give exactly one of ratio, ratios or ranks"):
        METHODS["basis"].Options(ratio=0.2, ranks={"q": 3})


def test_correct_qkv_refuses_a_compressed_w_o(tiny):
    cfg, params, grams = tiny
    plan = parse_plan({"steps": [{"basis": {"ratios": {"o": 0.3}}}, {"share": {"ratio": 0.25, "correct": "qkv"}}]})
    with pytest.raises(PlanError, match=r"step 2 \(share\): correct=qkv folds .* an earlier step compressed"):
        run_plan(_model(cfg, params), plan, grams)
