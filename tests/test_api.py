"""The public API: `import jaxshare as js` is enough for a jit analysis script, and Python callers
get the same compressed round trips as the CLI."""
import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxshare as js
from tests.conftest import random_hf_model

ROOT = Path(__file__).resolve().parents[1]

# A user's analysis: per-head attention entropy computed inside the layer scan under jax.jit (via
# layer_fn), and per-head q/k weight similarity. Only `jaxshare`'s top-level names are used.
SCRIPT = '''
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxshare as js

model, out = sys.argv[1], sys.argv[2]
m = js.load(model, dtype="fp32")
if m.tokenizer is None:  # a bare random checkpoint: random tokens
    tokens = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (2, 32)).astype(np.int32)
else:
    tokens = js.token_windows(js.token_ids("canterbury", m.tokenizer), 128, 2)


def entropy_layer(x, layer, cfg, rope, q_pos, window, kv=None):
    q, k = js.qk_rope(js.norm(x, layer.attn_norm, cfg), layer.attn, cfg, rope)
    p = js.attention_probs(q, k, q_pos, q_pos, window)  # [B, K, G, T, S]
    h = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)  # [B, K, G, T]
    x, _ = js.decoder_layer(x, layer, cfg, rope, q_pos, window)
    return x, h.mean(axis=(0, 3)).reshape(-1)  # [H], stacked by the scan into [L, H]


entropy = jax.jit(lambda params, toks: js.hidden_states(params, m.cfg, toks, layer_fn=entropy_layer)[1])
res = {"tokens": np.asarray(tokens).tolist(), "entropy": np.asarray(entropy(m.params, tokens)).tolist(),
       "sim_q": np.asarray(js.head_similarity(m.params, "q")).tolist(),
       "sim_k": np.asarray(js.head_similarity(m.params, "k")).tolist()}
with open(out, "w") as f:
    json.dump(res, f)
'''


def _uses_only_top_level_names(src: str) -> None:
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            raise AssertionError(f"the script imports from {node.module}")
        if isinstance(node, ast.Import):
            assert all(a.name in ("json", "sys", "jax", "jax.numpy", "numpy", "jaxshare") for a in node.names)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "js":
            assert node.attr in js.__all__, node.attr


def _run_script(model: str, tmp_path) -> dict:
    _uses_only_top_level_names(SCRIPT)
    script, out = tmp_path / "analysis.py", tmp_path / "analysis.json"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), model, str(out)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check_against_library(res: dict, params, cfg) -> None:
    from jaxshare.eval.attention_maps import attention_maps
    from jaxshare.headshare.similarity import similarity_matrix

    maps = np.asarray(attention_maps(params, cfg, jnp.asarray(res["tokens"], jnp.int32)), np.float64)  # [L,B,H,T,T]
    want = -np.sum(maps * np.log(np.maximum(maps, 1e-30)), axis=-1).mean(axis=(1, 3))  # [L, H]
    got = np.asarray(res["entropy"])
    assert got.shape == (cfg.n_layers, cfg.n_heads)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # k heads are the sharing units: the per-head cosine is the library's `k` similarity
    np.testing.assert_allclose(np.asarray(res["sim_k"]), np.asarray(similarity_matrix(params, "k")), atol=1e-5)
    # q: one row per query head (not per KV group), by the definition
    wq = np.asarray(jax.device_get(params.layers.attn.wq), np.float64)  # [L, K, G, D, d]
    f = wq.reshape(cfg.n_layers * cfg.n_heads, -1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(res["sim_q"]), f @ f.T, atol=1e-5)


def test_import_is_cheap_and_every_public_name_resolves():
    code = "import sys, jaxshare as js; print('jax' in sys.modules, len(js.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["False", str(len(js.__all__))]
    for name in js.__all__:
        assert getattr(js, name) is not None
    with pytest.raises(AttributeError):
        js.no_such_name


def test_analysis_script_on_a_tiny_random_model(tmp_path):
    cfg = js.ModelConfig(family="llama", vocab_size=128, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                         d_ff=64, max_seq_len=64, norm_eps=1e-5)
    params = js.init_params(cfg, jax.random.key(0))
    js.save(js.Model(cfg, params), tmp_path / "tiny")
    res = _run_script(str(tmp_path / "tiny"), tmp_path)
    _check_against_library(res, params, cfg)


@pytest.mark.slow
def test_analysis_script_on_smollm2(tmp_path):
    res = _run_script("smollm2-135m", tmp_path)
    m = js.load("smollm2-135m")
    _check_against_library(res, m.params, m.cfg)


