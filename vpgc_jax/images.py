"""Image conversions between 8-bit frames and the models' float range (spec §3.1).

Frames on disk, in videos and in reports are uint8 RGB [..., 3] in [0, 255]; the models take and
return float32 in [-1, 1] (x / 127.5 - 1, the reference's normalisation). Every conversion between
the two goes through this module.
"""

import cv2
import numpy as np


def to_signed(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return np.asarray(frames, np.float32) / 127.5 - 1.0


def to_levels(x):
    """float [..., 3] in [-1, 1] (clipped) -> 8-bit levels 0..255, rounded, in x's float dtype.

    Works on numpy and jax arrays (also inside `jax.jit`, e.g. `vpgc_jax.metrics.psnr`).
    """
    return ((x.clip(-1.0, 1.0) + 1.0) * 127.5).round()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [..., 3] in [-1, 1] (clipped) -> uint8 in [0, 255], rounded to the nearest level."""
    return to_levels(np.asarray(x, np.float32)).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A square [S, S, C] image at [size, size, C]: area filter down, bicubic up (same: as is)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)
