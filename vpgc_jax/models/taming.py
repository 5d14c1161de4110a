"""Taming-transformers VQGAN Encoder / Decoder in Flax linen (NHWC).

Mirrors ``taming/modules/diffusionmodules/model.py`` as described in reference spec §1.2:
GroupNorm(32, eps 1e-6) computed in float32, swish, ResnetBlock with a 1x1 ``nin_shortcut`` when
the channel count changes, single-head AttnBlock with C^-0.5 scaling, Downsample = zero-pad
right/bottom by 1 then a stride-2 3x3 VALID conv, Upsample = nearest x2 then a 3x3 conv. No output
tanh.

Submodule names mirror the PyTorch state-dict keys (spec §6.1-6.2) so a converter only renames and
transposes: ``down.3.block.1.conv1.weight`` <-> ``params['down_3']['block_1']['conv1']['kernel']``
(transpose 2,3,1,0), ``mid.attn_1.q`` <-> ``params['mid']['attn_1']['q']``, GroupNorm ``weight`` <->
``scale``.

Initialisation reproduces PyTorch's defaults (the reference applies no custom init to the
autoencoder): conv kernels kaiming_uniform(a=sqrt(5)) ==
``variance_scaling(1/3, 'fan_in', 'uniform')``, i.e. U(+-1/sqrt(fan_in)), and biases
U(+-1/sqrt(fan_in)); see :func:`torch_conv`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpgc_jax.precision import at_least_f32

Dtype = Any
Array = jax.Array

# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)): bound = sqrt(1/fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv/linear bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
      fan_in: input channels x kernel height x kernel width of the layer.

    Returns:
      A Flax initializer ``(key, shape, dtype) -> Array``.
    """
    bound = fan_in**-0.5

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_conv(
    features: int,
    kernel_size: int,
    in_features: int,
    *,
    strides: int = 1,
    padding: Any = "SAME",
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """A square ``nn.Conv`` (with bias) initialised like PyTorch's ``nn.Conv2d`` default.

    Args:
      features: output channels.
      kernel_size: k for a k x k kernel ([k, k, in_features, features]).
      in_features: input channels, needed for the bias bound 1/sqrt(in_features * k * k).
      strides: spatial stride.
      padding: Flax padding spec ("SAME" equals PyTorch padding k//2 for odd k and stride 1).
      name: submodule name (mirror the PyTorch attribute name).
      dtype: compute dtype.
      param_dtype: storage dtype.

    Returns:
      An unbound ``nn.Conv``.
    """
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features * kernel_size * kernel_size),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def _spatial_mean(x: Array) -> Array:
    """Mean of [B, H, W, G, C/G] over axes (1, 2, 4), keepdims: over H first, then W and C/G.

    Two short sums instead of one long one. XLA's CPU reductions accumulate sequentially, so one
    sum over H*W*C/G = 524,288 float32 terms (512 px, 64 channels) has a relative error of ~1e-5,
    which GroupNorm's division by a small standard deviation amplifies on sparse heatmap inputs.
    """
    return jnp.mean(jnp.mean(x, axis=1, keepdims=True), axis=(2, 4), keepdims=True)


