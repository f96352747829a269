"""A checkpoint's tokenizer: the TokenizersBackend shortcut gives what AutoTokenizer gives, is
taken only where AutoTokenizer would end at that class, and keeps torch out of a model load."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jaxshare.io import tokenizers as tk

TEXT = "Hello world, the capital of France is ... ünïcode  spaces\n\nnew <|im_end|> 12345"


@pytest.fixture(scope="module")
def smol_dir():
    from jaxshare.io.load import load_model

    return Path(load_model("smollm2-135m").source)  # the registered model's native conversion


def test_backend_shortcut_equals_autotokenizer_on_smollm2(smol_dir):
    native = smol_dir
    assert tk._backend_class(native) is not None
    ours, ref = tk.tokenizer_from_dir(native), AutoTokenizer.from_pretrained(str(native))
    assert type(ours) is type(ref)
    assert ours(TEXT)["input_ids"] == ref(TEXT)["input_ids"]
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, len(ours)) == \
        (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, len(ref))


def _copy(src: Path, dst: Path, config: dict | None = None, **tc_changes) -> Path:
    dst.mkdir()
    (dst / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc.update(tc_changes)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_shortcut_only_where_autotokenizer_ends_at_the_backend(smol_dir, tmp_path):
    native = smol_dir
    assert tk._backend_class(_copy(native, tmp_path / "llama", {"model_type": "llama"})) is not None
    # a model type that is not ours (transformers maps some to other classes), remote code, or
    # another declared class: AutoTokenizer decides
    assert tk._backend_class(_copy(native, tmp_path / "other", {"model_type": "internlm2"})) is None
    assert tk._backend_class(_copy(native, tmp_path / "remote", auto_map={"AutoTokenizer": ["x.Tok", None]})) is None
    # a class named beside a model type: AutoTokenizer weighs the two
    assert tk._backend_class(_copy(native, tmp_path / "gpt2", {"model_type": "llama"},
                                   tokenizer_class="GPT2Tokenizer")) is None
    # LlamaTokenizer: AutoTokenizer swaps in TokenizersBackend for a byte-level tokenizer.json
    assert tk._backend_class(_copy(native, tmp_path / "llama_tok", tokenizer_class="LlamaTokenizer")) is None
    assert tk._backend_class(_copy(native, tmp_path / "unknown", tokenizer_class="NoSuchTokenizer")) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer_config.json").write_text("{not json")
    assert tk._backend_class(tmp_path / "bad") is None


@pytest.mark.parametrize("name", ["GPT2Tokenizer", "Qwen2Tokenizer", "GemmaTokenizer"])
def test_a_native_checkpoint_naming_a_class_gets_what_autotokenizer_gives(smol_dir, tmp_path, name):
    """No config.json: AutoTokenizer has no model type to weigh and loads the named class (gemma3-270m's
    native conversion names GemmaTokenizer: 3.9 s this way, 6.6 s through AutoTokenizer)."""
    d = _copy(smol_dir, tmp_path / name, tokenizer_class=name)
    assert tk._backend_class(d).__name__ == name
    ours, ref = tk.tokenizer_from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert type(ours) is type(ref)
    assert ours(TEXT)["input_ids"] == ref(TEXT)["input_ids"] and len(ours) == len(ref)


def test_loading_a_native_model_does_not_import_torch(smol_dir):
    code = ("import sys; from jaxshare.io.load import load_model; m = load_model(sys.argv[1]); "
            "assert m.tokenizer is not None; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(smol_dir)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
