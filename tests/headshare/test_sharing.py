"""Head-wise sharing: the bank + index representation, similarity search, DirectShare, I/O."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model, torch_logits
from jaxshare.core import bank
from jaxshare.headshare import directshare
from jaxshare.headshare import sharing
from jaxshare.headshare import similarity
from jaxshare.cli.main import main as cli_main
from jaxshare.core.config import ModelConfig
from jaxshare.io.hf import export_hf, load_hf_dir
from jaxshare.io.load import load_model
from jaxshare.core.model import forward, token_nll
from jaxshare.core.params import init_params

# SmolLM2's head layout (9 query heads in 3 KV groups), at toy width.
CFG = ModelConfig(family="llama", vocab_size=256, d_model=48, n_layers=5, n_heads=9, n_kv_heads=3, head_dim=8,
                  d_ff=64, max_seq_len=512, norm_eps=1e-5)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def toks():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 128)), jnp.int32)


def test_ratio_zero_is_bit_identical(params, toks):
    shared, info = directshare.direct_share(params, CFG, 0.0)
    assert sharing.is_shared(shared) and info["report"]["units_freed"] == 0
    assert np.array_equal(np.asarray(forward(params, CFG, toks)), np.asarray(forward(shared, CFG, toks)))


def _copy_unit(params, src, dst):
    """Make unit dst (layer, group) hold unit src's q/k/v weights exactly."""
    a = params.layers.attn
    new = {n: getattr(a, n).at[dst].set(getattr(a, n)[src]) for n in ("wq", "wk", "wv")}
    return dataclasses.replace(params, layers=dataclasses.replace(params.layers, attn=dataclasses.replace(a, **new)))


def test_identical_heads_are_matched_tied_and_logits_unchanged(params, toks):
    p = _copy_unit(params, (1, 2), (3, 0))
    found = similarity.best_partners(p, "qk")["qk"]
    assert found["partner"][3, 0] == 1 * 3 + 2 and found["score"][3, 0] == pytest.approx(1.0, abs=1e-6)
    n = 1
    shared, info = directshare.direct_share(p, CFG, n / 15, "qk")
    assert info["report"]["units_freed"] == 1
    assert sharing.index_of(shared, "q")[3, 0] == sharing.index_of(shared, "q")[1, 2]
    np.testing.assert_array_equal(np.asarray(forward(shared, CFG, toks)), np.asarray(forward(p, CFG, toks)))


def test_forest_chains_and_fan_in_free_exactly_n():
    L, K = 4, 2
    # chain: (3,0) -> (2,0) -> (1,0) -> (0,0); fan-in: (2,1) -> (0,1) and (3,1) -> (0,1)
    partner = np.array([[-1, -1], [0, 0], [2, 1], [4, 1]])
    score = np.array([[-np.inf, -np.inf], [0.9, 0.1], [0.8, 0.95], [0.85, 0.9]])
    for n in range(0, 7):
        sel = directshare.select(score, partner, n)
        roots = directshare.forest_roots(sel, partner)
        assert sel.sum() == n
        assert len(np.unique(roots)) == L * K - n  # exactly n units stop owning weights
        flat = roots.ravel()
        assert np.all(flat[flat] == flat)  # every unit reads a root, never an intermediate
    roots = directshare.forest_roots(directshare.select(score, partner, 6), partner)
    assert roots[3, 0] == 0 and roots[2, 1] == 1 and roots[3, 1] == 1


