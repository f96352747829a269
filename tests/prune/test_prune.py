"""Structured width pruning (issue 25): identity at 0, exact slicing, importance from the jit grams
against a per-channel loop over transformers' activations, compensation, HF / native / GGUF round
trips of the smaller model, refusals, the CLI and plans. Tiny random models only."""
import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from gguf import GGUFReader

import jaxshare as js
from jaxshare.basis.calibrate import collect_grams
from jaxshare.compose.plan import PlanError
from jaxshare.core.model import forward
from jaxshare.core.params import replace_leaves
from jaxshare.errors import MethodError
from jaxshare.io.hf import load_hf_dir
from jaxshare.io.load import Model, load_model
from jaxshare.methods import METHODS, PruneOptions
from jaxshare.pruning.importance import kv_importance, mlp_importance
from tests.cli_helpers import run
from tests.conftest import random_hf_model, torch_logits
from tests.tiny_model import save_text, save_tiny_model
from tests.io.families.test_gemma3 import gemma  # norm weights around 0, as a trained Gemma3

CALIB = np.random.default_rng(1).integers(0, 256, size=(4, 48)).astype(np.int32)
TOKENS = np.random.default_rng(0).integers(0, 256, size=(2, 40)).astype(np.int32)


FAMILIES = {  # name: (builder, kv_groups the test prunes)
    "llama": (lambda: random_hf_model("llama"), 0.5),
    "qwen2": (lambda: random_hf_model("qwen2"), 0.5),
    "gemma3": (lambda: gemma(head_dim=24, sliding_window=16), 0.5),
    "gpt2": (lambda: random_hf_model("gpt2"), 0.25),
}
_CACHE: dict = {}


def family(name, tmp_path_factory):
    """(transformers model, Model, grams on CALIB), built once per family."""
    if name not in _CACHE:
        ref = FAMILIES[name][0]()
        src = tmp_path_factory.mktemp(name)
        ref.save_pretrained(src)
        cfg, params = load_hf_dir(src)
        _CACHE[name] = ref, Model(cfg, params), collect_grams(params, cfg, CALIB)
    return _CACHE[name]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return family("llama", tmp_path_factory)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return family("qwen2", tmp_path_factory)


def test_ratio_zero_is_the_identity(llama):
    _, m, grams = llama
    out, rep = js.prune(m)  # no calibration needed when nothing is removed
    assert out.cfg == m.cfg and rep["fraction_removed"] == 0.0
    for a, b in zip(jax.tree_util.tree_leaves(out.params), jax.tree_util.tree_leaves(m.params)):
        assert a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))
    assert not METHODS["prune"].needs_grams(PruneOptions())


def test_kept_channels_are_exactly_a_dense_model_sliced_by_hand(qwen2):
    """Qwen2 (q/k/v biases, GQA): numpy slicing of the kept channels and groups, chosen by a numpy
    ranking of the grams' diagonals, gives the same logits as prune's model."""
    _, m, grams = qwen2
    cfg, p = m.cfg, m.params
    out, rep = js.prune(m, mlp=0.25, kv_groups=0.5, calib=grams)
    assert (out.cfg.d_ff, out.cfg.n_kv_heads, out.cfg.n_heads, out.cfg.head_dim) == (72, 1, 2, cfg.head_dim)
    L, G, d = cfg.n_layers, cfg.groups, cfg.head_dim
    a, mlp = p.layers.attn, p.layers.mlp
    new = {k: [] for k in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "w_up", "w_gate", "w_down")}
    for l in range(L):
        dg = np.diag(np.asarray(grams["down_in"][l]))
        keep_f = np.sort(np.argsort(-dg, kind="stable")[:72])
        do = np.diag(np.asarray(grams["o_in"][l])).reshape(cfg.n_kv_heads, G * d).sum(1)
        keep_k = np.sort(np.argsort(-do, kind="stable")[:1])
        for k in ("wq", "wk", "wv", "wo", "bq", "bk", "bv"):
            new[k].append(np.asarray(getattr(a, k))[l][keep_k])
        new["w_up"].append(np.asarray(mlp.w_up)[l][:, keep_f])
        new["w_gate"].append(np.asarray(mlp.w_gate)[l][:, keep_f])
        new["w_down"].append(np.asarray(mlp.w_down)[l][keep_f])
    module = lambda k: "mlp" if k.startswith("w_") else "attn"  # noqa: E731
    by_hand = replace_leaves(p, {f"layers.{module(k)}.{k}": np.stack(v) for k, v in new.items()})
    want = np.asarray(forward(by_hand, out.cfg, TOKENS))
    got = np.asarray(forward(out.params, out.cfg, TOKENS))
    assert np.array_equal(got, want)
    assert rep["params_after"] < rep["params_before"] and 0 < rep["fraction_removed"] < 1


