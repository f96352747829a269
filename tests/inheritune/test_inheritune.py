"""Inheritune: degeneration metrics, inherit (parity with transformers, shared and basis models),
growth, the trainer's inheritune mode with resume across a stage, and bad inputs."""
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

from tests.conftest import random_hf_model, torch_logits
from tests.references import gguf_reference
from jaxshare.cli.main import main as cli_main
from jaxshare.core.bank import materialize
from jaxshare.core.model import forward
from jaxshare.core.params import init_params
from jaxshare.inheritune.degeneration import analyze, head_metrics, write_plots
from jaxshare.inheritune.grow import grow_params
from jaxshare.training.stages import run_inheritune
from jaxshare.inheritune.inherit import InheritError, inherit, select_layers
from jaxshare.io.hf import export_hf, load_hf_dir
from jaxshare.io.native import load_native, save_native
from jaxshare.training.config import build_config
from tests.tiny_model import TRAIN_CFG, save_run_files

ROOT = Path(__file__).resolve().parents[2]
CFG = TRAIN_CFG


# -- degeneration metrics --------------------------------------------------------------------------

@pytest.mark.parametrize("T", [10, 64])
def test_metrics_on_hand_built_maps(T):
    uniform = np.full((T, T), 1.0 / T)
    column = np.zeros((T, T))
    column[:, 3] = 1.0  # every query attends to key 3 only
    identity = np.eye(T)
    maps = np.stack([uniform, column, identity]).astype(np.float32)
    for tau in (0.9, 1.0, 0.05):
        rank_id = math.ceil(round(tau * T, 6))  # the identity: every singular value carries 1/T
        rank, mass = (np.asarray(a) for a in head_metrics(jax.numpy.asarray(maps), tau, chunk=2))
        assert rank.tolist() == [1, 1, rank_id]
        np.testing.assert_allclose(mass, [1.0 / T, 1.0, 1.0 / T], rtol=1e-6)


def _numpy_metrics(maps_LBHTT: np.ndarray, tau: float):
    """The straightforward way: per head, average the materialized maps and take an SVD."""
    L, _, H, T, _ = maps_LBHTT.shape
    rank, mass = np.zeros((L, H), int), np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            a = maps_LBHTT[l, :, h].astype(np.float64).mean(0)
            e = np.linalg.svd(a, compute_uv=False) ** 2
            rank[l, h] = int(np.searchsorted(np.cumsum(e) / e.sum(), tau - 1e-6) + 1)
            mass[l, h] = a.sum(0).max() / T
    return rank, mass


def test_analysis_in_the_scan_matches_numpy_on_qwen2_checkpoint(tmp_path):
    from jaxshare.eval.attention_maps import attention_maps
    from jaxshare.io.load import load_model

    ref = random_hf_model("qwen2", num_hidden_layers=3)
    ref.save_pretrained(tmp_path / "hf")
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    m = load_model(str(tmp_path / "native"))
    tokens = np.random.default_rng(1).integers(0, 256, (3, 48)).astype(np.int32)
    res = analyze(m.params, m.cfg, tokens, tau=0.9, chunk=3, corner=16)
    want_rank, want_mass = _numpy_metrics(np.asarray(attention_maps(m.params, m.cfg, tokens)), 0.9)
    assert res["rank"].shape == (3, m.cfg.n_heads)
    np.testing.assert_array_equal(res["rank"], want_rank)
    np.testing.assert_allclose(res["mass"], want_mass, atol=1e-5)
    assert res["corner"].shape == (3, m.cfg.n_heads, 16, 16)
    files = write_plots(res, tmp_path / "plots", "qwen2")
    assert all(Path(f).is_file() and Path(f).stat().st_size > 0 for f in files) and len(files) == 5


def test_degenerate_flag_and_auto_k():
    from jaxshare.inheritune.degeneration import auto_k, summarize

    rank = np.array([[40, 30], [20, 1], [1, 1], [1, 2], [1, 1]])
    mass = np.array([[0.1, 0.2], [0.3, 0.9], [0.9, 0.9], [0.6, 0.7], [0.95, 0.9]])
    res = summarize(rank, mass, 0.9, rank_max=1, mass_min=0.5, head_frac=0.5)
    assert res["degenerate"].tolist() == [False, False, True, True, True]
    k, why = auto_k(res)
    assert k == 2 and "layers 2..4: 3 of 3 degenerate" in why
    res = summarize(rank, mass, 0.9, rank_max=0, mass_min=1.0, head_frac=0.5)
    assert not res["degenerate"].any() and auto_k(res)[0] == 2