@pytest.mark.parametrize("func", ["qk", "q", "k", "v", "qkv"])
def test_match_functions_agree_with_numpy(params, func):
    ref = similarity.numpy_reference(params, func)
    np.testing.assert_allclose(np.asarray(similarity.similarity_matrix(params, func)), ref, atol=1e-6)
    found = similarity.best_partners(params, func, block=4)[func]
    # Algorithm 1 by the definition: a loop over every unit and every unit of earlier layers.
    K = CFG.n_kv_heads
    for u in range(K, CFG.n_layers * K):
        cands = np.arange((u // K) * K)
        best = cands[np.argmax(ref[u, cands])]
        assert found["partner"].ravel()[u] == best
        assert found["score"].ravel()[u] == pytest.approx(ref[u, best], abs=1e-6)
    assert np.all(found["partner"][0] == -1)


def test_separate_chooses_q_k_v_independently(params, toks):
    shared, info = directshare.direct_share(params, CFG, 0.4, "separate")
    idx = {m: sharing.index_of(shared, m) for m in "qkv"}
    for m in "qkv":
        assert len(np.unique(idx[m])) == 15 - 6
        ref = similarity.numpy_reference(params, m)
        assert np.array_equal(info["decision"]["by_matrix"][m]["partner"],
                              similarity.best_partners(params, m)[m]["partner"])
        assert ref.shape == (15, 15)
    assert not (np.array_equal(idx["q"], idx["k"]) and np.array_equal(idx["k"], idx["v"]))
    dense = bank.materialize(shared)
    np.testing.assert_allclose(np.asarray(forward(shared, CFG, toks)), np.asarray(forward(dense, CFG, toks)), atol=1e-5)


def test_sharded_search_equals_single_device(params):
    mesh = jax.make_mesh((8,), ("rows",))
    one = similarity.best_partners(params, "separate", block=2)
    many = similarity.best_partners(params, "separate", block=1, mesh=mesh)
    for f in one:
        np.testing.assert_array_equal(one[f]["partner"], many[f]["partner"])
        np.testing.assert_allclose(one[f]["score"], many[f]["score"], atol=1e-6)


def test_search_shape_checks_at_llama2_70b_scale():
    cfg70 = ModelConfig(family="llama", vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                        head_dim=128, d_ff=28672, max_seq_len=4096, norm_eps=1e-5)
    U = 80 * 8
    F = {"q": (U, 8 * 8192 * 128), "k": (U, 8192 * 128), "v": (U, 8192 * 128)}
    feats = tuple(jax.ShapeDtypeStruct(F[m], jnp.float32) for m in "qkv")
    rows = jax.ShapeDtypeStruct((U,), jnp.int32)
    coef = jax.ShapeDtypeStruct((3, 3), jnp.float32)
    layer_of = jax.ShapeDtypeStruct((U,), jnp.int32)
    score, partner = jax.eval_shape(lambda f, c, l, r: similarity._best_partners(f, c, l, r, 64, "highest"),
                                    feats, coef, layer_of, rows)
    assert score.shape == partner.shape == (3, U) and cfg70.groups == 8
    # The live Gram block is [rows, U] per matrix type, not [U, U].
    n = jax.ShapeDtypeStruct((3, U), jnp.float32)
    blk = jax.eval_shape(lambda f, c, l, nn: similarity._block_scores(tuple(x[:64] for x in f), f, nn[:, :64], nn,
                                                                      l[:64], l, c, "highest"),
                         feats, coef, layer_of, n)
    assert blk.shape == (3, 64, U)
    mesh = jax.make_mesh((8,), ("rows",))
    from jax.sharding import NamedSharding, PartitionSpec as P

    def place(x, spec):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    sharded = jax.eval_shape(lambda f, c, l, r: similarity._best_partners(f, c, l, r, 16, "highest", mesh),
                             tuple(place(f, P()) for f in feats), place(coef, P()), place(layer_of, P()),
                             place(rows, P("rows")))
    assert sharded[0].shape == (3, U)


def test_keep_mean_and_share_o(params, toks):
    shared, info = directshare.direct_share(params, CFG, 0.4, "qk", keep="mean", share_o=True)
    roots = info["decision"]["by_matrix"]["q"]["roots"].ravel()
    wq = np.asarray(params.layers.attn.wq).reshape(15, -1)
    got = np.asarray(bank.materialize(shared).layers.attn.wq).reshape(15, -1)
    for r in np.unique(roots):
        np.testing.assert_allclose(got[roots == r], np.broadcast_to(wq[roots == r].mean(0), got[roots == r].shape),
                                   atol=1e-7)
    assert bank.is_bank(shared.layers.attn.wo) and shared.layers.attn.wo.rows.shape[0] == 15 - 6


def test_compact_shrinks_and_gather_gradient_sums_tied_units(params, toks):
    shared, info = directshare.direct_share(params, CFG, 0.4, "qk")
    full = sharing.share(params, CFG, {m: info["decision"]["by_matrix"][m]["roots"] for m in "qkv"})
    assert full.layers.attn.wq.rows.shape[0] == 9  # share() compacts already
    wide = bank.Bank(jnp.concatenate([full.layers.attn.wq.rows, full.layers.attn.wq.rows]), full.layers.attn.wq.index)
    assert bank.compact(wide).rows.shape[0] == 9
    assert info["report"]["bytes_after"] < info["report"]["bytes_before"]

    def loss(p):
        return jnp.mean(token_nll(forward(p, CFG, toks)[:, :-1], toks[:, 1:]))

    train, frozen = bank.partition(shared)
    g_bank = jax.grad(lambda t: loss(bank.combine(t, frozen)))(train).layers.attn.wq.rows
    g_dense = jax.grad(loss)(bank.materialize(shared)).layers.attn.wq  # [L, K, G, D, d]
    index = np.asarray(shared.layers.attn.wq.index).ravel()
    summed = jax.ops.segment_sum(g_dense.reshape((15,) + g_dense.shape[2:]), jnp.asarray(index), num_segments=9)
    np.testing.assert_allclose(np.asarray(g_bank), np.asarray(summed), atol=1e-6)
    assert bank.trainable_mask(shared).layers.attn.wq.index is False


@pytest.mark.parametrize("family,kw", [("qwen2", dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)),
                                       ("gpt2", dict(n_layer=4))])
def test_native_save_load_and_hf_export_restore_sharing(tmp_path, family, kw):
    from jaxshare.io.native import load_native, save_native

    model = random_hf_model(family, **kw)
    model.save_pretrained(tmp_path / "src")
    cfg, params = load_hf_dir(tmp_path / "src")
    shared, info = directshare.direct_share(params, cfg, 0.3, "qk")
    man = sharing.manifest(shared, cfg, ratio=0.3)
    toks = np.random.default_rng(3).integers(0, 256, (2, 144)).astype(np.int32)
    ours = np.asarray(forward(shared, cfg, toks))

    save_native(tmp_path / "native", cfg, shared)  # the manifest is read from the params themselves
    _, loaded, meta = load_native(tmp_path / "native")
    assert meta["extra"]["sharing"]["index"] == man["index"]
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(shared)
    np.testing.assert_array_equal(np.asarray(forward(loaded, cfg, toks)), ours)

    export_hf(shared, cfg, tmp_path / "hf", info={"sharing": {"ratio": 0.3}})
    on_disk = json.loads((tmp_path / "hf" / "sharing.json").read_text())
    assert on_disk["index"] == man["index"] and on_disk["ratio"] == 0.3
    m = load_model(str(tmp_path / "hf"))
    for name in ("wq", "wk", "wv", "bq"):
        a, b = getattr(m.params.layers.attn, name), getattr(shared.layers.attn, name)
        if b is None:
            continue
        np.testing.assert_array_equal(np.asarray(a.index), np.asarray(b.index))
        np.testing.assert_array_equal(np.asarray(a.rows), np.asarray(b.rows))
    np.testing.assert_allclose(np.asarray(forward(m.params, cfg, toks)), ours, atol=1e-5, rtol=0)

    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(torch_logits(ref, toks), ours, atol=1e-5, rtol=0)


def test_import_rejects_a_manifest_that_does_not_match_the_weights(tmp_path):
    model = random_hf_model("llama")
    model.save_pretrained(tmp_path)
    cfg, _ = load_hf_dir(tmp_path)
    idx = np.arange(cfg.n_layers * cfg.n_kv_heads).reshape(cfg.n_layers, -1)
    idx[2, 0] = 0  # claims a tie the weights don't have
    idx = np.unique(idx, return_inverse=True)[1].reshape(idx.shape)
    (tmp_path / "sharing.json").write_text(json.dumps({"version": 1, "index": {"q": idx.tolist()}}))
    with pytest.raises(sharing.SharingError, match="differ"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("argv,msg", [
    (["--ratio", "-0.1"], "argument --ratio: must be in [0, 1)"),
    (["--ratio", "1.0"], "argument --ratio: must be in [0, 1)"),
    (["--ratio", "0.9"], "only 63 units"),
])
def test_share_bad_input_clear_error_nothing_written(tmp_path, capsys, argv, msg):
    model = random_hf_model("llama", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    model.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    if msg.startswith("only"):
        msg = "only 4 units"
    try:
        code = cli_main(["share", str(tmp_path / "src"), str(out), *argv])
    except SystemExit as e:  # a ratio out of range is a usage error, raised while parsing
        code = e.code
    assert code == 2
    assert msg in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_share_unknown_match_function_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["share", "smollm2-135m", str(tmp_path / "o"), "--ratio", "0.1", "--match", "qkvo"])
    assert e.value.code == 2 and "invalid choice: 'qkvo'" in capsys.readouterr().err
    with pytest.raises(similarity.MatchError, match="unknown match function"):
        similarity.scored_functions("qkvo")
    assert not (tmp_path / "o").exists()


def test_similarity_cli_writes_json_and_plots(tmp_path, capsys):
    random_hf_model("llama", num_hidden_layers=4).save_pretrained(tmp_path / "m")
    assert cli_main(["similarity", str(tmp_path / "m"), "--match", "separate", "--plot-dir", str(tmp_path / "p"),
                     "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["functions"]) == {"q", "k", "v"}
    assert sum(res["functions"]["q"]["layer_distance_hist"]) == 3 * 2  # every unit outside layer 0
    for f in "qkv":
        for p in res["functions"][f]["plots"]:
            assert p.endswith(".png") and (tmp_path / "p").joinpath(p.rsplit("/", 1)[1]).stat().st_size > 1000