class GroupNorm(nn.Module):
    """GroupNorm(32, eps 1e-6) over [B, H, W, C] with a numerically stable variance (spec §1.2).

    Same parameters as ``flax.linen.GroupNorm`` (``scale``, ``bias``: [C]) and PyTorch's
    ``nn.GroupNorm`` (channel c in group c // (C / 32)). The statistics are two-pass,
    var = mean((x - mean)^2), each mean summed in two short stages (`_spatial_mean`), in float32
    (float64 for a float64 run). Flax's default E[x^2] - E[x]^2 in one long sum put stage-2
    features 1.5e-3 (relative L2) from a float64 run at 512 px on real heatmaps; this puts them at
    2e-6, the level of PyTorch's float32 (benchmarks/parity512.py, benchmarks/RESULTS.md).
    Returns ``x.dtype``.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        dt = at_least_f32(x.dtype)
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xg = x.astype(dt).reshape(b, h, w, self.num_groups, c // self.num_groups)
        centered = xg - _spatial_mean(xg)
        var = _spatial_mean(jnp.square(centered))
        y = (centered * jax.lax.rsqrt(var + self.epsilon)).reshape(b, h, w, c)  # [B, H, W, C]
        return (y * scale.astype(dt) + bias.astype(dt)).astype(x.dtype)


def group_norm(x: Array, name: str, param_dtype: Dtype) -> Array:
    """GroupNorm(32, eps 1e-6) in at least float32, cast back to ``x.dtype`` (spec §1.2)."""
    return GroupNorm(param_dtype=param_dtype, name=name)(x)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, + (nin_)shortcut (§1.2).

    Attributes:
      in_channels: Cin.
      out_channels: Cout; a 1x1 ``nin_shortcut`` is created when Cin != Cout.
      dropout: dropout rate (0.0 in every reference config).
    """

    in_channels: int
    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, H, W, Cin] -> [B, H, W, Cout]; ``train`` enables dropout (needs a 'dropout' rng)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.swish(group_norm(x, "norm1", self.param_dtype))
        h = torch_conv(self.out_channels, 3, self.in_channels, name="conv1", **kw)(h)
        h = nn.swish(group_norm(h, "norm2", self.param_dtype))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = torch_conv(self.out_channels, 3, self.out_channels, name="conv2", **kw)(h)
        if self.in_channels != self.out_channels:
            x = torch_conv(self.out_channels, 1, self.in_channels, name="nin_shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W tokens with a residual add (spec §1.2).

    q, k, v and proj_out are 1x1 convs (kernels [1, 1, C, C]); logits are scaled by C^-0.5 and the
    softmax runs in float32.
    """

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        b, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = group_norm(x, "norm", self.param_dtype)
        q = torch_conv(c, 1, c, name="q", **kw)(h).reshape(b, hh * ww, c)  # [B, L, C]
        k = torch_conv(c, 1, c, name="k", **kw)(h).reshape(b, hh * ww, c)  # [B, L, C]
        v = torch_conv(c, 1, c, name="v", **kw)(h).reshape(b, hh * ww, c)  # [B, L, C]
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=at_least_f32(q.dtype)) * (
            int(c) ** -0.5
        )
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, L, L]
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, hh, ww, c)
        return x + torch_conv(c, 1, c, name="proj_out", **kw)(h)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, 3x3 stride-2 VALID conv: [B, H, W, C] -> [B, H/2, W/2, C]."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = torch_conv(
            self.channels,
            3,
            self.channels,
            strides=2,
            padding=((0, 1), (0, 1)),
            name="conv",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        return conv(x)


class Upsample(nn.Module):
    """Nearest x2 (each pixel repeated 2x2), then 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, C]."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return torch_conv(
            self.channels,
            3,
            self.channels,
            name="conv",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


def _blocks(remat: bool) -> tuple[type[nn.Module], type[nn.Module]]:
    """(ResnetBlock, AttnBlock) classes, wrapped in ``nn.remat`` when `remat` is set.

    Rematerialised blocks keep only their inputs for the backward pass and recompute the rest
    (``jax.checkpoint``): activation memory drops to about one tensor per block at ~1/3 more
    compute. Parameter names and values are unchanged.
    """
    if not remat:
        return ResnetBlock, AttnBlock
    return nn.remat(ResnetBlock, static_argnums=(2,)), nn.remat(AttnBlock)


class _Level(nn.Module):
    """One level: ``blocks`` ResnetBlocks, an AttnBlock after each if ``attn``, then resample.

    Named ``down_i`` in the Encoder and ``up_i`` in the Decoder; children ``block_j``, ``attn_j``
    and ``downsample``/``upsample`` (each with a ``conv``) mirror ``down.i.block.j`` etc.
    """

    in_channels: int
    out_channels: int
    blocks: int
    attn: bool
    resample: str | None  # 'down' | 'up' | None
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        resnet, attn = _blocks(self.remat)
        c_in = self.in_channels
        for j in range(self.blocks):
            x = resnet(c_in, self.out_channels, self.dropout, name=f"block_{j}", **kw)(x, train)
            c_in = self.out_channels
            if self.attn:
                x = attn(c_in, name=f"attn_{j}", **kw)(x)
        if self.resample == "down":
            x = Downsample(c_in, name="downsample", **kw)(x)
        elif self.resample == "up":
            x = Upsample(c_in, name="upsample", **kw)(x)
        return x


class _Mid(nn.Module):
    """``mid``: block_1 (Res) -> attn_1 (Attn) -> block_2 (Res), all at C channels."""

    channels: int
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        resnet, attn = _blocks(self.remat)
        c = self.channels
        x = resnet(c, c, self.dropout, name="block_1", **kw)(x, train)
        x = attn(c, name="attn_1", **kw)(x)
        return resnet(c, c, self.dropout, name="block_2", **kw)(x, train)