# -- inherit -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_inherited_logits_equal_transformers_first_k_layers(family, tokens, tmp_path):
    depth = {"n_layer": 4} if family == "gpt2" else {"num_hidden_layers": 4}
    full = random_hf_model(family, **depth)
    full.save_pretrained(tmp_path / "full")
    cfg, params = load_hf_dir(tmp_path / "full")
    small, small_cfg, extra = inherit(params, cfg, 2)
    assert small_cfg.n_layers == 2 and extra["inherited"]["layers"] == [0, 1]
    # transformers' own model of the first two layers: same weights, built at depth 2.
    ref = random_hf_model(family, seed=1, **({"n_layer": 2} if family == "gpt2" else {"num_hidden_layers": 2}))
    missing, unexpected = ref.load_state_dict({k: v for k, v in full.state_dict().items()
                                               if not any(f".{i}." in k for i in (2, 3))}, strict=False)
    assert not missing and not unexpected
    want = torch_logits(ref, tokens)
    got = np.asarray(forward(small, small_cfg, tokens))
    assert np.max(np.abs(got - want)) <= 1e-4
    save_native(tmp_path / "native", small_cfg, small, None, extra=extra)
    cfg2, p2, meta = load_native(tmp_path / "native")
    assert cfg2 == small_cfg and meta["extra"]["inherited"]["from_layers"] == 4
    np.testing.assert_array_equal(np.asarray(forward(p2, cfg2, tokens)), got)
    out = export_hf(p2, cfg2, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert back.config.num_hidden_layers == 2 if family != "gpt2" else back.config.n_layer == 2
    assert np.max(np.abs(torch_logits(back, tokens) - got)) <= 1e-5


def _dense_first_k(params, cfg, k):
    return select_layers(materialize(params), cfg, range(k))


def test_inherit_shared_model_slices_and_compacts_banks(tmp_path, tokens):
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.headshare.sharing import manifest

    params = init_params(CFG, jax.random.key(0))
    shared, _ = direct_share(params, CFG, 0.5, "qk")
    extra = {"sharing": manifest(shared, CFG, ratio=0.5, match="qk")}
    small, cfg2, extra2 = inherit(shared, CFG, 2, extra)
    for name in ("wq", "wk", "wv"):
        bank = getattr(small.layers.attn, name)
        idx = np.asarray(bank.index)
        assert idx.shape == (2, 3) and bank.rows.shape[0] == idx.max() + 1 == len(np.unique(idx))
        assert bank.rows.shape[0] < getattr(shared.layers.attn, name).rows.shape[0]
    dense, dcfg = _dense_first_k(shared, CFG, 2)
    toks = tokens[:, :64] % CFG.vocab_size
    want = np.asarray(forward(dense, dcfg, toks))
    np.testing.assert_allclose(np.asarray(forward(small, cfg2, toks)), want, atol=1e-6)
    save_native(tmp_path / "c", cfg2, small, None, extra=extra2)
    cfg3, back, meta = load_native(tmp_path / "c")
    assert meta["extra"]["sharing"]["layers"] == 2 and meta["extra"]["sharing"]["ratio"] == 0.5
    np.testing.assert_allclose(np.asarray(forward(back, cfg3, toks)), want, atol=1e-6)


def test_inherit_basis_model_slices_coefficients_and_groups(tmp_path, tokens):
    from jaxshare.basis.compress import compress
    from jaxshare.basis.factor import get_type

    params = init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)

    def gram(d):  # a well-conditioned calibration gram per layer
        x = rng.standard_normal((4, 200, d))
        return np.einsum("lnd,lne->lde", x, x)

    grams = {"attn_in": gram(CFG.d_model), "mlp_in": gram(CFG.d_model)}
    comp, man, _ = compress(params, CFG, grams, 0.3, shared=["q", "up"], private=[], progress=False)
    small, cfg2, extra2 = inherit(comp, CFG, 3, {"basis": man})
    q = get_type(small.layers, "q")
    assert q.coef.shape[0] == 3 and np.asarray(q.basis.index).tolist() == [0, 0, 1]
    assert extra2["basis"]["types"]["q"]["groups"] == [[0, 1], [2]]
    toks = tokens[:, :64] % CFG.vocab_size
    dense, dcfg = _dense_first_k(comp, CFG, 3)
    want = np.asarray(forward(dense, dcfg, toks))
    np.testing.assert_allclose(np.asarray(forward(small, cfg2, toks)), want, atol=1e-5)
    save_native(tmp_path / "b", cfg2, small, None, extra=extra2)
    cfg3, back, _ = load_native(tmp_path / "b")
    np.testing.assert_allclose(np.asarray(forward(back, cfg3, toks)), want, atol=1e-5)


