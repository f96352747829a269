"""Memory-lean paths (issue 15) on tiny models: chunked NLL, streamed conversion, safetensors native
checkpoints, cheap GGUF refusals."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.core.model import hidden_states, token_nll, unembed
from jaxshare.eval.perplexity import chunked_token_nll, fit_batch, perplexity_of_windows, window_nll
from jaxshare.io.hf import load_hf_dir


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_chunked_nll_equals_full_logits(tied, chunk, tmp_path):
    random_hf_model("llama", tie_word_embeddings=tied).save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 40)).astype(np.int32))
    x, _ = hidden_states(params, cfg, toks)
    want = token_nll(unembed(params, cfg, x[:, :-1]), toks[:, 1:])
    got = chunked_token_nll(params, cfg, x[:, :-1], toks[:, 1:], chunk=chunk)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)


def test_window_nll_equals_old_computation(tmp_path):
    from jaxshare.core.model import next_token_nll

    random_hf_model("qwen2").save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(3, 33)).astype(np.int32))
    old = jnp.sum(next_token_nll(params, cfg, toks), axis=-1)
    np.testing.assert_allclose(np.asarray(window_nll(params, cfg, toks)), np.asarray(old), rtol=1e-6)


def test_max_memory_picks_the_batch(tmp_path):
    random_hf_model("llama").save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    windows = np.random.default_rng(2).integers(0, 256, size=(6, 32)).astype(np.int32)
    from jaxshare.eval.perplexity import window_bytes

    per = window_bytes(cfg, 32)
    assert fit_batch(cfg, 32, 10 * per + 5, held=5) == 10
    assert fit_batch(cfg, 32, 0, held=5) == 1
    full = perplexity_of_windows(params, cfg, windows, batch_size=8)
    small = perplexity_of_windows(params, cfg, windows, batch_size=8, max_memory=1)  # nothing fits: batch 1
    assert full["batch_size"] == 6 and small["batch_size"] == 1
    assert small["nll"] == pytest.approx(full["nll"], rel=1e-6)


def test_grams_in_layer_chunks_equal_one_pass(tmp_path):
    from jaxshare.basis.calibrate import INPUTS, GramStore, collect_grams, collect_grams_to_disk, layer_gram_bytes

    random_hf_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "m")
    cfg, params = load_hf_dir(tmp_path / "m")
    windows = np.random.default_rng(3).integers(0, 256, size=(5, 24)).astype(np.int32)
    want = collect_grams(params, cfg, windows, batch_size=2)
    (tmp_path / "g").mkdir()
    collect_grams_to_disk(params, cfg, windows, tmp_path / "g", batch_size=2, budget_bytes=layer_gram_bytes(cfg) * 2)
    got = GramStore(tmp_path / "g", cfg.n_layers)
    assert len(list((tmp_path / "g").glob("*.npy"))) == 4 * cfg.n_layers
    for k in INPUTS:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-5 * np.abs(want[k]).max())
        np.testing.assert_array_equal(got[k][[0, 2]], np.asarray(got[k])[[0, 2]])


def _convert(capsys, *argv):
    from jaxshare.cli.main import main

    code = main([str(a) for a in ("convert", *argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_streamed_convert_equals_load(family, tmp_path, capsys):
    from jaxshare.io.native import PARAMS_FILE, load_native
    from jaxshare.io.tensorfile import TensorReader

    random_hf_model(family, num_hidden_layers=2).save_pretrained(tmp_path / "hf")
    cfg, want = load_hf_dir(tmp_path / "hf")
    _convert(capsys, tmp_path / "hf", tmp_path / "n32")
    _convert(capsys, tmp_path / "hf", tmp_path / "n16", "--dtype", "bf16")
    cfg2, got, meta = load_native(tmp_path / "n32")
    assert cfg2 == cfg and meta["version"] == 2 and not (tmp_path / "n32" / "params").exists()
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, half, meta16 = load_native(tmp_path / "n16")
    assert meta16["dtype"] == "bfloat16"
    for a, b in zip(jax.tree_util.tree_leaves(half), jax.tree_util.tree_leaves(want)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
    _, up, _ = load_native(tmp_path / "n16", dtype="fp32")  # cast on the way in
    assert jax.tree_util.tree_leaves(up)[0].dtype == jnp.float32
    with TensorReader(tmp_path / "n32" / PARAMS_FILE) as f:  # an ordinary safetensors file
        from safetensors.numpy import load_file

        assert sorted(load_file(tmp_path / "n32" / PARAMS_FILE)) == sorted(f.keys())


def test_native_v2_roundtrip_of_shared_model(tmp_path):
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.io.native import load_native, save_native

    random_hf_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "hf")
    cfg, params = load_hf_dir(tmp_path / "hf")
    shared, _ = direct_share(params, cfg, 0.5)
    save_native(tmp_path / "s", cfg, shared)
    _, back, _ = load_native(tmp_path / "s")
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(shared)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(shared)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("shared", [False, True])
def test_version_1_checkpoint_written_before_gemma3_leaves_loads(shared, tmp_path):
    """A v1 (orbax) checkpoint from before Params had q/k norms and post-norms: those keys are
    absent on disk, not None, and it must still load (users and caches hold such checkpoints)."""
    import json

    import orbax.checkpoint as ocp

    from jaxshare.headshare.directshare import direct_share
    from jaxshare.io.native import META, leaf_items, load_native, native_meta

    random_hf_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "hf")
    cfg, params = load_hf_dir(tmp_path / "hf")
    extra = {}
    if shared:
        params, _ = direct_share(params, cfg, 0.5)
    new_keys = {"q_norm", "k_norm", "attn_post_norm", "mlp_post_norm"}

    def old_layout(tree):  # the nested dict orbax wrote, None kept, the new keys never there
        flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
        out = {}
        for path, leaf in flat:
            keys = [str(getattr(k, "name", getattr(k, "key", k))) for k in path]
            if new_keys & set(keys):
                continue
            d = out
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = None if leaf is None else np.asarray(leaf)
        return out

    out = tmp_path / "v1"
    out.mkdir()
    with ocp.StandardCheckpointer() as ck:
        ck.save((out / "params").absolute(), old_layout(params))
    meta = native_meta(cfg, params, extra, version=1)
    (out / META).write_text(json.dumps(meta))
    _, back, got = load_native(out)
    assert got["version"] == 1
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for (name, a), (_, b) in zip(leaf_items(back), leaf_items(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_unknown_gguf_architecture_is_refused_from_the_header_fast(tmp_path, capsys):
    import gguf

    from jaxshare.cli.main import main

    path = tmp_path / "big-vocab.gguf"
    w = gguf.GGUFWriter(str(path), "mamba9")
    w.add_block_count(1)
    w.add_token_list([f"tok{i}" for i in range(150_000)])  # a vocabulary the size of Qwen2's
    w.add_token_merges([f"t o{i}" for i in range(150_000)])
    w.add_tensor("token_embd.weight", np.zeros((64, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    t0 = time.perf_counter()
    code = main(["convert", str(path), str(tmp_path / "out")])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and "unsupported GGUF architecture: mamba9" in err and len(err.strip().splitlines()) == 1
    assert elapsed < 2.0, elapsed
    assert not (tmp_path / "out").exists()


def test_gguf_convert_does_not_import_torch(tmp_path):
    """Issue 15: torch (and transformers' config classes, which import it) is ~240 MB of RSS, more than
    the bf16 params of SmolLM2-135M; a GGUF conversion builds its config and tokenizer without it."""
    import subprocess
    import sys

    from jaxshare.io.gguf_export import export_gguf
    from jaxshare.io.load import load_model
    from tests.io.test_gguf_export import save_bpe_model

    m = load_model(save_bpe_model(tmp_path / "m", "qwen2", num_key_value_heads=2))
    path = export_gguf(m.params, m.cfg, tmp_path / "m.gguf", m.tokenizer, "q4_1")
    code = ("import sys; from jaxshare.cli.main import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "convert", str(path), str(tmp_path / "n16"), "--dtype", "bf16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "n16" / "tokenizer.json").is_file() and (tmp_path / "n16" / "params.safetensors").is_file()


def test_parity_cli_on_native_runs_the_sides_in_sequence(tmp_path, capsys):
    import json

    from jaxshare.cli.main import main
    from tests.tiny_model import save_text, save_tiny_model

    save_tiny_model(tmp_path / "hf")
    _convert(capsys, tmp_path / "hf", tmp_path / "nat")
    code = main(["parity", str(tmp_path / "nat"), "--data", str(save_text(tmp_path / "t.txt")), "--seq-len", "32",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["max_abs_logit_diff"] < 1e-4 and res["ppl_rel_diff"] < 1e-5


def test_share_and_basis_store_bf16(tmp_path, capsys):
    from jaxshare.cli.main import main
    from jaxshare.io.native import load_native
    from tests.tiny_model import save_text, save_tiny_model

    save_tiny_model(tmp_path / "hf")
    text = save_text(tmp_path / "t.txt")
    for argv in (["share", tmp_path / "hf", tmp_path / "sh", "--ratio", "0.25", "--dtype", "bf16"],
                 ["basis", tmp_path / "hf", tmp_path / "bs", "--calib", text, "--calib-windows", "2",
                  "--calib-seq-len", "32", "--dtype", "bf16", "--max-memory", "8G"]):
        code = main([str(a) for a in argv])
        assert code == 0, capsys.readouterr().err
        _, params, meta = load_native(argv[2])
        assert meta["dtype"] == "bfloat16"
        assert {str(x.dtype) for x in jax.tree_util.tree_leaves(params)} <= {"bfloat16", "int32"}