def captured_inputs(ref, tokens, family="llama"):
    """{(layer, 'down' | 'o'): [N, n] float64}: the inputs of down_proj and o_proj on `tokens`, from
    transformers' own forward (hooks), an independent reference for the jit grams."""
    got, hooks = {}, []
    for l, layer in enumerate(ref.model.layers):
        for name, mod in (("down", layer.mlp.down_proj), ("o", layer.self_attn.o_proj)):
            def hook(_, inp, out, l=l, name=name):
                got[(l, name)] = inp[0].detach().double().reshape(-1, inp[0].shape[-1]).numpy()
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        ref(torch.as_tensor(tokens))
    for h in hooks:
        h.remove()
    return got


def test_importance_under_jit_equals_a_per_channel_loop(llama):
    ref, m, grams = llama
    cfg = m.cfg
    acts = captured_inputs(ref, CALIB)
    mlp_LF, kv_LK = mlp_importance(grams, cfg), kv_importance(grams, cfg)
    for l in range(cfg.n_layers):
        x = acts[(l, "down")]
        loop = np.array([sum(float(v) ** 2 for v in x[:, j]) for j in range(cfg.d_ff)])
        np.testing.assert_allclose(mlp_LF[l], loop, rtol=1e-4)
        o = acts[(l, "o")]  # HF's o_proj input: heads in order, query head h in KV group h // G
        block = cfg.groups * cfg.head_dim
        loop = np.array([np.sum(o[:, k * block:(k + 1) * block] ** 2) for k in range(cfg.n_kv_heads)])
        np.testing.assert_allclose(kv_LK[l], loop, rtol=1e-4)


