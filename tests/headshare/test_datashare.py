"""Data-aware DirectShare (issue 13): data-aware merges, per-unit corrections, value fold, I/O."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model, torch_logits
from jaxshare.cli.main import main as cli_main
from jaxshare.core import bank
from jaxshare.core.compressed import materialize
from jaxshare.core.config import ModelConfig
from jaxshare.headshare.corrected import CorrectedBank
from jaxshare.core.model import forward, next_token_nll
from jaxshare.core.params import count_params, init_params
from jaxshare.headshare import datashare
from jaxshare.headshare.sharing import SharingError, identity_roots
from jaxshare.io.hf import export_hf, load_hf_dir
from jaxshare.io.load import load_model

CFG = ModelConfig(family="llama", vocab_size=256, d_model=48, n_layers=5, n_heads=9, n_kv_heads=3, head_dim=8,
                  d_ff=64, max_seq_len=512, norm_eps=1e-5)


def random_grams(cfg, seed=0, same=False):
    """[L, D, D] full-rank grams of random inputs with unequal scales (a stand-in for calibration)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(cfg.n_layers):
        x = rng.normal(size=(4 * cfg.d_model, cfg.d_model)) * rng.uniform(0.2, 3.0, cfg.d_model)
        out.append(x.T @ x)
    if same:
        out = [out[0]] * cfg.n_layers
    return {"attn_in": np.stack(out).astype(np.float32)}


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def toks():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64)), jnp.int32)


def _with(params, **leaves):
    a = dataclasses.replace(params.layers.attn, **leaves)
    return dataclasses.replace(params, layers=dataclasses.replace(params.layers, attn=a))


@pytest.mark.parametrize("keep,correct", [("data", "qkv"), ("mean", "qk")])
def test_zero_ties_are_bit_identical(params, toks, keep, correct):
    shared, info = datashare.data_share(params, CFG, 0.0, keep, correct, random_grams(CFG))
    assert info["report"]["units_freed"] == 0 and info["report"]["correction_params"] == 0
    assert not any(isinstance(x, CorrectedBank) for x in (shared.layers.attn.wq, shared.layers.attn.wk))
    np.testing.assert_array_equal(np.asarray(forward(shared, CFG, toks)), np.asarray(forward(params, CFG, toks)))


def test_merge_of_identical_units_returns_that_unit(params, toks):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(48, 24))
    cs = [random_grams(CFG, s)["attn_in"][0].astype(np.float64) for s in range(3)]
    np.testing.assert_array_equal(datashare.merge([w, w.copy(), w.copy()], cs), w)
    # through the whole path: unit (3, 0) is a copy of (1, 2); tie them, data-merged and corrected
    a = params.layers.attn
    p = _with(params, **{n: getattr(a, n).at[3, 0].set(getattr(a, n)[1, 2]) for n in ("wq", "wk", "wv")})
    roots = identity_roots(CFG)
    roots[3, 0] = 1 * 3 + 2
    shared, _ = datashare.apply_share(p, CFG, {m: roots for m in "qkv"}, "data", "qkv", random_grams(CFG))
    sa = shared.layers.attn
    row = int(np.asarray(sa.wq.index)[1, 2])
    np.testing.assert_array_equal(np.asarray(sa.wq.rows[row]), np.asarray(p.layers.attn.wq[1, 2]))
    np.testing.assert_array_equal(np.asarray(sa.wq.matrices()[3, 0]), np.broadcast_to(np.eye(8), (3, 8, 8)))
    np.testing.assert_array_equal(np.asarray(sa.wo), np.asarray(p.layers.attn.wo))  # the fold of equal values is I
    np.testing.assert_allclose(np.asarray(forward(shared, CFG, toks)), np.asarray(forward(p, CFG, toks)),
                               atol=1e-6, rtol=0)


def _transformed(params, seed=2):
    """Unit (3, 0) = unit (1, 2)'s q heads, key and value each times an invertible d x d map."""
    rng = np.random.default_rng(seed)
    a = params.layers.attn

    def mat(*lead):
        return jnp.asarray(np.eye(8) + 0.3 * rng.normal(size=lead + (8, 8)) / np.sqrt(8), jnp.float32)

    return _with(params, wq=a.wq.at[3, 0].set(jnp.einsum("gDd,gde->gDe", a.wq[1, 2], mat(3))),
                 wk=a.wk.at[3, 0].set(a.wk[1, 2] @ mat()), wv=a.wv.at[3, 0].set(a.wv[1, 2] @ mat()))


