"""Tiny random HF models with calibration grams, for the budgeted plan's pruning candidates' tests."""
import numpy as np

from tests.conftest import random_hf_model
from jaxshare.basis.calibrate import collect_grams
from jaxshare.io.hf import load_hf_dir


def model_with_grams(tmp_path_factory, family, **kw):
    """(cfg, params, grams) of a random tiny `family` model saved and loaded as HF (kw: config overrides)."""
    d = tmp_path_factory.mktemp(f"budget_{family}")
    random_hf_model(family, **kw).save_pretrained(d / "src")
    cfg, params = load_hf_dir(d / "src")
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    return cfg, params, collect_grams(params, cfg, calib, batch_size=2)
