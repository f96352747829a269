"""Generation with a KV cache: greedy, or temperature with nucleus (top-p) sampling."""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.errors import UsageError
from jaxshare.core.config import ModelConfig
from jaxshare.core.model import KVCache, forward_cached


@partial(jax.jit, static_argnames=("temperature", "top_p"))
def sample_token(logits_BV, key, temperature: float = 0.0, top_p: float = 1.0):
    """Next token [B]: argmax at temperature 0, else a draw from the top-p nucleus."""
    if temperature <= 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits = logits_BV.astype(jnp.float32) / temperature
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
        keep = before < top_p  # the most likely token is always kept
        cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse settings that would run but print nonsense or nothing (negative temperature, top_p 0)."""
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not (0 < top_p <= 1):
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")


@partial(jax.jit, static_argnames=("cfg", "temperature", "top_p", "dtype"), donate_argnames=("cache",))
def decode_step(params, cfg: ModelConfig, tok_B: jax.Array, cache: KVCache, key, temperature: float = 0.0,
                top_p: float = 1.0, dtype=jnp.float32):
    """One fused decode step: the forward of the last tokens [B] on the cache (donated) and the
    next draw. Returns (next tokens [B], key, grown cache); the key splits as generate's loop did."""
    logits, cache = forward_cached(params, cfg, tok_B[:, None], cache, dtype)
    key, sub = jax.random.split(key)
    return sample_token(logits[:, -1], sub, temperature, top_p), key, cache


# how many tokens run ahead on the device between EOS checks on the host (extra steps past an
# all-EOS point are computed and dropped; without EOS ids nothing is read back until the end)
EOS_CHECK_EVERY = 8


def generate(params, cfg: ModelConfig, prompt_BT: np.ndarray, max_new_tokens: int, *, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, eos_ids=(), dtype=jnp.float32) -> np.ndarray:
    """New tokens [B, <=max_new_tokens] after the prompt; stops early when every row hit EOS (a row
    that hit EOS continues with its first EOS id)."""
    check_sampling(max_new_tokens, temperature, top_p)
    prompt = jnp.asarray(prompt_BT, jnp.int32)
    B, T = prompt.shape
    if T == 0:
        raise UsageError("the prompt is empty (0 tokens); give at least one token to continue")
    if T + max_new_tokens > cfg.max_seq_len:
        raise UsageError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{cfg.max_seq_len} positions")
    cache = KVCache.empty(cfg, B, T + max_new_tokens, dtype)
    logits, cache = forward_cached(params, cfg, prompt, cache, dtype)
    key, sub = jax.random.split(jax.random.key(seed))
    tok = sample_token(logits[:, -1], sub, temperature, top_p)
    eos = np.asarray(sorted(eos_ids), np.int32)
    done = np.zeros(B, bool)
    out, pending = [], [tok]
    # Tokens stay on the device and each step is dispatched without waiting for the last one; the
    # host reads them back every EOS_CHECK_EVERY steps (when there are EOS ids) and at the end.
    for i in range(1, max_new_tokens + 1):
        if i == max_new_tokens or (len(eos) and len(pending) >= EOS_CHECK_EVERY):
            for tok_np in np.asarray(jnp.stack(pending)):
                out.append(np.where(done, eos[0] if len(eos) else tok_np, tok_np))
                done |= np.isin(tok_np, eos)
                if done.all():
                    return np.stack(out, axis=1)
            pending = []
        if i < max_new_tokens:
            tok, key, cache = decode_step(params, cfg, tok, cache, key, temperature, top_p, dtype)
            pending.append(tok)
    return np.stack(out, axis=1)


def eos_ids(cfg: ModelConfig, tokenizer=None) -> tuple[int, ...]:
    ids = cfg.eos_token_id
    ids = () if ids is None else (ids if isinstance(ids, tuple) else (ids,))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids = tuple(sorted(set(ids) | {tokenizer.eos_token_id}))
    return ids


def generate_text(loaded, prompt: str, max_new_tokens: int = 64, *, chat: bool = False, **kw) -> str:
    tok = loaded.need_tokenizer("generate")
    if chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
    else:
        ids = tok(prompt)["input_ids"]
    if len(ids) == 0:
        raise UsageError(f"the prompt {prompt!r} gives no tokens; give some text to continue")
    new = generate(loaded.params, loaded.cfg, np.asarray([ids]), max_new_tokens, eos_ids=eos_ids(loaded.cfg, tok), **kw)
    return tok.decode(new[0], skip_special_tokens=True)