def test_dtypes_are_accepted_the_same_way_everywhere(tmp_path):
    random_hf_model("llama").save_pretrained(tmp_path / "m")
    a, b = js.load(tmp_path / "m", dtype="bf16"), js.load(str(tmp_path / "m"), dtype=jnp.bfloat16)
    assert a.params.embed.dtype == b.params.embed.dtype == jnp.bfloat16
    toks = np.random.default_rng(0).integers(0, a.cfg.vocab_size, (1, 16)).astype(np.int32)
    got = [np.asarray(js.forward(a.params, a.cfg, toks, dtype=d)) for d in ("bf16", "bfloat16", jnp.bfloat16)]
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], got[2])
    assert js.as_dtype("fp32") == js.as_dtype(jnp.float32) == np.float32
    with pytest.raises(ValueError, match="unsupported dtype 'fp8'"):
        js.as_dtype("fp8")


def _same_tree(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_hf_from_python_keeps_directshare_and_basis(tmp_path):
    """The first release's call forms (params, cfg first; js.compress for Basis Sharing) still work
    for one release, each with a DeprecationWarning."""
    random_hf_model("llama").save_pretrained(tmp_path / "m")
    m = js.load(tmp_path / "m")
    toks = np.random.default_rng(1).integers(0, m.cfg.vocab_size, (2, 48)).astype(np.int32)
    with pytest.deprecated_call(match=r"js.direct_share\(model, ratio\)"):
        shared, _ = js.direct_share(m.params, m.cfg, 0.3)
    calib = np.random.default_rng(5).integers(0, m.cfg.vocab_size, (4, 64)).astype(np.int32)
    with pytest.deprecated_call(match="js.basis_share"):
        basis, _, _ = js.compress(m.params, m.cfg, js.collect_grams(m.params, m.cfg, calib, batch_size=2), 0.3, 2,
                                  progress=False)
    assert isinstance(shared.layers.attn.wq, js.Bank) and isinstance(basis.layers.mlp.w_up, js.Factored)
    for name, params, manifest in (("ds", shared, "sharing.json"), ("basis", basis, "basis.json")):
        ours = np.asarray(js.forward(params, m.cfg, toks))
        with pytest.deprecated_call(match=r"js.export_hf\(model, path\)"):
            out = js.export_hf(params, m.cfg, tmp_path / name)  # no manifest passed: it writes its own
        assert (out / manifest).is_file()
        back = js.load(out)
        _same_tree(back.params, params)  # the compressed structure itself, not just equal products
        np.testing.assert_allclose(np.asarray(js.forward(back.params, m.cfg, toks)), ours, atol=1e-5, rtol=0)
        with pytest.deprecated_call(match=r"js.save\(model, path\)"):
            js.save(tmp_path / f"{name}_native", m.cfg, params)  # the native checkpoint likewise
        _same_tree(js.load(tmp_path / f"{name}_native").params, params)
    assert (tmp_path / "basis" / "basis.safetensors").is_file()


def test_benchmarks_and_experiments_run_as_modules_without_path_edits():
    scripts = sorted(p for d in ("benchmarks", "experiments") for p in (ROOT / d).glob("*.py") if p.stem != "__init__")
    for p in scripts:
        assert "sys.path" not in p.read_text(), f"{p.relative_to(ROOT)} edits sys.path"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout root (cwd) is the path
    # a shared module (common, gptq_blocked) is not a program
    programs = [f"{p.parent.name}.{p.stem}" for p in scripts if '__name__ == "__main__"' in p.read_text()]
    # `python -m NAME --help` for each, as runpy runs it, in one interpreter: the imports they share
    # (jax, transformers) load once (18 s as one process each, on 2 cores)
    driver = """
import contextlib, io, json, runpy, sys
out = {}
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out[name] = [code, "usage" in buf.getvalue()]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", driver, *programs], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert sorted(got) == sorted(programs) and len(programs) > 20
    assert {k: v for k, v in got.items() if v != [0, True]} == {}


# Issue 23's "done when": a user script with only `js` names loads a model, runs a plan of head sharing,
# Basis Sharing and int8 quantization, evaluates it, saves it natively, exports it to HF and GGUF, and
# reloads the same structure. The same script is the example in jaxshare/api.py's docstring.
DONE_SCRIPT = '''
import json
import sys

import numpy as np

import jaxshare as js

src, work = sys.argv[1], sys.argv[2]
m = js.load(src)
calib = np.random.default_rng(5).integers(0, m.cfg.vocab_size, (4, 64)).astype(np.int32)  # or a corpus name
plan = {"steps": [{"share": {"ratio": 0.25, "keep": "mean"}},
                  {"basis": {"ratios": {"up": 0.3, "down": 0.3}, "group_size": 2}},
                  {"quantize": {"bits": 8, "method": "gptq"}}]}
small, report = js.apply_plan(m, plan, grams=calib)
docs = ["the quick brown fox jumps over the lazy dog. " * 40, "a tiny model reads a tiny text. " * 40]
before = js.perplexity(m.params, m.cfg, m.tokenizer, docs, seq_len=64, max_windows=3)
after = js.perplexity(small.params, small.cfg, small.tokenizer, docs, seq_len=64, max_windows=3)
js.save(small, work + "/native")
js.export_hf(small, work + "/hf")
js.export_gguf(small, work + "/small.gguf", gguf_type="q8_0")
tokens = np.random.default_rng(1).integers(0, m.cfg.vocab_size, (2, 32)).astype(np.int32)
out = {"steps": [s["method"] for s in report["steps"]], "ppl": [before["ppl"], after["ppl"]],
       "windows": after["windows"], "logits": np.asarray(js.nn.forward(small.params, small.cfg, tokens)).tolist(),
       "tokens": tokens.tolist()}
for name in ("native", "hf", "small.gguf"):
    back = js.load(work + "/" + name)
    out[name] = np.asarray(js.nn.forward(back.params, back.cfg, tokens)).tolist()
with open(work + "/done.json", "w") as f:
    json.dump(out, f)
'''


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A tiny llama with a trained byte-level BPE tokenizer: what a GGUF file carries and reads back."""
    from tests.io.test_gguf_export import save_bpe_model

    return save_bpe_model(tmp_path_factory.mktemp("api") / "m", "llama", num_key_value_heads=2,
                          tie_word_embeddings=False, num_hidden_layers=4)


def test_done_when_script_plan_eval_save_export_reload(bpe_dir, tmp_path):
    _uses_only_top_level_names(DONE_SCRIPT)
    (tmp_path / "done.py").write_text(DONE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(tmp_path / "done.py"), str(bpe_dir), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeprecationWarning" not in proc.stderr  # the script uses the current forms only
    res = json.loads((tmp_path / "done.json").read_text())
    assert res["steps"] == ["share", "basis", "quantize"] and res["windows"] == 3
    assert all(np.isfinite(p) and p > 1 for p in res["ppl"])
    logits = np.asarray(res["logits"])
    np.testing.assert_array_equal(np.asarray(res["native"]), logits)
    np.testing.assert_array_equal(np.asarray(res["hf"]), logits)
    # GGUF cannot gather a bank or a basis: the file holds the dense materialized weights, re-coded in q8_0
    np.testing.assert_allclose(np.asarray(res["small.gguf"]), logits, atol=0.05 * np.abs(logits).max())
    small = js.load(tmp_path / "native")
    attn, mlp = small.params.layers.attn, small.params.layers.mlp
    assert isinstance(attn.wq, js.Bank) and isinstance(attn.wq.rows, js.Quantized)
    assert isinstance(mlp.w_up, js.Factored) and isinstance(mlp.w_up.coef, js.Quantized)
    assert isinstance(attn.wo, js.Quantized) and isinstance(mlp.w_gate, js.Quantized)
    _same_tree(js.load(tmp_path / "hf").params, small.params)
    gg = js.load(tmp_path / "small.gguf")
    assert gg.cfg.norm_eps == pytest.approx(small.cfg.norm_eps)  # GGUF stores it as a float32
    assert dataclasses.replace(gg.cfg, norm_eps=small.cfg.norm_eps) == small.cfg
    # and the GGUF model comes back as plain dense leaves
    assert not [x for x in jax.tree_util.tree_leaves(gg.params, is_leaf=lambda x: isinstance(x, js.Compressed))
                if isinstance(x, js.Compressed)]


def test_every_verb_takes_a_model_and_returns_a_model_and_a_report(bpe_dir, tmp_path):
    m = js.load(bpe_dir)
    calib = np.random.default_rng(5).integers(0, m.cfg.vocab_size, (4, 64)).astype(np.int32)
    toks = np.random.default_rng(1).integers(0, m.cfg.vocab_size, (2, 32)).astype(np.int32)
    grams = js.collect_grams(m.params, m.cfg, calib, batch_size=2)
    runs = {"direct_share": lambda: js.direct_share(m, 0.25, keep="mean"),
            "data_share": lambda: js.direct_share(m, 0.25, keep="data", grams=grams),
            "basis_share": lambda: js.basis_share(m, 0.3, grams=calib),  # token windows: grams collected
            "quantize": lambda: js.quantize(m, js.QuantSpec(bits=8, group=None, method="gptq"), grams=grams),
            "quantize_kwargs": lambda: js.quantize(m, bits=4, group=32, method="rtn"),
            "inherit": lambda: js.inherit(m, 2)}
    for name, run in runs.items():
        out, rep = run()
        assert isinstance(out, js.Model) and isinstance(rep, dict) and out.tokenizer is m.tokenizer, name
        assert np.isfinite(np.asarray(js.nn.forward(out.params, out.cfg, toks))).all(), name
        with pytest.raises(AttributeError):  # a Model is frozen: methods return new ones
            out.params = m.params
    out, _ = js.inherit(m, 2)
    assert out.cfg.n_layers == 2 and m.cfg.n_layers == 4 and out.extra["inherited"]["layers"] == [0, 1]
    with pytest.raises(ValueError, match="GPTQ needs calibration grams"):
        js.quantize(m, bits=8, group=None)
    with pytest.raises(ValueError, match="ratio must be in"):
        js.direct_share(m, 1.5)
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps:\n  - inherit: {layers: 3}\n  - quantize: {bits: 8, method: rtn}\n")
    out, rep = js.apply_plan(m, plan)  # a YAML file; nothing to calibrate
    assert out.cfg.n_layers == 3 and [s["method"] for s in rep["steps"]] == ["inherit", "quantize"]
    assert js.load_plan(plan).to_dict() == out.extra["plan"]
    assert isinstance(out.params.layers.mlp.w_down, js.Quantized)


def test_namespaces_and_names_of_the_api():
    assert js.nn.forward is js.forward and js.nn.KVCache is js.KVCache and callable(js.nn.init_params)
    assert js.Model is js.LoadedModel and js.nnx.Decoder is not None
    assert js.TrainConfig.__name__ == "TrainConfig" and js.Trainer.__name__ == "Trainer"
    assert callable(js.export_gguf) and js.load_plan.__name__ == "read_plan"
    code = "import sys, jaxshare as js; js.nn; print('flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["False"]  # the functional layer does not pull in the NNX view


def test_hasattr_nnx_answers_without_flax(monkeypatch):
    """Without flax, `js.nnx` is an AttributeError (so hasattr answers False) whose one line still
    names the extra; importing jaxshare.nnx itself stays a MissingDependency."""
    from jaxshare.errors import MissingAttribute, MissingDependency

    monkeypatch.setitem(sys.modules, "flax", None)  # import of flax halted: as if not installed
    monkeypatch.setitem(sys.modules, "flax.nnx", None)
    monkeypatch.delitem(sys.modules, "jaxshare.nnx", raising=False)
    monkeypatch.delitem(vars(js), "nnx", raising=False)  # an earlier js.nnx cached the namespace
    assert hasattr(js, "nnx") is False
    with pytest.raises(MissingAttribute, match=r"pip install 'jaxshare\[nnx\]'") as e:
        js.nnx
    assert isinstance(e.value, AttributeError) and "flax" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MissingDependency, match="flax"):
        import jaxshare.nnx  # noqa: F401
    assert hasattr(js, "nn") is True


def test_save_and_export_to_a_memory_url(bpe_dir):
    """The writers take URLs through the storage floor: a marked upload that js.load reads back with
    the same logits (memory:// is an fsspec filesystem living in this process)."""
    from jaxshare.storage.atomic import OutputExistsError
    from jaxshare.storage.markers import COMMIT_MARKER, OUTPUT_MARKER
    from jaxshare.storage.paths import as_path

    m = js.load(bpe_dir)
    toks = np.random.default_rng(3).integers(0, m.cfg.vocab_size, (1, 16)).astype(np.int32)
    for write, url in ((js.save, "memory://jaxshare-api-test/native"), (js.export_hf, "memory://jaxshare-api-test/hf")):
        assert write(m, url, overwrite=True) == url
        assert (as_path(url) / COMMIT_MARKER).exists() and (as_path(url) / OUTPUT_MARKER).exists()
        back = js.load(url)
        _same_tree(back.params, m.params)
        np.testing.assert_array_equal(np.asarray(js.forward(back.params, back.cfg, toks)),
                                      np.asarray(js.forward(m.params, m.cfg, toks)))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        js.save(m, "memory://jaxshare-api-test/native")
