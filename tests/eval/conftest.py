"""The tiny model the lm-eval tests share: a random 3-layer Llama on a byte tokenizer, and its HF export."""
import numpy as np
import pytest

from tests.conftest import random_hf_model

EOS = "<|endoftext|>"


def byte_tokenizer():
    """A byte-level BPE with no merges: every text is its UTF-8 bytes, plus EOS (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(loaded jaxshare model, our HF export of it): a random 3-layer Llama on a byte tokenizer."""
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    src = tmp_path_factory.mktemp("tiny_src")
    random_hf_model("llama", seed=3, vocab_size=260).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    loaded = load_model(str(src))
    out = export_hf(loaded.params, loaded.cfg, tmp_path_factory.mktemp("tiny") / "export", loaded.tokenizer)
    return loaded, out


def assert_same_scores(a: dict, b: dict, tasks) -> None:
    """Two `jaxshare.eval.mc.evaluate` results (log_samples=True): the same acc / acc_norm per task
    and per-choice log-likelihoods within 1e-4 relative (fp32)."""
    for t in tasks:
        assert a["tasks"][t] == b["tasks"][t]
        for sa, sb in zip(a["samples"][t], b["samples"][t], strict=True):
            ll_a = np.asarray([r[0] for r in sa["filtered_resps"]], np.float64)
            ll_b = np.asarray([r[0] for r in sb["filtered_resps"]], np.float64)
            np.testing.assert_allclose(ll_a, ll_b, rtol=1e-4)