# -- growth ------------------------------------------------------------------------------------------

def test_growth_by_copy_and_by_reference():
    ref = init_params(CFG, jax.random.key(0))
    student, scfg, _ = inherit(ref, CFG, 2)
    student = jax.tree_util.tree_map(lambda x: x + 1.0, student)  # "trained": differs from the reference
    copied, ccfg = grow_params(student, scfg, 3, "copy")
    taken, tcfg = grow_params(student, scfg, 4, "reference", (ref, CFG))
    assert ccfg.n_layers == 3 and tcfg.n_layers == 4
    for a, s, r, t in zip(jax.tree_util.tree_leaves(copied.layers), jax.tree_util.tree_leaves(student.layers),
                          jax.tree_util.tree_leaves(ref.layers), jax.tree_util.tree_leaves(taken.layers)):
        np.testing.assert_array_equal(a[:2], s)
        np.testing.assert_array_equal(a[2], s[1])  # the student's last layer, copied
        np.testing.assert_array_equal(t[:2], s)
        np.testing.assert_array_equal(t[2:], r[2:4])  # the reference's next layers
    np.testing.assert_array_equal(taken.embed, student.embed)
    with pytest.raises(InheritError, match="must add layers"):
        grow_params(student, scfg, 2, "copy")
    with pytest.raises(InheritError, match="reference has 4 layers"):
        grow_params(student, scfg, 5, "reference", (ref, CFG))


def test_inherited_prefix_shares_the_source_memory_and_donating_it_leaves_the_source_intact():
    ref = init_params(CFG, jax.random.key(0))
    student, _, _ = inherit(ref, CFG, 2)
    # a prefix of layers on one CPU device is the source's buffers (compress measures three such
    # candidates of a 1.5B model: 17.1 GiB with copies, 8.8 without)
    for s, r in zip(jax.tree_util.tree_leaves(student.layers), jax.tree_util.tree_leaves(ref.layers)):
        assert s.unsafe_buffer_pointer() == r.unsafe_buffer_pointer()
    before = [np.array(x) for x in jax.tree_util.tree_leaves(ref.layers)]
    trained = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x * 3 + 1, t), donate_argnums=0)(student.layers)
    for b, r, t in zip(before, jax.tree_util.tree_leaves(ref.layers), jax.tree_util.tree_leaves(trained)):
        np.testing.assert_array_equal(np.asarray(r), b)  # a donated borrowed buffer is never written
        np.testing.assert_allclose(np.asarray(t), b[:2] * 3 + 1, rtol=1e-6)
    picked, _ = select_layers(ref, CFG, [2, 0])  # not a run: gathered, its own memory
    for s, r in zip(jax.tree_util.tree_leaves(picked.layers), jax.tree_util.tree_leaves(ref.layers)):
        np.testing.assert_array_equal(np.asarray(s), np.asarray(r)[[2, 0]])


# -- trainer mode ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inheritune")
    return save_run_files(d)


def config(files, run_dir, **kw):
    base = dict(mode="inheritune", model=str(files / "model"), data=str(files / "train.npy"),
                eval_data=str(files / "eval.npy"), run_dir=str(run_dir), steps=2, seq_len=32, batch_size=4,
                lr=1e-3, warmup_steps=1, eval_every=0, eval_windows=4, checkpoint_every=1, mesh="data=1,fsdp=1",
                progress=False, stages="2,3", grow="reference", stop_at_reference=False, export_hf=False)
    base.update(kw)
    return build_config(base)


