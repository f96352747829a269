"""One dtype vocabulary for every entry point: "fp32"/"bf16" (the CLI's names), "float32"/
"bfloat16", or any jnp/numpy dtype. Everything that takes a dtype passes it through `as_dtype`."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxshare.errors import JaxshareError

NAMES = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16}


class DTypeError(JaxshareError, ValueError):
    """A dtype name jaxshare does not compute in."""


def as_dtype(dtype) -> np.dtype:
    """The numpy dtype (bfloat16 via ml_dtypes) of a name or dtype-like; usable by jnp and numpy alike."""
    if isinstance(dtype, str):
        if dtype not in NAMES:
            raise DTypeError(f"unsupported dtype {dtype!r}; use fp32 or bf16")
        return jnp.dtype(NAMES[dtype])
    return jnp.dtype(dtype)

