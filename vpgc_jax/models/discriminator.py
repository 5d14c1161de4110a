"""Two-scale PatchGAN with BatchNorm: the reference's ``MultiscaleDiscriminator`` (spec §2.2).

Each scale is ``NLayerDiscriminator2`` (kernel 4, padding 2): model0 conv(3->ndf, s2, bias) +
LeakyReLU(0.2); model1 conv(ndf->2ndf, s2, no bias) + BN + LReLU; model2 conv(2ndf->4ndf, s1, no
bias) + BN + LReLU; model3 conv(4ndf->1, s1, bias). Scale 1 sees avg_pool(3x3, stride 2, pad 1,
count_include_pad=False) of the input. 663,361 params per scale, 1,326,722 for both at ndf=64.

PyTorch key mapping (``loss.discriminator.`` prefix, conv weights transposed [kh,kw,I,O] ->
[O,I,kh,kw]):

  params[discriminator_i][modelL][conv][kernel|bias]  <-> discriminator_i.modelL.0.{weight,bias}
  params[discriminator_i][modelL][bn][scale|bias]     <-> discriminator_i.modelL.1.{weight,bias}
  batch_stats[discriminator_i][modelL][bn][mean|var] <-> discriminator_i.modelL.1.running_*

``num_batches_tracked`` has no Flax counterpart (export the step count). Flax BatchNorm updates the
running variance with the biased batch variance, PyTorch with the unbiased one (a factor n/(n-1),
n = B*H*W >= 4*129*129 here, i.e. < 2e-5 relative).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpgc_jax.models.taming import torch_bias_init

Dtype = Any
Array = jax.Array

_conv_init = nn.initializers.normal(0.02)  # weights_init: conv weight ~ N(0, 0.02)


def _bn_scale_init(key: Array, shape, dtype=jnp.float32) -> Array:
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)  # BN weight ~ N(1, 0.02)


class _Layer(nn.Module):
    """``modelL``: conv(k4, pad 2) [+ BN] [+ LeakyReLU(0.2)], children ``conv`` and ``bn``."""

    features: int
    in_features: int
    stride: int
    norm: bool
    act: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = nn.Conv(
            self.features,
            (4, 4),
            strides=self.stride,
            padding=((2, 2), (2, 2)),
            use_bias=not self.norm,
            kernel_init=_conv_init,
            bias_init=torch_bias_init(self.in_features * 16),  # biases keep PyTorch's default
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        if self.norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                use_fast_variance=False,  # two-pass variance, as PyTorch (no E[x^2] - E[x]^2)
                scale_init=_bn_scale_init,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                name="bn",
            )(x.astype(jnp.float32)).astype(self.dtype)
        return nn.leaky_relu(x, 0.2) if self.act else x


class NLayerDiscriminator(nn.Module):
    """One PatchGAN scale (``NLayerDiscriminator2`` with n_layers=3): [B, H, W, C] -> [B, h, w, 1].

    Spatial size per conv: floor((n + 4 - 4) / stride) + 1, e.g. 512 -> 257 -> 129 -> 130 -> 131.
    """

    ndf: int = 64
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        f = self.ndf
        x = _Layer(f, self.in_channels, 2, norm=False, act=True, name="model0", **kw)(x, train)
        x = _Layer(2 * f, f, 2, norm=True, act=True, name="model1", **kw)(x, train)
        x = _Layer(4 * f, 2 * f, 1, norm=True, act=True, name="model2", **kw)(x, train)
        return _Layer(1, 4 * f, 1, norm=False, act=False, name="model3", **kw)(x, train)


class MultiscaleDiscriminator(nn.Module):
    """Two PatchGANs, ``discriminator_0`` on x and ``discriminator_1`` on avg-pooled x (§2.2).

    Attributes:
      ndf: base width (64).
      in_channels: image channels (3).
      num_scales: number of scales (2 in the reference).
      dtype: compute dtype (BatchNorm in float32).
      param_dtype: storage dtype.
    """

    ndf: int = 64
    in_channels: int = 3
    num_scales: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> list[Array]:
        """Logit maps for every scale.

        Args:
          x: [B, H, W, in_channels] images in [-1, 1].
          train: BatchNorm uses batch statistics and updates ``batch_stats`` (pass
            ``mutable=['batch_stats']``); False uses the running averages.

        Returns:
          List of ``num_scales`` float maps [B, h_s, w_s, 1] (512 px: 131x131 and 67x67).
        """
        x = x.astype(self.dtype)
        outs = []
        for s in range(self.num_scales):
            d = NLayerDiscriminator(
                self.ndf, self.in_channels, self.dtype, self.param_dtype, name=f"discriminator_{s}"
            )
            outs.append(d(x, train))
            if s != self.num_scales - 1:
                x = nn.avg_pool(
                    x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False
                )
        return outs