def _final_leaves(run_dir):
    res = json.loads((Path(run_dir) / "result.json").read_text())
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(load_native(res["final"])[1])], res


def test_inheritune_stages_and_resume_across_a_stage_is_bit_identical(files, tmp_path):
    full = run_inheritune(config(files, tmp_path / "full", export_hf=True))
    assert [s["layers"] for s in full["stages"]] == [2, 3] and full["tokens"] == 2 * 2 * 4 * 32
    assert full["reference_loss"] is not None and Path(full["hf"], "config.json").is_file()
    assert json.loads(Path(full["hf"], "config.json").read_text())["num_hidden_layers"] == 3
    st = full["stages"]
    assert st[1]["params"] > st[0]["params"] and all(np.isfinite(s["loss"]) for s in st)
    stopped = run_inheritune(config(files, tmp_path / "cut", export_hf=True), until_stage=1)
    assert stopped["status"] == "stopped" and not (tmp_path / "cut" / "result.json").exists()
    assert cli_main(["train", "resume", str(tmp_path / "cut"), "--json"]) == 0
    a, _ = _final_leaves(tmp_path / "full")
    b, res = _final_leaves(tmp_path / "cut")
    assert res["stages"][0] == {**full["stages"][0], "final": res["stages"][0]["final"], "hf": res["stages"][0]["hf"]}
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_inheritune_stops_at_the_reference_loss(files, tmp_path):
    # The untrained random model is the reference: two steps on the learnable stream beat it.
    res = run_inheritune(config(files, tmp_path / "run", stop_at_reference=True, lr=1e-2, steps=3, grow="copy"))
    assert res["reached_reference"] and len(res["stages"]) == 1
    assert res["stages"][0]["loss"] <= res["reference_loss"]


def test_shipped_inheritune_config_validates():
    from jaxshare.inheritune.grow import check_stages
    from jaxshare.training.config import TrainConfigError, load_config

    tc = load_config("smollm2_inheritune")
    assert tc.mode == "inheritune" and tc.ratio == 0 and check_stages(tc.stages, tc.grow) == [15, 17, 19]
    assert tc.reference == "smollm2-135m" and tc.grow == "reference" and tc.stop_at_reference
    assert build_config({}, mode="inheritune").ratio == 0  # no head sharing unless asked for ...
    with pytest.raises(TrainConfigError, match="inheritune trains without it"):
        build_config({"ratio": 0.3}, mode="inheritune")  # ... and asking is an error
    with pytest.raises(TrainConfigError, match="grow must be one of copy, reference"):
        build_config({"grow": "clone"}, mode="inheritune")


