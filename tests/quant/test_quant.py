"""Weight-only quantization: codes and packing, RTN vs GPTQ, the Quantized kind inside shared and basis
models, save/export/load round trips, and the `jaxshare quantize` command's bad inputs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.factor import Factored
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import materialize
from jaxshare.core.model import KVCache, forward, forward_cached
from jaxshare.io.hf import load_hf_dir
from jaxshare.quant import pack as P
from benchmarks.gptq_blocked import gptq_blocked, setup
from jaxshare.quant.gptq import gptq
from jaxshare.quant.leaf import Quantized
from jaxshare.quant.model import QuantSpec, quantize_params


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_exact_and_dequantize_matches_numpy(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(3, 64, 10)).astype(np.int32)
    packed = P.pack(codes, bits)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 64 // (8 // bits), 10)
    np.testing.assert_array_equal(np.asarray(P.unpack(packed, bits)), codes)
    for group in (32, None):
        G = 1 if group is None else 64 // group
        scale = rng.uniform(0.01, 0.1, size=(3, G, 10)).astype(np.float32)
        zero = rng.integers(0, 1 << bits, size=(3, G, 10)).astype(np.uint8)
        got = np.asarray(P.dequantize(packed, scale, zero, bits, group))
        np.testing.assert_array_equal(got, P.dequantize_np(np.asarray(packed), scale, zero, bits, group))


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 64, False), (8, None, True)])
def test_rtn_codes_reconstruct_within_half_a_step(bits, group, sym):
    w = np.random.default_rng(1).normal(size=(128, 24)).astype(np.float32)
    q, s, z = P.rtn(jnp.asarray(w), bits, group, sym)
    assert int(q.min()) >= 0 and int(q.max()) <= (1 << bits) - 1
    w_hat = np.asarray(P.dequantize(P.pack(q, bits), s, z.astype(jnp.uint8), bits, group))
    step = np.repeat(np.asarray(s), 128 // s.shape[0], axis=0)
    assert np.all(np.abs(w - w_hat) <= 0.5 * step * (1 + 1e-5))


def _layer(seed=0, d_in=128, d_out=48):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_in, d_out)).astype(np.float32)
    x = rng.normal(size=(1024, d_in)) @ rng.normal(size=(d_in, d_in)) * 0.2  # correlated inputs
    return w, x


def _deq(q, s, z, bits, group):
    return np.asarray(P.dequantize(P.pack(q, bits), s, jnp.asarray(z).astype(jnp.uint8), bits, group))


@pytest.mark.parametrize("bits,group,sym,act_order", [(4, 32, True, False), (4, 64, False, False),
                                                      (4, 32, True, True), (8, None, True, False)])
def test_gptq_beats_rtn_and_equals_it_with_an_identity_gram(bits, group, sym, act_order):
    w, x = _layer()
    gram = x.T @ x
    rq, rs, rz = P.rtn(jnp.asarray(w), bits, group, sym)
    gq, gs, gz = gptq(w, gram, bits, group, sym, act_order=act_order)
    err = lambda q, s, z: np.linalg.norm(x @ (w - _deq(q, s, z, bits, group)))
    assert err(gq, gs, gz) < 0.9 * err(rq, rs, rz)
    iq, is_, iz = gptq(w, np.eye(len(w)), bits, group, sym, act_order=act_order)
    np.testing.assert_array_equal(np.asarray(iq), np.asarray(rq))
    np.testing.assert_array_equal(np.asarray(is_), np.asarray(rs))
    # an independent blocked numpy GPTQ (benchmarks/gptq_blocked.py, no shared code): the same codes
    nq, ns, nz = gptq_blocked(w, gram, bits, group, sym, act_order=act_order)
    np.testing.assert_allclose(np.asarray(gs), ns, rtol=1e-5)
    assert np.mean(np.asarray(gq) == nq) > 0.999
    np.testing.assert_allclose(err(nq, ns, nz), err(gq, gs, gz), rtol=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random llama (d_in 64 and 96: groups of 32) and its calibration grams, built once."""
    src = tmp_path_factory.mktemp("quant") / "src"
    random_hf_model("llama").save_pretrained(src)
    cfg, params = load_hf_dir(src)
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    return cfg, params, collect_grams(params, cfg, calib, batch_size=2)


def _shared(params, cfg):
    from jaxshare.headshare.directshare import direct_share

    return direct_share(params, cfg, 0.5, share_o=True)[0]


