"""What a family adapter provides: HF config <-> ModelConfig, and HF tensor <-> param slots."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from jaxshare.core.config import ConfigError, RopeScaling

# Keys of an HF config that never change the forward pass.
HARMLESS = {
    "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "attention_dropout", "model_type", "pad_token_id", "bos_token_id",
    "eos_token_id", "id2label", "label2id", "output_attentions", "output_hidden_states",
    "return_dict", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
    "transformers.js_config", "is_llama_config", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "task_specific_params", "max_window_layers", "sep_token_id",
    "tf_legacy_loss", "use_bfloat16", "pruned_heads", "torchscript", "finetuning_task",
    "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "decoder_start_token_id",
    "prefix", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
}


@dataclass(frozen=True)
class Slot:
    """One HF tensor and the param leaves it fills.

    parts: (leaf path, layer index or None) for each leaf the tensor feeds.
    split: HF array -> one array per part, already in the leaf's layout.
    join:  one array per part -> the HF array (export).
    """

    hf_key: str
    parts: tuple[tuple[str, int | None], ...]
    split: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    join: Callable[..., np.ndarray]
    hf_shape: tuple[int, ...]


def single(hf_key: str, leaf: str, layer: int | None, to_jax, to_hf, hf_shape) -> Slot:
    return Slot(hf_key, ((leaf, layer),), lambda a: (to_jax(a),), lambda a: to_hf(a), tuple(hf_shape))


def check_unsupported(hf_dict: dict, default_dict: dict, handled: set[str], family: str) -> None:
    """Raise naming every config attribute that would change the model and that we ignore."""
    bad = []
    for key, value in hf_dict.items():
        if key in handled or key in HARMLESS or key.startswith("_"):
            continue
        if key in default_dict:
            if value != default_dict[key]:
                bad.append(f"{key}={value!r}")
        elif value not in (None, False, {}, [], 0):
            bad.append(f"{key}={value!r}")
    if bad:
        raise ConfigError(f"unsupported {family} config attribute(s): {', '.join(bad)}")


def rope_from_hf(params: dict | None, family: str):
    """(theta, RopeScaling | None) from transformers v5 `rope_parameters`."""
    params = dict(params or {})
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    theta = float(params.pop("rope_theta", 10000.0))
    if rope_type == "default":
        extra = {k: v for k, v in params.items() if v is not None}
        if extra:
            raise ConfigError(f"unsupported {family} rope_parameters for rope_type 'default': {extra}")
        return theta, None
    if rope_type == "llama3":
        try:
            scaling = RopeScaling(
                factor=float(params.pop("factor")),
                low_freq_factor=float(params.pop("low_freq_factor")),
                high_freq_factor=float(params.pop("high_freq_factor")),
                original_max_position_embeddings=int(params.pop("original_max_position_embeddings")),
            )
        except KeyError as e:
            raise ConfigError(f"llama3 rope_parameters lacks {e.args[0]!r}") from None
        if params:
            raise ConfigError(f"unsupported llama3 rope_parameters: {sorted(params)}")
        return theta, scaling
    raise ConfigError(f"unsupported rope type {rope_type!r} in {family} config (supported: default, llama3)")


def rope_to_hf(cfg) -> dict:
    out = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        out.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                   high_freq_factor=s.high_freq_factor,
                   original_max_position_embeddings=s.original_max_position_embeddings)
    return out