# -- bad inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["inherit", "{model}", "{out}", "--layers", "0"], "argument --layers: must be an integer at least 1, got 0"),
    (["inherit", "{model}", "{out}", "--layers", "5"], "--layers must be an integer in 1..4"),
    (["inherit", "{model}", "{out}", "--auto", "--tau", "0"], "argument --tau: must be in (0, 1], got 0"),
    (["degeneration", "{model}", "--tau", "1.5", "--plot-dir", "{out}"], "argument --tau: must be in (0, 1], got 1.5"),
    (["degeneration", "{model}", "--tau", "nan", "--plot-dir", "{out}"], "argument --tau: expected a finite number"),
    (["train", "inheritune", "--set", "model={model}", "--set", "stages=3,2", "--set", "run_dir={out}"],
     "stages must grow"),
    (["train", "inheritune", "--set", "model={model}", "--set", "stages=2,x", "--set", "run_dir={out}"],
     "stages must be comma-separated"),
    (["train", "inheritune", "--set", "model={model}", "--set", "stages=8", "--set", "run_dir={out}",
      "--set", "data={data}", "--set", "eval_data={data}", "--set", "seq_len=32"], "the first stage has 8 layers"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(files, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [a.format(model=files / "model", out=out, data=files / "train.npy") for a in argv]
    try:
        code = cli_main(argv)
    except SystemExit as e:  # a flag refused while parsing: usage lines, then one error line
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert message in err.splitlines()[-1] and err.splitlines()[-1].startswith("jaxshare ")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_inherit_cli_writes_a_model_that_loads(files, tmp_path, capsys):
    assert cli_main(["inherit", str(files / "model"), str(tmp_path / "k3"), "--layers", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["layers"] == 3 and rep["params_after"] < rep["params_before"]
    cfg, params, meta = load_native(tmp_path / "k3")
    assert cfg.n_layers == 3 and meta["extra"]["inherited"]["layers"] == [0, 1, 2]
    full_cfg, full, _ = load_native(files / "model")
    np.testing.assert_array_equal(np.asarray(params.layers.attn.wq), np.asarray(full.layers.attn.wq[:3]))
    assert cli_main(["inherit", str(files / "model"), str(tmp_path / "k3"), "--layers", "2"]) == 2  # OUT not empty


# -- real model ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_degeneration_and_inherit_on_smollm2(tmp_path, capsys):
    assert cli_main(["degeneration", "smollm2-135m", "--data", "books:validation", "--max-windows", "2", "--seq-len", "128",
                     "--plot-dir", str(tmp_path / "plots"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert np.asarray(res["rank"]).shape == (30, 9) and len(res["plots"]) == 5
    assert json.loads((tmp_path / "plots" / "degeneration.json").read_text())["rank"] == res["rank"]
    assert all(Path(p).stat().st_size > 0 for p in res["plots"])
    # the demo's step on the same 2 x 128 books:validation windows: the same analysis (compiled once
    # in this process), its plots, its choice of k and the inherited model's perplexity
    from jaxshare.cli.demo import Console
    from jaxshare.cli.demo import inheritune_step as demo_step
    from jaxshare.data.corpora import load_corpus
    from jaxshare.io.load import load_model

    demo = demo_step(load_model("smollm2-135m"), load_corpus("canterbury"), 128, 1, tmp_path / "demo", Console(),
                     batch=2, analysis_seq_len=128)
    np.testing.assert_allclose(demo["layer_rank_mean"], np.asarray(res["rank"]).mean(axis=1), rtol=1e-6)
    assert 1 <= demo["k"] < 30 and demo["params_after"] < demo["params_before"] and np.isfinite(demo["ppl_untrained"])
    assert demo["k"] in demo["degenerate_layers"] or demo["k"] == 15  # the deep run's first layer, or half depth
    assert all(Path(p).stat().st_size > 0 for p in demo["plots"])
    assert cli_main(["inherit", "smollm2-135m", str(tmp_path / "k15"), "--layers", "15", "--json"]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "ppl", str(tmp_path / "k15"), "--data", "botchan", "--seq-len", "128",
                     "--max-windows", "2", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["ppl"])
    assert cli_main(["export", str(tmp_path / "k15"), str(tmp_path / "hf")]) == 0
    m = load_model(str(tmp_path / "k15"))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ref = gguf_reference("smollm2-135m")  # transformers' own SmolLM2 (tests/references.py), cut to its first 15 layers
    ref.model.layers = ref.model.layers[:15]
    ref.config.num_hidden_layers = 15
    ids = m.tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="np")["input_ids"]
    want = torch_logits(ref, ids)
    assert back.config.num_hidden_layers == 15 and np.max(np.abs(torch_logits(back, ids) - want)) <= 1e-5
    # jaxshare vs transformers on the real model: the project's parity bound (tests/slow/test_real_model.py)
    assert np.max(np.abs(np.asarray(forward(m.params, m.cfg, ids.astype(np.int32))) - want)) <= 1e-3
    assert cli_main(["generate", str(tmp_path / "k15"), "--prompt", "Hello", "--max-new-tokens", "4"]) == 0


@pytest.mark.slow
def test_inheritune_notebook_runs():
    """Every code cell of notebooks/inheritune.ipynb, in order, in one namespace."""
    nb = json.loads((ROOT / "notebooks" / "inheritune.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"inheritune cell {cell['id']}", "exec"), namespace)
    assert namespace["k"] == 15 and namespace["back_diff"] <= 1e-3  # jax vs torch: the project's parity bound
    assert np.isfinite(namespace["trained"]["eval_ppl"])
    assert not namespace["work"].exists()  # its last cell removes the 1.3 GB it wrote under /tmp