@pytest.mark.parametrize("keep,same", [("root", False), ("data", True)])
def test_corrections_on_own_data_reproduce_the_unit(params, toks, keep, same):
    p = _transformed(params)
    roots = identity_roots(CFG)
    roots[3, 0] = 1 * 3 + 2
    grams = random_grams(CFG, 3, same=same)  # keep=data: W* stays in the units' span when their grams agree
    ref = np.asarray(forward(p, CFG, toks))
    plain, _ = datashare.apply_share(p, CFG, {m: roots for m in "qkv"}, keep, "none", grams)
    fixed, err = datashare.apply_share(p, CFG, {m: roots for m in "qkv"}, keep, "qkv", grams)
    assert isinstance(fixed.layers.attn.wq, CorrectedBank) and isinstance(fixed.layers.attn.wk, CorrectedBank)
    assert max(err.values()) < 1e-5
    assert np.abs(np.asarray(forward(plain, CFG, toks)) - ref).max() > 1e-3  # the tie alone does change logits
    np.testing.assert_allclose(np.asarray(forward(fixed, CFG, toks)), ref, atol=1e-5, rtol=0)


def test_forward_equals_materialized_dense_and_corrections_train(params, toks):
    shared, info = datashare.data_share(params, CFG, 0.4, "data", "qkv", random_grams(CFG))
    rep = info["report"]
    assert rep["units_freed"] == 6 and rep["correction_params"] > 0
    cq, ck = shared.layers.attn.wq, shared.layers.attn.wk
    assert rep["correction_params"] == cq.corr.size + ck.corr.size
    # each tied group member (roots included, keep=data) has (G + 1) d x d maps, all counted
    assert cq.corr.shape[1:] == (3, 8, 8) and cq.corr.shape[0] == int((np.asarray(cq.corr_index) >= 0).sum())
    assert rep["params_after"] == rep["params_before"] - 6 * (3 + 1 + 1) * 48 * 8 + rep["correction_params"]
    assert rep["net_params_freed"] == rep["params_before"] - rep["params_after"]
    dense = materialize(shared)
    np.testing.assert_allclose(np.asarray(forward(shared, CFG, toks)), np.asarray(forward(dense, CFG, toks)),
                               atol=1e-5, rtol=0)
    mask = bank.trainable_mask(shared).layers.attn.wq
    assert mask.corr is True and mask.corr_index is False and mask.rows is True and mask.index is False
    train, frozen = bank.partition(shared)
    g = jax.grad(lambda t: next_token_nll(bank.combine(t, frozen), CFG, toks).mean())(train)
    assert float(jnp.abs(g.layers.attn.wq.corr).max()) > 0 and float(jnp.abs(g.layers.attn.wk.corr).max()) > 0


def test_net_ratio_ties_enough_units_to_match_keep_mean(params):
    grams = random_grams(CFG)
    _, mean = datashare.data_share(params, CFG, 0.2, "mean", "none")
    shared, info = datashare.data_share(params, CFG, None, "data", "qkv", grams, net_ratio=0.2)
    rep = info["report"]
    assert rep["net_params_freed"] >= mean["report"]["net_params_freed"] == rep["net_target_params"]
    assert rep["extra_units"] >= 1 and rep["units_freed"] == 3 + rep["extra_units"]
    _, fewer = datashare.data_share(params, CFG, (rep["n"] - 1) / 15, "data", "qkv", grams)
    assert fewer["report"]["net_params_freed"] < rep["net_target_params"]  # the fewest units that reach it


@pytest.mark.parametrize("family,kw", [("qwen2", dict(num_hidden_layers=4, num_attention_heads=8,
                                                      num_key_value_heads=4))])  # GQA and q/k/v biases
def test_native_and_hf_round_trip_with_corrections(tmp_path, family, kw):
    from jaxshare.io.native import load_native, save_native

    random_hf_model(family, **kw).save_pretrained(tmp_path / "src")
    cfg, params = load_hf_dir(tmp_path / "src")
    shared, _ = datashare.data_share(params, cfg, 0.3, "data", "qkv", random_grams(cfg))
    assert isinstance(shared.layers.attn.wq, CorrectedBank)
    toks = np.random.default_rng(3).integers(0, 256, (2, 48)).astype(np.int32)
    ours = np.asarray(forward(shared, cfg, toks))

    save_native(tmp_path / "native", cfg, shared)
    _, loaded, meta = load_native(tmp_path / "native")
    assert "corrections" in meta["extra"] and "sharing" in meta["extra"]
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(shared)
    np.testing.assert_array_equal(np.asarray(forward(loaded, cfg, toks)), ours)

    export_hf(shared, cfg, tmp_path / "hf")
    assert (tmp_path / "hf" / "corrections.json").is_file() and (tmp_path / "hf" / "corrections.safetensors").is_file()
    m = load_model(str(tmp_path / "hf"))
    assert jax.tree_util.tree_structure(m.params) == jax.tree_util.tree_structure(shared)
    for name in ("wq", "wk"):
        a, b = getattr(m.params.layers.attn, name), getattr(shared.layers.attn, name)
        for f in ("rows", "index", "corr", "corr_index"):
            np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)))
    np.testing.assert_allclose(np.asarray(forward(m.params, cfg, toks)), ours, atol=1e-5, rtol=0)

    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(torch_logits(ref, toks), ours, atol=1e-5, rtol=0)

    # a dense file edited after export no longer matches its rows and corrections: refused
    from safetensors.numpy import load_file, save_file

    f = next((tmp_path / "hf").glob("model*.safetensors"))
    t = load_file(str(f))
    key = next(k for k in t if "q_proj.weight" in k)
    t[key] = t[key] * 1.5
    save_file(t, str(f), metadata={"format": "pt"})
    with pytest.raises(Exception, match="do not reproduce the dense weights"):
        load_model(str(tmp_path / "hf"))


