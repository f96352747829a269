"""Model configuration: one frozen dataclass for every supported decoder family."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from jaxshare.errors import JaxshareError

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gemma3_text")
# The linear weight types of a decoder layer (core.matrices.TYPES holds their paths and layouts; this
# jax-free copy of the names is what the CLI's parser offers, a test keeps the two equal).
MATRIX_TYPES = ("q", "k", "v", "o", "up", "gate", "down")
CHOICES = {"norm": ("rms", "layer"), "act": ("silu", "gelu_tanh", "gelu"), "positions": ("rope", "learned")}


class ConfigError(JaxshareError, ValueError):
    """A model configuration that jaxshare cannot represent faithfully."""


@dataclass(frozen=True)
class RopeScaling:
    """llama3-style frequency scaling (the only scaling we support besides none)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"


@dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of a decoder. H query heads in K KV groups of G = H // K."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    norm_eps: float
    norm: str = "rms"  # rms | layer
    act: str = "silu"  # silu | gelu_tanh | gelu
    gated_mlp: bool = True
    positions: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    # Per-layer sliding window in tokens; 0 means full causal attention.
    windows: tuple[int, ...] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    # Gemma-style features; the defaults are the plain pre-norm decoder above.
    norm_plus_one: bool = False  # RMSNorm weight is (1 + scale), the product taken in fp32
    post_norms: bool = False  # a norm on the attention and MLP outputs before each residual add
    qk_norm: bool = False  # RMSNorm over head_dim of q and k (per head, one weight per layer) before RoPE
    scale_embed: bool = False  # embeddings times sqrt(d_model), in the compute dtype
    rope_local_theta: float | None = None  # RoPE base of the sliding-window layers (window > 0)
    query_pre_attn_scalar: float | None = None  # attention scores scaled by this ** -0.5, not head_dim ** -0.5
    final_logit_softcap: float | None = None  # logits = c * tanh(logits / c)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"unsupported family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.windows is not None and len(self.windows) != self.n_layers:
            raise ConfigError(f"windows has {len(self.windows)} entries for {self.n_layers} layers")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unsupported {name}={getattr(self, name)!r}; supported: {allowed}")

    @property
    def groups(self) -> int:
        """Query heads per KV head (G)."""
        return self.n_heads // self.n_kv_heads

    @property
    def layer_windows(self) -> tuple[int, ...]:
        return self.windows if self.windows is not None else (0,) * self.n_layers

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        for key in ("windows", "eos_token_id"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**d)
