"""A random-weight Qwen2-1.5B-shaped Hugging Face checkpoint, made with transformers (for
benchmarks.memory): hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936,
tied embeddings; bf16 on disk like the real release. The tokenizer is SmolLM2's (its ids all lie
below 151936); nothing here is a trained model.

    python -m benchmarks.make_random_qwen2 OUT_DIR [--layers 28]

Writes OUT_DIR aside and renames it into place; does nothing when OUT_DIR already holds one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

QWEN2_1P5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=1, eos_token_id=2)


def make(out: Path, layers: int = 28) -> Path:
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from jaxshare.io.load import registered_native

    torch.manual_seed(0)
    cfg = Qwen2Config(**{**QWEN2_1P5B, "num_hidden_layers": layers})
    torch.set_default_dtype(torch.bfloat16)  # init straight in bf16: 3 GB, never an fp32 copy
    with torch.no_grad():
        model = Qwen2ForCausalLM(cfg).eval()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(registered_native("smollm2-135m"))).save_pretrained(tmp)
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=28)
    args = ap.parse_args()
    print(make(args.out, args.layers), file=sys.stderr)


if __name__ == "__main__":
    main()