def _basis(params, cfg, grams):
    from jaxshare.basis.compress import compress

    return compress(params, cfg, grams, 0.3, 2, progress=False)[0]


def _corrected(params, cfg, grams):
    from jaxshare.headshare.datashare import data_share

    return data_share(params, cfg, 0.5, "data", "qkv", grams)[0]


@pytest.mark.parametrize("base,method", [("dense", "rtn"), ("shared", "gptq"), ("basis", "gptq"), ("corrected", "gptq")])
def test_quantized_forward_equals_materialized(base, method, tokens, tiny):
    cfg, params, grams = tiny
    p = {"dense": lambda: params, "shared": lambda: _shared(params, cfg), "basis": lambda: _basis(params, cfg, grams),
         "corrected": lambda: _corrected(params, cfg, grams)}[base]()
    spec = QuantSpec(bits=4, group=32, sym=method == "rtn", method=method)
    qp, rep = quantize_params(p, cfg, spec, grams, progress=False)
    wq, w_up = qp.layers.attn.wq, qp.layers.mlp.w_up
    if base == "shared":
        assert isinstance(wq, Bank) and isinstance(wq.rows, Quantized)
    elif base == "corrected":  # data-aware sharing: the rows are quantized, the corrections kept
        from jaxshare.headshare.corrected import CorrectedBank

        assert isinstance(wq, CorrectedBank) and isinstance(wq.rows, Quantized)
        assert np.array_equal(np.asarray(wq.corr), np.asarray(p.layers.attn.wq.corr))
    elif base == "basis":
        assert isinstance(w_up, Factored) and isinstance(w_up.basis.rows, Quantized) and isinstance(w_up.coef, Quantized)
    else:
        assert isinstance(wq, Quantized)
    assert rep["bytes_after"] < rep["bytes_before"] and rep["linear_bytes_after"] < rep["linear_bytes_before"] / 5
    assert set(rep["per_kind"]) >= ({"sharing"} if base in ("shared", "corrected") else {"basis"} if base == "basis" else {"dense"})
    got = np.asarray(forward(qp, cfg, tokens))
    dense = materialize(qp)
    assert jax.tree_util.tree_structure(dense) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(got, np.asarray(forward(dense, cfg, tokens)), atol=2e-5)
    if base == "shared":  # generation reads the same codes
        cache = KVCache.empty(cfg, tokens.shape[0], 200)
        lg, _ = forward_cached(qp, cfg, jnp.asarray(tokens[:, :40]), cache)
        np.testing.assert_allclose(np.asarray(lg), got[:, :40], atol=2e-4)


def test_native_and_hf_round_trips_keep_the_codes(tokens, tiny, tmp_path):
    import torch
    import transformers

    from tests.conftest import torch_logits
    from jaxshare.io.hf import CheckpointError, export_hf
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native

    cfg, params, grams = tiny
    qp, _ = quantize_params(_shared(params, cfg), cfg, QuantSpec(bits=4, group=32, sym=False), grams, progress=False)
    ours = np.asarray(forward(qp, cfg, tokens))
    save_native(tmp_path / "native", cfg, qp, extra={"quant": {"method": "gptq"}})
    m = load_model(tmp_path / "native")
    assert m.meta["extra"]["quant"]["method"] == "gptq" and "sharing" in m.meta["extra"]
    for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(qp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = export_hf(m.params, cfg, tmp_path / "hf", info=m.meta["extra"])
    assert (out / "quant.json").is_file() and (out / "quant.safetensors").is_file()
    back = load_model(out)
    assert isinstance(back.params.layers.attn.wq.rows, Quantized)
    for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(qp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tm = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(tm, tokens) - ours)) <= 1e-4
    from safetensors.numpy import load_file, save_file  # an edited export is refused

    t = load_file(str(out / "quant.safetensors"))
    t["layers.mlp.w_up.scale"] = t["layers.mlp.w_up.scale"] * 1.5
    save_file(t, str(out / "quant.safetensors"))
    with pytest.raises(CheckpointError, match="do not reproduce"):
        load_model(out)


def test_basis_with_quantized_factors_round_trips(tokens, tiny, tmp_path):
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    cfg, params, grams = tiny
    qp, rep = quantize_params(_basis(params, cfg, grams), cfg, QuantSpec(bits=8, group=None, method="rtn"), grams,
                              progress=False)
    assert rep["per_part"]["q.coef"]["rel_error"] < 0.05
    out = export_hf(qp, cfg, tmp_path / "hf")
    back = load_model(out)
    assert isinstance(back.params.layers.mlp.w_up.coef, Quantized)
    np.testing.assert_allclose(np.asarray(forward(back.params, cfg, tokens)), np.asarray(forward(qp, cfg, tokens)),
                               atol=1e-5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.tiny_model import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("quant_cli") / "m"))


