"""A third-party compressed kind plugs in through the `jaxshare.codecs` entry point, without
editing jaxshare, and round-trips natively and through an HF export."""
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model

PLUGIN = textwrap.dedent('''
    """A toy kind: W_l = s_l * V_l for the MLP down projection (a per-layer scale)."""
    import json
    from dataclasses import dataclass

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxshare.core.params import get_leaf, replace_leaves

    PATH = "layers.mlp.w_down"


    @jax.tree_util.register_dataclass
    @dataclass
    class Scaled:
        v: jax.Array  # [L, F, D]
        s: jax.Array  # [L]

        def dense(self):
            return self.v * self.s[..., None, None]

        def apply(self, x, dense_fn):
            return dense_fn(x, self.dense().astype(x.dtype))

        def logical_axes(self, dense_axes):
            return Scaled(None if self.v is None else tuple(dense_axes), None if self.s is None else ("layers",))

        def frozen(self):
            return Scaled(False, False)


    class ScaledCodec:
        key = "toy_scaled"
        kind = Scaled

        def manifest(self, params, cfg):
            return {"path": PATH}

        def abstract(self, cfg, manifest, base):
            w = get_leaf(base, manifest["path"])
            return replace_leaves(base, {manifest["path"]: Scaled(w, jax.ShapeDtypeStruct(w.shape[:1], w.dtype))})

        def export_files(self, params, manifest):
            s = np.asarray(get_leaf(params, manifest["path"]).s, np.float64)
            return {"toy_scaled_s.json": json.dumps(s.tolist()).encode()}

        def restore_hf(self, cfg, params, manifest, source):
            s = jnp.asarray(json.loads((source / "toy_scaled_s.json").read_text()), jnp.float32)
            w = get_leaf(params, manifest["path"])
            return replace_leaves(params, {manifest["path"]: Scaled(w / s[:, None, None], s)})
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_scaled_plugin.py").write_text(PLUGIN)
    info = site / "toy_scaled_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-scaled-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[jaxshare.codecs]\ntoy_scaled = toy_scaled_plugin:ScaledCodec\n")
    monkeypatch.syspath_prepend(str(site))
    from jaxshare.io import kinds

    kinds.refresh()
    yield __import__("toy_scaled_plugin")
    kinds.refresh()


def test_a_plugin_kind_round_trips_natively_and_through_hf(plugin, tmp_path):
    from jaxshare.core.model import forward
    from jaxshare.core.params import get_leaf, replace_leaves
    from jaxshare.io import kinds
    from jaxshare.io.hf import export_hf, load_hf_dir
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native

    assert "toy_scaled" in kinds.keys()
    src = tmp_path / "src"
    random_hf_model("llama").save_pretrained(src)
    cfg, params = load_hf_dir(src)
    w = get_leaf(params, plugin.PATH)
    s = jnp.linspace(0.5, 2.0, cfg.n_layers, dtype=jnp.float32)
    toy = replace_leaves(params, {plugin.PATH: plugin.Scaled(w / s[:, None, None], s)})
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)
    want = np.asarray(forward(toy, cfg, tokens))
    np.testing.assert_allclose(want, np.asarray(forward(params, cfg, tokens)), atol=1e-4)

    save_native(tmp_path / "native", cfg, toy)
    back = load_model(str(tmp_path / "native"))
    got = get_leaf(back.params, plugin.PATH)
    assert isinstance(got, plugin.Scaled)
    np.testing.assert_array_equal(np.asarray(got.s), np.asarray(s))
    np.testing.assert_allclose(np.asarray(forward(back.params, cfg, tokens)), want, atol=1e-6)

    export_hf(toy, cfg, tmp_path / "hf")
    assert (tmp_path / "hf" / "toy_scaled.json").is_file()
    back = load_model(str(tmp_path / "hf"))
    got = get_leaf(back.params, plugin.PATH)
    assert isinstance(got, plugin.Scaled)
    np.testing.assert_allclose(np.asarray(forward(back.params, cfg, tokens)), want, atol=1e-5)