def test_compensation_lowers_the_calibration_reconstruction_error(llama):
    """On transformers' own activations: X_K W' is closer to X W than X_K W_K, for down and o."""
    ref, m, grams = llama
    cfg = m.cfg
    acts = captured_inputs(ref, CALIB)
    sliced, rep_s = js.prune(m, mlp=0.5, kv_groups=0.5, calib=grams)
    fitted, rep_c = js.prune(m, mlp=0.5, kv_groups=0.5, compensate=True, calib=grams)
    mlp_LF = mlp_importance(grams, cfg)
    kv_LK = kv_importance(grams, cfg)
    block = cfg.groups * cfg.head_dim
    for l in range(cfg.n_layers):
        keep_f = np.sort(np.argsort(-mlp_LF[l], kind="stable")[:48])
        keep_k = int(np.argmax(kv_LK[l]))
        for x, w, rows, ws, wc in (
                (acts[(l, "down")], np.asarray(m.params.layers.mlp.w_down[l], np.float64), keep_f,
                 np.asarray(sliced.params.layers.mlp.w_down[l]), np.asarray(fitted.params.layers.mlp.w_down[l])),
                (acts[(l, "o")], np.asarray(m.params.layers.attn.wo[l], np.float64).reshape(-1, cfg.d_model),
                 np.arange(keep_k * block, (keep_k + 1) * block),
                 np.asarray(sliced.params.layers.attn.wo[l]).reshape(-1, cfg.d_model),
                 np.asarray(fitted.params.layers.attn.wo[l]).reshape(-1, cfg.d_model))):
            y = x @ w
            err_s = np.sum((y - x[:, rows] @ ws) ** 2) / np.sum(y ** 2)
            err_c = np.sum((y - x[:, rows] @ wc) ** 2) / np.sum(y ** 2)
            assert err_c < err_s
    for t in ("down", "o"):
        r = rep_c["per_type"][t]
        assert r["rel_calib_error_compensated"] < r["rel_calib_error_sliced"] == rep_s["per_type"][t]["rel_calib_error_sliced"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pruned_model_exports_to_hf_and_transformers_agrees(name, tmp_path, tmp_path_factory):
    """The smaller sizes reach config.json and transformers' logits match ours. GPT-2 prunes MLP
    channels only here: HF GPT-2 derives head_dim from n_embd // n_head, so a GPT-2 with fewer heads
    is kept native (tested below); a KV-pruned Qwen2 writes its head_dim, which transformers reads."""
    ref, m, grams = family(name, tmp_path_factory)
    kv = FAMILIES[name][1] if name in ("llama", "gemma3", "qwen2") else 0.0
    out, rep = js.prune(m, mlp=0.25, kv_groups=kv, compensate=True, calib=grams)
    path = js.export_hf(out, tmp_path / "hf")
    conf = json.loads((path / "config.json").read_text())
    ff = conf.get("intermediate_size", conf.get("n_inner"))
    heads = conf.get("num_attention_heads", conf.get("n_head"))
    assert ff == out.cfg.d_ff == m.cfg.d_ff - round(0.25 * m.cfg.d_ff)
    assert heads == out.cfg.n_heads and conf.get("num_key_value_heads", heads) == out.cfg.n_kv_heads
    if kv:
        assert out.cfg.n_kv_heads < m.cfg.n_kv_heads and out.cfg.n_heads < m.cfg.n_heads
    back = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    got = np.asarray(forward(out.params, out.cfg, TOKENS))
    assert np.max(np.abs(torch_logits(back, TOKENS) - got)) <= 1e-4


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])
def test_kv_pruning_runs_natively_on_qwen2_and_gpt2(name, tmp_path, tmp_path_factory):
    _, m, grams = family(name, tmp_path_factory)
    out, _ = js.prune(m, kv_groups=FAMILIES[name][1], calib=grams)
    assert out.cfg.n_heads < m.cfg.n_heads
    js.save(out, tmp_path / "native")
    back = js.load(tmp_path / "native")
    assert back.cfg == out.cfg
    np.testing.assert_array_equal(np.asarray(forward(back.params, back.cfg, TOKENS)),
                                  np.asarray(forward(out.params, out.cfg, TOKENS)))


def test_native_round_trip_and_gguf_export(llama, tmp_path):
    _, m, grams = llama
    out, _ = js.prune(m, mlp=0.25, kv_groups=0.5, calib=grams)
    js.save(out, tmp_path / "native")
    back = js.load(tmp_path / "native")
    assert back.cfg == out.cfg and back.extra["prune"]["steps"] == [{"mlp": 0.25, "kv_groups": 0.5,
                                                                      "compensate": False, "per_layer": False}]
    want = np.asarray(forward(out.params, out.cfg, TOKENS))
    np.testing.assert_array_equal(np.asarray(forward(back.params, back.cfg, TOKENS)), want)
    gguf = js.export_gguf(out, tmp_path / "m.gguf", gguf_type="f32")  # a random model has no tokenizer to read back
    reader = GGUFReader(gguf)
    meta = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith("llama.")}
    assert (meta["llama.feed_forward_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"]) == (out.cfg.d_ff, out.cfg.n_heads, out.cfg.n_kv_heads)
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    hd = out.cfg.head_dim
    assert shapes["blk.0.ffn_down.weight"] == (out.cfg.d_ff, out.cfg.d_model)  # ggml: input dim first
    assert shapes["blk.0.attn_k.weight"] == (out.cfg.d_model, out.cfg.n_kv_heads * hd)
    assert shapes["blk.0.attn_q.weight"] == (out.cfg.d_model, out.cfg.n_heads * hd)


