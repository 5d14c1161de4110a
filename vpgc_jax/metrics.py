"""Image quality metrics of paper Sec. 4.2 on 8-bit levels: PSNR, SSIM (one convention everywhere).

Frames are compared as they would be saved: images in [-1, 1] are clipped and rounded to 8-bit
levels (`vpgc_jax.images.to_uint8`) first, so a run's logged and ``eval.json`` numbers and the
report's (`eval.metrics.image_metrics`, on uint8 frames) are the same numbers for the same frames.
PSNR has peak 255; SSIM is `skimage.metrics.structural_similarity` with ``channel_axis=-1,
data_range=255`` (skimage's defaults otherwise: 7x7 uniform window, no Gaussian weighting).
LPIPS lives in `vpgc_jax.losses.lpips`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from skimage.metrics import structural_similarity

from vpgc_jax import images


def psnr(x, y):
    """Per-frame PSNR (dB, peak 255) of [B, H, W, C] images in [-1, 1] at 8-bit levels.

    jax arrays (the trainers log it per step, inside `jax.jit`) give a jax array; numpy arrays (the
    evaluators) are computed in numpy, so scoring batches of any size compiles nothing.

    Returns:
      float32 [B]. Identical frames give +inf.
    """
    xp = jnp if isinstance(x, jax.Array) or isinstance(y, jax.Array) else np
    x, y = (images.to_levels(xp.asarray(a, xp.float32)) for a in (x, y))
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * xp.log10(255.0**2 / mse)


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of [B, H, W, 3] images in [-1, 1] at 8-bit levels (skimage, data_range 255).

    Returns:
      float64 [B].
    """
    a, b = images.to_uint8(x), images.to_uint8(y)
    return np.array(
        [
            structural_similarity(p, q, channel_axis=-1, data_range=255)
            for p, q in zip(a, b, strict=True)
        ]
    )
