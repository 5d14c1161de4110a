"""Image quality metrics on [-1, 1] images: PSNR, SSIM (paper Sec. 4.2).

PSNR and SSIM are computed per frame on images mapped to [0, 1] (PSNR peak 1.0, i.e. the same
number as 8-bit PSNR with peak 255 up to quantisation). SSIM is
`skimage.metrics.structural_similarity` with ``channel_axis=-1, data_range=1.0`` (skimage's
defaults otherwise: 7x7 uniform window, no Gaussian weighting).
LPIPS lives in `vpgc_jax.losses.lpips`.
"""

import jax.numpy as jnp
import numpy as np
from skimage.metrics import structural_similarity


def to_unit(x):
    """[-1, 1] -> [0, 1], clipped. Works on numpy and jax arrays."""
    return (x.clip(-1.0, 1.0) + 1.0) / 2.0


def psnr(x, y) -> jnp.ndarray:
    """Per-frame PSNR (dB) of [B, H, W, C] images in [-1, 1] (clipped), peak 1 in [0, 1].

    Returns:
      float32 [B]. Identical frames give +inf.
    """
    mse = jnp.mean(
        (to_unit(jnp.asarray(x, jnp.float32)) - to_unit(jnp.asarray(y, jnp.float32))) ** 2,
        axis=(1, 2, 3),
    )
    return -10.0 * jnp.log10(mse)


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of [B, H, W, 3] images in [-1, 1] (clipped), via skimage on [0, 1] float64.

    Returns:
      float64 [B].
    """
    x = to_unit(np.asarray(x, np.float64))
    y = to_unit(np.asarray(y, np.float64))
    return np.array(
        [
            structural_similarity(a, b, channel_axis=-1, data_range=1.0)
            for a, b in zip(x, y, strict=True)
        ]
    )
