"""Compute-dtype policy for mixed precision (issues: performance and scale; numerical fidelity).

Parameters are always stored in float32 (``param_dtype``); ``compute_dtype`` sets the dtype of the
convolutions, matmuls and activations. Whatever it is, GroupNorm / LayerNorm statistics, attention
softmaxes, the codebook similarities and lookup (`vpgc_jax.models.codebook`), LPIPS and every loss
run in float32, and the models return float32 images and features.

Names (a config's ``compute_dtype``):

- ``'float32'``: everything in float32.
- ``'bfloat16'``: the autoencoder (encoder, decoder) and the driver in bfloat16. Fastest, but its
  renders drift from float32 by more than the 45 dB we accept (benchmarks/RESULTS.md, "bfloat16
  drift": 37 dB for stage-1 reconstructions, 39-42 dB for stage-2 renders).
- ``'auto'`` (the configs' default): float32 on CPU, where XLA has no fast bfloat16 convolutions;
  on GPU and TPU the driver (stage 2) in bfloat16 and the stage-1 autoencoder in float32, the
  split whose renders stay at least 45 dB from float32 in the same measurement (a bfloat16
  decoder costs stage-2 renders 5-10 dB, a bfloat16 encoder costs reconstructions 8 dB; the
  driver's own bfloat16 error is damped by the codebook lookup).

Checkpoints do not depend on it: a run trained in bfloat16 evaluates or resumes in float32 and the
other way round.
"""

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


PARTS = ("driver", "autoencoder")


def compute_dtype(name: str = "auto", backend: str | None = None, part: str = "driver"):
    """The jnp dtype of one model part for a config's ``compute_dtype`` name.

    Args:
      name: 'auto', 'float32' or 'bfloat16' (see the module docstring).
      backend: platform deciding 'auto' (default: `jax.default_backend()`).
      part: 'driver' (the stage-2 PriorGuidedDriver) or 'autoencoder' (the stage-1 VQModel:
        encoder, codebook projections and decoder, also when it renders stage-2 features).

    Returns:
      ``jnp.float32`` or ``jnp.bfloat16``.

    Raises:
      ValueError: an unknown name or part.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if name == "auto":
        backend = backend or jax.default_backend()
        return jnp.bfloat16 if backend != "cpu" and part == "driver" else jnp.float32
    if name not in DTYPES:
        raise ValueError(f"compute_dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def at_least_f32(dtype):
    """The dtype norms, softmaxes and reductions run in: float32, or float64 for a float64 run.

    bfloat16 and float32 compute give float32; float64 (``jax_enable_x64``, used for numerical
    reference runs) stays float64.
    """
    return jnp.promote_types(dtype, jnp.float32)