@pytest.mark.parametrize("extra,msg", [
    (["--bits", "3"], "argument --bits: must be 4 or 8, got 3"),
    (["--group", "48"], "argument --group: must be 32, 64, 128 or 'channel', got 48"),
    (["--group", "64"], "group 64 does not divide the 96 input rows of down"),
    (["--damp", "0"], "argument --damp: must be in (0, 1)"),
])
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(extra, msg, tiny_dir, tmp_path, capsys):
    from jaxshare.cli.main import main

    out = tmp_path / "out"
    try:
        code = main(["quantize", tiny_dir, str(out), "--method", "rtn", *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("jaxshare quantize: error:") and msg in last, last
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_cli_quantizes_and_requantizing_is_refused(tiny_dir, tmp_path, capsys, tokens):
    from jaxshare.cli.main import main
    from jaxshare.io.load import load_model

    out = tmp_path / "q8"
    assert main(["quantize", tiny_dir, str(out), "--bits", "8", "--method", "rtn", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["per_kind"]["dense"]["bytes_after"] < rep["per_kind"]["dense"]["bytes_before"] / 3.5
    m = load_model(out)
    assert isinstance(m.params.layers.mlp.w_down, Quantized) and m.params.layers.mlp.w_down.group is None
    assert m.meta["extra"]["quant"]["bits"] == 8
    assert main(["quantize", str(out), str(tmp_path / "again"), "--method", "rtn"]) == 2
    assert "already quantized" in capsys.readouterr().err


def test_quantized_data_aware_model_round_trips(tokens, tiny, tmp_path):
    """Quantized rows under a CorrectedBank: the codes and the corrections both survive save and export."""
    from jaxshare.headshare.corrected import CorrectedBank
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native

    cfg, params, grams = tiny
    qp, _ = quantize_params(_corrected(params, cfg, grams), cfg, QuantSpec(bits=4, group=32, sym=False), grams,
                            progress=False)
    ours = np.asarray(forward(qp, cfg, tokens[:, :40]))
    save_native(tmp_path / "native", cfg, qp)
    m = load_model(tmp_path / "native")
    back = load_model(export_hf(m.params, cfg, tmp_path / "hf", info=m.meta["extra"]))
    for got in (m.params, back.params):
        wq = got.layers.attn.wq
        assert isinstance(wq, CorrectedBank) and isinstance(wq.rows, Quantized)
        np.testing.assert_array_equal(np.asarray(forward(got, cfg, tokens[:, :40])), ours)


@pytest.mark.parametrize("d_in,act_order", [(300, False), (320, True)])
def test_gptq_setup_matches_numpy_across_cholesky_blocks(d_in, act_order):
    """Both setups (jax's Cholesky and triangular solve; LAPACK's potrf and trtri) give the U of the
    independent reference (scipy's Cholesky of H^-1), and codes over several row blocks agree with
    its blocked numpy GPTQ."""
    from jaxshare.quant.gptq import _factor, _factor_host

    w, x = _layer(2, d_in, 40)
    gram = (x.T @ x).astype(np.float32)
    gram[5] = gram[:, 5] = 0.0  # a dead input
    _, nu, nperm, _ = setup(w, gram, act_order=act_order)
    for ju, jperm, dead in [_factor(jnp.asarray(gram), 0.01, act_order),  # jax (non-CPU backends)
                            [a[0] for a in _factor_host(gram[None], 0.01, act_order)]]:  # LAPACK (CPU)
        np.testing.assert_array_equal(np.asarray(jperm), nperm)
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(dead)), [5])
        np.testing.assert_allclose(np.asarray(ju), nu, rtol=0, atol=2e-4 * np.abs(nu).max())
    if d_in % 64 == 0:
        gq = gptq(w, gram, 4, 64, act_order=act_order)[0]
        assert np.mean(np.asarray(gq) == gptq_blocked(w, gram, 4, 64, act_order=act_order)[0]) > 0.999


def test_gptq_refuses_a_gram_that_is_not_positive_definite():
    w = np.ones((64, 8), np.float32)
    with pytest.raises(P.QuantError, match="not positive definite"):
        gptq(w, -np.eye(64, dtype=np.float32), 4, 64)
