"""Compute-dtype policy for mixed precision (issue: performance and scale).

Parameters are always stored in float32 (``param_dtype``); ``compute_dtype`` sets the dtype of the
convolutions, matmuls and activations. Whatever it is, GroupNorm / LayerNorm, attention softmaxes,
the codebook similarities and lookup (`vpgc_jax.models.codebook`), LPIPS and every loss run in
float32, and the models return float32 images and features.

``'auto'`` (the configs' default) picks bfloat16 on GPU and TPU, where it roughly doubles matmul /
convolution throughput and halves activation memory, and float32 on CPU, where XLA has no fast
bfloat16 convolutions. Checkpoints do not depend on it: a run trained in bfloat16 evaluates or
resumes in float32 and the other way round.
"""

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str = "auto", backend: str | None = None):
    """The jnp dtype for a config's ``compute_dtype`` name.

    Args:
      name: 'auto', 'float32' or 'bfloat16'.
      backend: platform deciding 'auto' (default: `jax.default_backend()`).

    Returns:
      ``jnp.float32`` or ``jnp.bfloat16``.

    Raises:
      ValueError: an unknown name.
    """
    if name == "auto":
        backend = backend or jax.default_backend()
        return jnp.float32 if backend == "cpu" else jnp.bfloat16
    if name not in DTYPES:
        raise ValueError(f"compute_dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def at_least_f32(dtype):
    """The dtype norms, softmaxes and reductions run in: float32, or float64 for a float64 run.

    bfloat16 and float32 compute give float32; float64 (``jax_enable_x64``, used for numerical
    reference runs) stays float64.
    """
    return jnp.promote_types(dtype, jnp.float32)
