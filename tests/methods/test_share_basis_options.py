"""The options `jaxshare share` and `jaxshare basis` hand their Methods: net_ratio (share) and path
(basis) round-trip through a plan's mapping, and bad values are refused in one line."""
import pytest

from jaxshare.errors import MethodError
from jaxshare.methods import METHODS


@pytest.mark.parametrize("name, o", [
    ("share", {"net_ratio": 0.25, "keep": "mean", "correct": "qk"}),
    ("share", {"ratio": 0.3, "match": "separate", "keep": "root"}),
    ("basis", {"ratio": 0.2, "path": "eig"}),
    ("basis", {"ratio": 0.2, "types": ["q", "up"], "shared": ["q"], "path": "concat", "method": "basis"}),
])
def test_options_round_trip(name, o):
    m = METHODS[name]
    opts = m.from_dict(o)
    assert m.from_dict(m.to_dict(opts)) == opts
    assert all(m.to_dict(opts)[k] == v for k, v in o.items())


def test_defaults_are_not_written():
    # plans and checkpoint metadata written before net_ratio and path existed read (and write) the same
    assert METHODS["share"].to_dict(METHODS["share"].from_dict({"ratio": 0.2})) == {
        "ratio": 0.2, "match": "qk", "keep": "mean", "correct": "none", "share_o": False}
    assert "path" not in METHODS["basis"].to_dict(METHODS["basis"].from_dict({"ratio": 0.2, "path": "auto"}))


@pytest.mark.parametrize("name, o, msg", [
    ("share", {}, "give exactly one of ratio or net_ratio (got none)"),
    ("share", {"ratio": 0.2, "net_ratio": 0.2}, "give exactly one of ratio or net_ratio (got ratio, net_ratio)"),
    ("share", {"net_ratio": 1.0}, "net_ratio must be in [0, 1), got 1.0"),
    ("share", {"net_ratio": "x"}, "net_ratio must be a number, got 'x'"),
    ("basis", {"ratio": 0.2, "path": "svd"}, "path must be one of auto, eig, concat, got 'svd'"),
    ("basis", {}, "give exactly one of ratio, ratios or ranks (got none)"),
])
def test_bad_options_are_refused_in_one_line(name, o, msg):
    with pytest.raises(MethodError) as e:
        METHODS[name].from_dict(o)
    assert str(e.value) == msg


def test_net_ratio_is_checked_against_the_model():
    from jaxshare.core.config import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=8,
                      d_ff=32, max_seq_len=16, norm_eps=1e-5)
    opts = METHODS["share"].from_dict({"net_ratio": 0.75})
    with pytest.raises(ValueError, match="asks for 3 of 4 units, but only 2 units"):
        METHODS["share"].check(opts, cfg)