class Encoder(nn.Module):
    """Taming Encoder, ``double_z=False`` (spec §1.2; stage-2 heatmap encoder spec §4.1).

    Params: ``conv_in``, ``down_{i}`` (``block_{j}``, ``attn_{j}``, ``downsample``), ``mid``,
    ``norm_out``, ``conv_out``. Paper config (ch 64, ch_mult (1,1,2,2,4,8), 2 blocks, attn (16,),
    z 256, res 512): 26,648,704 params; heatmap encoder (in_channels 7, ch_mult (1,1,2,2,4,4)):
    10,583,424.

    Attributes:
      ch: base channel count (multiples of 32 because of GroupNorm(32)).
      ch_mult: per-level channel multipliers; len(ch_mult)-1 stride-2 downsamples.
      num_res_blocks: ResnetBlocks per level.
      attn_resolutions: levels whose input resolution is listed get an AttnBlock after each block.
      z_channels: output channels.
      resolution: nominal input side length (decides where attention goes, as in taming).
      in_channels: input channels (3 for RGB, 7 for stacked heatmaps).
      dropout: ResnetBlock dropout rate.
      remat: rematerialise each ResnetBlock / AttnBlock in the backward pass (``nn.remat``).
      dtype: compute dtype (norms and softmax stay float32).
      param_dtype: parameter storage dtype.
    """

    ch: int = 64
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Encodes [B, H, W, in_channels] -> [B, H/2^L, W/2^L, z_channels], L = len(ch_mult)-1.

        Raises:
          ValueError: if the input channel count is not ``in_channels``.
        """
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"Encoder expects {self.in_channels} input channels, got shape {x.shape}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        h = torch_conv(self.ch, 3, self.in_channels, name="conv_in", **kw)(x)
        in_ch_mult = (1, *self.ch_mult)
        curr_res = self.resolution
        n_levels = len(self.ch_mult)
        for i in range(n_levels):
            h = _Level(
                self.ch * in_ch_mult[i],
                self.ch * self.ch_mult[i],
                self.num_res_blocks,
                attn=curr_res in self.attn_resolutions,
                resample="down" if i != n_levels - 1 else None,
                dropout=self.dropout,
                remat=self.remat,
                name=f"down_{i}",
                **kw,
            )(h, train)
            if i != n_levels - 1:
                curr_res //= 2
        c = self.ch * self.ch_mult[-1]
        h = _Mid(c, self.dropout, self.remat, name="mid", **kw)(h, train)
        h = nn.swish(group_norm(h, "norm_out", self.param_dtype))
        return torch_conv(self.z_channels, 3, c, name="conv_out", **kw)(h)


class Decoder(nn.Module):
    """Taming Decoder, ``give_pre_end=False``, no tanh (spec §1.2).

    Params: ``conv_in``, ``mid``, ``up_{i}`` (``block_{j}`` x num_res_blocks+1, ``attn_{j}``,
    ``upsample``), ``norm_out``, ``conv_out``. Paper config: 38,988,739 params.

    The reference's ``get_last_layer()`` (``decoder.conv_out.weight``, used by the adaptive GAN
    weight, spec §2.1) is ``params['decoder']['conv_out']['kernel']`` [3, 3, ch, out_ch] in a
    VQModel tree.

    Attributes:
      ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, resolution, dropout, remat,
      dtype, param_dtype: as in :class:`Encoder` (the same ddconfig).
      out_ch: output image channels.
    """

    ch: int = 64
    out_ch: int = 3
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    resolution: int = 512
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> Array:
        """Decodes [B, h, w, z_channels] -> [B, h*2^L, w*2^L, out_ch] (unbounded, ~[-1, 1]).

        Raises:
          ValueError: if the latent channel count is not ``z_channels``.
        """
        if z.shape[-1] != self.z_channels:
            raise ValueError(
                f"Decoder expects {self.z_channels} latent channels, got shape {z.shape}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_levels = len(self.ch_mult)
        block_in = self.ch * self.ch_mult[-1]
        curr_res = self.resolution // 2 ** (n_levels - 1)
        h = torch_conv(block_in, 3, self.z_channels, name="conv_in", **kw)(z.astype(self.dtype))
        h = _Mid(block_in, self.dropout, self.remat, name="mid", **kw)(h, train)
        for i in reversed(range(n_levels)):
            block_out = self.ch * self.ch_mult[i]
            h = _Level(
                block_in,
                block_out,
                self.num_res_blocks + 1,
                attn=curr_res in self.attn_resolutions,
                resample="up" if i != 0 else None,
                dropout=self.dropout,
                remat=self.remat,
                name=f"up_{i}",
                **kw,
            )(h, train)
            block_in = block_out
            if i != 0:
                curr_res *= 2
        h = nn.swish(group_norm(h, "norm_out", self.param_dtype))
        return torch_conv(self.out_ch, 3, block_in, name="conv_out", **kw)(h)
