"""Family adapters: the only per-model code. Each maps HF config and tensor names onto the
generic decoder's ModelConfig and Params."""
from __future__ import annotations

import re
from types import ModuleType

from jaxshare.core.config import ConfigError, ModelConfig
from jaxshare.io.families import gemma3, gpt2, llama
from jaxshare.io.families.base import Slot

ADAPTERS: dict[str, ModuleType] = {"llama": llama, "mistral": llama, "qwen2": llama, "gpt2": gpt2,
                                   "gemma3_text": gemma3}


def adapter(family: str) -> ModuleType:
    try:
        return ADAPTERS[family]
    except KeyError:
        raise ConfigError(
            f"unsupported architecture {family!r}; supported: {', '.join(sorted(ADAPTERS))}") from None


def _transformers_config_class(model_type: str):
    from transformers import AutoConfig  # deferred: transformers costs ~0.4 s to import

    return AutoConfig.for_model(model_type).__class__


def config_from_hf_dict(hf: dict) -> ModelConfig:
    """ModelConfig from a config.json dict, normalised through transformers' own config class.

    Raises ConfigError naming the architecture or attribute we cannot honour.
    """
    model_type = hf.get("model_type")
    if model_type is None:
        raise ConfigError("config.json has no model_type")
    mod = adapter(model_type)
    cls = _transformers_config_class(model_type)
    # transformers v5 renames legacy keys (rope_scaling/rope_theta -> rope_parameters) on load.
    normalised = cls(**{k: v for k, v in hf.items() if k != "model_type"}).to_dict()
    keep = {"rope_parameters", *getattr(mod, "NORMALISED_KEYS", ())}  # derived by transformers when absent
    normalised = {k: v for k, v in normalised.items() if k in hf or k in keep}
    normalised["model_type"] = model_type
    default = cls().to_dict()
    return mod.config_from_hf(normalised, default)


def config_from_gguf_dict(hf: dict) -> ModelConfig:
    """ModelConfig from the config dict jaxshare.io.gguf builds from a GGUF header. That dict is in
    transformers v5 form already (rope_parameters, layer_types), so it skips the normalisation through
    transformers' config class, whose import pulls in torch (~240 MB of RSS a conversion never needs);
    a key the header may lack takes the adapter's GGUF_DEFAULTS, transformers' own default for it.
    The tests check that this equals config_from_hf_dict on the same dicts."""
    model_type = hf.get("model_type")
    if model_type is None:
        raise ConfigError("GGUF config has no model_type")
    mod = adapter(model_type)
    return mod.config_from_hf(dict(hf), dict(getattr(mod, "GGUF_DEFAULTS", {})))


def hf_config(cfg: ModelConfig):
    """A transformers config object for export (written with its own save_pretrained)."""
    cls = _transformers_config_class(cfg.family)
    return cls(**adapter(cfg.family).hf_config_kwargs(cfg))


def slots(cfg: ModelConfig) -> list[Slot]:
    return adapter(cfg.family).slots(cfg)


def is_ignored(cfg: ModelConfig, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in adapter(cfg.family).IGNORED)


__all__ = ["ADAPTERS", "Slot", "adapter", "config_from_gguf_dict", "config_from_hf_dict", "hf_config", "slots",
           "is_ignored"]