@pytest.mark.parametrize("kw, says", [
    (dict(mlp=1.0), "mlp must be in [0, 1)"),
    (dict(mlp=-0.1), "mlp must be in [0, 1)"),
    (dict(kv_groups=1.0), "kv_groups must be in [0, 1)"),
    (dict(mlp=0.001), "removes no channel"),
    (dict(mlp=0.999), "removes all 96 MLP channels"),
    (dict(kv_groups=0.3), "not a whole number"),
    (dict(kv_groups=0.7), "not a whole number"),
])
def test_bad_ratios_are_refused_in_one_line(llama, kw, says):
    _, m, grams = llama
    with pytest.raises(MethodError) as e:
        js.prune(m, calib=grams, **kw)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_pruning_every_kv_group_and_a_compressed_input_are_refused(tmp_path_factory, llama):
    _, m, grams = llama
    one = Model(dataclasses.replace(m.cfg, n_kv_heads=1, n_heads=2), m.params)  # checked before any compute
    with pytest.raises(MethodError, match="one KV group per layer"):
        METHODS["prune"].check(PruneOptions(kv_groups=0.5), one.cfg)
    shared, _ = js.direct_share(m, 0.5)
    with pytest.raises(MethodError, match="prune first"):
        js.prune(shared, kv_groups=0.5, calib=grams)
    with pytest.raises(MethodError, match="give calibration grams"):
        METHODS["prune"].apply(m, PruneOptions(mlp=0.25))


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path / "m", layers=2)
    text = save_text(tmp_path / "t.txt", 3000)
    out = tmp_path / "o"
    argv = ["prune", model, out, "--mlp", "0.25", "--kv-groups", "0.5", "--compensate", "--calib", text,
            "--calib-windows", "4", "--calib-seq-len", "32"]
    code, stdout, err = run(capsys, *argv, "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    src = load_model(str(model))
    got = load_model(str(out))
    assert rep["d_ff"] == [src.cfg.d_ff, got.cfg.d_ff] and rep["n_kv_heads"][1] == got.cfg.n_kv_heads
    assert got.cfg.d_ff == src.cfg.d_ff - round(0.25 * src.cfg.d_ff) and got.cfg.n_kv_heads == src.cfg.n_kv_heads // 2
    assert forward(got.params, got.cfg, TOKENS[:, :16]).shape == (2, 16, src.cfg.vocab_size)
    code, _, err = run(capsys, *argv)  # OUT taken
    assert code == 2 and "--overwrite" in err
    code, stdout, err = run(capsys, *argv, "--overwrite")
    assert code == 0 and f"wrote {out}" in stdout and "compensated" in stdout
    code, _, err = run(capsys, "prune", model, tmp_path / "o2", "--kv-groups", "0.3")
    last = err.strip().splitlines()[-1]  # after the loading bar's line
    assert code == 2 and last.startswith("jaxshare prune: error: kv_groups 0.3 removes 0.6 of the 2 KV groups")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("kv, then", [(0.5, {"quantize": {"bits": 8, "method": "gptq"}}),
                                      (0.0, {"basis": {"ratio": 0.3, "types": ["q", "k", "v", "o"]}})])
def test_a_plan_with_a_prune_step(llama, kv, then):
    """GPTQ after pruning reads down's and o's grams on the kept channels only (carried by the step);
    Basis Sharing takes the attention weights an MLP-only pruning leaves."""
    _, m, grams = llama
    plan = {"steps": [{"prune": {"mlp": 0.25, "kv_groups": kv, "compensate": True}}, then]}
    out, rep = js.apply_plan(m, plan, grams=grams)
    assert out.cfg.d_ff == 72 and out.cfg.n_kv_heads == (1 if kv else 2)
    assert [s["method"] for s in rep["steps"]] == ["prune", next(iter(then))]
    assert rep["model"]["params_after"] < rep["model"]["params_before"]
    logits = np.asarray(forward(out.params, out.cfg, TOKENS))
    assert np.all(np.isfinite(logits))


def test_the_step_carries_the_kept_channels_grams(llama):
    _, m, grams = llama
    opts = PruneOptions(mlp=0.25, kv_groups=0.5)
    out, _ = METHODS["prune"].apply(m, opts, grams)
    carried = METHODS["prune"].carry_grams(opts, m.cfg, grams)
    assert carried["attn_in"] is grams["attn_in"] and carried["mlp_in"] is grams["mlp_in"]
    f, hd = out.cfg.d_ff, out.cfg.n_heads * out.cfg.head_dim
    assert np.asarray(carried["down_in"]).shape == (3, f, f) and carried["o_in"][[0, 2]].shape == (2, hd, hd)
    dg = np.diag(np.asarray(grams["down_in"][1]))
    keep = np.sort(np.argsort(-dg, kind="stable")[:f])
    np.testing.assert_array_equal(carried["down_in"][1], np.asarray(grams["down_in"][1])[np.ix_(keep, keep)])


def test_a_plan_refuses_a_second_step_on_pruned_types():
    with pytest.raises(PlanError, match="compresses down again"):
        js.parse_plan({"steps": [{"prune": {"mlp": 0.2}}, {"basis": {"ratios": {"down": 0.2}}}]})
    with pytest.raises(PlanError, match="compresses q again"):  # KV pruning claims q, k, v and o
        js.parse_plan({"steps": [{"prune": {"kv_groups": 0.5}}, {"share": {"ratio": 0.2}}]})
    with pytest.raises(PlanError, match=r"step 1 \(prune\): unknown option 'heads'"):
        js.parse_plan({"steps": [{"prune": {"heads": 0.2}}]})


def test_options_read_back_and_claims():
    method = METHODS["prune"]
    o = method.from_dict({"mlp": 0.2, "kv_groups": 0.5, "compensate": True})
    assert method.from_dict(method.to_dict(o)) == o
    assert method.claims(PruneOptions(mlp=0.2)) == {"gate", "up", "down"}
    assert method.claims(PruneOptions(kv_groups=0.5)) == {"q", "k", "v", "o"}
    assert method.claims(PruneOptions()) == frozenset() and method.needs_grams(PruneOptions(kv_groups=0.5))


def test_consume_frees_the_replaced_leaves_and_changes_nothing_else(llama):
    """The CLI prunes with consume=True (a 1.5B model's dense and pruned MLP need not coexist):
    the same params and report as without it, and exactly the replaced dense leaves are freed."""
    from jaxshare.pruning.prune import prune

    _, m, grams = llama
    want, cfg_w, rep_w = prune(m.params, m.cfg, grams, 0.5, 0.5, compensate=True)
    params = jax.tree_util.tree_map(lambda x: x.copy(), m.params)  # the module's model stays usable
    got, cfg_g, rep_g = prune(params, m.cfg, grams, 0.5, 0.5, compensate=True, consume=True)
    assert cfg_g == cfg_w and {k: v for k, v in rep_g.items() if k != "seconds"} == \
        {k: v for k, v in rep_w.items() if k != "seconds"}
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    replaced = {"w_gate", "w_up", "w_down", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "b_up", "b_gate"}
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path).rsplit(".", 1)[-1]
        assert x.is_deleted() == (name in replaced), name


def test_the_in_place_ridge_gives_the_numbers_of_adding_lam_times_the_identity():
    """Compensation adds its ridge on the diagonal in place (two n x n float64 arrays less at a
    1.5B model's 7168 kept channels); the refit must not change by a bit."""
    from jaxshare.pruning import compensate as comp

    x = np.random.default_rng(0).standard_normal((64, 40))
    a = x.T @ x
    lam = comp.RIDGE * np.trace(a) / a.shape[0]
    want = a + lam * np.eye(a.shape[0])
    got = comp._ridge_(a.copy())
    np.testing.assert_array_equal(got, want)