@pytest.mark.parametrize("argv,msg", [
    (["--keep", "best"], "argument --keep: invalid choice: 'best'"),
    (["--correct", "qkvo"], "argument --correct: invalid choice: 'qkvo'"),
    (["--keep", "data"], "give --calib"),
    (["--correct", "qk"], "give --calib"),
    (["--ratio", "0.2", "--net-ratio", "0.2"], "argument --net-ratio: not allowed with argument --ratio"),
    (["--correct", "qkv", "--share-o", "--calib", "wiki"], "share_o ties"),
])
def test_share_data_bad_input_clear_error_nothing_written(tmp_path, capsys, argv, msg):
    random_hf_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    try:
        code = cli_main(["share", str(tmp_path / "src"), str(out), *argv])
    except SystemExit as e:  # an unknown choice is a usage error, raised while parsing
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(SharingError, match="keep must be one of"):
        datashare.data_share(init_params(CFG, jax.random.key(1)), CFG, 0.1, "best", "none")
    with pytest.raises(SharingError, match="calibration grams"):
        datashare.data_share(init_params(CFG, jax.random.key(1)), CFG, 0.1, "data", "none", None)


def test_share_cli_data_correct_end_to_end(tmp_path, capsys, monkeypatch):
    from tests.tiny_model import save_text, save_tiny_model

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    src = save_tiny_model(tmp_path / "src", layers=4)
    text = save_text(tmp_path / "calib.txt")
    common = ["--calib", str(text), "--calib-windows", "4", "--calib-seq-len", "32", "--json"]
    assert cli_main(["share", str(src), str(tmp_path / "out"), "--keep", "data", "--correct", "qkv",
                     "--net-ratio", "0.25", *common]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["keep"] == "data" and rep["correct"] == "qkv" and rep["calibration"]["windows"] == 4
    assert rep["correction_params"] > 0 and rep["net_params_freed"] >= rep["net_target_params"]
    m = load_model(str(tmp_path / "out"))
    assert isinstance(m.params.layers.attn.wq, CorrectedBank)
    assert count_params(m.params) == rep["params_after"]


def test_direct_post_trains_corrections_with_the_bank_rows(tmp_path):
    from jaxshare.io.native import save_native
    from jaxshare.training import trainer
    from jaxshare.training.config import TrainConfigError, build_config

    cfg = ModelConfig(family="llama", vocab_size=256, d_model=48, n_layers=3, n_heads=6, n_kv_heads=3, head_dim=8,
                      d_ff=64, max_seq_len=128, norm_eps=1e-5)
    save_native(tmp_path / "model", cfg, init_params(cfg, jax.random.key(0)), None)
    rng = np.random.default_rng(0)
    phrases = rng.integers(0, 256, (16, 8))
    np.save(tmp_path / "train.npy", phrases[rng.integers(0, 16, 2000)].ravel().astype(np.int32))
    base = dict(model=str(tmp_path / "model"), data=str(tmp_path / "train.npy"), eval_data=str(tmp_path / "train.npy"),
                run_dir=str(tmp_path / "run"), steps=1, seq_len=32, batch_size=4, lr=1e-3, warmup_steps=0, ratio=0.3,
                eval_every=0, eval_windows=1, checkpoint_every=0, mesh="data=1,fsdp=1", progress=False,
                export_hf=False, mode="direct+post", keep="data", correct="qkv", calib=str(tmp_path / "train.npy"),
                calib_windows=4, calib_seq_len=32)
    with pytest.raises(TrainConfigError, match="mode direct\\+post only"):
        build_config({**base, "mode": "postshare"})
    tr = trainer.Trainer(build_config(base))
    tr.run_dir.mkdir()  # the starting point, decided as run() will (its plan.npz is reused)
    start, _ = tr._plan_and_params()
    res = tr.run()
    a, b = tr.shared.layers.attn.wq, start.layers.attn.wq
    assert isinstance(a, CorrectedBank) and res["accounting"]["units_freed"] == round(0.3 * 9)
    np.testing.assert_array_equal(np.asarray(a.corr_index), np.asarray(b.corr_index))
    np.testing.assert_array_equal(np.asarray(a.index), np.asarray(b.index))
    assert not np.allclose(np.asarray(a.corr), np.asarray(b.corr))  # the corrections trained
    assert not np.allclose(np.asarray(a.rows), np.asarray(b.rows))
    m = load_model(str(tmp_path / "run" / "final"))
    assert isinstance(m.params.layers.attn.wk, CorrectedBank)
